"""
Listening sockets: TLS with and without ALPN on every way TLS is set up (``--tls-cert``,
``ssl:`` endpoints, sockets adopted by server processes, ``haproxy:ssl:``).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from typing import List, Optional

import pytest

import rawhttp
from test_startup import _over, certificate  # noqa: F401 (certificate: a fixture)

LOCAL = "127.0.0.1"


def _ssl_endpoint(cert: str, key: str) -> str:
    return "ssl:0:interface=%s:privateKey=%s:certKey=%s" % (LOCAL, key, cert)


def _start_tls(serve, certificate, how: str, no_proc: str):
    """A server of ``apps:hello`` with TLS set up ``how``: tls-cert, ssl or haproxy-ssl."""
    cert, key = certificate
    if how == "tls-cert":
        return serve("apps:hello", "-P", "0", "--tls-cert", cert, "--tls-key", key,
                     "-p", no_proc, listen=False)
    prefix = "haproxy:" if how == "haproxy-ssl" else ""
    return serve("apps:hello", "--listen", prefix + _ssl_endpoint(cert, key), "-p", no_proc,
                 listen=False)


def _tls_exchange(port: int, alpn: Optional[List[str]], data: bytes = b""):
    """(ALPN protocol selected, response) of one request over TLS; ``data`` goes first."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    sock = context.wrap_socket(socket.create_connection((LOCAL, port), timeout=5))
    with _over(sock) as c:
        c.send(data + rawhttp.request(headers={"Connection": "close"}))
        return sock.selected_alpn_protocol(), c.read_response()


# -- TLS and ALPN --------------------------------------------------------------------------

@pytest.mark.parametrize("how,no_proc", [("tls-cert", "1"), ("ssl", "1"),
                                         ("tls-cert", "2"), ("ssl", "2")])
def test_curl_negotiates_http11(serve, certificate, how, no_proc):
    """curl offers h2 and http/1.1 by ALPN: it must get http/1.1, not a handshake alert."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs curl")
    server = _start_tls(serve, certificate, how, no_proc)
    out = subprocess.run([curl, "-sk", "--max-time", "5", "-w", "\n%{http_version}",
                          "https://%s:%d/" % (LOCAL, server.port)],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, (out, server.output())
    assert out.stdout == "Hello, World!\n\n1.1"


@pytest.mark.parametrize("how,no_proc", [("tls-cert", "1"), ("ssl", "2")])
@pytest.mark.parametrize("alpn,selected", [(["h2", "http/1.1"], "http/1.1"),
                                           (["http/1.1"], "http/1.1"), (None, None)])
def test_alpn_selects_http11(serve, certificate, how, no_proc, alpn, selected):
    server = _start_tls(serve, certificate, how, no_proc)
    protocol, r = _tls_exchange(server.port, alpn)
    assert (protocol, r.status, r.body) == (selected, 200, b"Hello, World!\n")


def test_alpn_behind_proxy_protocol(serve, certificate):
    """haproxy:ssl: (one process: TLS outside, its PROXY header inside, as Twisted has it)."""
    server = _start_tls(serve, certificate, "haproxy-ssl", "1")
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n"
    protocol, r = _tls_exchange(server.port, ["h2", "http/1.1"], header)
    assert (protocol, r.status) == ("http/1.1", 200)
