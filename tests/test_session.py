"""
The session with bytes alone: a real HTTPSession and Server on a StringTransport, the
app run on the test's own thread (the worker pool is not started; its queue is drained
here), so each test is bytes in, bytes out, with no socket and no timing.
"""

from __future__ import annotations

import re

import pytest
from harness import Harness

pytestmark = pytest.mark.timeout(20)


def hello(environ, start_response):
    body = ("%s %s" % (environ["REQUEST_METHOD"], environ["PATH_INFO"])).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def echo(environ, start_response):
    data = environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [data]


def statuses(out: bytes) -> list:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d\d\d) [A-Z]", out)]


def test_one_request_one_response():
    h = Harness(hello)
    out = h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 6\r\n" in out
    assert out.endswith(b"\r\n\r\nGET /a")
    assert not h.transport.disconnecting


def test_pipelined_requests_answered_in_order():
    h = Harness(hello)
    out = h.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
    assert re.findall(rb"GET /(\d)", out) == [b"0", b"1", b"2", b"3", b"4"]
    assert statuses(out) == [200] * 5


def test_request_split_byte_by_byte():
    h = Harness(echo)
    request = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    out = b"".join(h.feed(request[i:i + 1]) for i in range(len(request)))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")


def test_chunked_body():
    h = Harness(echo)
    out = h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert out.endswith(b"\r\n\r\nabcde")


def test_bad_request_after_good_one_is_refused_and_nothing_after_it_runs():
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    h = Harness(app)
    out = h.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /2 HTTP/1.1\r\nHost : x\r\n\r\n"
                 b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(out) == [200, 400]
    assert seen == ["/1"]
    assert b"Connection: close\r\n" in out.split(b"GET /1", 1)[1]
    assert h.transport.disconnecting


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"\x01\x02 / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
])
def test_refusals(request_bytes, status):
    h = Harness(hello)
    out = h.feed(request_bytes)
    assert statuses(out) == [status]
    assert h.transport.disconnecting


def test_limits():
    h = Harness(hello, max_request_line=20)
    assert statuses(h.feed(b"GET /" + b"a" * 30 + b" HTTP/1.1\r\nHost: x\r\n\r\n")) == [414]
    h = Harness(hello, max_headers=2)
    assert statuses(h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n")) == [431]
    h = Harness(hello, max_header_bytes=100)
    assert statuses(h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 200 + b"\r\n\r\n")) == [431]
    h = Harness(echo, max_body_size=4)
    assert statuses(h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")) == [413]


def test_chunked_body_over_the_limit_is_413():
    h = Harness(echo, max_body_size=4)
    out = h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert statuses(out) == [413]
    assert h.transport.disconnecting


def test_underscore_headers_dropped_and_repeats_joined():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return hello(environ, start_response)

    h = Harness(app)
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n"
           b"X-Forwarded-For: 1.2.3.4\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert seen["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert seen["HTTP_ACCEPT"] == "a, b"


def test_http10_closes_without_keep_alive_and_keeps_it_when_asked():
    h = Harness(hello)
    out = h.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert b"\r\nContent-Length: 5\r\n" in out and b"\r\nConnection: close\r\n" in out
    assert h.transport.disconnecting
    h = Harness(hello)
    out = h.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in out
    assert not h.transport.disconnecting


def test_timeouts_by_phase():
    h = Harness(hello, idle_timeout=5, header_timeout=10)
    assert h.advance(4.9) == b"" and not h.transport.disconnecting
    assert h.advance(0.2) == b"" and h.transport.disconnecting  # idle: closed quietly
    h = Harness(hello, idle_timeout=5, header_timeout=10)
    h.advance(4)
    h.feed(b"GET / HTTP/1.1\r\nHo")  # the head's timer runs from its first byte
    assert h.advance(9.9) == b""
    assert statuses(h.advance(0.2)) == [408]


def test_a_head_in_pieces_keeps_the_timer_of_its_first_byte():
    h = Harness(hello, header_timeout=10)
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"A: b\r\n"):
        h.feed(piece)
        h.advance(3)
    assert statuses(h.advance(1.1)) == [408]


def test_body_timer_is_the_clients_silence():
    h = Harness(echo, read_timeout=5)
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    h.advance(4)
    h.feed(b"def")  # each read starts the timer again
    assert h.advance(4.9) == b""
    assert statuses(h.advance(0.2)) == [408]


def test_no_body_timer_while_the_server_has_paused_reading():
    """The app reads slower than the client sends: reading pauses, and however long the
    pause, the client is not timed out for it."""

    def slow(environ, start_response):
        data = environ["wsgi.input"].read(40)
        start_response("200 OK", [])
        return [b"%d" % len(data)]

    h = Harness(slow, read_timeout=5, input_buffer=16)
    h.session.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                           + b"x" * 50)
    assert h.transport.producerState == "paused"
    h.clock.advance(60)
    h.server._check_timeouts()
    assert h.transport.value() == b""  # no 408 while paused
    out = h.feed(b"x" * 50)  # the body is all in: the app runs and answers
    assert statuses(out) == [200] and out.endswith(b"\r\n\r\n40")


LIMITS = {
    # setting, its value, a request over it, the status it gets
    "target": ({"max_request_line": 64},
               b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "header bytes": ({"max_header_bytes": 256},
                     b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 300 + b"\r\n\r\n", 431),
    "header count": ({"max_headers": 5},
                     b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 5 + b"\r\n", 431),
    "body length": ({"max_body_size": 10},
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"b" * 11,
                    413),
    "chunked body": ({"max_body_size": 10},
                     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\nbbbbbb\r\n5\r\nbbbbb\r\n0\r\n\r\n", 413),
    "trailers": ({"max_header_bytes": 256},
                 b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"1\r\nb\r\n0\r\nX: " + b"v" * 300 + b"\r\n\r\n", 431),
}
OK = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
CONTINUED = b"POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"


@pytest.mark.parametrize("where", ["first", "pipelined", "after-keep-alive",
                                   "after-100-continue", "after-body-same-read"])
@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_limits_everywhere(limit, where):
    """Each limit holds for the first request, a pipelined one, one after keep-alive,
    one after a 100-continue, and one that starts in the read that ended a body."""
    settings, over, status = LIMITS[limit]
    h = Harness(echo, **settings)
    if where == "first":
        out = h.feed(over)
    elif where == "pipelined":
        out = h.feed(OK + over)
    elif where == "after-keep-alive":
        out = h.feed(OK)
        assert statuses(out) == [200]
        out += h.feed(over)
    elif where == "after-100-continue":
        out = h.feed(CONTINUED)
        out += h.feed(b"hello")
        assert b"100 Continue" in out and out.endswith(b"hello")
        out += h.feed(over)
    else:
        out = h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
        out += h.feed(b"abc" + over)
    codes = [c for c in statuses(out) if c != 100]
    assert codes[-1] == status, out
    assert all(c == 200 for c in codes[:-1]), out
    assert h.transport.disconnecting


def test_a_body_read_with_its_head_is_taken_whole():
    from yimmo_twisted.http1 import NEED_DATA, Head, Limits, RequestReader
    reader = RequestReader(Limits())
    reader.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
    assert type(reader.next_event()) is Head
    assert reader.body_here() is None  # not all of it yet: events bring it
    assert reader.next_event() == b"hel"
    reader.feed(b"lo")
    assert reader.body_here() == b"lo" and not reader.in_body
    reader.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n"
                b"Host: x\r\nConnection: close\r\n\r\n")
    assert type(reader.next_event()) is Head
    assert reader.body_here() == b"abc"
    head = reader.next_event()
    assert type(head) is Head and head.method == "GET" and not head.keep_alive
    assert reader.body_here() is None and reader.next_event() is NEED_DATA

    # The session: the exchange goes to a worker with its body complete, in one piece.
    h = Harness(echo)
    h.session.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
                           b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nmo")
    queued = [e for w in h.server.pool.workers for e in w.queue] + h.server.pool._batch
    assert len(queued) == 1 and queued[0].body.complete
    assert list(queued[0].body._chunks) == [b"body"]
    out = h.feed(b"re")
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.endswith(b"\r\n\r\nmore")


def test_an_exchange_leaves_no_garbage_for_the_collector():
    # The environ holds wsgi.input, which holds the exchange, which holds the environ: the
    # stream lets go of the exchange once it is over, so refcounting frees each request
    # (a cycle per request kept the collector busy under load).
    import gc
    h = Harness(echo)
    requests = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    h.feed(requests)  # first-use caches filled
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            assert h.feed(requests).count(b"HTTP/1.1 200 OK") == 2
        assert gc.collect() == 0
    finally:
        gc.enable()
