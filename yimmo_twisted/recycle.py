"""
The limits of one server process (server.py runs this on its reactor thread): requests
that run past ``request_timeout`` are logged with their thread's stack, and a process
past ``max_requests``, ``max_lifetime`` or ``max_rss`` (or with a hung request, under
``timeout_action: recycle``) asks its manager to replace it.  The manager replaces it
as SIGHUP does: the successor first, then this process drains (proc.py).

No replacement storm: a process asks only after it has served a request (a successor
already past ``max_rss`` as it starts is replaced once it has served, not as soon as it
is ready; a hung request is reason enough on its own), and asks again only ASK_AGAIN
later: the manager ignores a process it is replacing, or has replaced, and a request it
dropped (during a reload, or when the successor failed to start) is made again.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import traceback
from time import monotonic
from typing import Callable, Dict, Optional

from twisted.internet.task import LoopingCall

from .config import Settings
from .exchange import Exchange
from .logs import logger
from .worker import Worker, WorkerPool

log = logger("yimmo.recycle")

RSS_INTERVAL = 2.0  # seconds between two readings of the resident memory
MAX_INTERVAL = 1.0  # seconds: max_lifetime is kept to within this
MIN_INTERVAL = 0.05
ASK_AGAIN = 10.0  # seconds between two requests for a replacement


def resident_bytes() -> int:
    """This process's resident memory: /proc/self/statm (now), else the peak (rusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB here


def running(worker: Worker) -> str:
    """What ``worker`` runs: ``GET /path`` (no query: it may hold secrets), or WebSocket
    callbacks."""
    current = worker.current
    if not isinstance(current, Exchange):  # an HTTP/2 stream's (H2Exchange) too
        return "WebSocket callbacks" if current is not None else "nothing"
    environ = current.environ
    return "%s %s" % (environ.get("REQUEST_METHOD", "?"), environ.get("PATH_INFO", "?"))


def thread_stack(worker: Worker) -> str:
    """The Python stack of ``worker``'s thread, innermost call last."""
    # sys._current_frames: CPython's and PyPy's; the one way to see another thread's stack.
    frame = sys._current_frames().get(worker.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"


class Watchdog:
    """
    One LoopingCall for every limit.  ``ask(reason)`` asks the manager for a
    replacement; None without a manager (then limits that replace are not checked).
    """

    def __init__(self, settings: Settings, pool: WorkerPool, reactor,
                 now: Callable[[], float] = monotonic) -> None:
        self.settings = settings
        self.pool = pool
        self.reactor = reactor
        self.now = now
        self.ask: Optional[Callable[[str], None]] = None
        self.asked: Optional[float] = None  # when the last request for a replacement went
        self.hung = 0  # requests found past request_timeout
        self._reported: Dict[Worker, float] = {}  # worker -> start of its reported request
        self.max_requests = 0
        if settings.max_requests:
            self.max_requests = settings.max_requests + random.randint(
                0, settings.max_requests_jitter)
        self._born = 0.0
        self._rss_due = 0.0
        self._loop: Optional[LoopingCall] = None

    def start(self) -> None:
        s = self.settings
        if not (s.request_timeout or s.recycles):
            return
        interval = MAX_INTERVAL
        if s.request_timeout:
            interval = min(interval, s.request_timeout / 4)
        if s.max_requests:
            interval = min(interval, 0.1)  # the count overshoots by 0.1 s of requests
        self._born = self._rss_due = self.now()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(max(MIN_INTERVAL, interval), now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def served(self) -> int:
        return sum(w.finished for w in self.pool.workers)

    def check(self) -> None:
        now = self.now()
        s = self.settings
        if s.request_timeout:
            self._check_hung(now)
        served = self.served()
        if not served or not self._may_ask(now):
            return
        if self.max_requests and served >= self.max_requests:
            self._recycle("max_requests", "served %d requests (max_requests %d)"
                          % (served, self.max_requests))
        elif s.max_lifetime and now - self._born >= s.max_lifetime:
            self._recycle("max_lifetime", "ran %.1f s (max_lifetime %g s)"
                          % (now - self._born, s.max_lifetime))
        elif s.max_rss and now >= self._rss_due:
            self._rss_due = now + RSS_INTERVAL
            rss = resident_bytes()
            if rss > s.max_rss:
                self._recycle("max_rss", "resident memory %d bytes (max_rss %d)"
                              % (rss, s.max_rss))

    def _check_hung(self, now: float) -> None:
        timeout = self.settings.request_timeout
        for worker in self.pool.workers:
            started = worker.started
            if not started or now - started < timeout or self._reported.get(worker) == started:
                continue
            self._reported[worker] = started  # once per request
            self.hung += 1
            log.error("request running for {seconds:.1f} s (request_timeout {timeout:g} s) "
                      "in {thread}: {request}; its stack:\n{stack}", seconds=now - started,
                      timeout=timeout, thread=worker.name, request=running(worker),
                      stack=thread_stack(worker).rstrip())
            if self.settings.timeout_action == "recycle" and self._may_ask(now):
                self._recycle("request_timeout", "a request ran past request_timeout "
                              "(%g s)" % timeout)

    def _may_ask(self, now: float) -> bool:
        return self.ask is not None and (self.asked is None or now - self.asked >= ASK_AGAIN)

    def _recycle(self, kind: str, why: str) -> None:
        assert self.ask is not None
        if self.asked is None:
            log.info("asking the manager for a replacement: {why}", why=why)
        self.asked = self.now()
        self.ask("%s %s" % (kind, why))
