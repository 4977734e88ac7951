"""
Logging: yimmo's levels on twisted.logger, the start-up banner and the access log.

yimmo's loggers (``logger(namespace)``) publish through one filter whose level is the
``log_level`` setting, so the level holds under twistd (which owns the log observers)
as under ``yimmo-wsgi`` (which also filters Twisted's own events, see ``start_logging``).

The access log is on the hot path: a worker formats its request's line and appends it to
a deque (no lock, no wake-up); the reactor writes the lines in batches, one write each
tenth of a second, to stdout or to the ``access_log_file`` (reopened on SIGUSR1).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import deque
from time import monotonic
from typing import Any, Callable, Dict, List, Optional, TextIO, cast

from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, Logger,
    globalLogBeginner, globalLogPublisher, textFileLogObserver,
)

from .config import ConfigError, open_log_file

# yimmo's levels on Twisted's: NOTICE and INFO share "info", DEBUG and TRACE "debug".
TWISTED_LEVELS = {
    "FATAL": LogLevel.critical, "ERROR": LogLevel.error, "WARNING": LogLevel.warn,
    "NOTICE": LogLevel.info, "INFO": LogLevel.info, "DEBUG": LogLevel.debug,
    "TRACE": LogLevel.debug,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(
    cast(ILogObserver, lambda event: globalLogPublisher(event)), [_predicate])


def logger(namespace: str) -> Logger:
    """A Logger whose events pass the ``log_level`` filter."""
    return Logger(namespace=namespace, observer=_observer)


log = logger("yimmo.access")


def set_level(level: str) -> None:
    _predicate.setLogLevelForNamespace("", TWISTED_LEVELS[level])


def start_logging(level: str, stream: TextIO = sys.stdout, timestamps: bool = True) -> None:
    """yimmo-wsgi: every event (Twisted's too) at ``level`` and above, as text on ``stream``
    (without a time when the lines go to a log that adds one: ``timestamps=False``)."""
    set_level(level)
    predicate = LogLevelFilterPredicate(defaultLogLevel=TWISTED_LEVELS[level])
    text = textFileLogObserver(stream, **({} if timestamps else {"timeFormat": None}))
    observer = FilteringLogObserver(text, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def banner(log: Logger, settings, role: str, endpoints: List[str]) -> None:
    """One line with what runs where: versions, endpoints, processes, threads, PID."""
    import twisted

    from . import __version__

    access = settings.access_log
    if access != "off" and settings.access_log_file:
        access += " to " + settings.access_log_file
    log.info("yimmo-twisted {version} ({role}, pid {pid}) on Twisted {twisted}, Python "
             "{python}: {app} on {endpoints}, {no_proc} process(es) x {no_threads} "
             "thread(s), log level {yimmo_level}, access log {access}",
             version=__version__, role=role, pid=os.getpid(), twisted=twisted.__version__,
             python=sys.version.split()[0], app=settings.app_spec, endpoints=" ".join(endpoints),
             no_proc=settings.no_proc, no_threads=settings.no_threads,
             yimmo_level=settings.log_level, access=access)


def on_sigusr1(reactor, action: Callable[[], None]) -> None:
    """
    SIGUSR1 (what logrotate sends after renaming a log) runs ``action`` on the reactor
    thread, and then the handler it had before: twistd rotates its own --logfile on it.
    """
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(action)
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGUSR1, handler)
    except ValueError:
        pass  # not the main thread: the signal is not ours to take


def nothing_to_reopen() -> None:
    log.info("SIGUSR1: no access_log_file to reopen")


# -- access log --------------------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _clf_time(t: float) -> str:
    lt = time.localtime(t)
    offset = lt.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return "%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d" % (
        lt.tm_mday, _MONTHS[lt.tm_mon - 1], lt.tm_year, lt.tm_hour, lt.tm_min, lt.tm_sec,
        sign, abs(offset) // 60, abs(offset) % 60)


_json_line = json.JSONEncoder(separators=(",", ":")).encode  # made once: the C encoder


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class AccessLog:
    """
    The access log.  A worker formats the line of its finished request (``record``): the
    cost is spread over the requests instead of stalling the reactor, and nothing but a
    string outlives the request (keeping environs for a batch made the garbage collector
    work much harder).  The reactor writes the lines in batches, ten times a second, to
    ``stream`` (stdout), or to the file ``path``: one write(2) of whole lines on an
    O_APPEND descriptor, so the lines of the processes sharing the file never mix.

    A request's duration runs from its exchange's creation (its head parsed, on the
    reactor) to the line's formatting (the worker has handed the response's end to the
    reactor and called the body's close()): one monotonic() read at each end.
    """

    INTERVAL = 0.1  # seconds between writes

    def __init__(self, fmt: str, reactor, stream: Optional[TextIO] = None,
                 path: Optional[str] = None) -> None:
        json_format = fmt == "json"
        self.record: Callable[[Any], None] = self._json if json_format else self._combined
        self.refused: Callable[[str, int], None] = (
            self._json_refused if json_format else self._combined_refused)
        self.websocket: Callable[[dict, int, int, int, float, Optional[int]], None] = (
            self._json_websocket if json_format else self._combined_websocket)
        self._lines: deque = deque()
        self._append = self._lines.append
        self._stream = stream
        self.path = path
        self._fd = -1 if path is None else open_log_file(path)
        self._failing = False  # the last write to the file failed (logged once)
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._second = (0, "")  # (second, its CLF time): shared by the workers, see _now
        self._pid = os.getpid()

    def start(self) -> None:
        self._loop.start(self.INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.flush()

    def flush(self) -> None:
        lines = self._lines
        n = len(lines)
        if not n:
            return
        pop = lines.popleft
        batch = [pop() for _ in range(n)]
        batch.append("")
        if self.path is not None:
            self._write_file("\n".join(batch).encode("utf-8", "replace"))
            return
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(batch))
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop the server

    def _write_file(self, data: bytes) -> None:
        try:
            while data:  # a regular file takes it all but when it cannot (disk full)
                data = data[os.write(self._fd, data):]
        except OSError as e:
            if not self._failing:
                log.error("cannot write the access log to {path}: {error}; its lines are "
                          "lost until a write succeeds", path=self.path, error=e.strerror)
            self._failing = True
            return
        self._failing = False

    def reopen(self) -> None:
        """
        Log rotation (SIGUSR1, reactor thread): the lines so far go to the file as it
        was (renamed, by now), the next ones to a file opened anew at ``path``.  A path
        that cannot be opened keeps the old file.
        """
        if self.path is None:
            return
        self.flush()
        try:
            fd = open_log_file(self.path)
        except ConfigError as e:
            log.error("access log not reopened, its lines go on to the file as it was: "
                      "{error}", error=e)
            return
        old, self._fd = self._fd, fd
        os.close(old)
        log.info("access log reopened: {path}", path=self.path)

    def _now(self) -> str:
        # A benign race: two workers may format the same second; both results are right.
        t = time.time()
        cached = self._second
        if cached[0] != int(t):
            cached = self._second = (int(t), _clf_time(t))
        return cached[1]

    # Combined: Apache's, with the duration in microseconds at the end (its %D).

    def _combined_line(self, env: dict, status: str, sent: int, started: float) -> str:
        uri = env["RAW_URI"]
        referer = env.get("HTTP_REFERER", "-")
        agent = env.get("HTTP_USER_AGENT", "-")
        if '"' in uri or '"' in referer or '"' in agent:
            uri, referer, agent = _quoted(uri), _quoted(referer), _quoted(agent)
        return '%s - - [%s] "%s %s %s" %s %s "%s" "%s" %d' % (
            env["REMOTE_ADDR"] or "-", self._now(), env["REQUEST_METHOD"], uri,
            env["SERVER_PROTOCOL"], status, sent or "-", referer, agent,
            (monotonic() - started) * 1e6)

    def _combined(self, ctx) -> None:
        ex = ctx.exchange
        status = ctx.status
        self._append(self._combined_line(ex.environ, status[:3] if status else "500",
                                         ctx.sent if ctx.head_sent else 0, ex.started))

    def _json_fields(self, env: dict, status: int, sent: int, started: float) -> Dict[str, Any]:
        return {
            "time": round(time.time(), 6), "remote_addr": env["REMOTE_ADDR"],
            "method": env["REQUEST_METHOD"], "target": env["RAW_URI"],
            "protocol": env["SERVER_PROTOCOL"], "status": status, "bytes": sent,
            "duration_us": int((monotonic() - started) * 1e6),
            "referer": env.get("HTTP_REFERER"), "user_agent": env.get("HTTP_USER_AGENT"),
            "pid": self._pid,
        }

    def _json(self, ctx) -> None:
        ex = ctx.exchange
        status = ctx.status
        self._append(_json_line(self._json_fields(
            ex.environ, int(status[:3]) if status else 500, ctx.sent if ctx.head_sent else 0,
            ex.started)))

    # Requests the session refuses itself (4xx/5xx before any app runs): their method and
    # target may not even have been parsed, so the line says "-" for the request, as
    # nginx does for a request it could not read; nor is there a start to time them from.

    def _combined_refused(self, remote_addr: str, status: int) -> None:
        self._append('%s - - [%s] "-" %d - "-" "-" -' % (remote_addr or "-", self._now(),
                                                         status))

    def _json_refused(self, remote_addr: str, status: int) -> None:
        self._append(_json_line({
            "time": round(time.time(), 6), "remote_addr": remote_addr, "method": None,
            "target": None, "protocol": None, "status": status, "bytes": 0,
            "duration_us": None, "referer": None, "user_agent": None, "pid": self._pid,
        }))

    # A WebSocket, once its connection is closed: the handshake's request, 101 (or the
    # status that refused it), the bytes of the frames sent and received (autobahn's
    # wire-level counts of the open session), the time from the handshake's head to the
    # close.  Combined: the received bytes follow the duration.

    def _combined_websocket(self, env: dict, status: int, sent: int, received: int,
                            started: float, close_code: Optional[int]) -> None:
        self._append("%s %d" % (self._combined_line(env, str(status), sent, started),
                                received))

    def _json_websocket(self, env: dict, status: int, sent: int, received: int,
                        started: float, close_code: Optional[int]) -> None:
        fields = self._json_fields(env, status, sent, started)
        fields.update(websocket=True, bytes_received=received, close_code=close_code)
        self._append(_json_line(fields))
