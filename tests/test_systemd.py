"""
systemd: ``Type=notify`` readiness (READY=1, RELOADING=1, STOPPING=1 to NOTIFY_SOCKET,
received here on a datagram socket of the test's own, with the sender's pid) and socket
activation for real, under ``systemd-socket-activate``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import sys
import time
from typing import Dict, List, Tuple

import pytest

import rawhttp
from conftest import TWISTD_NODAEMON, ServerProcess, _env
from test_proc import wait_gone
from test_startup import LOCAL, _over, free_port

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Notifications:
    """The datagram socket NOTIFY_SOCKET names: each notification, with its sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET gives it: a path, or @name (abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def next(self, timeout: float = 15.0) -> Tuple[int, Dict[str, str]]:
        """The next notification: (sender pid, its fields); fails after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except socket.timeout:
            pytest.fail("no notification within %.1f s" % timeout)
        pids = [UCRED.unpack(cdata[:UCRED.size])[0] for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        assert len(pids) == 1
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        return pids[0], fields

    def rest(self) -> List[Tuple[int, Dict[str, str]]]:
        """The notifications still queued."""
        got = []
        while True:
            try:
                got.append(self.next(0.2))
            except pytest.fail.Exception:
                return got

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)


@pytest.fixture
def notifications(tmp_path):
    listener = Notifications(str(tmp_path / "notify"))
    yield listener
    listener.close()


def expect_ready(listener: Notifications, server: ServerProcess) -> Dict[str, str]:
    """READY=1 from the process the test started, once its port answers."""
    pid, fields = listener.next()
    assert fields["READY"] == "1", fields
    assert pid == server.proc.pid and fields["MAINPID"] == str(pid)
    assert server.get("/").status == 200  # serving as it says it is
    return fields


def expect_stopping(listener: Notifications, server: ServerProcess) -> None:
    server.signal(signal.SIGTERM)
    pid, fields = listener.next()
    assert pid == server.proc.pid and fields["STOPPING"] == "1", fields
    assert server.wait_exit() == 0
    assert listener.rest() == []  # nothing more, and from no server process


@pytest.mark.parametrize("no_proc", [1, 2])
def test_ready_then_stopping(serve, notifications, no_proc):
    server = serve("apps:hello", "-p", str(no_proc), "-t", "1",
                   env={"NOTIFY_SOCKET": notifications.address})
    fields = expect_ready(notifications, server)
    assert "serving on tcp 127.0.0.1:%d" % server.port in fields["STATUS"]
    if no_proc == 2:
        # Only once every server process is ready: the manager has logged both (the lines
        # are in the pipe before the notification is sent, the reader may lag).
        server.wait_for_output(r"(server process \d ready[\s\S]*){2}", 2)
        assert "with 2 server processes" in fields["STATUS"]
    expect_stopping(notifications, server)


def test_abstract_socket(serve):
    listener = Notifications("@yimmo-test-notify-%d" % os.getpid())
    try:
        server = serve("apps:hello", "-t", "1", env={"NOTIFY_SOCKET": listener.address})
        expect_ready(listener, server)
    finally:
        listener.close()


def test_reload_notifies(serve, notifications):
    server = serve("apps:hello", "-p", "2", "-t", "1",
                   env={"NOTIFY_SOCKET": notifications.address})
    expect_ready(notifications, server)
    server.signal(signal.SIGHUP)
    pid, fields = notifications.next()
    now = time.monotonic_ns() // 1000
    assert pid == server.proc.pid and fields["RELOADING"] == "1", fields
    # CLOCK_MONOTONIC, as systemd reads it: a moment ago.
    assert 0 <= now - int(fields["MONOTONIC_USEC"]) < 5_000_000
    pid, fields = notifications.next(20)
    assert pid == server.proc.pid and fields["READY"] == "1", fields
    server.wait_for_output("reload done", 2)
    assert server.get("/").status == 200
    expect_stopping(notifications, server)


def test_unreachable_socket_is_logged_once(serve, tmp_path):
    server = serve("apps:hello", "-t", "1", env={"NOTIFY_SOCKET": str(tmp_path / "none")})
    assert server.get("/").status == 200
    server.stop()
    assert server.proc.returncode == 0
    assert server.output().count("cannot notify systemd at") == 1


@pytest.mark.parametrize("no_proc", [1, 2])
def test_twistd_notifies(notifications, no_proc):
    server = ServerProcess(TWISTD_NODAEMON + ["yimmo", "--app", "apps:hello",
                                     "--listen", LOCAL, "-p", str(no_proc), "-t", "1"],
                           _env({"NOTIFY_SOCKET": notifications.address}))
    try:
        server._wait_listening(15)
        expect_ready(notifications, server)
        server.signal(signal.SIGTERM)
        pid, fields = notifications.next()
        assert pid == server.proc.pid and fields["STOPPING"] == "1", fields
        # twistd ends by re-raising the signal that stopped it.
        assert server.wait_exit() in (0, -signal.SIGTERM)
        assert notifications.rest() == []
    finally:
        server.stop()


# -- socket activation --------------------------------------------------------------------

ACTIVATE = shutil.which("systemd-socket-activate")


def _get(address) -> rawhttp.Response:
    """One request to ``address`` (host and port, or a Unix socket's path), closed after
    the response; the first connection waits for the server to start."""
    if isinstance(address, tuple):
        return rawhttp.get(address[1], "/", timeout=20)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    with _over(sock) as c:
        sock.settimeout(20)
        c.send(rawhttp.request(headers={"Connection": "close"}))
        return c.read_response(timeout=20)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed "
                    "(Debian's systemd package)")
@pytest.mark.parametrize("no_proc", [1, 2])
@pytest.mark.parametrize("domain", ["INET", "UNIX"])
def test_socket_activation(tmp_path, domain, no_proc):
    port = free_port()
    address = ("127.0.0.1", port) if domain == "INET" else str(tmp_path / "http.sock")
    where = "%s:%d" % address if domain == "INET" else address
    # The tool passes on only the environment it is told to (-E).  Twisted takes the
    # sockets only with their names (LISTEN_FDNAMES, which systemd itself always sets).
    server = ServerProcess([str(ACTIVATE), "-l", where, "--fdname=http",
                            "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED",
                            sys.executable, "-m", "yimmo_twisted",
                            "--listen", "systemd:domain=%s:index=0" % domain,
                            "-p", str(no_proc), "-t", "1", "apps:hello"], _env(None))
    children: List[int] = []
    try:
        server.wait_for_output("Listening on " + re.escape(where))
        assert "yimmo-twisted" not in server.output()  # nothing started yet
        # The first connection starts the server, which then answers it.
        r = _get(address)
        assert r.status == 200 and r.body == b"Hello, World!\n"
        if no_proc > 1:  # the first process may answer before the second is ready
            server.wait_for_output(READY_ALL % no_proc, 15)
            children = [int(p) for p in re.findall(r"ready \(pid (\d+)\)", server.output())]
        assert _get(address).status == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert wait_gone(children, 5)
    finally:
        server.stop()


# Every server process ready (the manager's lines), or one process serving (its banner).
READY_ALL = r"\(server, pid|(ready \(pid \d+\)[\s\S]*){%d}"

# Runs argv[1:] with the socket of fd argv[1] as systemd passes it: fd 3, LISTEN_* set.
AS_SYSTEMD = """if 1:
    import os, sys
    fd = int(sys.argv[1])
    os.dup2(fd, 3)
    os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="http")
    os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("no_proc", [1, 2])
@pytest.mark.parametrize("domain", ["INET", "UNIX"])
def test_systemd_socket_outlives_the_server(tmp_path, domain, no_proc):
    """
    systemd keeps its socket across restarts of the service: once the server has stopped
    the socket still listens (neither shut down nor unlinked), and a connection queued
    meanwhile is answered by the next server.
    """
    if domain == "INET":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "http.sock"))
    listener.listen(16)
    address = listener.getsockname()
    servers: List[ServerProcess] = []

    def start() -> ServerProcess:
        server = ServerProcess([sys.executable, "-c", AS_SYSTEMD, str(listener.fileno()),
                                sys.executable, "-m", "yimmo_twisted",
                                "--listen", "systemd:domain=%s:index=0" % domain,
                                "-p", str(no_proc), "-t", "1", "apps:hello"],
                               _env(None), pass_fds=(listener.fileno(),))
        servers.append(server)
        server.wait_for_output(READY_ALL % no_proc, 15)
        return server

    try:
        first = start()
        assert _get(address).status == 200
        first.signal(signal.SIGTERM)
        assert first.wait_exit() == 0
        if domain == "UNIX":
            assert os.path.exists(address)
        # Between two starts: the connection queues.
        waiting = socket.socket(listener.family)
        waiting.connect(address)
        with _over(waiting) as c:
            c.send(rawhttp.request(headers={"Connection": "close"}))
            start()
            waiting.settimeout(20)
            assert c.read_response(timeout=20).status == 200
    finally:
        for server in servers:
            server.stop()
        listener.close()
