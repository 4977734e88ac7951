"""
Every reactor Twisted ships for Linux serves HTTP and WebSockets: the real server under
``twistd --reactor=NAME``, and under a .tac file that installs the asyncio reactor itself
(as Twisted apps that use asyncio libraries do).  The pool hooks the reactor's iteration
where that is known to be called, and falls back to timed calls elsewhere (worker.py):
both ways are also tested in process, on reactors that are built but not installed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import textwrap
import threading
import time
from typing import List

import pytest
from twisted.internet import asyncioreactor, selectreactor
from twisted.logger import globalLogPublisher
from websockets.sync.client import connect as ws_connect

import rawhttp
from conftest import LOCAL, TWISTD_NODAEMON, ServerProcess, _env
from yimmo_twisted.exchange import DONE
from yimmo_twisted.logs import set_level
from yimmo_twisted.proc import reactor_name
from yimmo_twisted.worker import Handoff, WorkerPool

pytestmark = pytest.mark.timeout(60)

TWIST = [sys.executable, "-c", "from twisted.application.twist._twist import Twist; "
         "Twist.main()", "--log-format=text"]
# The reactors of `twistd --help-reactors` on Linux ("default" is poll), and whether the
# pool should find its iteration hook called there.
REACTORS = {"epoll": True, "poll": True, "select": True, "asyncio": False}
HOOKED = "iteration hook: doIteration"
UNHOOKED = "iteration hook: none"


def twistd(*args: str, command: List[str] = TWISTD_NODAEMON) -> ServerProcess:
    server = ServerProcess(command + list(args), _env(None))
    server._wait_listening(15)
    return server


def check_serves(server: ServerProcess) -> None:
    """HTTP (one request, 20 pipelined, a body, 4 blocking requests) and a WebSocket."""
    r = server.get("/")
    assert (r.status, r.body) == (200, b"Hello, World!\n")
    with server.connect() as c:
        c.send(b"".join(rawhttp.request("GET", "/?i=%d" % i) for i in range(20)))
        responses = [c.read_response() for _ in range(20)]
        assert [r.status for r in responses] == [200] * 20
        assert all(not r.connection_close for r in responses)
        c.send(rawhttp.request("POST", "/echo", body=b"posted body"))
        r = c.read_response()
        assert (r.status, r.body) == (200, b"posted body")
    # Four requests that sleep: the pool runs them side by side (a blocked worker's queue
    # is taken by the others), whichever way the reactor drives it.
    results = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda i=i: results.append(
        server.get("/sleep?t=0.5&i=%d" % i).status)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 4
    assert time.monotonic() - t0 < 1.5
    with ws_connect("ws://127.0.0.1:%d/echo" % server.port, open_timeout=5,
                    close_timeout=2, compression=None) as ws:
        ws.send("text message")
        assert ws.recv(5) == "text message"
        ws.send(b"\x00\x01binary")
        assert ws.recv(5) == b"\x00\x01binary"


def check_stops(server: ServerProcess) -> None:
    """SIGTERM: a clean stop, soon."""
    t0 = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) in (0, -signal.SIGTERM)  # twistd re-raises the signal
    assert time.monotonic() - t0 < 5
    out = server.output()
    assert "received SIGTERM: stopping" in out and "served " in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("name", list(REACTORS))
def test_twistd_reactor_serves_http_and_websockets(name):
    server = twistd("--reactor=" + name, "yimmo", "--app", "reactor_apps:app", "--listen",
                    LOCAL, "--log-level", "DEBUG")
    try:
        check_serves(server)
        assert (HOOKED if REACTORS[name] else UNHOOKED) in server.output(), server.output()
        check_stops(server)
    finally:
        server.stop()


@pytest.mark.parametrize("command", [TWISTD_NODAEMON, TWIST], ids=["twistd", "twist"])
def test_server_processes_run_the_managers_reactor(command):
    """--reactor=asyncio with -p 2: the server processes run asyncio too, as the manager
    does (their pools say so; under twistd their lines come through the manager's log)."""
    server = twistd("--reactor=asyncio", "yimmo", "--app", "reactor_apps:app", "-p", "2",
                    "--listen", LOCAL, "--log-level", "DEBUG", command=command)
    try:
        for slot in (0, 1):
            server.wait_for_output(r"server process %d ready" % slot, 15)
        check_serves(server)
        hooks = re.findall(r"iteration hook: ([^\n\"]*)", server.output())
        assert hooks == ["none, AsyncioSelectorReactor runs another loop; batches go by "
                         "callLater(0), output by callFromThread"] * 2, server.output()
    finally:
        server.stop()


def test_reactor_name(asyncio_reactor):
    """The name twistd's --reactor gives a running reactor's type; None for others."""
    class Custom(selectreactor.SelectReactor):
        pass

    assert reactor_name(asyncio_reactor) == "asyncio"
    assert reactor_name(selectreactor.SelectReactor()) == "select"
    assert reactor_name(Custom()) is None


def test_tac_file_installing_the_asyncio_reactor(tmp_path):
    tac = tmp_path / "asyncio.tac"
    tac.write_text(textwrap.dedent("""\
        from twisted.internet import asyncioreactor
        asyncioreactor.install()

        from twisted.application import service
        from yimmo_twisted import YimmoService

        application = service.Application("asyncio")
        YimmoService(app="reactor_apps:app", listen="%s", no_threads=4,
                     log_level="DEBUG").setServiceParent(application)
        """ % LOCAL))
    server = twistd("-y", str(tac))
    try:
        assert "AsyncioSelectorReactor" in server.output()
        check_serves(server)
        assert UNHOOKED in server.output()
        check_stops(server)
    finally:
        server.stop()


# -- in process: the pool's hook, and its fallback ---------------------------------------

class Sink:
    """Where the jobs' output goes (as a session): the threads it was delivered on."""

    def __init__(self):
        self.produced = self.consumed = 0
        self.paused = False
        self.delivered = []

    def deliver(self, job, data, end):
        self.delivered.append(threading.current_thread())


class Job:
    """Work for the pool (as a WebSocket's callbacks are): sleeps, then emits its output."""

    def __init__(self, pool, sink, sleep=0.0):
        self.pool, self.session, self.sleep = pool, sink, sleep
        self.done = threading.Event()

    def run(self):
        time.sleep(self.sleep)
        self.done.set()
        self.pool.handoff.emit(self, b"done", DONE)


@pytest.fixture
def pool_on():
    """``pool_on(reactor, steal_after)``: a started pool of 4; stopped at teardown."""
    pools = []

    def make(reactor, steal_after=0.001):
        pool = WorkerPool(lambda environ, start_response: [], 4, Handoff(reactor, 1 << 20),
                          steal_after)
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.uninstall()
        pool.stop(5)


@pytest.fixture
def worker_log():
    """The pool's log lines (at debug too) while the test runs."""
    set_level("DEBUG")
    events = []

    def observe(event):
        if event.get("log_namespace") == "yimmo.worker":
            events.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
    set_level("INFO")


def test_pool_hooks_twisteds_loop(pool_on, worker_log):
    reactor = selectreactor.SelectReactor()
    pool = pool_on(reactor)
    pool.install(reactor)
    assert "doIteration" in vars(reactor)
    sink = Sink()
    jobs = [Job(pool, sink) for _ in range(5)]
    for job in jobs:
        pool.submit(job)
    assert pool._batch == jobs  # given to a worker just before the reactor sleeps
    reactor.iterate(0)  # as Twisted's loop does: timed calls, then doIteration
    assert not pool._batch
    reactor.iterate(0)
    assert worker_log == ["iteration hook: doIteration of SelectReactor"]
    deadline = time.monotonic() + 5
    while len(sink.delivered) < 5 and time.monotonic() < deadline:
        reactor.iterate(0.01)  # output is drained after each iteration
    assert all(job.done.is_set() for job in jobs)
    assert sink.delivered == [threading.current_thread()] * 5
    pool.uninstall()
    assert "doIteration" not in vars(reactor)


def test_pool_falls_back_when_doiteration_is_not_called(pool_on, worker_log):
    reactor = selectreactor.SelectReactor()
    pool = pool_on(reactor)
    pool.install(reactor)
    job = Job(pool, Sink())
    pool.submit(job)
    reactor.runUntilCurrent()  # timed calls only: a loop that never calls doIteration
    reactor.runUntilCurrent()
    assert "doIteration" not in vars(reactor)
    assert worker_log == ["iteration hook: none, doIteration of SelectReactor was not "
                          "called; batches go by callLater(0), output by callFromThread"]
    assert job.done.wait(5)  # the batch held for the hook went to a worker
    assert not pool._batch


def run_loop(loop, predicate, timeout):
    async def wait():
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
    loop.run_until_complete(wait())


@pytest.fixture
def asyncio_reactor():
    loop = asyncio.new_event_loop()
    yield asyncioreactor.AsyncioSelectorReactor(loop)
    loop.close()


def test_pool_on_asyncio_one_call_per_turn(pool_on, worker_log, asyncio_reactor):
    reactor = asyncio_reactor
    pool = pool_on(reactor)
    pool.install(reactor)
    assert "doIteration" not in vars(reactor)
    assert worker_log == ["iteration hook: none, AsyncioSelectorReactor runs another "
                          "loop; batches go by callLater(0), output by callFromThread"]
    sink = Sink()
    jobs = [Job(pool, sink) for _ in range(5)]
    for job in jobs:
        pool.submit(job)
    assert len(reactor.getDelayedCalls()) == 1  # one flush for the turn's five
    run_loop(reactor._asyncioEventloop, lambda: len(sink.delivered) == 5, 5)
    assert sink.delivered == [threading.current_thread()] * 5
    assert pool.handoff.wakeups <= 5


def test_pool_on_asyncio_blocked_worker_has_its_queue_taken(pool_on, asyncio_reactor):
    """Four jobs that sleep, submitted in one turn, run side by side."""
    reactor = asyncio_reactor
    pool = pool_on(reactor, steal_after=0.01)
    pool.install(reactor)
    sink = Sink()
    t0 = time.monotonic()
    for _ in range(4):
        pool.submit(Job(pool, sink, sleep=0.3))
    run_loop(reactor._asyncioEventloop, lambda: len(sink.delivered) == 4, 5)
    assert len(sink.delivered) == 4
    assert time.monotonic() - t0 < 0.6
    assert sum(1 for w in pool.workers if w.finished) == 4
