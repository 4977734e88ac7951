"""
The client behind a proxy: X-Forwarded-* and Forwarded, believed from the peers that
forwarded_allow_ips names only (forwarded.py), as a proxy in front sends them.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from websockets.asyncio.client import connect as ws_connect

import rawhttp
from yimmo_twisted.forwarded import Trusted, apply

pytestmark = pytest.mark.timeout(30)


# -- the rules, with environ dicts alone ---------------------------------------------------

def env_of(**headers) -> dict:
    env = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5000", "wsgi.url_scheme": "http",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8081", "HTTP_HOST": "127.0.0.1:8081"}
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


DEFAULT = Trusted(["127.0.0.1", "::1", "unix"])


@pytest.mark.parametrize("xff, client", [
    ("203.0.113.7", "203.0.113.7"),
    ("6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the left part is the client's own claim
    ("203.0.113.7, 127.0.0.1", "203.0.113.7"),  # a trusted hop is skipped
    ("203.0.113.7,::1,127.0.0.1", "203.0.113.7"),
    ("127.0.0.1", "127.0.0.1"),  # all trusted: the leftmost
    ("unknown", "127.0.0.1"),  # not an address: REMOTE_ADDR stays the peer's
    ("2001:db8::7", "2001:db8::7"),
])
def test_x_forwarded_for_read_from_the_right(xff, client):
    env = env_of(x_forwarded_for=xff)
    apply(env, DEFAULT)
    assert env["REMOTE_ADDR"] == client


def test_a_trusted_network_and_any():
    env = env_of(x_forwarded_for="203.0.113.7, 10.1.2.3")
    apply(env, Trusted(["127.0.0.1", "10.0.0.0/8"]))
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    env = env_of(x_forwarded_for="203.0.113.7, 198.51.100.1")
    apply(env, Trusted(["*"]))
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_proto_host_and_port():
    env = env_of(x_forwarded_for="203.0.113.7", x_forwarded_proto="https",
                 x_forwarded_host="www.example.com")
    apply(env, DEFAULT)
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"], env["SERVER_NAME"],
            env["SERVER_PORT"]) == ("https", "www.example.com", "www.example.com", "443")
    env = env_of(x_forwarded_host="www.example.com:8443")
    apply(env, DEFAULT)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("www.example.com", "8443")
    env = env_of(x_forwarded_proto="https", x_forwarded_port="4443")
    apply(env, DEFAULT)
    assert (env["wsgi.url_scheme"], env["SERVER_PORT"]) == ("https", "4443")
    env = env_of(x_forwarded_proto="gopher", x_forwarded_host="bad host/")
    apply(env, DEFAULT)
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("http", "127.0.0.1:8081")


def test_rfc7239_forwarded_wins():
    env = env_of(forwarded='for=6.6.6.6, for="[2001:db8::1]:4711";proto=https;'
                           'host=app.example, for=127.0.0.1',
                 x_forwarded_for="198.51.100.9")
    apply(env, DEFAULT)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"],
            env["HTTP_HOST"], env["SERVER_PORT"]) == (
        "2001:db8::1", "4711", "https", "app.example", "443")


def test_ipv4_mapped_peer_is_trusted():
    assert "::ffff:127.0.0.1" in DEFAULT
    assert "198.51.100.1" not in DEFAULT and "unix:" in DEFAULT
    assert "unix:" not in Trusted(["127.0.0.1"])


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "localhost", "1.2.3"])
def test_bad_entries_are_refused(bad):
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        Trusted([bad])


# -- the real server -----------------------------------------------------------------------

HEADERS = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7"), ("X-Forwarded-Proto", "https"),
           ("X-Forwarded-Host", "www.example.com")]


def env_over(server, headers) -> dict:
    r = server.get("/env", headers=headers)
    assert r.status == 200
    return r.json()


def test_default_trusts_the_local_proxy(serve):
    s = serve("apps:app")
    env = env_over(s, HEADERS)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == (
        "203.0.113.7", "https", "www.example.com")
    # The access log has the client's address, not the proxy's.
    s.wait_for_output(r'203\.0\.113\.7 - - \[.*\] "GET /env HTTP/1\.1" 200')


def test_untrusted_peer_headers_are_passed_on_but_not_believed(serve):
    s = serve("apps:app", "--forwarded-allow-ips", "10.0.0.0/8")
    env = env_over(s, HEADERS)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == (
        "127.0.0.1", "http", "localhost")
    assert env["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.7"


def test_setting_from_environment_and_yaml(serve, tmp_path):
    s = serve("apps:app", env={"YIMMO_FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert env_over(s, HEADERS)["REMOTE_ADDR"] == "127.0.0.1"
    config = tmp_path / "y.yaml"
    config.write_text("wsgi:\n  forwarded_allow_ips: ['*']\n")
    s = serve("apps:app", "-c", str(config))
    assert env_over(s, HEADERS)["REMOTE_ADDR"] == "6.6.6.6"


def test_bad_setting_is_one_line_and_exit_1(serve):
    s = serve("apps:hello", "--forwarded-allow-ips", "127.0.0.1,proxy.local", wait=False)
    assert s.wait_exit() == 1
    assert s.output().strip() == (
        "yimmo-wsgi: error: invalid forwarded_allow_ips '127.0.0.1,proxy.local' (option "
        "--forwarded-allow-ips): 'proxy.local' is not an IP address, a network, unix or *")


def test_unix_socket_clients_are_trusted_by_default(serve, tmp_path):
    path = str(tmp_path / "y.sock")
    s = serve("apps:app", "--listen", "unix:" + path, listen=False, wait=False)
    s.wait_for_output("listening on unix " + path, timeout=10)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(path)
    sock.sendall(rawhttp.request("GET", "/env", HEADERS + [("Connection", "close")]))
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    env = json.loads(data.partition(b"\r\n\r\n")[2])
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_websocket_handshake_environ(serve):
    s = serve("ws_apps:app")

    async def main():
        async with ws_connect("ws://127.0.0.1:%d/" % s.port, open_timeout=5,
                              additional_headers=HEADERS[:2], compression=None) as ws:
            await ws.send("environ")
            return json.loads(await asyncio.wait_for(ws.recv(), 5))
    env = asyncio.run(main())
    assert (env["remote_addr"], env["scheme"]) == ("203.0.113.7", "https")
