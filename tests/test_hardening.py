"""
Regression tests for defects found by driving the server from outside, as hostile and
careless clients do: each over a real socket against the real server process.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import rawhttp
from conftest import wait_for
from rawhttp import request

pytestmark = pytest.mark.timeout(60)


def fd_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def settled_fd_count(pid: int) -> int:
    """The descriptor count once connections just closed are gone (bounded wait)."""
    counts = [fd_count(pid)]
    for _ in range(40):
        time.sleep(0.05)
        counts.append(fd_count(pid))
        if counts[-1] == counts[-2] == counts[-3 if len(counts) > 2 else -2]:
            break
    return counts[-1]


# -- an aborted streamed upload ends its connection ---------------------------------------

@pytest.mark.parametrize("how", ["close", "half-close"])
def test_aborted_streamed_uploads_leave_no_connection_behind(serve, how):
    """20 clients start a 10 MB upload the app streams, send 1 KiB and go away: the
    server lets go of every socket at once (no CLOSE_WAIT until a timeout, or forever)."""
    s = serve("apps:app", "-t", "4", "--read-timeout", "30", "--input-buffer", "64K")
    pid = s.proc.pid
    s.get("/")
    before = settled_fd_count(pid)
    head = request("POST", "/discard", [("Content-Length", "10000000")])
    socks = []
    for _ in range(20):
        c = socket.create_connection((s.host, s.port), timeout=5)
        c.sendall(head + b"x" * 1024)
        socks.append(c)
    assert wait_for(lambda: fd_count(pid) >= before + 20, 5)
    for c in socks:
        if how == "close":
            c.close()
        else:
            c.shutdown(socket.SHUT_WR)
    assert wait_for(lambda: fd_count(pid) <= before, 3), (
        "%d descriptors open, %d before the uploads" % (fd_count(pid), before))
    for c in socks:
        c.close()
    assert s.get("/").status == 200
    # And the drain does not wait for them: SIGTERM ends the server at once.
    started = time.monotonic()
    s.stop(grace=10)
    assert time.monotonic() - started < 3


# -- the body timer measures the client's silence, not the server's pause -------------------

def _upload(port: int, size: int, results: list, index: int) -> None:
    try:
        with rawhttp.connect(port, timeout=30) as c:
            c.send(request("POST", "/discard?delay=0.01", [("Content-Length", str(size))]))
            block = b"u" * 65536
            left = size
            while left > 0:
                n = min(left, len(block))
                c.send(block[:n])
                left -= n
            r = c.read_response(timeout=30)
            results[index] = (r.status, r.body)
    except Exception as e:  # reported by the test
        results[index] = ("error", repr(e))


def test_uploads_paused_by_the_server_get_no_408(serve):
    """One worker, two full-speed 6 MB uploads to an app that reads slowly (about 1.2 s
    each): the second waits paused behind the first far longer than read_timeout, and
    neither gets 408: the client never went silent, the server stopped reading."""
    s = serve("apps:app", "-t", "1", "--read-timeout", "0.5", "--input-buffer", "256K")
    size = 6 << 20
    results: list = [None, None]
    threads = [threading.Thread(target=_upload, args=(s.port, size, results, i))
               for i in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert time.monotonic() - started > 1.5  # the pause really outlasted read_timeout
    assert results == [(200, b"%d" % size)] * 2


def test_a_silent_upload_still_gets_408(serve):
    s = serve("apps:app", "-t", "1", "--read-timeout", "0.5")
    with s.connect() as c:
        c.send(request("POST", "/discard", [("Content-Length", "100000")]) + b"x" * 1000)
        r = c.read_response(timeout=5)
        assert r.status == 408


# -- every head is bounded, wherever it starts --------------------------------------------

@pytest.mark.parametrize("where", ["first", "pipelined", "after-body", "after-keep-alive"])
def test_huge_header_value_is_431_wherever_the_head_starts(serve, where):
    """With max_header_bytes 1024, a 4 MiB header value is refused with 431, whether its
    head is the first on the connection or starts in the same read as an earlier request
    (it used to go uncounted there, whatever its size)."""
    s = serve("apps:app", "--max-header-bytes", "1024")
    ok = request("GET", "/")
    prefix = {"first": b"", "pipelined": ok,
              "after-body": request("POST", "/echo", body=b"abc")}.get(where, b"")
    with s.connect(timeout=10) as c:
        if where == "after-keep-alive":
            c.send(ok)
            assert c.read_response().status == 200
        c.send(prefix + b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        value = b"v" * 65536
        sent = 0
        statuses = []
        while sent < 4 << 20:
            if not c.try_send(value):
                break  # the server closed: its answer is waiting
            sent += len(value)
        if prefix:
            statuses.append(c.read_response().status)
        statuses.append(c.read_response().status)
    assert statuses[-1] == 431
    assert statuses[:-1] == [200] * (len(statuses) - 1)


def test_head_sent_a_byte_at_a_time_is_bounded(serve):
    s = serve("apps:app", "--max-header-bytes", "2048")
    with s.connect(timeout=10) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX: ")
        for _ in range(3000):
            if not c.try_send(b"a"):
                break
        assert c.read_response().status == 431


# -- a refusal queued behind requests in flight survives the client's half-close ----------

def test_refusal_behind_requests_in_flight_is_sent_after_half_close(serve):
    s = serve("apps:app", "-t", "2")
    with s.connect() as c:
        c.send(request("GET", "/sleep?t=0.3") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
        c.shutdown_write()
        first = c.read_response()
        second = c.read_response()
        assert (first.status, second.status) == (200, 400)
        assert c.closed()


def test_pipelined_requests_after_half_close_are_all_answered(serve):
    s = serve("apps:app", "--max-pipeline", "2")
    with s.connect() as c:
        c.send(b"".join(request("GET", "/sleep?t=0.01&i=%d" % i) for i in range(10)))
        c.shutdown_write()
        bodies = [c.read_response().body for _ in range(10)]
        assert bodies == [b"slept /sleep?t=0.01&i=%d" % i for i in range(10)]
        assert c.closed()


# -- HEAD tells no length it does not know ------------------------------------------------

def test_head_of_a_streamed_flask_route_has_no_content_length(serve):
    """werkzeug answers HEAD with an empty body; the server must not turn that into
    Content-Length: 0 when the GET streams (RFC 9110 9.3.2, 8.6)."""
    pytest.importorskip("flask")
    s = serve("flask_apps:app")
    get = s.get("/stream")
    assert get.status == 200 and get.body == b"0\n1\n2\n" and not get.has("content-length")
    head = s.get("/stream", method="HEAD")
    assert head.status == 200 and not head.has("content-length"), head
    # A route whose length is known keeps it on HEAD.
    head = s.get("/fixed", method="HEAD")
    assert head.header("content-length") == "5"


# -- the request line --------------------------------------------------------------------

@pytest.mark.parametrize("line,status", [
    (b"GET * HTTP/1.1", 400),  # the asterisk form is for OPTIONS only (RFC 9112 3.2.4)
    (b"G ET /x HTTP/1.1", 400),  # malformed: not an unknown method
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", 400),  # a PROXY line on a plain port
    (b"GET /x HTTP/1.1 extra", 400),
    (b"GET  /x HTTP/1.1", 400),
    (b"GET /a#frag HTTP/1.1", 400),  # no fragment in a request target (RFC 9112 3.2)
    (b"BREW /pot HTTP/1.1", 501),  # well-formed, a method we do not implement
    (b"GET / HTTP/1.2", 505),
])
def test_request_line_edge_cases(serve, line, status):
    s = serve("apps:app")
    with s.connect() as c:
        c.send(line + b"\r\nHost: x\r\n\r\n")
        assert c.read_response().status == status
        assert c.closed()


def test_a_refused_connection_its_client_closed_ends_at_once(serve):
    """After a refusal the server half-closes and lingers, reading what the client may still
    send; once the client has closed too, the connection is over. It held the socket, and
    the drain, for the whole linger time."""
    s = serve("apps:app", "--linger", "5")
    with s.connect() as c:
        c.send(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 400
        assert c.closed()
    time.sleep(0.2)
    started = time.monotonic()
    assert s.stop() == 0
    assert time.monotonic() - started < 2.0


def test_options_asterisk_reaches_the_app(serve):
    s = serve("apps:app")
    with s.connect() as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 404 and r.body == b"not found: *"


def test_http10_chunked_request_is_refused(serve):
    """RFC 9112 6.1: Transfer-Encoding in a 1.0 request is a framing fault (400, close)."""
    s = serve("apps:app")
    with s.connect() as c:
        c.send(b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
        assert c.read_response().status == 400
        assert c.closed()


def test_requests_pipelined_after_connection_close_are_not_processed(serve):
    """RFC 9112 9.6: after a request with Connection: close, nothing more is processed;
    the response still arrives whole (the server lingers instead of resetting)."""
    s = serve("apps:app")
    with s.connect() as c:
        c.send(request("GET", "/", [("Connection", "close")])
               + b"".join(request("POST", "/echo", body=b"x" * 5000) for _ in range(20)))
        r = c.read_response()
        assert r.status == 200 and r.body == b"Hello, World!\n"
        assert c.read_until_close(5) == b""
