"""
A raw-socket HTTP/1.x client for black-box tests: send exact bytes, read exact responses.

Everything is bounded by socket timeouts; nothing here can hang a test.  Typical use::

    with rawhttp.connect(server.port) as c:
        c.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"Hello"
        assert c.closed()  # or not

A ``Response`` keeps its headers as a list of (lower-case name, value) str pairs, plus
``raw`` (the exact bytes of the head and body as read).
"""

from __future__ import annotations

import socket
import time
from typing import List, Optional, Tuple

DEFAULT_TIMEOUT = 5.0
HOST = "127.0.0.1"


class ProtocolError(AssertionError):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


class Closed(ProtocolError):
    """The connection closed before a complete response (``partial`` holds what came)."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message + (": got %r" % partial[:500] if partial else ""))
        self.partial = partial


class Response:
    def __init__(self, version: str, status: int, reason: str,
                 headers: List[Tuple[str, str]], body: bytes, raw: bytes,
                 framing: str, trailers: Optional[List[Tuple[str, str]]] = None) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw = raw
        self.framing = framing  # "length", "chunked", "close" or "none"
        self.trailers = trailers or []

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of the one header ``name`` (case-insensitive); error if repeated."""
        values = self.all(name)
        if not values:
            return default
        if len(values) > 1:
            raise AssertionError("header %r repeated: %r" % (name, values))
        return values[0]

    def all(self, name: str) -> List[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def has(self, name: str) -> bool:
        return bool(self.all(name))

    @property
    def connection_close(self) -> bool:
        return any("close" in v.lower() for v in self.all("connection"))

    def json(self):
        import json
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return "<Response %d %s %r body=%r>" % (self.status, self.reason, self.headers,
                                                self.body[:200])


def parse_head(head: bytes) -> Tuple[str, int, str, List[Tuple[str, str]]]:
    """Status line and headers of a response head (without the final CRLF CRLF)."""
    lines = head.split(b"\r\n")
    status_line = lines[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        raise ProtocolError("bad status line %r" % status_line)
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if b":" not in line or line[:1] in (b" ", b"\t"):
            raise ProtocolError("bad header line %r" % line)
        name, _, value = line.partition(b":")
        if name != name.strip() or not name:
            raise ProtocolError("bad header name %r" % name)
        headers.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    return version, status, reason, headers


class Connection:
    """One client connection with its own receive buffer."""

    def __init__(self, port: int, host: str = HOST, timeout: float = DEFAULT_TIMEOUT,
                 rcvbuf: Optional[int] = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:  # SO_RCVBUF before connect(): the TCP window is negotiated with it
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()  # received, not yet consumed
        self.eof = False  # the server closed its side (FIN) or reset the connection
        self.reset = False

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, returning False instead of raising when the server has gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    # -- receiving -------------------------------------------------------------------

    def _recv(self, deadline: float) -> bool:
        """Read once into the buffer; False at EOF.  Raises socket.timeout past deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer."""
        self.buf[:0] = data

    def read_until(self, marker: bytes, timeout: Optional[float] = None) -> bytes:
        """Bytes up to and including ``marker``; Closed at EOF, socket.timeout when slow."""
        deadline = self._deadline(timeout)
        start = 0
        while True:
            i = self.buf.find(marker, start)
            if i >= 0:
                return self._take(i + len(marker))
            start = max(0, len(self.buf) - len(marker) + 1)
            if not self._recv(deadline):
                raise Closed("connection closed before %r" % marker, bytes(self.buf))

    def read_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        deadline = self._deadline(timeout)
        while len(self.buf) < n:
            if not self._recv(deadline):
                raise Closed("connection closed after %d of %d bytes" % (len(self.buf), n),
                             bytes(self.buf))
        return self._take(n)

    def read_some(self, timeout: Optional[float] = None) -> bytes:
        """What is buffered, or the next bytes received (b"" at EOF)."""
        if not self.buf:
            self._recv(self._deadline(timeout))
        return self._take(len(self.buf))

    def read_until_close(self, timeout: Optional[float] = None) -> bytes:
        """Everything until the server closes; socket.timeout if it does not in time."""
        deadline = self._deadline(timeout)
        while self._recv(deadline):
            pass
        return self._take(len(self.buf))

    def read_available(self, wait: float = 0.2) -> bytes:
        """Whatever arrives within ``wait`` seconds (never raises a timeout)."""
        deadline = time.monotonic() + wait
        try:
            while self._recv(deadline):
                pass
        except socket.timeout:
            pass
        return self._take(len(self.buf))

    def read_head(self, timeout: Optional[float] = None):
        """Status line and headers of the next response: (version, status, reason, headers, raw)."""
        raw = self.read_until(b"\r\n\r\n", timeout)
        version, status, reason, headers = parse_head(raw[:-4])
        return version, status, reason, headers, raw

    def read_response(self, head_request: bool = False, timeout: Optional[float] = None,
                      skip_100: bool = False) -> Response:
        """
        The next complete response.  ``head_request``: it answers a HEAD (no body
        whatever the headers say).  ``skip_100``: interim 1xx responses are skipped
        (otherwise a 1xx is returned as a response of its own, without a body).
        """
        deadline = self._deadline(timeout)
        while True:
            version, status, reason, headers, raw = self.read_head(
                max(0.001, deadline - time.monotonic()))
            if 100 <= status < 200 and status != 101:
                if skip_100:
                    continue
                return Response(version, status, reason, headers, b"", raw, "none")
            break
        te = [v for k, v in headers if k == "transfer-encoding"]
        cl = [v for k, v in headers if k == "content-length"]
        trailers = []
        if head_request or status in (204, 304) or 100 <= status < 200:
            body, framing = b"", "none"
        elif te:
            if te != ["chunked"]:
                raise ProtocolError("unexpected Transfer-Encoding %r" % te)
            if cl:
                raise ProtocolError("both Transfer-Encoding and Content-Length: %r" % headers)
            body, trailers, rawbody = self._read_chunked(deadline)
            raw += rawbody
            framing = "chunked"
        elif cl:
            if len(cl) != 1 or not cl[0].isdigit():
                raise ProtocolError("bad Content-Length %r" % cl)
            body = self.read_exact(int(cl[0]), max(0.001, deadline - time.monotonic()))
            raw += body
            framing = "length"
        else:
            body = self.read_until_close(max(0.001, deadline - time.monotonic()))
            raw += body
            framing = "close"
        return Response(version, status, reason, headers, body, raw, framing, trailers)

    def _read_chunked(self, deadline: float):
        parts = []
        rawparts = []
        while True:
            line = self.read_until(b"\r\n", max(0.001, deadline - time.monotonic()))
            rawparts.append(line)
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("bad chunk size line %r" % line) from None
            if size == 0:
                break
            data = self.read_exact(size + 2, max(0.001, deadline - time.monotonic()))
            if data[-2:] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF: %r" % data[-10:])
            rawparts.append(data)
            parts.append(data[:-2])
        trailers = []
        while True:
            line = self.read_until(b"\r\n", max(0.001, deadline - time.monotonic()))
            rawparts.append(line)
            if line == b"\r\n":
                break
            name, _, value = line[:-2].partition(b":")
            trailers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return b"".join(parts), trailers, b"".join(rawparts)

    def closed(self, timeout: float = 2.0) -> bool:
        """
        True when the server closes the connection within ``timeout`` with nothing more
        to read; AssertionError if it sends bytes instead; False if still open.
        """
        if self.buf:
            raise AssertionError("unexpected bytes before close: %r" % bytes(self.buf[:500]))
        deadline = time.monotonic() + timeout
        try:
            if self._recv(deadline):
                raise AssertionError("unexpected bytes instead of close: %r"
                                     % bytes(self.buf[:500]))
        except socket.timeout:
            return False
        return True

    def is_open(self, wait: float = 0.2) -> bool:
        """True when nothing arrives and no close happens within ``wait`` seconds."""
        return not self.closed(wait)


def connect(port: int, host: str = HOST, timeout: float = DEFAULT_TIMEOUT,
            rcvbuf: Optional[int] = None) -> Connection:
    return Connection(port, host, timeout, rcvbuf)


def request(method: str = "GET", target: str = "/", headers=None, body: bytes = b"",
            version: str = "HTTP/1.1", host: Optional[str] = "localhost") -> bytes:
    """The bytes of one request.  ``headers``: list of (name, value) or a dict."""
    if headers is None:
        headers = []
    elif isinstance(headers, dict):
        headers = list(headers.items())
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None and not any(k.lower() == "host" for k, _ in headers):
        lines.append("Host: " + host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if body and not any(k.lower() in ("content-length", "transfer-encoding")
                        for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, target: str = "/", headers=None, timeout: float = DEFAULT_TIMEOUT,
        **kw) -> Response:
    """One request on a fresh connection (with Connection: close), its response."""
    headers = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(k.lower() == "connection" for k, _ in headers):
        headers.append(("Connection", "close"))
    method = kw.pop("method", "GET")
    with connect(port, timeout=timeout) as c:
        c.send(request(method, target, headers, **kw))
        return c.read_response(head_request=(method == "HEAD"))


def chunked(*parts: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body of ``parts`` (empty parts skipped), with optional trailer lines."""
    out = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p)
    return out + b"0\r\n" + trailers + b"\r\n"
