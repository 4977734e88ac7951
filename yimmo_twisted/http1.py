"""
The HTTP/1 request reader: bytes in, events out.  No Twisted, no socket, no threads:
everything about where one request ends and the next begins is decided here, and can be
tested with bytes alone (h11's reader is the model).

    reader = RequestReader(limits)
    reader.feed(data)
    while True:
        event = reader.next_event()
        if event is NEED_DATA: break
        ...  # a Head, body bytes, END, or an HTTPError (the last event: a refusal)

A Head without a body (``has_body`` false: most requests) is a whole request, and the next
event is the next request's; a Head with one is followed by its bytes and then END.

Framing is ours.  The end of a head is found here, within the head's limits counted
from the first byte of *that* head, wherever in the stream it starts (after a body,
after another request in the same read); the complete head is then checked and split
into fields by llhttp (httptools) in one call, so no field is ever built piecewise.
Bodies are cut here: Content-Length by counting, chunked by the RFC 9112 7.1 grammar
(chunk extensions with their optional whitespace accepted, everything else refused).
The caller pulls events at its own pace: a session whose pipeline is full stops pulling,
and the unparsed bytes wait here, compact, instead of as queued exchanges.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Dict, List, Optional, Protocol, Tuple, Union

from httptools import (
    HttpParserError, HttpParserInvalidMethodError,
    HttpParserUpgrade, HttpRequestParser,
)


class HTTPError(Exception):
    """A request the server refuses; ``status`` is the response code sent for it."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason or HTTPStatus(status).phrase


class Bounds(Protocol):
    """What the reader needs to know of its limits (Settings and Limits have it)."""

    max_request_line: int
    max_header_bytes: int
    max_headers: int
    max_body_size: int


class Limits:
    """The reader's bounds, with the server's defaults."""

    def __init__(self, max_request_line: int = 8192, max_header_bytes: int = 65536,
                 max_headers: int = 100, max_body_size: int = 1 << 30) -> None:
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_size = max_body_size


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # nothing more until more bytes are fed
END = _Sentinel("END")  # the body of the current request is complete

Event = Union["Head", bytes, _Sentinel, HTTPError]


class Head:
    """A request head that passed every check: what the session turns into an exchange."""

    __slots__ = ("method", "target", "http11", "headers", "keep_alive", "length",
                 "chunked", "expect_continue", "upgrade", "has_body")

    def __init__(self, method: str, target: bytes, http11: bool,
                 headers: List[Tuple[bytes, bytes]], keep_alive: bool,
                 length: int, chunked: bool, expect_continue: bool, upgrade: bool) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        self.headers = headers  # (name, value) as sent; values without leading whitespace
        self.keep_alive = keep_alive
        self.length = length  # Content-Length; 0 when there is no body or it is chunked
        self.chunked = chunked
        self.expect_continue = expect_continue  # Expect: 100-continue, on a 1.1 request body
        self.upgrade = upgrade  # Upgrade with "Connection: upgrade" (RFC 9110 7.8)
        self.has_body = chunked or length > 0  # an attribute: read once per request

    def __repr__(self) -> str:
        return "<Head %s %r>" % (self.method, self.target[:80])


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 9112 3: method SP request-target SP HTTP-version CRLF, exactly.  Anything else is a
# malformed request (400), where llhttp alone would call a stray token a method (501).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/([0-9]\.[0-9])\r\n")
# RFC 9112 7.1.1: chunk-size [ chunk-ext ] CRLF, with BWS around ";" and "=" (RFC 9110
# 5.6.3 says recipients must accept it).  CR, LF, NUL and other controls have no place.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|"
    + _QUOTED + rb"))?)*)\r\n")
# A trailer field line (RFC 9112 7.1.2): parsed to be skipped, checked as strictly as a header.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*[\t\x20-\x7e\x80-\xff]*\r\n")
# max_request_line bounds the target; the method and version around it get this much.
_LINE_SLACK = 64

_METHODS: Dict[bytes, str] = {}  # bytes -> str, for the methods llhttp knows (a closed set)

# Reader states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE, _CLOSED = range(8)


# The fields that decide framing and connection handling.
_FRAMING = frozenset((b"host", b"content-length", b"transfer-encoding", b"expect",
                      b"connection", b"upgrade"))
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING)
# Name as sent -> its lower-case form when it is one of _FRAMING, else b"": one dict
# look-up per field instead of len(), lower() and a set test.  Bounded, because names
# are chosen by clients.
_FRAMING_NAMES: Dict[bytes, bytes] = {}
_FRAMING_NAMES_MAX = 1024


def _framing_name(name: bytes) -> bytes:
    lower = name.lower() if len(name) in _FRAMING_LENGTHS else b""
    if lower not in _FRAMING:
        lower = b""
    if len(_FRAMING_NAMES) < _FRAMING_NAMES_MAX:
        _FRAMING_NAMES[name] = lower
    return lower


class _Fields:
    """
    httptools callbacks for one complete head.  No on_url: the target is the request
    line's, taken by _REQUEST_LINE (a callback less per request).
    """

    __slots__ = ("headers", "hosts", "framing", "complete", "clean")

    def __init__(self) -> None:
        self.headers: List[Tuple[bytes, bytes]] = []
        self.hosts = 0  # Host fields
        # (lower-case name, value) of the other fields that decide framing and connection
        # handling: most requests have none, and then _check skips their analysis.
        self.framing: List[Tuple[bytes, bytes]] = []
        self.complete = False  # headers complete
        self.clean = False  # the parser ended the message: it can read the next head

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted once the head is parsed: its bytes bound how many fields it can hold.
        self.headers.append((name, value))
        lower = _FRAMING_NAMES.get(name)
        if lower is None:
            lower = _framing_name(name)
        if lower:
            if lower == b"host":
                self.hosts += 1
            else:
                self.framing.append((lower, value))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_message_complete(self) -> None:
        self.clean = True


class RequestReader:
    """The request side of one HTTP/1.x connection, as a state machine over its bytes."""

    def __init__(self, limits: Bounds) -> None:
        self.limits = limits
        self._buf: Union[bytes, bytearray] = b""
        self._pos = 0  # bytes of _buf already consumed
        self._scanned = 0  # the head's end was looked for up to here
        self._state = _HEAD
        self._remaining = 0  # of the Content-Length, or of the current chunk
        self._body_size = 0  # of a chunked body so far
        self._trailer_bytes = 0
        self._trailers = 0
        self._error: Optional[HTTPError] = None
        self._keep_alive = True  # of the request being read
        self._fields = _Fields()  # not clean: a parser is made for it
        self._parser: Optional[HttpRequestParser] = None

    # -- input ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """More bytes from the client."""
        if not data or self._error is not None or self._state == _CLOSED:
            return
        buf = self._buf
        if self._pos >= len(buf):
            self._buf = data
            self._scanned = 0
        else:
            # Unconsumed bytes remain (a head in pieces, a pipelined request not yet
            # pulled): a bytearray grows in amortized constant time, so a head sent a
            # byte at a time costs linear, not quadratic, copying.
            if type(buf) is not bytearray:
                buf = bytearray(memoryview(buf)[self._pos:])
            elif self._pos:
                del buf[:self._pos]
            self._scanned -= self._pos
            buf += data
            self._buf = buf
        self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes read and not yet turned into events."""
        return len(self._buf) - self._pos

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived (the head timeout runs)."""
        return self._state == _HEAD and self._pos < len(self._buf)

    @property
    def in_body(self) -> bool:
        return _LENGTH <= self._state <= _TRAILERS

    def rest(self) -> bytes:
        """The bytes after the last event (for a protocol that takes the connection over)."""
        data = bytes(memoryview(self._buf)[self._pos:])
        self._buf = b""
        self._pos = 0
        return data

    # -- events --------------------------------------------------------------------

    def next_event(self) -> Event:
        if self._error is not None:
            return self._error
        try:
            state = self._state
            if state == _HEAD:
                if self._pos >= len(self._buf):
                    return NEED_DATA  # where every read ends: without a call
                return self._head()
            if state == _LENGTH:
                return self._data(_DONE)
            if state == _CHUNK_DATA:
                return self._data(_CHUNK_END)
            if state == _DONE:
                return self._end()
            if state == _CLOSED:
                return NEED_DATA
            return self._chunk_framing()
        except HTTPError as e:
            self._error = e
            return e

    def _head(self) -> Event:
        buf = self._buf
        pos = self._pos
        # RFC 9112 2.2: empty lines before a request are ignored (the head timeout still
        # runs for them: in_head).
        while buf.startswith(b"\r\n", pos):
            pos += 2
        size = len(buf)
        if pos >= size:
            self._pos = pos
            return NEED_DATA
        # A bare LF anywhere in the head is refused as soon as it arrives, wherever the
        # reads cut it: each byte is looked at once (a head sent a byte at a time costs
        # linear time), and a CRLF (or the CRLF CRLF) across the cut is still one.
        scanned = self._scanned  # bytes before this were looked at already
        if scanned > pos:
            end = buf.find(b"\r\n\r\n", max(pos, scanned - 3))
            crlf_from = scanned - 1
        else:
            end = buf.find(b"\r\n\r\n", pos)  # the common case: all of it is new
            scanned = crlf_from = pos
        stop = size if end < 0 else end + 4
        if buf.count(b"\n", scanned, stop) != buf.count(b"\r\n", crlf_from, stop):
            raise HTTPError(400, "a bare LF in the request head")
        if end < 0:
            self._pos = pos
            self._scanned = size
            limits = self.limits
            line_max = limits.max_request_line + _LINE_SLACK
            line_end = buf.find(b"\n", pos, pos + line_max + 2)
            if line_end < 0:
                if size - pos > line_max + 1:
                    raise HTTPError(414, "request target over %d bytes" % limits.max_request_line)
            elif size - line_end > limits.max_header_bytes + 2:
                raise HTTPError(431, "header fields over %d bytes" % limits.max_header_bytes)
            return NEED_DATA
        self._pos = stop
        self._scanned = 0
        if type(buf) is bytes:
            # The read is often this head alone (then no copy), or the head and its body.
            return self._check(buf if stop == size and not pos else buf[pos:stop])
        return self._check(bytes(memoryview(buf)[pos:stop]))

    def _check(self, head: bytes) -> Head:
        """Every rule a complete head must pass; its Head."""
        limits = self.limits
        line = _REQUEST_LINE.match(head)
        if line is None:
            if head.find(b"\r\n") > limits.max_request_line + _LINE_SLACK:
                raise HTTPError(414, "request target over %d bytes" % limits.max_request_line)
            raise HTTPError(400, "malformed request line")
        raw_method, target, version = line.groups()
        if len(target) > limits.max_request_line:
            raise HTTPError(414, "request target over %d bytes" % limits.max_request_line)
        if len(head) - line.end() - 2 > limits.max_header_bytes:
            raise HTTPError(431, "header fields over %d bytes" % limits.max_header_bytes)
        http11 = version == b"1.1"
        if not http11 and version != b"1.0":
            raise HTTPError(505)
        fields = self._fields
        if fields.clean:
            # The parser ended its last message: it reads the next one.
            fields.headers = []
            fields.hosts = 0
            fields.framing = []
            fields.complete = fields.clean = False
        else:
            fields = self._fields = _Fields()
            self._parser = HttpRequestParser(fields)
        parser = self._parser
        assert parser is not None  # made with the first _Fields
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            fields.clean = False  # llhttp stops for good after an upgrade
        except HttpParserInvalidMethodError:
            # A well-formed token that llhttp does not know: a method we do not implement.
            raise HTTPError(501, "unknown method %r"
                            % raw_method[:32].decode("latin-1")) from None
        except HttpParserError as e:
            raise HTTPError(400, str(e) or "malformed request head") from None
        if not fields.complete:
            raise HTTPError(400, "malformed request head")
        if len(fields.headers) > limits.max_headers:
            raise HTTPError(431, "more than %d header fields" % limits.max_headers)
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS[raw_method] = raw_method.decode("ascii")  # llhttp knows it
        if method == "CONNECT":
            raise HTTPError(501, "CONNECT is not supported")
        if target == b"*":
            if method != "OPTIONS":
                raise HTTPError(400, "the asterisk form is for OPTIONS only")  # RFC 9112 3.2.4
        elif b"#" in target:
            raise HTTPError(400, "a fragment in the request target")  # RFC 9112 3.2
        hosts = fields.hosts
        if hosts != 1 and (hosts or http11):
            raise HTTPError(400, "more than one Host header" if hosts else "missing Host header")
        if fields.framing:
            return self._framed(method, target, http11, fields)
        # The common case: no field but Host bears on the framing or the connection, so
        # no body, and the connection persists for 1.1 only (RFC 9112 9.3).  The Head is
        # the whole request: the next head is read after it (on 1.0, nothing: 9.6).
        self._state = _HEAD if http11 else _CLOSED
        return Head(method, target, http11, fields.headers, http11, 0, False, False, False)

    def _framed(self, method: str, target: bytes, http11: bool, fields: _Fields) -> Head:
        """The Head of a request with framing fields other than Host (_check's end)."""
        length = 0
        te: List[bytes] = []
        connection: List[bytes] = []
        expect = None
        upgrade = False
        for name, value in fields.framing:
            if name == b"content-length":
                length = int(value)  # digits only, and one of them: llhttp checked
            elif name == b"transfer-encoding":
                te.append(value)
            elif name == b"connection":
                connection += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                expect = value
            else:
                upgrade = True
        chunked = False
        if te:
            if not http11:
                raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 6.1
            codings = [c.strip(b" \t").lower() for c in b",".join(te).split(b",")]
            if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
                raise HTTPError(400, "chunked is not the final transfer coding")
            if len(codings) > 1:
                raise HTTPError(501, "transfer coding %r is not supported"
                                % codings[0][:32].decode("latin-1"))
            chunked = True
            self._state = _CHUNK_SIZE
            self._body_size = 0
        elif length:
            max_body_size = self.limits.max_body_size
            if length > max_body_size:
                raise HTTPError(413, "the body exceeds %d bytes" % max_body_size)
            self._state = _LENGTH
            self._remaining = length
        expect_continue = False
        if expect is not None:
            if expect.rstrip(b" \t").lower() != b"100-continue":
                raise HTTPError(417)
            expect_continue = http11 and (chunked or length > 0)
        # RFC 9112 9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
        keep_alive = b"close" not in connection and (http11 or b"keep-alive" in connection)
        self._keep_alive = keep_alive
        if not (chunked or length):
            self._state = _HEAD if keep_alive else _CLOSED  # no body: no END (see _check)
        return Head(method, target, http11, fields.headers, keep_alive, length, chunked,
                    expect_continue, upgrade and b"upgrade" in connection)

    def _end(self) -> _Sentinel:
        # The end of a body.  After a request that ends its connection (Connection: close,
        # HTTP/1.0 without keep-alive) nothing more is read: RFC 9112 9.6.
        self._state = _HEAD if self._keep_alive else _CLOSED
        return END

    def body_here(self) -> Optional[bytes]:
        """
        The whole body of the request whose Head came last, when it has a Content-Length
        and all of it is buffered: the body and its END in one call, for the caller that
        takes it whole.  None otherwise (then events bring it as usual).
        """
        if self._state != _LENGTH or self._remaining > len(self._buf) - self._pos:
            return None
        data = self._take(self._remaining)
        self._remaining = 0
        self._end()
        return data

    def _take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, as bytes (the whole read itself when it fits)."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if type(buf) is bytes:
            if pos == 0 and end <= n:
                self._pos = end
                return buf
            end = min(end, pos + n)
            self._pos = end
            return buf[pos:end]
        end = min(end, pos + n)
        self._pos = end
        return bytes(memoryview(buf)[pos:end])

    def _data(self, then: int) -> Event:
        """Bytes of the body (Content-Length) or of a chunk; ``then``: the state after it."""
        if self._pos >= len(self._buf):
            return NEED_DATA
        data = self._take(self._remaining)
        self._remaining -= len(data)
        if not self._remaining:
            self._state = then
        return data

    def _chunk_framing(self) -> Event:
        """Chunk-size lines, the CRLF after each chunk's data, and the trailer section."""
        buf = self._buf
        while True:
            pos = self._pos
            state = self._state
            if state == _CHUNK_END:
                if len(buf) - pos < 2:
                    if buf[pos:pos + 1] not in (b"", b"\r"):
                        raise HTTPError(400, "chunk data not followed by CRLF")
                    return NEED_DATA
                if buf[pos:pos + 2] != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                self._pos = pos + 2
                self._state = _CHUNK_SIZE
                continue
            # A chunk-size line is bounded as a request line is, trailers as header fields.
            limit = self.limits.max_request_line if state == _CHUNK_SIZE else (
                self.limits.max_header_bytes - self._trailer_bytes + 2)
            nl = buf.find(b"\n", pos, pos + limit)
            if nl < 0:
                if len(buf) - pos >= limit:
                    if state == _CHUNK_SIZE:
                        raise HTTPError(400, "chunk-size line over %d bytes" % limit)
                    raise HTTPError(431, "trailer fields over %d bytes"
                                    % self.limits.max_header_bytes)
                return NEED_DATA
            self._pos = nl + 1
            if state == _CHUNK_SIZE:
                m = _CHUNK_LINE.fullmatch(buf, pos, nl + 1)
                if m is None:
                    raise HTTPError(400, "malformed chunk-size line")
                size = int(m.group(1), 16)
                if size:
                    self._body_size += size
                    if self._body_size > self.limits.max_body_size:
                        raise HTTPError(413, "the body exceeds %d bytes"
                                        % self.limits.max_body_size)
                    self._remaining = size
                    self._state = _CHUNK_DATA
                    return self._data(_CHUNK_END)
                self._state = _TRAILERS
                self._trailer_bytes = self._trailers = 0
                continue
            # The trailer section: field lines until an empty line, bounded as a head is.
            if nl == pos + 1 and buf[pos] == 13:
                return self._end()
            if _FIELD_LINE.fullmatch(buf, pos, nl + 1) is None:
                raise HTTPError(400, "malformed trailer field")
            self._trailer_bytes += nl + 1 - pos
            self._trailers += 1
            if self._trailers > self.limits.max_headers:
                raise HTTPError(431, "more than %d trailer fields" % self.limits.max_headers)
