"""
Listening sockets: TLS with and without ALPN on every way TLS is set up (``--tls-cert``,
``ssl:`` endpoints, sockets adopted by server processes, ``haproxy:ssl:``), and the
listen backlog, read back from the kernel.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import time
from typing import Dict, List, Optional

import pytest

import rawhttp
# certificate: a fixture, found here by pytest once imported.
from test_startup import _over, free_port, write_yaml

LOCAL = "127.0.0.1"


def _ssl_endpoint(cert: str, key: str) -> str:
    return "ssl:0:interface=%s:privateKey=%s:certKey=%s" % (LOCAL, key, cert)


def _start_tls(serve, certificate, how: str, no_proc: str, *args: str):
    """A server of ``apps:hello`` with TLS set up ``how``: tls-cert or ssl."""
    cert, key = certificate
    if how == "tls-cert":
        return serve("apps:hello", "-P", "0", "--tls-cert", cert, "--tls-key", key,
                     "-p", no_proc, *args, listen=False)
    return serve("apps:hello", "--listen", _ssl_endpoint(cert, key), "-p", no_proc, *args,
                 listen=False)


def _tls_exchange(port: int, alpn: Optional[List[str]], clear: bytes = b""):
    """(ALPN protocol selected, response) of one request over TLS; ``clear`` goes first,
    before the handshake (a PROXY header)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    plain = socket.create_connection((LOCAL, port), timeout=5)
    plain.sendall(clear)
    sock = context.wrap_socket(plain)
    with _over(sock) as c:
        c.send(rawhttp.request(headers={"Connection": "close"}))
        return sock.selected_alpn_protocol(), c.read_response()


# -- TLS and ALPN --------------------------------------------------------------------------

@pytest.mark.parametrize("how,no_proc", [("tls-cert", "1"), ("ssl", "1"),
                                         ("tls-cert", "2"), ("ssl", "2")])
@pytest.mark.parametrize("http2,version", [("on", "2"), ("off", "1.1")])
def test_curl_negotiates(serve, certificate, how, no_proc, http2, version):
    """curl offers h2 and http/1.1 by ALPN: it must get h2 (or http/1.1 with http2 off),
    not a handshake alert."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs curl")
    server = _start_tls(serve, certificate, how, no_proc, "--http2", http2)
    out = subprocess.run([curl, "-sk", "--max-time", "5", "-w", "\n%{http_version}",
                          "https://%s:%d/" % (LOCAL, server.port)],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, (out, server.output())
    assert out.stdout == "Hello, World!\n\n" + version


@pytest.mark.parametrize("how,no_proc", [("tls-cert", "1"), ("ssl", "2")])
@pytest.mark.parametrize("alpn,selected", [(["h2", "http/1.1"], "http/1.1"),
                                           (["http/1.1"], "http/1.1"), (None, None)])
def test_alpn_selects_http11(serve, certificate, how, no_proc, alpn, selected):
    # With HTTP/2 off, as h2 would be selected otherwise (test_http2.py).
    server = _start_tls(serve, certificate, how, no_proc, "--http2", "off")
    protocol, r = _tls_exchange(server.port, alpn)
    assert (protocol, r.status, r.body) == (selected, 200, b"Hello, World!\n")


# The same client, 203.0.113.7:40000, in the PROXY header of each version.
PROXY_HEADERS = {
    "v1": b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n",
    "v2": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + socket.inet_aton("203.0.113.7")
          + socket.inet_aton(LOCAL) + struct.pack("!HH", 40000, 443),
}


@pytest.mark.parametrize("version", list(PROXY_HEADERS))
@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_alpn_behind_proxy_protocol(serve, certificate, no_proc, version):
    """haproxy:ssl: as a load balancer speaks to a TLS backend (HAProxy's ``ssl
    send-proxy-v2``): the PROXY header in the clear, then the TLS handshake, with one
    process as with several."""
    cert, key = certificate
    server = serve("apps:environ_app", "--listen", "haproxy:" + _ssl_endpoint(cert, key),
                   "-p", no_proc, "--http2", "off", listen=False)
    protocol, r = _tls_exchange(server.port, ["h2", "http/1.1"], PROXY_HEADERS[version])
    environ = r.json()
    assert (protocol, r.status) == ("http/1.1", 200)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"], environ["wsgi.url_scheme"]) \
        == ("203.0.113.7", "40000", "https")


# -- backlog -------------------------------------------------------------------------------

def _backlogs() -> Dict[str, int]:
    """The backlog of every listening TCP and Unix socket by local address: ``ss`` shows it
    as Send-Q (/proc/net/tcp does not)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("needs ss (iproute2)")
    out = subprocess.run([ss, "-lnH", "-A", "tcp,unix_stream"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    # Netid State Recv-Q Send-Q Local-Address ...
    return {row[4]: int(row[3]) for row in map(str.split, out.splitlines()) if len(row) > 4}


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_backlog_on_every_endpoint_type(serve, certificate, tmp_path, no_proc):
    """--backlog on tcp:, unix:, haproxy: and ssl: endpoints (several processes: the
    manager's sockets, which the server processes listen on again if Unix sockets),
    unless the endpoint names its own; a Unix socket keeps its mode too."""
    cert, key = certificate
    proxied, tls, own = free_port(), free_port(), free_port()
    path = str(tmp_path / "yimmo.sock")
    server = serve("apps:hello", "--backlog", "7", "-p", no_proc,
                   "--listen", "unix:%s:mode=600" % path,
                   "--listen", "haproxy:tcp:%d:interface=%s" % (proxied, LOCAL),
                   "--listen", _ssl_endpoint(cert, key).replace("ssl:0:", "ssl:%d:" % tls),
                   "--listen", "tcp:%d:interface=%s:backlog=5" % (own, LOCAL))
    server.wait_for_output("listening on tcp %s:%d" % (LOCAL, own))
    backlogs = _backlogs()
    assert [backlogs.get("%s:%d" % (LOCAL, port)) for port in (server.port, proxied, tls)] \
        == [7, 7, 7]
    assert (backlogs.get(path), backlogs.get("%s:%d" % (LOCAL, own))) == (7, 5)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("how", ["default", "env", "yaml", "port"])
def test_backlog_sources(serve, tmp_path, how):
    """2048 by default (as far as net.core.somaxconn allows); YIMMO_WSGI_BACKLOG,
    wsgi.backlog; applied to --port too."""
    args, env, expected = [], {}, 11
    if how == "env":
        env["YIMMO_WSGI_BACKLOG"] = "11"
    elif how == "yaml":
        args = ["-c", write_yaml(tmp_path, "wsgi: {backlog: 11}\n")]
    elif how == "port":
        args = ["-P", "0", "--backlog", "11"]
    else:
        expected = min(2048, _somaxconn())
    server = serve("apps:hello", *args, env=env, listen=how != "port")
    host = "0.0.0.0" if how == "port" else LOCAL
    assert _backlogs().get("%s:%d" % (host, server.port)) == expected


@pytest.mark.parametrize("args, env, message", [
    (["--backlog", "0"], {}, "invalid backlog '0' (option --backlog): must be at least 1"),
    ([], {"YIMMO_WSGI_BACKLOG": "many"}, "invalid backlog 'many' (environment variable "
     "YIMMO_WSGI_BACKLOG): expected a whole number"),
])
def test_bad_backlog(serve, args, env, message):
    server = serve("apps:hello", *args, env=env, wait=False)
    assert server.wait_exit() != 0
    assert server.output().strip() == "yimmo-wsgi: error: " + message


def test_connect_burst_needs_no_syn_retransmit(serve):
    """600 connections at once: with a backlog of 50 some SYNs were dropped, and their
    clients connected only after the 1 s SYN retransmit; all must be served."""
    server = serve("apps:hello")
    request = rawhttp.request(headers={"Connection": "close"})
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    for _ in range(600):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((LOCAL, server.port))
        sel.register(sock, selectors.EVENT_WRITE, b"")
    connected = served = 0
    slowest = 0.0
    try:
        while (connected < 600 or served < 600) and time.monotonic() - start < 10:
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                if key.events == selectors.EVENT_WRITE:
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                    connected += 1
                    slowest = time.monotonic() - start
                    sock.send(request)
                    sel.modify(sock, selectors.EVENT_READ, b"")
                    continue
                data = sock.recv(65536)
                if data:
                    sel.modify(sock, selectors.EVENT_READ, key.data + data)
                    continue
                assert key.data.startswith(b"HTTP/1.1 200 "), key.data
                served += 1
                sel.unregister(sock)
                sock.close()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    assert (connected, served) == (600, 600)
    assert slowest < 1.0, "the last connection took %.2f s" % slowest


# -- Nagle ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["tcp", "ssl", "haproxy", "2 processes"])
def test_chunked_responses_are_not_held_for_the_clients_delayed_ack(serve, certificate, how):
    """
    A chunked body's last chunk is a small write behind the data: with Nagle's algorithm
    on, it waited for the client's delayed ACK, 40 ms per response (229 req/s for a
    generator app under wrk -c10).  40 responses on one connection take milliseconds
    with TCP_NODELAY, and 1.6 s without.
    """
    cert, key = certificate
    endpoint = {"tcp": "tcp:0:interface=%s" % LOCAL, "ssl": _ssl_endpoint(cert, key),
                "haproxy": "haproxy:tcp:0:interface=%s" % LOCAL,
                "2 processes": "tcp:0:interface=%s" % LOCAL}[how]
    server = serve("apps:status", "--listen", endpoint, "--access-log", "off",
                   *(["-p", "2"] if how == "2 processes" else []), listen=False)
    sock = socket.create_connection((LOCAL, server.port), timeout=5)
    if how == "haproxy":
        sock.sendall(b"PROXY TCP4 192.0.2.1 %s 5555 %d\r\n" % (LOCAL.encode(), server.port))
    if how == "ssl":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with _over(sock) as c:
        started = time.monotonic()
        for _ in range(40):
            c.send(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == b"body"
        assert time.monotonic() - started < 0.8
