"""
File responses (sendfile.py): ``wsgi.file_wrapper`` over a regular file is sent by the
reactor, zero-copy on plain TCP and Unix sockets, read and written through the transport
on TLS and PROXY connections; anything else is iterated as before.  Black-box over real
sockets (``file_apps:app``), then the producer alone on a socketpair.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import struct
import time
from typing import Tuple

import pytest
from twisted.internet import abstract, error, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import rawhttp
from conftest import start_server
# certificate: a fixture, found here by pytest once imported.
from test_startup import _over
from yimmo_twisted import compat, sendfile
from yimmo_twisted.exchange import ABORT, CLOSE, DONE
from yimmo_twisted.sendfile import FileSender

pytestmark = pytest.mark.timeout(60)

SIZE = 20 << 20


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """(path, bytes) of a 20 MiB file of random bytes."""
    data = os.urandom(SIZE)
    path = tmp_path_factory.mktemp("files") / "payload.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module")
def server():
    s = start_server("file_apps:app", "-t", "2")
    yield s
    s.stop()


_keys = iter(range(1 << 30))


def new_key() -> str:
    return "k%d" % next(_keys)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_target(path: str, key: str, **options) -> str:
    return "/file?path=%s&key=%s" % (path, key) + "".join(
        "&%s=%s" % item for item in options.items())


def stats(server, key: str, get=None) -> dict:
    """The counters of ``key``, asked with ``get`` (target -> response; server.get)."""
    return json.loads((get or server.get)("/stats?key=" + key).body)


def wait_closed(server, key: str, get=None, timeout: float = 5.0) -> dict:
    """The counters of ``key`` once its file is closed (and a moment after: once only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(server, key, get)
        if s["closed"]:
            time.sleep(0.1)
            return stats(server, key, get)
        time.sleep(0.02)
    pytest.fail("the file of %s was not closed within %.1f s: %r" % (key, timeout, s))


# -- downloads ---------------------------------------------------------------------------

@pytest.mark.parametrize("with_length", [False, True])
def test_download_is_the_file(server, payload, with_length):
    path, data = payload
    key = new_key()
    options = {"cl": "size"} if with_length else {}
    r = server.get(file_target(path, key, **options), timeout=20)
    assert r.status == 200
    # Without the app's Content-Length the file's size is given (not chunked).
    assert (r.framing, r.header("content-length")) == ("length", str(SIZE))
    assert digest(r.body) == digest(data)
    # Sent by the reactor: the app's file was never read, and closed once after.
    assert wait_closed(server, key) == {"opened": 1, "closed": 1, "read": 0}


@pytest.mark.parametrize("with_length", [False, True])
def test_download_from_the_files_position(server, payload, with_length):
    path, data = payload
    key = new_key()
    offset = 12345
    options = {"offset": offset}
    if with_length:
        options["cl"] = "size"
    r = server.get(file_target(path, key, **options), timeout=20)
    assert r.header("content-length") == str(SIZE - offset)
    assert digest(r.body) == digest(data[offset:])
    assert wait_closed(server, key)["read"] == 0


def test_content_length_below_the_file_sends_that_many_bytes(server, payload):
    path, data = payload
    with server.connect(timeout=20) as c:
        c.send(rawhttp.request("GET", file_target(path, new_key(), offset=10, cl=1000)))
        r = c.read_response()
        assert r.body == data[10:1010]
        c.send(rawhttp.request("GET", "/hello"))  # the connection goes on after it
        assert c.read_response().body == b"Hello, World!\n"


def test_content_length_beyond_the_file_closes_after_what_there_is(server, payload):
    path, data = payload
    key = new_key()
    with server.connect(timeout=20) as c:
        c.send(rawhttp.request("GET", file_target(path, key, offset=SIZE - 5000,
                                                  cl=10000)))
        c.read_head()
        assert c.read_until_close() == data[-5000:]
    assert wait_closed(server, key)["closed"] == 1


def test_write_output_before_the_file_goes_first(server, payload):
    path, data = payload
    for options in ({"cl": str(6 + SIZE)}, {}):  # sent by the reactor; chunked: iterated
        key = new_key()
        r = server.get(file_target(path, key, write="prefix", **options), timeout=20)
        assert r.body[:6] == b"prefix" and digest(r.body[6:]) == digest(data)
        assert r.framing == ("length" if options else "chunked")
        assert wait_closed(server, key)["read"] == (0 if options else SIZE)


def test_pipelined_request_after_a_file_is_answered(server, payload):
    path, data = payload
    with server.connect(timeout=20) as c:
        c.send(rawhttp.request("GET", file_target(path, new_key()))
               + rawhttp.request("GET", "/hello")
               + rawhttp.request("GET", file_target(path, new_key(), offset=SIZE - 10)))
        assert digest(c.read_response().body) == digest(data)
        assert c.read_response().body == b"Hello, World!\n"
        assert c.read_response().body == data[-10:]
        assert c.is_open()


# -- no body -----------------------------------------------------------------------------

@pytest.mark.parametrize("method,options", [
    ("HEAD", {}), ("HEAD", {"cl": "size"}), ("GET", {"status": 304}),
    ("GET", {"status": 204}), ("GET", {"cl": 0}),
])
def test_no_file_bytes_without_a_body(server, payload, method, options):
    path, _ = payload
    key = new_key()
    with server.connect() as c:
        c.send(rawhttp.request(method, file_target(path, key, **options)))
        r = c.read_response(head_request=method == "HEAD")
        if method == "HEAD":
            assert r.header("content-length") == str(SIZE)  # what the GET would send
        elif options.get("status") == 204:
            assert not r.has("content-length")
        # Nothing follows the head: the next response is the next request's.
        c.send(rawhttp.request("GET", "/hello"))
        assert c.read_response().body == b"Hello, World!\n"
    assert wait_closed(server, key) == {"opened": 1, "closed": 1, "read": 0}


# -- not a regular file with a descriptor: iterated --------------------------------------

@pytest.mark.parametrize("mode", ["bytesio", "fileno-error", "fstat-error", "pipe"])
def test_other_files_are_iterated(server, payload, mode):
    path, data = payload
    key = new_key()
    r = server.get(file_target(path, key, mode=mode), timeout=20)
    assert r.framing == "chunked"  # no length known up front
    assert digest(r.body) == digest(data)
    assert wait_closed(server, key) == {"opened": 1, "closed": 1, "read": SIZE}


# -- slow and vanishing clients ----------------------------------------------------------

def _slow_client(port: int, target: str) -> Tuple[socket.socket, bytes]:
    """A client with a small receive buffer that sends its request and reads the head;
    the socket and the body bytes read with it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(rawhttp.request("GET", target))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head.partition(b"\r\n\r\n")[2]


def _read(sock: socket.socket, n: int, have: bytes = b"") -> bytes:
    parts, got = [have], len(have)
    while got < n:
        data = sock.recv(min(1 << 20, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def test_a_slow_download_holds_no_worker(serve, payload):
    """One worker thread: /hello is answered at once while a client does not read."""
    path, data = payload
    server = serve("file_apps:app", "-t", "1")
    key = new_key()
    sock, first = _slow_client(server.port, file_target(path, key))
    try:
        time.sleep(0.3)  # the socket buffers fill up; the send waits for the client
        for _ in range(5):
            started = time.monotonic()
            assert server.get("/hello").body == b"Hello, World!\n"
            assert time.monotonic() - started < 0.2
        assert stats(server, key)["closed"] == 0  # still being sent
        body = _read(sock, SIZE, first)  # then reading resumes the send
    finally:
        sock.close()
    assert digest(body) == digest(data)
    assert wait_closed(server, key)["read"] == 0


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_gone_mid_download_closes_the_file(server, payload, how):
    path, _ = payload
    key = new_key()
    sock, first = _slow_client(server.port, file_target(path, key))
    try:
        _read(sock, 1 << 20, first)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    assert wait_closed(server, key) == {"opened": 1, "closed": 1, "read": 0}
    assert server.get("/hello").body == b"Hello, World!\n"
    assert "Traceback" not in server.output()


# -- other transports --------------------------------------------------------------------

def _tls_connection(port: int) -> rawhttp.Connection:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _over(context.wrap_socket(socket.create_connection(("127.0.0.1", port))))


def test_tls_download_through_the_transport(serve, payload, certificate):  # noqa: F811
    path, data = payload
    cert, key_file = certificate
    server = serve("file_apps:app", "--listen", "ssl:0:interface=127.0.0.1:privateKey=%s:"
                   "certKey=%s" % (key_file, cert), listen=False)
    keys = [new_key(), new_key(), new_key()]
    with _tls_connection(server.port) as c:
        c.send(rawhttp.request("GET", file_target(path, keys[0]))
               + rawhttp.request("GET", file_target(path, keys[1], offset=100, cl="size")))
        r = c.read_response(timeout=30)
        assert r.header("content-length") == str(SIZE)
        assert digest(r.body) == digest(data)
        assert digest(c.read_response(timeout=30).body) == digest(data[100:])
        c.send(rawhttp.request("GET", file_target(path, keys[2])))
        c.read_head()
        c.read_exact(1 << 20)  # and away, mid-file

    def get(target: str) -> rawhttp.Response:
        with _tls_connection(server.port) as c:
            c.send(rawhttp.request("GET", target))
            return c.read_response()

    for key in keys:
        assert wait_closed(server, key, get) == {"opened": 1, "closed": 1, "read": 0}
    assert get("/hello").body == b"Hello, World!\n"


def test_unix_socket_download(serve, payload, tmp_path):
    path, data = payload
    where = str(tmp_path / "files.sock")
    server = serve("file_apps:app", "--listen", "unix:" + where, listen=False, wait=False)
    server.wait_for_output("listening on unix " + where, timeout=10)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(where)
    with _over(sock) as c:
        c.send(rawhttp.request("GET", file_target(path, "unix")) +
               rawhttp.request("GET", "/hello"))
        assert digest(c.read_response(timeout=20).body) == digest(data)
        assert c.read_response().body == b"Hello, World!\n"


def test_download_behind_the_proxy_protocol(serve, payload):
    path, data = payload
    server = serve("file_apps:app", "--listen", "haproxy:tcp:0:interface=127.0.0.1",
                   listen=False)
    with server.connect(timeout=20) as c:
        c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n"
               + rawhttp.request("GET", file_target(path, "proxied"))
               + rawhttp.request("GET", "/hello"))
        assert digest(c.read_response().body) == digest(data)
        assert c.read_response().body == b"Hello, World!\n"


def test_werkzeug_send_file(server, payload):
    """Flask's send_file hands werkzeug's file to wsgi.file_wrapper."""
    path, data = payload
    r = server.get("/flask/send_file?path=" + path, timeout=20)
    assert r.status == 200 and r.header("content-length") == str(SIZE)
    assert digest(r.body) == digest(data)


# -- the producer alone ------------------------------------------------------------------

@pytest.fixture
def pair():
    """A tcp.Connection over one end of a socketpair (no reactor: the test drives it,
    with small socket buffers so that sendfile fills them), and the other end."""
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
    conn = tcp.Connection(a, Protocol(), compat._NoReactor())
    conn.connected = True
    yield conn, b
    a.close()
    b.close()


@pytest.fixture
def small_file(tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


class Closes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _pump(conn, peer, ended: list, limit: int = 100000) -> bytes:
    """Run the transport's writes (as the reactor would) and read the peer until the
    sender has ended and the transport has written all it holds, then what is left."""
    got = bytearray()
    for _ in range(limit):
        if ended and not conn._tempDataLen and conn.offset == len(conn.dataBuffer):
            break
        conn.doWrite()
        try:
            while True:
                got += peer.recv(65536)
        except BlockingIOError:
            pass
    try:
        while True:
            data = peer.recv(65536)
            if not data:
                break
            got += data
    except BlockingIOError:
        pass
    return bytes(got)


@pytest.mark.skipif(not sendfile.SENDFILE, reason="needs Linux's sendfile")
def test_sender_sendfile_after_the_buffered_head(pair, small_file):
    conn, peer = pair
    fd, data = small_file
    closes = Closes()
    conn.write(b"HEAD")  # still in Twisted's buffer: it goes first
    sender = FileSender(closes, fd, 100, len(data) - 200, DONE, "/f")
    ended: list = []
    sender.start(conn, ended.append)
    assert conn.producer is sender
    conn.doWrite()
    assert not ended  # the socket's buffer is full: it waits to be asked again
    got = _pump(conn, peer, ended)
    assert ended == [DONE] and conn.producer is None
    assert got == b"HEAD" + data[100:-100]
    assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the file's own position is left alone
    sender.run()
    sender.run()
    assert closes.count == 1  # close() once, whoever asks again


@pytest.mark.skipif(not sendfile.SENDFILE, reason="needs Linux's sendfile")
def test_sender_cuts_a_file_shorter_than_its_count(pair, small_file):
    conn, peer = pair
    fd, data = small_file
    ended: list = []
    FileSender(None, fd, len(data) - 10, 100, DONE, "/f").start(conn, ended.append)
    assert _pump(conn, peer, ended) == data[-10:]
    assert ended == [CLOSE]


@pytest.mark.skipif(not sendfile.SENDFILE, reason="needs Linux's sendfile")
def test_sender_stops_when_the_connection_is_lost(pair, small_file):
    conn, _ = pair
    fd, data = small_file
    ended: list = []
    sender = FileSender(None, fd, 0, len(data), DONE, "/f")
    sender.start(conn, ended.append)
    conn.doWrite()
    conn.connectionLost(Failure(error.ConnectionDone()))  # stops its producer
    assert ended == [ABORT]
    sender.resumeProducing()  # asked again: nothing happens
    assert ended == [ABORT]


def test_sender_writes_blocks_through_other_transports(small_file):
    fd, data = small_file
    transport = StringTransport()  # no socket of its own, as TLS
    ended: list = []
    sender = FileSender(None, fd, 5, len(data) - 5, DONE, "/f")
    sender.start(transport, ended.append)
    assert transport.producer is sender and not transport.streaming
    sizes = []
    while not ended:
        before = len(transport.value())
        sender.resumeProducing()  # one block per ask: the reactor runs in between
        sizes.append(len(transport.value()) - before)
    assert ended == [DONE] and transport.producer is None
    assert transport.value() == data[5:]
    assert max(sizes) == sendfile.BLOCK


def test_sender_writes_through_the_transport_when_the_probe_fails(pair, small_file,
                                                                  monkeypatch):
    conn, peer = pair
    fd, data = small_file
    compat.pull_after_drain_ok.cache_clear()
    # A doWrite that no longer asks a pull producer once its buffer is empty.
    monkeypatch.setattr(abstract.FileDescriptor, "doWrite", lambda self: None)
    try:
        assert not compat.pull_after_drain_ok()
        assert compat.sendfile_socket(conn) is None
    finally:
        compat.pull_after_drain_ok.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(compat, "pull_after_drain_ok", lambda: False)
    ended: list = []
    sender = FileSender(None, fd, 0, len(data), DONE, "/f")
    sender.start(conn, ended.append)  # writes its first block at once
    assert conn._tempDataLen == sendfile.BLOCK
    assert _pump(conn, peer, ended) == data
    assert ended == [DONE]
