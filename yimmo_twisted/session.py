"""
The session: the HTTP/1.x protocol of one connection, on the reactor thread.

Bytes go to httptools (llhttp, strict mode) and come out as exchanges that are dispatched
to workers.  Responses come back through ``deliver`` and are written in request order:
while a session has an exchange in flight, its later (pipelined) exchanges go to the same
worker's queue, so they run one at a time and their output arrives in order.

A WebSocket handshake, when the app has registered callbacks, ends HTTP on the
connection: the session stops parsing at the end of its head and hands the transport to
the autobahn bridge (``_want_upgrade``, ``_hand_over``; websockets.py).

Everything about refusing input lives here: limits, timeouts, framing errors.  A refused
request gets its 4xx after the responses to the requests before it; nothing after it is
processed, and the connection closes.
"""

from __future__ import annotations

import re
from collections import deque
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Callable, List, Optional
from urllib.parse import unquote_to_bytes

from httptools import (
    HttpParserCallbackError, HttpParserError, HttpParserInvalidMethodError,
    HttpParserUpgrade, HttpRequestParser, parse_url,
)
from twisted.internet import tcp
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .exchange import (
    ABORT, CLOSE, RESUME, ClientDisconnected, Exchange, HTTPError, RequestBody,
    error_response,
)
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

_METHODS = {}  # bytes -> str, for the methods llhttp knows (a closed set)

_READ_SIZE = 65536  # Twisted's default read size (tcp.Connection.bufferSize)
_LARGE_READ_SIZE = 1 << 18

_TOKEN_SP = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")


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


class _Counter:
    """Parser callbacks that only count complete requests."""

    def __init__(self) -> None:
        self.count = 0

    def on_message_complete(self) -> None:
        self.count += 1


def _completed(data: bytes) -> int:
    counter = _Counter()
    try:
        HttpRequestParser(counter).feed_data(data)
    except (HttpParserError, HttpParserUpgrade):
        pass
    return counter.count


def _request_start(data: bytes, n: int) -> int:
    """
    Where the request after the first ``n`` complete ones of ``data`` begins (``data``
    starting at a request).  The parser gives no offsets, so this bisects on prefixes;
    it runs only to tell an unknown method (501) from garbage (400) in a pipelined read.
    """
    if not n:
        return 0
    lo, hi = 0, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        if _completed(data[:mid]) >= n:
            hi = mid
        else:
            lo = mid + 1
    while data[lo:lo + 2] == b"\r\n":
        lo += 2  # llhttp skips empty lines between requests
    return lo


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
    sent = t.writeSomeData(data)
    if type(sent) is not int:
        t.write(data)  # an error: let the transport find and report it
    elif sent < len(data):
        t.write(data[sent:])


def writer(transport) -> Callable[[bytes], None]:
    """How to write to ``transport``: directly for plain TCP (see write_direct)."""
    if isinstance(transport, tcp.Connection):
        return partial(write_direct, transport)
    return transport.write


@implementer(IHalfCloseableProtocol)
class HTTPSession(Protocol, Channel):
    """One connection; its Channel is where the worker running its exchange writes."""

    def __init__(self, server: "Server", base_environ: Optional[dict] = None) -> None:
        self.server = server
        # Per listening endpoint (wsgi.url_scheme differs between http and https ports).
        self._base_environ = server.base_environ if base_environ is None else base_environ
        self.settings = server.settings
        self._parser = HttpRequestParser(self)
        # Output, shared with the worker writing this session's response.
        Channel.__init__(self)
        self.keep_alive = True  # False once the server drains: responses say "close"
        # Exchanges.
        self.inflight = 0  # parsed and not yet done
        self._running = False  # one exchange is on a worker
        self._pipeline: deque = deque()  # parsed, waiting for the one running to be done
        self._new: List[Exchange] = []  # parsed in this dataReceived, not yet dispatched
        self._current: Optional[Exchange] = None  # the exchange whose body is being parsed
        self._held: Optional[Exchange] = None  # _current, dispatched once its body is complete
        self._env: Optional[dict] = None  # environ of the request whose head is parsed
        self._error: Optional[bytes] = None  # a refusal, sent when the exchanges before it are
        self._stopped = False  # refuse all further input
        self._eof = False  # the client sends no more
        self._pauses = 0
        # Limits and timeouts.
        self.phase = _IDLE
        self.deadline: Optional[float] = None
        self._url = b""
        self._nheaders = 0
        self._header_bytes = 0
        self._head_fed = 0  # bytes read while the head is incomplete
        self._head_mid_feed = False  # the head began after another request in the same read
        self._completed_in_feed = 0  # requests completed in the read being parsed
        self._line_done = False  # the request line of the open head has ended
        self._upgrade: Optional[dict] = None  # a WebSocket handshake, to hand over

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        transport.registerProducer(self, True)
        # Plain TCP: responses go straight to the socket when nothing is buffered (see
        # write_direct).  TLS and other transports use transport.write.
        self._write = writer(transport)
        self._base = base = self._base_environ.copy()
        peer = transport.getPeer()
        host = transport.getHost()
        # A Unix-socket client has no address: "unix:", as nginx's $remote_addr says.
        base["REMOTE_ADDR"] = getattr(peer, "host", "") or (
            "unix:" if isinstance(peer, UNIXAddress) else "")
        base["REMOTE_PORT"] = str(getattr(peer, "port", "") or "")
        base["SERVER_NAME"] = getattr(host, "host", "") or "localhost"
        base["SERVER_PORT"] = str(getattr(host, "port", "") or "")
        self.server.sessions.add(self)
        self.deadline = monotonic() + self.settings.idle_timeout

    def connectionLost(self, reason=None) -> None:
        self.server.sessions.discard(self)
        self._drop("client disconnected")

    def readConnectionLost(self) -> None:
        """
        The client shut down its sending side: it may still read.  Requests already
        parsed are answered (HTTP/1.x allows a client to half-close after its request);
        then the connection closes.
        """
        self._eof = True
        self._stopped = True
        current = self._current
        if current is not None and current.body is not None:
            current.body.fail(ClientDisconnected("request body cut short"))
        if not self.inflight and not self._new:
            self._close(linger=False)

    def writeConnectionLost(self) -> None:
        pass  # our half-close (linger): reading goes on until the client closes

    def abort(self) -> None:
        """Server shutdown: drop the connection now, and wake a worker waiting on it."""
        self._drop("server shutting down")
        self.transport.abortConnection()

    def _drop(self, why: str) -> None:
        self.shut()
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

    # -- reading -----------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses |= reason

    def _resume_reading(self, reason: int) -> None:
        if self._pauses & reason:
            self._pauses &= ~reason
            if not self._pauses and not self.gone:
                self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return  # after a refusal: input is drained and dropped
        self._completed_in_feed = 0
        at_boundary = self.phase in (_IDLE, _APP)
        try:
            while True:
                try:
                    self._parser.feed_data(data)
                    break
                except HttpParserUpgrade as e:
                    data = data[e.args[0]:]
                    if self._upgrade is not None:
                        self._hand_over(data)
                        return
                    # No WebSocket handler took it: the request was an ordinary one.  The
                    # parser stops after an upgrade request; go on with a fresh one.
                    self._parser = HttpRequestParser(self)
                    if not data:
                        break
            if self.phase == _HEAD:
                self._check_head(data)
        except HttpParserCallbackError as e:
            error = e.__context__
            if isinstance(error, HTTPError):
                self._refuse(error.status, error.reason)
            else:
                log.failure("error parsing a request", Failure(error))
                self._refuse(500, "")
        except HttpParserInvalidMethodError:
            # A token that llhttp does not know is a method we do not implement; anything
            # else where the method should be is a malformed request.
            start = _request_start(data, self._completed_in_feed) if at_boundary else -1
            known = start >= 0 and _TOKEN_SP.match(data, start)
            self._refuse(501 if known else 400, "unknown method")
        except HttpParserError as e:
            message = str(e)
            self._refuse(505 if "HTTP version" in message else 400, message)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
        if self._new:
            self._dispatch_new()

    def _check_head(self, data: bytes) -> None:
        """
        Bound a head still incomplete after a read.  The parser reports whole fields
        only, so a field that never ends is caught here, by the bytes read while the
        head is open (a head that began after another request in the same read is
        counted from the next read on: at most one read more).
        """
        if not self._head_mid_feed:
            self._head_fed += len(data)
            if b"\n" in data:
                self._line_done = True
        s = self.settings
        if self._head_fed > s.max_request_line + s.max_header_bytes:
            raise HTTPError(431 if self._line_done or self._nheaders else 414)

    # -- parser callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._env = self._base.copy()
        self._url = b""
        self._nheaders = 0
        self._header_bytes = 0
        self._head_fed = 0
        self._head_mid_feed = self._completed_in_feed
        self._line_done = False
        self.phase = _HEAD
        self.deadline = monotonic() + self.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.settings.max_request_line:
            raise HTTPError(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._nheaders += 1
        self._header_bytes += len(name) + len(value) + 4
        s = self.settings
        if self._nheaders > s.max_headers or self._header_bytes > s.max_header_bytes:
            raise HTTPError(431)
        env = self._env
        if env is None:
            return  # a trailer field (after a chunked body): counted, not passed on
        key = _KEYS.get(name)
        if key is None:
            key = _header_key(name)
        if not key:
            return
        # llhttp strips leading whitespace but keeps trailing (RFC 9110 5.5: not part of it).
        text = value.rstrip(b" \t").decode("latin-1")
        old = env.get(key)
        if old is None:
            env[key] = text
        elif key == "HTTP_HOST":
            raise HTTPError(400, "more than one Host header")
        elif key == "HTTP_COOKIE":
            env[key] = old + "; " + text  # RFC 6265 5.4: cookies are joined with "; "
        else:
            env[key] = old + ", " + text  # RFC 9110 5.3

    def on_headers_complete(self) -> None:
        parser = self._parser
        env = self._env
        self._env = None
        s = self.settings
        version = parser.get_http_version()
        if version == "1.1":
            http11 = True
        elif version == "1.0":
            http11 = False
        else:
            raise HTTPError(505)
        env["SERVER_PROTOCOL"] = "HTTP/" + version
        raw = parser.get_method()
        method = _METHODS.get(raw)
        if method is None:
            method = _METHODS[raw] = raw.decode("ascii")
        if method == "CONNECT":
            raise HTTPError(501, "CONNECT is not supported")
        env["REQUEST_METHOD"] = method
        self._target(env)
        if http11 and "HTTP_HOST" not in env:
            raise HTTPError(400, "missing Host header")
        if "HTTP_UPGRADE" in env and self.server.websockets.wants(env):
            self._want_upgrade(env)
            return
        body = None
        if "HTTP_TRANSFER_ENCODING" in env:
            # llhttp has checked that chunked is the final coding and that no
            # Content-Length came with it.
            env.pop("CONTENT_LENGTH", None)
            body = RequestBody(None, s.input_buffer)
        else:
            length = env.get("CONTENT_LENGTH")
            if length is not None:
                size = int(length)  # digits only: llhttp refuses anything else
                if size > s.max_body_size:
                    raise HTTPError(413, "the body exceeds %d bytes" % s.max_body_size)
                if size:
                    body = RequestBody(size, s.input_buffer)
        expect_continue = False
        expect = env.get("HTTP_EXPECT")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HTTPError(417)
            expect_continue = http11 and body is not None
        exchange = Exchange(self, env, body, parser.should_keep_alive(), http11,
                            method == "HEAD", expect_continue)
        if body is None:
            self._new.append(exchange)
            self.phase = _APP
            self.deadline = None
            return
        self._current = exchange
        self.phase = _BODY
        self.deadline = monotonic() + s.read_timeout
        if body.length is None or body.length > _READ_SIZE:
            # Read a large body in large pieces: fewer syscalls and parser calls.  Small
            # reads stay small: recv allocates its whole size before it knows the length.
            self.transport.bufferSize = _LARGE_READ_SIZE
        if body.length is not None and body.length <= s.input_buffer and not expect_continue:
            # A body that fits the input buffer is read whole before the app runs: then
            # the app's reads never wait, and no worker is woken once per network read.
            # Larger, chunked and 100-continue bodies stream to the app as they arrive.
            self._held = exchange
        else:
            self._new.append(exchange)

    # -- WebSockets: the connection leaves HTTP (see websockets.py) --------------------

    def _want_upgrade(self, env: dict) -> None:
        """
        A WebSocket handshake for the app's callbacks.  llhttp stops at the end of its
        head (HttpParserUpgrade in dataReceived), where the connection is handed over;
        autobahn checks the handshake.
        """
        if not self._parser.should_upgrade():
            # Upgrade without "Connection: upgrade" (RFC 9110 7.8): llhttp would read on.
            raise HTTPError(400, "WebSocket handshake without Connection: upgrade")
        if self.inflight or self._new:
            raise HTTPError(400, "WebSocket handshake behind pipelined requests")
        self._upgrade = env
        self.phase = _APP
        self.deadline = None

    def _hand_over(self, rest: bytes) -> None:
        """From here on the connection speaks WebSocket: this session lets go of it."""
        env, self._upgrade = self._upgrade, None
        self._stopped = True
        self.gone = True
        self.server.sessions.discard(self)
        self.transport.unregisterProducer()
        self.server.websockets.take_over(self.transport, env, rest)

    def _target(self, env: dict) -> None:
        """PATH_INFO and QUERY_STRING from the request target (RFC 9112 3.2)."""
        url = self._url
        env["RAW_URI"] = raw = url.decode("latin-1")
        if url[:1] == b"/":
            path, sep, query = url.partition(b"?")
            env["QUERY_STRING"] = query.decode("latin-1")
        elif url == b"*":
            path = url
            env["QUERY_STRING"] = ""
        else:
            try:
                parts = parse_url(url)  # absolute-form, as sent to proxies
            except Exception:
                raise HTTPError(400, "invalid request target %r" % raw[:100])
            if not parts.schema or not parts.host:
                raise HTTPError(400, "invalid request target %r" % raw[:100])
            path = parts.path or b"/"
            env["QUERY_STRING"] = (parts.query or b"").decode("latin-1")
        # PEP 3333: PATH_INFO is the percent-decoded path as a latin-1 "bytes as str".
        env["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")

    def on_body(self, data: bytes) -> None:
        body = self._current.body
        s = self.settings
        if body.length is None and body.fed + len(data) > s.max_body_size:
            raise HTTPError(413, "the body exceeds %d bytes" % s.max_body_size)
        if body.feed(data):
            self._pause_reading(_PAUSE_BODY)
        self.deadline = monotonic() + s.read_timeout

    def on_message_complete(self) -> None:
        self._completed_in_feed += 1
        self.transport.bufferSize = _READ_SIZE
        current = self._current
        if current is not None:
            current.body.finish()
            self._current = None
            if self._held is current:
                self._held = None
                self._new.append(current)
        self.phase = _APP
        self.deadline = None

    # -- dispatch and delivery --------------------------------------------------------

    def _dispatch_new(self) -> None:
        self._pipeline.extend(self._new)
        self.inflight += len(self._new)
        self._new = []
        if not self._running:
            self._dispatch_next()
        if len(self._pipeline) > self.settings.max_pipeline:
            self._pause_reading(_PAUSE_PIPELINE)

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
            return
        if data:
            self._write(data)
            self.consumed += len(data)
            if self.writer_waiting:
                self.writable.set()
        if end:
            if end == RESUME:
                self._resume_reading(_PAUSE_BODY)
            else:
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
            # lingering so that the client reads the response before our close hits it.
            self._close(linger=unread)
            return
        if self._eof and not self.inflight:
            self._close(linger=False)
            return
        if self.inflight:
            self._dispatch_next()
            if self._pauses & _PAUSE_PIPELINE and (
                    len(self._pipeline) <= self.settings.max_pipeline // 2):
                self._resume_reading(_PAUSE_PIPELINE)
            return
        if self._error is not None:
            self.transport.write(self._error)
            self._close(linger=True)
            return
        self._resume_reading(_PAUSE_PIPELINE)
        if self.phase == _APP:
            self.phase = _IDLE
            self.deadline = monotonic() + self.settings.idle_timeout

    # -- refusing and closing ---------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a bad request with ``status`` after the requests before it, then close."""
        if status >= 500 and status not in (501, 505):
            log.error("refusing a request: {status} {reason}", status=status, reason=reason)
        else:
            log.info("refusing a request: {status} {reason}", status=status, reason=reason)
        self._stopped = True
        self._env = None
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
            self.deadline = monotonic() + self.settings.linger
            if self._pauses:
                self._pauses = 0
                transport.resumeProducing()
            half_close()
        else:
            transport.loseConnection()

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep; acts when this session's deadline has passed."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return
        phase = self.phase
        self.deadline = None
        if phase == _IDLE:
            self._close(linger=False)
        elif phase == _LINGER:
            self.transport.abortConnection()
        else:  # _HEAD or _BODY
            self._refuse(408, "request timed out")
