"""
WebSockets: the autobahn bridge behind the ``yimmo`` API (``yimmo_module``).

A connection starts as HTTP.  When the application has registered callbacks
(``yimmo.init_websockets``) and a request head asks to upgrade to ``websocket``, the HTTP
session stops parsing and calls ``Bridge.take_over``: an autobahn
``WebSocketServerProtocol`` (ws_protocol.py) replaces the session on the transport and is
fed the head (rebuilt from the parsed request) and the bytes that followed it.  autobahn
checks the handshake, once, and does the framing; invalid handshakes get 400 (426 with
``Sec-WebSocket-Version: 13`` for a version other than 13), never 101.  Whole,
unfragmented, uncompressed text and binary frames, the bulk of the traffic, the protocol
reads and writes itself, with autobahn's checks (``WebSocketProtocol.dataReceived``,
``_send_frame``): autobahn's reader costs several times what the rest of a small
message does.  autobahn is imported only by a server whose app registers callbacks.

Threads.  autobahn runs on the reactor thread; the application's callbacks never do.
Each WebSocket has an ``_Inbox``: the callbacks due (on_open, on_message in the order
of the messages, on_close), run by the server's worker pool, one at a time.  An inbox is
a job for the pool like an exchange: the reactor submits it when its first callback is
due, and the worker that takes it runs the callbacks queued since, up to a turn's
worth, then puts it back behind the other work of that worker.  Reusing the pool rather
than a pool of our own keeps one set of threads sharing the GIL, the pool's batching
(one wake-up for the messages of many sessions read in one reactor iteration) and its
stealing (a worker blocked in a slow callback has its queue taken by idle workers), so a
slow callback delays neither HTTP nor other sessions while threads are free.

Output.  ``WebSocket.send`` may be called from any thread.  Frames travel to the reactor
through the pool's ``Handoff`` FIFO, the same one-wake-up-per-batch path as HTTP
responses, with the WebSocket's ``_Channel`` in the place of an HTTP session.

Memory.  Incoming: when the messages waiting for callbacks exceed ``input_buffer``
bytes, reading from the client pauses until the callbacks catch up.  Outgoing: when more
than ``output_buffer`` bytes are not yet written, or the transport's buffer is full (the
client does not read), ``send`` waits; past ``ws_send_timeout`` it raises TimeoutError.
Message and frame sizes are capped by ``ws_max_message_size`` and ``ws_max_frame_size``
(larger ones close the connection with 1009).

Access log.  Each connection handed over gets one line when it is closed: 101 for a
session, or the status that refused its handshake (``AccessLog.websocket``).
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, List, NamedTuple, Optional, Union, cast

from twisted.python.threadable import isInIOThread

from . import compat
from .exchange import CLOSE, RESUME, ClientDisconnected
from .logs import logger
from .worker import Channel

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server
    from .ws_protocol import WebSocketProtocol

log = logger("yimmo.websockets")

# Flags of yimmo-wsgi's API (ymo_ws.h): FIN and RSV bits | opcode.
YMO_WS_FLAG_FIN = 0x80
YMO_WS_FLAG_RSV1 = 0x40
YMO_WS_FLAG_RSV2 = 0x20
YMO_WS_FLAG_RSV3 = 0x10
YMO_WS_OP_CONTINUATION = 0x0
YMO_WS_OP_TEXT = 0x1
YMO_WS_OP_BINARY = 0x2
YMO_WS_OP_CLOSE = 0x8
YMO_WS_OP_PING = 0x9
YMO_WS_OP_PONG = 0xA
_OPCODE = 0x0F

# Close codes (RFC 6455 7.4.1).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
NO_STATUS = 1005  # a close frame without a code
ABNORMAL_CLOSURE = 1006  # no close frame: the connection was lost
INTERNAL_ERROR = 1011

# Handoff end codes of a _Channel's records (any but MORE: Handoff.emit never waits for
# them, WebSocket.send does its own waiting, with a timeout).
_FRAME = 0x100  # | flags: data is a frame's payload
_CLOSE = CLOSE  # data is a close frame's payload (code, reason)
_RESUME = RESUME  # the callbacks caught up: read from the client again
_ACCEPT = 0x10  # on_open accepted: complete the handshake
_REFUSE = 0x11  # on_open refused: 403
_FAIL = 0x12  # on_open raised: 500

# Kinds of _Inbox items.
_ON_OPEN, _ON_MESSAGE, _ON_CLOSE = range(3)

class Callbacks(NamedTuple):
    on_open: Callable
    on_message: Callable
    on_close: Callable


_callbacks: Optional[Callbacks] = None


def init_websockets(on_open: Callable, on_message: Callable, on_close: Callable) -> None:
    """
    Register the application's WebSocket callbacks (``yimmo.init_websockets``).  Until
    this is called, upgrade requests go to the WSGI application like any other request.
    """
    for name, cb in (("on_open", on_open), ("on_message", on_message), ("on_close", on_close)):
        if not callable(cb):
            raise TypeError("%s must be callable, got %r" % (name, cb))
    global _callbacks
    _callbacks = Callbacks(on_open, on_message, on_close)


class WebSocket:
    """
    One WebSocket session as the application sees it: the ``ws`` of the callbacks.

    ``environ``: the handshake request as a WSGI environ (PATH_INFO, QUERY_STRING,
    HTTP_* headers including HTTP_COOKIE, REMOTE_ADDR...), for on_open to authenticate
    and route.  ``protocols``: the subprotocols the client offered; on_open may set
    ``subprotocol`` to one of them (it starts as the first of the ``ws_subprotocols``
    setting that the client offered, or None).
    """

    def __init__(self, environ: dict, protocols: List[str], subprotocol: Optional[str],
                 channel: "_Channel") -> None:
        self.environ = environ
        self.protocols = protocols
        self.subprotocol = subprotocol
        self._channel = channel

    def send(self, msg: Union[bytes, str], flags: Optional[int] = None) -> None:
        """
        Send ``msg`` (bytes; a str is sent as UTF-8) with ``flags`` = FIN | opcode
        (default: a whole text message for a str, a binary one for bytes).  Without FIN,
        the frame starts (or continues, with YMO_WS_OP_CONTINUATION) a fragmented message.
        Safe from any thread.  Waits while the client does not read; raises TimeoutError
        after ``ws_send_timeout`` seconds of that, ClientDisconnected once closed.
        """
        if type(msg) is bytes:
            pass
        elif isinstance(msg, str):
            msg = msg.encode("utf-8")
            if flags is None:
                flags = YMO_WS_FLAG_FIN | YMO_WS_OP_TEXT
        elif not isinstance(msg, bytes):
            msg = bytes(msg)
        if flags is None:
            flags = YMO_WS_FLAG_FIN | YMO_WS_OP_BINARY
        channel = self._channel
        if len(msg) > channel.max_message_size:
            raise ValueError("message of %d bytes exceeds ws_max_message_size (%d)"
                             % (len(msg), channel.max_message_size))
        channel.emit(msg, _FRAME | (flags & 0xFF), wait=True)

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (safe from any thread; a no-op once closed)."""
        try:
            self._channel.emit(struct.pack("!H", code) + reason.encode("utf-8")[:123], _CLOSE)
        except ClientDisconnected:
            pass

    @property
    def closed(self) -> bool:
        return self._channel.gone


class _Channel(Channel):
    """
    Output of one WebSocket on its way to the reactor, through the pool's Handoff,
    which takes it for an HTTP session (``deliver``; ``session`` names itself).
    """

    def __init__(self, protocol: "WebSocketProtocol", bridge: "Bridge") -> None:
        super().__init__()
        self.session = self  # Handoff records name (exchange, ...); exchange.session
        self.protocol = protocol
        self._handoff = bridge.handoff
        self._limit = bridge.output_buffer
        self._timeout = bridge.send_timeout
        self.max_message_size = bridge.max_message_size
        self._lock = threading.Lock()  # emitters: several threads may send at once

    # -- any thread ----------------------------------------------------------------------

    def emit(self, data: Optional[bytes], end: int, wait: bool = False) -> None:
        if self.gone:
            raise ClientDisconnected("the WebSocket is closed")
        with self._lock:
            if wait and (self.paused or self.produced - self.consumed > self._limit) and (
                    not isInIOThread()):
                # Wait under the lock: other senders of this WebSocket queue behind us.
                if not self._handoff.wait_writable(self, self._timeout):
                    raise TimeoutError("the client has not read for %g s" % self._timeout)
                if self.gone:
                    raise ClientDisconnected("the WebSocket is closed")
            self._handoff.emit(self, data, end)

    # -- reactor thread ------------------------------------------------------------------

    def next_for_me(self) -> bool:
        """The handoff delivers a record of this WebSocket next (reactor thread)."""
        return self._handoff.next_session() is self

    def deliver(self, _exchange, data: Optional[bytes], end: int) -> None:
        """A record of ``emit`` (from Handoff.drain)."""
        if data:
            self.consumed += len(data)
        if self.writer_waiting:
            self.writable.set()
        if not self.gone:
            self.protocol.perform(data, end)


class _Inbox:
    """
    The callbacks due for one WebSocket, in order.  The reactor puts; a pool worker runs
    them (``run``, the job the pool takes), one at a time: at most one worker holds a
    WebSocket's inbox, so its callbacks never overlap and keep their order.
    """

    TURN = 32  # callbacks run before the inbox yields its worker to other work

    def __init__(self, protocol: "WebSocketProtocol", ws: WebSocket, callbacks: Callbacks,
                 bridge: "Bridge") -> None:
        self.protocol = protocol
        self.ws = ws
        self.callbacks = callbacks
        self._submit = bridge.pool.submit
        self._limit = bridge.input_buffer
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False  # submitted to the pool, or held by a worker
        self.queued = 0  # payload bytes waiting
        self.reading_paused = False  # reading is (to be) paused for us
        self.failed = False  # a callback raised: later messages are dropped
        self.opened = False  # on_open accepted (worker side): on_close is due at the end

    def put(self, kind: int, payload: Optional[bytes] = None, flags: int = 0) -> None:
        """Queue a callback (reactor thread)."""
        with self._lock:
            self._items.append((kind, payload, flags))
            if payload:
                self.queued += len(payload)
            schedule = not self._scheduled
            self._scheduled = True
            pause = self.queued > self._limit and not self.reading_paused
            if pause:
                self.reading_paused = True
        if schedule:
            self._submit(self)
        if pause:
            self.protocol.transport.pauseProducing()

    def run(self) -> None:
        """Run the callbacks due (worker thread)."""
        turn = 0
        while True:
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    return
                kind, payload, flags = self._items.popleft()
                if payload:
                    self.queued -= len(payload)
                resume = self.reading_paused and self.queued <= self._limit // 2
                if resume:
                    self.reading_paused = False
            if resume:
                self._emit(None, _RESUME)
            self._call(kind, payload, flags)
            turn += 1
            if turn == self.TURN:
                # After a turn, the inbox goes behind the work queued on this pool worker
                # (outside the pool, it runs on).
                queue = getattr(threading.current_thread(), "queue", None)
                if queue is not None:
                    queue.append(self)
                    return
                turn = 0

    def _emit(self, data: Optional[bytes], end: int) -> None:
        try:
            self.ws._channel.emit(data, end)
        except ClientDisconnected:
            pass

    def _call(self, kind: int, payload: Optional[bytes], flags: int) -> None:
        ws = self.ws
        if kind == _ON_MESSAGE:
            if self.failed or ws._channel.gone:
                return
            try:
                self.callbacks.on_message(ws, payload, flags)
            except Exception:
                log.failure("WebSocket on_message raised; closing the session with 1011")
                self.failed = True
                self._emit(struct.pack("!H", INTERNAL_ERROR) + b"internal error", _CLOSE)
        elif kind == _ON_OPEN:
            try:
                result = self.callbacks.on_open(ws)
            except Exception:
                log.failure("WebSocket on_open raised; refusing the handshake")
                self._emit(None, _FAIL)
                return
            if result:
                self._emit(None, _REFUSE)
            elif ws.subprotocol is not None and ws.subprotocol not in ws.protocols:
                log.error("on_open chose subprotocol {chosen!r}, not among those offered "
                          "({offered!r})", chosen=ws.subprotocol, offered=ws.protocols)
                self._emit(None, _FAIL)
            else:
                self.opened = True
                self._emit(None, _ACCEPT)
        elif self.opened:
            try:
                self.callbacks.on_close(ws)
            except Exception:
                log.failure("WebSocket on_close raised")


def origin_patterns(origins: List[str]) -> List[str]:
    """
    autobahn matches patterns against ``scheme://host:port`` with the port always
    written out; a pattern without a port (``https://example.com``) means the scheme's
    default one, as in the Origin header itself.
    """
    default = {"http": "80", "https": "443"}
    patterns = []
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if sep and ":" not in host and not host.endswith("*") and scheme in default:
            origin += ":" + default[scheme]
        patterns.append(origin)
    return patterns


def request_head(environ: dict) -> bytes:
    """The head of the request ``environ`` was parsed from, for autobahn to check."""
    lines = ["%s %s %s" % (environ["REQUEST_METHOD"], environ["RAW_URI"],
                           environ["SERVER_PROTOCOL"])]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            lines.append("%s: %s" % (key[5:].replace("_", "-"), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            lines.append("%s: %s" % (key.replace("_", "-"), value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Bridge:
    """The WebSocket side of one server: the autobahn factory and its settings."""

    def __init__(self, server: "Server") -> None:
        s = server.settings
        self.pool = server.pool
        self.handoff = server.handoff
        self.access = server.access
        self.input_buffer = s.input_buffer
        self.output_buffer = s.output_buffer
        self.send_timeout = s.ws_send_timeout
        self.max_message_size = s.ws_max_message_size
        self.subprotocols = list(s.ws_subprotocols)
        self.protocols: set = set()
        # For the metrics: sessions opened, messages received and sent.
        self.opened = self.messages_in = self.messages_out = 0
        self._settings = s
        self._reactor = server.reactor
        self._factory: Any = None  # autobahn's, made when first needed (ws_protocol.py)

    def factory(self) -> Any:
        """
        autobahn's factory, made once (autobahn imported and checked then): by
        Server.startService when the app has registered its callbacks, rather than in the
        reactor's turn of the first handshake; else at the first handshake.
        """
        if self._factory is None:
            compat.check(compat.WEBSOCKETS)
            from .ws_protocol import make_factory
            self._factory = make_factory(self, self._settings, self._reactor)
        return self._factory

    @property
    def callbacks(self) -> Optional[Callbacks]:
        return _callbacks

    def wants(self, environ: dict) -> bool:
        """True when the request asks for a WebSocket and the app has callbacks for it."""
        return _callbacks is not None and "websocket" in (
            t.strip() for t in environ.get("HTTP_UPGRADE", "").lower().split(","))

    def take_over(self, transport, environ: dict, rest: bytes) -> None:
        """
        Make the connection of ``transport`` a WebSocket: ``environ`` is the upgrade
        request (parsed by the HTTP session, which has let go of the transport), ``rest``
        what the client sent after its head.
        """
        protocol = cast("WebSocketProtocol", self.factory().buildProtocol(transport.getPeer()))
        protocol.environ = environ
        protocol.started = monotonic()
        # The transport delivers to ``protocol`` (TCP), or to ``wrappedProtocol`` when it
        # is itself a protocol wrapper (TLS, HAProxy).
        if hasattr(transport, "wrappedProtocol"):
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(request_head(environ) + rest)

    def stop(self) -> None:
        """Server shutdown: close every WebSocket with 1001, going away."""
        for protocol in list(self.protocols):
            protocol.channel.shut()
            if protocol.state == protocol.STATE_OPEN:
                protocol.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server shutting down")
            protocol.transport.loseConnection()

    def abort(self) -> None:
        """The drain is over: drop the connections still closing (their clients do not
        read)."""
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
