"""
A PROXY protocol header may come a few bytes at a time; a connection that never sends
its header falls under header_timeout and the drain; under twistd, the server
processes' output reaches its log across SIGHUP reloads and the restarts after them,
whatever the log level.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

import rawhttp
from conftest import ROOT, TWISTD, ServerProcess, _env
from test_listening import PROXY_HEADERS
from test_proc import wait_gone
from test_startup import LOCAL, free_port

PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n"


# -- PROXY protocol: a connection waiting for its header ---------------------------------

def test_proxy_header_falls_under_header_timeout(serve):
    server = serve("apps:environ_app", "--header-timeout", "1", "--listen", "haproxy:" + LOCAL,
                   listen=False)
    with server.connect() as silent, server.connect() as partial:
        partial.send(PROXY_V1[:20])  # half a v1 line, never finished
        started = time.monotonic()
        assert silent.closed(2.5) and partial.closed(2.5)
        assert time.monotonic() - started < 2.5
    with server.connect() as c:  # one that sends its header is served as before
        c.send(PROXY_V1 + rawhttp.request())
        assert c.read_response().json()["REMOTE_ADDR"] == "203.0.113.7"


@pytest.mark.parametrize("version", list(PROXY_HEADERS))
def test_proxy_header_a_few_bytes_at_a_time(serve, version):
    """Twisted's wrapper judges the header by its first read, and closes the connection
    when that read is shorter than 8 bytes (v1) or 16 (v2)."""
    server = serve("apps:environ_app", "--listen", "haproxy:" + LOCAL, listen=False)
    header = PROXY_HEADERS[version]
    with server.connect() as c:  # TCP_NODELAY: each piece is a read of its own
        for i in range(0, len(header), 3):
            c.send(header[i:i + 3])
            time.sleep(0.02)
        c.send(rawhttp.request())
        environ = c.read_response().json()
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "40000")


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN \r\n",
                                  b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_proxy_unknown_keeps_the_connections_own_address(serve, line):
    """v1's UNKNOWN (HAProxy's health checks send it bare): the spec has the receiver
    ignore the rest of the line and use the connection's own addresses."""
    server = serve("apps:environ_app", "--listen", "haproxy:" + LOCAL, listen=False)
    with server.connect() as c:
        c.send(line + rawhttp.request())
        assert c.read_response().json()["REMOTE_ADDR"] == "127.0.0.1"


def test_sigterm_closes_a_connection_waiting_for_its_proxy_header(serve):
    server = serve("proc_apps:slow", "--grace", "30", "--listen", "haproxy:" + LOCAL,
                   listen=False)
    with server.connect() as stalled, server.connect() as busy:
        busy.send(PROXY_V1 + rawhttp.request("GET", "/?s=2"))  # in flight during the drain
        with server.connect() as c:
            c.send(PROXY_V1 + rawhttp.request("GET", "/?s=0", {"Connection": "close"}))
            assert c.read_response().body.split()[3] == b"203.0.113.7"
        assert stalled.is_open()
        server.signal(signal.SIGTERM)
        stopped = time.monotonic()
        # Closed as an idle connection is, not once the request in flight is done.
        assert stalled.closed(1)
        assert busy.read_response().status == 200
        assert server.wait_exit(5) == 0
        assert time.monotonic() - stopped < 4  # the drain did not wait its grace
    assert "drain over" not in server.output()


# -- twistd: the server processes' output through the manager ----------------------------



def _log_text(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def _wait_in_log(log: Path, pattern: str, count: int = 1, timeout: float = 20.0) -> List[str]:
    """The matches of ``pattern`` in the log once there are ``count``; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, _log_text(log))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, "no %d x %r in the log:\n%s" % (
            count, pattern, _log_text(log))
        time.sleep(0.05)


def _ready_pids(log: Path) -> List[int]:
    return [int(p) for p in re.findall(r"server process \d+ ready \(pid (\d+)\)",
                                       _log_text(log))]


def _assert_relayed(log: Path, port: int, pid: int, tag: str) -> None:
    """Process ``pid``'s "serving" line and its access log reach the log through the
    manager."""
    _wait_in_log(log, r"\[yimmo\.process\.\d+#info\] .*\(pid %d\) serving" % pid, timeout=5)
    deadline = time.monotonic() + 10
    for n in range(1000):  # fresh connections until one reaches that process
        target = "/%s-%d" % (tag, n)
        if rawhttp.get(port, target).body.split()[0] == str(pid).encode():
            break
        assert time.monotonic() < deadline, "process %d answered no request" % pid
    _wait_in_log(log, r'\[yimmo\.process\.\d+#info\] .*"GET %s HTTP/1\.1" 200' % target,
                 timeout=5)


def test_twistd_daemon_logs_server_processes_after_reloads(tmp_path):
    log, pidfile, port = tmp_path / "twistd.log", tmp_path / "twistd.pid", free_port()
    subprocess.run(TWISTD + ["--pidfile", str(pidfile), "--logfile", str(log), "yimmo",
                             "--app", "proc_apps:pid", "-p", "2", "--listen",
                             "tcp:%d:interface=127.0.0.1" % port],
                   env=_env(None), cwd=ROOT, check=True, timeout=30)
    manager = None
    everyone_gone = False
    try:
        _wait_in_log(log, r"server process \d ready", count=2)
        manager = int(pidfile.read_text())

        os.kill(manager, signal.SIGHUP)
        _wait_in_log(log, r"reload done")
        assert len(_ready_pids(log)) == 4
        victim = _ready_pids(log)[-1]
        os.kill(victim, signal.SIGKILL)  # the manager starts another in its place
        _wait_in_log(log, r"server process \d ready", count=5)
        _assert_relayed(log, port, _ready_pids(log)[-1], "after-crash")

        os.kill(manager, signal.SIGHUP)
        _wait_in_log(log, r"reload done", count=2)
        for pid in _ready_pids(log)[-2:]:
            _assert_relayed(log, port, pid, "after-reload")
    finally:
        if manager is None and pidfile.exists():
            manager = int(pidfile.read_text())
        if manager is not None:
            os.kill(manager, signal.SIGTERM)
            everyone_gone = wait_gone([manager] + _ready_pids(log), 15)
    assert everyone_gone, "processes left behind:\n" + _log_text(log)


def test_relayed_access_log_ignores_log_level():
    """log_level filters the server processes' events, not their access log (its own
    setting, as with one process); relayed, the lines pass the manager unfiltered."""
    port = free_port()
    server = ServerProcess(TWISTD + ["-n", "--pidfile=", "yimmo", "--app", "proc_apps:pid",
                                     "-p", "2", "--log-level", "WARNING", "--listen",
                                     "tcp:%d:interface=127.0.0.1" % port], _env(None))
    answered = set()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answered.add(int(rawhttp.get(port, "/relayed").body.split()[0]))
                break
            except OSError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
        server.wait_for_output(r'\[yimmo\.process\.\d+#info\] .*"GET /relayed HTTP/1\.1" 200')
    finally:
        server.stop()
    assert "serving" not in server.output()  # the processes' info events: filtered
    assert wait_gone(answered, 10)
