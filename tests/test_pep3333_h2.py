"""
PEP 3333 over HTTP/2: the tests of tests/test_pep3333.py, collected here again against
servers with ``--http2-cleartext on``, their connections speaking h2 by prior knowledge
(test_http2.Client: the h2 library as the client).

The fixtures (``server``, ``serve``, ``flask_server``) give ``H2Server`` objects, whose
connections (``H2Connection``) take the bytes of HTTP/1.1 requests as the tests write them
and send each request as one HTTP/2 stream: the request line as :method and :path, Host
as :authority, the other fields as they are (names in lower case, values as latin-1
bytes) but the connection-specific ones (RFC 9113 8.2.2), and the body as DATA frames:
one Content-Length long, or, for a chunked body (a body of unknown length), its chunks'
data as they come, without a content-length, the stream ended at the last chunk.  A
response comes back as a rawhttp.Response (version "HTTP/2", framing "length" with a
content-length, "stream" without) whose ``raw`` is its fields as HTTP/1.1-like lines and
its data; a stream the server resets raises ``Reset`` (a rawhttp.Closed).  What differs
beyond that (an aborted response, a client that goes away) is H2Server's, see
test_pep3333.H1Server for the interface.

Left out, HTTP/1.1 by nature (EXCLUDED below, each with its reason); the HTTP/2
counterparts are the tests at the end of this module.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from h2.errors import ErrorCodes

import rawhttp
import test_pep3333
from conftest import start_server
from test_http2 import H2C, Client, Stream

pytestmark = pytest.mark.timeout(30)

EXCLUDED = {
    "test_environ_absolute_form_target":
        "an absolute-form request-target is HTTP/1.1's; :path is origin-form (RFC 9113 "
        "8.3.1)",
    "test_environ_http10":
        "an HTTP/1.0 request line; the h2 counterpart, a request without :authority or "
        "Host, is test_environ_without_authority",
    "test_environ_raw_non_ascii_target_is_latin1_or_refused":
        "raw bytes in the HTTP/1.1 request line; the h2 counterpart, a :path with bytes "
        "> 0x7F through HPACK, is test_environ_raw_non_ascii_path_is_latin1",
    "test_input_never_reads_past_the_body_pipelined":
        "pipelining; the h2 counterpart, bodies of concurrent streams on one connection, "
        "is test_input_of_concurrent_streams_stays_apart",
}

assert set(EXCLUDED) <= set(vars(test_pep3333)), "EXCLUDED names a test that is gone"
for _name, _test in vars(test_pep3333).items():
    if _name.startswith("test_") and callable(_test) and _name not in EXCLUDED:
        globals()[_name] = _test
del _name, _test


# -- the HTTP/2 side of test_pep3333's interface ---------------------------------------------

# Connection-specific fields, which HTTP/2 has not (RFC 9113 8.2.2); Host is :authority.
_DROPPED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


class Reset(rawhttp.Closed):
    """The server reset the stream (``stream``: what it had received; ``partial``: data)."""

    def __init__(self, stream: Stream) -> None:
        super().__init__("stream reset with error code %r" % stream.reset, bytes(stream.data))
        self.stream = stream


def _render(status: int, headers: List[Tuple[str, str]]) -> bytes:
    lines = ["HTTP/2 %d" % status] + ["%s: %s" % field for field in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class H2Connection:
    """
    One HTTP/2 connection with rawhttp.Connection's interface as test_pep3333 uses it:
    ``send`` HTTP/1.1 request bytes (a head and its body in any pieces), read the
    responses in the order of the requests, whole or (read_head, read_some, read_exact,
    read_until_close, read_available) the oldest unanswered one bit by bit.
    """

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: Optional[int] = None) -> None:
        self.client = Client(port)
        if rcvbuf is not None:
            self.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.timeout = timeout
        self.inbuf = bytearray()  # request bytes not sent yet
        self.upload: Optional[list] = None  # [sid, "length", bytes left] or [sid, "chunked"]
        self.pending: deque = deque()  # streams whose responses are not read yet
        self.informational_read: Dict[int, int] = {}
        self.head_read: Dict[int, bool] = {}
        self.data_read: Dict[int, int] = {}

    def __enter__(self) -> "H2Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.close()
        except OSError:
            pass

    @property
    def sock(self) -> socket.socket:
        return self.client.sock

    @property
    def eof(self) -> bool:
        return self.client.closed

    @property
    def sid(self) -> int:
        """The stream of the oldest request not yet answered in full."""
        return self.pending[0]

    # -- sending ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.inbuf += data
        while self._send_some():
            pass

    def _send_some(self) -> bool:
        buf = self.inbuf
        if self.upload is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(buf[:end])
            del buf[:end + 4]
            self._open(head)
            return True
        sid, mode = self.upload[0], self.upload[1]
        if mode == "length":
            n = min(self.upload[2], len(buf))
            if not n:
                return False
            piece = bytes(buf[:n])
            del buf[:n]
            self.upload[2] -= n
            last = self.upload[2] == 0
            if last:
                self.upload = None
            self.client.send_body(sid, piece, end=last)
            return True
        eol = buf.find(b"\r\n")
        if eol < 0:
            return False
        if mode == "trailers":  # after the last chunk: trailer lines, then an empty one
            line = bytes(buf[:eol])
            del buf[:eol + 2]
            if not line:
                self.upload = None
                self.client.conn.end_stream(sid)
                self.client.flush()
            return True
        size = int(bytes(buf[:eol]).split(b";")[0], 16)
        if size == 0:
            del buf[:eol + 2]
            self.upload = [sid, "trailers"]
            return True
        if len(buf) < eol + 2 + size + 2:
            return False
        piece = bytes(buf[eol + 2:eol + 2 + size])
        assert buf[eol + 2 + size:eol + 4 + size] == b"\r\n", "bad chunk from the test"
        del buf[:eol + 4 + size]
        self.client.send_body(sid, piece, end=False)
        return True

    def _open(self, head: bytes) -> None:
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ")
        assert version == "HTTP/1.1", "an HTTP/1.1 request line is translated: %r" % line
        fields = [(":method", method), (":path", target), (":scheme", "http")]
        headers = []
        length, chunked = 0, False
        for text in lines:
            name, _, value = text.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "host":
                fields.append((":authority", value))
            elif name == "transfer-encoding":
                assert value.lower() == "chunked", value
                chunked = True
            elif name not in _DROPPED:
                if name == "content-length":
                    length = int(value)
                headers.append((name, value))
        conn = self.client.conn
        sid = conn.get_next_available_stream_id()
        self.client.streams[sid] = Stream()
        conn.send_headers(sid, [(k.encode("latin-1"), v.encode("latin-1"))
                                for k, v in fields + headers],
                          end_stream=not (chunked or length))
        self.client.flush()
        self.pending.append(sid)
        if chunked:
            self.upload = [sid, "chunked"]
        elif length:
            self.upload = [sid, "length", length]

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM on the oldest unanswered stream."""
        self.client.conn.reset_stream(self.sid, code)
        self.client.flush()

    # -- receiving -------------------------------------------------------------------

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _read(self, deadline: float) -> None:
        """Read and handle once; socket.timeout past the deadline, Closed at EOF."""
        if self.client.closed:
            stream = self.client.streams.get(self.pending[0]) if self.pending else None
            raise rawhttp.Closed("connection closed", bytes(stream.data) if stream else b"")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self.client.read_once(remaining)

    def _stream(self) -> Stream:
        return self.client.streams[self.sid]

    def _read_until(self, stream: Stream, done: Callable[[], bool], deadline: float) -> None:
        """Read until ``done()``; Reset if ``stream`` is reset first."""
        while not done():
            if stream.reset is not None:
                raise Reset(stream)
            self._read(deadline)

    @staticmethod
    def _fields(fields) -> Tuple[int, List[Tuple[str, str]]]:
        status = int(dict(fields)[b":status"])
        return status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fields
                        if not k.startswith(b":")]

    def read_response(self, head_request: bool = False, timeout: Optional[float] = None,
                      skip_100: bool = False) -> rawhttp.Response:
        deadline = self._deadline(timeout)
        sid = self.sid
        stream = self._stream()
        while True:
            taken = self.informational_read.get(sid, 0)
            if len(stream.informational) > taken and not skip_100:
                self.informational_read[sid] = taken + 1
                status, headers = self._fields(stream.informational[taken])
                return rawhttp.Response("HTTP/2", status, "", headers, b"",
                                        _render(status, headers), "none")
            if stream.ended or stream.reset is not None:
                break
            self._read(deadline)
        self.pending.popleft()
        if stream.reset is not None:
            raise Reset(stream)
        status, headers = self._fields(stream.headers)
        body = bytes(stream.data)
        framing = "length" if any(k == "content-length" for k, _ in headers) else "stream"
        return rawhttp.Response("HTTP/2", status, "", headers, body,
                                _render(status, headers) + body, framing)

    def read_head(self, timeout: Optional[float] = None):
        """(version, status, reason, headers, raw) of the oldest unanswered stream."""
        stream = self._stream()
        self._read_until(stream, lambda: bool(stream.headers), self._deadline(timeout))
        self.head_read[self.sid] = True
        status, headers = self._fields(stream.headers)
        return "HTTP/2", status, "", headers, _render(status, headers)

    def _unread(self) -> bytes:
        stream = self._stream()
        start = self.data_read.get(self.sid, 0)
        self.data_read[self.sid] = len(stream.data)
        return bytes(stream.data[start:])

    def _wait_data(self, n: int, deadline: float) -> None:
        stream = self._stream()
        self._read_until(stream, lambda: stream.ended or (
            len(stream.data) - self.data_read.get(self.sid, 0) >= n), deadline)

    def read_some(self, timeout: Optional[float] = None) -> bytes:
        """The data received and not read yet, or the next data (b"" at the stream's end)."""
        self._wait_data(1, self._deadline(timeout))
        return self._unread()

    def read_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        self._wait_data(n, self._deadline(timeout))
        stream = self._stream()
        start = self.data_read.get(self.sid, 0)
        if len(stream.data) - start < n:
            raise rawhttp.Closed("stream ended after %d of %d bytes"
                                 % (len(stream.data) - start, n), self._unread())
        self.data_read[self.sid] = start + n
        return bytes(stream.data[start:start + n])

    def read_until_close(self, timeout: Optional[float] = None) -> bytes:
        """The rest of the data, until the stream ends."""
        stream = self._stream()
        self._read_until(stream, lambda: stream.ended, self._deadline(timeout))
        return self._unread()

    def read_available(self, wait: float = 0.2) -> bytes:
        """What arrived within ``wait`` seconds: the head (as _render's) and data."""
        deadline = time.monotonic() + wait
        try:
            while not self.client.closed:
                self._read(deadline)
        except socket.timeout:
            pass
        stream = self._stream()
        out = b""
        if stream.headers and not self.head_read.get(self.sid):
            self.head_read[self.sid] = True
            out = _render(*self._fields(stream.headers))
        return out + self._unread()


class H2Server:
    """test_pep3333.H1Server's interface, over HTTP/2."""

    protocol = "HTTP/2"
    unsized_framing = "stream"  # no content-length: the stream's end ends the body
    connection_fields = False  # no Connection field in HTTP/2 (RFC 9113 8.2.2)

    def __init__(self, process) -> None:
        self.process = process

    def __getattr__(self, name: str):
        return getattr(self.process, name)

    def connect(self, timeout: float = 5.0, rcvbuf: Optional[int] = None) -> H2Connection:
        return H2Connection(self.process.port, timeout, rcvbuf)

    def read_aborted(self, c: H2Connection, first: bytes, timeout: float = 5.0) -> bytes:
        """
        An aborted response: the stream is reset (with an error, not NO_ERROR) without
        END_STREAM, after a 200 head (or before any); the data is a prefix of ``first``
        or starts with it.  The connection and its other streams live on.
        """
        with pytest.raises(Reset) as ei:
            c.read_response(timeout=timeout)
        stream = ei.value.stream
        assert not stream.ended
        assert stream.reset not in (None, ErrorCodes.NO_ERROR), stream.reset
        if stream.headers:
            assert stream.status == 200, stream.headers
        else:
            assert not stream.data
        data = bytes(stream.data)
        assert data[:len(first)] == first[:len(data)], data[:200]
        c.send(rawhttp.request("GET", "/env"))
        assert c.read_response(timeout=timeout).status == 200, "the connection went too"
        return data

    def hang_up(self, c: H2Connection, how: str) -> None:
        """The client goes away: "close" closes the connection, "reset" sends RST_STREAM
        (CANCEL) for the stream and keeps the connection open."""
        if how == "reset":
            c.reset(ErrorCodes.CANCEL)
        else:
            c.close()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def serve(serve):
    """conftest's ``serve`` with h2c on, its servers as H2Server objects."""
    def start(app, *args, **kw) -> H2Server:
        return H2Server(serve(app, *args, *H2C, **kw))
    return start


@pytest.fixture(scope="module")
def server():
    """test_pep3333's ``server``, with h2c on."""
    s = start_server("pep_apps:app", "-t", "4", "--output-buffer", "256K",
                     "--input-buffer", "256K", *H2C)
    yield H2Server(s)
    s.stop()


@pytest.fixture(scope="module")
def flask_server():
    s = start_server("pep_apps:flask_app", "-t", "2", *H2C)
    yield H2Server(s)
    s.stop()


# -- HTTP/2 counterparts of the HTTP/1.1-only tests -------------------------------------------


def test_environ_without_authority(server):
    """
    test_environ_http10's point in HTTP/2, a request without :authority or Host: "http"
    has a mandatory authority, so such a request is malformed (RFC 9113 8.3.1) and its
    stream reset (PROTOCOL_ERROR, 8.1.1); the connection goes on.
    """
    c = Client(server.port, validate=False)  # h2 itself wants one of them
    try:
        assert c.get("/env", authority=None).reset == ErrorCodes.PROTOCOL_ERROR
        assert c.get("/env").status == 200
    finally:
        c.close()


@pytest.mark.parametrize("path,key,value", [
    (b"/env?q=\xc3\xa9", "QUERY_STRING", "q=\xc3\xa9"),
    (b"/caf\xc3\xa9", "PATH_INFO", "/caf\xc3\xa9"),
])
def test_environ_raw_non_ascii_path_is_latin1(server, path, key, value):
    """Unencoded bytes > 0x7F in :path (HPACK carries any octets) reach the app as the
    latin-1 characters of those bytes, as on HTTP/1.1 (PEP 3333's native strings)."""
    c = Client(server.port)
    try:
        sid = c.conn.get_next_available_stream_id()
        c.streams[sid] = stream = Stream()
        c.conn.send_headers(sid, [(b":method", b"GET"), (b":path", path),
                                  (b":scheme", b"http"), (b":authority", b"t")],
                            end_stream=True)
        c.flush()
        c.wait(lambda: stream.ended or stream.reset is not None)
    finally:
        c.close()
    assert stream.status == 200, (stream.headers, stream.reset)
    assert json.loads(bytes(stream.data))["environ"][key] == ["str", value]


def test_input_of_concurrent_streams_stays_apart(server):
    """
    test_input_never_reads_past_the_body_pipelined's point in HTTP/2: the bodies of
    streams open at once on one connection, their DATA frames interleaved, each reach
    their own app whole and alone (read() and read(big) stop at the stream's end).
    """
    bodies = [b"%d:" % i + bytes([0x41 + i]) * (20000 + 7 * i) for i in range(3)]
    modes = ["read_all", "read_big", "read_n"]
    c = Client(server.port)
    try:
        sids = [c.request("/input?mode=%s&n=1000" % mode, "POST", end=False,
                          headers=[("content-length", str(len(body)))])
                for mode, body in zip(modes, bodies)]
        for start in range(0, max(map(len, bodies)), 3000):  # interleaved DATA frames
            for sid, body in zip(sids, bodies):
                part = body[start:start + 3000]
                if part:
                    c.send_body(sid, part, end=start + 3000 >= len(body))
        c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None
                           for s in sids))
    finally:
        c.close()
    for sid, body in zip(sids, bodies):
        stream = c.streams[sid]
        assert stream.reset is None and stream.status == 200, stream.headers
        data = json.loads(bytes(stream.data))
        assert "".join(data["pieces"]).encode("latin-1") == body
        assert data["after"] == ["", "", "", ""]
        assert data["content_length"] == str(len(body))
