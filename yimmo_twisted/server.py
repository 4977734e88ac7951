"""
The server: the reactor side of one process.  Listening ports, the sessions, the worker
pool and the handoff, the timeout sweep; a Twisted service so that twistd, .tac files
and the ``yimmo-wsgi`` command all run the same thing.
"""

from __future__ import annotations

from time import monotonic
from typing import Callable, List, Optional, Set

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import __version__
from .config import Settings
from .context import ErrorStream, FileWrapper
from .exchange import SERVER_SOFTWARE
from .session import HTTPSession
from .worker import Handoff, WorkerPool

log = Logger(namespace="yimmo.server")


class SessionFactory(Factory):
    noisy = False

    def __init__(self, server: "Server") -> None:
        self.server = server

    def buildProtocol(self, addr) -> HTTPSession:
        return HTTPSession(self.server)


class Server(service.Service):
    """Serves one WSGI application on the endpoints of ``settings``."""

    def __init__(self, app: Callable, settings: Settings, reactor=None,
                 url_scheme: str = "http", multiprocess: bool = False) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.app = app
        self.settings = settings
        self.sessions: Set[HTTPSession] = set()
        self.handoff = Handoff(reactor, settings.output_buffer)
        self.pool = WorkerPool(app, settings.no_threads, self.handoff, settings.steal_after)
        self.ports: List = []
        self.base_environ = {
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "%s/%s" % (SERVER_SOFTWARE, __version__),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url_scheme,
            "wsgi.errors": ErrorStream(),
            "wsgi.multithread": settings.no_threads > 1,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        self._sweep: Optional[LoopingCall] = None

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        self.pool.start()
        self.pool.install(self.reactor)
        factory = SessionFactory(self)
        for description in self.settings.endpoints():
            endpoint = endpoints.serverFromString(self.reactor, description)
            port = yield endpoint.listen(factory)
            self.ports.append(port)
            address = port.getHost()
            log.info("listening on {type} {host}:{port}", type=address.type,
                     host=getattr(address, "host", getattr(address, "name", "")),
                     port=getattr(address, "port", ""))
        s = self.settings
        # One sweep for all deadlines costs less than a timer per request; it runs often
        # enough that the shortest timeout is kept to within a quarter of itself.
        interval = min(1.0, s.idle_timeout, s.header_timeout, s.read_timeout, s.linger) / 4
        self._sweep = LoopingCall(self._check_timeouts)
        self._sweep.clock = self.reactor
        self._sweep.start(interval, now=False)

    def _check_timeouts(self) -> None:
        now = monotonic()
        for session in list(self.sessions):
            if session.deadline is not None and now >= session.deadline:
                session.check_timeout(now)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        self.ports = []
        for session in list(self.sessions):
            session.abort()
        self.pool.uninstall()
        self.pool.stop()
        log.info("served {requests} requests; thread hand-overs: {worker_wakeups} worker "
                 "wake-ups, {reactor_wakeups} reactor wake-ups, {hops_per_request:.2f} "
                 "per request", **self.pool.hops())


class YimmoService(Server):
    """
    The server as a service for .tac files and the twistd plugin::

        application = service.Application("myapp")
        YimmoService(app="myapp:app", port=8081, no_threads=4).setServiceParent(application)

    ``app`` is a ``MODULE:EXPR`` string or the WSGI callable itself; the keywords are the
    names of the settings (see ``yimmo-wsgi --help``).  Environment variables apply
    below them, as for the command.
    """

    def __init__(self, app, reactor=None, **settings) -> None:
        from .config import ConfigError, from_environ, setting_names
        from .util import load_app

        unknown = sorted(set(settings) - set(setting_names()) - {"app"})
        if unknown:
            raise ConfigError("unknown setting(s): " + ", ".join(unknown))
        values = from_environ()
        listen = settings.pop("listen", None)
        values.update({k: str(v) for k, v in settings.items()}, lambda o: "keyword " + o.name)
        if listen:
            values.listen = [listen] if isinstance(listen, str) else list(listen)
        if isinstance(app, str):
            values.app = app
            app = load_app(app)
        super().__init__(app, values, reactor)
