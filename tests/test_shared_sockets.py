"""
The manager's listening sockets, shared by its server processes.  A Unix socket keeps
its path and mode across reloads and restarts, and only the manager removes it, when it
stops.  Closing a shared socket in one process (the manager at its stop, an old process
in a reload, a draining one) closes that process's descriptor alone: the processes still
accepting on it log no accept() error.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import threading
import time
from typing import List

import pytest

import rawhttp
from test_proc import pids_of, wait_gone
from test_reactors import LOCAL, twistd
from test_startup import _over

pytestmark = pytest.mark.timeout(60)


def _ready_pids(server) -> List[int]:
    return [int(p) for p in re.findall(r"server process \d+ ready \(pid (\d+)\)",
                                       server.output())]


def unix_get(path: str, target: str = "/") -> rawhttp.Response:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(rawhttp.DEFAULT_TIMEOUT)
    sock.connect(path)
    with _over(sock) as c:
        c.send(rawhttp.request("GET", target, {"Connection": "close"}))
        return c.read_response()


def answering(path: str, requests: int = 20) -> set:
    """The PIDs that answer ``requests`` fresh connections to the Unix socket ``path``."""
    return {int(unix_get(path, "/%d" % i).body.split()[0]) for i in range(requests)}


def wait_served_by(path: str, pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid not in answering(path, 5):
        assert time.monotonic() < deadline, "process %d answered nothing on %s" % (pid, path)


def test_unix_socket_survives_reloads_and_restarts(serve, tmp_path):
    path = str(tmp_path / "app.sock")
    server = serve("proc_apps:pid", "-p", "2", "--access-log", "off",
                   "--listen", "unix:%s:mode=600" % path, listen=False, wait=False)
    first = pids_of(server)
    assert len(first) == 2, server.output()
    socket_file = os.stat(path)
    assert stat.S_ISSOCK(socket_file.st_mode) and stat.S_IMODE(socket_file.st_mode) == 0o600
    assert answering(path) <= set(first)

    for reloads in (1, 2):
        server.signal(signal.SIGHUP)
        server.wait_for_output(r"(reload done[\s\S]*){%d}" % reloads, timeout=20)
        current = _ready_pids(server)[-2:]
        assert wait_gone(_ready_pids(server)[:-2], 10), "old processes left behind"
        for pid in current:
            wait_served_by(path, pid)
        now = os.stat(path)  # the manager's socket file, never bound or chmodded again
        assert (now.st_ino, now.st_mode) == (socket_file.st_ino, socket_file.st_mode)

    victim = _ready_pids(server)[-1]
    os.kill(victim, signal.SIGKILL)
    server.wait_for_output(r"\(pid %d\) died \(signal 9\)" % victim)
    server.wait_for_output(r"\(pid %d\) died[\s\S]*server process \d ready" % victim)
    wait_served_by(path, _ready_pids(server)[-1])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0, server.output()
    assert not os.path.exists(path) and not os.path.lexists(path + ".lock")
    assert wait_gone(_ready_pids(server), 5)
    assert "Traceback" not in server.output(), server.output()


class KeepAlive:
    """``clients`` threads, each sending requests on one keep-alive connection (a new one
    when the server closes it) until stopped."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.answered = 0
        self.running = True
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while self.running:
            try:
                with rawhttp.connect(self.port, timeout=5) as c:
                    while self.running:
                        c.send(rawhttp.request("GET", "/"))
                        r = c.read_response()
                        self.answered += 1
                        if r.connection_close:
                            break
            except (OSError, AssertionError):
                time.sleep(0.01)  # closed by a drain, or refused once stopped

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(10)


@pytest.mark.parametrize("reactor", ["epoll", "asyncio"])
def test_closing_a_shared_socket_disturbs_no_other_process(reactor):
    """A SIGHUP reload, then SIGTERM, under load, three times over: no accept() error (a
    socket shut down under the processes accepting on it) nor any other traceback."""
    for run in range(3):
        server = twistd("--reactor=" + reactor, "yimmo", "--app", "proc_apps:pid", "-p", "2",
                        "-t", "2", "--access-log", "off", "--listen", LOCAL)
        load = KeepAlive(server.port)
        try:
            server.wait_for_output(r"server process 1 ready", 15)
            time.sleep(0.3)
            if run == 0:
                server.signal(signal.SIGHUP)
                server.wait_for_output("reload done", 20)
                time.sleep(0.3)
            answered = load.answered
            server.signal(signal.SIGTERM)
            code = server.wait_exit(10)
        finally:
            load.stop()
            server.stop()
        out = server.output()
        assert answered > 0 and code in (0, -signal.SIGTERM), out
        # Twisted logs a failed accept() as an "Unhandled Error" with OSError 22 (EINVAL).
        for sign in ("Traceback", "Unhandled Error", "EINVAL", "[Errno 22]"):
            assert sign not in out, out
