"""
Recycling (recycle.py, proc.py): server processes past max_requests, max_lifetime or
max_rss are replaced as on SIGHUP, successor first, refusing and losing no request; hung
requests are logged with their thread's stack, and with timeout_action recycle their
process is replaced, then killed once its grace period is over.  Bad values stop start-up.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import List

import pytest

import rawhttp
from conftest import ROOT, _env
from test_proc import Load, pids_of, wait_gone

QUIET = ("-t", "2", "--access-log", "off")


def recycles(server) -> int:
    return len(re.findall(r"recycling server process", server.output()))


def readies(server) -> int:
    return len(re.findall(r"server process \d+ ready", server.output()))


def test_max_requests_replaces_the_process_every_50_requests(serve):
    server = serve("proc_apps:pid", "--max-requests", "50", "--max-requests-jitter", "0",
                   *QUIET)
    assert "(manager; replaces server processes past max_requests 50, pid" in server.output()
    pids: List[bytes] = []
    errors: List[str] = []
    conn = None
    for i in range(200):
        # Slow while a successor starts (the old process serves meanwhile): a fast client
        # would send the 200 to one process or two.  Then on fresh connections only: a
        # keep-alive connection idle when the drain begins is closed (after 0.25 s idle),
        # and a request sent as it closes is lost, as with any server; clients retry.
        starting = recycles(server) >= readies(server)
        if starting and conn is not None:
            conn.close()
            conn = None
        try:
            if i % 2 or starting:  # fresh connections and keep-alive ones, in turn
                r = server.get("/")
            else:
                if conn is None:
                    conn = rawhttp.connect(server.port)
                conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                r = conn.read_response()
                if r.connection_close:
                    conn.close()
                    conn = None
            assert r.status == 200, r
            pids.append(r.body.split()[0])
        except (OSError, AssertionError) as e:
            errors.append("request %d: %s: %s" % (i, type(e).__name__, e))
            conn = None
        # Paced so that the count, checked every 0.1 s, overshoots 50 by a few.
        time.sleep(0.3 if starting else 0.02)
    if conn is not None:
        conn.close()
    assert not errors, errors
    changes = sum(1 for a, b in zip(pids, pids[1:]) if a != b)
    assert changes >= 3, (changes, server.output())
    assert re.search(r"served 5\d requests \(max_requests 50\)", server.output())


def test_max_requests_under_concurrent_load_loses_no_request(serve):
    server = serve("proc_apps:pid", "--max-requests", "40", "--max-requests-jitter", "10",
                   *QUIET)
    load = Load(server.port, clients=4)
    try:
        deadline = time.monotonic() + 20
        while recycles(server) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        load.stop()
    assert not load.errors, load.errors
    assert recycles(server) >= 3 and len(load.ok) >= 3, (load.ok, server.output())
    assert server.alive()


def test_max_lifetime_replaces_the_process_after_it(serve):
    server = serve("proc_apps:pid", "--max-lifetime", "2", *QUIET)
    first = server.get("/").body.split()[0]
    load = Load(server.port, clients=2)
    try:
        m = server.wait_for_output(r"recycling server process 0 \(pid %s\): ran ([\d.]+) s "
                                   r"\(max_lifetime 2 s\)" % first.decode(), timeout=6)
        assert 2 <= float(m.group(1)) < 3.5
        server.wait_for_output(r"server process 0 ready[\s\S]*server process 0 ready")
        time.sleep(0.5)
    finally:
        load.stop()
    assert not load.errors, load.errors
    assert len(load.ok) >= 2 and server.get("/").body.split()[0] != first, load.ok


def test_max_rss_replaces_the_process_once_its_successor_has_served(serve):
    server = serve("proc_apps:pid", "--max-rss", "1M", *QUIET)
    first = server.get("/").body.split()[0]
    server.wait_for_output(r"recycling server process 0 \(pid %s\): resident memory \d+ "
                           r"bytes \(max_rss 1048576\)" % first.decode(), timeout=6)
    server.wait_for_output(r"server process 0 ready[\s\S]*server process 0 ready")
    # Rate limit: a successor, itself past max_rss, is not replaced until it has served.
    time.sleep(3)
    assert recycles(server) == 1, server.output()
    second = server.get("/").body.split()[0]
    assert second != first
    server.wait_for_output(r"recycling server process 0 \(pid %s\)" % second.decode(),
                           timeout=6)


def _wait_hung_log(server, function: str, timeout: float):
    return server.wait_for_output(
        r"request running for [\d.]+ s \(request_timeout 1 s\) in yimmo-worker-\d: GET "
        r"/(spin|sleep); its stack:[\s\S]*proc_apps\.py\", line \d+, in %s" % function,
        timeout=timeout)


@pytest.mark.parametrize("path, function", [("/spin", "spin_forever"), ("/sleep", "routes")])
def test_hung_request_is_logged_with_its_stack(serve, path, function):
    server = serve("proc_apps:routes", "--request-timeout", "1", "--grace", "0.5", *QUIET)
    conn = rawhttp.connect(server.port)
    try:
        conn.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        sent = time.monotonic()
        _wait_hung_log(server, function, timeout=3)
        assert time.monotonic() - sent < 1 + 1, "not within request_timeout + 1 s"
        time.sleep(1)  # once per request
        assert server.output().count("request running for") == 1
        assert server.get("/").status == 200  # the other workers serve
    finally:
        conn.close()


def test_timeout_action_recycle_replaces_and_then_kills_the_hung_process(serve):
    server = serve("proc_apps:routes", "-p", "1", "--request-timeout", "1",
                   "--timeout-action", "recycle", "--grace", "2", *QUIET)
    hung = int(server.get("/").body.split()[0])
    conn = rawhttp.connect(server.port)
    try:
        conn.send(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n")
        _wait_hung_log(server, "spin_forever", timeout=3)
        server.wait_for_output(r"recycling server process 0 \(pid %d\): a request ran past "
                               r"request_timeout" % hung)
        successor = pids_of(server, 2)[1]
        draining = time.monotonic()
        r = server.get("/hello")
        assert r.status == 200 and int(r.body.split()[0]) == successor
        assert wait_gone([hung], 2 + 5 + 2), "the hung process outlived its grace period"
        assert time.monotonic() - draining >= 1.5  # it had its grace period
    finally:
        conn.close()
    assert server.get("/").status == 200 and server.alive()


def _exit_of(*args: str, env=None):
    return subprocess.run([sys.executable, "-m", "yimmo_twisted", *args, "proc_apps:pid"],
                          cwd=ROOT, env=_env(env or {}), capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("option, value", [
    ("--max-requests", "-1"), ("--max-requests", "many"), ("--max-requests-jitter", "-5"),
    ("--max-lifetime", "-2"), ("--max-lifetime", "soon"), ("--max-rss", "-1M"),
    ("--max-rss", "big"), ("--request-timeout", "-1"), ("--timeout-action", "panic"),
])
def test_bad_values_are_refused_in_one_line(option, value):
    out = _exit_of("%s=%s" % (option, value))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yimmo-wsgi: error: invalid "), out.stderr


def test_settings_from_yaml(tmp_path):
    from yimmo_twisted.config import build

    path = tmp_path / "y.yaml"
    path.write_text("wsgi:\n  app: proc_apps:pid\n  max_requests: 10\n  max_requests_jitter: 3"
                    "\n  max_lifetime: 60\n  max_rss: 512M\n  request_timeout: 30\n"
                    "  timeout_action: recycle\n")
    s = build({"config": str(path)}, lambda o: "", {})
    assert (s.max_requests, s.max_requests_jitter, s.max_lifetime, s.max_rss,
            s.request_timeout, s.timeout_action) == (10, 3, 60.0, 512 << 20, 30.0, "recycle")
    assert s.managed and s.no_proc == 1


def test_settings_from_the_environment():
    from yimmo_twisted.config import build

    s = build({"app": "proc_apps:pid"}, lambda o: "", {
        "YIMMO_WSGI_MAX_REQUESTS": "7", "YIMMO_WSGI_MAX_REQUESTS_JITTER": "2",
        "YIMMO_WSGI_MAX_LIFETIME": "0", "YIMMO_WSGI_MAX_RSS": "1G",
        "YIMMO_WSGI_REQUEST_TIMEOUT": "2.5", "YIMMO_WSGI_TIMEOUT_ACTION": "log"})
    assert (s.max_requests, s.max_requests_jitter, s.max_lifetime, s.max_rss,
            s.request_timeout, s.timeout_action) == (7, 2, 0.0, 1 << 30, 2.5, "log")
    assert not build({"app": "proc_apps:pid"}, lambda o: "", {}).managed
    assert not build({"app": "a:b"}, lambda o: "", {"YIMMO_WSGI_REQUEST_TIMEOUT": "2"}).managed


# -- the watchdog alone: a task.Clock, workers that are plain objects ---------------------

class _Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ident = None  # no such thread: no stack
        self.started = 0.0
        self.finished = 0
        self.current = None


def _watchdog(**settings):
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from yimmo_twisted.config import Settings
    from yimmo_twisted.recycle import Watchdog

    clock = Clock()
    pool = SimpleNamespace(workers=[_Worker("w0"), _Worker("w1")])
    dog = Watchdog(Settings(**settings), pool, clock, clock.seconds)
    asked: List[str] = []
    dog.ask = asked.append
    dog.start()
    return dog, clock, pool.workers, asked


def test_jitter_is_drawn_once_per_process_within_its_range():
    draws = {_watchdog(max_requests=10, max_requests_jitter=5)[0].max_requests
             for _ in range(200)}
    assert draws == set(range(10, 16))
    assert _watchdog(max_requests=10)[0].max_requests == 10


def test_a_process_asks_once_it_has_served_and_again_only_much_later():
    from yimmo_twisted.recycle import ASK_AGAIN

    dog, clock, workers, asked = _watchdog(max_lifetime=1, max_rss=1)
    clock.advance(5)
    assert asked == []  # past both limits, but it has served nothing
    workers[0].finished = 1
    for _ in range(int(ASK_AGAIN) - 1):
        clock.advance(1)
    assert len(asked) == 1 and asked[0].startswith("max_lifetime ran "), asked
    clock.advance(1)
    clock.advance(1)
    assert len(asked) == 2  # the manager may have dropped the first (during a reload)


def test_max_requests_counts_every_worker():
    dog, clock, workers, asked = _watchdog(max_requests=5)
    workers[0].finished, workers[1].finished = 2, 2
    clock.advance(0.1)
    assert asked == []
    workers[1].finished = 3
    clock.advance(0.1)
    assert asked == ["max_requests served 5 requests (max_requests 5)"]


def test_a_hung_request_is_reported_once_and_recycles_only_if_told():
    for action, expected in (("log", []), ("recycle", ["request_timeout"])):
        dog, clock, workers, asked = _watchdog(request_timeout=2, timeout_action=action)
        workers[0].started = clock.seconds() + 0.01
        clock.advance(1)
        assert dog.hung == 0
        for _ in range(12):
            clock.advance(0.5)
        assert dog.hung == 1 and [a.split()[0] for a in asked] == expected
        workers[0].started = clock.seconds()  # its next request, hung too
        clock.advance(2.5)
        assert dog.hung == 2 and len(asked) == len(expected)  # not again so soon


def test_a_recycling_limit_makes_the_service_a_manager(monkeypatch):
    import apps
    from yimmo_twisted.config import ConfigError
    from yimmo_twisted.proc import Manager
    from yimmo_twisted.server import Server
    from yimmo_twisted.service import YimmoService

    monkeypatch.delenv("YIMMO_WSGI_MODULE", raising=False)
    assert isinstance(YimmoService(app="apps:hello", max_lifetime=60).child, Manager)
    assert isinstance(YimmoService(app="apps:hello", request_timeout=5).child, Server)
    with pytest.raises(ConfigError, match="as do max_requests"):
        YimmoService(app=apps.hello, max_requests=100)
