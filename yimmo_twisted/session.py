"""
The session: the HTTP/1.x protocol of one connection, on the reactor thread.

Bytes go to the request reader (http1.py: framing, limits, every refusal's status); its
events become exchanges, dispatched to workers one at a time per connection: pipelined
exchanges wait here, so their responses, which come back through ``deliver``, leave in
request order.

A WebSocket handshake, when the app has registered callbacks, ends HTTP on the
connection: the session stops reading events at the end of its head and hands the
transport, with the bytes after the head, to the autobahn bridge (websockets.py).

A refused request gets its 4xx after the responses to the requests before it; nothing
after it is processed, and the connection closes.  Timeouts run only while the client is
the one expected to act: never while the server itself has paused reading.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Dict, List, Optional, cast
from urllib.parse import unquote_to_bytes

from httptools import parse_url
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import forwarded
from .compat import writer
from .exchange import (
    ABORT, CLOSE, FILE, RESUME, ClientDisconnected, Exchange, RequestBody, error_response,
)
from .http1 import END, NEED_DATA, Head, HTTPError, RequestReader
from .logs import logger
from .worker import Channel

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

log = logger("yimmo.session")

# Why reading from the client is paused (a bit each; reading resumes when none is left).
_PAUSE_BODY = 1  # the app reads the body slower than the client sends it
_PAUSE_PIPELINE = 2  # too many requests of this connection queued

# The request phase, for timeouts.
_IDLE, _HEAD, _BODY, _APP, _LINGER = range(5)

# Header name as sent -> environ key ("" for a name that is dropped).  Bounded, because
# names are chosen by clients.
_KEYS = {b"Content-Type": "CONTENT_TYPE", b"content-type": "CONTENT_TYPE",
         b"Content-Length": "CONTENT_LENGTH", b"content-length": "CONTENT_LENGTH"}
_KEYS_MAX = 1024

_READ_SIZE = 65536  # Twisted's default read size (tcp.Connection.bufferSize)
_LARGE_READ_SIZE = 1 << 18


def _header_key(name: bytes) -> str:
    lower = name.lower()
    if lower == b"content-type":
        key = "CONTENT_TYPE"
    elif lower == b"content-length":
        key = "CONTENT_LENGTH"
    elif b"_" in name:
        # "X_Forwarded_For" would become HTTP_X_FORWARDED_FOR, the key a proxy's
        # "X-Forwarded-For" maps to: drop it rather than let it pose as that (as nginx
        # and gunicorn do).
        key = ""
    else:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[name] = key
    return key


def environ_headers(env: dict, headers: list) -> None:
    """The request's header fields into ``env`` as PEP 3333 (and CGI) name them."""
    for name, value in headers:
        key = _KEYS.get(name)
        if key is None:
            key = _header_key(name)
        if not key:
            continue
        # llhttp strips leading whitespace but keeps trailing (RFC 9110 5.5: not part of it).
        text = value.rstrip(b" \t").decode("latin-1")
        old = env.get(key)
        if old is None:
            env[key] = text
        elif key == "HTTP_COOKIE":
            env[key] = old + "; " + text  # RFC 6265 5.4: cookies are joined with "; "
        else:
            env[key] = old + ", " + text  # RFC 9110 5.3


def environ_target(env: dict, target: bytes) -> None:
    """RAW_URI, PATH_INFO and QUERY_STRING from the request target (RFC 9112 3.2)."""
    env["RAW_URI"] = raw = target.decode("latin-1")
    if target[:1] == b"/":
        if b"?" not in target and b"%" not in target:
            # The common case: nothing to split off or decode.
            env["QUERY_STRING"] = ""
            env["PATH_INFO"] = raw
            return
        path, sep, query = target.partition(b"?")
        env["QUERY_STRING"] = query.decode("latin-1")
    elif target == b"*":
        path = target
        env["QUERY_STRING"] = ""
    else:
        try:
            parts = parse_url(target)  # absolute-form, as sent to proxies
        except Exception:
            raise HTTPError(400, "invalid request target %r" % raw[:100]) from None
        if not parts.schema or not parts.host:
            raise HTTPError(400, "invalid request target %r" % raw[:100])
        path = parts.path or b"/"
        env["QUERY_STRING"] = (parts.query or b"").decode("latin-1")
    # PEP 3333: PATH_INFO is the percent-decoded path as a latin-1 "bytes as str".
    env["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")


@implementer(IHalfCloseableProtocol)
class HTTPSession(Protocol, Channel):
    """One connection; its Channel is where the worker running its exchange writes."""

    # TCP, TLS or the PROXY wrapper: an ITCPTransport that is also a push producer and
    # has a read size (bufferSize).  Set by makeConnection, before any other call.
    transport: Any

    def __init__(self, server: "Server", base_environ: Optional[dict] = None) -> None:
        self.server = server
        # Per listening endpoint (wsgi.url_scheme differs between http and https ports).
        self._base_environ = server.base_environ if base_environ is None else base_environ
        self.settings = server.settings
        self._now = server.now
        self._reader = RequestReader(server.settings)
        # Output, shared with the worker writing this session's response.
        Channel.__init__(self)
        # False once the server drains: responses say "close" (also on a connection that
        # starts during the drain, a PROXY one whose header arrives late).
        self.keep_alive = not server.draining
        # Exchanges.
        self.inflight = 0  # parsed and not yet done
        self._running = False  # one exchange is on a worker
        self._pipeline: deque = deque()  # parsed, waiting for the one running to be done
        self._new: List[Exchange] = []  # parsed in this read, not yet dispatched
        self._current: Optional[Exchange] = None  # the exchange whose body is being read
        self._held: Optional[Exchange] = None  # _current, dispatched once its body is complete
        self._sending: Optional[Exchange] = None  # its file on the way (sendfile.py)
        self._error: Optional[bytes] = None  # a refusal, sent when the exchanges before it are
        self._stopped = False  # refuse all further input
        self._eof = False  # the client sends no more
        self._pauses = 0
        # Timeouts: the deadline of the phase the connection is in (None: no timer runs).
        self.phase = _IDLE
        self.deadline: Optional[float] = None
        # While the client reads nothing of a response (send_timeout): a timer of its own,
        # as reading may go on meanwhile (pipelined requests) under the phase's timer.
        self.send_deadline: Optional[float] = None

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        transport.registerProducer(self, True)
        # TCP_NODELAY: a response's parts go out as the app gives them (a chunked body's
        # last chunk after its data).  With Nagle's algorithm, a small write behind one
        # not yet acknowledged waits for the client's delayed ACK: 40 ms per chunked
        # response on Linux.  (Through TLS and PROXY wrappers too, which pass it on to
        # the TCP transport; Unix sockets have no Nagle.)
        nodelay = getattr(transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)
        # Plain TCP: responses go straight to the socket when nothing is buffered (see
        # compat.write_direct).  TLS and other transports use transport.write.
        self._write = writer(transport)
        self._base: Dict[str, Any] = self._base_environ.copy()
        base = self._base
        peer = transport.getPeer()
        host = transport.getHost()
        # A Unix-socket client has no address: "unix:", as nginx's $remote_addr says.
        base["REMOTE_ADDR"] = getattr(peer, "host", "") or (
            "unix:" if isinstance(peer, UNIXAddress) else "")
        base["REMOTE_PORT"] = str(getattr(peer, "port", "") or "")
        base["SERVER_NAME"] = getattr(host, "host", "") or "localhost"
        base["SERVER_PORT"] = str(getattr(host, "port", "") or "")
        # A proxy's forwarding headers are believed from trusted peers only (forwarded.py).
        address = str(base["REMOTE_ADDR"])
        self._trusted = self.server.trusted if address in self.server.trusted else None
        self.server.sessions.add(self)
        self.deadline = self._now() + self.settings.idle_timeout

    def connectionLost(self, reason=None) -> None:
        self.server.sessions.discard(self)
        self._drop("client disconnected")

    def readConnectionLost(self) -> None:
        """
        The client shut down its sending side: it may still read.  Requests already
        read are answered (HTTP/1.x allows a client to half-close after its request);
        then the connection closes.  A body cut short fails its exchange.
        """
        self._eof = True
        if self.phase == _LINGER:
            # Our FIN was sent after the last response; the client has read to its end and
            # closed too: nothing is left to linger for.
            self.deadline = None
            self.transport.loseConnection()
            return
        current = self._current
        if current is not None and current.body is not None:
            current.body.fail(ClientDisconnected("request body cut short"))
            if current is self._held:
                self._current = self._held = None  # never dispatched: nothing to answer
        self._finish_eof()

    def writeConnectionLost(self) -> None:
        pass  # our half-close (linger): reading goes on until the client closes

    def abort(self) -> None:
        """Server shutdown: drop the connection now, and wake a worker waiting on it."""
        self._drop("server shutting down")
        self.transport.abortConnection()

    def _drop(self, why: str) -> None:
        self.shut()
        if self._sending is not None and self._sending.file is not None:
            self._sending.file.stopProducing()
        current = self._current
        if current is not None and current.body is not None:
            current.body.fail(ClientDisconnected(why))
        self._current = self._held = None
        self._new = []
        self._pipeline.clear()

    def shut(self) -> None:
        """No more output: wake a worker waiting to write, let queued exchanges be skipped."""
        Channel.shut(self)
        self.deadline = None

    # -- the client reads (send_timeout) ------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: the client has not read what was written."""
        Channel.pauseProducing(self)
        if self.send_deadline is None:
            self.send_deadline = self._now() + self.settings.send_timeout

    def resumeProducing(self) -> None:
        self.send_deadline = None
        Channel.resumeProducing(self)

    def _file_progress(self) -> None:
        """The file on its way got further (or starts): the client has until then."""
        self.send_deadline = self._now() + self.settings.send_timeout

    # -- reading -----------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        if not self._pauses:
            self.transport.pauseProducing()
            if self.phase in (_HEAD, _BODY):
                self.deadline = None  # the server's pause is not the client's silence
        self._pauses |= reason

    def _resume_reading(self, reason: int) -> None:
        if self._pauses & reason:
            self._pauses &= ~reason
            if not self._pauses and not self.gone:
                self._set_phase()
                if not self._eof:
                    self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return  # after a refusal: input is drained and dropped
        self.server.received += len(data)
        self._reader.feed(data)
        self._read_events()

    def _read_events(self) -> None:
        """Turn what the reader has into exchanges, as far as the pipeline allows."""
        reader = self._reader
        max_pipeline = self.settings.max_pipeline
        try:
            while not self._stopped:
                if (len(self._pipeline) + len(self._new) >= max_pipeline
                        and not reader.in_body):
                    # Enough requests of this connection wait: the rest stay unparsed in
                    # the reader, and the client is not read, until the queue shortens.
                    if reader.pending:
                        self._pause_reading(_PAUSE_PIPELINE)
                    break
                event = reader.next_event()
                # By how often they come: a request without a body is a Head alone, and
                # every read ends with NEED_DATA.
                if type(event) is Head:
                    if self._on_head(event):
                        return  # the connection is a WebSocket now
                elif event is END:
                    self._on_end()
                elif event is NEED_DATA:
                    break
                elif type(event) is bytes:
                    self._on_body(event)
                else:
                    refusal = cast(HTTPError, event)
                    self._refuse(refusal.status, refusal.reason)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
        except Exception:
            log.failure("error reading a request", Failure())
            self._refuse(500, "")
        if self._new:
            self._dispatch_new()
        if not self._stopped:
            self._set_phase()

    def _set_phase(self) -> None:
        """The phase after reading, and its timer (none while reading is paused)."""
        reader = self._reader
        if reader.in_body:
            phase, timeout = _BODY, self.settings.read_timeout
        elif reader.in_head:
            phase, timeout = _HEAD, self.settings.header_timeout
        elif self.inflight or self._held is not None:
            phase, timeout = _APP, None
        else:
            phase, timeout = _IDLE, self.settings.idle_timeout
        if self._pauses and phase in (_HEAD, _BODY):
            self.phase, self.deadline = phase, None
        elif phase != self.phase or self.deadline is None or phase == _BODY:
            # A head's timer runs from its first byte; a body's from its last read.
            self.phase = phase
            self.deadline = None if timeout is None else self._now() + timeout

    # -- reader events -------------------------------------------------------------

    def _on_head(self, head: Head) -> bool:
        """An exchange for ``head``; True when the connection was handed to WebSockets."""
        env = self._base.copy()
        environ_headers(env, head.headers)
        env["SERVER_PROTOCOL"] = "HTTP/1.1" if head.http11 else "HTTP/1.0"
        env["REQUEST_METHOD"] = head.method
        environ_target(env, head.target)
        if self._trusted is not None:
            forwarded.apply(env, self._trusted)
        if "HTTP_UPGRADE" in env and self.server.websockets.wants(env):
            return self._upgrade(head, env)
        body = None
        s = self.settings
        if head.has_body:
            body = RequestBody(None if head.chunked else head.length, s.input_buffer)
            if head.chunked:
                env.pop("CONTENT_LENGTH", None)
        exchange = Exchange(self, env, body, head.keep_alive, head.http11,
                            head.method == "HEAD", head.expect_continue)
        if body is None:
            self._new.append(exchange)
            return False
        held = body.length is not None and body.length <= s.input_buffer and not (
            head.expect_continue)
        if held:
            data = self._reader.body_here()
            if data is not None:
                # All of it came with its head (a small upload): no body events to wait for.
                body.whole(data)
                self._new.append(exchange)
                return False
        self._current = exchange
        if body.length is None or body.length > _READ_SIZE:
            # Read a large body in large pieces: fewer syscalls and parser calls.  Small
            # reads stay small: recv allocates its whole size before it knows the length.
            self.transport.bufferSize = _LARGE_READ_SIZE
        if held:
            # A body that fits the input buffer is read whole before the app runs: then
            # the app's reads never wait, and no worker is woken once per network read.
            # Larger, chunked and 100-continue bodies stream to the app as they arrive.
            self._held = exchange
        else:
            self._new.append(exchange)
        return False

    def _on_body(self, data: bytes) -> None:
        current = self._current
        assert current is not None and current.body is not None  # its Head came first
        if current.body.feed(data):
            self._pause_reading(_PAUSE_BODY)
        elif not self._pauses:
            self.deadline = self._now() + self.settings.read_timeout

    def _on_end(self) -> None:
        current = self._current
        if current is None:
            return
        self.transport.bufferSize = _READ_SIZE
        assert current.body is not None  # _current has a body
        current.body.finish()
        self._current = None
        if self._held is current:
            self._held = None
            self._new.append(current)

    # -- WebSockets: the connection leaves HTTP (see websockets.py) --------------------

    def _upgrade(self, head: Head, env: dict) -> bool:
        """
        A WebSocket handshake for the app's callbacks: the connection is handed over with
        the bytes after the head (autobahn checks the handshake).
        """
        if not head.upgrade:
            # Upgrade without "Connection: upgrade" (RFC 9110 7.8).
            raise HTTPError(400, "WebSocket handshake without Connection: upgrade")
        if head.has_body:
            raise HTTPError(400, "WebSocket handshake with a body")
        if self.inflight or self._new:
            raise HTTPError(400, "WebSocket handshake behind pipelined requests")
        self._stopped = True
        self.gone = True
        self.deadline = None
        self.server.sessions.discard(self)
        self.transport.unregisterProducer()
        self.server.websockets.take_over(self.transport, env, self._reader.rest())
        return True

    # -- dispatch and delivery --------------------------------------------------------

    def _dispatch_new(self) -> None:
        new = self._new
        self._new = []
        self.inflight += len(new)
        if not self._running and not self._pipeline and len(new) == 1:
            # The common case, one request per read on an idle connection: straight to
            # the pool, not through the pipeline.
            exchange = new[0]
            exchange.dispatched = True
            self._running = True
            self.server.pool.submit(exchange)
            return
        self._pipeline.extend(new)
        if not self._running:
            self._dispatch_next()

    def _dispatch_next(self) -> None:
        """
        Start the oldest parsed exchange.  One at a time per session: pipelined requests
        wait here, not on a worker, so any worker may run them and their responses still
        leave in request order.
        """
        if self._pipeline:
            exchange = self._pipeline.popleft()
            exchange.dispatched = True
            self._running = True
            self.server.pool.submit(exchange)
        else:
            self._running = False

    def deliver(self, exchange: Exchange, data: Optional[bytes], end: int) -> None:
        """Output of a worker (reactor thread, from Handoff.drain)."""
        if self.gone:
            if end == FILE and exchange.file is not None:
                self.server.pool.submit(exchange.file)  # its close(), on a worker
            return
        if data:
            self._write(data)
            self.consumed += len(data)
            if self.writer_waiting:
                self.writable.set()
        if end:
            if end == RESUME:
                self._resume_reading(_PAUSE_BODY)
            elif end == FILE:
                self._send_file(exchange)
            else:
                self._done(exchange, end)

    def _send_file(self, exchange: Exchange) -> None:
        """
        Send the exchange's file after its head: the file's sender is the transport's
        producer meanwhile (no worker writes here until the exchange is done).
        """
        assert exchange.file is not None  # FILE comes with one
        self._sending = exchange
        self.transport.unregisterProducer()
        exchange.file.start(self.transport, lambda end: self._file_sent(exchange, end),
                            self._file_progress)

    def _file_sent(self, exchange: Exchange, end: int) -> None:
        self._sending = None
        self.send_deadline = None
        if exchange.file is not None:
            self.server.pool.submit(exchange.file)  # its close(), on a worker
        exchange.file = None
        if self.gone:
            return
        if end != ABORT:
            # The session is the producer again.  Nothing of it waits on a pause it was
            # given before, and the transport pauses it again as soon as it must.
            self.paused = False
            self.transport.registerProducer(self, True)
        self._done(exchange, end)

    def _done(self, exchange: Exchange, end: int) -> None:
        self.inflight -= 1
        self._running = False
        if end == ABORT:
            self.shut()
            self.transport.abortConnection()
            return
        body = exchange.body
        unread = body is not None and not body.complete
        if unread or end == CLOSE:
            # A body the app left unread is not drained: the connection ends instead, after
            # lingering so that the client reads the response before our close hits it
            # (as when requests it pipelined after a "close" one are left unanswered).
            self._close(linger=unread or self._reader.pending > 0)
            return
        if self.inflight:
            self._dispatch_next()
        elif self._error is not None:
            self.transport.write(self._error)
            self._close(linger=True)
            return
        if self._pauses & _PAUSE_PIPELINE:
            if len(self._pipeline) <= self.settings.max_pipeline // 2:
                self._resume_reading(_PAUSE_PIPELINE)
                self._read_events()  # the requests read but not yet parsed
        elif not self.inflight:
            self._set_phase()
        if self._eof:
            self._finish_eof()

    def _finish_eof(self) -> None:
        """After the client's half-close: close once every request read is answered."""
        if self._stopped or self.inflight or self._new:
            return
        if self._reader.pending and not self._pauses:
            self._read_events()
            if self.inflight or self._new:
                return
        if self._error is None:
            self._close(linger=False)

    # -- refusing and closing ---------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a bad request with ``status`` after the requests before it, then close."""
        if status >= 500 and status not in (501, 505):
            log.error("refusing a request: {status} {reason}", status=status, reason=reason)
        else:
            log.info("refusing a request: {status} {reason}", status=status, reason=reason)
        self._stopped = True
        self.server.refused[status] += 1
        access = self.server.access
        if access is not None:
            access.refused(self._base["REMOTE_ADDR"], status)
        current = self._current
        self._current = None
        self._held = None
        if current is not None:
            if not current.dispatched:
                # Never started: the refusal answers it.
                if current in self._new:
                    self._new.remove(current)
                elif current in self._pipeline:
                    self._pipeline.remove(current)
                    self.inflight -= 1
            else:
                # Its app is running and reading the body: the failure reaches it there,
                # and its response (or our error for it) is the last on this connection.
                assert current.body is not None  # _current has a body
                current.body.fail(HTTPError(status, reason))
                return
        response = error_response(status, reason)
        if self.inflight or self._new:
            self._error = response
        else:
            self.transport.write(response)
            self._close(linger=True)

    def _close(self, linger: bool) -> None:
        self.shut()
        self._stopped = True
        transport = self.transport
        transport.unregisterProducer()
        half_close = getattr(transport, "loseWriteConnection", None)
        if linger and half_close is not None and not self._eof:
            # Closing with unread input makes the kernel reset the connection, which can
            # destroy the response before the client reads it: send FIN, drain, then close.
            self.phase = _LINGER
            self.deadline = self._now() + self.settings.linger
            if self._pauses:
                self._pauses = 0
                transport.resumeProducing()
            half_close()
        else:
            transport.loseConnection()

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep; acts when this session's deadline has passed."""
        send_deadline = self.send_deadline
        if send_deadline is not None and now >= send_deadline:
            log.info("closing a connection: its client has read nothing of its response for "
                     "{timeout:g} s (send_timeout)", timeout=self.settings.send_timeout)
            self._drop("client does not read")
            self.transport.abortConnection()
            return
        deadline = self.deadline
        if deadline is None or now < deadline:
            return
        phase = self.phase
        self.deadline = None
        if phase == _IDLE:
            self._close(linger=False)
        elif phase == _LINGER:
            self.transport.abortConnection()
        elif phase in (_HEAD, _BODY):
            self._refuse(408, "request timed out")
