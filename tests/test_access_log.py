"""
The access log: the duration of each request, the ``access_log_file`` target and its
reopening on SIGUSR1 (one process, several, twistd), and the line of a WebSocket session.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

import rawhttp
from conftest import TWISTD_NODAEMON, ServerProcess, _env
from test_startup import free_port

# A whole combined line, as the server writes it: nothing torn, nothing mixed.
COMBINED = re.compile(r'127\.0\.0\.1 - - \[[^]]+\] "(GET|POST) (\S+) HTTP/1\.1" (\d{3}) (\d+|-) '
                      r'"[^"]*" "[^"]*" (\d+|-)( \d+)?')


def lines(path) -> list:
    return open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else []


def wait_until(predicate, timeout: float = 5.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what or "condition not met in %.1f s" % timeout
        time.sleep(0.02)


def targets(path) -> list:
    """The request target of each line of the file, every line checked whole."""
    found = []
    for line in lines(path):
        m = COMBINED.fullmatch(line)
        assert m, "not a whole line: %r" % line
        found.append(m.group(2))
    return found


# -- duration ---------------------------------------------------------------------------

def test_duration_at_the_end_of_the_combined_line(serve):
    server = serve("apps:app", "-t", "2")
    assert server.get("/sleep?t=0.2").status == 200
    assert server.get("/").status == 200
    slow = server.wait_for_output(r'"GET /sleep\?t=0\.2 HTTP/1\.1" 200 \d+ "-" "[^"]*" (\d+)\n')
    fast = server.wait_for_output(r'"GET / HTTP/1\.1" 200 14 "-" "[^"]*" (\d+)\n')
    assert 200_000 <= int(slow.group(1)) < 5_000_000
    assert int(fast.group(1)) < 200_000
    # A request the server refuses itself has no exchange to time: "-".
    assert server.exchange(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").status == 400
    server.wait_for_output(r'"-" 400 - "-" "-" -\n')


def test_duration_us_in_json(serve):
    server = serve("apps:app", "--access-log", "json")
    assert server.get("/sleep?t=0.2").status == 200
    assert server.exchange(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").status == 400
    slow = json.loads(server.wait_for_output(r'\{[^\n]*"target":"/sleep\?t=0.2"[^\n]*\}').group(0))
    refused = json.loads(server.wait_for_output(r'\{[^\n]*"status":400[^\n]*\}').group(0))
    assert 200_000 <= slow["duration_us"] < 5_000_000 and slow["bytes"] > 0
    assert refused["duration_us"] is None
    assert "websocket" not in slow  # only WebSocket lines say so


# -- access_log_file ----------------------------------------------------------------------

def test_lines_go_to_the_file(serve, tmp_path):
    path = tmp_path / "access.log"
    path.write_text("kept\n")  # appended to, not truncated
    server = serve("apps:hello", "--access-log-file", str(path))
    for i in range(5):
        assert server.get("/f/%d" % i).status == 200
    wait_until(lambda: len(lines(path)) == 6, what=lines(path))
    assert lines(path)[0] == "kept"
    assert [COMBINED.fullmatch(x).group(2) for x in lines(path)[1:]] == [
        "/f/%d" % i for i in range(5)]
    assert "/f/0" not in server.output()  # not on stdout


def test_rename_then_sigusr1_loses_no_line(serve, tmp_path):
    """logrotate's way: rename, SIGUSR1. Lines formatted before the signal stay in the
    renamed file, later ones go to the new one; a client requesting all along loses
    none of its lines, and none is torn."""
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    server = serve("apps:hello", "-t", "2", "--access-log-file", str(path))
    for i in range(20):
        assert server.get("/before/%d" % i).status == 200
    wait_until(lambda: len(lines(path)) == 20)

    done, stop = [], threading.Event()

    def load() -> None:
        with server.connect() as c:
            i = 0
            while not stop.is_set():
                c.send(rawhttp.request("GET", "/during/%d" % i))
                assert c.read_response().status == 200
                done.append("/during/%d" % i)
                i += 1

    client = threading.Thread(target=load)
    client.start()
    try:
        wait_until(lambda: len(done) > 50)
        os.rename(path, rotated)
        server.signal(signal.SIGUSR1)
        server.wait_for_output(r"access log reopened: " + re.escape(str(path)))
        during = len(done)
        wait_until(lambda: len(done) > during + 50)
    finally:
        stop.set()
        client.join(10)
    assert not client.is_alive() and server.alive()
    for i in range(20):
        assert server.get("/after/%d" % i).status == 200

    everything = ["/before/%d" % i for i in range(20)] + done + ["/after/%d" % i
                                                                 for i in range(20)]
    wait_until(lambda: len(lines(rotated)) + len(lines(path)) == len(everything),
               what="%d lines for %d requests" % (len(lines(rotated)) + len(lines(path)),
                                                  len(everything)))
    old, new = targets(rotated), targets(path)
    assert sorted(old + new) == sorted(everything)
    # A worker formats a line after the response has left (its duration ends there): with
    # two workers, the next request's line may come first.  So the lines of each phase
    # are compared as sets; the phases themselves are in order.
    assert sorted(old[:20]) == sorted(everything[:20])
    assert all(t.startswith("/during/") for t in old[20:])
    assert sorted(new[-20:]) == sorted(everything[-20:])
    assert any(t.startswith("/during/") for t in new)  # the load went on across the reopen


def test_processes_share_the_file_and_reopen_on_the_managers_sigusr1(serve, tmp_path):
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    server = serve("proc_apps:pid", "-p", "2", "-t", "1", "--access-log", "json",
                   "--access-log-file", str(path))
    server.wait_for_output(r"server process 0 ready[\s\S]*server process 1 ready|"
                           r"server process 1 ready[\s\S]*server process 0 ready", timeout=20)

    def pids_in(p) -> set:
        return {json.loads(line)["pid"] for line in lines(p)}

    def both_write(p) -> bool:
        server.get("/")
        return len(pids_in(p)) == 2

    wait_until(lambda: both_write(path), timeout=20, what="one process alone in the file")
    before = len(lines(path))
    os.rename(path, rotated)
    server.signal(signal.SIGUSR1)
    reopened = r"access log reopened: " + re.escape(str(path))
    server.wait_for_output(r"%s[\s\S]*%s" % (reopened, reopened))
    wait_until(lambda: both_write(path), timeout=20, what="one process alone in the new file")
    wait_until(lambda: len(lines(rotated)) >= before)
    # Every line whole, from one of the two processes.
    assert len(pids_in(rotated) | pids_in(path)) == 2
    assert server.alive() and "died" not in server.output()


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_a_file_that_cannot_be_opened_stops_start_up(serve, tmp_path, no_proc):
    path = tmp_path / "no-such-folder" / "access.log"
    server = serve("apps:hello", "-p", no_proc, "--access-log-file", str(path), wait=False)
    assert server.wait_exit() == 1
    assert server.output().strip().splitlines() == [
        "yimmo-wsgi: error: cannot open access_log_file %s for appending: No such file or "
        "directory" % path]


def test_bad_values_and_the_other_sources(serve, tmp_path):
    server = serve("apps:hello", env={"YIMMO_ACCESS_LOG_FILE": " "}, wait=False)
    assert server.wait_exit() == 1
    assert server.output().strip() == ("yimmo-wsgi: error: invalid access_log_file ' ' "
                                       "(environment variable YIMMO_ACCESS_LOG_FILE): must "
                                       "not be empty")
    # From YAML; and no file at all while the access log is off.
    config = tmp_path / "yimmo.yaml"
    config.write_text("wsgi:\n  access_log_file: %s\n" % (tmp_path / "y.log"))
    server = serve("apps:hello", "-c", str(config))
    server.get("/yaml")
    wait_until(lambda: lines(tmp_path / "y.log"))
    server = serve("apps:hello", "--access-log", "off", "--access-log-file",
                   str(tmp_path / "off.log"))
    server.get("/")
    assert not (tmp_path / "off.log").exists()


def test_twistd_reopens_its_logfile_and_the_access_log(tmp_path):
    """Under twistd SIGUSR1 still rotates twistd's own --logfile, and reopens ours."""
    access, log, port = tmp_path / "access.log", tmp_path / "twistd.log", free_port()
    server = ServerProcess(
        TWISTD_NODAEMON + ["--logfile", str(log), "yimmo", "--app", "apps:hello", "--listen",
                           "tcp:%d:interface=127.0.0.1" % port, "--access-log-file",
                           str(access)],
        _env(None))
    try:
        def answers() -> bool:
            try:
                return rawhttp.get(port, "/first").status == 200
            except OSError:
                assert server.alive(), server.output() + (log.read_text() if log.exists()
                                                          else "")
                return False

        wait_until(answers, timeout=15)
        wait_until(lambda: lines(access))
        os.rename(access, tmp_path / "access.log.1")
        server.signal(signal.SIGUSR1)
        wait_until(lambda: (tmp_path / "twistd.log.1").exists())  # twistd's rotation
        wait_until(lambda: "access log reopened" in (tmp_path / "twistd.log.1").read_text()
                   + log.read_text())
        assert rawhttp.get(port, "/second").status == 200
        wait_until(lambda: lines(access))
    finally:
        server.stop()
    assert targets(tmp_path / "access.log.1") == ["/first"]
    assert targets(access) == ["/second"]


# -- WebSockets ------------------------------------------------------------------------------

def ws_client(server, path: str):
    return ws_connect("ws://127.0.0.1:%d%s" % (server.port, path), open_timeout=5,
                      close_timeout=2, compression=None)


def test_websocket_session_line_in_combined(serve):
    server = serve("ws_apps:app")
    with ws_client(server, "/logged") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        time.sleep(0.2)
    # Sent: the echo (2 + 5 bytes) and the close reply (2 + 2); received: "hello" and the
    # close (masked: 2 + 4 + 5, 2 + 4 + 2).
    line = server.wait_for_output(r'127\.0\.0\.1 - - \[[^]]+\] "GET /logged HTTP/1\.1" 101 11 '
                                  r'"-" "Python/[^"]* websockets/[^"]*" (\d+) 19\n')
    assert 200_000 <= int(line.group(1)) < 5_000_000
    with pytest.raises(InvalidStatus):
        ws_client(server, "/reject")
    server.wait_for_output(r'"GET /reject HTTP/1\.1" 403 - "-" "[^"]*" \d+ 0\n')


def test_websocket_session_line_in_json(serve):
    server = serve("ws_apps:app", "--access-log", "json")

    def record(target: str) -> dict:
        return json.loads(server.wait_for_output(
            r'\{[^\n]*"target":"%s"[^\n]*\}' % re.escape(target)).group(0))

    with ws_client(server, "/client-closes?x=1") as ws:
        ws.send(b"\x00" * 1000)
        assert len(ws.recv(timeout=5)) == 1000
    r = record("/client-closes?x=1")
    assert (r["status"], r["websocket"], r["close_code"]) == (101, True, 1000)
    assert (r["bytes"], r["bytes_received"]) == (4 + 1000 + 4, 8 + 1000 + 8)
    assert r["method"] == "GET" and r["remote_addr"] == "127.0.0.1" and r["duration_us"] > 0

    with ws_client(server, "/fails") as ws:  # on_message raises: the server closes, 1011
        ws.send("raise")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert record("/fails")["close_code"] == 1011

    with pytest.raises(InvalidStatus):
        ws_client(server, "/raise-open")
    r = record("/raise-open")
    assert (r["status"], r["websocket"], r["close_code"], r["bytes_received"]) == (
        500, True, None, 0)

    # A session the shutdown closes (1001) is logged before the server exits.
    with ws_client(server, "/at-shutdown") as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert server.wait_exit() == 0
    assert record("/at-shutdown")["close_code"] == 1001


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_sigusr1_without_a_file_is_logged_not_fatal(serve, no_proc):
    """logrotate's SIGUSR1 (say, for another log) reaching a server that logs to stdout:
    its default action would kill the process."""
    server = serve("apps:hello", "-p", no_proc, "-t", "1")
    if no_proc == "2":
        server.wait_for_output(r"(server process \d ready[\s\S]*){2}", 15)
    server.signal(signal.SIGUSR1)
    server.wait_for_output("SIGUSR1: no access_log_file to reopen", 5)
    time.sleep(0.3)
    assert server.alive() and server.get("/").status == 200
    assert "died" not in server.output()
