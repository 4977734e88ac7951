"""
The manager (``no_proc > 1``): it owns the listening sockets and runs ``no_proc`` server
processes that share them.

Sharing: the manager listens (through Twisted's endpoints, so every endpoint type
works), stops reading from its ports, and hands the sockets to each server process as
inherited file descriptors that the process adopts (``reactor.adoptStreamPort``).  All
processes accept from one kernel queue, and the queue outlives any one process: a process
that dies or is replaced never takes queued connections with it, so a restart or a
SIGHUP reload refuses no connection (SO_REUSEPORT gives each process its own queue, whose
connections are reset when that process closes it).  The sockets stay the manager's: a
process closes its own descriptor of one and nothing more (no shutdown(2), which stops a
socket listening for every process), and only the manager removes a Unix socket's file.

A server process (``python -m yimmo_twisted.proc SPEC``) runs the manager's kind of
reactor (``twistd --reactor=asyncio`` runs asyncio in every process) and talks to the
manager over two pipes: its stdin (EOF: the manager is gone, drain and exit, so that no
process outlives a killed manager) and its fd 3 ("ready", or the error that stopped it at
start-up).

Signals: SIGTERM/SIGINT stop the manager's reactor; stopping, the manager closes its
sockets and sends SIGTERM to every server process, which stops accepting and drains its
requests for ``grace`` seconds (then SIGKILL).  SIGHUP replaces the server processes one
by one: a new one is started, and only once it is ready is the old one drained.  SIGUSR1
goes on to every server process, which reopens its ``access_log_file``.

Recycling: a server process past one of its limits (recycle.py) asks over fd 3 to be
replaced ("recycle: REASON"); it is replaced as on SIGHUP, and a replaced process that
outlives its grace period is killed.

Reload (the reload setting, reload.py): a server process reports the source files of the
app's modules over fd 3 ("watch: [JSON list]"); a change to one replaces the processes as
on SIGHUP.
"""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import sys
from time import monotonic
from typing import Any, Callable, Counter, Dict, List, Optional, Tuple, Union

from twisted.application import service
from twisted.application.reactors import getReactorTypes, installReactor
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LoggingFile, LogLevel
from zope.interface import implementer

from . import compat, metrics, systemd
from .config import ConfigError, Settings
from .logs import banner, logger, nothing_to_reopen, on_sigusr1, set_level, start_logging
from .server import describe, from_systemd, listening_endpoint, take_stop_signals

log = logger("yimmo.proc")

EXIT_START = 3  # a server process that cannot start (bad app, bad setting): no retry
MIN_LIFETIME = 2.0  # seconds: a process dying sooner died "at start-up"
KILL_MARGIN = 5.0  # seconds past the grace period before SIGKILL
# server process -> manager: "ready", "error: ...", "recycle: ...", "metrics: {...}"...
# (and manager -> server process, on its stdin: "metrics")
CONTROL_FD = 3
SCRAPE_TIMEOUT = 2.0  # seconds a server process has to send its metrics
REPORT_TIMEOUT = 5.0  # seconds a line to the manager may wait for room in the pipe
FIRST_SOCKET_FD = 4


class ServerProcess(ProcessProtocol):
    """The manager's end of one server process."""

    def __init__(self, manager: "Manager", slot: int) -> None:
        self.manager = manager
        self.slot = slot
        self.pid: Optional[int] = None  # kept: the transport forgets it when the process ends
        self.started = monotonic()
        self.ready: defer.Deferred[ServerProcess] = defer.Deferred()
        self.is_ready = False
        self.reopen_due = False  # SIGUSR1 came before the process handles it: sent once ready
        self.error = ""
        self._control = b""
        self._output: Dict[int, bytes] = {}
        # Not through log_level's filter: the process has filtered its own events, and
        # its access log and stderr are not log_level's to drop.
        self._log = Logger(namespace="yimmo.process.%d" % slot)
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.metrics: Optional[Dict[str, Any]] = None  # its latest snapshot (metrics.py)
        self._scrapes: List[defer.Deferred[None]] = []  # waiting for the next one

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != CONTROL_FD:
            self._relay(fd, data)
            return
        self._control += data
        while b"\n" in self._control:
            line, _, self._control = self._control.partition(b"\n")
            text = line.decode("utf-8", "replace")
            if text == "ready" and not self.is_ready:
                self.is_ready = True
                self.ready.callback(self)
            elif text.startswith("error: "):
                self.error = text[len("error: "):]
            elif text.startswith("recycle: "):
                self.manager.recycle(self, text[len("recycle: "):])
            elif text.startswith("metrics: "):
                self.metrics = json.loads(text[len("metrics: "):])
                scrapes, self._scrapes = self._scrapes, []
                for d in scrapes:
                    d.callback(None)
            elif text.startswith("watch: ") and self.manager.reloader is not None:
                self.manager.reloader.watch(json.loads(text[len("watch: "):]))

    def _relay(self, fd: int, data: bytes, end: bool = False) -> None:
        """The process's output, when it goes to the manager's log (see Manager.relay)."""
        pending = self._output.get(fd, b"") + data
        *lines, rest = pending.split(b"\n")
        if end and rest:
            lines, rest = lines + [rest], b""
        self._output[fd] = rest
        level = LogLevel.info if fd == 1 else LogLevel.warn
        for line in lines:
            self._log.emit(level, "{line}", line=line.decode("utf-8", "replace"))

    def scrape(self) -> "defer.Deferred[None]":
        """Ask for a snapshot of the process's metrics: fires once ``metrics`` has it."""
        d: defer.Deferred[None] = defer.Deferred()
        self._scrapes.append(d)
        if len(self._scrapes) == 1 and self.transport is not None:
            self.transport.writeToChild(0, b"metrics\n")
        return d

    def signal(self, name: Union[str, int]) -> None:
        try:
            if self.transport is not None:
                self.transport.signalProcess(name)
        except Exception:
            pass  # already gone

    def retire(self) -> None:
        """Drain and exit (SIGTERM)."""
        self.signal("TERM")

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        for fd in list(self._output):
            self._relay(fd, b"", end=True)
        scrapes, self._scrapes = self._scrapes, []
        for d in scrapes:  # it will not answer: its last snapshot counts
            d.callback(None)
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.error or "exited at start-up"))
        self.manager._ended(self, code, sig)
        self.ended.callback(None)


def reactor_name(reactor) -> Optional[str]:
    """
    The name ``twistd --reactor`` gives to the type of ``reactor`` (``asyncio``,
    ``epoll``...), for the server processes to install the same; None for a reactor
    twistd does not know.
    """
    module = type(reactor).__module__
    for installer in getReactorTypes():
        if getattr(installer, "moduleName", None) == module:
            return installer.shortName
    return None


class _Listening(Factory):
    """The manager's ports never accept (reading is stopped): this is never called."""

    noisy = False

    def buildProtocol(self, addr):  # pragma: no cover
        return None


class Manager(service.Service):
    """Runs ``settings.no_proc`` server processes on sockets the manager owns."""

    def __init__(self, settings: Settings, fatal: Callable[[int], None], reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.settings = settings
        self._fatal = fatal
        self.ports: List = []
        self.sockets: List[Tuple[int, int, str]] = []  # (manager fd, family, description)
        self.procs: Dict[int, ServerProcess] = {}  # slot -> current process
        self.retiring: List[ServerProcess] = []
        self.failures = 0
        self.stopping = False
        self.reloading = False
        # slot -> the process whose successor is starting (it serves until then)
        self.replacing: Dict[int, ServerProcess] = {}
        self.recycles: Counter[str] = collections.Counter()  # by limit: max_requests...
        self.relay = False
        self.reactor_name: Optional[str] = None  # what the server processes install
        self.announced = False  # systemd told READY=1 (the first start is over)
        self.reloader: Optional[Any] = None  # reload.Reloader, with the reload setting
        self.totals = metrics.Totals()  # the counters of the processes that have ended
        self.restarts = 0  # server processes started again after dying
        self.reloads = 0
        self.metrics_port: Any = None

    # -- start ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        take_stop_signals(self.reactor, lambda: self._hurry(self._live()),
                          (signal.SIGTERM, signal.SIGINT))
        # Under twistd, stdout is the log (and /dev/null underneath once daemonized): the
        # server processes' output then comes through the manager into that log.
        self.relay = isinstance(sys.stdout, LoggingFile)
        self.reactor_name = reactor_name(self.reactor)
        if self.reactor_name is None:
            log.warn("server processes run Twisted's default reactor: {reactor} is not one "
                     "twistd names", reactor=type(self.reactor).__qualname__)
        for description in self.settings.endpoints():
            endpoint = listening_endpoint(self.reactor, description)
            port = yield endpoint.listen(_Listening())
            port.stopReading()  # the server processes accept; the manager only holds it
            compat.close_alone(port)  # closed at the stop, it goes on listening for them
            self.ports.append(port)
            self.sockets.append((port.fileno(), port.addressFamily, description))
            log.info("manager holds {address} for {n} server processes",
                     address=describe(port), n=self.settings.no_proc)
        if self.settings.metrics_listen is not None:
            self.metrics_port = yield metrics.listen(self.reactor, self.settings.metrics_listen,
                                                     self.scrape)
            log.info("metrics of the server processes on {address}",
                     address=describe(self.metrics_port))
        banner(log, self.settings, self.role(), [describe(p) for p in self.ports])
        if self.settings.reload:
            from .reload import Reloader  # imports nothing of watchfiles' until it watches

            if self.settings.no_proc > 1:
                log.warn("reload is for development: it replaces {n} server processes on "
                         "each change (no_proc 1 is enough)", n=self.settings.no_proc)
            self.reloader = Reloader(self)
            self.reloader.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        if self.settings.access_log_file is not None and self.settings.access_log != "off":
            on_sigusr1(self.reactor, self.reopen_logs)
        else:
            on_sigusr1(self.reactor, nothing_to_reopen)
        for slot in range(self.settings.no_proc):
            self._spawn(slot)

    def role(self) -> str:
        """For the banner: ``manager``, and the limits that replace its processes."""
        s = self.settings
        limits = []
        if s.max_requests:
            limits.append("max_requests %d%s" % (s.max_requests, "+0..%d" % s.max_requests_jitter
                                                 if s.max_requests_jitter else ""))
        if s.max_lifetime:
            limits.append("max_lifetime %g s" % s.max_lifetime)
        if s.max_rss:
            limits.append("max_rss %d bytes" % s.max_rss)
        if s.request_timeout and s.timeout_action == "recycle":
            limits.append("request_timeout %g s" % s.request_timeout)
        return "manager" + ("; replaces server processes past " + ", ".join(limits)
                            if limits else "") + ("; reloads on changes" if s.reload else "")

    def _spawn(self, slot: int) -> ServerProcess:
        proc = ServerProcess(self, slot)
        out = "r" if self.relay else None
        fds = {0: "w", 1: out or 1, 2: out or 2, CONTROL_FD: "r"}
        adopted = []
        for i, (fd, family, description) in enumerate(self.sockets):
            fds[FIRST_SOCKET_FD + i] = fd
            adopted.append((FIRST_SOCKET_FD + i, family, description))
        env = dict(os.environ)
        # systemd hears from the manager alone: it is the service's main process.
        env.pop("NOTIFY_SOCKET", None)
        # The manager's sys.path goes along: a .tac file or a wrapper script may have
        # extended it for the app, and each server process imports the app itself.
        spec = json.dumps({"settings": self.settings.to_dict(), "adopted": adopted,
                           "slot": slot, "path": sys.path, "relay": self.relay,
                           "reactor": self.reactor_name})
        proc.pid = self.reactor.spawnProcess(
            proc, sys.executable, [sys.executable, "-m", "yimmo_twisted.proc", spec],
            env=env, childFDs=fds).pid
        self.procs[slot] = proc
        proc.ready.addCallback(self._ready)
        proc.ready.addErrback(lambda f: None)
        return proc

    def _ready(self, proc: ServerProcess) -> None:
        log.info("server process {slot} ready (pid {pid})", slot=proc.slot, pid=proc.pid)
        if proc.reopen_due:
            proc.signal(signal.SIGUSR1)
        # The first start is over when every slot's process is ready (a reload, under way,
        # says so itself at its end).
        if (not self.announced and not self.stopping and not self.reloading
                and len(self.procs) == self.settings.no_proc
                and all(p.is_ready for p in self.procs.values())):
            self.announced = True
            self._notify_ready()

    def _notify_ready(self) -> None:
        systemd.ready([describe(p) for p in self.ports], self.settings.no_proc)

    def reopen_logs(self) -> None:
        """
        SIGUSR1: every server process reopens its access log file.  One still starting
        gets the signal once ready: until then it does not handle it (and would die of it).
        """
        for proc in self._live():
            if proc.is_ready:
                proc.signal(signal.SIGUSR1)
            else:
                proc.reopen_due = True

    # -- deaths --------------------------------------------------------------------

    def _ended(self, proc: ServerProcess, code: Optional[int], sig: Optional[int]) -> None:
        self.totals.process_ended(proc.metrics)
        if proc in self.retiring:
            self.retiring.remove(proc)
        if self.procs.get(proc.slot) is not proc:
            return  # replaced by a reload: its end is expected
        del self.procs[proc.slot]
        if self.stopping:
            return
        how = "signal %s" % sig if sig else "exit code %s" % code
        if code == EXIT_START:
            return self._give_up("server process %d cannot start: %s"
                                 % (proc.slot, proc.error or how))
        early = not proc.is_ready or monotonic() - proc.started < MIN_LIFETIME
        self.failures = self.failures + 1 if early else 0
        if self.failures >= self.settings.start_failures:
            return self._give_up("server processes keep dying at start-up (%d in a row, "
                                 "the last: %s%s)" % (self.failures, how,
                                                      ": " + proc.error if proc.error else ""))
        log.warn("server process {slot} (pid {pid}) died ({how}); starting another",
                 slot=proc.slot, pid=proc.pid, how=how)
        self.restarts += 1
        self._spawn(proc.slot)

    def _give_up(self, why: str) -> None:
        log.critical("yimmo-wsgi: error: {why}; stopping", why=why)
        self._fatal(1)
        if self.reactor.running:
            self.reactor.stop()

    # -- reload (SIGHUP) -----------------------------------------------------------

    @defer.inlineCallbacks
    def reload(self, why: str = "SIGHUP"):
        """Replace the server processes one at a time: each old one drains once its
        successor is ready, so some process always accepts.  ``why``: SIGHUP, or the
        reload setting's watcher."""
        if self.reloading or self.stopping:
            return
        self.reloading = True
        self.reloads += 1
        systemd.reloading()
        log.info("{why}: replacing {n} server processes", why=why, n=len(self.procs))
        try:
            for slot in sorted(self.procs):
                if slot in self.replacing:
                    continue  # a recycle is starting its successor already
                if not (yield self._replace(slot)):
                    log.error("reload stopped: the old server processes keep serving")
                    return
            log.info("reload done")
        finally:
            self.reloading = False
            # Done or stopped, the server processes serve: systemd waits for this after
            # RELOADING=1 (not if the manager stops meanwhile: STOPPING=1 was sent).
            if not self.stopping:
                self.announced = True
                self._notify_ready()

    def recycle(self, proc: ServerProcess, request: str) -> None:
        """A server process past a limit (``request``: ``LIMIT why``) asks to be replaced."""
        kind, _, why = request.partition(" ")
        if (self.stopping or self.reloading or self.procs.get(proc.slot) is not proc
                or proc.slot in self.replacing):
            return  # being replaced already, or soon
        self.recycles[kind] += 1
        log.info("recycling server process {slot} (pid {pid}): {why}", slot=proc.slot,
                 pid=proc.pid, why=why)
        self._replace(proc.slot)

    @defer.inlineCallbacks
    def _replace(self, slot: int):
        """
        Start a successor for the process of ``slot`` and, once it is ready, drain the old
        one.  True when done; False when the successor did not start (the old one goes on).
        """
        old = self.procs[slot]
        self.replacing[slot] = old
        try:
            new = self._spawn(slot)
            # Ready, dead or late: ``ready`` swallows its failures (_spawn), so look at
            # is_ready rather than at what it gives.
            yield new.ready.addTimeout(self.settings.ready_timeout, self.reactor)
            if self.stopping:
                return False  # both retired by stopService already
            if not new.is_ready:
                log.error("the new server process {slot} did not start ({error})", slot=slot,
                          error=new.error or "not ready in time")
                if self.procs.get(slot) is new:
                    self.procs[slot] = old
                    new.signal("KILL")
                else:  # it died, and _ended has started another in its place
                    self._retire(old)
                return False
            self._retire(old)
            return True
        finally:
            del self.replacing[slot]

    def _retire(self, proc: ServerProcess) -> None:
        """Drain ``proc``, replaced; killed if it outlives the grace period (a hung app)."""
        if proc.ended.called:
            return
        self.retiring.append(proc)
        proc.retire()
        kill = self.reactor.callLater(self.settings.grace + KILL_MARGIN, self._kill, [proc])
        proc.ended.addCallback(lambda _: kill.cancel() if kill.active() else None)

    # -- metrics -------------------------------------------------------------------

    @defer.inlineCallbacks
    def scrape(self):
        """The sum of the server processes' metrics (metrics.py), and the manager's own."""
        live = [p for p in self._live() if p.is_ready and not p.ended.called]
        # A process that does not answer in time (a hung reactor) counts with the last
        # snapshot it gave.
        yield defer.DeferredList([p.scrape().addTimeout(SCRAPE_TIMEOUT, self.reactor)
                                  for p in live], consumeErrors=True)
        # Those that ended meanwhile are in self.totals already.
        total = self.totals.sum([p.metrics for p in live
                                 if p.metrics is not None and not p.ended.called])
        total.update(processes=len(self.procs), restarts=self.restarts, reloads=self.reloads,
                     recycles=dict(self.recycles))
        return total

    # -- stop ----------------------------------------------------------------------

    def stopService(self):
        service.Service.stopService(self)
        self.stopping = True
        if self.reloader is not None:
            self.reloader.stop()
        for port, (_, _, description) in zip(self.ports, self.sockets):
            # This descriptor (close_alone) and a Unix socket's file, but not the file of
            # systemd's socket, which goes on listening for the next start; each process
            # closes its own descriptor as its drain begins.
            if from_systemd(description):
                compat.stop_adopted(port)
            else:
                port.stopListening()
        if self.metrics_port is not None:
            self.metrics_port.stopListening()
        procs = self._live()
        for proc in procs:
            proc.retire()
        if not procs:
            return defer.succeed(None)
        kill = self.reactor.callLater(self.settings.grace + KILL_MARGIN, self._kill, procs)
        done = defer.DeferredList([p.ended for p in procs])
        done.addCallback(lambda _: kill.cancel() if kill.active() else None)
        return done

    def _live(self) -> List[ServerProcess]:
        return list(self.procs.values()) + list(self.replacing.values()) + self.retiring

    def _hurry(self, procs: List[ServerProcess]) -> None:
        log.warn("stopping now: server processes cut their requests in flight")
        for proc in procs:
            if not proc.ended.called:
                proc.signal("TERM")  # their second: they stop draining

    def _kill(self, procs: List[ServerProcess]) -> None:
        for proc in procs:
            if not proc.ended.called:
                log.warn("server process {slot} (pid {pid}) still running after the grace "
                         "period: SIGKILL", slot=proc.slot, pid=proc.pid)
                proc.signal("KILL")


# -- the server process -------------------------------------------------------------------

@implementer(IHalfCloseableProtocol)
class _Control(Protocol):
    """The manager's pipes: stdin's end means the manager is gone; on it, the manager
    asks for the process's metrics."""

    def __init__(self, reactor, server) -> None:
        self.reactor = reactor
        self.server = server
        self._pending = b""

    def dataReceived(self, data: bytes) -> None:
        self._pending += data
        while b"\n" in self._pending:
            line, _, self._pending = self._pending.partition(b"\n")
            if line == b"metrics":
                _report_metrics(self.server)

    def readConnectionLost(self) -> None:
        self.connectionLost(None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            return  # stopping already (SIGTERM from the manager)
        log.warn("manager gone: stopping")


def _report(line: str) -> None:
    """One line to the manager, whole: the pipe is non-blocking (StandardIO's), and a
    metrics snapshot may not fit in what is left of its buffer."""
    data = (line + "\n").encode("utf-8", "replace")
    deadline = monotonic() + REPORT_TIMEOUT
    while data and monotonic() < deadline:
        try:
            data = data[os.write(CONTROL_FD, data):]
        except BlockingIOError:
            select.select([], [CONTROL_FD], [], REPORT_TIMEOUT)
        except OSError:
            return  # the manager is gone


def _report_metrics(server) -> None:
    _report("metrics: " + json.dumps(metrics.snapshot(server)))


def server_process_main(argv: List[str]) -> None:
    spec = json.loads(argv[1])
    settings = Settings.from_dict(spec["settings"])
    adopted = [tuple(a) for a in spec["adopted"]]
    set_level(settings.log_level)
    sys.path[:] = spec["path"]  # also where reactor plugins are found
    if spec["reactor"] is not None:
        # Before the app, which may import twisted.internet.reactor (and so install the
        # default one).
        try:
            installReactor(spec["reactor"])
        except Exception as e:
            _report("error: cannot install the %s reactor: %s: %s"
                    % (spec["reactor"], type(e).__name__, e))
            sys.exit(EXIT_START)
    from .util import AppError, load_app
    if settings.reload:
        # A .pyc records its source's mtime in whole seconds (and its size): two edits
        # within a second, a reload between them, and the next process would run the
        # first edit's bytecode.  Without .pyc files written, none is stale.
        sys.dont_write_bytecode = True
    try:
        app = load_app(str(settings.app_spec))  # a server process is given MODULE:APP
    except AppError as e:
        if settings.reload:  # the file of the error too: its fix must reload
            from .reload import user_files
            _report("watch: " + json.dumps(user_files(e.__cause__)))
        _report("error: %s" % e)
        sys.exit(EXIT_START)
    if settings.reload:
        from .reload import user_files
        _report("watch: " + json.dumps(user_files()))

    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    from .server import Server

    start_logging(settings.log_level, timestamps=not spec["relay"])
    try:
        server = Server(app, settings, reactor, multiprocess=True, adopted=adopted)
    except ConfigError as e:  # access_log_file, which the manager could open
        _report("error: %s" % e)
        sys.exit(EXIT_START)
    control = _Control(reactor, server)
    exit_code = [0]  # set by failed()

    def started(_) -> None:
        log.info("server process {slot} (pid {pid}) serving", slot=spec["slot"],
                 pid=os.getpid())
        _report("ready")

    server.watchdog.ask = lambda reason: _report("recycle: " + reason)

    def failed(failure) -> None:
        _report("error: %s" % failure.getErrorMessage())
        exit_code[0] = EXIT_START
        reactor.stop()

    def start() -> None:
        # Only the manager stops a server process: a Ctrl-C or hang-up that reaches the
        # whole process group must not make the manager see deaths to repair.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # The POSIX StandardIO takes stdin/stdout; mypy reads the Windows one's signature.
        StandardIO(control, stdin=0, stdout=CONTROL_FD,  # type: ignore[call-arg]
                   reactor=reactor)
        d = defer.maybeDeferred(server.startService)
        d.addCallbacks(started, failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    if settings.metrics_listen is not None:
        _report_metrics(server)  # the last counts, after the drain: the manager keeps them
    sys.exit(exit_code[0])


if __name__ == "__main__":
    server_process_main(sys.argv)
