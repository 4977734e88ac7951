"""
HTTP/2 (http2.py), black-box: the real server over real sockets on 127.0.0.1, with the
``h2`` library as the client (frames as a client sends them, windows it opens or not),
and curl (nghttp2) by prior knowledge and over TLS with ALPN; HTTP/1.1 on the same ports.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlencode

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated, DataReceived, InformationalResponseReceived, ResponseReceived,
    StreamEnded, StreamReset,
)
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from browser import needs_chromium, page_text
from test_listening import LOCAL, PROXY_HEADERS, _ssl_endpoint, _tls_exchange

pytestmark = pytest.mark.timeout(30)

H2C = ("--http2-cleartext", "on")


class Stream:
    def __init__(self) -> None:
        self.headers: List[Tuple[bytes, bytes]] = []
        self.informational: List[List[Tuple[bytes, bytes]]] = []  # 1xx heads
        self.data = bytearray()
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> Optional[bytes]:
        return dict(self.headers).get(name)


class Client:
    """One HTTP/2 connection, as the h2 library's client; ``ack`` False opens no windows."""

    def __init__(self, port: int, tls: bool = False, window: Optional[int] = None,
                 ack: bool = True, start: bool = True, clear: bytes = b"",
                 validate: bool = True) -> None:
        sock = socket.create_connection((LOCAL, port), timeout=5)
        sock.sendall(clear)  # before TLS: a PROXY header
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2", "http/1.1"])
            sock = context.wrap_socket(sock)
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        # validate False: the client sends the headers it is given, malformed or not.
        self.conn = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        if window is not None:
            self.conn.local_settings = Settings(
                client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.ack = ack
        self.streams: Dict[int, Stream] = {}
        self.goaway: Optional[ConnectionTerminated] = None
        self.closed = False
        self.port = port
        if start:
            self.conn.initiate_connection()
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:  # the server closed the connection meanwhile
                self.closed = True

    def request(self, path: str = "/", method: str = "GET", body: bytes = b"",
                headers: Optional[List[Tuple[str, str]]] = None, end: bool = True,
                flush: bool = True, authority: Optional[str] = "example.test") -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":path", path), (":scheme", "http")]
        if authority is not None:
            head.append((":authority", authority))
        head += list(headers or [])
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in head],
                               end_stream=end and not body)
        if body:
            self.send_body(sid, body, end)
        if flush:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """Send ``body`` as the server's windows allow, reading meanwhile."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.flush()
                self.read_once()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
        if end:
            self.conn.end_stream(sid)
        self.flush()

    def read_once(self, timeout: float = 5.0) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and stream is not None:
                stream.headers = event.headers
            elif isinstance(event, InformationalResponseReceived) and stream is not None:
                stream.informational.append(event.headers)
            elif isinstance(event, DataReceived) and stream is not None:
                stream.data += event.data
                if self.ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            elif isinstance(event, StreamEnded) and stream is not None:
                stream.ended = True
            elif isinstance(event, StreamReset) and stream is not None:
                stream.reset = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        self.flush()

    def wait(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            assert left > 0, "timed out"
            assert not self.closed, "connection closed"
            self.read_once(left)

    def get(self, path: str = "/", **kw) -> Stream:
        sid = self.request(path, **kw)
        stream = self.streams[sid]
        self.wait(lambda: stream.ended or stream.reset is not None)
        return stream

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def h2c(serve):
    """A server of apps (h2c by prior knowledge) and a client factory for it."""
    clients: List[Client] = []

    def start(app: str = "apps:environ_app", *args: str, **kw):
        server = serve(app, *H2C, *args)

        def client(**ckw) -> Client:
            c = Client(server.port, **ckw)
            clients.append(c)
            return c
        return server, client

    yield start
    for c in clients:
        c.close()


@pytest.fixture(scope="module")
def shared_server():
    """One server of apps:app (h2c) for the tests that need no settings of their own."""
    from conftest import start_server
    s = start_server("apps:app", *H2C)
    yield s
    s.stop()


@pytest.fixture
def shared(shared_server):
    clients: List[Client] = []

    def client(**ckw) -> Client:
        c = Client(shared_server.port, **ckw)
        clients.append(c)
        return c
    yield shared_server, client
    for c in clients:
        c.close()


# -- requests -----------------------------------------------------------------------------

def test_get_environ(h2c):
    server, client = h2c()
    s = client().get("/a%20b?x=1", headers=[("x-a", "1"), ("x-a", "2"), ("cookie", "a=1"),
                                             ("cookie", "b=2")])
    assert s.status == 200
    env = json.loads(bytes(s.data))
    assert env["SERVER_PROTOCOL"] == "HTTP/2"
    assert env["HTTP_HOST"] == "example.test"  # from :authority
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["RAW_URI"]) == ("/a b", "x=1", "/a%20b?x=1")
    assert env["HTTP_X_A"] == "1, 2" and env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["REQUEST_METHOD"] == "GET" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert s.header(b"content-length") == str(len(s.data)).encode()
    assert s.header(b"server") == b"yimmo-twisted" and s.header(b"date")


def test_host_header_without_authority(h2c):
    server, client = h2c()
    env = json.loads(bytes(client().get("/", headers=[("host", "h.test")],
                                        authority=None).data))
    assert env["HTTP_HOST"] == "h.test"


def test_head_and_no_body_statuses(shared):
    server, client = shared
    c = client()
    s = c.get("/", method="HEAD")
    assert s.status == 200 and not s.data
    for code in ("204", "304"):
        s = c.get("/status/" + code)
        assert s.status == int(code) and not s.data and s.header(b"content-length") is None


def test_post_body_streamed(h2c):
    server, client = h2c("apps:echo_chunks", "--input-buffer", "64K")
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB: many times the window and the buffer
    s = client().get("/?n=65536", method="POST", body=body)
    assert s.status == 200 and bytes(s.data) == body


@pytest.mark.parametrize("length", ["-1", "1, 1", "+1", "\u0661", "2"])
def test_invalid_content_length(shared, length):
    """h2 ends the connection (PROTOCOL_ERROR): a malformed request, or DATA that does
    not add up to its content-length."""
    server, client = shared
    c = client()
    sid = c.request("/echo", method="POST", body=b"x", headers=[("content-length", length)])
    c.wait(lambda: c.closed or c.goaway is not None or c.streams[sid].ended)
    if c.goaway is None and length == "+1":
        # h2 before 4.2 reads a signed length as a number: the server's own check refuses it.
        assert c.streams[sid].status == 400
    else:
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert client().get("/").status == 200


def test_post_small_body_with_length(h2c):
    server, client = h2c("apps:echo")
    s = client().get("/", method="POST", body=b"hello", headers=[("content-length", "5")])
    assert (s.status, bytes(s.data), s.header(b"x-content-length")) == (200, b"hello", b"5")


def test_empty_data_frames_do_not_end_the_body(h2c):
    server, client = h2c("apps:echo")
    c = client()
    sid = c.request("/", method="POST", body=b"ab", end=False)
    c.conn.send_data(sid, b"")
    c.conn.send_data(sid, b"cd", end_stream=True)
    c.flush()
    c.wait(lambda: c.streams[sid].ended)
    assert bytes(c.streams[sid].data) == b"abcd"


def test_write_callable_chunked_and_file_wrapper(h2c, tmp_path):
    server, client = h2c("file_apps:app")
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    c = client()
    s = c.get("/file?path=%s&offset=6" % path)
    assert s.status == 200 and bytes(s.data) == path.read_bytes()[6:]
    assert s.header(b"content-length") == b"%d" % (256000 - 6)
    s = c.get("/file?path=%s" % path, method="HEAD")
    assert s.status == 200 and not s.data


def test_write_and_generator_bodies(shared):
    server, client = shared
    c = client()
    s = c.get("/write")
    assert bytes(s.data) == b"written twice\n" and s.header(b"transfer-encoding") is None
    s = c.get("/chunked?n=3")
    assert bytes(s.data) == b"part 0\npart 1\npart 2\n"
    s = c.get("/short")  # less than its Content-Length: the stream is reset
    assert s.reset == ErrorCodes.INTERNAL_ERROR


def test_response_fields_are_sent_as_http2_wants_them(shared):
    """The app's fields as HTTP/2 allows them (RFC 9113 8.2): names in lower case, values
    without the whitespace around them, connection-specific fields dropped; the client's
    h2 refuses any other head."""
    server, client = shared
    query = urlencode([("X-Mixed-Case", "1"), ("x-padded", " \tv a l\t "),
                       ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                       ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
                       ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    for _ in range(2):  # the fields checked, then remembered
        s = client().get("/headers?" + query)
        assert s.status == 200 and bytes(s.data) == b"headers"
        names = [name for name, _ in s.headers]
        assert names == [n.lower() for n in names]
        assert s.header(b"x-mixed-case") == b"1" and s.header(b"x-padded") == b"v a l"
        assert not {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"} & set(names)
        assert [v for n, v in s.headers if n == b"set-cookie"] == [b"a=1", b"b=2"]


def test_access_log_says_http2(shared):
    server, client = shared
    assert client().get("/?q=1").status == 200
    server.wait_for_output(r'"GET /\?q=1 HTTP/2" 200 14 "-" "-" \d+\n')


def test_expect_100_continue(h2c, tmp_path):
    server, client = h2c("apps:echo")
    upload = tmp_path / "upload"
    upload.write_bytes(b"x" * 2000000)
    started = time.monotonic()
    out = _curl("--http2-prior-knowledge", "-H", "Expect: 100-continue",
                "--data-binary", "@%s" % upload, "-o", "/dev/null",
                "-w", "%{http_code} %{http_version}", server.url + "/")
    assert time.monotonic() - started < 0.9  # curl waits 1 s for a 100 that never comes
    assert out.returncode == 0 and out.stdout == "200 2", out
    c = client()
    sid = c.request("/", method="POST", headers=[("expect", "100-continue")], end=False)
    c.wait(lambda: c.streams[sid].informational)
    assert c.streams[sid].informational == [[(b":status", b"100")]]
    c.send_body(sid, b"after 100")
    c.wait(lambda: c.streams[sid].ended)
    assert bytes(c.streams[sid].data) == b"after 100"


def test_large_response_small_window(h2c):
    server, client = h2c("apps:big")
    c = client(window=1024)
    s = c.get("/?size=%d&block=65536" % (2 << 20), )
    assert s.status == 200 and len(s.data) == 2 << 20
    assert bytes(s.data[:256]) == bytes(range(256))


def test_app_errors(shared):
    server, client = shared
    c = client()
    assert c.get("/raise-before").status == 500
    s = c.get("/raise-after")  # the head went out: the stream is reset
    assert s.reset == ErrorCodes.INTERNAL_ERROR or not s.ended
    assert c.get("/").status == 200  # the connection goes on


# -- streams ---------------------------------------------------------------------------------

def test_slow_stream_does_not_block_a_fast_one(shared):
    server, client = shared
    c = client()
    slow = c.request("/sleep?t=1")
    started = time.monotonic()
    fast = c.get("/")
    assert fast.status == 200 and time.monotonic() - started < 0.5
    assert not c.streams[slow].ended
    c.wait(lambda: c.streams[slow].ended)
    assert bytes(c.streams[slow].data).startswith(b"slept")


def test_stream_not_read_does_not_block_others(h2c):
    """One stream's client window stays shut: its worker waits, the others are served."""
    server, client = h2c("apps:app", "--output-buffer", "64K", "-t", "2")
    c = client(window=65535, ack=False)
    stuck = c.request("/big?size=%d" % (8 << 20))
    c.wait(lambda: len(c.streams[stuck].data) >= 65535 - 16384)
    # The connection window is shared: reopen it without opening the stuck stream's.
    c.conn.increment_flow_control_window(1 << 30)
    c.flush()
    c.ack = True
    s = c.get("/")
    assert s.status == 200 and not c.streams[stuck].ended


def test_reset_mid_response_frees_the_worker(h2c):
    server, client = h2c("apps:app", "-t", "1", "--output-buffer", "64K")
    c = client(window=65535, ack=False)
    sid = c.request("/big?size=%d" % (64 << 20))
    c.wait(lambda: len(c.streams[sid].data) > 0)
    c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    c.ack = True
    c.conn.increment_flow_control_window(1 << 30)
    s = c.get("/")  # the only worker is free again
    assert s.status == 200


def test_max_concurrent_streams(h2c):
    server, client = h2c("apps:app", "--http2-max-concurrent-streams", "2", "-t", "4")
    c = client(start=False)
    c.conn.initiate_connection()
    # Sent before the client has the server's SETTINGS: as a client that ignores them.
    sids = [c.request("/sleep?t=0.5", flush=False) for _ in range(3)]
    c.flush()
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in sids))
    outcomes = sorted((c.streams[s].reset or 0) for s in sids)
    assert outcomes == [0, 0, ErrorCodes.REFUSED_STREAM]
    assert c.conn.remote_settings.max_concurrent_streams == 2


def test_sigterm_sends_goaway_and_finishes_streams(h2c):
    """The drain: GOAWAY to every connection, the streams in flight answered (curl's: h2
    as a client takes a GOAWAY for the end of all streams), then the connections close."""
    server, client = h2c("apps:app")
    idle = client()
    assert idle.get("/").status == 200
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs curl")
    inflight = subprocess.Popen(
        [curl, "-s", "--http2-prior-knowledge", "--max-time", "5", "-w", "\n%{http_version}",
         server.url + "/sleep?t=1"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.4)
    server.signal(signal.SIGTERM)
    idle.wait(lambda: idle.goaway is not None)
    assert (idle.goaway.error_code, idle.goaway.last_stream_id) == (0, 1)
    idle.wait(lambda: idle.closed)
    out, _ = inflight.communicate(timeout=10)
    assert inflight.returncode == 0 and out == "slept /sleep?t=1\n2"
    assert server.wait_exit(10) == 0


def test_the_clients_goaway_lets_its_open_streams_finish(h2c):
    """RFC 9113 6.8: after a client's GOAWAY (h2load sends one as it stops) the streams it
    opened before are still answered, then the connection closes; h2 itself would refuse
    to send anything more (python-hyper/h2 #1181)."""
    server, client = h2c("apps:app")
    c = client()
    sid = c.request("/sleep?t=0.3")
    # The frame as bytes: the client's h2 would refuse the answers after its own GOAWAY.
    c.sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    c.wait(lambda: c.streams[sid].ended or c.streams[sid].reset is not None or c.closed)
    assert c.streams[sid].status == 200 and bytes(c.streams[sid].data).startswith(b"slept")
    c.wait(lambda: c.closed)
    assert "output refused" not in server.output()


# -- limits and attacks ------------------------------------------------------------------

def test_one_connection_cannot_queue_its_streams_ahead_of_others(h2c):
    """Six slow streams on one connection, one worker: another client's request waits
    for the one running, not behind all six (http2_max_running_streams: no_threads)."""
    server, client = h2c("apps:app", "-t", "1")
    hog = client()
    sids = [hog.request("/sleep?t=0.3&n=%d" % i, flush=False) for i in range(6)]
    hog.flush()
    time.sleep(0.1)
    started = time.monotonic()
    assert client().get("/").status == 200
    assert time.monotonic() - started < 0.8  # behind all six: 1.6 s
    hog.wait(lambda: all(hog.streams[s].ended for s in sids))
    assert all(hog.streams[s].status == 200 for s in sids)


def test_running_streams_wait_their_turn_in_order(h2c):
    server, client = h2c("apps:app", "--http2-max-running-streams", "1", "-t", "4")
    c = client()
    started = time.monotonic()
    sids = [c.request("/sleep?t=0.3&n=%d" % i, flush=False) for i in range(3)]
    c.flush()
    ends: List[int] = []
    c.wait(lambda: ends.extend(s for s in sids if c.streams[s].ended and s not in ends)
           or len(ends) == 3)
    assert ends == sids and time.monotonic() - started >= 0.85


def test_a_waiting_stream_reset_never_runs_and_frees_its_turn(h2c):
    server, client = h2c("apps:app", "--http2-max-running-streams", "1", "-t", "4")
    c = client()
    first = c.request("/sleep?t=0.5&n=first")
    waiting = [c.request("/sleep?t=0.5&n=reset%d" % i) for i in range(5)]
    for sid in waiting:
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    last = c.get("/sleep?t=0&n=last")
    assert last.status == 200 and c.streams[first].ended
    server.wait_for_output(r"n=last HTTP/2")
    assert "n=reset" not in server.output()


def test_a_running_stream_reset_holds_its_turn_until_its_worker_is_done(h2c):
    """The app of a reset stream runs on (until its next read or write): the next stream
    waits for its worker, so resets cannot start more apps at once than the limit."""
    server, client = h2c("apps:app", "--http2-max-running-streams", "1", "-t", "4")
    c = client()
    running = c.request("/sleep?t=0.6&n=running")
    time.sleep(0.2)  # begun
    c.conn.reset_stream(running, ErrorCodes.CANCEL)
    c.flush()
    started = time.monotonic()
    assert c.get("/sleep?t=0&n=next").status == 200
    assert time.monotonic() - started >= 0.3
    assert c.get("/").status == 200  # and the turn was given back once



def test_rapid_reset_is_bounded(h2c):
    """CVE-2023-44487: streams opened and reset at once, without end; past
    http2_max_resets the connection ends with ENHANCE_YOUR_CALM."""
    server, client = h2c("apps:app", "--http2-max-resets", "20")
    c = client()
    for _ in range(30):
        sid = c.request("/sleep?t=0.2", flush=False)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    c.wait(lambda: c.goaway is not None)
    assert c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    c.wait(lambda: c.closed)
    fresh = client()  # others are served
    assert fresh.get("/").status == 200


def test_resets_within_the_limit_are_fine(h2c):
    server, client = h2c("apps:app", "--http2-max-resets", "20")
    c = client()
    for _ in range(10):
        sid = c.request("/sleep?t=0.1")
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    assert c.get("/").status == 200 and c.goaway is None


def test_zero_window_held_forever_times_out(h2c):
    """A stream whose client never opens its window is reset after send_timeout, and its
    worker freed; the connection and its other streams go on."""
    server, client = h2c("apps:app", "-t", "1", "--send-timeout", "0.5",
                         "--output-buffer", "64K")
    c = client(window=0, ack=False)
    sid = c.request("/big?size=%d" % (1 << 20))
    c.wait(lambda: c.streams[sid].reset is not None, timeout=5)
    assert c.streams[sid].reset == ErrorCodes.CANCEL
    c.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    c.ack = True
    c.flush()
    assert c.get("/").status == 200  # the only worker is free again


def test_idle_connection_gets_goaway(h2c):
    server, client = h2c("apps:hello", "--idle-timeout", "0.3")
    c = client()
    assert c.get("/").status == 200
    c.wait(lambda: c.goaway is not None, timeout=3)
    assert c.goaway.error_code == 0
    c.wait(lambda: c.closed, timeout=3)


def test_stalled_request_body_times_out(h2c):
    server, client = h2c("apps:echo", "--read-timeout", "0.5")
    c = client()
    sid = c.request("/", method="POST", body=b"part", end=False)
    c.wait(lambda: c.streams[sid].ended or c.streams[sid].reset is not None, timeout=5)
    assert c.streams[sid].status == 408
    assert c.get("/").status == 200


def test_body_over_max_body_size(h2c):
    server, client = h2c("apps:echo", "--max-body-size", "1K")
    c = client()
    s = c.get("/", method="POST", body=b"x" * 2048)
    assert s.status == 413
    s = c.get("/", method="POST", body=b"x" * 2048, headers=[("content-length", "2048")])
    assert s.status == 413
    assert c.get("/", method="POST", body=b"ok").status == 200


_PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty: changes nothing
_PRIORITY = b"\x00\x00\x05\x02\x00\x00\x00\x00\x03" + b"\x00\x00\x00\x00\x10"


@pytest.mark.parametrize("frame", [_PING, _SETTINGS, _PRIORITY, None],
                         ids=["ping", "settings", "priority", "empty-data"])
def test_control_frame_flood_from_a_reading_client_gets_goaway(h2c, frame):
    """CVE-2019-9512/9515/9518: a client that reads all the answers but sends nothing but
    PING, SETTINGS, PRIORITY or empty DATA frames is cut off past the budget."""
    server, client = h2c("apps:app", "--http2-max-control-frames", "50")
    c = client()
    assert c.get("/").status == 200
    if frame is None:  # empty DATA frames on an upload its app has not ended
        sid = c.request("/sleep?t=3", method="POST", end=False)
        frame = b"\x00\x00\x00\x00\x00" + sid.to_bytes(4, "big")
    c.sock.sendall(frame * 60)
    c.wait(lambda: c.goaway is not None)
    assert c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    c.wait(lambda: c.closed)
    server.wait_for_output("more control frames by its client in 30 s than "
                           "http2_max_control_frames allows")
    assert client().get("/").status == 200  # the others are served


def test_control_frames_within_the_budget_are_answered(h2c):
    server, client = h2c("apps:hello", "--http2-max-control-frames", "50")
    c = client()
    for i in range(20):
        c.conn.ping(b"%08d" % i)
    c.flush()
    assert c.get("/").status == 200 and c.goaway is None


def test_ping_flood_from_a_client_that_does_not_read(h2c):
    """The PING acks pile up in the transport: the server stops reading the client
    instead of buffering them without bound (with http2_max_control_frames out of the
    way, which would end the connection first)."""
    server, client = h2c("apps:hello", "--http2-max-control-frames", "1000000000")
    c = client()
    assert c.get("/").status == 200
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    burst = ping * 60000  # about 1 MiB
    c.sock.settimeout(0.5)
    sent = 0
    with pytest.raises(socket.timeout):
        for _ in range(200):  # 200 MiB, far more than the kernel buffers hold
            sent += c.sock.send(burst)
    assert sent < 100 << 20
    assert server.get("/").status == 200  # and the server is well


def test_header_list_too_large(h2c):
    server, client = h2c("apps:hello", "--http2-max-header-list-size", "4K")
    c = client()
    c.request("/", headers=[("x-big", "v" * 8192)])
    c.wait(lambda: c.goaway is not None or c.closed)
    assert c.goaway is None or c.goaway.error_code != 0


def test_hpack_bomb(shared):
    """A few bytes on the wire (one value, then references to it in the dynamic table)
    that decode to more than http2_max_header_list_size: the connection ends."""
    server, client = shared
    c = client()
    c.request("/", headers=[("x-bomb", "b" * 4000)] * 40)  # 160 KB decoded
    c.wait(lambda: c.goaway is not None or c.closed)
    assert c.goaway is None or c.goaway.error_code != 0
    assert server.get("/").status == 200


def test_continuation_flood(shared):
    """A header block that never ends, CONTINUATION after CONTINUATION: h2 stops at 64
    frames and the connection ends, rather than buffering without bound."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame
    server, client = shared
    c = client()
    c.sock.sendall(HeadersFrame(1, data=b"\x82", flags=[]).serialize())  # :method GET
    try:
        for _ in range(200):
            c.sock.sendall(ContinuationFrame(1, data=b"\x00" * 16000).serialize())
    except OSError:
        pass  # closed under us
    ended = False
    c.sock.settimeout(5)
    try:
        while c.sock.recv(65536):  # the server's SETTINGS, its GOAWAY, then the end
            pass
        ended = True
    except ConnectionResetError:
        ended = True
    assert ended
    assert server.get("/").status == 200


@pytest.mark.parametrize("fields", [
    [("connection", "keep-alive")], [("te", "gzip")], [("X-Upper", "1")],
    [(":path", "/again")], [(":status", "200")], [("x-space", " leading")],
    [("host", "other.test")],
], ids=["connection", "te", "uppercase", "pseudo-repeated", "pseudo-response",
        "whitespace", "host-not-authority"])
def test_a_malformed_request_resets_its_stream_alone(shared, fields):
    """RFC 9113 8.1.1: a stream error (PROTOCOL_ERROR); the requests sent with it in the
    same write are answered, and the connection goes on."""
    server, client = shared
    c = client(validate=False)
    before = c.request("/?n=before", flush=False)
    bad = c.request("/?n=bad", headers=fields, flush=False)
    after = c.request("/?n=after", flush=False)
    c.flush()
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None
                       for s in (before, bad, after)))
    assert c.streams[bad].reset == ErrorCodes.PROTOCOL_ERROR
    assert c.streams[before].status == c.streams[after].status == 200
    assert c.get("/").status == 200 and c.goaway is None


def test_protocol_error_closes_the_connection(shared):
    server, client = shared
    c = client()
    c.sock.sendall(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00")  # WINDOW_UPDATE, short of its body
    c.sock.sendall(b"\x00" * 64)
    c.wait(lambda: c.closed or c.goaway is not None)


def test_unix_socket(serve, tmp_path):
    path = str(tmp_path / "h2.sock")
    server = serve("apps:environ_app", "--listen", "unix:" + path, *H2C, listen=False,
                   wait=False)
    server.wait_for_output("listening on unix " + path)
    for flag, version, protocol in (("--http2-prior-knowledge", "2", "HTTP/2"),
                                    ("--http1.1", "1.1", "HTTP/1.1")):
        out = _curl("--unix-socket", path, flag, "http://localhost/")
        assert out.returncode == 0, (out, server.output())
        body, got = out.stdout.rsplit("\n", 1)
        assert (got, json.loads(body)["SERVER_PROTOCOL"]) == (version, protocol)
        assert json.loads(body)["REMOTE_ADDR"] == "unix:"


def test_http11_on_a_cleartext_port(shared):
    server, client = shared
    assert server.get("/").body == b"Hello, World!\n"


def test_cleartext_off_by_default(serve):
    server = serve("apps:hello")
    with socket.create_connection((LOCAL, server.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 505 ")  # "HTTP/2.0"


# -- curl and TLS ---------------------------------------------------------------------------

def _curl(*args: str) -> subprocess.CompletedProcess:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs curl")
    return subprocess.run([curl, "-sk", "--max-time", "5", "-w", "\n%{http_version}", *args],
                          capture_output=True, text=True, timeout=10)


def test_curl_prior_knowledge(h2c):
    server, client = h2c("apps:echo")
    out = _curl("--http2-prior-knowledge", "--data-binary", "abc", server.url + "/")
    assert out.returncode == 0, out
    assert out.stdout == "abc\n2"


@pytest.fixture
def tls_server(serve, certificate):
    def start(*args: str):
        cert, key = certificate
        return serve("apps:environ_app", "--listen", _ssl_endpoint(cert, key), *args,
                     listen=False)
    return start


def test_tls_alpn(tls_server):
    server = tls_server()
    url = "https://%s:%d/" % (LOCAL, server.port)
    out = _curl("--http2", url)
    assert out.returncode == 0, out
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2" and json.loads(body)["wsgi.url_scheme"] == "https"
    assert json.loads(body)["SERVER_PROTOCOL"] == "HTTP/2"
    out = _curl("--http1.1", url)
    assert out.returncode == 0 and out.stdout.endswith("\n1.1"), out
    # ALPN offering h2 and http/1.1, http/1.1 alone, and none.
    assert _tls_exchange(server.port, ["http/1.1"])[0] == "http/1.1"
    protocol, r = _tls_exchange(server.port, None)
    assert (protocol, r.status) == (None, 200)
    c = Client(server.port, tls=True)
    try:
        assert json.loads(bytes(c.get("/").data))["SERVER_PROTOCOL"] == "HTTP/2"
    finally:
        c.close()


@needs_chromium
def test_chromium_loads_a_page_over_http2(serve, certificate):
    """A real browser, over TLS with ALPN: the page and its thirty requests at once, a
    3 MiB upload echoed back byte for byte and a 4 MiB download, all on HTTP/2."""
    cert, key = certificate
    server = serve("apps:app", "--listen", _ssl_endpoint(cert, key), listen=False)
    text = page_text("https://localhost:%d/browser-page" % server.port, " done",
                     ["--ignore-certificate-errors"], timeout=30)
    assert text.endswith(" done") and not text.startswith("error"), text
    result = json.loads(text[:-len(" done")])
    assert result == {"nav": "h2", "hops": ["h2"], "slept": 30, "same": True,
                      "big": 4 << 20}
    server.wait_for_output(r'"POST /echo HTTP/2" 200 %d ' % (3 << 20))


def test_tls_http2_off(tls_server):
    server = tls_server("--http2", "off")
    protocol, r = _tls_exchange(server.port, ["h2", "http/1.1"])
    assert (protocol, r.status) == ("http/1.1", 200)
    out = _curl("--http2", "https://%s:%d/" % (LOCAL, server.port))
    assert out.returncode == 0 and out.stdout.endswith("\n1.1"), out


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_tls_behind_proxy_protocol(serve, certificate, no_proc):
    cert, key = certificate
    server = serve("apps:environ_app", "--listen", "haproxy:" + _ssl_endpoint(cert, key),
                   "-p", no_proc, listen=False)
    c = Client(server.port, tls=True, clear=PROXY_HEADERS["v2"])
    try:
        env = json.loads(bytes(c.get("/").data))
    finally:
        c.close()
    assert (env["REMOTE_ADDR"], env["SERVER_PROTOCOL"], env["wsgi.url_scheme"]) \
        == ("203.0.113.7", "HTTP/2", "https")
