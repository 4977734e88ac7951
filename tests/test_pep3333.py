"""
PEP 3333 conformance, black-box: the real server (a subprocess) over real sockets on
127.0.0.1, with the applications of tests/pep_apps.py.

Covered: the environ (every required key and its exact value), wsgi.input over
Content-Length and chunked bodies, streaming a large upload with bounded server memory,
start_response validation as seen by the client, the exc_info rules, the write()
callable, when the head is sent, application errors before and after the head, close()
of the response iterable in every ending, wsgi.file_wrapper, backpressure from a client
that does not read, an application under wsgiref.validate, and a Flask application.

The tests speak HTTP/1.1 through ``H1Server`` (what the fixtures give): the few things
whose wire differs between protocols (an aborted response, a client that goes away, how
a response of unknown length is framed) are its methods and attributes, so that
tests/test_pep3333_h2.py runs these same tests over HTTP/2 with its own server object.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
import uuid

import pytest

import pep_apps
import rawhttp
from conftest import start_server

pytestmark = pytest.mark.timeout(30)

OUTPUT_BUFFER = 256 * 1024


# -- fixtures and helpers ------------------------------------------------------------------


class H1Server:
    """
    A server under test (a conftest.ServerProcess, whose attributes it passes on) as the
    tests speak to it over HTTP/1.1: its connections are rawhttp.Connection objects.
    tests/test_pep3333_h2.py has the HTTP/2 counterpart, with the same interface.
    """

    protocol = "HTTP/1.1"  # SERVER_PROTOCOL, and Response.version
    unsized_framing = "chunked"  # Response.framing of a body of unknown length
    connection_fields = True  # Connection: reaches the app as HTTP_CONNECTION

    def __init__(self, process) -> None:
        self.process = process

    def __getattr__(self, name: str):
        return getattr(self.process, name)

    def connect(self, timeout: float = rawhttp.DEFAULT_TIMEOUT,
                rcvbuf=None) -> rawhttp.Connection:
        return rawhttp.connect(self.process.port, self.process.host, timeout, rcvbuf)

    def read_aborted(self, c, first: bytes, timeout: float = 5.0) -> bytes:
        """
        Read a response that the server aborts after its head (``first``: the body data
        the app gave before failing): the connection closes before the response is
        complete.  Returns what arrived.
        """
        with pytest.raises(rawhttp.Closed) as ei:
            c.read_response(timeout=timeout)
        assert c.eof
        assert_aborted(ei.value.partial, first)
        return ei.value.partial

    def hang_up(self, c, how: str) -> None:
        """The client goes away: "close" with a FIN, "reset" with a reset (SO_LINGER 0)."""
        if how == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                              b"\x00\x00\x00\x00")
        c.close()


@pytest.fixture
def serve(serve):
    """conftest's ``serve``, its servers as H1Server objects."""
    def start(*args, **kw) -> H1Server:
        return H1Server(serve(*args, **kw))
    return start


@pytest.fixture(scope="module")
def server():
    """One server for most tests: 4 workers, 256 KiB input and output buffers."""
    s = start_server("pep_apps:app", "-t", "4", "--output-buffer", "256K",
                     "--input-buffer", "256K")
    yield H1Server(s)
    s.stop()


def new_key() -> str:
    return uuid.uuid4().hex[:12]


def request(server, method="GET", target="/", headers=None, body=b"", version="HTTP/1.1",
            timeout=5.0) -> rawhttp.Response:
    """One request on a fresh connection (Connection: close), its response."""
    headers = list(headers or [])
    if not any(k.lower() == "connection" for k, _ in headers):
        headers.append(("Connection", "close"))
    with server.connect(timeout) as c:
        c.send(rawhttp.request(method, target, headers, body, version))
        return c.read_response(head_request=(method == "HEAD"), timeout=timeout)


def environ_of(server, target="/env", **kw) -> dict:
    r = request(server, target=target, **kw)
    assert r.status == 200, r
    return r.json()["environ"]


def stats(server, key) -> dict:
    r = request(server, target="/stats?key=" + key)
    assert r.status == 200, r
    return r.json()


def wait_stats(server, key, predicate, timeout=3.0) -> dict:
    """Poll /stats until ``predicate(stats)``; returns the last stats either way."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(server, key)
        if predicate(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def dechunk(data: bytes) -> bytes:
    """A complete chunked body (no trailers), index-based so that it is fast on big data."""
    out = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            assert data[pos:] == b"\r\n", "bad end of chunked body: %r" % data[pos:pos + 50]
            return b"".join(out)
        out.append(data[pos:pos + size])
        assert data[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2


def expected_stream(size: int, block: int) -> bytes:
    parts = []
    index = 0
    while size > 0:
        n = min(block, size)
        parts.append(pep_apps.block_bytes(index, n))
        index += 1
        size -= n
    return b"".join(parts)


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def tcp_wmem_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def assert_clean_head(raw: bytes, forbidden=(b"X-Injected", b"evil")) -> None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    for bad in forbidden:
        assert bad not in head, "%r reached the wire: %r" % (bad, raw[:500])
    for byte in (b"\x00", b"\r", b"\n"):
        for line in head.split(b"\r\n"):
            assert byte not in line, "control byte %r in head line %r" % (byte, line)
    assert b"\xe2\x82\xac" not in raw  # the euro sign in UTF-8


def assert_aborted(partial: bytes, first: bytes) -> None:
    """A response cut off by the server: a prefix of the 200 response, never complete."""
    if not partial:
        return
    assert partial.startswith(b"HTTP/1.1 200 "), partial[:200]
    head, sep, body = partial.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    if body:
        assert first.startswith(body[len(b"%x\r\n" % len(first)):][:len(first)]) or \
            first in body, body[:200]
    assert not body.endswith(b"0\r\n\r\n"), "the aborted response looks complete"
    assert b"HTTP/1.1 500" not in partial


# -- environ ---------------------------------------------------------------------------------


def test_environ_required_keys_and_values(server):
    with server.connect() as c:
        client_port = c.sock.getsockname()[1]
        c.send(rawhttp.request("GET", "/env?a=1&b=%20x", [("Connection", "close")],
                               host="example.test:8080"))
        r = c.read_response()
    assert r.status == 200
    env = r.json()["environ"]
    probes = r.json()["probes"]
    assert env["REQUEST_METHOD"] == ["str", "GET"]
    assert env["SCRIPT_NAME"] == ["str", ""]
    assert env["PATH_INFO"] == ["str", "/env"]
    assert env["QUERY_STRING"] == ["str", "a=1&b=%20x"]
    assert env["SERVER_NAME"] == ["str", "127.0.0.1"]
    assert env["SERVER_PORT"] == ["str", str(server.port)]
    assert env["SERVER_PROTOCOL"] == ["str", server.protocol]
    assert env["REMOTE_ADDR"] == ["str", "127.0.0.1"]
    assert env["REMOTE_PORT"] == ["str", str(client_port)]
    assert env["HTTP_HOST"] == ["str", "example.test:8080"]
    assert env["wsgi.version"] == ["tuple", "(1, 0)"]
    assert env["wsgi.url_scheme"] == ["str", "http"]
    assert env["wsgi.multithread"] == ["bool", "True"]  # -t 4
    assert env["wsgi.multiprocess"] == ["bool", "False"]
    assert env["wsgi.run_once"] == ["bool", "False"]
    assert env["wsgi.input_terminated"] == ["bool", "True"]
    assert "wsgi.input" in env and "wsgi.errors" in env and "wsgi.file_wrapper" in env
    assert probes["input_methods"] == ["read", "readline", "readlines", "__iter__"]
    assert probes["errors_methods"] == ["write", "writelines", "flush"]
    assert probes["file_wrapper_callable"] is True
    assert probes["key_types"] == ["str"]
    # Every CGI-style value is a native str (PEP 3333: "native strings").
    for key, (typ, value) in env.items():
        if not key.startswith("wsgi."):
            assert typ == "str", (key, typ, value)
    # A GET without a body: no CONTENT_TYPE / CONTENT_LENGTH, or empty ones.
    assert env.get("CONTENT_TYPE", ["str", ""]) == ["str", ""]
    assert env.get("CONTENT_LENGTH", ["str", ""]) == ["str", ""]


def test_environ_multithread_false_with_one_thread(serve):
    s = serve("pep_apps:app", "-t", "1")
    env = environ_of(s)
    assert env["wsgi.multithread"] == ["bool", "False"]
    assert env["wsgi.multiprocess"] == ["bool", "False"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_environ_request_method(server, method):
    env = environ_of(server, method=method, body=b"x" if method in ("POST", "PUT") else b"")
    assert env["REQUEST_METHOD"] == ["str", method]


@pytest.mark.parametrize("target,path", [
    ("/caf%C3%A9", "/caf\xc3\xa9"),  # UTF-8 bytes as latin-1 characters: 'cafÃ©'
    ("/a%20b", "/a b"),
    ("/x%2Fy/z", "/x/y/z"),
    ("/%E2%82%AC", "/\xe2\x82\xac"),
    ("/%ff%00q", "/\xff\x00q"),
    ("/plain/path", "/plain/path"),
    ("/semi;colon", "/semi;colon"),
    ("/pct%25", "/pct%"),
])
def test_environ_path_info_decoded_as_latin1(server, target, path):
    env = environ_of(server, target=target)
    assert env["PATH_INFO"] == ["str", path]
    assert env["SCRIPT_NAME"] == ["str", ""]


def test_environ_path_info_cafe_example(server):
    env = environ_of(server, target="/caf%C3%A9")
    assert env["PATH_INFO"][1] == "/cafÃ©"
    assert env["PATH_INFO"][1].encode("latin-1").decode("utf-8") == "/café"


@pytest.mark.parametrize("target,query", [
    ("/q?a=%20b&c=d+e&caf%C3%A9", "a=%20b&c=d+e&caf%C3%A9"),
    ("/q?", ""),
    ("/q", ""),
    ("/q?x=1?y=2", "x=1?y=2"),
    ("/caf%C3%A9?k=%C3%A9", "k=%C3%A9"),
])
def test_environ_query_string_raw(server, target, query):
    env = environ_of(server, target=target)
    assert env["QUERY_STRING"] == ["str", query]


def test_environ_absolute_form_target(server):
    env = environ_of(server, target="http://example.test/abs%20path?q=1")
    assert env["PATH_INFO"] == ["str", "/abs path"]
    assert env["QUERY_STRING"] == ["str", "q=1"]


def test_environ_content_type_and_length_without_http_prefix(server):
    body = b"a=1&b=2"
    r = request(server, "POST", "/env?read=1",
                [("Content-Type", "application/x-www-form-urlencoded; charset=latin-1")], body)
    assert r.status == 200
    data = r.json()
    env = data["environ"]
    assert env["CONTENT_TYPE"] == ["str", "application/x-www-form-urlencoded; charset=latin-1"]
    assert env["CONTENT_LENGTH"] == ["str", "7"]
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert data["probes"]["body"] == "a=1&b=2"


def test_environ_http_headers(server):
    env = environ_of(server, headers=[
        ("X-Custom-Header", "Some Value"), ("x-lower-case", "v2"), ("User-Agent", "pep-test/1"),
        ("Accept", "text/html"), ("X-Latin", "caf\xe9"),
    ])
    assert env["HTTP_X_CUSTOM_HEADER"] == ["str", "Some Value"]
    assert env["HTTP_X_LOWER_CASE"] == ["str", "v2"]
    assert env["HTTP_USER_AGENT"] == ["str", "pep-test/1"]
    assert env["HTTP_ACCEPT"] == ["str", "text/html"]
    assert env["HTTP_X_LATIN"] == ["str", "caf\xe9"]  # header bytes as latin-1
    if server.connection_fields:
        assert env["HTTP_CONNECTION"] == ["str", "close"]
    else:  # HTTP/2 has no Connection field (RFC 9113 8.2.2)
        assert "HTTP_CONNECTION" not in env


def test_environ_repeated_headers_joined(server):
    env = environ_of(server, headers=[("X-Multi", "a"), ("Accept", "text/plain"),
                                      ("X-Multi", "b"), ("x-multi", "c")])
    assert env["HTTP_X_MULTI"] == ["str", "a, b, c"]


def test_environ_http10(server):
    with server.connect() as c:
        c.send(b"GET /env HTTP/1.0\r\n\r\n")
        r = c.read_response()
    env = r.json()["environ"]
    assert env["SERVER_PROTOCOL"] == ["str", "HTTP/1.0"]
    assert env["SERVER_NAME"] == ["str", "127.0.0.1"]  # no Host: the server's own name
    assert "HTTP_HOST" not in env


def test_environ_is_fresh_for_each_request_on_a_connection(server):
    with server.connect() as c:
        c.send(rawhttp.request("GET", "/env?mutate=1"))
        first = c.read_response().json()["environ"]
        c.send(rawhttp.request("GET", "/env", [("Connection", "close")]))
        second = c.read_response().json()["environ"]
    assert "HTTP_X_LEAKED" not in second
    assert second["SCRIPT_NAME"] == ["str", ""]
    assert second["wsgi.url_scheme"] == ["str", "http"]
    assert second["QUERY_STRING"] == ["str", ""]
    assert second["SERVER_NAME"] == ["str", "127.0.0.1"]
    assert second["REMOTE_PORT"] == first["REMOTE_PORT"]
    # And on a new connection too.
    assert "HTTP_X_LEAKED" not in environ_of(server)


@pytest.mark.parametrize("target,key,value", [
    (b"/env?q=\xc3\xa9", "QUERY_STRING", "q=\xc3\xa9"),
    (b"/caf\xc3\xa9", "PATH_INFO", "/caf\xc3\xa9"),
])
def test_environ_raw_non_ascii_target_is_latin1_or_refused(server, target, key, value):
    """Unencoded bytes > 0x7F in the target: a 400, or passed on as latin-1 characters."""
    with server.connect() as c:
        c.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        r = c.read_response()
    assert r.status in (200, 400), r
    if r.status == 200:
        assert r.json()["environ"][key] == ["str", value]


@pytest.mark.parametrize("clients", [2, 4])
def test_multithread_apps_run_concurrently(server, clients):
    """
    wsgi.multithread is True (-t 4): requests that arrive together to an app that blocks
    (sleeps) must all be running at once, not queued behind one worker.
    """
    spreads = []
    for _ in range(6):
        key = new_key()
        conns = [server.connect() for _ in range(clients)]
        try:
            for c in conns:
                c.send(rawhttp.request("GET", "/sleep-record?t=0.3&key=" + key,
                                       [("Connection", "close")]))
            for c in conns:
                assert c.read_response(timeout=5).status == 200
        finally:
            for c in conns:
                c.close()
        starts = stats(server, key)["starts"]
        assert len(starts) == clients
        spreads.append(max(starts) - min(starts))
    assert max(spreads) < 0.1, "apps started up to %.3f s apart: %s" % (
        max(spreads), ["%.3f" % x for x in spreads])


def test_wsgi_errors_goes_to_the_log(server):
    token = new_key()
    r = request(server, target="/env?err=" + token)
    assert r.status == 200
    server.wait_for_output("wsgi.errors says " + token, 3)
    server.wait_for_output("wsgi.errors lines " + token, 3)


# -- wsgi.input ------------------------------------------------------------------------------

INPUT = (b"first line\n" + b"second\r\n" + b"\n" + b"x" * 100000 + b"\n"
         + bytes(range(256)).replace(b"\n", b"") + b"\n" + b"last line without newline")


def expected_pieces(mode: str, n: int, data: bytes = INPUT):
    f = io.BytesIO(data)
    if mode == "read_n":
        return list(iter(lambda: f.read(n), b""))
    if mode in ("read_all", "read_none", "read_big"):
        return [f.read()]
    if mode == "readline":
        return list(iter(f.readline, b""))
    if mode == "readline_n":
        return list(iter(lambda: f.readline(n), b""))
    if mode in ("readlines", "iter"):
        return f.readlines()
    if mode == "mixed":
        out = [f.read(3), f.readline(), f.readline(), f.readline(4)]
        return out + f.readlines()
    raise ValueError(mode)


def send_chunked(conn, head: bytes, data: bytes, sizes=(1, 7, 100, 4096, 70000), delay=0.002):
    conn.send(head)
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        part = data[pos:pos + size]
        conn.send(b"%x\r\n%b\r\n" % (len(part), part))
        pos += size
        i += 1
        if delay:
            time.sleep(delay)
    conn.send(b"0\r\n\r\n")


INPUT_MODES = [("read_n", 1000), ("read_n", 1), ("read_n", 65536), ("read_all", 0),
               ("read_none", 0), ("read_big", 0), ("readline", 0), ("readline_n", 5),
               ("readline_n", 50000), ("readlines", 0), ("iter", 0), ("mixed", 0)]


@pytest.mark.parametrize("mode,n", INPUT_MODES)
def test_input_content_length(server, mode, n):
    r = request(server, "POST", "/input?mode=%s&n=%d" % (mode, n), body=INPUT, timeout=10)
    assert r.status == 200, r
    data = r.json()
    got = [p.encode("latin-1") for p in data["pieces"]]
    assert b"".join(got) == INPUT
    assert got == expected_pieces(mode, n)
    assert data["after"] == ["", "", "", ""]
    assert data["types"] == ["bytes"]
    assert data["content_length"] == str(len(INPUT))


@pytest.mark.parametrize("mode,n", INPUT_MODES)
def test_input_chunked(server, mode, n):
    head = (b"POST /input?mode=%s&n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % (mode.encode(), n))
    with server.connect(10) as c:
        send_chunked(c, head, INPUT, delay=0.0005)
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    data = r.json()
    got = [p.encode("latin-1") for p in data["pieces"]]
    assert b"".join(got) == INPUT
    assert got == expected_pieces(mode, n)
    assert data["after"] == ["", "", "", ""]
    assert data["content_length"] in (None, "")


@pytest.mark.parametrize("chunked", [False, True])
def test_input_readlines_hint(server, chunked):
    target = "/input?mode=readlines_hint&n=15"
    with server.connect(10) as c:
        if chunked:
            send_chunked(c, b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" % target.encode(), INPUT)
        else:
            c.send(rawhttp.request("POST", target, [("Connection", "close")], INPUT))
        r = c.read_response(timeout=10)
    pieces = [p.encode("latin-1") for p in r.json()["pieces"]]
    sep = pieces.index(b"|")
    # The hint may be honoured or ignored (PEP 3333); the lines and their order may not.
    assert pieces[:sep] + pieces[sep + 1:] == io.BytesIO(INPUT).readlines()


def test_input_chunked_slow_client_streams_to_the_app(server):
    """The app sees the first line of a chunked upload before the client sends the rest."""
    head = (b"POST /input?mode=readline HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with server.connect(10) as c:
        c.send(head + b"6\r\nline1\n\r\n")
        time.sleep(0.3)
        c.send(b"6\r\nline2\n\r\n0\r\n\r\n")
        r = c.read_response()
    assert r.json()["pieces"] == ["line1\n", "line2\n"]


def test_input_never_reads_past_the_body_pipelined(server):
    """read() stops at Content-Length: the next pipelined request is not part of the body."""
    body = b"exactly this body"
    with server.connect() as c:
        c.send(rawhttp.request("POST", "/input?mode=read_all", [], body)
               + rawhttp.request("POST", "/input?mode=read_big", [], body)
               + rawhttp.request("GET", "/env", [("Connection", "close")]))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
    assert r1.json()["pieces"] == [body.decode()]
    assert r1.json()["after"] == ["", "", "", ""]
    assert r2.json()["pieces"] == [body.decode()]
    assert r3.status == 200 and r3.json()["environ"]["REQUEST_METHOD"] == ["str", "GET"]


def test_input_empty_body(server):
    r = request(server, "POST", "/input?mode=read_all", [("Content-Length", "0")])
    assert r.json()["pieces"] == [""]
    r = request(server, "GET", "/input?mode=readlines")
    assert r.json()["pieces"] == []
    assert r.json()["after"] == ["", "", "", ""]


def test_input_expect_100_continue(server):
    body = b"line one\nline two\n"
    with server.connect() as c:
        c.send(b"POST /input?mode=readline HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
               b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = c.read_response(timeout=3)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    assert r.json()["pieces"] == ["line one\n", "line two\n"]


def test_large_upload_streams_with_bounded_memory(serve):
    """
    64 MiB to an app that first stalls 1 s, then reads 64 KiB pieces: with --input-buffer
    256K the server must pause reading from the client, so its memory grows by far less
    than the body (kernel socket buffers are not in the RSS).
    """
    s = serve("pep_apps:app", "-t", "2", "--input-buffer", "256K")
    pid = s.proc.pid
    for _ in range(3):  # warm up: imports, allocator pools
        r = request(s, "POST", "/sink?n=65536", body=os.urandom(300000))
        assert r.status == 200
    time.sleep(0.2)
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    rss0 = proc_status(pid, "VmRSS")
    size = 64 << 20
    block = bytes(range(256)) * 4096  # 1 MiB
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    sent = [0]
    errors = []

    with s.connect(20) as c:
        def sender():
            try:
                c.send(b"POST /sink?stall=1.0&n=65536 HTTP/1.1\r\nHost: t\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    c.send(block)
                    sent[0] += len(block)
            except OSError as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=sender, daemon=True)
        started = time.monotonic()
        t.start()
        peak = rss0
        while t.is_alive() and time.monotonic() - started < 15:
            peak = max(peak, proc_status(pid, "VmRSS"))
            time.sleep(0.02)
        t.join(1)
        r = c.read_response(timeout=15)
    hwm = max(peak, proc_status(pid, "VmHWM"))
    assert not errors, errors
    assert r.status == 200, r
    data = r.json()
    assert data["total"] == size
    assert data["sha256"] == expected.hexdigest()
    assert data["biggest"] == 65536
    assert data["short_reads"] == 0  # read(n) returns n bytes until the end (file semantics)
    growth = hwm - rss0
    print("upload: rss0 %.1f MiB, growth %.1f MiB" % (rss0 / 1048576, growth / 1048576))
    assert growth < 32 << 20, "server memory grew by %.1f MiB for a 64 MiB upload" % (
        growth / 1048576)


def test_large_single_read_is_not_quadratic(serve):
    """
    read(CONTENT_LENGTH), the classic idiom, and readline() of one long line must cost
    about what a loop of read(65536) costs: the body arrives in ~64 KiB pieces, and
    appending each to one bytes buffer copies the whole buffer every time.
    """
    s = serve("pep_apps:app", "-t", "2")
    size = 24 << 20
    body = b"y" * size
    digest = hashlib.sha256(body).hexdigest()
    timings = {}
    for name, target in (("loop", "/sink?n=65536"), ("single", "/sink?n=-1"),
                         ("line", "/sink?mode=readline")):
        r = request(s, "POST", target, body=body, timeout=15)
        assert r.status == 200, r
        data = r.json()
        assert data["total"] == size and data["sha256"] == digest
        timings[name] = data["seconds"]
    limit = max(0.5, 10 * timings["loop"])
    assert timings["single"] < limit and timings["line"] < limit, (
        "reading 24 MiB: read(65536) loop %.2fs, read(CONTENT_LENGTH) %.2fs, one readline() "
        "%.2fs" % (timings["loop"], timings["single"], timings["line"]))


def test_client_gone_during_body_read_raises_in_the_app(serve):
    """
    A client that disconnects in the middle of its body: the app's read() must raise
    (not return b"" as if the body were complete), and the worker must be freed.
    """
    s = serve("pep_apps:app", "-t", "1")
    key = new_key()
    with s.connect() as c:
        # Larger than the input buffer: the app runs while the body streams in.
        c.send(b"POST /read-record?key=%s HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000"
               b"\r\n\r\n" % key.encode() + b"z" * 10000)
        time.sleep(0.3)  # (one worker, busy reading: /stats can answer only after)
    st = wait_stats(s, key, lambda st: st.get("errors"), timeout=3)
    assert 8192 <= st["read"] <= 10000
    assert st["errors"] and st["errors"][0] != "none", (
        "the app saw a truncated body as complete: %r" % st)
    assert "OSError" in st["errors"][0] or "Exception" in st["errors"][0]
    # The only worker is free again.
    r = request(s, target="/env")
    assert r.status == 200


# -- start_response errors on the wire --------------------------------------------------------


@pytest.mark.parametrize("case", sorted(pep_apps.BAD_START))
def test_start_response_errors_give_500_and_nothing_bad_on_the_wire(server, case):
    r = request(server, target="/bad-start?case=" + case)
    assert r.status == 500, r
    assert_clean_head(r.raw)
    assert b"this body must never be sent" not in r.raw
    assert b"evil" not in r.raw


def test_start_response_twice_without_exc_info_is_an_error(server):
    r = request(server, target="/twice")
    assert r.status == 500, r
    assert not r.has("x-first") and not r.has("x-second")
    assert b"second status accepted" not in r.raw


def test_exc_info_before_head_replaces_the_status(server):
    r = request(server, target="/exc-before")
    assert r.status == 500
    assert r.body == b"handled error page"
    assert r.header("x-second") == "1"
    assert not r.has("x-first")


def test_exc_info_after_head_reraises_and_aborts(server):
    token = new_key()
    with server.connect() as c:
        c.send(rawhttp.request("GET", "/exc-after?token=" + token, [("Connection", "close")]))
        # Aborted: what arrived (possibly nothing, when the reset overtakes the data) is
        # the start of the 200 response, never completed and never followed by the error
        # page.
        partial = server.read_aborted(c, b"partial body")
    assert b"must never be sent" not in partial
    # The original exception, re-raised by start_response, reached the server's log.
    server.wait_for_output("original error " + token, 3)


# -- write() and when the head is sent ----------------------------------------------------------


def test_write_callable_data_comes_before_the_iterable(server):
    r = request(server, target="/write-iter")
    assert r.status == 200
    assert r.body == b"w1-w2-i1-i2"


@pytest.mark.parametrize("path", ["/empty-then-sleep", "/write-empty-then-sleep"])
def test_head_waits_for_the_first_non_empty_chunk(server, path):
    with server.connect() as c:
        c.send(rawhttp.request("GET", path + "?t=1.0", [("Connection", "close")]))
        early = c.read_available(0.6)
        assert early == b"", "the head went out before any body data: %r" % early
        r = c.read_response(timeout=5)
    assert r.status == 200
    assert r.body == b"late body"


@pytest.mark.parametrize("path", ["/early-then-sleep", "/write-early-then-sleep"])
def test_each_chunk_is_sent_before_the_next_is_requested(server, path):
    """PEP 3333: yielded (and written) bytes are transmitted unbuffered."""
    with server.connect() as c:
        c.send(rawhttp.request("GET", path + "?t=1.5", [("Connection", "close")]))
        started = time.monotonic()
        version, status, reason, headers, raw = c.read_head(timeout=1.0)
        assert status == 200
        early = b""
        while b"early" not in early and time.monotonic() - started < 1.0:
            early += c.read_some(timeout=max(0.01, 1.0 - (time.monotonic() - started)))
        assert b"early" in early, "the first chunk was held back: %r" % early
        assert time.monotonic() - started < 1.0
        rest = early + c.read_until_close(timeout=5)
    body = dechunk(rest) if ("transfer-encoding", "chunked") in headers else rest
    assert body == b"early-late"


@pytest.mark.parametrize("empty_first", [False, True])
def test_generator_app_calls_start_response_on_first_iteration(server, empty_first):
    target = "/generator" + ("?empty_first=1" if empty_first else "")
    r = request(server, target=target)
    assert r.status == 200, r
    assert r.header("x-from") == "generator"
    assert r.body == b"from a generator"


# -- application errors -------------------------------------------------------------------------


def test_app_error_before_head_gives_500_and_a_logged_traceback(server):
    token = new_key()
    r = request(server, target="/raise-before?token=" + token)
    assert r.status == 500
    assert token.encode() not in r.raw  # no internals for the client
    m = server.wait_for_output(r"Traceback[\s\S]*app failure before headers " + token, 3)
    assert "RuntimeError" in m.group(0)


def test_app_error_after_head_aborts_the_connection(server):
    token = new_key()
    with server.connect() as c:
        c.send(rawhttp.request("GET", "/raise-after?token=" + token))  # keep-alive request
        server.read_aborted(c, b"first chunk")
    server.wait_for_output("app failure after headers " + token, 3)


# -- close() of the response iterable -----------------------------------------------------------


def test_close_called_once_on_normal_end(server):
    key = new_key()
    r = request(server, target="/stream?key=%s&size=100000&block=1000" % key)
    assert r.status == 200
    assert r.body == expected_stream(100000, 1000)
    wait_stats(server, key, lambda s: s["closed"] >= 1)
    time.sleep(0.2)
    s = stats(server, key)
    assert s["closed"] == 1
    assert s["finished"] == 1
    assert s["next_after_close"] == 0


def test_close_called_once_for_head(server):
    key = new_key()
    r = request(server, "HEAD", "/stream?key=%s&size=5000&block=1000" % key)
    assert r.status == 200 and r.body == b""
    wait_stats(server, key, lambda s: s["closed"] >= 1)
    time.sleep(0.2)
    assert stats(server, key)["closed"] == 1


def test_close_called_once_on_exception_mid_iteration(server):
    key = new_key()
    with server.connect() as c:
        c.send(rawhttp.request("GET", "/stream?key=%s&size=100000&block=1000&fail_after=3"
                               % key))
        with pytest.raises(rawhttp.Closed):
            c.read_response(timeout=5)
    wait_stats(server, key, lambda s: s["closed"] >= 1)
    time.sleep(0.2)
    s = stats(server, key)
    assert s["closed"] == 1
    assert s["next_after_close"] == 0


def test_close_called_once_on_exception_before_first_chunk(server):
    key = new_key()
    r = request(server, target="/stream?key=%s&size=100000&block=1000&fail_after=0" % key)
    assert r.status == 500
    wait_stats(server, key, lambda s: s["closed"] >= 1)
    time.sleep(0.2)
    assert stats(server, key)["closed"] == 1


def assert_closed_once_and_not_advanced(server, key: str) -> None:
    """close() is called within 3 s of the disconnect, once, and the iterable stops there."""
    s = wait_stats(server, key, lambda s: s["closed"] >= 1, timeout=3)
    assert s["closed"] == 1, "close() not called within 3 s of the disconnect: %r" % s
    produced = s["produced"]
    time.sleep(0.3)
    s = stats(server, key)
    assert s["closed"] == 1 and s["next_after_close"] == 0
    assert s["produced"] == produced, "the iterable is still advanced after the disconnect"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_close_called_once_when_a_stalled_client_disconnects(server, how):
    """The worker waits for a client that does not read; the client then goes away."""
    key = new_key()
    c = server.connect()
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(rawhttp.request("GET", "/stream?key=%s&size=%d&block=65536" % (key, 1 << 40)))
        wait_stats(server, key, lambda s: s.get("produced", 0) > 0)
        time.sleep(0.5)  # the worker is now blocked on the full socket
        s = stats(server, key)
        assert s["closed"] == 0 and s["produced"] < 64 << 20
        server.hang_up(c, how)
        assert_closed_once_and_not_advanced(server, key)
    finally:
        c.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_close_called_once_when_client_disconnects_mid_stream(server, how):
    key = new_key()
    c = server.connect()
    try:
        c.send(rawhttp.request("GET", "/stream?key=%s&size=%d&block=1024&sleep=0.01"
                               % (key, 1 << 40)))
        c.read_head(timeout=5)
        c.read_exact(5000, timeout=5)  # streaming is under way
        server.hang_up(c, how)
        assert_closed_once_and_not_advanced(server, key)
    finally:
        c.close()


# -- wsgi.file_wrapper ------------------------------------------------------------------------


@pytest.mark.parametrize("with_length", [False, True])
def test_file_wrapper_streams_a_file(server, tmp_path, with_length):
    data = os.urandom(5 << 20)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    key = new_key()
    target = "/file?key=%s&path=%s%s" % (key, str(path), "&cl=1" if with_length else "")
    r = request(server, target=target, timeout=10)
    assert r.status == 200
    assert len(r.body) == len(data)
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
    assert r.framing == ("length" if with_length else server.unsized_framing)
    s = wait_stats(server, key, lambda s: s["closed"] >= 1)
    time.sleep(0.1)
    s = stats(server, key)
    assert s["closed"] == 1  # the file wrapper's close() closes the file, once
    assert s["produced"] == len(data)


# -- backpressure: a client that does not read ----------------------------------------------------


def test_slow_reader_pauses_the_app_then_gets_the_whole_body(server):
    key = new_key()
    size = 50 << 20
    block = 65536
    with server.connect(10, rcvbuf=65536) as c:
        c.send(b"GET /stream?key=%s&size=%d&block=%d HTTP/1.1\r\nHost: t\r\n"
               b"Connection: close\r\n\r\n" % (key.encode(), size, block))
        # Do not read.  The app's iterable must stop being advanced.
        time.sleep(1.0)
        first = stats(server, key)["produced"]
        time.sleep(0.5)
        second = stats(server, key)["produced"]
        print("slow reader: produced %d bytes while not reading" % first)
        assert first > 0, "the app never started"
        assert second == first, "the app kept producing while the client read nothing"
        # Output buffer + Twisted's buffer + kernel socket buffers (the server's send
        # buffer grows up to tcp_wmem's maximum); without backpressure: all 50 MiB.
        bound = min(40 << 20, OUTPUT_BUFFER + tcp_wmem_max() + (4 << 20))
        assert first < bound, "%d bytes produced while the client read nothing (bound %d)" % (
            first, bound)
        # Now read everything.
        r = c.read_response(timeout=20)
        if server.protocol == "HTTP/1.1":
            assert c.closed(10)  # Connection: close, and nothing after the last chunk
    assert (r.version, r.status) == (server.protocol, 200)
    assert r.framing == server.unsized_framing and not r.trailers
    body = r.body
    assert len(body) == size
    assert body == expected_stream(size, block)
    s = wait_stats(server, key, lambda s: s["closed"] >= 1)
    assert s["produced"] == size
    assert s["closed"] == 1


# -- wsgiref.validate -------------------------------------------------------------------------


def test_validator_wrapped_app_runs_clean(serve):
    s = serve("pep_apps:validated", "-t", "2")
    lines_body = b"a\nb\nc\n"
    with s.connect() as c:  # keep-alive: several requests on one connection
        c.send(rawhttp.request("GET", "/v?x=1"))
        r1 = c.read_response()
        c.send(rawhttp.request("POST", "/v/post", [("Content-Type", "text/plain")],
                               b"hello world, posted"))
        r2 = c.read_response()
        c.send(rawhttp.request("HEAD", "/v"))
        r3 = c.read_response(head_request=True)
        c.send(rawhttp.request("GET", "/v/chunked"))
        r4 = c.read_response()
        c.send(rawhttp.request("GET", "/v/write"))
        r5 = c.read_response()
        c.send(rawhttp.request("POST", "/v/lines", [("Content-Type", "text/plain")],
                               lines_body))
        r6 = c.read_response()
        c.send(rawhttp.request("GET", "/v/errors", [("Connection", "close")]))
        r7 = c.read_response()
    assert [r.status for r in (r1, r2, r3, r4, r5, r6, r7)] == [200] * 7
    assert r1.body == b"validated GET /v"
    assert r2.body == b"posted:hello world, posted"
    assert r3.body == b"" and r3.header("content-length") == str(len(b"validated HEAD /v"))
    assert r4.framing == s.unsized_framing
    assert r4.body == b"".join(b"chunk %d\n" % i for i in range(5))
    assert r5.body == b"written and returned"
    assert r6.body == b"3 lines"
    s.wait_for_output("validated app writes to wsgi.errors", 3)
    # A chunked upload too.
    with s.connect() as c:
        send_chunked(c, b"POST /v/lines HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
                     lines_body, sizes=(1, 2))
        r8 = c.read_response()
    assert r8.status == 200 and r8.body == b"3 lines"
    time.sleep(0.3)  # let any late warning (iterator __del__) reach the log
    log = s.output()
    for bad in ("AssertionError", "WSGIWarning", "Traceback", "Exception ignored"):
        assert bad not in log, "validator complaint in the server log:\n" + log
    # Negative control: the same log check catches a real violation.
    r = request(s, target="/v/bad")
    assert r.status == 500
    s.wait_for_output("AssertionError", 3)


# -- Flask ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flask_server():
    s = start_server("pep_apps:flask_app", "-t", "2")
    yield H1Server(s)
    s.stop()


def test_flask_get(flask_server):
    r = request(flask_server, target="/hello?name=yimmo")
    assert r.status == 200
    assert r.body == b"hello yimmo"
    assert r.header("content-type").startswith("text/html")


def test_flask_path_and_url(flask_server):
    r = request(flask_server, target="/path/caf%C3%A9", headers=[("Host", "example.test")])
    assert r.status == 200
    data = r.json()
    assert data["name"] == "café"
    assert data["path"] == "/path/café"
    assert data["script_root"] == ""
    assert data["url"] in ("http://example.test/path/café", "http://example.test/path/caf%C3%A9")


def test_flask_post_form(flask_server):
    body = b"name=caf%C3%A9&n=1&n=2"
    r = request(flask_server, "POST", "/form",
                [("Content-Type", "application/x-www-form-urlencoded")], body)
    assert r.status == 200
    data = r.json()
    assert data["form"] == {"name": ["café"], "n": ["1", "2"]}
    assert data["mimetype"] == "application/x-www-form-urlencoded"


def test_flask_post_multipart(flask_server):
    boundary = "----pepboundary"
    body = ("--{b}\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
            "--{b}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\nfile content\nline 2\r\n--{b}--\r\n"
            ).format(b=boundary).encode()
    r = request(flask_server, "POST", "/form",
                [("Content-Type", "multipart/form-data; boundary=" + boundary)], body)
    assert r.status == 200
    data = r.json()
    assert data["form"] == {"field": ["value"]}
    assert data["files"] == {"upload": ["a.txt", "file content\nline 2"]}


def test_flask_post_json(flask_server):
    payload = {"a": [1, 2, 3], "b": "é", "c": None}
    body = json.dumps(payload).encode()
    r = request(flask_server, "POST", "/json", [("Content-Type", "application/json")], body)
    assert r.status == 200
    assert r.json() == {"received": payload, "length": len(body)}


def test_flask_post_json_chunked(flask_server):
    payload = {"items": list(range(2000))}
    body = json.dumps(payload).encode()
    with flask_server.connect() as c:
        send_chunked(c, b"POST /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                     body, sizes=(100, 3000))
        r = c.read_response()
    assert r.status == 200
    assert r.json()["received"] == payload


def test_flask_errors(flask_server):
    assert request(flask_server, target="/nope").status == 404
    r = request(flask_server, target="/fail")
    assert r.status == 500
    flask_server.wait_for_output("flask view failure", 3)
