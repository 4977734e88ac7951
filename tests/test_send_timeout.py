"""
send_timeout: a client that reads nothing of its response must not hold a connection,
nor the worker writing the response, forever (a slow-read attack: a few such clients of
a large response took every worker).  A client that reads slowly but steadily is not cut.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from conftest import wait_for
from harness import Harness

OUT_BYTES = 50 << 20  # far more than the socket buffers and output_buffer hold


def _never_reading(port: int, target: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
    return sock


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) until the server closes or resets the connection."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


# -- the session, fed bytes (task.Clock) ----------------------------------------------------

def _hello(environ, start_response):
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]


def test_a_transport_paused_past_send_timeout_is_aborted():
    h = Harness(_hello, send_timeout=10, idle_timeout=100)
    assert h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"hello")
    h.session.pauseProducing()  # the transport's buffer is full: the client reads nothing
    h.advance(9)
    assert not h.transport.disconnecting
    h.advance(2)
    assert h.transport.disconnecting


def test_a_transport_resumed_in_time_is_not_aborted():
    h = Harness(_hello, send_timeout=10, idle_timeout=100)
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(5):  # paused and resumed, again and again: the client reads, slowly
        h.session.pauseProducing()
        h.advance(8)
        h.session.resumeProducing()
    assert not h.transport.disconnecting


# -- over real sockets ------------------------------------------------------------------------

def test_a_client_not_reading_a_streamed_response_frees_its_worker(serve):
    server = serve("apps:big", "-t", "1", "--send-timeout", "1", "--access-log", "off")
    sock = _never_reading(server.port, "/?size=%d" % OUT_BYTES)
    try:
        # The only worker is blocked writing to that client; once the timeout closes the
        # connection it serves again.
        server.wait_for_output(r"has read nothing of its response for 1 s", 5)
        started = time.monotonic()
        assert server.get("/?size=10", timeout=5).body == bytes(range(10))
        assert time.monotonic() - started < 2
        assert _closed_by_server(sock, 5)
    finally:
        sock.close()


def test_a_client_not_reading_a_file_is_closed(serve, tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(OUT_BYTES)  # sparse: no 50 MB written to the disk
    server = serve("file_apps:app", "--send-timeout", "1", "--access-log", "off")
    pid = server.proc.pid
    before = len(os.listdir("/proc/%d/fd" % pid))
    sock = _never_reading(server.port, "/file?path=%s&cl=size" % path)
    try:
        server.wait_for_output(r"has read nothing of its response for 1 s", 5)
        assert _closed_by_server(sock, 5)
        assert wait_for(lambda: len(os.listdir("/proc/%d/fd" % pid)) <= before, 3)
    finally:
        sock.close()


def test_a_client_reading_slowly_gets_the_whole_response(serve):
    size = 1 << 20
    server = serve("apps:big", "-t", "1", "--send-timeout", "0.5", "--access-log", "off")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", server.port))
    got = bytearray()
    done = threading.Event()
    try:
        sock.sendall(b"GET /?size=%d&cl=1 HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        sock.settimeout(5)
        started = time.monotonic()
        while not done.is_set():
            data = sock.recv(64 << 10)  # 64 KiB ten times a second: ~1.6 s in all
            if not data:
                break
            got += data
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            if len(body) >= size:
                done.set()
            time.sleep(0.1)
        assert done.is_set(), "the response was cut short (%d bytes)" % len(got)
        assert time.monotonic() - started > 1.0  # twice send_timeout, in all
        assert "has read nothing" not in server.output()
    finally:
        sock.close()
