"""
Properties that must hold for any input, found by generating it (hypothesis) rather
than by thinking of cases:

* split invariance: a sequence of requests, valid and invalid, pipelined on one
  connection, gets exactly the same responses and the same application calls however
  its bytes are cut into reads (the request reader alone, and the whole session);
* round trip: a valid request's method, target, header fields and body reach environ
  exactly as PEP 3333 says.

Each property has a fixed example budget, so the file runs in a bounded time.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Harness
from yimmo_twisted.http1 import END, NEED_DATA, Head, HTTPError, Limits, RequestReader

pytestmark = pytest.mark.timeout(120)

BUDGET = settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TCHAR = "!#$%&'*+.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7f)) + "".join(chr(c) for c in range(0x80, 0x100))

# -- requests ----------------------------------------------------------------------------

tokens = st.text(alphabet=TCHAR.replace("_", ""), min_size=1, max_size=10)
# Field names that change nothing about framing (X-...), values as a client may send them:
# visible latin-1 with inner spaces and tabs, no leading or trailing whitespace.
# A few fixed names too, so that repeats (joined with ", ") come up often.
field_names = st.one_of(st.sampled_from(["X-A", "x-a", "X-Repeat"]),
                        tokens.map(lambda t: "X-" + t))
field_values = st.builds(
    lambda first, rest: first + rest,
    st.text(alphabet=VCHAR, min_size=1, max_size=1),
    st.text(alphabet=VCHAR + " \t", max_size=30)).map(lambda v: v.rstrip(" \t"))
segment = st.lists(st.one_of(st.text(alphabet=UNRESERVED, min_size=1, max_size=6),
                             st.binary(min_size=1, max_size=3).map(
                                 lambda b: "".join("%%%02X" % c for c in b))),
                   max_size=4).map("".join)
paths = st.lists(segment, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
queries = st.one_of(st.just(""), st.text(alphabet=UNRESERVED + "/?%", max_size=20).filter(
    lambda q: not re.search(r"%(?![0-9A-Fa-f]{2})", q)))
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


@st.composite
def valid_requests(draw):
    """(bytes, what the app must see) for one well-formed request."""
    method = draw(methods)
    path = draw(paths)
    query = draw(queries)
    target = path + ("?" + query if query else "")
    fields = draw(st.lists(st.tuples(field_names, field_values), max_size=6))
    # Optional whitespace around each value (RFC 9112 5: not part of it).
    ows = st.sampled_from(["", " ", "\t", "  \t"])
    wire_fields = [(n, draw(ows) + v + draw(ows)) for n, v in fields]
    body = draw(st.binary(max_size=600))
    framing = draw(st.sampled_from(["length", "chunked"])) if body else "none"
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: example.test"]
    lines += ["%s:%s" % f for f in wire_fields]
    if framing == "length":
        lines.append("Content-Length: %d" % len(body))
        wire = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(1, len(body)), max_size=4, unique=True)))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        ext = draw(st.sampled_from(["", ";a=b", " ; name", ';q="x y"']))
        wire = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in pieces)
        wire += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: t\r\n"])) + b"\r\n"
    else:
        wire = b""
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    expected = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "body": body,
        "headers": _joined(fields),
    }
    return head + wire, expected


def _joined(fields):
    """PEP 3333 / RFC 9110 5.3: repeated fields are one value joined with ", "."""
    out: dict = {}
    for name, value in fields:
        key = "HTTP_" + name.upper().replace("-", "_")
        out[key] = out[key] + ", " + value if key in out else value
    return out


# Requests that must be refused, each a different kind of fault.
INVALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"G ET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
]


@st.composite
def connections(draw):
    """Up to five requests on one connection, perhaps ending in an invalid one, and
    where the stream is cut into reads."""
    requests = draw(st.lists(valid_requests(), min_size=1, max_size=4))
    data = b"".join(r[0] for r in requests)
    if draw(st.booleans()):
        data += draw(st.sampled_from(INVALID))
        data += b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"  # never reaches the app
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=12, unique=True))
    return data, sorted(cuts), [r[1] for r in requests]


def pieces(data: bytes, cuts) -> list:
    bounds = [0] + [c for c in cuts if 0 < c < len(data)] + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# -- the reader alone -----------------------------------------------------------------------

def reader_events(chunks, limits=None) -> list:
    """The reader's events for ``chunks``, body bytes merged, heads as tuples."""
    reader = RequestReader(limits or Limits())
    out: list = []
    for data in chunks:
        reader.feed(data)
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                break
            if type(event) is bytes:
                if out and type(out[-1]) is bytes:
                    out[-1] += event
                else:
                    out.append(event)
            elif type(event) is Head:
                out.append(("head", event.method, event.target, tuple(event.headers),
                            event.keep_alive, event.length, event.chunked))
            elif event is END:
                out.append("end")
            else:
                assert isinstance(event, HTTPError)
                out.append(("refused", event.status))
                return out
    return out


@BUDGET
@given(connections())
def test_reader_split_invariance(conn):
    data, cuts, _ = conn
    assert reader_events(pieces(data, cuts)) == reader_events([data])


@BUDGET
@given(connections())
def test_reader_byte_by_byte(conn):
    data, _, _ = conn
    whole = reader_events([data])
    assert reader_events([data[i:i + 1] for i in range(len(data))]) == whole
    if data.endswith(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"):
        assert whole[-1][0] == "refused"  # and nothing after the fault was read


# -- the session -----------------------------------------------------------------------------

_DATE = re.compile(rb"\r\nDate: [^\r]*")


def recorder():
    calls: list = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        calls.append({
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ["PATH_INFO"],
            "QUERY_STRING": environ["QUERY_STRING"],
            "body": body,
            "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_X_")},
        })
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d:%s" % (len(calls), environ["PATH_INFO"].encode("latin-1")), body[:10]]
    return app, calls


def session_run(chunks):
    app, calls = recorder()
    h = Harness(app)
    out = b"".join(h.feed(data) for data in chunks)
    return _DATE.sub(b"", out), calls, bool(h.transport.disconnecting)


@BUDGET
@given(connections())
def test_session_split_invariance(conn):
    data, cuts, _ = conn
    assert session_run(pieces(data, cuts)) == session_run([data])


@BUDGET
@given(connections())
def test_round_trip_into_environ(conn):
    data, cuts, expected = conn
    out, calls, closed = session_run(pieces(data, cuts))
    assert calls == expected
    assert out.count(b"HTTP/1.1 200 OK\r\n") == len(expected)
    if data.endswith(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"):
        assert closed and re.search(rb"HTTP/1.1 (4\d\d|501) ", out)


def test_bare_lf_head_before_a_good_one_is_refused_alike_however_cut():
    """Found by the property above: a bare-LF head followed by a CRLF one was read as one
    head (to the later CRLF CRLF) when it came in one read, giving another 400 reason."""
    data = (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" b"GET / HTTP/1.1\nHost: a\n\n"
            b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    whole = reader_events([data])
    assert whole[-1] == ("refused", 400)
    for cut in range(1, len(data)):
        assert reader_events(pieces(data, [cut])) == whole
        assert session_run(pieces(data, [cut])) == session_run([data])
