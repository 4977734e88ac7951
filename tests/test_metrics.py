"""
Prometheus metrics (metrics.py): the page on its own endpoint, read with
prometheus_client's parser, from one process and summed by the manager over several,
through every door (yimmo-wsgi, twistd, a .tac file, YAML), and the bad values refused.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

import rawhttp
from conftest import LOCAL, TWISTD_NODAEMON, ServerProcess, _env, wait_for
from test_proc import pids_of

METRICS_ON = r"metrics (?:of the server processes )?on tcp 127\.0\.0\.1:(\d+)"
QUIET = ("--access-log", "off")

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def metrics_port(server: ServerProcess) -> int:
    return int(server.wait_for_output(METRICS_ON, 15).group(1))


def page(port: int) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        return r.read().decode()


def scrape(port: int) -> Samples:
    """Every sample of the page: (name, sorted labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(page(port)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def scrape_when(port: int, ready: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """The first page for which ``ready`` holds, else the last one.  A worker counts its
    request once the response is handed over, so the client may see it a moment before
    the page does."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: Samples, method: str, status: str, protocol: str = "") -> float:
    """yimmo_requests_total of ``method`` and ``status``, of one protocol or of all."""
    return sum(n for (name, labels), n in samples.items()
               if name == "yimmo_requests_total" and dict(labels)["method"] == method
               and dict(labels)["status"] == status
               and protocol in ("", dict(labels)["protocol"]))


def test_requests_latency_bytes_and_connections(serve):
    server = serve("apps:status", "--metrics-listen", LOCAL, "-t", "2", *QUIET)
    port = metrics_port(server)
    assert not [k for k in scrape(port) if k[0] == "yimmo_requests_total"]
    for _ in range(3):
        assert server.get("/200").status == 200
    assert server.get("/404").status == 404
    assert server.exchange(rawhttp.request("POST", "/503", body=b"x" * 100)).status == 503
    with server.connect() as c:  # one keep-alive connection, two requests
        for _ in range(2):
            c.send(b"HEAD /204 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response(head_request=True).status == 204
        assert value(scrape(port), "yimmo_connections_open") == 1  # this one, kept alive
    # Refused by the server itself (no app ran): method "-"
    assert server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").status == 400
    samples = scrape_when(port, lambda s: value(s, "yimmo_request_duration_seconds_count") == 7)
    assert requests(samples, "GET", "2xx") == 3
    assert requests(samples, "GET", "4xx") == 1
    assert requests(samples, "POST", "5xx") == 1
    assert requests(samples, "HEAD", "2xx") == 2
    assert requests(samples, "-", "4xx") == 1
    assert requests(samples, "GET", "2xx", "HTTP/1.1") == 3
    assert requests(samples, "-", "4xx", "HTTP/1.1") == 1
    assert value(samples, "yimmo_request_duration_seconds_count") == 7
    assert value(samples, "yimmo_request_duration_seconds_bucket", le="+Inf") == 7
    assert 0 < value(samples, "yimmo_request_duration_seconds_sum") < 7
    assert value(samples, "yimmo_connections_total") == 7
    assert value(samples, "yimmo_received_bytes_total") > 100
    assert value(samples, "yimmo_sent_body_bytes_total") == 4 * 5  # "body", HEAD sends none
    assert value(samples, "yimmo_workers") == 2
    assert value(samples, "yimmo_process_resident_bytes") > 1 << 20
    # The page is never on the app's port: there, /metrics is the app's.
    assert b"yimmo_requests_total" not in server.get("/metrics").body
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5)
    assert e.value.code == 404


def test_requests_carry_their_protocol(serve):
    """HTTP/1.0, HTTP/1.1 and HTTP/2 (h2c) requests on one server, each counted under its
    own protocol label, the server's own refusals too."""
    from test_http2 import Client
    server = serve("apps:status", "--metrics-listen", LOCAL, "--http2-cleartext", "on",
                   *QUIET)
    port = metrics_port(server)
    assert server.get("/200").status == 200
    assert server.exchange(b"GET /200 HTTP/1.0\r\n\r\n").status == 200
    c = Client(server.port)
    try:
        assert c.get("/200").status == 200
        assert c.get("/404").status == 404
        assert c.get("no-slash").status == 400  # refused: an invalid :path
    finally:
        c.close()
    samples = scrape_when(port, lambda s: value(s, "yimmo_request_duration_seconds_count") == 4)
    assert requests(samples, "GET", "2xx", "HTTP/1.1") == 1
    assert requests(samples, "GET", "2xx", "HTTP/1.0") == 1
    assert requests(samples, "GET", "2xx", "HTTP/2") == 1
    assert requests(samples, "GET", "4xx", "HTTP/2") == 1
    assert requests(samples, "-", "4xx", "HTTP/2") == 1
    assert requests(samples, "-", "4xx") == 1


def test_in_flight_queued_and_busy_workers(serve):
    server = serve("apps:sleep", "--metrics-listen", LOCAL, "-t", "1", *QUIET)
    port = metrics_port(server)
    threads = [threading.Thread(target=server.get, args=("/?t=1.4",), kwargs={"timeout": 10})
               for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # One worker: one request runs, two wait in its queue.
        samples = wait_for(lambda: (lambda s: s if value(s, "yimmo_requests_in_flight") == 3
                                    and value(s, "yimmo_workers_busy") == 1
                                    else None)(scrape(port)), timeout=3)
        assert samples, "three requests never in flight"
        assert value(samples, "yimmo_workers_busy") == 1
        assert value(samples, "yimmo_queue_depth") == 2
        assert value(samples, "yimmo_connections_open") == 3
    finally:
        for t in threads:
            t.join(10)
    samples = scrape_when(port, lambda s: value(s, "yimmo_requests_in_flight") == 0)
    assert value(samples, "yimmo_requests_in_flight") == 0
    assert value(samples, "yimmo_workers_busy") == 0
    # From each head to its answer, the wait in the queue included: 1.5, 3 and 4.5 s.
    assert value(samples, "yimmo_request_duration_seconds_bucket", le="1.0") == 0
    assert value(samples, "yimmo_request_duration_seconds_bucket", le="2.5") == 1
    assert value(samples, "yimmo_request_duration_seconds_bucket", le="5.0") == 3
    assert value(samples, "yimmo_thread_handovers_total") >= 1


def test_websocket_sessions_and_messages(serve):
    server = serve("ws_apps:app", "--metrics-listen", LOCAL, *QUIET)
    port = metrics_port(server)
    url = "ws://127.0.0.1:%d/" % server.port
    with ws_connect(url, open_timeout=5, close_timeout=2, compression=None) as ws:
        for i in range(5):
            ws.send("m%d" % i)
            ws.recv(timeout=5)
        samples = scrape_when(port, lambda s: value(
            s, "yimmo_websocket_messages_total", direction="out") == 5)
        assert value(samples, "yimmo_websocket_sessions_open") == 1
        assert value(samples, "yimmo_websocket_sessions_total") == 1
        assert value(samples, "yimmo_websocket_messages_total", direction="in") == 5
        assert value(samples, "yimmo_websocket_messages_total", direction="out") == 5
    assert wait_for(lambda: value(scrape(port), "yimmo_websocket_sessions_open") == 0)
    assert value(scrape(port), "yimmo_websocket_sessions_total") == 1


def test_manager_sums_its_processes_and_keeps_the_counts_of_those_gone(serve):
    server = serve("proc_apps:pid", "-p", "2", "-t", "2", "--metrics-listen", LOCAL, *QUIET)
    port = metrics_port(server)
    pids = pids_of(server)
    seen = set()
    for _ in range(40):
        r = server.get("/")
        assert r.status == 200
        seen.add(r.body)
    assert len(seen) == 2, "both processes served"  # so the sum is over both
    samples = scrape_when(port, lambda s: requests(s, "GET", "2xx") == 40)
    assert requests(samples, "GET", "2xx") == 40
    assert value(samples, "yimmo_workers") == 4
    assert value(samples, "yimmo_processes") == 2
    assert value(samples, "yimmo_process_restarts_total") == 0
    # A process killed: its counts as last scraped stay in the sum (no counter goes back).
    os.kill(pids[0], signal.SIGKILL)
    server.wait_for_output(r"died \(signal 9\); starting another", 10)
    assert wait_for(lambda: len(re.findall(r"server process \d ready", server.output())) == 3,
                    15)
    for _ in range(10):
        assert server.get("/").status == 200
    samples = scrape_when(port, lambda s: requests(s, "GET", "2xx") == 50)
    assert requests(samples, "GET", "2xx") == 50
    assert value(samples, "yimmo_process_restarts_total") == 1
    # A reload: the old processes' last counts come as they stop, after their drain.
    for _ in range(5):
        assert server.get("/").status == 200
    server.signal(signal.SIGHUP)
    server.wait_for_output("reload done", 20)
    samples = scrape_when(port, lambda s: requests(s, "GET", "2xx") == 55)
    assert requests(samples, "GET", "2xx") == 55
    assert value(samples, "yimmo_reloads_total") == 1


def test_recycles_by_limit(serve):
    server = serve("apps:hello", "--max-requests", "20", "--metrics-listen", LOCAL, *QUIET)
    port = metrics_port(server)
    for _ in range(25):
        server.get("/")
    assert wait_for(lambda: value(scrape(port), "yimmo_process_recycles_total",
                                  reason="max_requests") == 1, 15)
    assert requests(scrape_when(port, lambda s: requests(s, "GET", "2xx") == 25),
                    "GET", "2xx") == 25


def test_twistd_door(tmp_path):
    server = ServerProcess(TWISTD_NODAEMON + ["yimmo", "--app", "apps:hello", "--listen", LOCAL,
                                     "--metrics-listen", LOCAL, "-t", "1"], _env(None))
    try:
        server._wait_listening(15)
        port = metrics_port(server)
        server.get("/")
        assert requests(scrape_when(port, lambda s: requests(s, "GET", "2xx") == 1),
                        "GET", "2xx") == 1
    finally:
        server.stop()


@pytest.mark.parametrize("no_proc", [1, 2])
def test_tac_file_and_yaml_doors(tmp_path, no_proc):
    config = tmp_path / "yimmo.yaml"
    config.write_text("wsgi:\n  metrics:\n    listen: %s\n" % LOCAL)
    tac = tmp_path / "app.tac"
    tac.write_text(textwrap.dedent("""\
        from twisted.application import service
        from yimmo_twisted import YimmoService
        application = service.Application("metrics")
        YimmoService(app="apps:hello", listen=%r, no_threads=1, no_proc=%d,
                     config=%r).setServiceParent(application)
        """ % (LOCAL, no_proc, str(config))))
    server = ServerProcess(TWISTD_NODAEMON + ["-y", str(tac)], _env(None))
    try:
        server._wait_listening(15)
        port = metrics_port(server)
        for _ in range(3):
            server.get("/")
        assert requests(scrape_when(port, lambda s: requests(s, "GET", "2xx") == 3),
                        "GET", "2xx") == 3
    finally:
        server.stop()


def test_without_prometheus_client_metrics_listen_is_refused_in_one_line(serve, tmp_path):
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not here')\n")
    server = serve("apps:hello", "--metrics-listen", LOCAL, wait=False,
                   env={"PYTHONPATH": str(tmp_path)})
    assert server.wait_exit(15) != 0
    assert server.output().strip().splitlines() == [
        "yimmo-wsgi: error: metrics_listen needs prometheus-client: pip install "
        "'yimmo-twisted[metrics]'"]


@pytest.mark.parametrize("raw, message", [
    ("haproxy:tcp:0", "the metrics endpoint takes no PROXY protocol"),
])
def test_bad_metrics_listen(serve, raw, message):
    server = serve("apps:hello", "--metrics-listen", raw, wait=False)
    assert server.wait_exit(15) != 0
    assert server.output().strip().splitlines() == [
        "yimmo-wsgi: error: invalid metrics_listen %r (option --metrics-listen): %s"
        % (raw, message)]


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_metrics_port_taken_stops_start_up(serve, no_proc):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        server = serve("apps:hello", "-p", no_proc, "--metrics-listen",
                       "tcp:%d:interface=127.0.0.1" % taken.getsockname()[1], wait=False)
        assert server.wait_exit(15) != 0
        assert "Address already in use" in server.output()
    finally:
        taken.close()


def test_scrapes_cost_no_request(serve):
    """A scrape under load: every request still answered, the page still whole."""
    server = serve("apps:hello", "-p", "2", "--metrics-listen", LOCAL, *QUIET)
    port = metrics_port(server)
    stop = time.monotonic() + 2
    errors = []

    def load() -> None:
        while time.monotonic() < stop:
            try:
                if server.get("/").status != 200:
                    errors.append("status")
            except OSError as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    scrapes = 0
    while time.monotonic() < stop:
        assert value(scrape(port), "yimmo_processes") == 2
        scrapes += 1
    for t in threads:
        t.join(10)
    assert not errors and scrapes > 5
