"""
The autobahn protocol of one WebSocket (websockets.py has the design): autobahn checks
the handshake and does the framing; whole, unfragmented, uncompressed text and binary
frames are read and written here, with autobahn's checks.

Imported when the first WebSocket is made, or at start-up when the application has
registered its callbacks: autobahn with what it imports (its WAMP modules, txaio, its
NVX extension), and h2, were together a third of a server's start-up time and a fifth of
its memory, which apps without them do not pay (benchmarks/startup.py).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, List, Optional, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.defer import Deferred

from .compat import autobahn_frames_ok, websocket_data_received, writer
from .exchange import SERVER_SOFTWARE, error_response
from .logs import logger
from .websockets import (
    _ACCEPT, _CLOSE, _FRAME, _ON_CLOSE, _ON_MESSAGE, _ON_OPEN, _OPCODE, _REFUSE, _RESUME,
    ABNORMAL_CLOSURE, INTERNAL_ERROR, NO_STATUS, YMO_WS_FLAG_FIN, YMO_WS_OP_BINARY,
    YMO_WS_OP_CLOSE, YMO_WS_OP_CONTINUATION, YMO_WS_OP_PING, YMO_WS_OP_PONG, YMO_WS_OP_TEXT,
    WebSocket, _Channel, _Inbox, origin_patterns,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .websockets import Bridge

log = logger("yimmo.websockets")

# Frames up to this size, for one WebSocket, delivered one after the other by the handoff,
# are written together: one send(2) instead of one per frame (a pipelining client's).
_HOLD = 16384
_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack
_receive = websocket_data_received()  # autobahn's reader
# Below this many bytes one XOR of two ints unmasks a payload faster than autobahn's
# masker, which costs a few microseconds to set up per frame.
_INT_UNMASK = 256


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n < _INT_UNMASK:
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little")
                ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return create_xor_masker(mask, n).process(payload)


class WebSocketProtocol(WebSocketServerProtocol):
    """The autobahn protocol of one WebSocket: events in (reactor thread), frames out."""

    bridge: "Bridge"  # set on the class by Bridge (one class per bridge)
    # TCP, TLS or the PROXY wrapper: an ITCPTransport that is also a push producer.
    transport: Any
    # autobahn's options, set by its factory.
    logOctets: bool
    logFrames: bool
    applyMask: bool
    maskServerFrames: bool
    autoFragmentSize: int
    utf8validateIncoming: bool
    maxFramePayloadSize: int
    maxMessagePayloadSize: int

    def __init__(self) -> None:
        super().__init__()
        self.environ: dict = {}
        self.started = 0.0  # monotonic: the handshake's head was parsed (take_over)
        self.status: Optional[int] = None  # of the handshake's answer, once sent
        self.channel = _Channel(self, self.bridge)
        self.ws: Optional[WebSocket] = None
        self.inbox: Optional[_Inbox] = None
        self._opening: Optional[Deferred] = None
        self._early: list = []  # output of on_open, sent once the handshake is complete
        self._fast = False  # whole data frames read and written here (onOpen)
        self._held: List[bytes] = []  # frames for one write with the next record's

    def connectionMade(self) -> None:
        super().connectionMade()
        self._write = writer(self.transport)
        self.transport.registerProducer(self.channel, True)
        self.bridge.protocols.add(self)

    def connectionLost(self, reason=None) -> None:
        self.bridge.protocols.discard(self)
        self.channel.shut()
        super().connectionLost(reason)  # autobahn's onClose, which sets the close codes
        access = self.bridge.access
        if access is not None and self.status is not None:
            stats = self.trafficStats
            access.websocket(self.environ, self.status, stats.outgoingOctetsWireLevel,
                             stats.incomingOctetsWireLevel, self.started,
                             self.close_code() if self.status == 101 else None)

    def close_code(self) -> int:
        """The code the closing handshake began with, the server's or the client's."""
        if self.closedByMe:
            code = self.localCloseCode
        elif self.wasClean:  # the client's close frame, answered
            code = self.remoteCloseCode
        else:
            return ABNORMAL_CLOSURE
        return NO_STATUS if code is None else code

    # autobahn's dataReceived and sendData format the arguments of a debug log line on
    # every call, logged or not: a tenth of the cost of a small message.  These two go
    # straight to the work (and write to plain TCP sockets directly, as HTTP sessions do).

    def dataReceived(self, data: bytes) -> None:
        # Whole, unfragmented, uncompressed data frames are read here, a few integer
        # operations each; autobahn's reader costs some 15 us per frame (a masker, its
        # chain of handlers, a Deferred for its observers).  Everything else, and every
        # frame from the first one that is not such, goes to autobahn, which then holds
        # the connection's state until its buffer is empty and no frame or message is
        # under way.
        if (self._fast and not self.data and self.current_frame is None
                and not self.inside_message and self.state == self.STATE_OPEN
                and self.autoPingTimeoutCall is None):
            done = self._read_frames(data)
            if done == len(data):
                return
            if done:
                data = data[done:]
        _receive(self, data)

    def _read_frames(self, data: bytes) -> int:
        """Hand the whole data frames at the start of ``data`` to the inbox: their
        length.  The checks of autobahn's reader, or the frame is left to it."""
        end = len(data)
        i = 0
        max_frame = self.maxFramePayloadSize
        max_message = self.maxMessagePayloadSize
        validate = self.utf8validateIncoming
        inbox = self.inbox
        assert inbox is not None  # made in onConnect
        messages = 0
        octets = 0
        while end - i >= 6:
            b0 = data[i]
            b1 = data[i + 1]
            # FIN, no RSV bit, text or binary; masked (RFC 6455 5.1: clients mask).
            if (b0 != 0x82 and b0 != 0x81) or b1 < 0x80:
                break
            n = b1 & 0x7F
            if n < 126:
                head = i + 6
            elif n == 126:
                head = i + 8
                if head > end:
                    break
                n = (data[i + 2] << 8) | data[i + 3]
                if n < 126:
                    break  # not the minimal length: autobahn fails the connection
            else:
                head = i + 14
                if head > end:
                    break
                n = int.from_bytes(data[i + 2:i + 10], "big")
                if n < 65536 or n >> 63:
                    break
            stop = head + n
            if stop > end or 0 < max_frame < n or 0 < max_message < n:
                break
            payload = _unmask(data[head:stop], data[head - 4:head]) if n else b""
            if b0 == 0x81 and validate:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # autobahn closes with 1007
            i = stop
            messages += 1
            octets += n
            inbox.put(_ON_MESSAGE, payload, YMO_WS_FLAG_FIN | (b0 & _OPCODE))
        if i:
            stats = self.trafficStats
            stats.incomingOctetsWireLevel += i
            stats.incomingOctetsWebSocketLevel += octets
            stats.incomingOctetsAppLevel += octets
            stats.incomingWebSocketFrames += messages
            stats.incomingWebSocketMessages += messages
            self.bridge.messages_in += messages
        return i

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        if self._held:
            self._flush_held()  # frames held back go first
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
            return
        self._write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        self.sendData(b"".join(held))

    # -- handshake -----------------------------------------------------------------------

    # autobahn's newer hints give onConnect the asyncio flavour's return type (older ones
    # none): the Twisted flavour takes a Deferred.
    def onConnect(self, request) -> Deferred:  # type: ignore[override, unused-ignore]
        """Handshake valid: run on_open on a worker; it decides (403/500 or 101)."""
        offered = list(request.protocols)
        chosen = next((p for p in self.bridge.subprotocols if p in offered), None)
        self.ws = WebSocket(self.environ, offered, chosen, self.channel)
        callbacks = self.bridge.callbacks
        assert callbacks is not None  # wants() let the handshake through
        self.inbox = _Inbox(self, self.ws, callbacks, self.bridge)
        self._opening = Deferred()
        self.inbox.put(_ON_OPEN)
        return self._opening

    def failHandshake(self, reason: str, code: int = 400, responseHeaders=None) -> None:
        # RFC 6455 4.2.2: a version we do not speak is answered 426 with the ones we do.
        if responseHeaders and any(k.lower() == "sec-websocket-version"
                                   for k, _ in responseHeaders):
            code = 426
        elif code in (405, 505):
            code = 400  # a malformed upgrade (not GET, not HTTP/1.1): a bad request
        elif "origin" in reason and "not allowed" in reason:
            # RFC 6455 10.2: a well-formed request from an origin we refuse is forbidden,
            # not bad.  (autobahn says so only in its reason text.)
            code = 403
        super().failHandshake(reason, code, responseHeaders)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders=None) -> None:
        """The server's own error response (Content-Length, Connection: close, Date)."""
        self.status = code
        response = error_response(code, reason)
        if responseHeaders:
            line, _, rest = response.partition(b"\r\n")
            extra = "".join("%s: %s\r\n" % (k, v) for k, v in responseHeaders)
            response = line + b"\r\n" + extra.encode("latin-1") + rest
        self.sendData(response)

    def onOpen(self) -> None:
        self.status = 101  # autobahn has sent it
        self._fast = (autobahn_frames_ok() and self._perMessageCompress is None
                      and not self.logFrames and not self.trackedTimings
                      and self.applyMask and not self.maskServerFrames
                      and not self.autoFragmentSize)
        self.bridge.opened += 1
        early, self._early = self._early, []
        for data, end in early:
            self.perform(data, end)

    # -- input ---------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        assert self.inbox is not None  # made by onConnect, before any message
        self.bridge.messages_in += 1
        self.inbox.put(_ON_MESSAGE, payload,
                       YMO_WS_FLAG_FIN | (YMO_WS_OP_BINARY if isBinary else YMO_WS_OP_TEXT))

    def onClose(self, wasClean: bool, code, reason) -> None:
        self.channel.shut()
        if self.inbox is not None:
            # on_close runs if on_open accepted, even when the client left before the
            # handshake completed: the app sees every session it accepted end.
            self.inbox.put(_ON_CLOSE)


    # -- output (records of the channel, reactor thread) ----------------------------------

    def perform(self, data: Optional[bytes], end: int) -> None:
        if self._held and not end & _FRAME:
            self._flush_held()  # before anything else
        state = self.state
        if end & _FRAME or end == _CLOSE:
            if state == self.STATE_CONNECTING:
                self._early.append((data, end))
                return
            if state != self.STATE_OPEN:
                return  # closing: frames are dropped
            assert data is not None  # frames and closes carry their payload
            try:
                if end == _CLOSE:
                    (code,) = struct.unpack("!H", data[:2])
                    self.sendCloseFrame(code=code, reasonUtf8=data[2:] or None)
                else:
                    self._send_frame(data, end & 0xFF)
            except Exception:
                log.failure("cannot send a WebSocket frame")
                self._fail_connection(INTERNAL_ERROR, "internal error")
        elif end == _RESUME:
            assert self.inbox is not None  # only an inbox asks to resume
            if not self.inbox.reading_paused:
                self.transport.resumeProducing()
        elif self._opening is not None:
            opening, self._opening = self._opening, None
            if end == _ACCEPT:
                assert self.ws is not None  # made with _opening, in onConnect
                opening.callback(self.ws.subprotocol)
            elif end == _REFUSE:
                opening.errback(ConnectionDeny(ConnectionDeny.FORBIDDEN,
                                               "refused by the application"))
            else:
                opening.errback(ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR,
                                               "internal server error"))

    def _send_frame(self, payload: bytes, flags: int) -> None:
        opcode = flags & _OPCODE
        if (self._fast and flags & YMO_WS_FLAG_FIN
                and (opcode == YMO_WS_OP_BINARY or opcode == YMO_WS_OP_TEXT)):
            # A whole message in one frame, written here as autobahn's sendMessage would.
            n = len(payload)
            if 0 < self.maxMessagePayloadSize < n:
                raise ValueError("message of %d bytes exceeds ws_max_message_size" % n)
            b0 = 0x80 | opcode
            if n < 126:
                head = bytes((b0, n))
            elif n < 65536:
                head = _HEAD16(b0, 126, n)
            else:
                head = _HEAD64(b0, 127, n)
            stats = self.trafficStats
            stats.outgoingWebSocketMessages += 1
            stats.outgoingWebSocketFrames += 1
            stats.outgoingOctetsAppLevel += n
            stats.outgoingOctetsWebSocketLevel += n
            self.bridge.messages_out += 1
            if n <= _HOLD:
                held = self._held
                held.append(head)
                held.append(payload)
                if not self.channel.next_for_me():
                    self._flush_held()
                return
            self.sendData(head + payload)
            return
        fin = bool(flags & YMO_WS_FLAG_FIN)
        if fin and opcode in (YMO_WS_OP_TEXT, YMO_WS_OP_BINARY, YMO_WS_OP_CONTINUATION):
            self.bridge.messages_out += 1
        if opcode in (YMO_WS_OP_TEXT, YMO_WS_OP_BINARY):
            if fin:
                self.sendMessage(payload, opcode == YMO_WS_OP_BINARY)
            else:  # the first frame of a fragmented message
                self.beginMessage(opcode == YMO_WS_OP_BINARY)
                self.sendMessageFrame(payload)
        elif opcode == YMO_WS_OP_CONTINUATION:
            if payload or not fin:
                self.sendMessageFrame(payload)
            if fin:
                self.endMessage()
        elif opcode == YMO_WS_OP_PING:
            self.sendPing(payload or None)
        elif opcode == YMO_WS_OP_PONG:
            self.sendPong(payload or None)
        elif opcode == YMO_WS_OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self.sendCloseFrame(code=code, reasonUtf8=payload[2:] or None)
        else:
            raise ValueError("unknown WebSocket opcode 0x%x" % opcode)


def _accept_deflate(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def make_factory(bridge: "Bridge", s: "Settings", reactor: Any) -> WebSocketServerFactory:
    """The autobahn factory of ``bridge``: its protocols, with the server's settings."""
    factory = WebSocketServerFactory(server=SERVER_SOFTWARE, reactor=reactor)
    origins = list(s.ws_origins)
    factory.setProtocolOptions(
        versions=[13],
        maxMessagePayloadSize=s.ws_max_message_size,
        maxFramePayloadSize=s.ws_max_frame_size,
        autoPingInterval=s.ws_ping_interval,
        autoPingTimeout=s.ws_ping_timeout,
        perMessageCompressionAccept=_accept_deflate if s.ws_compression else
        (lambda offers: None),
        allowedOrigins=origin_patterns(origins),
        failByDrop=False,  # a protocol error gets a close frame with its code
        allowNullOrigin="*" in origins,
    )
    # A subclass per bridge: autobahn builds protocols without arguments.
    factory.protocol = cast(Any, type("WebSocketProtocol", (WebSocketProtocol,),
                                      {"bridge": bridge}))
    return factory
