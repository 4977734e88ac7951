"""
Worker threads, their queues, and the handoff of exchanges and output between them and
the reactor thread.  This is where a threaded Python server wins or loses: every hop
between threads is a wake-up (a futex, a context switch) and a change of GIL owner.

GIL-aware dispatch.  Python code runs one thread at a time, so two runnable workers do
not finish CPU work sooner than one; they only pass the GIL back and forth, and take it
from the reactor at each of its syscalls.  Threads pay off when the app *blocks* (sleep,
database, network), and then it does not hold the GIL.  So:

* The exchanges parsed during one reactor iteration are given to one worker as a batch,
  just before the reactor sleeps in epoll (where it releases the GIL).  A worker that is
  already running and not blocked takes them without being woken at all.
* A worker whose current exchange has run for longer than ``steal_after`` is taken to be
  blocked: other workers are woken and take (steal) the exchanges queued behind it.  So a
  sleeping app still gets all ``no_threads`` threads, within ``steal_after`` of needing them.
* Output goes back through one FIFO shared by all workers (``Handoff``); the reactor
  collects it after each iteration, and a worker wakes the reactor only when it sleeps.

All of this hangs on the reactor's ``doIteration`` (``WorkerPool.install``), which
Twisted's own loop calls once per turn (epoll, poll, select).  A reactor run by another
loop never calls it (asyncio's: ``twistd --reactor=asyncio``); there a turn's exchanges
go to a worker in one ``callLater(0)``, blocked workers are looked at again with
``callLater``, and each batch of output costs one ``callFromThread``.

Under load a hello-world exchange costs far less than one wake-up each way (both are
counted: ``WorkerPool.hops``).  The reactor never waits on a worker.  A worker waits on the
reactor only when its client is slow (the session is paused by its transport, or too
many bytes are not yet written): Twisted's producer/consumer carried over to the thread.
"""

from __future__ import annotations

import threading
from collections import deque
from queue import SimpleQueue
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Protocol, Union, cast

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from . import compat
from .context import Context
from .exchange import MORE, Exchange
from .logs import logger

if TYPE_CHECKING:  # pragma: no cover
    from .http2 import H2Exchange
    from .metrics import Tally

log = logger("yimmo.worker")


@implementer(IPushProducer)
class Channel:
    """
    A destination of worker output: an HTTP session or a WebSocket.  ``Handoff`` counts
    what it carries there (``produced`` by the senders, ``consumed`` by the reactor: one
    writer each) and makes a sender wait on ``writable`` while the client is slow.  Also
    the push producer its transport pauses while the client does not read.
    """

    def __init__(self) -> None:
        self.gone = False  # no more output will be delivered
        self.paused = False  # the transport's buffer is full
        self.produced = 0
        self.consumed = 0
        self.writer_waiting = False
        self.writable = threading.Event()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.writer_waiting:
            self.writable.set()

    def stopProducing(self) -> None:
        self.shut()

    def shut(self) -> None:
        """No more output: wake a sender waiting for the client."""
        self.gone = True
        self.writable.set()

    def deliver(self, source: Any, data: Optional[bytes], end: int) -> None:
        """A record of ``source``'s output (its Source), on the reactor (Handoff.drain)."""
        raise NotImplementedError


class Source(Protocol):
    """What emits output: an exchange (to its session), or a WebSocket's own channel."""

    @property
    def session(self) -> Channel: ...


class Handoff:
    """
    Output of all workers on its way to the reactor thread, in one FIFO.  While the pool
    hooks the reactor's iteration (``WorkerPool.install``), the reactor drains it after
    each iteration and needs waking only while it sleeps; otherwise each batch of output
    costs one ``callFromThread``.
    """

    def __init__(self, reactor, output_buffer: int) -> None:
        self._reactor = reactor
        self._records: deque = deque()
        self.hooked = False
        self.sleeping = True  # the reactor may be asleep: wake it for output
        self._wake_pending = False
        self._output_buffer = output_buffer
        self.wakeups = 0

    # -- worker -> reactor -------------------------------------------------------------

    def emit(self, exchange: Source, data: Optional[bytes], end: int) -> None:
        """Queue output for the reactor (worker thread).  Blocks while the client is slow."""
        session = exchange.session
        if data:
            session.produced += len(data)
        # Append before testing the flags; the reactor clears them before it pops: then a
        # record is either seen by a drain under way or causes a wake-up.
        self._records.append((exchange, data, end))
        if self.sleeping and not self._wake_pending:
            self._wake_pending = True
            self.wakeups += 1
            if self.hooked:
                self._reactor.wakeUp()
            else:
                self._reactor.callFromThread(self.drain)
        if end == MORE and data and (
                session.paused or session.produced - session.consumed > self._output_buffer):
            self.wait_writable(session)

    def wait_writable(self, session, timeout: Optional[float] = None) -> bool:
        """
        Wait until ``session`` (an HTTP session or a WebSocket channel) takes output again:
        its client reads and little enough is unwritten.  False after ``timeout`` seconds.
        """
        limit = self._output_buffer
        event = session.writable
        deadline = None if timeout is None else monotonic() + timeout
        session.writer_waiting = True
        try:
            while not session.gone and (
                    session.paused or session.produced - session.consumed > limit):
                event.clear()
                # Re-test after clearing: the reactor sets the event after changing state.
                if session.gone or not (
                        session.paused or session.produced - session.consumed > limit):
                    break
                if deadline is None:
                    event.wait()
                elif not event.wait(max(0.0, deadline - monotonic())):
                    return False
        finally:
            session.writer_waiting = False
        return True

    @property
    def pending(self) -> bool:
        return bool(self._records)

    def next_session(self) -> Optional[Channel]:
        """
        The session of the record to be delivered next, if any (reactor thread): when it
        is the one a delivery is for, that delivery may hold its bytes back for one write
        with the next (drain delivers every record before it returns).
        """
        records = self._records
        return records[0][0].session if records else None

    def drain(self) -> None:
        """Deliver every queued record (reactor thread)."""
        self._wake_pending = False
        records = self._records
        while records:
            exchange, data, end = records.popleft()
            exchange.session.deliver(exchange, data, end)


_STOP = object()


class Job(Protocol):
    """Work for a worker other than an exchange: a WebSocket's callbacks, a file's close()."""

    def run(self) -> None: ...


Work = Union[Exchange, Job]


class Worker(threading.Thread):
    """One thread running the application, fed by its own queue (and others' when blocked)."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        super().__init__(name="yimmo-worker-%d" % index, daemon=True)
        self.pool = pool
        self.queue: Deque[Work] = deque()  # given to this worker, taken from the left
        self._bell: SimpleQueue = SimpleQueue()  # a C-level wait that releases the GIL
        self.sleeping = False
        self.started = 0.0  # monotonic start of the current exchange; 0.0 between exchanges
        self.current: object = None  # that exchange (or WebSocket callbacks), for recycle.py
        self.finished = 0
        self.sleeps = 0  # times this worker went to sleep and had to be woken
        self.tally: Optional["Tally"] = None  # its requests, for the metrics (set before start)

    def wake(self) -> None:
        """Wake this worker if it sleeps (reactor thread).  An extra ring is harmless."""
        if self.sleeping:
            self.sleeping = False
            self._bell.put(None)

    def run(self) -> None:
        app = self.pool.app
        emit = self.pool.handoff.emit
        access = self.pool.access
        tally = self.tally
        take = self._take
        while True:
            exchange = take()
            if exchange is None:
                self.sleeping = True
                # Test again after raising the flag: work given before the flag was seen
                # would otherwise wait for the next ring.
                exchange = take()
                if exchange is None:
                    self.sleeps += 1
                    if self._bell.get() is _STOP:
                        return
                    continue
                self.sleeping = False
            self.current = exchange
            self.started = monotonic()
            try:
                if not isinstance(exchange, Exchange):
                    exchange.run()  # a WebSocket's callbacks, a file's close()
                elif not exchange.session.gone:
                    # An HTTP/2 stream's exchange frames its response its own way.
                    context = (Context(exchange, emit) if type(exchange) is Exchange
                               else cast("H2Exchange", exchange).context(emit))
                    context.run(app)
                    if access is not None:
                        access(context)
                    if tally is not None:
                        tally.record(context)
                elif exchange.body is not None:
                    exchange.body.release()
            except BaseException:  # the worker outlives anything an app raises
                log.failure("unexpected error in worker {name}", name=self.name)
            self.started = 0.0
            self.current = None
            self.finished += 1

    def _take(self) -> Optional[Work]:
        try:
            return self.queue.popleft()
        except IndexError:
            return self.pool.steal(self)

    def stop(self) -> None:
        self._bell.put(_STOP)


class WorkerPool:
    """``no_threads`` workers; exchanges are submitted on the reactor thread."""

    def __init__(self, app: Callable, no_threads: int, handoff: Handoff,
                 steal_after: float = 0.001) -> None:
        self.app = app
        self.handoff = handoff
        self.steal_after = steal_after
        self.workers: List[Worker] = [Worker(self, i) for i in range(no_threads)]
        self._batch: list = []
        self._reactor = None  # once installed
        self._hooked = False  # into its doIteration; else timed calls flush the batch
        self._entered = False  # the hook has run (install confirms it)
        self._flush_due = False  # timed: a callLater(0) will flush the batch
        self._look_again = None  # timed: the next call of _rebalance_soon
        self.access: Optional[Callable] = None  # the access log's record, set before start()

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    # -- reactor side ------------------------------------------------------------------

    def submit(self, exchange: Work) -> None:
        """Run ``exchange`` on some worker, soon (reactor thread)."""
        self._batch.append(exchange)
        if not self._hooked:
            if self._reactor is None:
                self.flush()  # no reactor to wait for (not installed, or stopped)
            elif not self._flush_due:
                # The end of this reactor turn, where the exchanges it parses are one batch.
                self._flush_due = True
                self._reactor.callLater(0, self._turn)

    def flush(self) -> None:
        """Give the exchanges submitted since the last flush to one worker."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        worker = self.pick()
        worker.queue.extend(batch)
        worker.wake()

    def pick(self) -> Worker:
        """
        A worker that is awake and not blocked (it will take the batch without a
        wake-up), else an idle one, else the one with the shortest queue.  Lower
        indexes first, so a light load stays on few threads.
        """
        now = monotonic()
        idle = None
        shortest = None
        for worker in self.workers:
            if not worker.sleeping:
                started = worker.started
                if not started or now - started < self.steal_after:
                    return worker
            elif idle is None and not worker.queue:
                idle = worker
            if shortest is None or len(worker.queue) < len(shortest.queue):
                shortest = worker
        assert shortest is not None  # a pool has at least one worker
        return idle or shortest

    def rebalance(self) -> bool:
        """
        Wake sleeping workers for the exchanges queued behind a blocked one (reactor
        thread, each iteration).  True while such exchanges wait behind a worker that may
        block soon, and idle workers could take them: then the reactor must look again
        within ``steal_after``.
        """
        now = monotonic()
        stuck = 0
        watch = False
        for worker in self.workers:
            if worker.queue:
                started = worker.started
                if started and now - started >= self.steal_after:
                    stuck += len(worker.queue)
                else:
                    watch = True  # running briefly, or about to start: may block yet
        if not (stuck or watch):
            return False
        sleepers = [w for w in self.workers if w.sleeping]
        for worker in sleepers[:stuck]:
            worker.wake()
        return watch and len(sleepers) > stuck

    def steal(self, thief: Worker) -> Optional[Work]:
        """An exchange queued behind a blocked worker, for ``thief`` to run (worker thread)."""
        now = monotonic()
        for worker in self.workers:
            if worker is not thief and worker.queue:
                started = worker.started
                if started and now - started >= self.steal_after:
                    try:
                        return worker.queue.popleft()
                    except IndexError:
                        pass
        return None

    def install(self, reactor) -> None:
        """
        Flush the batch and collect the output around each reactor iteration: in
        ``doIteration`` where the reactor's loop calls it (compat.runs_do_iteration, then
        confirmed within its first turns), else by timed calls (see ``submit``).
        """
        if self._reactor is not None:
            return
        self._reactor = reactor
        name = type(reactor).__name__
        if not compat.runs_do_iteration(reactor):
            log.debug("iteration hook: none, {reactor} runs another loop; batches go by "
                      "callLater(0), output by callFromThread", reactor=name)
            return
        self._hook(reactor)

        def confirm() -> None:
            if self._reactor is not reactor or not self._hooked:
                return  # uninstalled meanwhile
            if self._entered:
                log.debug("iteration hook: doIteration of {reactor}", reactor=name)
                return
            log.warn("iteration hook: none, doIteration of {reactor} was not called; "
                     "batches go by callLater(0), output by callFromThread", reactor=name)
            self._unhook()
            self._turn()
            self.handoff.drain()

        # Twisted's loop runs the first call before its first doIteration, the second
        # after it.
        reactor.callLater(0, reactor.callLater, 0, confirm)

    def _hook(self, reactor) -> None:
        iterate = compat.plain_poll(reactor) or reactor.doIteration
        handoff = self.handoff
        steal_after = self.steal_after

        def doIteration(timeout):
            self._entered = True
            if self._batch:
                self.flush()
            if self.rebalance() and (timeout is None or timeout > steal_after):
                timeout = steal_after
            handoff.sleeping = True
            if handoff.pending:
                timeout = 0  # output is waiting: poll, don't sleep
            try:
                iterate(timeout)
            finally:
                handoff.sleeping = False
                if handoff.pending:
                    handoff.drain()

        reactor.doIteration = doIteration
        self._hooked = True
        handoff.hooked = True

    def _unhook(self) -> None:
        reactor = self._reactor
        assert reactor is not None  # hooked, so installed
        del reactor.doIteration  # the class's again
        self._hooked = False
        self.handoff.hooked = False
        self.handoff.sleeping = True  # wake the reactor for every batch of output

    def _turn(self) -> None:
        """Without the hook, at the end of a reactor turn: give its batch to a worker."""
        self._flush_due = False
        self.flush()
        if self._look_again is None:
            self._rebalance_soon()

    def _rebalance_soon(self) -> None:
        """Without the hook: rebalance, and again after ``steal_after`` while it asks to."""
        self._look_again = None
        if self.rebalance() and self._reactor is not None:
            self._look_again = self._reactor.callLater(self.steal_after,
                                                       self._rebalance_soon)

    def uninstall(self) -> None:
        """Stop waiting for the reactor: submit flushes at once, output wakes it."""
        reactor = self._reactor
        if reactor is None:
            return
        if self._hooked:
            self._unhook()
        self._reactor = None
        if self._look_again is not None:
            self._look_again.cancel()
            self._look_again = None
        self.flush()
        if self.handoff.pending:
            reactor.callFromThread(self.handoff.drain)

    def queued(self) -> int:
        """Work submitted and not yet taken by a worker."""
        return len(self._batch) + sum(len(w.queue) for w in self.workers)

    def busy(self) -> int:
        """Workers running an exchange (or a WebSocket callback) now."""
        return sum(1 for w in self.workers if w.started != 0.0)

    def hops(self) -> dict:
        """Thread hand-overs so far: how often a worker and the reactor had to be woken."""
        requests = sum(w.finished for w in self.workers)
        worker_wakeups = sum(w.sleeps for w in self.workers) - len(self.workers)
        reactor_wakeups = self.handoff.wakeups
        return {
            "requests": requests,
            "worker_wakeups": max(worker_wakeups, 0),
            "reactor_wakeups": reactor_wakeups,
            "hops_per_request": (max(worker_wakeups, 0) + reactor_wakeups) / requests
            if requests else 0.0,
        }

    def stop(self, timeout: float = 5.0) -> None:
        """Let each worker finish its queue, then end it (waiting at most ``timeout`` in all)."""
        for worker in self.workers:
            worker.stop()
        deadline = monotonic() + timeout
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - monotonic()))
