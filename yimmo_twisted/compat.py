"""
The private parts of Twisted, autobahn and h2 that the server relies on, in one place.

Each one is worth its risk (the places that use them say why), but none is a promise of
its library: a new release may rename or change it.  So each has a probe that checks,
once and cheaply, that the API is there and behaves as relied on with the installed
versions, and a public fallback for when it does not.  ``check`` runs the probes at
start-up (Server.startService; the WebSocket bridge's and HTTP/2's when those are first
used, if that is later) and logs one warning naming what fell back.

* ``writer``: writing to a plain TCP socket directly (tcp.Connection's buffers).
* ``sendfile_socket``, ``resume_when_writable``: a file body sent with sendfile on a
  TCP or Unix socket, paced by tcp.Connection's doWrite (sendfile.FileSender).
* ``one_accept_per_wake_up``: a listening port's ``numberAccepts``.
* ``parse_endpoint``: Twisted's tokenizer of endpoint strings, ``endpoints._parse``.
* ``close_alone``, ``stop_adopted``: a listening socket that processes share, closed
  in one of them without shutdown(2) (``tcp.Port._shouldShutdown``).
* ``adopt_unix_port``: ``unix.Port._fromListeningDescriptor``, to adopt a Unix socket
  as the manager set it up, whose path only the manager removes.
* ``HAProxyProtocolWrapper`` and its ``_proxyInfo`` (``read_proxy_header``, used by
  server.ProxiedSession).
* ``websocket_data_received``: autobahn's ``_dataReceived``.
* ``autobahn_frames_ok``: the state of autobahn's frame reader, for WebSocket frames
  read and written without it (websockets.WebSocketProtocol).
* ``runs_do_iteration``: whether a reactor's loop calls ``doIteration``, the hook of the
  worker pool (worker.WorkerPool.install; checked per reactor, when the pool installs).
* ``plain_poll``: the epoll reactor's ``doPoll`` without the log context it sets around
  each event, reading TCP connections as their doRead does (its ``_poller``,
  ``_selectables``, ``_doReadOrWrite``, ``_disconnectSelectable``, tcp.Connection's
  ``socket`` and ``bufferSize``; checked per reactor, when the pool installs).
* ``listen_arguments``, ``ssl_context_factory``: how an endpoint listens (its port,
  backlog, TLS context...), by public API alone.
* ``h2_open_after_goaway``: h2's connection state machine (``state_machine``), one that
  stays open at the peer's GOAWAY, so that the streams open then are answered.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import sys
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, cast

from twisted.internet import defer, endpoints, main, tcp, unix
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import IPullProducer, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python import log as twisted_log
from zope.interface import implementer

from .logs import logger

log = logger("yimmo.compat")


class _NoReactor:
    """Stands in for the reactor of the objects the probes build: they never run."""

    def addWriter(self, writer) -> None:
        pass

    removeWriter = addReader = removeReader = addWriter


def _no_reactor() -> Any:
    """A _NoReactor where a reactor (IReactorFDSet) is due: it is one for what probes do."""
    return _NoReactor()


# -- writing to a TCP socket directly ----------------------------------------------------

@lru_cache(maxsize=None)
def direct_write_ok() -> bool:
    """
    tcp.Connection has the buffers ``write_direct`` tests, ``transport.write`` fills
    them, and its ``socket`` is the connection's.
    """
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        conn = tcp.Connection(a, Protocol(), _no_reactor())
        conn.connected = True
        if not (conn._tempDataBuffer == [] and conn.dataBuffer == b"" and conn.offset == 0
                and conn._writeDisconnecting is False and not conn.disconnecting
                and conn.socket is a):
            return False
        if conn.writeSomeData(b"probe") != 5 or b.recv(16) != b"probe":
            return False
        conn.write(b"queued")
        return conn._tempDataBuffer == [b"queued"]
    except Exception:
        return False
    finally:
        a.close()
        b.close()


def write_direct(transport: tcp.Connection, data: bytes) -> None:
    """
    Send at once when the transport has nothing buffered.  Going through
    transport.write would cost two epoll_ctl calls and a reactor iteration per
    response (register for writability, send, unregister), each syscall a point
    where a worker takes the GIL from the reactor.
    """
    t = transport
    if (t._tempDataBuffer or len(t.dataBuffer) > t.offset or t.disconnecting
            or t._writeDisconnecting or not t.connected):
        t.write(data)
        return
    # The socket's own send, not writeSomeData: its slice and its retry on EINTR (which
    # Python does itself since 3.5) cost more than a small response's send.
    try:
        sent = t.socket.send(data)
    except OSError:
        t.write(data)  # EAGAIN, or an error: let the transport find and report it
        return
    if sent < len(data):
        t.write(data[sent:])


def writer(transport) -> Callable[[bytes], None]:
    """How to write to ``transport``: directly for plain TCP (see write_direct)."""
    if isinstance(transport, tcp.Connection) and direct_write_ok():
        return partial(write_direct, transport)
    return transport.write


# -- sending a file on the socket (sendfile) -------------------------------------------

@implementer(IPullProducer)
class _CountResumes:
    def __init__(self) -> None:
        self.resumed = 0

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


@lru_cache(maxsize=None)
def pull_after_drain_ok() -> bool:
    """
    A pull producer of a tcp.Connection is asked for more by doWrite once Twisted's
    buffer is empty, also after ``startWriting`` with nothing buffered: so when it is
    asked, it may write to the socket itself with nothing of Twisted's still to go out.
    """
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)  # nothing sent: an error, not a wait
    try:
        conn = tcp.Connection(a, Protocol(), _no_reactor())
        conn.connected = True
        producer = _CountResumes()
        conn.registerProducer(producer, False)  # asked once at once
        conn.write(b"head")
        if conn.doWrite() is not None or b.recv(16) != b"head" or producer.resumed != 2:
            return False
        conn.startWriting()
        return conn.doWrite() is None and producer.resumed == 3
    except Exception:
        return False
    finally:
        a.close()
        b.close()


def sendfile_socket(transport: Any) -> Optional[int]:
    """
    The file descriptor of ``transport``'s socket, for sendfile, when writes to it may
    bypass the transport (a plain TCP or Unix connection, see ``pull_after_drain_ok``);
    None for the others (TLS, wrappers), which get the file's bytes through write().
    """
    if (isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)
            and pull_after_drain_ok()):
        return transport.getHandle().fileno()
    return None


def resume_when_writable(transport: tcp.Connection) -> None:
    """
    Have the pull producer of ``transport`` (a ``sendfile_socket`` one) asked for more
    once its socket is writable: doWrite finds nothing buffered and asks it.
    """
    transport.startWriting()


# -- one accept per wake-up on a shared listening socket ---------------------------------

class _OneAcceptPerWakeUp:
    """
    For a listening socket that the other server processes accept on too.  Twisted
    accepts up to ``numberAccepts`` connections per wake-up and raises it under load, so
    one process would take a whole burst (wrk's 50 connections, a browser's 6) while the
    other sleeps; one accept per wake-up lets every woken process take its share.
    """

    numberAccepts = property(lambda self: 1, lambda self, value: None)


_shared_classes: dict = {}


def _shared(cls: type) -> type:
    """``cls`` (a Twisted port class) with one accept per wake-up."""
    if cls not in _shared_classes:
        _shared_classes[cls] = type("Shared" + cls.__name__, (_OneAcceptPerWakeUp, cls), {})
    return _shared_classes[cls]


@lru_cache(maxsize=None)
def accept_limit_ok() -> bool:
    """tcp.Port's accept loop takes its length from ``numberAccepts``, which we can pin."""
    try:
        if "numberAccepts" not in tcp.Port.doRead.__code__.co_names:
            return False
        port = tcp.Port(0, Factory(), reactor=_NoReactor())
        port.__class__ = _shared(type(port))
        port.numberAccepts = 100  # what startListening and doRead assign
        return port.numberAccepts == 1
    except Exception:
        return False


def one_accept_per_wake_up(port) -> None:
    """Make a TCP or Unix listening ``port`` accept one connection per wake-up (if it can)."""
    if isinstance(port, tcp.Port) and accept_limit_ok():
        port.__class__ = _shared(type(port))


# -- endpoint strings --------------------------------------------------------------------

# An endpoint string with every rule relied on (escaped ':' and '=', a '=' in a value),
# and how serverFromString reads it.
_ENDPOINT = r"unix:/run/a\:b\=c.sock:mode=600:backlog=5:x=y=z"
_ENDPOINT_PARSED = (["unix", "/run/a:b=c.sock"], {"mode": "600", "backlog": "5", "x": "y=z"})


@lru_cache(maxsize=None)
def endpoint_parse_ok() -> bool:
    """``endpoints._parse`` splits an endpoint string as serverFromString reads it."""
    try:
        return endpoints._parse(_ENDPOINT) == _ENDPOINT_PARSED
    except Exception:
        return False


def _parse_quoted(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    The rules of endpoints.quoteStringArgument, read back: ``:`` separates the
    arguments, the first ``=`` in one makes it a keyword, a backslash escapes the next
    character.
    """
    args: List[str] = []
    keywords: Dict[str, str] = {}
    text, key = "", None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            text += next(chars, "")
        elif char == "=" and key is None:
            key, text = text, ""
        elif char == ":":
            if key is None:
                args.append(text)
            else:
                keywords[key] = text
            text, key = "", None
        else:
            text += char
    if key is None:
        args.append(text)
    else:
        keywords[key] = text
    return args, keywords


def parse_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    (positional, keyword) arguments of the endpoint string ``description``: by Twisted's
    own tokenizer, which reads the escapes exactly as serverFromString will; else by its
    documented quoting rules.
    """
    if endpoint_parse_ok():
        return endpoints._parse(description)
    return _parse_quoted(description)


# -- listening sockets shared between processes ------------------------------------------

@lru_cache(maxsize=None)
def close_alone_ok() -> bool:
    """
    A tcp.Port (a unix.Port too, whose connectionLost ends in tcp.Port's) closes its
    socket by ``_closeSocket``, which calls shutdown(2) first unless ``_shouldShutdown``
    is false; without it, the socket stays open through another process's descriptor.
    """
    a, b = socket.socketpair()
    other = a.dup()  # another process's descriptor of the socket
    b.setblocking(False)
    try:
        if not ("_closeSocket" in tcp.Port.connectionLost.__code__.co_names
                and "connectionLost" in unix.Port.connectionLost.__code__.co_names):
            return False
        port = tcp.Port(0, Factory(), reactor=_NoReactor())
        port.socket = a
        port._shouldShutdown = False
        port._closeSocket(True)
        if a.fileno() != -1:
            return False
        try:
            b.recv(1)  # b"" had the socket been shut down
        except BlockingIOError:
            return True
        return False
    except Exception:
        return False
    finally:
        for s in (a, b, other):
            s.close()


def close_alone(port) -> None:
    """
    Have closing the listening ``port``, whose socket other processes share (the
    manager's, or one a server process adopted), close this process's descriptor alone.
    Twisted shuts a socket down before closing it, and a listening socket shut down stops
    listening for every process: the others' accept() fails (EINVAL), connections to a
    Unix socket are refused.
    """
    if isinstance(port, tcp.Port) and close_alone_ok():
        port._shouldShutdown = False


class _AdoptedUNIXPort(unix.Port):
    """
    A listening Unix socket that the manager owns, in a server process: bound, chmodded
    and listening with its endpoint's mode and backlog already, and its path the
    manager's to remove.  unix.Port chmods the path again as it starts, and unlinks it as
    it stops (the manager's next server process then failed to start).
    """

    def startListening(self) -> None:
        # unix.Port.startListening without the bind, the chmod and the listen.
        tcp._reservedFD.reserve()
        skt, self._preexistingSocket = self._preexistingSocket, None
        assert self.factory is not None and skt is not None  # set by the constructor
        self.factory.doStart()
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]  # as Twisted's own ports do
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)  # unix.Port's unlinks the path first


# What unix.Port.startListening does that _AdoptedUNIXPort.startListening does too.
_UNIX_START = {"_reservedFD", "_preexistingSocket", "doStart", "connected", "socket",
               "fileno", "numberAccepts", "startReading"}


@lru_cache(maxsize=None)
def unix_adoption_ok() -> bool:
    """
    ``unix.Port._fromListeningDescriptor`` makes a port, not yet listening, of the socket
    it keeps in ``_preexistingSocket``, and unix.Port still starts by the steps that
    _AdoptedUNIXPort takes (and stops by tcp.Port's connectionLost: close_alone_ok).
    """
    a, b = socket.socketpair()
    port = None
    try:
        if not _UNIX_START <= set(unix.Port.startListening.__code__.co_names):
            return False
        factory = Factory()
        factory.noisy = False
        port = _AdoptedUNIXPort._fromListeningDescriptor(_NoReactor(), a.fileno(), factory)
        if type(port) is not _AdoptedUNIXPort or port.connected:
            return False
        port.startListening()
        return bool(port.connected) and port.fileno() == port.socket.fileno()
    except Exception:
        return False
    finally:
        held = getattr(port, "socket", None) or getattr(port, "_preexistingSocket", None)
        if held is not None:
            held.close()
        a.close()
        b.close()


def adopt_unix_port(reactor, fd: int, factory: Factory, backlog: Optional[int],
                    mode: Optional[int]):
    """
    The port of the listening Unix socket ``fd`` (inherited from the manager): the socket
    as the manager set it up, with its endpoint's ``mode`` and ``backlog``.  Twisted's
    adoptStreamPort (the fallback) listens and chmods it again, with its defaults (50,
    0666), which are then set right again; None (a systemd socket, whose settings are
    not known here) leaves Twisted's.
    """
    if unix_adoption_ok():
        port = _AdoptedUNIXPort._fromListeningDescriptor(reactor, fd, factory)
        port.startListening()
        return port
    port = reactor.adoptStreamPort(fd, socket.AF_UNIX, factory)
    # Set right again at once (in between, the socket file was open to all).
    with socket.socket(fileno=os.dup(fd)) as sock:
        path = sock.getsockname()
        if mode is not None and path and path[:1] not in ("\0", b"\0"):  # not abstract
            os.chmod(path, mode)
        if backlog is not None:
            sock.listen(backlog)
    return port


def stop_adopted(port) -> defer.Deferred:
    """
    Stop accepting on ``port``, a listening socket adopted from the manager (or passed by
    systemd), closing this process's descriptor alone.  Where Twisted's close would do
    more (shut the socket down when close_alone cannot prevent it, unlink the path of a
    Unix socket adopted by the fallback or passed by systemd), the port only stops
    reading, and its descriptor closes as the process exits.
    """
    if close_alone_ok() and (isinstance(port, _AdoptedUNIXPort)
                             or not isinstance(port, unix.Port)):
        return defer.maybeDeferred(port.stopListening)
    port.stopReading()
    return defer.succeed(None)


# -- the PROXY protocol ------------------------------------------------------------------

def _proxy_wrapper_class() -> type:
    """
    Twisted's PROXY protocol wrapper.  Its module exports only ``proxyEndpoint``; the
    class is what that endpoint wraps each connection in (its factory's ``protocol``).
    """
    factories: list = []

    @implementer(IStreamServerEndpoint)
    class Endpoint:
        def listen(self, factory):
            factories.append(factory)
            return defer.succeed(None)

    proxyEndpoint(Endpoint()).listen(Factory())
    return factories[0].protocol


if TYPE_CHECKING:  # the class itself, for the checker; at run time, found as above
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
else:
    HAProxyProtocolWrapper = _proxy_wrapper_class()

_PROXY_V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n"


@lru_cache(maxsize=None)
def proxy_info_ok() -> bool:
    """The wrapper's ``_proxyInfo`` is None until the header is read, then set."""
    try:
        wrapper = HAProxyProtocolWrapper(cast(Any, Factory()), Protocol())
        if wrapper._proxyInfo is not None:
            return False
        wrapper.dataReceived(_PROXY_V1[:20])
        if wrapper._proxyInfo is not None:
            return False
        wrapper.dataReceived(_PROXY_V1[20:])
        return wrapper._proxyInfo is not None and wrapper.getPeer().host == "192.0.2.1"
    except Exception:
        return False


class _Held(Protocol):
    """Stands in for the protocol behind a PROXY wrapper while the header is read: keeps
    what the wrapper passes on (the bytes after the header)."""

    def __init__(self) -> None:
        self.received: Optional[bytes] = None  # None: nothing passed on yet

    def dataReceived(self, data: bytes) -> None:
        self.received = (self.received or b"") + data


def proxy_passes_on_ok() -> bool:
    """
    What read_proxy_header falls back on: the wrapper passes nothing on until its
    header ends, and then every read, even an empty one.
    """
    try:
        held = _Held()
        wrapper = HAProxyProtocolWrapper(cast(Any, Factory()), held)
        for part in (_PROXY_V1[:20], b"", _PROXY_V1[20:]):
            wrapper.dataReceived(part)
            if held.received is not None:
                return False
        wrapper.dataReceived(b"")
        return held.received == b"" and getattr(wrapper.getPeer(), "host", "") == "192.0.2.1"
    except Exception:
        return False


def check_proxy_protocol() -> None:
    """At start-up, for haproxy: endpoints: read_proxy_header can tell where headers end."""
    if not (proxy_info_ok() or proxy_passes_on_ok()):
        import twisted
        raise RuntimeError("haproxy: endpoints cannot work on Twisted %s: its PROXY wrapper "
                           "shows neither when the header has been read (_proxyInfo) nor "
                           "what follows it" % twisted.__version__)


def read_proxy_header(wrapper, feed: Callable[[bytes], None],
                      data: bytes) -> Optional[bytes]:
    """
    Give ``data`` to ``wrapper``, a PROXY wrapper still reading its header, through
    ``feed`` (the wrapper's own dataReceived): the bytes after the header once it has
    been read (b"" if none), else None.  Meanwhile the protocol behind the wrapper sees
    nothing: it starts only once the header is read (server.ProxiedSession).
    """
    protocol, held = wrapper.wrappedProtocol, _Held()
    wrapper.wrappedProtocol = held
    try:
        feed(data)
        if proxy_info_ok():
            done = wrapper._proxyInfo is not None
        else:
            if held.received is None and not wrapper.disconnecting:
                feed(b"")  # passed on only once the header has been read
            done = held.received is not None
    finally:
        wrapper.wrappedProtocol = protocol
    return (held.received or b"") if done else None


# -- autobahn ----------------------------------------------------------------------------

@lru_cache(maxsize=None)
def autobahn_receive_ok() -> bool:
    """autobahn's Twisted dataReceived only logs and hands the bytes to ``_dataReceived``."""
    from autobahn.twisted.websocket import WebSocketServerProtocol

    try:
        return (callable(WebSocketServerProtocol._dataReceived) and "_dataReceived"
                in WebSocketServerProtocol.dataReceived.__code__.co_names)
    except AttributeError:
        return False


def websocket_data_received() -> Callable:
    """
    The dataReceived of our WebSocket protocol: autobahn's ``_dataReceived``, which
    skips the debug line autobahn's public one formats on every call, logged or not (a
    tenth of the cost of a small message); else the public one.
    """
    from autobahn.twisted.websocket import WebSocketServerProtocol

    if autobahn_receive_ok():
        return WebSocketServerProtocol._dataReceived
    return WebSocketServerProtocol.dataReceived


_FRAME_STATS = ("incomingOctetsWireLevel", "incomingOctetsWebSocketLevel",
                "incomingOctetsAppLevel", "incomingWebSocketFrames",
                "incomingWebSocketMessages", "outgoingOctetsWebSocketLevel",
                "outgoingOctetsAppLevel", "outgoingWebSocketFrames",
                "outgoingWebSocketMessages")


@lru_cache(maxsize=None)
def autobahn_frames_ok() -> bool:
    """
    What websockets.WebSocketProtocol's own framing of whole unfragmented data frames
    relies on: an open autobahn protocol has nothing of its own under way exactly when
    its buffer (``data``) is empty, ``current_frame`` None and ``inside_message``
    false; ``_perMessageCompress`` is None without compression; and its traffic
    counters are the attributes of ``trafficStats`` that it adds a frame's lengths to.
    """
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    received: list = []

    class Probe(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            received.append(payload)

    try:
        factory = WebSocketServerFactory()
        factory.protocol = Probe
        p: Any = factory.buildProtocol(None)
        p.makeConnection(StringTransport())
        p._dataReceived(b"GET / HTTP/1.1\r\nHost: probe\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                        b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

        def idle() -> bool:
            return (p.state == p.STATE_OPEN and p.data == b"" and p.current_frame is None
                    and p.inside_message is False)

        if not (idle() and p._perMessageCompress is None
                and all(getattr(p.trafficStats, name) == 0 for name in _FRAME_STATS)):
            return False
        frame = b"\x82\x83\x00\x00\x00\x00abc"  # masked with a zero key
        start = b"\x02\x82\x00\x00\x00\x00d"  # the first fragment, cut in its payload
        p._dataReceived(frame + start)
        if idle() or received != [b"abc"]:
            return False
        p._dataReceived(b"e\x80\x80\x00\x00\x00\x00")  # its end; the last, empty one
        s = p.trafficStats
        return (idle() and received == [b"abc", b"de"] and s.incomingWebSocketFrames == 3
                and s.incomingWebSocketMessages == 2 and s.incomingOctetsAppLevel == 5
                and s.incomingOctetsWebSocketLevel == 5
                and s.incomingOctetsWireLevel == len(frame + start) + 7)
    except Exception:
        return False


# -- the reactor's iteration -------------------------------------------------------------

def runs_do_iteration(reactor) -> bool:
    """
    ``reactor`` runs Twisted's own main loop, which calls ``doIteration`` once per turn
    with the time it may sleep (select, poll, epoll).  Reactors run by another loop
    (asyncio's, GLib's) override ``run`` and never call it.
    """
    cls = type(reactor)
    return (getattr(cls, "run", None) is ReactorBase.run
            and getattr(cls, "mainLoop", None) is ReactorBase.mainLoop
            and "doIteration" in ReactorBase.mainLoop.__code__.co_names
            and callable(getattr(cls, "doIteration", None))
            and cls.doIteration is not ReactorBase.doIteration)  # that one raises


def plain_poll(reactor) -> Optional[Callable[[Optional[float]], None]]:
    """
    ``reactor.doPoll`` less ``log.callWithLogger`` around each event, or None where the
    reactor is not Twisted's epoll reactor as it is written.  That call (the connection's
    logPrefix, a new log context pushed and popped) costs some 2 us per event, a tenth of
    the reactor's time per request, for a "system" key that only the legacy log reads:
    this server's log lines name their namespace.  Errors are handled where they were:
    ``_doReadOrWrite`` logs what a protocol raises and drops its connection; anything it
    lets out reaches the main loop's handler, which logs it and goes on.

    A TCP connection that is only readable (most events under load) is read here, as
    tcp.Connection's doRead reads it, and dropped as _doReadOrWrite drops it
    (``_disconnectSelectable``): three Python calls and their checks fewer per read.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll here
        return None
    cls = type(reactor)
    if not (isinstance(reactor, EPollReactor) and cls.doPoll is EPollReactor.doPoll
            and cls.doIteration is EPollReactor.doPoll
            and cls._doReadOrWrite is EPollReactor._doReadOrWrite
            and {"callWithLogger", "_doReadOrWrite", "_poller", "_selectables"}
            <= set(EPollReactor.doPoll.__code__.co_names)):
        return None
    poll = getattr(getattr(reactor, "_poller", None), "poll", None)
    selectables = getattr(reactor, "_selectables", None)
    if not (callable(poll) and type(selectables) is dict):
        return None
    dispatch = reactor._doReadOrWrite
    found = getattr(reactor, "_disconnectSelectable", None)
    # Without it, or with another doRead, every event goes through _doReadOrWrite.
    READ = select.EPOLLIN if callable(found) and _connection_read_ok() else -1
    disconnect = cast(Callable[..., None], found)
    get = selectables.get
    recv_types: Dict[type, bool] = {}

    def doPoll(timeout: Optional[float]) -> None:
        try:
            events = poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = get(fd)
            if selectable is None:
                continue
            if event == READ:
                plain = recv_types.get(type(selectable))
                if plain is None:
                    plain = recv_types[type(selectable)] = _reads_plainly(type(selectable))
                if plain:
                    # A TCP connection with data to read: what _doReadOrWrite, doRead and
                    # _dataReceived do for it, without their three calls and checks.
                    try:
                        data = selectable.socket.recv(selectable.bufferSize)
                    except OSError as e:
                        if e.errno != errno.EAGAIN:
                            disconnect(selectable, main.CONNECTION_LOST, True)
                        continue
                    if not data:
                        disconnect(selectable, main.CONNECTION_DONE, True)
                        continue
                    try:
                        selectable.protocol.dataReceived(data)
                    except BaseException:
                        twisted_log.err()
                        disconnect(selectable, sys.exc_info()[1], False)
                    continue
            dispatch(selectable, fd, event)

    return doPoll


def _reads_plainly(cls: type) -> bool:
    """Connections of ``cls`` read as tcp.Connection does (their doRead is its own)."""
    return (issubclass(cls, tcp.Connection) and cls.doRead is tcp.Connection.doRead
            and cls._dataReceived is tcp.Connection._dataReceived)


@lru_cache(maxsize=None)
def _connection_read_ok() -> bool:
    """
    tcp.Connection's doRead is the one plain_poll's reading stands for: recv of
    ``bufferSize`` bytes from ``socket``, EWOULDBLOCK as nothing to read, any other error
    as the connection lost, no data as its end, else the protocol's dataReceived.
    """
    read = tcp.Connection.doRead.__code__
    received = tcp.Connection._dataReceived.__code__
    return ({"socket", "recv", "bufferSize", "EWOULDBLOCK", "CONNECTION_LOST",
             "_dataReceived"} <= set(read.co_names)
            and {"CONNECTION_DONE", "protocol", "dataReceived"} <= set(received.co_names)
            and errno.EWOULDBLOCK == errno.EAGAIN)


# -- how an endpoint listens -------------------------------------------------------------

class _Listen:
    """
    A reactor that keeps the arguments of the one listen call an endpoint makes, by the
    public signatures of IReactorTCP, IReactorSSL and IReactorUNIX, instead of listening.
    """

    call: Optional[Dict[str, Any]] = None

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.call = {"port": port, "backlog": backlog, "interface": interface}

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.call = {"port": port, "contextFactory": contextFactory, "backlog": backlog,
                     "interface": interface}

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        self.call = {"address": address, "backlog": backlog, "mode": mode,
                     "wantPID": wantPID}


def listen_arguments(description: str) -> Dict[str, Any]:
    """
    How the ``tcp:``, ``ssl:`` or ``unix:`` endpoint ``description`` listens, by the
    names of the reactor's listen call: port, interface, backlog, contextFactory; address,
    backlog, mode, wantPID.  Its endpoint hands them to the reactor, which is public;
    the attributes it keeps them in are not.
    """
    capture = _Listen()
    listening = endpoints.serverFromString(capture, description).listen(Factory())
    listening.addErrback(lambda failure: None)  # no call: raised below
    if capture.call is None:
        raise ValueError("cannot find how %r listens" % description)
    return capture.call


def ssl_context_factory(description: str):
    """The TLS context factory of the ``ssl:`` endpoint ``description``."""
    return listen_arguments(description)["contextFactory"]


# -- h2: the answers after the peer's GOAWAY -------------------------------------------

def _h2_pair() -> Tuple[Any, Any]:
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    client = H2Connection(H2Configuration(client_side=True))
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the client's acknowledgement
    return client, server


def _goaway_and_more() -> bytes:
    """A client's GOAWAY (no error), and a WINDOW_UPDATE after it."""
    from hyperframe.frame import GoAwayFrame, WindowUpdateFrame
    return (GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
            + WindowUpdateFrame(0, window_increment=1).serialize())


@lru_cache(maxsize=None)
def _open_after_goaway() -> type:
    from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
    open_states = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)

    class OpenAfterGoaway(H2ConnectionStateMachine):
        """h2's connection states, but for the peer's GOAWAY, which leaves it open."""

        def process_input(self, input_: Any) -> Any:
            machine: Any = self  # h2 before 4.2 has no type hints for its attributes
            state = machine.state
            events = super().process_input(input_)
            if input_ is ConnectionInputs.RECV_GOAWAY and state in open_states:
                machine.state = state
            return events

    return OpenAfterGoaway


def _install_open_after_goaway(conn: Any) -> None:
    machine = _open_after_goaway()()
    machine.state = conn.state_machine.state
    conn.state_machine = machine


@lru_cache(maxsize=None)
def h2_goaway_ok() -> bool:
    """
    h2's connection state machine can be replaced by one that stays open at the peer's
    GOAWAY: then a request and the client's GOAWAY, and a frame after it, read at once,
    give their events, and the request's answer is sent.
    """
    try:
        from h2.events import (ConnectionTerminated, RequestReceived, StreamEnded,
                               WindowUpdated)
        client, server = _h2_pair()
        _install_open_after_goaway(server)
        client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                (":authority", "probe")], end_stream=True)
        events = server.receive_data(client.data_to_send() + _goaway_and_more())
        if [type(e) for e in events] != [RequestReceived, StreamEnded, ConnectionTerminated,
                                         WindowUpdated]:
            return False
        server.send_headers(1, [(":status", "200")], end_stream=True)
        return bool(server.data_to_send())
    except Exception:
        return False


def h2_open_after_goaway(conn: Any) -> None:
    """
    Have ``conn`` (an H2Connection, new or open) answer the streams open when the peer's
    GOAWAY comes, as RFC 9113 6.8 lets them finish, and read the frames after it.  h2 as
    released closes its connection at any GOAWAY received (python-hyper/h2 #1181): the
    frames read with it fail, and nothing more may be sent.
    """
    if h2_goaway_ok():
        _install_open_after_goaway(conn)


# -- at start-up -------------------------------------------------------------------------

# What each part of the server relies on: its library and its probes.  The core's run at
# every start-up; the WebSocket bridge's and HTTP/2's at start-up when the app or the
# settings use that part, else when it is first used: a server without it does not import
# its library (autobahn and h2 were a third of a server's start-up time).
Part = Tuple[str, Tuple[Tuple[str, Callable[[], bool]], ...]]
CORE: Part = ("twisted", (
    ("direct writes to TCP sockets (tcp.Connection buffers): transport.write instead",
     direct_write_ok),
    ("sendfile paced by tcp.Connection (a pull producer asked by doWrite after "
     "startWriting): file bodies read and written through the transport instead",
     pull_after_drain_ok),
    ("one accept per wake-up on shared sockets (tcp.Port.numberAccepts): Twisted's "
     "accept loop instead", accept_limit_ok),
    ("Twisted's tokenizer of endpoint strings (endpoints._parse): its quoting rules read "
     "here instead", endpoint_parse_ok),
    ("closing shared listening sockets alone (tcp.Port._shouldShutdown): the manager's "
     "close shuts them down, and server processes leave theirs open until they exit",
     close_alone_ok),
    ("adopting Unix sockets as the manager set them up (unix.Port._fromListeningDescriptor "
     "and its start): adoptStreamPort, then the endpoint's mode and backlog set again, "
     "and the socket left open until the process exits", unix_adoption_ok),
    ("the PROXY header state (HAProxyProtocolWrapper._proxyInfo): an empty read after "
     "each chunk of the header tells its end instead", proxy_info_ok),
))
WEBSOCKETS: Part = ("autobahn", (
    ("autobahn's _dataReceived: its dataReceived instead", autobahn_receive_ok),
    ("autobahn's frame state (data, current_frame, inside_message, trafficStats): "
     "every frame through autobahn's reader and writer", autobahn_frames_ok),
))
HTTP2: Part = ("h2", (
    ("h2's connection state machine (H2Connection.state_machine): after the client's "
     "GOAWAY the streams open then are dropped, not answered", h2_goaway_ok),
))
PROBES = CORE[1] + WEBSOCKETS[1] + HTTP2[1]


def check(*parts: Part) -> List[str]:
    """Run the probes of ``parts`` (all by default; each probe once per process); warn of
    those that fail, with their libraries' versions.  Their names."""
    failed: List[str] = []
    versions: List[str] = []
    for library, probes in parts or (CORE, WEBSOCKETS, HTTP2):
        names = [name for name, probe in probes if not probe()]
        if names:
            failed += names
            module = importlib.import_module(library)
            versions.append("%s %s" % (library, getattr(module, "__version__", "?")))
    if failed:
        log.warn("on {versions}, private APIs are not as expected; falling back for: "
                 "{failed}", versions=" and ".join(versions), failed="; ".join(failed))
    return failed
