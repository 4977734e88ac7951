"""
Worker threads, their input queues, and the handoff of output back to the reactor.

The hops between threads are the cost centre of a threaded WSGI server, so they are
explicit here and counted:

* reactor -> worker: ``SimpleQueue.put`` of the exchange onto the chosen worker's own
  queue.  An idle worker sleeps in ``SimpleQueue.get``, a C-level wait that releases the
  GIL, and is woken by that put; nothing else is needed.
* worker -> reactor: ``Handoff.emit`` appends ``(exchange, bytes, end)`` to one deque
  shared by all workers and wakes the reactor only if no wake-up is already pending.  One
  ``callFromThread`` (one write to the reactor's waker pipe) thus carries every record
  queued until the reactor runs, however many exchanges and chunks that is.

A hello-world exchange therefore costs two hops: one put and at most one wake-up, fewer
under load when wake-ups are shared.  ``Handoff.wakeups`` and ``WorkerPool.dispatches``
count them.

The reactor never waits on a worker.  A worker waits on the reactor only when its
client is slow (``Session.paused`` or too many bytes not yet written): that is the
producer/consumer backpressure of Twisted carried over to the thread.
"""

from __future__ import annotations

import threading
from collections import deque
from queue import SimpleQueue
from time import monotonic
from typing import Callable, List, Optional

from twisted.logger import Logger

from .context import Context
from .exchange import MORE, Exchange

log = Logger(namespace="yimmo.worker")


class Handoff:
    """
    The meeting point of the reactor thread and the workers: output of all workers on
    its way to the reactor in one FIFO, and exchanges on their way to workers.

    With ``install`` the handoff hooks the reactor's iteration, which makes it GIL-aware:
    exchanges parsed during an iteration are put on worker queues just before the
    reactor sleeps in epoll (where it releases the GIL for the workers), instead of waking
    a worker that would fight the reactor for the GIL after each of its syscalls; and
    output is collected after each iteration, so a worker wakes the reactor only when it
    is asleep.  Without the hook, every batch of output costs one ``callFromThread``.
    """

    def __init__(self, reactor, output_buffer: int) -> None:
        self._reactor = reactor
        self._records: deque = deque()
        self._dispatches: list = []
        self._hooked = False
        self._sleeping = True  # unhooked: always wake the reactor
        self._wake_pending = False
        self._output_buffer = output_buffer
        self.wakeups = 0

    def install(self) -> None:
        """Hook the reactor's iteration (reactor thread, before it runs)."""
        iterate = getattr(self._reactor, "doIteration", None)
        if iterate is None or self._hooked:
            return  # a reactor driven by another loop (asyncio): callFromThread it is
        records = self._records

        def doIteration(timeout):
            if self._dispatches:
                self._flush_dispatches()
            self._sleeping = True
            if records:
                timeout = 0  # output is waiting: poll, don't sleep
            try:
                iterate(timeout)
            finally:
                self._sleeping = False
                if records:
                    self.drain()

        self._reactor.doIteration = doIteration
        self._hooked = True

    def uninstall(self) -> None:
        if self._hooked:
            del self._reactor.doIteration
            self._hooked = False
            self._sleeping = True
            self._flush_dispatches()
            if self._records:
                self._reactor.callFromThread(self.drain)

    # -- reactor -> worker -------------------------------------------------------------

    def dispatch(self, worker: "Worker", exchange: Exchange) -> None:
        worker.dispatched += 1
        if self._hooked:
            self._dispatches.append((worker, exchange))
        else:
            worker.queue.put(exchange)

    def _flush_dispatches(self) -> None:
        dispatches = self._dispatches
        self._dispatches = []
        for worker, exchange in dispatches:
            worker.queue.put(exchange)

    # -- worker -> reactor -------------------------------------------------------------

    def emit(self, exchange: Exchange, data: Optional[bytes], end: int) -> None:
        """Queue output for the reactor (worker thread).  Blocks while the client is slow."""
        session = exchange.session
        if data:
            session.produced += len(data)
        # Append before testing the flags; the reactor clears them before it pops: then a
        # record is either seen by a drain under way or causes a wake-up.
        self._records.append((exchange, data, end))
        if self._sleeping and not self._wake_pending:
            self._wake_pending = True
            self.wakeups += 1
            if self._hooked:
                self._reactor.wakeUp()
            else:
                self._reactor.callFromThread(self.drain)
        if end == MORE and data and (
                session.paused or session.produced - session.consumed > self._output_buffer):
            self._wait_writable(session)

    def _wait_writable(self, session) -> None:
        limit = self._output_buffer
        event = session.writable
        session.writer_waiting = True
        try:
            while not session.gone and (
                    session.paused or session.produced - session.consumed > limit):
                event.clear()
                # Re-test after clearing: the reactor sets the event after changing state.
                if session.gone or not (
                        session.paused or session.produced - session.consumed > limit):
                    break
                event.wait()
        finally:
            session.writer_waiting = False

    def drain(self) -> None:
        """Deliver every queued record (reactor thread)."""
        self._wake_pending = False
        records = self._records
        while records:
            exchange, data, end = records.popleft()
            exchange.session.deliver(exchange, data, end)


class Worker(threading.Thread):
    """One thread running the application, fed by its own queue."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        super().__init__(name="yimmo-worker-%d" % index, daemon=True)
        self.queue: SimpleQueue = SimpleQueue()
        self.pool = pool
        # Written by one thread each, so that their difference needs no lock.
        self.dispatched = 0  # by the reactor
        self.finished = 0  # by this worker
        self.sleeps = 0  # times this worker found its queue empty and had to be woken

    def run(self) -> None:
        queue = self.queue
        get = queue.get
        app = self.pool.app
        emit = self.pool.handoff.emit
        while True:
            if queue.empty():
                self.sleeps += 1
            exchange = get()
            if exchange is None:
                return
            try:
                if not exchange.session.gone:
                    Context(exchange, emit).run(app)
                elif exchange.body is not None:
                    exchange.body.release()
            except BaseException:  # the worker outlives anything an app raises
                log.failure("unexpected error in worker {name}", name=self.name)
            self.finished += 1


class WorkerPool:
    """``no_threads`` workers; the reactor dispatches exchanges to them."""

    def __init__(self, app: Callable, no_threads: int, handoff: Handoff) -> None:
        self.app = app
        self.handoff = handoff
        self.workers: List[Worker] = [Worker(self, i) for i in range(no_threads)]
        self.dispatches = 0

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def pick(self) -> Worker:
        """
        The first idle worker, else the least loaded.  Preferring the lowest index keeps
        a light load on few threads, which means fewer GIL hand-overs.
        """
        best = None
        best_load = 0
        for worker in self.workers:
            load = worker.dispatched - worker.finished
            if load == 0:
                return worker
            if best is None or load < best_load:
                best, best_load = worker, load
        return best

    def dispatch(self, exchange: Exchange, worker: Worker) -> None:
        self.dispatches += 1
        self.handoff.dispatch(worker, exchange)

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
            worker.queue.put(None)
        deadline = monotonic() + timeout
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - monotonic()))
