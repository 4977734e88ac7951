"""
Behind real proxies: Debian's nginx and HAProxy, run from the deployment files users copy
(examples/deploy/nginx.conf and haproxy.cfg, their placeholders filled in), as the
current user, in front of the real server.  Keep-alive upstream connections over TCP and
a Unix socket, the client address from X-Forwarded-For and from the PROXY protocol (v2,
to TCP and Unix endpoints), WebSockets, 100 MB uploads and downloads streamed in bounded
memory, health checks that log nothing, and no failed request across a SIGHUP reload or
a rolling restart of the servers behind nginx.  Skipped when nginx or haproxy is not
installed (.ci/run installs both).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, List, Set, Tuple

import pytest
from websockets.sync.client import connect as ws_connect

import rawhttp
from conftest import ROOT, ServerProcess, wait_for
from test_metrics import metrics_port, scrape, value
from test_proc import Load, pids_of, sighup_under
from test_startup import LOCAL, free_port

DEPLOY = Path(ROOT) / "examples" / "deploy"
# Debian puts both in /usr/sbin, which a non-root PATH may lack.
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
NGINX = shutil.which("nginx", path=SBIN)
HAPROXY = shutil.which("haproxy", path=SBIN)
QUIET = ("--access-log", "off")
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _start_proxy(argv: List[str], port: int) -> ServerProcess:
    """Start a proxy in the foreground; fails the test unless it listens within 10 s."""
    proxy = ServerProcess(argv, dict(os.environ))
    proxy.port = port
    if not wait_for(lambda: _listening(port) or not proxy.alive(), 10) or not proxy.alive():
        proxy.stop()
        pytest.fail("%s did not listen on %d:\n%s" % (argv[0], port, proxy.output()))
    return proxy


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``nginx(*upstreams)`` (``127.0.0.1:PORT`` or ``unix:PATH``) runs nginx
    with examples/deploy/nginx.conf on a port of its own; stopped at teardown."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    started: List[ServerProcess] = []

    def start(*upstreams: str) -> ServerProcess:
        prefix = tmp_path / ("nginx%d" % len(started))
        prefix.mkdir()
        port = free_port()
        conf = (DEPLOY / "nginx.conf").read_text()
        conf = (conf.replace("@PREFIX@", str(prefix))
                .replace("@LISTEN@", "127.0.0.1:%d" % port)
                .replace("@UPSTREAMS@", "\n        ".join("server %s;" % u for u in upstreams)))
        assert not PLACEHOLDER.search(conf), conf
        (prefix / "nginx.conf").write_text(conf)
        directives = "daemon off; pid %s/nginx.pid; error_log stderr;" % prefix
        if os.geteuid() == 0:
            # Run as root, nginx would run its workers as "nobody", which may not reach
            # a Unix socket under tmp_path: they run as the current user instead.
            directives += " user root;"
        proxy = _start_proxy([NGINX, "-e", "stderr", "-p", str(prefix),
                              "-c", str(prefix / "nginx.conf"), "-g", directives], port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``haproxy(upstream, http_checks=True)`` runs HAProxy with
    examples/deploy/haproxy.cfg, health checks every 100 ms; stopped at teardown."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    started: List[ServerProcess] = []

    def start(upstream: str, http_checks: bool = True) -> ServerProcess:
        port = free_port()
        conf = (DEPLOY / "haproxy.cfg").read_text()
        if not http_checks:
            conf = re.sub(r"(?m)^ *(option httpchk|http-check)\b.*\n", "", conf)
            assert "httpchk" not in conf, conf
        conf = (conf.replace("@LISTEN@", "127.0.0.1:%d" % port)
                .replace("@UPSTREAM@", upstream).replace("@CHECK_INTERVAL@", "100ms"))
        assert not PLACEHOLDER.search(conf), conf
        path = tmp_path / ("haproxy%d.cfg" % len(started))
        path.write_text(conf)
        proxy = _start_proxy([HAPROXY, "-f", str(path), "-db"], port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(params=["tcp", "unix"])
def upstream(request, serve, tmp_path: Path) -> Callable[..., Tuple[ServerProcess, str]]:
    """Factory: ``upstream(app, *args)`` starts the server on TCP or on a Unix socket
    (the test's parameter): (the server, its address as nginx's upstream names it)."""
    def start(app: str, *args: str) -> Tuple[ServerProcess, str]:
        if request.param == "tcp":
            server = serve(app, *args)
            return server, "127.0.0.1:%d" % server.port
        path = str(tmp_path / "yimmo.sock")
        server = serve(app, "--listen", "unix:" + path, *args, listen=False, wait=False)
        server.wait_for_output("listening on unix " + path, timeout=10)
        return server, "unix:" + path
    return start


# -- nginx ---------------------------------------------------------------------------

def test_nginx_reuses_upstream_connections(nginx, upstream):
    server, address = upstream("apps:environ_app", "--metrics-listen", LOCAL, *QUIET)
    proxy = nginx(address)
    metrics = metrics_port(server)
    before = value(scrape(metrics), "yimmo_connections_total")
    for _ in range(60):  # each on a fresh client connection to nginx
        r = rawhttp.get(proxy.port, "/")
        assert r.status == 200 and r.json()["REMOTE_ADDR"] == "127.0.0.1", r
    opened = value(scrape(metrics), "yimmo_connections_total") - before
    # nginx's two workers each keep their connection(s) to yimmo open between requests:
    # without keep-alive upstream it would be 60.
    assert 1 <= opened <= 4, opened


def test_nginx_forwards_the_client_address(nginx, upstream):
    _, address = upstream("apps:environ_app", *QUIET)
    proxy = nginx(address)
    env = rawhttp.get(proxy.port, "/").json()
    # The peer is nginx, trusted by default (127.0.0.1, or "unix" for a socket client):
    # REMOTE_ADDR is the client's, as nginx saw it.
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    # A client's own X-Forwarded-For: nginx appends the address it saw, and yimmo reads
    # the list from the right, skipping trusted hops: 127.0.0.1 (this client) is a
    # trusted address, so the client is the first untrusted one to its left,
    # 198.51.100.9; what is left of that is the client's claim, never taken.
    env = rawhttp.get(proxy.port, "/", [("X-Forwarded-For", "203.0.113.5, 198.51.100.9"),
                                        ("X-Forwarded-Proto", "https")]).json()
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.5, 198.51.100.9, 127.0.0.1"
    assert env["REMOTE_ADDR"] == "198.51.100.9"
    # nginx replaces X-Forwarded-Proto with its own $scheme: the client cannot claim https.
    assert env["HTTP_X_FORWARDED_PROTO"] == "http" and env["wsgi.url_scheme"] == "http"


def test_nginx_proxies_websockets(nginx, upstream):
    _, address = upstream("ws_apps:app", *QUIET)
    proxy = nginx(address)
    with ws_connect("ws://127.0.0.1:%d/discard" % proxy.port, open_timeout=5,
                    close_timeout=5) as ws:
        for message in ("hello", b"\x00\xffbinary", "x" * 100_000):
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.send("environ")
        assert '"remote_addr": "127.0.0.1"' in ws.recv(timeout=5)


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_nginx_streams_a_100_mb_upload_in_bounded_memory(nginx, serve, framing):
    server = serve("apps:app", *QUIET)
    proxy = nginx("127.0.0.1:%d" % server.port)
    assert rawhttp.get(proxy.port, "/").status == 200  # the server warmed up
    rss_before = _rss_kib(server.proc.pid)
    size, block = 100 << 20, b"u" * (1 << 20)
    # A chunked upload reaches yimmo chunked too: nginx, without request buffering,
    # sends a Content-Length only for a body it has read whole before it connects.
    header = ("Content-Length", str(size)) if framing == "length" else \
        ("Transfer-Encoding", "chunked")
    piece = block if framing == "length" else b"%x\r\n%s\r\n" % (len(block), block)
    with rawhttp.connect(proxy.port, timeout=30) as c:
        c.send(rawhttp.request("POST", "/discard", [header]))
        for _ in range(size // len(block)):
            c.send(piece)
        if framing == "chunked":
            c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=30)
    assert r.status == 200 and r.body == b"%d" % size, r
    # The peak RSS of the server over the upload (VmHWM): the body went through in
    # pieces, never held whole by nginx (proxy_request_buffering off) or by yimmo.
    growth = _rss_kib(server.proc.pid, "VmHWM") - rss_before
    assert growth < 30 * 1024, "RSS grew by %d KiB" % growth


def test_nginx_streams_a_100_mb_download_to_a_slow_client_in_bounded_memory(nginx, serve):
    server = serve("apps:app", *QUIET)
    proxy = nginx("127.0.0.1:%d" % server.port)
    assert rawhttp.get(proxy.port, "/").status == 200  # the server warmed up
    rss_before = _rss_kib(server.proc.pid)
    size = 100 << 20
    with rawhttp.connect(proxy.port, timeout=30) as c:
        c.send(rawhttp.request("GET", "/big?size=%d&cl=1" % size))
        assert c.read_head()[1] == 200
        got = 0
        while got < 1 << 20:
            got += len(c.read_some())
        # The client stops reading: nginx (proxy_buffering off) stops reading from
        # yimmo, whose worker must then wait, not pile the app's blocks up in memory.
        time.sleep(1.0)
        while got < size:
            data = c.read_some()
            assert data, "closed after %d bytes" % got
            got += len(data)
    assert got == size
    growth = _rss_kib(server.proc.pid, "VmHWM") - rss_before
    assert growth < 30 * 1024, "RSS grew by %d KiB" % growth


# -- HAProxy and the PROXY protocol ----------------------------------------------------

@pytest.mark.parametrize("to, checks", [("tcp", "httpchk"), ("tcp", "tcp"),
                                         ("unix", "httpchk")])
def test_haproxy_passes_the_client_address_with_proxy_v2(haproxy, serve, tmp_path, to,
                                                         checks):
    if to == "tcp":
        # Not tcp:0: HAProxy's file needs the port before the server runs.
        port = free_port()
        endpoint, address = "tcp:%d:interface=127.0.0.1" % port, "127.0.0.1:%d" % port
    else:
        path = str(tmp_path / "yimmo.sock")
        endpoint, address = "unix:" + path, "unix@" + path
    server = serve("apps:environ_app", "--listen", "haproxy:" + endpoint,
                   "--metrics-listen", LOCAL, listen=False, wait=False)
    server.wait_for_output("listening on (tcp|unix) ", timeout=10)
    # "tcp": the file without its HTTP checks, HAProxy's plain ones (connect, send the
    # PROXY header, close).
    proxy = haproxy(address, http_checks=checks == "httpchk")
    with rawhttp.connect(proxy.port) as c:
        client = c.sock.getsockname()
        c.send(rawhttp.request("GET", "/"))
        env = c.read_response().json()
    # The header's source, the client as HAProxy saw it: its port too, not HAProxy's own.
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (client[0], str(client[1]))
    # The health checks, every 100 ms, each on a connection of its own: answered as any
    # request (the HTTP ones), and logging nothing but their access log lines.
    metrics = metrics_port(server)
    assert wait_for(lambda: value(scrape(metrics), "yimmo_connections_total") >= 6, 5)
    if checks == "httpchk":
        assert '"GET /healthz HTTP/1.1" 200' in server.output(), server.output()
    # Twisted's log levels as yimmo writes them ("[yimmo.server#warn]"), and tracebacks.
    problems = re.findall(r".*(?:#(?:warn|error|critical)\]|Traceback|Unhandled).*",
                          server.output())
    assert problems == [], server.output()
    assert "is DOWN" not in proxy.output(), proxy.output()


# -- no failed request across reloads and restarts -------------------------------------

class MixedLoad:
    """Two clients sending GETs through nginx, which it retries on another connection
    when one fails, and two sending POSTs, which it does not retry once sent: a kept-alive
    connection yimmo closed under a request would fail the POST (a 502)."""

    def __init__(self, port: int, target: str = "/") -> None:
        self.loads = [Load(port, clients=2, target=target),
                      Load(port, clients=2, target=target, method="POST", body=b"p" * 1000)]

    def stop(self) -> None:
        for load in self.loads:
            load.stop()

    @property
    def errors(self) -> List[str]:
        return [e for load in self.loads for e in load.errors]

    def answered(self, pid: int) -> int:
        """Requests answered by the server process ``pid`` (the app: proc_apps')."""
        return sum(load.ok[b"%d" % pid] for load in self.loads)

    def pids(self) -> Set[int]:
        return {int(p) for load in self.loads for p in load.ok}


def test_sighup_under_nginx_fails_no_request(nginx, serve):
    server = serve("proc_apps:pid", "-p", "2", "-t", "2", *QUIET)
    before = set(pids_of(server))
    proxy = nginx("127.0.0.1:%d" % server.port)
    load = MixedLoad(proxy.port)
    sighup_under(server, load, 1.0)
    # nginx answers 502 for a request yimmo refused or dropped: none, and the requests
    # on nginx's kept-alive connections to the old processes moved to the new ones.
    assert load.errors == [], load.errors[:5]
    assert load.pids() & before and load.pids() - before, (load.pids(), before)


def test_rolling_restart_behind_nginx_fails_no_request(nginx, serve):
    """Three servers behind one upstream, each in turn drained (SIGTERM) and replaced on
    its port.  The successor starts once the old one has exited: meanwhile that port
    refuses connections, and nginx (proxy_next_upstream error, its default) sends the
    request to another server; a kept-alive connection the draining server closes is
    retried too.  nginx then leaves the server out for fail_timeout: the next one is
    stopped only after that, or nginx would find none left ("no live upstreams", 502)."""
    ports = [free_port() for _ in range(3)]

    def start(port: int) -> ServerProcess:
        return serve("proc_apps:slow", "--grace", "5", "-t", "2", *QUIET,
                     "--listen", "tcp:%d:interface=127.0.0.1" % port, listen=False)

    servers = [start(port) for port in ports]
    proxy = nginx(*("127.0.0.1:%d fail_timeout=1s" % port for port in ports))
    # Requests of 50 ms, about one in flight on each server at a time: the drain at its
    # SIGTERM finishes it.
    load = MixedLoad(proxy.port, target="/?s=0.05")
    try:
        time.sleep(0.5)
        for i, port in enumerate(ports):
            old = servers[i]
            old.signal(signal.SIGTERM)
            assert old.wait_exit(10) == 0
            servers[i] = start(port)
            time.sleep(1.2)  # past fail_timeout: nginx sends it requests again
        # Each successor serves (the last one once nginx takes it back).
        new = [s.proc.pid for s in servers]
        wait_for(lambda: all(load.answered(pid) for pid in new), 5)
    finally:
        load.stop()
    assert load.errors == [], load.errors[:5]
    assert all(load.answered(pid) for pid in new), (load.pids(), new)
