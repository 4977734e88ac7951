"""
PEP 3333 for one exchange, on a worker thread: ``environ``, ``start_response``,
``wsgi.input``, ``wsgi.file_wrapper``, and the loop that runs the application and frames
its response.

Nothing here touches the transport.  Output leaves through ``emit(exchange, data, end)``,
which queues bytes for the reactor thread (see worker.Handoff); backpressure from a slow
client reaches the application by ``emit`` blocking.
"""

from __future__ import annotations

import io
import os
import re
import sys
from stat import S_ISREG
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

from twisted.logger import LogLevel

from .exchange import (
    ABORT, CLOSE, CONTINUE_100, DONE, FILE, LAST_CHUNK, MORE, RESUME, SERVER_SOFTWARE,
    ClientDisconnected, Exchange, chunk, date_header, error_response,
)
from .http1 import HTTPError
from .logs import logger
from .sendfile import FileSender

log = logger("yimmo.context")

# worker.Handoff.emit: (exchange, bytes or None, end code), may block for a slow client.
Emit = Callable[[Exchange, Optional[bytes], int], None]
WSGIApp = Callable[..., Iterable[bytes]]
Headers = List[Tuple[str, str]]

# RFC 9110 5.1 token, and the characters that must never reach the wire in a field value
# (CTLs but HTAB; CR and LF would let an app split the response).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"[1-9][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*\Z")

# Hop-by-hop headers belong to the server (PEP 3333 "Other HTTP Features"); an app that
# sends them anyway is ignored rather than failed, as gunicorn does, except that
# "Connection: close" is honoured.
_HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
))

_SERVER_LINE = b"Server: " + SERVER_SOFTWARE.encode("ascii") + b"\r\n"

# What a response head does with a header field (_field's first item).
_PLAIN, _DROP, _CLOSE_FIELD, _LENGTH, _SERVER, _DATE = range(6)
# (kind, its HTTP/1.1 line, its Content-Length or raw value, its HTTP/2 (name, value))
Field = Tuple[int, bytes, Any, Tuple[bytes, bytes]]
HTTP1_LINE, HTTP2_PAIR = 1, 3  # a Field's items that go into a head (Context._head_fields)

# Header field (name, value) as the app gives it -> its Field, checked once.  Apps send the
# same fields with each response (Content-Type: text/html, their Content-Length too, for
# pages of a size), so a response's fields cost a look-up each, not two regular
# expressions, an encoding and a lower(), most of start_response's and _head's time.
# Bounded, because the values may be anything (a cookie, a length); once full, fields not
# in it are checked each time.
_FIELDS: Dict[Tuple[str, str], Field] = {}
_FIELDS_MAX = 4096
# Status -> (its status line, its code), for the same reason; as bounded.
_STATUSES: Dict[str, Tuple[bytes, int]] = {}


def _field(name: str, value: str) -> Field:
    """The checks of PEP 3333 and RFC 9110 5.5 on one field, and its Field."""
    if type(name) is not str or not _TOKEN.match(name):
        _reject("invalid header name %r" % (name,))
    if type(value) is not str or _BAD_VALUE.search(value):
        _reject("invalid value for header %r: %r" % (name, value))
    try:
        bname, bvalue = name.encode("latin-1"), value.encode("latin-1")
    except UnicodeEncodeError:
        _reject("header %r is not latin-1: %r" % (name, value))
    line = b"%s: %s\r\n" % (bname, bvalue)
    lname = name.lower()
    extra: Any = None
    if lname in _HOP_BY_HOP:
        kind = _CLOSE_FIELD if lname == "connection" and "close" in value.lower() else _DROP
    elif lname == "content-length":
        kind = _LENGTH
        extra = value  # an invalid one fails the response in _head, not start_response
        if value.strip().isdigit():
            try:
                extra = int(value)
            except ValueError:  # digits int() does not read ("\u00b2")
                pass
    elif lname == "server":
        kind = _SERVER
    elif lname == "date":
        kind = _DATE
    else:
        kind = _PLAIN
    # HTTP/2: the name in lower case, the value without the whitespace around it (RFC
    # 9113 8.2.1); so h2 need not check and normalize each field of each response again.
    return kind, line, extra, (bname.lower(), bvalue.strip(b" \t"))


def status_of(status: str) -> Tuple[bytes, int]:
    """The HTTP/1.1 status line of ``status`` and its code; a status not latin-1 raises."""
    known = _STATUSES.get(status)
    if known is None:
        known = (b"HTTP/1.1 %s\r\n" % status.encode("latin-1"), int(status[:3]))
        if len(_STATUSES) < _FIELDS_MAX:
            _STATUSES[status] = known
    return known


class InputStream:
    """``wsgi.input``: reads the request body, never past its end, streaming as it arrives."""

    __slots__ = ("_exchange", "_body", "_buf", "_pos", "_emit")

    def __init__(self, exchange: Exchange, emit: Emit) -> None:
        self._exchange = exchange
        self._body = exchange.body
        # Unread data is _buf[_pos:]: small reads move the offset instead of copying the
        # rest of a 64 KiB chunk each time.
        self._buf = b""
        self._pos = 0
        self._emit = emit

    def detach(self) -> None:
        """
        The exchange is over: reads find the end, and the stream lets go of the exchange.
        (The environ holds the stream, the stream the exchange, the exchange the environ: a
        cycle per request that only the garbage collector would free.)
        """
        self._body = None
        self._exchange = None  # type: ignore[assignment]

    def _resume(self) -> None:
        """The app took buffered body bytes: the reactor may read the client again."""
        self._emit(self._exchange, None, RESUME)

    def _pull(self) -> bytes:
        """The next chunk from the client (b"" at the end of the body)."""
        body = self._body
        if body is None:
            return b""
        ex = self._exchange
        if ex.expect_continue and not ex.continue_sent:
            # The app wants the body: now is the time to tell the client to send it.
            ex.continue_sent = True
            self._emit(ex, CONTINUE_100, MORE)
        return body.take(self._resume)

    def _fill(self, size: int, stop: bytes = b"") -> None:
        """Buffer at least ``size`` unread bytes (or up to ``stop``), or all that is left."""
        pos = self._pos
        buf = self._buf
        have = len(buf) - pos
        if stop and buf.find(stop, pos) >= 0:
            return
        if not have:
            # All read: the next chunk often does alone (an upload read whole, or in
            # pieces smaller than the reactor's reads), and is then used as it is, not
            # copied by a join.
            data = self._pull()
            if not data or len(data) >= size or (stop and stop in data):
                self._buf = data
                self._pos = 0
                return
            parts = [data]
            have = len(data)
        else:
            parts = [buf[pos:]]
        while have < size:
            data = self._pull()
            if not data:
                break
            parts.append(data)
            have += len(data)
            if stop and stop in data:
                break
        self._buf = b"".join(parts)
        self._pos = 0

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            size = sys.maxsize
        buf = self._buf
        pos = self._pos
        have = len(buf) - pos
        if have >= size:
            self._pos = pos + size
            return buf[pos:pos + size]
        # Not enough buffered: the rest of the buffer and what the next chunks give, up to
        # ``size``, copied once.  A chunk's bytes past ``size`` stay where they are, the
        # buffer: the reactor's large reads and the app's smaller ones rarely line up, and
        # joining a whole chunk to a remainder would copy it all once more.
        parts: List[Any] = [memoryview(buf)[pos:]] if have else []
        while True:
            data = self._pull()  # when it raises, the buffer is left as it was
            if not data:
                break
            need = size - have
            if len(data) > need:
                self._buf = data
                self._pos = need
                if not parts:
                    return data[:need]
                parts.append(memoryview(data)[:need])
                return b"".join(parts)
            parts.append(data)
            have += len(data)
            if have == size:
                break
        self._buf = b""
        self._pos = 0
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]  # one whole chunk: as it is
        return b"".join(parts)

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = size if size is not None and size >= 0 else sys.maxsize
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos, pos + limit)
        if nl < 0 and len(buf) - pos < limit:
            self._fill(limit, b"\n")
            buf, pos = self._buf, 0
            nl = buf.find(b"\n", 0, limit)
        end = nl + 1 if nl >= 0 else min(pos + limit, len(buf))
        self._pos = end
        return buf[pos:end]

    def readlines(self, hint: Optional[int] = -1) -> List[bytes]:
        lines: List[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> "InputStream":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class ErrorStream:
    """``wsgi.errors``: text written here goes to the log, a line at a time."""

    _log = logger("yimmo.app")

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            self._log.error("{text}", text=text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


class FileWrapper:
    """
    ``wsgi.file_wrapper``: iterates a file in blocks, never reading it whole.  Over a
    regular file the reactor sends it instead, zero-copy where it can (sendfile.py).
    """

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def regular_file(wrapper: FileWrapper) -> Optional[Tuple[int, int, int]]:
    """
    (file descriptor, position, bytes left) of the regular file ``wrapper`` wraps, for
    the reactor to send from that position (PEP 3333: "the file's current position");
    None when it is to be iterated: no working fileno() (BytesIO, an app's own object),
    not a regular file (a pipe, a socket: no length to send), a text file (its read()
    gives str: the error iteration reports).
    """
    f = wrapper.filelike
    if isinstance(f, io.TextIOBase):
        return None
    try:
        fd = f.fileno()
        flush = getattr(f, "flush", None)
        if flush is not None:
            flush()  # what the app wrote that its file object still buffers
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            return None
        # tell() counts what a buffered file has read ahead; the descriptor's offset not.
        tell = getattr(f, "tell", None)
        position = tell() if tell is not None else os.lseek(fd, 0, os.SEEK_CUR)
    except Exception:
        return None
    if type(position) is not int or position < 0:
        return None
    return fd, position, max(st.st_size - position, 0)


def _reject(message: str) -> None:
    raise ValueError("start_response: " + message)


class Context:
    """
    The running of one exchange by the application: what ``yimmo.Context`` is in the
    C server.  Created and used on one worker thread.
    """

    __slots__ = (
        "exchange", "emit", "status", "headers", "fields", "head", "head_sent", "content_length",
        "chunked", "sent", "keep_alive", "no_body",
    )

    def __init__(self, exchange: Exchange, emit: Emit) -> None:
        self.exchange = exchange
        self.emit = emit
        self.status: Optional[str] = None
        self.headers: Headers = []
        self.fields: List[Field] = []  # of those headers, checked
        self.head_sent = False

    # -- PEP 3333 callables ----------------------------------------------------------

    def start_response(self, status: str, headers: Headers,
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if type(status) is not str:
            _reject("status must be str, got %r" % (status,))
        if not _STATUS.match(status):
            _reject("invalid status %r" % (status,))
        if type(headers) is not list:
            _reject("headers must be a list, got %r" % (type(headers).__name__,))
        fields = []
        known = _FIELDS
        for item in headers:
            if type(item) is not tuple or len(item) != 2:
                _reject("header %r is not a (name, value) tuple" % (item,))
            name, value = item
            field = None
            if type(name) is str and type(value) is str:  # not a subclass equal to one known
                field = known.get(item)
            if field is None:
                field = _field(name, value)
                if len(known) < _FIELDS_MAX:
                    known[item] = field
            fields.append(field)
        self.status = status
        self.headers = headers
        self.fields = fields
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write() callable: output before the iterable's."""
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if type(data) is not bytes:
            raise TypeError("write() takes bytes, got %r" % (type(data).__name__,))
        if self.exchange.session.gone:
            raise ClientDisconnected("client disconnected")
        self._send(data, None)

    # -- framing ---------------------------------------------------------------------

    def _head(self, total: Optional[int]) -> bytes:
        """
        The response head.  ``total`` is the whole body's length when known before the
        first byte is sent (a list body, or an empty one); it decides the framing when
        the app gave no Content-Length.
        """
        if self.status is None:
            raise AssertionError("the application sent a body before calling start_response")
        ex = self.exchange
        line, code = status_of(self.status)
        never_length = code < 200 or code == 204  # RFC 9110 8.6: no Content-Length at all
        self.no_body = no_body = ex.head_only or never_length or code == 304
        lines = [line]
        length, close, has_server, has_date = self._head_fields(lines, HTTP1_LINE, never_length)
        keep_alive = ex.keep_alive and ex.session.keep_alive and not close
        self.chunked = False
        if length is None and not never_length:
            if total is not None and (not no_body or (ex.head_only and total)):
                # For HEAD, only a length the app produced is the GET's: an app that sends
                # no body for HEAD (werkzeug) gets no "Content-Length: 0" (RFC 9110 9.3.2).
                length = total
                lines.append(b"Content-Length: %d\r\n" % total)
            elif not no_body:
                if ex.http11:
                    self.chunked = True
                    lines.append(b"Transfer-Encoding: chunked\r\n")
                else:
                    keep_alive = False  # HTTP/1.0: the body ends when the connection does
        self.content_length = None if no_body else length
        if not has_server:
            lines.append(_SERVER_LINE)
        if not has_date:
            lines.append(date_header())
        if not keep_alive:
            lines.append(b"Connection: close\r\n\r\n")
        elif not ex.http11:
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        self.keep_alive = keep_alive
        self.sent = 0
        self.head_sent = True
        return b"".join(lines)

    def _head_fields(self, out: List[Any], at: int, never_length: bool
                     ) -> Tuple[Optional[int], bool, bool, bool]:
        """
        Item ``at`` (HTTP1_LINE, HTTP2_PAIR) of each of the app's fields that goes into
        the head, appended to ``out``; and what the fields say: (their Content-Length,
        whether one is "Connection: close", whether they have a Server and a Date).
        Hop-by-hop fields are the server's (PEP 3333): dropped.
        """
        length = None
        close = server = date = False
        for field in self.fields:
            kind = field[0]
            if kind:
                if kind == _LENGTH:
                    extra = field[2]
                    if type(extra) is not int:
                        raise ValueError("start_response: invalid Content-Length %r" % extra)
                    length = extra
                    if never_length:
                        continue
                elif kind == _DROP:
                    continue
                elif kind == _CLOSE_FIELD:
                    close = True
                    continue
                elif kind == _SERVER:
                    server = True
                else:
                    date = True
            out.append(field[at])
        return length, close, server, date

    def _frame(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire: honouring Content-Length, chunked or not."""
        if self.no_body:
            return b""
        length = self.content_length
        if length is not None:
            room = length - self.sent
            if len(data) > room:
                log.warn("{path}: app sent more than its Content-Length {n}; extra dropped",
                         path=self.exchange.environ.get("PATH_INFO"), n=length)
                data = data[:room]
            self.sent += len(data)
            return data
        self.sent += len(data)
        return chunk(data) if self.chunked else data

    def _send(self, data: bytes, total: Optional[int]) -> None:
        if not data:
            return
        if self.head_sent:
            out = self._frame(data)
            if out:
                self.emit(self.exchange, out, MORE)
        else:
            self.emit(self.exchange, self._head(total) + self._frame(data), MORE)

    def _finish(self, total: Optional[int], tail: bytes = b"") -> None:
        """
        Complete the response: ``tail`` (a head built but not yet emitted) or the head if
        not yet built, the last chunk, the end code.
        """
        if not self.head_sent:
            tail = self._head(0 if total is None else total)
        if self.chunked:
            tail += LAST_CHUNK
        self.emit(self.exchange, tail, self._end())

    def _end(self) -> int:
        """The end code of a response whose ``sent`` bytes are all there will be."""
        if self.content_length is not None and self.sent < self.content_length:
            # The app promised more than it gave: the client must see a cut-off body.
            log.warn("{path}: app sent {sent} of its Content-Length {n}; closing",
                     path=self.exchange.environ.get("PATH_INFO"), sent=self.sent,
                     n=self.content_length)
            return CLOSE
        return DONE if self.keep_alive else CLOSE

    def _send_file(self, wrapper: FileWrapper, fd: int, position: int, size: int) -> bool:
        """
        The body is ``size`` bytes of the regular file ``fd`` from ``position``: send the
        head and hand the file to the reactor (True), unless none of it is to be sent
        (HEAD, 204, 304, Content-Length 0): then the response ends here (False).  A
        Content-Length beyond the file sends what there is, then closes.
        """
        head = b"" if self.head_sent else self._head(size)
        length = self.content_length
        if self.no_body:
            want = 0
        elif length is None:
            want = size  # close-delimited, after write() output on HTTP/1.0
        else:
            want = length - self.sent  # the app's, or the file's size just put in the head
        count = min(want, size)
        if not count:
            self._finish(None, head)
            return False
        self.sent += count
        ex = self.exchange
        ex.file = FileSender(getattr(wrapper, "close", None), fd, position, count,
                             self._end(), ex.environ.get("PATH_INFO", ""))
        self.emit(ex, head, FILE)
        return True

    # -- running the app --------------------------------------------------------------

    def run(self, app: WSGIApp) -> None:
        """Run the application for this exchange and send its whole response."""
        ex = self.exchange
        environ = ex.environ
        environ["wsgi.input"] = stream = InputStream(ex, self.emit)
        result = None
        try:
            result = app(environ, self.start_response)
            if type(result) is FileWrapper:
                source = regular_file(result)
                if source is not None and not (self.head_sent and self.chunked):
                    if self._send_file(result, *source):
                        result = None  # the reactor has its close() called once it is sent
                    return
            # A generator may call start_response in its first iteration (PEP 3333), so
            # for those the check waits for the first chunk (in _head).
            if type(result) in (list, tuple) and not self.head_sent:
                if self.status is None:
                    raise AssertionError("the application returned without calling "
                                         "start_response")
                # A whole body known up front gets a Content-Length instead of chunking.
                total = 0
                for data in result:
                    if type(data) is not bytes:
                        raise TypeError("the body must yield bytes, got %r" % type(data).__name__)
                    total += len(data)
                if total == 0 or self.exchange.head_only:
                    self._finish(total)
                    return
                body = cast("List[bytes]", result)
                if len(body) == 1:
                    # The common body, one string: head, body and end in one record.  (The
                    # head gets a Content-Length, so there is no last chunk to add.)
                    out = self._head(total) + self._frame(body[0])
                    self.emit(ex, out, self._end())
                    return
                for data in result:
                    self._send(data, total)
                    if ex.session.gone:
                        return
                self._finish(total)
                return
            session = ex.session
            for data in result:
                if type(data) is not bytes:
                    raise TypeError("the body must yield bytes, got %r" % type(data).__name__)
                if session.gone:
                    return
                self._send(data, None)
            self._finish(None)
        except ClientDisconnected:
            # Writing found the connection gone, or the request body was cut short (the
            # client half-closed or vanished mid-upload): the exchange still ends, or its
            # session would wait for it forever.
            log.debug("client went away during {path}", path=environ.get("PATH_INFO"))
            self.emit(ex, b"", ABORT)
        except HTTPError as e:
            # Raised by wsgi.input: the request body turned out bad (too large, malformed,
            # timed out).  The app did not catch it, so the client gets that status.
            self._fail(e.status, e.reason, None)
        except Exception:
            self._fail(500, "", sys.exc_info())
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.failure("close() of the response of {path} failed", level=LogLevel.error,
                                path=environ.get("PATH_INFO"))
            if ex.body is not None:
                ex.body.release()
            stream.detach()

    def _fail(self, status: int, reason: str, exc_info: Any) -> None:
        ex = self.exchange
        if exc_info is not None:
            log.failure("error in the application for {method} {path}", level=LogLevel.error,
                        method=ex.environ.get("REQUEST_METHOD"), path=ex.environ.get("PATH_INFO"))
        if ex.session.gone:
            return
        if self.head_sent:
            # Too late for an error status: cutting the connection is the only honest signal.
            self.emit(ex, b"", ABORT)
        else:
            self.emit(ex, error_response(status, reason, head_only=ex.head_only), CLOSE)
