"""
The server: the reactor side of one process.  Listening ports, the sessions, the worker
pool and the handoff, the timeout sweep, the graceful drain; a Twisted service so that
twistd, .tac files and the ``yimmo-wsgi`` command all run the same thing (directly, or
in each server process of the manager, see proc.py).
"""

from __future__ import annotations

import collections
import signal
import socket
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Counter, List, Optional, Set, Tuple, cast

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IProtocolNegotiationFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

from . import __version__, compat, metrics
from .compat import HAProxyProtocolWrapper
from .config import Settings, split_endpoint
from .context import ErrorStream, FileWrapper
from .exchange import SERVER_SOFTWARE
from .forwarded import Trusted
from .logs import AccessLog, logger, nothing_to_reopen, on_sigusr1
from .recycle import Watchdog
from .session import _IDLE, HTTPSession
from .websockets import Bridge
from .worker import Handoff, WorkerPool

if TYPE_CHECKING:  # pragma: no cover
    from .http2 import H2Session

log = logger("yimmo.server")

# During a drain, a connection idle this long is closed: its client is between requests
# (a fresh connection gets this long for its first request to arrive).
DRAIN_IDLE = 0.25

# What TLS's ALPN may select, preferred first: without HTTP/2, and with it.
ALPN_PROTOCOLS = (b"http/1.1",)
ALPN_PROTOCOLS_H2 = (b"h2", b"http/1.1")

# How a connection's protocol is chosen (SessionFactory): HTTP/1.x alone, or HTTP/2 too,
# by TLS's ALPN or by the client's preface (prior knowledge, on plain endpoints).
HTTP1_ONLY, BY_ALPN, BY_PREFACE = range(3)


def url_scheme(description: str) -> str:
    return "https" if split_endpoint(description)[1].startswith("ssl:") else "http"


def from_systemd(description: str) -> bool:
    """A socket systemd passes (socket activation): it outlives this process."""
    return split_endpoint(description)[1].startswith("systemd:")


def listening_endpoint(reactor, description: str) -> IStreamServerEndpoint:
    """
    The endpoint that listens for ``description``: the one beneath ``haproxy:``, except
    that ``ssl:`` listens on plain TCP (its port, interface and backlog) and TLS goes on
    in Server._factory, inside the PROXY wrapper: a load balancer sends the PROXY header
    in the clear, before the TLS handshake.  So one process and several (whose sockets,
    handed over by the manager, are plain TCP) build the same protocols.
    """
    inner = split_endpoint(description)[1]
    if not inner.startswith("ssl:"):
        return endpoints.serverFromString(reactor, inner)
    listen = compat.listen_arguments(inner)
    return endpoints.TCP4ServerEndpoint(reactor, listen["port"], listen["backlog"],
                                        listen["interface"])


@implementer(IProtocolNegotiationFactory)
class SessionFactory(Factory):
    noisy = False

    def __init__(self, server: "Server", base_environ: dict,
                 negotiate: int = HTTP1_ONLY) -> None:
        self.server = server
        self.base_environ = base_environ
        self.negotiate = negotiate
        if negotiate != HTTP1_ONLY:
            # Here, not at the top: h2 is imported only by servers that may speak it.
            from .http2 import Negotiator
            self._negotiator = Negotiator

    def buildProtocol(self, addr) -> Protocol:
        self.server.connections += 1
        if self.negotiate == HTTP1_ONLY:
            return HTTPSession(self.server, self.base_environ)
        return self._negotiator(self.server, self.base_environ, self.negotiate == BY_ALPN)

    def acceptableProtocols(self) -> List[bytes]:
        """For ALPN: Twisted's TLS asks the factory it wraps (this one) for the protocols
        it may select, and fails the handshake of every client that offers ALPN when that
        factory names none."""
        return list(ALPN_PROTOCOLS_H2 if self.negotiate == BY_ALPN else ALPN_PROTOCOLS)


# How a PROXY header begins: v1's line, v2's signature (12 bytes).
PROXY_V1_START = b"PROXY"
PROXY_V1_BARE_UNKNOWN = b"PROXY UNKNOWN\r\n"
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Bytes enough to tell a header of either version from none: v2's fixed part, its
# shortest header.  A whole v1 line may be shorter (the spec's "PROXY UNKNOWN\r\n").
PROXY_ENOUGH = 16


def proxy_header_undecided(head: bytes) -> bool:
    """
    ``head``, the first bytes of a connection, may begin a PROXY header, but too few of
    them for Twisted's wrapper to tell: it judges by the first read it gets, and closes
    the connection unless that read has 16 bytes of a v2 header or 8 of a v1 line.
    """
    if len(head) >= PROXY_ENOUGH:
        return False
    if PROXY_V2_SIGNATURE.startswith(head[:len(PROXY_V2_SIGNATURE)]):
        return True
    return PROXY_V1_START.startswith(head[:len(PROXY_V1_START)]) and b"\r\n" not in head


class ProxiedSession(HAProxyProtocolWrapper):
    """
    Twisted's PROXY protocol wrapper, except that the session starts only once the header
    is read: the session takes REMOTE_ADDR from ``getPeer()`` in ``connectionMade``, and
    only then does ``getPeer()`` give the client's address instead of the proxy's.
    Until then the connection is in ``Server.awaiting_header``, for the timeout sweep and
    the drain.  The wrapper gets the connection's first bytes once they are enough for it
    to tell a header from none (proxy_header_undecided): fewer than PROXY_ENOUGH are held
    here; then its parsers bound the header (v1: 107 bytes; v2: by its length field).
    """

    _started = False
    _head: Optional[bytes] = b""  # the first bytes, until the wrapper has them (then None)
    accepted = 0.0  # when the connection came (Server.now): the header is due from then

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        server = self.factory.server
        self.accepted = server.now()
        server.awaiting_header.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._head is not None:
            data = self._head + data
            if proxy_header_undecided(data):
                self._head = data
                return
            self._head = None
            if data.startswith(PROXY_V1_BARE_UNKNOWN):
                # HAProxy's health checks send this line; Twisted's parser wants a space
                # after UNKNOWN, which the spec allows but does not ask for.
                data = PROXY_V1_BARE_UNKNOWN[:-2] + b" \r\n" + data[len(PROXY_V1_BARE_UNKNOWN):]
        rest = compat.read_proxy_header(self, super().dataReceived, data)
        if rest is not None and not self.disconnecting:
            self._started = True
            self.factory.server.awaiting_header.discard(self)
            # This wrapper is the session's transport (it provides what its own does).
            self.wrappedProtocol.makeConnection(cast(Any, self))
            if rest:
                self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.unregisterProtocol(self)
        self.factory.server.awaiting_header.discard(self)
        if self._started:
            self.wrappedProtocol.connectionLost(reason)
        # Breaks the cycle with the session, as Twisted's own wrapper does.
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxiedFactory(WrappingFactory):
    protocol = ProxiedSession
    noisy = False

    def __init__(self, server: "Server", wrappedFactory: Factory) -> None:
        super().__init__(wrappedFactory)
        self.server = server


class Server(service.Service):
    """
    Serves one WSGI application on the endpoints of ``settings``, or on listening sockets
    inherited from the manager (``adopted``: (file descriptor, address family,
    endpoint description) each).
    """

    def __init__(self, app: Callable, settings: Settings, reactor=None,
                 multiprocess: bool = False,
                 adopted: Optional[List[Tuple[int, int, str]]] = None,
                 clock=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        # Every deadline is read from here: monotonic time, or a test's task.Clock.
        self.now: Callable[[], float] = monotonic if clock is None else clock.seconds
        self.app = app
        self.settings = settings
        self.adopted = adopted
        self.sessions: Set["HTTPSession | H2Session"] = set()
        # PROXY connections whose header is still to come (they have no session yet).
        self.awaiting_header: Set[ProxiedSession] = set()
        self.handoff = Handoff(reactor, settings.output_buffer)
        self.pool = WorkerPool(app, settings.no_threads, self.handoff, settings.steal_after)
        self.trusted = Trusted(settings.forwarded_allow_ips)  # proxies (forwarded.py)
        self.access: Optional[AccessLog] = None
        if settings.access_log != "off":
            self.access = AccessLog(settings.access_log, reactor,
                                    path=settings.access_log_file)
            self.pool.access = self.access.record
        self.websockets = Bridge(self)  # after the access log: it logs sessions there
        # Counted always (an addition each), shown by the metrics (metrics.py).
        self.connections = 0
        self.received = 0  # bytes, on HTTP connections
        self.refused: Counter[int] = collections.Counter()  # by status
        self.refused_h2: Counter[int] = collections.Counter()  # on HTTP/2 streams
        if settings.metrics_listen is not None:
            for worker in self.pool.workers:
                worker.tally = metrics.Tally()
        self.metrics_port: Any = None
        self.ports: List = []
        self.systemd_ports: List = []  # of self.ports, systemd's: kept listening at the stop
        self.base_environ = {
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "%s/%s" % (SERVER_SOFTWARE, __version__),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": ErrorStream(),
            "wsgi.multithread": settings.no_threads > 1,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        self._sweep: Optional[LoopingCall] = None
        self.watchdog = Watchdog(settings, self.pool, reactor, self.now)
        self._deadline = 0.0  # of the drain, once stopping
        self.draining = False  # sessions that start now say Connection: close

    def _negotiation(self, description: str) -> int:
        """How the connections of an endpoint come to speak HTTP/2, if they may."""
        s = self.settings
        if s.http2:
            if split_endpoint(description)[1].startswith("ssl:"):
                return BY_ALPN
            if s.http2_cleartext:
                return BY_PREFACE
        return HTTP1_ONLY

    def _factory(self, description: str) -> Factory[Any]:
        """The protocols of a connection: [PROXY wrapper,] [TLS,] session."""
        base = dict(self.base_environ, **{"wsgi.url_scheme": url_scheme(description)})
        proxied, inner = split_endpoint(description)
        factory: Factory[Any] = SessionFactory(self, base, self._negotiation(description))
        if inner.startswith("ssl:"):
            # The port is plain TCP (listening_endpoint): TLS goes on here.
            from twisted.protocols.tls import TLSMemoryBIOFactory
            factory = TLSMemoryBIOFactory(compat.ssl_context_factory(inner), False, factory)
        if proxied:
            compat.check_proxy_protocol()
            factory = ProxiedFactory(self, factory)
        return factory

    def _adopt(self, fd: int, family: int, description: str):
        """
        The port of a listening socket inherited from the manager, which the other server
        processes accept on too: closed here, it closes this process's descriptor alone.
        """
        factory = self._factory(description)
        if family != socket.AF_UNIX:
            port = self.reactor.adoptStreamPort(fd, family, factory)
        elif from_systemd(description):
            # Set up by systemd (SocketMode=, Backlog=); and its endpoint string, read
            # here, would look for LISTEN_FDS, which only the manager had.
            port = compat.adopt_unix_port(self.reactor, fd, factory, None, None)
        else:
            listen = compat.listen_arguments(split_endpoint(description)[1])
            port = compat.adopt_unix_port(self.reactor, fd, factory, listen["backlog"],
                                          listen["mode"])
        compat.close_alone(port)
        return port

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        # A server process stops on the manager's SIGTERM; SIGINT (a terminal's ^C to the
        # process group) is the manager's to handle.
        take_stop_signals(self.reactor, self.hurry,
                          (signal.SIGTERM,) if self.base_environ["wsgi.multiprocess"]
                          else (signal.SIGTERM, signal.SIGINT))
        descriptions = ([d for _, _, d in self.adopted] if self.adopted is not None
                        else self.settings.endpoints())
        parts = [compat.CORE]
        if any(self._negotiation(d) != HTTP1_ONLY for d in descriptions):
            parts.append(compat.HTTP2)
        compat.check(*parts)
        if self.websockets.callbacks is not None:
            self.websockets.factory()
        self.pool.start()
        self.pool.install(self.reactor)
        if self.access is not None:
            self.access.start()
        if self.access is not None and self.access.path is not None:
            on_sigusr1(self.reactor, self.access.reopen)
        elif self.adopted is None:
            # A logrotate sending SIGUSR1 must not kill the server (its default action):
            # the manager sends it on to its processes only with a file to reopen.
            on_sigusr1(self.reactor, nothing_to_reopen)
        if self.adopted is not None:
            for fd, family, description in self.adopted:
                port = self._adopt(fd, family, description)
                compat.one_accept_per_wake_up(port)
                self.ports.append(port)
        else:
            for description in descriptions:
                endpoint = listening_endpoint(self.reactor, description)
                port = yield endpoint.listen(self._factory(description))
                if from_systemd(description):
                    # systemd holds the socket for the next start: not shut down.
                    compat.close_alone(port)
                    self.systemd_ports.append(port)
                self.ports.append(port)
        for port in self.ports:
            log.info("listening on {address}", address=describe(port))
        s = self.settings
        # One sweep for all deadlines costs less than a timer per request; it runs often
        # enough that the shortest timeout is kept to within a quarter of itself.
        interval = min(1.0, s.idle_timeout, s.header_timeout, s.read_timeout, s.send_timeout,
                       s.linger) / 4
        self._sweep = LoopingCall(self._check_timeouts)
        self._sweep.clock = self.reactor
        self._sweep.start(interval, now=False)
        self.watchdog.start()
        if s.metrics_listen is not None and self.adopted is None:
            # (Under a manager, the manager serves the sum of its processes' metrics.)
            self.metrics_port = yield metrics.listen(
                self.reactor, s.metrics_listen, lambda: defer.succeed(metrics.snapshot(self)))
            log.info("metrics on {address}", address=describe(self.metrics_port))

    def _check_timeouts(self) -> None:
        now = self.now()
        for session in list(self.sessions):
            deadline, send_deadline = session.deadline, session.send_deadline
            if ((deadline is not None and now >= deadline)
                    or (send_deadline is not None and now >= send_deadline)):
                session.check_timeout(now)
        # The PROXY header is the first part of the request head: header_timeout holds
        # for it too, from the connection's first moment.
        overdue = now - self.settings.header_timeout
        for proxied in list(self.awaiting_header):
            if proxied.accepted <= overdue:
                proxied.loseConnection()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, let in-flight requests finish (``grace``), then stop."""
        service.Service.stopService(self)
        self.draining = True
        # Shared sockets (the manager's, systemd's) are closed here alone, not shut down
        # nor unlinked.
        yield defer.gatherResults([
            compat.stop_adopted(p) if self.adopted is not None or p in self.systemd_ports
            else defer.maybeDeferred(p.stopListening) for p in self.ports])
        self.ports = self.systemd_ports = []
        self.websockets.stop()
        self._deadline = self.now() + self.settings.grace
        for session in self.sessions:
            session.keep_alive = False  # responses still to come tell their clients
        yield self._drain()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self.watchdog.stop()
        for session in list(self.sessions):
            session.abort()
        for proxied in list(self.awaiting_header):
            proxied.abortConnection()
        self.websockets.abort()
        if self.metrics_port is not None:  # scraped to the end of the drain
            yield self.metrics_port.stopListening()
        self.pool.uninstall()
        # Workers still in the app past the grace period are not waited for (daemons).
        self.pool.stop(max(0.1, self._deadline - self.now()))
        if self.access is not None:
            self.access.stop()
        log.info("served {requests} requests; thread hand-overs: {worker_wakeups} worker "
                 "wake-ups, {reactor_wakeups} reactor wake-ups, {hops_per_request:.2f} "
                 "per request", **self.pool.hops())

    def hurry(self) -> None:
        """End the drain now (a second SIGTERM or SIGINT)."""
        log.warn("stopping now: requests in flight are cut")
        self._deadline = 0.0

    @defer.inlineCallbacks
    def _drain(self):
        """Until the deadline: close connections as they fall idle, wait for the others."""
        idle_timeout = self.settings.idle_timeout
        # WebSockets, told to close at the start, are waited for too: their on_close and
        # their access log line come as their connections end.
        while self.sessions or self.awaiting_header or self.websockets.protocols:
            now = self.now()
            if now >= self._deadline:
                log.warn("drain over: closing {n} connection(s) with requests in "
                         "flight", n=len(self.sessions))
                return
            for session in list(self.sessions):
                if (session.phase == _IDLE and not session.inflight
                        and session.deadline is not None
                        and now - (session.deadline - idle_timeout) >= DRAIN_IDLE):
                    session.transport.loseConnection()
            # Still without its PROXY header: no request has begun, as on an idle session.
            for proxied in list(self.awaiting_header):
                if now - proxied.accepted >= DRAIN_IDLE:
                    proxied.loseConnection()
            yield task.deferLater(self.reactor, 0.05, lambda: None)


SIGNAL_DEBOUNCE = 1.0  # seconds: stop signals this close to the first are the same one


def take_stop_signals(reactor, hurry: Callable[[], None], signals: Tuple[int, ...]) -> None:
    """
    SIGTERM/SIGINT, in place of Twisted's handlers: the first stops the reactor (a
    graceful drain, see stopService); a later one calls ``hurry``.  Signals within
    SIGNAL_DEBOUNCE of the first count as the first: a server process gets its TERM twice
    when the whole process group (or cgroup) is signalled and the manager forwards it,
    and that must not cut the drain; nor may a repeated stop fail in Twisted.
    Installed once the reactor runs, after Twisted's own handlers.
    """
    first: List[float] = []

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def handler(signum, frame) -> None:
        now = monotonic()
        if not first:
            first.append(now)
            log.info("received {name}: stopping", name=signal.Signals(signum).name)
            reactor.callFromThread(stop)
        elif now - first[0] >= SIGNAL_DEBOUNCE:
            reactor.callFromThread(hurry)

    def install() -> None:
        try:
            for sig in signals:
                signal.signal(sig, handler)
        except ValueError:
            pass  # not the main thread: the signals are not ours to take

    reactor.callWhenRunning(install)


def describe(port) -> str:
    """``tcp 127.0.0.1:8081``, ``unix /run/app.sock``: as the "listening on" log says it."""
    address = port.getHost()
    if hasattr(address, "port"):
        host = address.host if ":" not in address.host else "[%s]" % address.host
        return "%s %s:%d" % (address.type.lower(), host, address.port)
    name = address.name
    return "unix %s" % (name.decode() if isinstance(name, bytes) else name)
