"""
HTTP/2 (RFC 9113): one connection, many streams, each stream an exchange.

There is no second server here.  Every stream's request becomes an ``Exchange`` that goes
through the same pool, ``Context`` and ``Handoff`` as an HTTP/1.1 request; what differs
is the framing, which the ``h2`` library does (frames, HPACK, flow control, the
protocol's state machines), and where the output goes:

* Each stream is a ``Channel`` of its own (``H2Stream``): ``Handoff`` counts its bytes and
  blocks its worker once ``output_buffer`` of them wait unsent, as it blocks an HTTP/1.1
  worker whose client does not read.  A stream whose client opens no window holds its
  own worker only; the others go on.
* ``H2Context`` builds the response head as an h2 header list instead of HTTP/1.1 bytes:
  it is set on the exchange before the record that carries the first body bytes (or
  the end), and the reactor sends it as a HEADERS frame.  HTTP/1.1's ``Context`` is left
  as it was.
* A request body streams into ``wsgi.input`` (``RequestBody``).  Its DATA is acknowledged
  (WINDOW_UPDATE) as it arrives while less than ``input_buffer`` waits unread, and only
  as the app reads once more does: so flow control is the backpressure, per stream, and
  reading from the connection never pauses for one slow stream.

Negotiation (``Negotiator``): on TLS endpoints by ALPN (``h2``, then ``http/1.1``); on
plain ones, with ``http2_cleartext``, by the connection preface (prior knowledge; no
``Upgrade: h2c``).  The connection starts as an ``HTTPSession`` (its timeouts hold during
the handshake) and becomes an ``H2Session`` once the protocol is known.  WebSockets stay
HTTP/1.1 (no RFC 8441 extended CONNECT).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated, DataReceived, PingReceived, PriorityUpdated, RemoteSettingsChanged,
    RequestReceived, StreamEnded, StreamReset, WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from h2.settings import Settings as H2Settings
from h2.utilities import HeaderValidationFlags, validate_headers
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import compat, forwarded
from .context import HTTP2_PAIR, Context, Emit, FileWrapper, status_of
from .exchange import (
    ABORT, CLOSE, CONTINUE_100, DONE, RESUME, SERVER_SOFTWARE, ClientDisconnected, Exchange,
    RequestBody, date_header, error_response,
)
from .http1 import HTTPError
from .logs import logger
from .session import _APP, HTTPSession, environ_headers, environ_target
from .worker import Channel

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

log = logger("yimmo.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HeaderList = List[Tuple[bytes, bytes]]

_SERVER_VALUE = SERVER_SOFTWARE.encode("ascii")
# The connection's receive window: each stream's is the default 64 KiB, and acknowledged
# only as its app reads, so the connection's must hold that much for every stream, or
# one stream whose app reads slowly would stall the uploads of all.
_STREAM_WINDOW = 65535
# What h2.utilities.validate_headers checks a request's head as (H2Session._on_request).
_REQUEST_HEAD = HeaderValidationFlags(is_client=False, is_trailer=False,
                                      is_response_header=False, is_push_promise=False)
# h2's stream limit until the client acknowledges ours (see H2Session.__init__).
_UNACKNOWLEDGED_STREAMS = 1 << 20
# http2_max_resets and http2_max_control_frames count over this many seconds (as Netty
# counts resets).
_WINDOW = 30.0


class _Budget:
    """At most ``most`` of something per ``_WINDOW`` seconds, counted window by window."""

    __slots__ = ("most", "count", "since")

    def __init__(self, most: int) -> None:
        self.most = most
        self.count = 0
        self.since = 0.0

    def spend(self, now: float) -> bool:
        """One more; False once there have been more than ``most`` in this window."""
        if now - self.since >= _WINDOW:
            self.since = now
            self.count = 0
        self.count += 1
        return self.count <= self.most


def h2_configuration() -> H2Configuration:
    """How the server has h2 work: bytes, not str, and the header checks placed apart."""
    # h2 validates a request's header block itself only to end the whole connection when
    # one is malformed, losing the events of the frames read with it: the session runs
    # h2's same validation per stream instead (_on_request), and resets that stream alone
    # (RFC 9113 8.1.1).  The response heads are valid HTTP/2 by construction (context's
    # fields in lower case, stripped, without hop-by-hop ones; the server's own): h2
    # checking and normalizing each head again was a tenth of the reactor's time.
    return H2Configuration(client_side=False, header_encoding=None,
                           validate_inbound_headers=False, validate_outbound_headers=False,
                           normalize_outbound_headers=False)


# -- the worker side -----------------------------------------------------------------------

class H2Exchange(Exchange):
    """An exchange on an HTTP/2 stream: its ``session`` is the stream (an ``H2Stream``)."""

    __slots__ = ("head", "started")

    def __init__(self, stream: "H2Stream", environ: Dict[str, Any],
                 body: Optional[RequestBody], head_only: bool,
                 expect_continue: bool) -> None:
        Exchange.__init__(self, stream, environ, body, True, True, head_only,  # type: ignore[arg-type]
                          expect_continue)
        # The response head as h2 sends it, set by the worker before the record after it.
        self.head: Optional[HeaderList] = None
        self.started = False  # a worker has begun it (H2Session's per-connection count)

    def context(self, emit: Emit) -> "H2Context":
        self.started = True  # on the worker, as it begins
        return H2Context(self, emit)


def _error(status: int, reason: str, head_only: bool) -> Tuple[HeaderList, bytes]:
    """The head and body of a response the server answers by itself."""
    body = error_response(status, reason).partition(b"\r\n\r\n")[2]
    head = [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)), (b"server", _SERVER_VALUE),
            (b"date", date_header()[6:-2])]
    return head, b"" if head_only else body


class H2Context(Context):
    """
    ``Context`` for a stream: the head is an h2 header list (``H2Exchange.head``), the
    body is never chunked (DATA frames delimit it), and a body cut short resets the stream
    instead of closing the connection.
    """

    __slots__ = ()

    def run(self, app: Any) -> None:
        try:
            Context.run(self, app)
        finally:
            ex = self.exchange
            stream = cast(H2Stream, ex.session)
            if stream.gone and stream.running:
                # Reset meanwhile, the run may have ended without an end record: this one
                # tells the session the worker is free (its per-connection count).
                self.emit(ex, None, ABORT)

    def _head(self, total: Optional[int]) -> bytes:
        if self.status is None:
            raise AssertionError("the application sent a body before calling start_response")
        ex = self.exchange
        assert isinstance(ex, H2Exchange)
        code = status_of(self.status)[1]  # and the status is latin-1, as PEP 3333 has it
        never_length = code < 200 or code == 204  # RFC 9110 8.6
        self.no_body = no_body = ex.head_only or never_length or code == 304
        head = [(b":status", self.status[:3].encode("ascii"))]
        # Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2): not even
        # "Connection: close", which a stream has nothing to do with.
        length, _close, has_server, has_date = self._head_fields(head, HTTP2_PAIR,
                                                                 never_length)
        if length is None and not never_length and total is not None and (
                not no_body or (ex.head_only and total)):
            length = total
            head.append((b"content-length", b"%d" % total))
        self.content_length = None if no_body else length
        if not has_server:
            head.append((b"server", _SERVER_VALUE))
        if not has_date:
            head.append((b"date", date_header()[6:-2]))
        self.chunked = False
        self.keep_alive = True
        self.sent = 0
        self.head_sent = True
        ex.head = head
        return b""

    def _end(self) -> int:
        # keep_alive is always true here, so CLOSE means a body shorter than its length.
        return ABORT if Context._end(self) == CLOSE else DONE

    def _send_file(self, wrapper: FileWrapper, fd: int, position: int, size: int) -> bool:
        # DATA frames are built from bytes: the file is read, not sent by sendfile.
        ex = self.exchange
        for data in wrapper:
            if ex.session.gone:
                return False
            self._send(data, size)
        self._finish(size)
        return False  # run() closes the wrapper

    def _fail(self, status: int, reason: str, exc_info: Any) -> None:
        ex = self.exchange
        assert isinstance(ex, H2Exchange)
        if exc_info is not None:
            log.failure("error in the application for {method} {path}",
                        method=ex.environ.get("REQUEST_METHOD"), path=ex.environ.get("PATH_INFO"))
        if ex.session.gone:
            return
        if self.head_sent:
            self.emit(ex, b"", ABORT)  # too late for a status: reset the stream
            return
        ex.head, body = _error(status, reason, ex.head_only)
        self.emit(ex, body, DONE)


# -- the reactor side ------------------------------------------------------------------

class H2Stream(Channel):
    """One stream's output on its way: what the worker produced, not yet in DATA frames."""

    def __init__(self, connection: "H2Session", stream_id: int) -> None:
        Channel.__init__(self)
        self.connection = connection
        self.stream_id = stream_id
        self.keep_alive = True
        self.exchange: Optional[H2Exchange] = None
        self.out: Deque[bytes] = deque()
        self.end: Optional[int] = None  # the worker is done: end the stream once out is sent
        self.head_sent = False
        self.unacked = 0  # request body bytes received and not yet acknowledged
        self.held = False  # its (small) body is read whole before the app runs
        self.running = False  # counted in its connection's streams given to the workers
        # The client's turn, with a deadline each: its body's next DATA (read_timeout),
        # a window for the output waiting (send_timeout).
        self.read_by: Optional[float] = None
        self.send_by: Optional[float] = None

    def deliver(self, source: Any, data: Optional[bytes], end: int) -> None:
        self.connection.deliver(self, source, data, end)


@implementer(IPushProducer)
class H2Session(Protocol):
    """The HTTP/2 protocol of one connection (reactor thread), after an ``HTTPSession``."""

    transport: Any

    def __init__(self, server: "Server", http1: HTTPSession) -> None:
        self.server = server
        self.settings = s = server.settings
        self._handoff = server.handoff
        self._now = server.now
        # The connection's environ and trusted proxies, as the HTTP/1.1 session found them.
        self._base: Dict[str, Any] = http1._base
        self._trusted = http1._trusted
        conn = H2Connection(config=h2_configuration())
        # The header list's bound is in force from the first frame.  The stream limit is
        # advertised by a second SETTINGS (connectionMade): h2 enforces the limit it has
        # in force by ending the connection, which is only fair once the client has
        # acknowledged it; until then streams past it are refused here (REFUSED_STREAM,
        # RFC 9113 5.1.2), and a client may well open them before it reads our SETTINGS.
        conn.local_settings = H2Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: _UNACKNOWLEDGED_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.http2_max_header_list_size,
        })
        conn.decoder.max_header_list_size = s.http2_max_header_list_size
        compat.h2_open_after_goaway(conn)  # the client's GOAWAY: the streams open finish
        self.conn = conn
        self.streams: Dict[int, H2Stream] = {}
        self.paused = False  # the transport's buffer is full
        self.gone = False
        self._goaway = False  # sent: no new streams
        self._keep_alive = not server.draining
        # For the server's drain and sweep: never idle in its sense (this closes itself).
        self.phase = _APP
        # The earliest of the connection's and its streams' deadlines (check_timeout).
        self.deadline: Optional[float] = None
        self._idle_by: Optional[float] = None  # no stream open: GOAWAY then
        self.send_deadline: Optional[float] = None  # the transport's buffer stays full
        # Streams the client reset (CVE-2023-44487, "rapid reset"), and the frames that
        # cost the server work but carry no request (PING and SETTINGS, which h2 answers
        # at once, PRIORITY, empty DATA: CVE-2019-9512, -9515, -9518).
        self._resets = _Budget(s.http2_max_resets)
        self._control = _Budget(s.http2_max_control_frames)
        # Streams given to the workers and not yet done with them, at most _most_running
        # at once; the others wait here, in order.  So one connection's hundred streams
        # queue no more work ahead of another connection's request than no_threads
        # HTTP/1.1 connections would.
        self._most_running = s.http2_max_running_streams or s.no_threads
        self._running = 0
        self._ready: Deque[H2Stream] = deque()

    # -- what the server sees ------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self.streams)

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        # The server's drain sets it false: GOAWAY, the streams open go on to their end.
        self._keep_alive = value
        if not value and self.connected and not self.gone:
            self._send_goaway()

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self._write = compat.writer(transport)
        transport.registerProducer(self, True)
        self.server.sessions.add(self)
        conn = self.conn
        conn.initiate_connection()
        conn.update_settings({
            SettingCodes.MAX_CONCURRENT_STREAMS: self.settings.http2_max_concurrent_streams})
        conn.increment_flow_control_window(
            _STREAM_WINDOW * self.settings.http2_max_concurrent_streams)
        self._write_out()
        self._idle_by = self.deadline = self._now() + self.settings.idle_timeout

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.server.sessions.discard(self)
        self._drop_all("client disconnected")

    def _drop_all(self, why: str) -> None:
        self.gone = True
        self.deadline = self._idle_by = self.send_deadline = None
        streams = list(self.streams.values())
        self.streams.clear()
        self._ready.clear()
        for stream in streams:
            self._drop_stream(stream, why)

    def _drop_stream(self, stream: H2Stream, why: str) -> None:
        stream.shut()  # wakes its worker if it waits to write; a queued one is skipped
        stream.out.clear()
        ex = stream.exchange
        if ex is not None:
            if ex.body is not None:
                ex.body.fail(ClientDisconnected(why))
            if not ex.started:
                self._worker_done(stream)
        self._unready(stream)

    def abort(self) -> None:
        """Server shutdown: drop the connection now."""
        self._drop_all("server shutting down")
        self.transport.abortConnection()

    # -- the transport's producer ------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The client reads nothing: stop reading it too.  h2 answers PING and SETTINGS by
        itself, so a client sending them and reading nothing would otherwise have the
        answers pile up here without end (RFC 9113 10.5).
        """
        self.paused = True
        self.transport.pauseProducing()
        if self.send_deadline is None:
            self.send_deadline = self._now() + self.settings.send_timeout

    def resumeProducing(self) -> None:
        self.paused = False
        self.send_deadline = None
        self.transport.resumeProducing()
        self._flush_all()
        self._write_out()

    def stopProducing(self) -> None:
        self._drop_all("connection closed")

    # -- reading -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.gone:
            return
        self.server.received += len(data)
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            # h2 has queued its GOAWAY (the error's code): send it and close.
            log.info("closing an HTTP/2 connection: {error}", error=e)
            self._write_out()
            self._drop_all("protocol error")
            self.transport.loseConnection()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, DataReceived):
                if not event.data and event.stream_ended is None and self._too_many():
                    return
                self._on_data(event)
            elif isinstance(event, StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, StreamReset):
                if not self._on_reset(event.stream_id):
                    return
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        self._flush(stream)
                else:
                    self._flush_all()
            elif isinstance(event, RemoteSettingsChanged):
                if self._too_many():
                    return
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._flush_all()
            elif isinstance(event, (PingReceived, PriorityUpdated)):
                if self._too_many():
                    return
            elif isinstance(event, ConnectionTerminated):
                # The client's GOAWAY: it opens no more streams; those open may finish.
                if event.error_code:
                    self._drop_all("client sent GOAWAY")
                    self.transport.loseConnection()
                    return
                self._goaway = True
                self._maybe_close()
            # Trailers (TrailersReceived) are ignored, as are the priorities and unknown
            # frames; h2 answers PING and SETTINGS itself.
        if not self._keep_alive and not self._goaway:
            self._send_goaway()  # the connection began during the drain
        self._write_out()

    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        conn = self.conn
        if self._goaway or len(self.streams) >= self.settings.http2_max_concurrent_streams:
            # Past the limit before the client knew of it, or after GOAWAY: it may retry.
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            headers = list(validate_headers(event.headers, _REQUEST_HEAD))
        except ProtocolError as e:
            log.info("resetting an HTTP/2 stream: malformed request ({error})", error=e)
            conn.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = H2Stream(self, sid)
        env = self._base.copy()
        method = path = authority = b""
        fields = []
        # validate_headers has checked the pseudo-header fields' names, order and presence.
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            else:
                fields.append((name, value))
        head_only = method == b"HEAD"
        if method == b"CONNECT":
            self._respond(stream, 501, "CONNECT is not served", False)
            return
        if path[:1] != b"/" and not (method == b"OPTIONS" and path == b"*"):
            self._respond(stream, 400, "invalid :path", head_only)
            return
        try:
            environ_headers(env, fields)
            environ_target(env, path)
        except HTTPError as e:
            self._respond(stream, e.status, e.reason, head_only)
            return
        env["REQUEST_METHOD"] = method.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/2"
        if authority and "HTTP_HOST" not in env:
            env["HTTP_HOST"] = authority.decode("latin-1")
        if self._trusted is not None:
            forwarded.apply(env, self._trusted)
        s = self.settings
        body = None
        expect_continue = False
        if event.stream_ended is None:
            length: Optional[int] = None
            declared = env.get("CONTENT_LENGTH")
            if declared is not None:
                # Digits only, once (repeated fields were joined by ", "); h2 checks the
                # length against the DATA received.
                if not (declared.isascii() and declared.isdigit()):
                    self._respond(stream, 400, "invalid content-length", head_only)
                    return
                length = int(declared)
                if length > s.max_body_size:
                    self._respond(stream, 413, "request body too large", head_only)
                    return
            body = RequestBody(length, s.input_buffer)
            expect_continue = env.get("HTTP_EXPECT", "").lower() == "100-continue"
            # A body that fits the input buffer is read whole before the app runs, as
            # on HTTP/1.1: the app's reads never wait.
            stream.held = (length is not None and length <= s.input_buffer
                           and not expect_continue)
        ex = H2Exchange(stream, env, body, head_only, expect_continue)
        stream.exchange = ex
        self.streams[sid] = stream
        self._idle_by = None
        if body is not None:
            self._read_by(stream)
        if not stream.held:
            self._dispatch(stream)

    def _dispatch(self, stream: H2Stream) -> None:
        """Give ``stream``'s exchange to the workers, or have it wait its turn."""
        if self._running >= self._most_running:
            self._ready.append(stream)
            return
        self._running += 1
        stream.running = True
        ex = stream.exchange
        assert ex is not None
        ex.dispatched = True
        self.server.pool.submit(ex)

    def _unready(self, stream: H2Stream) -> None:
        """``stream`` ended before its turn: it waits no more."""
        if self._ready and not stream.running:
            try:
                self._ready.remove(stream)
            except ValueError:
                pass

    def _worker_done(self, stream: H2Stream) -> None:
        """A worker is done with ``stream`` (or will never begin it): the next may go."""
        if not stream.running:
            return
        stream.running = False
        self._running -= 1
        ready = self._ready
        while ready and self._running < self._most_running:
            waiting = ready.popleft()
            if not waiting.gone:
                self._dispatch(waiting)

    def _on_data(self, event: DataReceived) -> None:
        sid = event.stream_id
        flow = event.flow_controlled_length
        stream = self.streams.get(sid)
        ex = None if stream is None else stream.exchange
        body = None if ex is None else ex.body
        data = event.data
        if body is None or stream is None or ex is None or body.discard or not data:
            # Nobody reads it (a stream refused, reset, or whose app is done), or it is
            # empty (padding, or the END_STREAM flag alone): an empty chunk would be
            # the body's end to wsgi.input.
            if flow:
                self.conn.acknowledge_received_data(flow, sid)
            return
        if body.fed + len(data) > self.settings.max_body_size:
            self.conn.acknowledge_received_data(flow, sid)
            if ex.dispatched:
                body.fail(HTTPError(413, "request body too large"))
            else:
                self._respond(stream, 413, "request body too large", ex.head_only)
            return
        if body.feed(data) or stream.unacked:
            stream.unacked += flow  # acknowledged as the app reads (RESUME)
            stream.read_by = None  # the server holds the client back, not the reverse
        else:
            self.conn.acknowledge_received_data(flow, sid)
            self._read_by(stream)

    def _on_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.exchange is None:
            return
        ex = stream.exchange
        stream.read_by = None
        if ex.body is not None:
            ex.body.finish()
        if stream.held:
            stream.held = False
            self._dispatch(stream)

    def _on_reset(self, sid: int) -> bool:
        """The client reset a stream; False once it has reset too many (GOAWAY sent)."""
        stream = self.streams.pop(sid, None)
        if stream is None:
            return True
        self._drop_stream(stream, "stream reset by the client")
        self._release_window(stream)
        # Each reset stream may have cost a worker its app's time: a client that opens
        # and resets streams endlessly gets more of it than any limit on streams open.
        if not self._resets.spend(self._now()):
            self._calm("streams reset", "http2_max_resets")
            return False
        self._maybe_close()
        return True

    def _too_many(self) -> bool:
        """One more control frame; True once past the budget (the connection ended)."""
        if self._control.spend(self._now()):
            return False
        self._calm("control frames", "http2_max_control_frames")
        return True

    def _calm(self, what: str, setting: str) -> None:
        log.info("closing an HTTP/2 connection: more {what} by its client in {window:g} s "
                 "than {setting} allows", what=what, window=_WINDOW, setting=setting)
        self._close_now(ErrorCodes.ENHANCE_YOUR_CALM)

    def _close_now(self, error: int) -> None:
        """End the connection and every stream on it with GOAWAY ``error``."""
        self._drop_all("connection closed: error %d" % error)
        self.conn.close_connection(error)
        self._write_out()
        self.transport.loseConnection()

    def _read_by(self, stream: H2Stream) -> None:
        stream.read_by = when = self._now() + self.settings.read_timeout
        if self.deadline is None or when < self.deadline:
            self.deadline = when

    def _release_window(self, stream: H2Stream) -> None:
        """What a closed stream holds of the connection's window: the client may use it."""
        unacked = stream.unacked
        if unacked:
            stream.unacked = 0
            # The stream is closed: h2 acknowledges this on the connection alone.
            self.conn.acknowledge_received_data(unacked, stream.stream_id)

    def _ack(self, stream: H2Stream) -> None:
        """The app read its body: let the client send more (the worker's RESUME)."""
        unacked = stream.unacked
        if unacked:
            stream.unacked = 0
            try:
                self.conn.acknowledge_received_data(unacked, stream.stream_id)
            except StreamClosedError:
                pass

    # -- writing -------------------------------------------------------------------------

    def deliver(self, stream: H2Stream, exchange: Any, data: Optional[bytes], end: int) -> None:
        """A worker's output for ``stream`` (reactor thread, from Handoff.drain)."""
        if end == DONE or end == CLOSE or end == ABORT:
            self._worker_done(stream)
        if not stream.gone:
            self._deliver(stream, exchange, data, end)
        # One write for the records of this connection's streams that come one after
        # another (drain delivers every record before it returns): a syscall each saved.
        following = self._handoff.next_session()
        if type(following) is not H2Stream or following.connection is not self:
            self._write_out()

    def _deliver(self, stream: H2Stream, exchange: Any, data: Optional[bytes], end: int) -> None:
        conn = self.conn
        sid = stream.stream_id
        try:
            if not stream.head_sent:
                if data is CONTINUE_100:
                    # InputStream's "100 Continue" for HTTP/1.1: here an informational head.
                    conn.send_headers(sid, [(b":status", b"100")])
                    stream.consumed += len(data)
                    return
                head = exchange.head
                if head is not None:
                    stream.head_sent = True
                    last = not data and (end == DONE or end == CLOSE)
                    conn.send_headers(sid, head, end_stream=last)
                    if last:
                        self._stream_done(stream)
                        return
            if data:
                stream.out.append(data)
            if end:
                if end == RESUME:
                    self._ack(stream)
                elif end == ABORT:
                    conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                    self._stream_done(stream, reset=False)
                else:
                    stream.end = end
            if stream.out or stream.end is not None:
                self._flush(stream)
        except StreamClosedError:
            # Closed by h2 meanwhile (the client's RST_STREAM in this same read).
            self.streams.pop(sid, None)
            self._drop_stream(stream, "stream closed")
        except ProtocolError:
            # What h2 refuses to send (a head it finds invalid): this stream fails, not
            # the handoff that delivers every other one's output.
            log.failure("HTTP/2 output refused on stream {sid}", sid=sid)
            self.streams.pop(sid, None)
            self._drop_stream(stream, "output refused")
            try:
                conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            except ProtocolError:
                pass
            self._maybe_close()

    def _flush(self, stream: H2Stream) -> None:
        """Send what ``stream`` has, as far as the windows allow; end it when it can."""
        if self.paused or stream.gone:
            return
        conn = self.conn
        sid = stream.stream_id
        out = stream.out
        sent = 0
        try:
            while out:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    # The client's window is shut: it has send_timeout to open it.
                    if stream.send_by is None:
                        stream.send_by = when = self._now() + self.settings.send_timeout
                        if self.deadline is None or when < self.deadline:
                            self.deadline = when
                    break
                data = out[0]
                if len(data) <= window:
                    out.popleft()
                else:
                    out[0] = data[window:]
                    data = data[:window]
                last = not out and stream.end is not None
                conn.send_data(sid, data, end_stream=last)
                sent += len(data)
            else:
                if stream.end is not None:
                    if not sent:
                        conn.end_stream(sid)
                    self._stream_done(stream)
        except StreamClosedError:
            self.streams.pop(sid, None)
            self._drop_stream(stream, "stream closed")
            return
        if sent:
            if out:
                stream.send_by = None  # progress: the deadline starts again when stuck
            stream.consumed += sent
            if stream.writer_waiting:
                stream.writable.set()

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out:
                self._flush(stream)

    def _stream_done(self, stream: H2Stream, reset: bool = True) -> None:
        """The response on ``stream`` is complete."""
        self.streams.pop(stream.stream_id, None)
        stream.gone = True
        ex = stream.exchange
        if reset and ex is not None and ex.body is not None and not ex.body.complete:
            # Answered before the client finished its body: it may stop (RFC 9113 8.1).
            try:
                self.conn.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
            except StreamClosedError:
                pass
        self._release_window(stream)  # closed now: on the connection's window alone
        self._maybe_close()

    def _respond(self, stream: H2Stream, status: int, reason: str, head_only: bool) -> None:
        """The server's own answer on ``stream`` (no exchange runs), which ends it."""
        log.info("refusing an HTTP/2 request: {status} {reason}", status=status, reason=reason)
        self.server.refused_h2[status] += 1
        access = self.server.access
        if access is not None:
            access.refused(self._base["REMOTE_ADDR"], status)
        head, body = _error(status, reason, head_only)
        conn = self.conn
        sid = stream.stream_id
        conn.send_headers(sid, head, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)  # small: within any window
        try:
            conn.reset_stream(sid, ErrorCodes.NO_ERROR)  # if the client still sends
        except StreamClosedError:
            pass
        self.streams.pop(sid, None)
        stream.gone = True
        self._unready(stream)
        self._release_window(stream)

    def _write_out(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._write(data)

    # -- closing -------------------------------------------------------------------------

    def _send_goaway(self) -> None:
        """
        GOAWAY naming the last stream taken; those go on to their end, then the connection
        closes.  Built apart from h2's close_connection, which would end all streams now.
        """
        if self._goaway:
            self._maybe_close()
            return
        self._goaway = True
        self._write_out()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.conn.highest_inbound_stream_id,
                            error_code=0)
        self._write(frame.serialize())
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.streams:
            return
        if self._goaway:
            self.gone = True
            self.deadline = self._idle_by = None
            self._write_out()  # what h2 holds goes first
            self.transport.loseConnection()
        elif not self.gone:
            self._idle_by = self.deadline = self._now() + self.settings.idle_timeout

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep; acts when this connection's deadline has passed."""
        send_deadline = self.send_deadline
        if send_deadline is not None and now >= send_deadline:
            log.info("closing an HTTP/2 connection: its client has read nothing for "
                     "{timeout:g} s (send_timeout)", timeout=self.settings.send_timeout)
            self._drop_all("client does not read")
            self.transport.abortConnection()
            return
        deadline = self.deadline
        if deadline is None or now < deadline:
            return
        if self._idle_by is not None and now >= self._idle_by and not self.streams:
            self._idle_by = self.deadline = None
            self._send_goaway()
            self._write_out()
            return
        for stream in list(self.streams.values()):
            if stream.send_by is not None and now >= stream.send_by:
                log.info("resetting an HTTP/2 stream: its client opened no window for "
                         "{timeout:g} s (send_timeout)", timeout=self.settings.send_timeout)
                self.streams.pop(stream.stream_id, None)
                self._drop_stream(stream, "client does not read")
                self.conn.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
                self._release_window(stream)
            elif stream.read_by is not None and now >= stream.read_by:
                stream.read_by = None
                ex = stream.exchange
                if ex is None or ex.body is None:
                    continue
                if ex.dispatched:
                    ex.body.fail(HTTPError(408, "request body timed out"))  # to the app
                else:
                    self._respond(stream, 408, "request body timed out", ex.head_only)
        # The next deadline: the earliest left.
        times = [t for stream in self.streams.values()
                 for t in (stream.send_by, stream.read_by) if t is not None]
        self.deadline = min(times) if times else None
        self._write_out()
        self._maybe_close()


# -- negotiation ---------------------------------------------------------------------------

@implementer(IHalfCloseableProtocol, IHandshakeListener)
class Negotiator(Protocol):
    """
    A connection whose protocol is not known yet: an ``HTTPSession`` from the start, which
    becomes an ``H2Session`` when TLS's ALPN selects h2 (``tls``) or, on a plain endpoint,
    when the client's first bytes are the HTTP/2 preface.  Once decided, this steps out
    of the transport's way where it can (TLS's and TCP's protocol attribute).
    """

    transport: Any

    def __init__(self, server: "Server", base_environ: Dict[str, Any], tls: bool) -> None:
        self.server = server
        self.session: "HTTPSession | H2Session" = HTTPSession(server, base_environ)
        self._tls = tls
        self._head = b""
        self._decided = False

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self.session.makeConnection(transport)  # type: ignore[no-untyped-call]

    def handshakeCompleted(self) -> None:
        if not self._decided:
            self._decide(getattr(self.transport, "negotiatedProtocol", None) == b"h2")

    def dataReceived(self, data: bytes) -> None:
        if not self._decided:
            if self._tls:
                self.handshakeCompleted()
            else:
                head = self._head + data
                if len(head) < len(PREFACE) and PREFACE.startswith(head):
                    self._head = head
                    return
                self._head = b""
                self._decide(head.startswith(PREFACE))
                data = head
        self.session.dataReceived(data)

    def _decide(self, h2: bool) -> None:
        self._decided = True
        if h2:
            http1 = self.session
            assert isinstance(http1, HTTPSession)
            # Retire the HTTP/1.1 session, which has seen no request.
            self.server.sessions.discard(http1)
            self.transport.unregisterProducer()
            http1.shut()
            session = H2Session(self.server, http1)
            self.session = session
            session.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        transport = self.transport
        for attr in ("wrappedProtocol", "protocol"):
            if getattr(transport, attr, None) is self:
                setattr(transport, attr, self.session)
                break

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.session.connectionLost(reason)

    def readConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.session, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.session, None)
        if half is not None:
            half.writeConnectionLost()
