"""
Logging: yimmo's levels on twisted.logger, the start-up banner and the access log.

yimmo's loggers (``logger(namespace)``) publish through one filter whose level is the
``log_level`` setting, so the level holds under twistd (which owns the log observers)
as under ``yimmo-wsgi`` (which also filters Twisted's own events, see ``start_logging``).

The access log is on the hot path: a worker only appends the finished ``Context`` to a
deque (no formatting, no lock, no wake-up); the reactor formats and writes the records
in batches, a few times a second, one write per batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from typing import Any, Callable, List, Optional, TextIO

from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger, globalLogBeginner,
    globalLogPublisher, textFileLogObserver,
)

# yimmo's levels on Twisted's: NOTICE and INFO share "info", DEBUG and TRACE "debug".
TWISTED_LEVELS = {
    "FATAL": LogLevel.critical, "ERROR": LogLevel.error, "WARNING": LogLevel.warn,
    "NOTICE": LogLevel.info, "INFO": LogLevel.info, "DEBUG": LogLevel.debug,
    "TRACE": LogLevel.debug,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(lambda event: globalLogPublisher(event), [_predicate])


def logger(namespace: str) -> Logger:
    """A Logger whose events pass the ``log_level`` filter."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: str) -> None:
    _predicate.defaultLogLevel = TWISTED_LEVELS[level]


def start_logging(level: str, stream: TextIO = sys.stdout) -> None:
    """yimmo-wsgi: every event (Twisted's too) at ``level`` and above, as text on ``stream``."""
    set_level(level)
    predicate = LogLevelFilterPredicate(defaultLogLevel=TWISTED_LEVELS[level])
    observer = FilteringLogObserver(textFileLogObserver(stream), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def banner(log: Logger, settings, role: str, endpoints: List[str]) -> None:
    """One line with what runs where: versions, endpoints, processes, threads, PID."""
    import twisted

    from . import __version__

    log.info("yimmo-twisted {version} ({role}, pid {pid}) on Twisted {twisted}, Python "
             "{python}: {app} on {endpoints}, {no_proc} process(es) x {no_threads} "
             "thread(s), log level {yimmo_level}, access log {access}",
             version=__version__, role=role, pid=os.getpid(), twisted=twisted.__version__,
             python=sys.version.split()[0], app=settings.app_spec, endpoints=" ".join(endpoints),
             no_proc=settings.no_proc, no_threads=settings.no_threads,
             yimmo_level=settings.log_level, access=settings.access_log)


# -- access log --------------------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _clf_time(t: float) -> str:
    lt = time.localtime(t)
    offset = lt.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return "%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d" % (
        lt.tm_mday, _MONTHS[lt.tm_mon - 1], lt.tm_year, lt.tm_hour, lt.tm_min, lt.tm_sec,
        sign, abs(offset) // 60, abs(offset) % 60)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class AccessLog:
    """
    Records of finished requests, written in batches from the reactor.  ``record`` is
    called by workers with the request's ``Context`` and its end time.
    """

    INTERVAL = 0.25  # seconds between writes: a batch per quarter second at most

    def __init__(self, fmt: str, reactor, stream: Optional[TextIO] = None) -> None:
        self._format: Callable[[Any, float], str] = (
            self._json if fmt == "json" else self._combined)
        self._records: deque = deque()
        self.record = self._records.append  # (context, time): a worker's whole cost
        self._stream = stream
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._second = (0, "")

    def start(self) -> None:
        self._loop.start(self.INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.flush()

    def flush(self) -> None:
        records = self._records
        n = len(records)
        if not n:
            return
        fmt = self._format
        pop = records.popleft
        lines = [fmt(*pop()) for _ in range(n)]
        lines.append("")
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop the server

    def _clf_time(self, t: float) -> str:
        second = int(t)
        if self._second[0] != second:
            self._second = (second, _clf_time(t))
        return self._second[1]

    @staticmethod
    def _fields(ctx) -> tuple:
        env = ctx.exchange.environ
        status = ctx.status[:3] if ctx.status else "500"
        sent = getattr(ctx, "sent", 0) if ctx.head_sent else 0
        return env, status, sent

    def _combined(self, ctx, t: float) -> str:
        env, status, sent = self._fields(ctx)
        return '%s - - [%s] "%s %s %s" %s %s "%s" "%s"' % (
            env.get("REMOTE_ADDR") or "-", self._clf_time(t), env.get("REQUEST_METHOD", "-"),
            _quoted(env.get("RAW_URI", "")), env.get("SERVER_PROTOCOL", "-"), status,
            sent or "-", _quoted(env.get("HTTP_REFERER", "-")),
            _quoted(env.get("HTTP_USER_AGENT", "-")))

    def _json(self, ctx, t: float) -> str:
        env, status, sent = self._fields(ctx)
        return json.dumps({
            "time": round(t, 6), "remote_addr": env.get("REMOTE_ADDR"),
            "method": env.get("REQUEST_METHOD"), "target": env.get("RAW_URI"),
            "protocol": env.get("SERVER_PROTOCOL"), "status": int(status), "bytes": sent,
            "referer": env.get("HTTP_REFERER"), "user_agent": env.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }, separators=(",", ":"))
