"""
Processes (proc.py): the manager and its server processes.  Counts and balance, a killed
server process under load, crash loops at start-up, SIGTERM drain, SIGHUP reload under
load with no refused connection, no process left behind.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import threading
import time
from typing import Dict, List, Set

import pytest

import rawhttp
from yimmo_twisted import compat
from yimmo_twisted.server import SIGNAL_DEBOUNCE


def pids_of(server, n: int = 2, timeout: float = 10.0) -> List[int]:
    """The PIDs of the first ``n`` server processes the manager reported ready."""
    deadline = time.monotonic() + timeout
    while True:
        found = [int(p) for p in re.findall(r"server process \d+ ready \(pid (\d+)\)",
                                            server.output())]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (the manager has not reaped it yet) still counts as running here.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pids, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def sighup_under(server, load, before: float) -> None:
    """SIGHUP ``server`` after ``before`` seconds of ``load``, wait for the reload to be
    done and half a second more, then stop the load (also when the reload fails)."""
    try:
        time.sleep(before)
        server.signal(signal.SIGHUP)
        server.wait_for_output("reload done", timeout=20)
        time.sleep(0.5)
    finally:
        load.stop()


class Load:
    """``clients`` threads sending requests on fresh connections until stopped (GET, or
    ``method`` with ``body``)."""

    def __init__(self, port: int, clients: int = 4, target: str = "/", method: str = "GET",
                 body: bytes = b"") -> None:
        self.port = port
        self.target = target
        self.method = method
        self.body = body
        self.ok: Dict[bytes, int] = collections.Counter()  # PID -> answered requests
        self.errors: List[str] = []
        self.running = True
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while self.running:
            try:
                r = rawhttp.get(self.port, self.target, timeout=10, method=self.method,
                                body=self.body)
                if r.status == 200:
                    self.ok[r.body.split()[0]] += 1
                else:
                    self.errors.append("status %d" % r.status)
            except (OSError, AssertionError) as e:
                self.errors.append("%s: %s" % (type(e).__name__, e))

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(15)

    @property
    def total(self) -> int:
        return sum(self.ok.values())


def test_processes_share_the_socket_and_balance(serve):
    server = serve("proc_apps:pid", "-p", "2", "-t", "2", "--access-log", "off")
    children = pids_of(server)
    assert len(children) == 2 and server.proc.pid not in children
    answers = collections.Counter()
    for _ in range(60):  # fresh connections, one at a time
        pid, multiprocess = server.get("/").body.split()[:2]
        assert multiprocess == b"True"
        answers[int(pid)] += 1
    assert set(answers) == set(children), answers  # both answer


def test_app_that_fails_to_import_fails_fast(serve):
    for no_proc in ("1", "3"):
        started = time.monotonic()
        server = serve("no_such_module:app", "-p", no_proc, wait=False)
        assert server.wait_exit(10) != 0
        assert time.monotonic() - started < 8
        assert "module 'no_such_module' not found" in server.output()


@pytest.mark.parametrize("limit", [None, "2"])
def test_crash_loop_at_start_up_stops_the_manager(serve, limit):
    args = ("--start-failures", limit) if limit else ()
    server = serve("proc_apps:pid", "-p", "2", *args, env={"PROC_APPS_DIE_AT_START": "1"},
                   wait=False)
    assert server.wait_exit(20) == 1
    out = server.output()
    assert "keep dying at start-up (%s in a row" % (limit or 5) in out and "exit code 7" in out, out
    assert "listening on" not in out


def test_killed_server_process_is_replaced_under_load(serve):
    server = serve("proc_apps:slow", "-p", "2", "-t", "2", "--access-log", "off")
    victim, survivor = pids_of(server)
    load = Load(server.port, clients=4, target="/?s=0.05")
    try:
        time.sleep(0.7)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        server.wait_for_output(r"server process \d \(pid %d\) died \(signal 9\)" % victim)
        replacement = server.wait_for_output(r"server process \d ready \(pid (\d+)\)(?![\s\S]*"
                                             r"pid %d\) died)" % victim, timeout=5)
        assert time.monotonic() - killed < 3
        time.sleep(1.0)
    finally:
        load.stop()
    new = int(replacement.group(1))
    # Only requests in flight on the killed process may fail: at most one per client.
    assert len(load.errors) <= 4, load.errors
    assert all("Refused" not in e for e in load.errors), load.errors
    assert load.ok[str(survivor).encode()] > 0 and load.ok[str(new).encode()] > 0, load.ok
    assert server.alive()


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_sigterm_drains_in_flight_requests(serve, no_proc):
    server = serve("proc_apps:slow", "-p", no_proc, "-t", "2")
    children = pids_of(server, int(no_proc)) if no_proc == "2" else []
    results = []
    client = threading.Thread(target=lambda: results.append(server.get(
        "/?s=1.5", {"Connection": "keep-alive"}, timeout=10)))
    client.start()
    time.sleep(0.4)  # the request is in flight
    server.signal(signal.SIGTERM)
    client.join(10)
    assert results and results[0].status == 200  # finished, not cut
    assert results[0].header("connection") == "close"  # the client learns not to reuse it
    assert server.wait_exit(10) == 0
    with pytest.raises(OSError):
        rawhttp.get(server.port, "/?s=0", timeout=2)  # not accepting any more
    assert wait_gone(children, 5), "server processes left behind"


def test_grace_period_bounds_the_drain(serve):
    server = serve("proc_apps:slow", "-p", "2", "--grace", "0.5")
    children = pids_of(server)
    failed = []

    def slow_client():
        try:
            server.get("/?s=30", timeout=10)
        except (OSError, AssertionError) as e:
            failed.append(e)

    client = threading.Thread(target=slow_client)
    client.start()
    time.sleep(0.4)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert time.monotonic() - started < 4
    client.join(10)
    assert failed  # cut at the end of the grace period
    assert wait_gone(children, 5)


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_second_sigterm_stops_at_once(serve, no_proc):
    server = serve("proc_apps:slow", "-p", no_proc)
    children = pids_of(server, 2) if no_proc == "2" else []
    client = threading.Thread(target=lambda: pytest.raises(
        (OSError, AssertionError), server.get, "/?s=30", timeout=10))
    client.start()
    time.sleep(0.4)
    server.signal(signal.SIGTERM)  # drain: the request may take the 30 s grace period
    server.wait_for_output("received SIGTERM")
    time.sleep(SIGNAL_DEBOUNCE + 0.2)  # closer to the first, it would count as the first
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert time.monotonic() - started < 3
    assert "stopping now" in server.output()
    client.join(10)
    assert wait_gone(children, 5)


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_a_doubled_sigterm_still_drains(serve, no_proc):
    """A TERM to the whole process group reaches a server process twice (from the signal
    and from its manager): that is one request to stop, and in-flight requests finish."""
    server = serve("proc_apps:slow", "-p", no_proc)
    children = pids_of(server, 2) if no_proc == "2" else []
    result = {}
    client = threading.Thread(target=lambda: result.update(r=server.get("/?s=1.5", timeout=10)))
    client.start()
    time.sleep(0.4)
    if no_proc == "2":  # as a process group's TERM: each process, and the manager forwards
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        server.signal(signal.SIGTERM)
    else:
        server.signal(signal.SIGTERM)
        server.signal(signal.SIGTERM)
    client.join(10)
    assert result["r"].status == 200
    assert server.wait_exit(10) == 0
    assert "stopping now" not in server.output()
    assert "Traceback" not in server.output()  # a stop repeated in Twisted fails loudly


def test_killed_manager_leaves_no_server_process(serve):
    server = serve("proc_apps:pid", "-p", "2")
    children = pids_of(server)
    server.proc.kill()
    assert wait_gone(children, 5), "server processes outlived their manager"


def test_sighup_replaces_processes_without_refusing(serve):
    server = serve("proc_apps:slow", "-p", "2", "-t", "2", "--access-log", "off")
    before: Set[int] = set(pids_of(server))
    load = Load(server.port, clients=4, target="/?s=0.02")
    sighup_under(server, load, 0.5)
    after = {int(p) for p in re.findall(r"server process \d+ ready \(pid (\d+)\)",
                                        server.output())} - before
    assert len(after) == 2
    assert load.errors == [], load.errors[:5]
    answered = {int(p) for p in load.ok}
    assert answered & after, (answered, after)  # the new processes serve
    assert wait_gone(before, 10)  # the old ones drained and ended
    assert server.alive()


class H2Load(Load):
    """``clients`` threads, each on an HTTP/2 connection (h2c) with ``streams`` requests
    at a time.  After a GOAWAY the streams it does not name (those the server never
    began, RFC 9113 6.8) are sent again on a new connection, as clients do; a stream it
    names that is not answered is an error."""

    def __init__(self, port: int, clients: int = 4, target: str = "/",
                 streams: int = 2) -> None:
        self.streams = streams
        self.retried = 0
        super().__init__(port, clients, target)

    def _run(self) -> None:
        from test_http2 import Client
        c = None
        while self.running:
            if c is None or c.closed or c.goaway is not None:
                if c is not None:
                    c.close()
                try:
                    c = Client(self.port)
                    # The client's h2 has the bug the server's has: it would take the
                    # server's GOAWAY for the end of every stream.
                    compat.h2_open_after_goaway(c.conn)
                except OSError as e:
                    self.errors.append("connect: %s" % e)
                    return
            if not self._round(c):
                c = None
        if c is not None:
            c.close()

    def _round(self, c) -> bool:
        """``streams`` requests on ``c``; False if the connection failed them."""
        sids = [c.request(self.target, flush=False) for _ in range(self.streams)]
        c.flush()

        def done(sid: int) -> bool:
            return c.streams[sid].ended or c.streams[sid].reset is not None
        try:
            c.wait(lambda: all(done(s) for s in sids) or c.goaway is not None)
            if c.goaway is not None:  # the streams it names are still answered
                last = c.goaway.last_stream_id
                c.wait(lambda: all(done(s) for s in sids if s <= last))
        except (AssertionError, OSError) as e:
            if c.goaway is None:
                self.errors.append("%s: %s" % (type(e).__name__, e))
                return False
        for sid in sids:
            stream = c.streams[sid]
            if stream.ended and stream.headers and stream.status == 200:
                self.ok[bytes(stream.data).split()[0]] += 1
            elif c.goaway is not None and sid > c.goaway.last_stream_id:
                self.retried += 1  # never begun: sent again on the next connection
            else:
                self.errors.append("stream %d: %r reset %r" % (sid, stream.headers,
                                                                stream.reset))
        return True


def test_sighup_replaces_processes_without_failing_an_http2_stream(serve):
    """SIGHUP as for HTTP/1.1: the old processes send GOAWAY, finish the streams they
    took, and end; the new ones serve the connections that follow."""
    server = serve("proc_apps:slow", "-p", "2", "-t", "2", "--access-log", "off",
                   "--http2-cleartext", "on")
    before: Set[int] = set(pids_of(server))
    load = H2Load(server.port, clients=4, target="/?s=0.02")
    sighup_under(server, load, 0.5)
    after = {int(p) for p in re.findall(r"server process \d+ ready \(pid (\d+)\)",
                                        server.output())} - before
    assert load.errors == [], load.errors[:5]
    answered = {int(p) for p in load.ok}
    assert answered & after and answered & before, (answered, before, after)
    assert wait_gone(before, 10)
    assert "Traceback" not in server.output()


def test_sighup_with_one_process_is_ignored(serve):
    server = serve("apps:hello")
    server.signal(signal.SIGHUP)
    server.wait_for_output("SIGHUP ignored")
    assert server.get("/").status == 200
