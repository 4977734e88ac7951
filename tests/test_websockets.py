"""
WebSockets, black-box: the real server (``ws_apps:app``, the demo) against an independent
client (the ``websockets`` package), raw frames over rawhttp, and headless Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import struct
import time

import pytest
import twisted
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

import rawhttp
from browser import needs_chromium, page_text
from conftest import start_server, wait_for

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


@pytest.fixture(scope="module")
def server():
    s = start_server("ws_apps:app", "-t", "4", "--access-log", "off")
    yield s
    s.stop()


def url(server, path="/") -> str:
    return "ws://127.0.0.1:%d%s" % (server.port, path)


def client(server, path="/", **kw):
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("compression", None)
    return ws_connect(url(server, path), **kw)


def ws_log(server) -> dict:
    return server.get("/ws-log").json()


# -- raw frames ---------------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(headers=None, path="/", method="GET", version="HTTP/1.1") -> bytes:
    base = {"Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": KEY}
    base.update(headers or {})
    return rawhttp.request(method, path, [(k, v) for k, v in base.items() if v is not None],
                           version=version)


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
          mask: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients, unless mask=False)."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 65536:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(conn: rawhttp.Connection, timeout: float = 5.0):
    """(fin, opcode, payload) of the next server frame."""
    b0, b1 = conn.read_exact(2, timeout)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", conn.read_exact(2, timeout))
    elif n == 127:
        (n,) = struct.unpack("!Q", conn.read_exact(8, timeout))
    return bool(b0 & 0x80), b0 & 0x0F, conn.read_exact(n, timeout)


def raw_open(server, path="/") -> rawhttp.Connection:
    conn = server.connect()
    conn.send(handshake(path=path))
    r = conn.read_response()
    assert r.status == 101, r
    return conn


def close_code(conn: rawhttp.Connection) -> int:
    """The code of the close frame the server sends next (skipping other frames)."""
    while True:
        fin, opcode, payload = read_frame(conn)
        if opcode == CLOSE:
            return struct.unpack("!H", payload[:2])[0]


# -- echo ---------------------------------------------------------------------------------

def test_text_and_binary_echo(server):
    with client(server) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\xff\x01")
        assert ws.recv(timeout=5) == b"\x00\xff\x01"
        ws.send("")
        assert ws.recv(timeout=5) == ""


def test_flags_of_received_messages_and_fragmented_input(server):
    conn = raw_open(server)
    with conn:
        # A text message in three fragments arrives at on_message whole, with FIN | TEXT.
        conn.send(frame(TEXT, b"ab", fin=False) + frame(0, b"cd", fin=False)
                  + frame(0, b"ef"))
        assert read_frame(conn) == (True, TEXT, b"abcdef")
        conn.send(frame(BINARY, b"\x01\x02"))
        assert read_frame(conn) == (True, BINARY, b"\x01\x02")
        # Pings are answered by the server itself.
        conn.send(frame(PING, b"p"))
        assert read_frame(conn) == (True, PONG, b"p")


def test_fragmented_output(server):
    conn = raw_open(server)
    with conn:
        conn.send(frame(TEXT, b"fragments"))
        frames = [read_frame(conn)]
        while not frames[-1][0]:
            frames.append(read_frame(conn))
        # A fragmented message on the wire (autobahn may end it with an empty frame).
        assert frames[0][:2] == (False, TEXT) and len(frames) >= 3
        assert all(f[1] == 0 for f in frames[1:])
        assert b"".join(f[2] for f in frames) == b"fragmented"
    with client(server) as ws:
        ws.send("fragments")
        assert ws.recv(timeout=5) == "fragmented"


def test_order_of_1000_messages(server):
    with client(server) as ws:
        for i in range(1000):
            ws.send("m%d" % i)
        got = [ws.recv(timeout=10) for _ in range(1000)]
    assert got == ["m%d" % i for i in range(1000)]
    assert ws_log(server)["overlap"] == 0  # never two callbacks of one session at once


def test_send_from_the_apps_own_threads(server):
    with client(server) as ws:
        ws.send("threads:500")
        got = []
        while True:
            message = ws.recv(timeout=10)
            if message == "threads done":
                break
            got.append(message)
    by_thread = {}
    for message in got:
        i, j = message[1:].split(":")
        by_thread.setdefault(i, []).append(int(j))
    assert by_thread == {str(i): list(range(500)) for i in range(4)}


def test_one_mib_message(server):
    payload = os.urandom(1 << 20)
    with client(server, max_size=2 << 20) as ws:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        text = "x" * (1 << 20)
        ws.send(text)
        assert ws.recv(timeout=10) == text


def test_100_sessions_at_once(server):
    async def one(i):
        async with websockets.connect(url(server, "/s%d" % i), open_timeout=10,
                                      compression=None) as ws:
            for j in range(5):
                await ws.send("%d:%d" % (i, j))
            return [await asyncio.wait_for(ws.recv(), 10) for _ in range(5)]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(100)))

    results = asyncio.run(asyncio.wait_for(main(), 40))
    assert results == [["%d:%d" % (i, j) for j in range(5)] for i in range(100)]


# -- the handshake's request and the callbacks ----------------------------------------------

def test_environ_of_the_handshake(server):
    with client(server, "/room/1?user=ann", additional_headers={
            "Cookie": "sid=abc", "X-Test": "t1"}) as ws:
        ws.send("environ")
        env = json.loads(ws.recv(timeout=5))
    del env["pid"]
    assert env == {"path": "/room/1", "query": "user=ann", "cookie": "sid=abc",
                   "remote_addr": "127.0.0.1", "header": "t1", "subprotocol": None,
                   "scheme": "http"}


def test_callbacks_run_on_worker_threads(server):
    with client(server) as ws:
        ws.send("thread")
        info = json.loads(ws.recv(timeout=5))
    assert info["reactor"] is False
    assert info["name"].startswith("yimmo-worker-")


def test_send_from_on_open_arrives_first(server):
    with client(server, "/greet") as ws:
        ws.send("second")
        assert ws.recv(timeout=5) == "hello"
        assert ws.recv(timeout=5) == "second"


def test_on_open_refusal_and_error(server):
    with pytest.raises(InvalidStatus) as e:
        client(server, "/reject")
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as e:
        client(server, "/raise-open")
    assert e.value.response.status_code == 500
    server.wait_for_output("on_open fails on purpose")
    with client(server, "/after-refusals") as ws:  # its on_close comes after theirs would
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    closes = wait_for(lambda: "/after-refusals" in ws_log(server)["close_paths"]
                      and ws_log(server)["close_paths"])
    # on_close is for sessions that on_open accepted.
    assert "/reject" not in closes and "/raise-open" not in closes


def test_exception_in_on_message_closes_with_1011(server):
    with client(server, "/failing") as ws:
        ws.send("raise")
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd.code == 1011
    server.wait_for_output("on_message fails on purpose")
    with client(server) as ws:  # the server goes on
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    assert wait_for(lambda: "/failing" in ws_log(server)["close_paths"])


def test_slow_callback_delays_neither_http_nor_other_sessions(server):
    with client(server, "/slow") as slow, client(server) as fast:
        slow.send("sleep:1.5")
        time.sleep(0.1)
        start = time.monotonic()
        fast.send("quick")
        assert fast.recv(timeout=5) == "quick"
        assert server.get("/").body == b"hello"
        assert time.monotonic() - start < 0.8
        assert slow.recv(timeout=5) == "slept"


# -- closing ------------------------------------------------------------------------------

def test_close_handshake_started_by_the_client(server):
    conn = raw_open(server, "/bye")
    with conn:
        conn.send(frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
        fin, opcode, payload = read_frame(conn)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (CLOSE, 1000)
        assert conn.closed(timeout=3)  # the server closes the TCP connection (RFC 6455 7.1.1)
    assert wait_for(lambda: "/bye" in ws_log(server)["close_paths"])  # on_close ran


def test_close_handshake_started_by_the_app(server):
    with client(server) as ws:
        ws.send("close")
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd.code == 1000


# -- protocol errors ----------------------------------------------------------------------

def test_invalid_utf8_closes_with_1007(server):
    conn = raw_open(server)
    with conn:
        conn.send(frame(TEXT, b"ok \xff\xfe"))
        assert close_code(conn) == 1007


@pytest.mark.parametrize("data", [
    frame(0x3, b"reserved opcode"),
    frame(TEXT, b"rsv1 without an extension", rsv=0x40),
    frame(TEXT, b"unmasked", mask=False),
    frame(0, b"continuation of nothing"),
    frame(PING, b"fragmented ping", fin=False),
], ids=["opcode", "rsv", "unmasked", "continuation", "control-fragment"])
def test_protocol_errors_close_with_1002(server, data):
    conn = raw_open(server)
    with conn:
        conn.send(data)
        assert close_code(conn) == 1002


def _long_length(payload: bytes) -> bytes:
    """A binary frame whose short length is written in the 16-bit form (not minimal)."""
    key = os.urandom(4)
    return (bytes([0x82, 0x80 | 126]) + struct.pack("!H", len(payload)) + key
            + bytes(b ^ key[i % 4] for i, b in enumerate(payload)))


def test_frames_of_one_read_in_order_with_control_and_fragments(server):
    # Whole data frames are read by the server itself, the others by autobahn: one write
    # that mixes them keeps its order.
    conn = raw_open(server)
    with conn:
        conn.send(frame(BINARY, b"one") + frame(PING, b"p") + frame(TEXT, b"tw", fin=False)
                  + frame(0, b"o") + frame(BINARY, b"\x00" * 200) + frame(TEXT, b"three"))
        got = [read_frame(conn)[1:] for _ in range(5)]
        # The pong comes from the reactor, the echoes from a worker: only they keep order.
        assert (PONG, b"p") in got
        assert [f for f in got if f[0] != PONG] == [
            (BINARY, b"one"), (TEXT, b"two"), (BINARY, b"\x00" * 200), (TEXT, b"three")]


@pytest.mark.parametrize("bad, code", [
    (frame(TEXT, b"ok \xff\xfe"), 1007),
    (frame(TEXT, b"\xed\xa0\x80"), 1007),  # a UTF-16 surrogate
    (_long_length(b"short"), 1002),
    (frame(BINARY, b"unmasked", mask=False), 1002),
], ids=["utf8", "surrogate", "length", "unmasked"])
def test_a_bad_frame_after_good_ones_in_one_read(server, bad, code):
    conn = raw_open(server)
    with conn:
        conn.send(frame(BINARY, b"a") + frame(TEXT, "é".encode()) + bad + frame(BINARY, b"z"))
        # The close is sent from the reactor at once: the echoes of the frames before
        # the bad one, due from a worker, may come before it or not at all; nothing after.
        got = []
        while True:
            fin, opcode, payload = read_frame(conn)
            if opcode == CLOSE:
                break
            got.append((opcode, payload))
        assert struct.unpack("!H", payload[:2])[0] == code
        assert got == [(BINARY, b"a"), (TEXT, "é".encode())][:len(got)]


def test_oversized_message_and_frame_close_with_1009(serve):
    s = serve("ws_apps:app", "--ws-max-message-size", "64K", "--ws-max-frame-size", "16K")
    conn = raw_open(s)
    with conn:  # frames within the limit, the message beyond it
        conn.send(b"".join(frame(BINARY if i == 0 else 0, b"x" * 10000, fin=(i == 7))
                           for i in range(8)))
        assert close_code(conn) == 1009
    conn = raw_open(s)
    with conn:
        conn.send(frame(BINARY, b"x" * 20000))
        assert close_code(conn) == 1009
    with client(s) as ws:  # at the limit: fine
        ws.send(b"y" * 16000)
        assert ws.recv(timeout=5) == b"y" * 16000


# -- invalid upgrades ---------------------------------------------------------------------

@pytest.mark.parametrize("headers,method,status", [
    ({"Sec-WebSocket-Key": None}, "GET", 400),
    ({"Sec-WebSocket-Key": "short"}, "GET", 400),
    ({"Sec-WebSocket-Version": None}, "GET", 400),
    ({"Connection": None}, "GET", 400),
    ({"Connection": "keep-alive"}, "GET", 400),
    ({}, "POST", 400),
    ({}, "GET HTTP/1.0", 400),
    ({"Sec-WebSocket-Version": "8"}, "GET", 426),
    ({"Sec-WebSocket-Version": "14"}, "GET", 426),
], ids=["no-key", "bad-key", "no-version", "no-connection", "connection-keep-alive", "post",
        "http-1.0", "version-8", "version-14"])
def test_invalid_upgrades(server, headers, method, status):
    method, _, version = method.partition(" ")
    with server.connect() as conn:
        conn.send(handshake(headers, method=method, version=version or "HTTP/1.1"))
        r = conn.read_response()
        assert r.status == status, r
        if status == 426:
            assert r.header("sec-websocket-version") == "13"
        assert conn.closed(timeout=3)


def test_upgrade_without_callbacks_goes_to_the_wsgi_app(serve):
    s = serve("apps:hello")
    with s.connect() as conn:
        conn.send(handshake())
        r = conn.read_response()
    assert r.status == 200 and r.body == b"Hello, World!\n"


# -- settings -----------------------------------------------------------------------------

def test_subprotocols_origins_and_compression(serve):
    s = serve("ws_apps:app", "--ws-subprotocols", "chat, superchat",
              "--ws-origins", "http://good.example", "--ws-compression", "on")
    with client(s, subprotocols=["superchat", "chat"], origin="http://good.example",
                compression="deflate") as ws:
        assert ws.subprotocol == "chat"  # the server's preference
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        ws.send("environ")
        assert json.loads(ws.recv(timeout=5))["subprotocol"] == "chat"
        big = "abc" * 100000
        ws.send(big)
        assert ws.recv(timeout=5) == big
    with pytest.raises(InvalidStatus) as e:
        client(s, origin="http://evil.example")
    assert e.value.response.status_code == 403
    with client(s, "/choose", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "superchat"  # on_open's choice
    with client(s, subprotocols=["other"]) as ws:
        assert ws.subprotocol is None  # none in common: the session opens without one


def test_compression_is_off_by_default(server):
    with client(server, compression="deflate") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=5) == "plain"


def test_auto_ping_drops_a_silent_client(serve):
    # autobahn's timers have a precision of one second: pings come within 1-2 s.
    s = serve("ws_apps:app", "--ws-ping-interval", "1", "--ws-ping-timeout", "1")
    conn = raw_open(s)  # a raw client: it never answers pings
    with conn, client(s) as ws:  # the websockets client answers them
        start = time.monotonic()
        fin, opcode, payload = read_frame(conn, timeout=4)
        assert opcode == PING
        conn.read_until_close(timeout=4)
        assert time.monotonic() - start < 4
        ws.send("alive")
        assert ws.recv(timeout=5) == "alive"


def test_backpressure_send_waits_then_times_out(serve):
    s = serve("ws_apps:app", "--output-buffer", "64K", "--ws-send-timeout", "1")
    conn = s.connect()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    conn.send(handshake())
    assert conn.read_response().status == 101
    with conn:
        # 2000 x 64 KiB = 125 MiB would be sent; the client reads nothing for 2 s.
        conn.send(frame(TEXT, b"flood:2000:65536"))
        time.sleep(2.0)
        received = 0
        while True:
            fin, opcode, payload = read_frame(conn, timeout=10)
            if opcode == TEXT:
                break
            received += len(payload)
        assert payload == b"flood failed: TimeoutError"
        # What was queued while the client did not read stayed bounded.
        assert received < 16 << 20, received
        conn.send(frame(TEXT, b"after"))
        assert read_frame(conn) == (True, TEXT, b"after")


def test_server_shutdown_closes_with_1001(serve):
    s = serve("ws_apps:app", "--grace", "1")
    with client(s) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        s.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1001
    assert s.wait_exit(10) == 0


# -- TLS and several processes ------------------------------------------------------------

def test_wss_over_tls(serve):
    pem = os.path.join(os.path.dirname(twisted.__file__), "test", "server.pem")
    s = serve("ws_apps:app", "--listen", "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s"
              % (pem, pem), listen=False)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with ws_connect("wss://127.0.0.1:%d/secure" % s.port, ssl=context, open_timeout=5,
                    compression=None) as ws:
        payload = os.urandom(200000)
        ws.send(payload)
        assert ws.recv(timeout=5) == payload
        ws.send("environ")
        env = json.loads(ws.recv(timeout=5))
    assert (env["path"], env["scheme"]) == ("/secure", "https")


def test_several_processes(serve):
    s = serve("ws_apps:app", "-p", "2")
    pids = set()
    for i in range(8):
        with client(s, "/p%d" % i) as ws:
            ws.send("environ")
            pids.add(json.loads(ws.recv(timeout=5))["pid"])
            ws.send("echo %d" % i)
            assert ws.recv(timeout=5) == "echo %d" % i
    assert s.proc.pid not in pids  # the manager only hands out the socket


def test_settings_from_yaml_environment_and_command_line(tmp_path, monkeypatch):
    from yimmo_twisted.cli import settings_from

    path = tmp_path / "yimmo.yaml"
    path.write_text("wsgi:\n  websockets:\n    max_message_size: 1M\n    compression: on\n"
                    "    origins: [https://a.example, 'https://*.b.example']\n"
                    "    ping_interval: 0\n")
    for key in [k for k in os.environ if k.startswith("YIMMO_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("YIMMO_WS_SUBPROTOCOLS", "chat, v2")
    monkeypatch.setenv("YIMMO_WS_SEND_TIMEOUT", "9")
    s = settings_from(["-c", str(path), "--ws-send-timeout", "5", "--ws-max-frame-size", "64K",
                       "apps:hello"])
    assert (s.ws_max_message_size, s.ws_max_frame_size) == (1 << 20, 64 << 10)
    assert s.ws_compression is True and s.ws_ping_interval == 0
    assert s.ws_origins == ["https://a.example", "https://*.b.example"]
    assert s.ws_subprotocols == ["chat", "v2"] and s.ws_send_timeout == 5
    assert s.ws_ping_timeout == 20.0  # not given anywhere: the default


def test_reading_pauses_while_callbacks_lag(serve):
    s = serve("ws_apps:app", "--input-buffer", "64K")
    conn = raw_open(s)
    with conn:
        conn.send(frame(TEXT, b"sleep:1.5"))  # the session's callbacks are busy for 1.5 s
        block = frame(BINARY, b"z" * 65536)
        conn.sock.settimeout(0.5)
        sent = 0
        with pytest.raises(socket.timeout):
            while sent < 64 << 20:  # 64 MiB, if the server read it all
                conn.sock.sendall(block)
                sent += len(block)
        # Kernel buffers and input_buffer, not the whole flood, were taken in.
        assert sent < 16 << 20, sent
        assert read_frame(conn, timeout=5) == (True, TEXT, b"slept")


def test_yimmo_module_has_the_api_and_nothing_else():
    import sys

    from yimmo_twisted import yimmo_module

    module = yimmo_module.install()
    assert sys.modules["yimmo"] is module is yimmo_module.install()  # once
    public = {k for k in vars(module) if not k.startswith("_")}
    assert public == set(yimmo_module.API)
    assert (module.YMO_WS_FLAG_FIN, module.YMO_WS_FLAG_RSV1, module.YMO_WS_FLAG_RSV2,
            module.YMO_WS_FLAG_RSV3) == (0x80, 0x40, 0x20, 0x10)
    assert (module.YMO_WS_OP_CONTINUATION, module.YMO_WS_OP_TEXT, module.YMO_WS_OP_BINARY,
            module.YMO_WS_OP_CLOSE, module.YMO_WS_OP_PING, module.YMO_WS_OP_PONG) == (
        0x0, 0x1, 0x2, 0x8, 0x9, 0xA)
    with pytest.raises(TypeError):
        module.init_websockets(None, print, print)


def test_request_head_and_origin_patterns():
    from yimmo_twisted.websockets import origin_patterns, request_head

    head = request_head({"REQUEST_METHOD": "GET", "RAW_URI": "/a?b=1",
                         "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "h",
                         "HTTP_SEC_WEBSOCKET_KEY": KEY, "CONTENT_LENGTH": "0",
                         "PATH_INFO": "/a", "wsgi.url_scheme": "http"})
    assert head == ("GET /a?b=1 HTTP/1.1\r\nHOST: h\r\nSEC-WEBSOCKET-KEY: %s\r\n"
                    "CONTENT-LENGTH: 0\r\n\r\n" % KEY).encode()
    assert origin_patterns(["*", "https://a.example", "http://b.example:8080",
                            "https://*.c.example", "http://d.example*"]) == [
        "*", "https://a.example:443", "http://b.example:8080", "https://*.c.example:443",
        "http://d.example*"]


# -- a real browser -----------------------------------------------------------------------

@needs_chromium
def test_browser_echo_on_the_demo_page(serve):
    s = serve("examples.demo.app:app")
    text = page_text(s.url + "/websocket", "echo: Hello from the browser")
    assert "open" in text and "echo: Hello from the browser" in text
