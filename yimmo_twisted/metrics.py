"""
Prometheus metrics (``metrics_listen``): counted cheaply where the work happens, turned
into prometheus-client's text format only when the page is asked for.

Counting: each worker thread has its own ``Tally`` of the requests it ran (so no lock and
no lost increment between threads), the reactor thread counts connections, bytes
received, refusals and WebSocket messages in plain integers on the server, and the gauges
(requests in flight, the work queued for workers, busy workers, open connections) are read
off the server's state at the scrape.  prometheus-client's own metric objects take a lock
and a label lookup per update, a cost hello world would notice; here a scrape costs what a
request costs, and a request a few additions.

A scrape makes a ``snapshot``: plain data (JSON-able), so that with several server
processes each process sends its snapshot to the manager over its control pipe, and the
manager serves their sum (``Totals``): one page for the whole service, with the counters of
the processes that have ended carried on so that no counter ever goes back.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from time import monotonic
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Tuple)

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString

from .logs import logger
from .recycle import resident_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .context import Context
    from .server import Server

log = logger("yimmo.metrics")

PATH = b"/metrics"
# Request durations, seconds: from half a millisecond (a hello world) to ten seconds.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
          10.0)
# The methods with a label of their own; the others (llhttp knows some 30) count as
# "other", so that no client can grow the page.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
REFUSED = "-"  # the method label of requests the server refused before any app ran
# The protocol label: the environ's SERVER_PROTOCOL; a refusal's is that of its answer.
PROTOCOLS = frozenset(("HTTP/1.0", "HTTP/1.1", "HTTP/2"))

# The fields of a snapshot that are counters (summed over processes, and carried on when
# a process ends); the others are gauges (summed over the processes alive).
COUNTERS = ("requests", "buckets", "seconds", "received", "sent", "connections",
            "handovers", "ws_sessions", "ws_in", "ws_out", "cpu_seconds")


class Tally:
    """The requests one worker thread ran (written by that thread alone)."""

    __slots__ = ("requests", "buckets", "seconds", "sent")

    def __init__(self) -> None:
        # (method, status class, protocol) -> count
        self.requests: Dict[Tuple[str, str, str], int] = {}
        self.buckets = [0] * (len(BOUNDS) + 1)  # the last one: above every bound
        self.seconds = 0.0
        self.sent = 0  # response body bytes

    def record(self, ctx: "Context") -> None:
        ex = ctx.exchange
        status = ctx.status
        environ = ex.environ
        key = (environ["REQUEST_METHOD"], status[0] if status else "5",
               environ.get("SERVER_PROTOCOL", "-"))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        seconds = monotonic() - ex.started
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        self.seconds += seconds
        if ctx.head_sent:
            self.sent += ctx.sent


def snapshot(server: "Server") -> Dict[str, Any]:
    """The server's counters and gauges now (reactor thread)."""
    pool = server.pool
    requests: Dict[str, int] = {}
    buckets = [0] * (len(BOUNDS) + 1)
    seconds = 0.0
    sent = 0
    queued = pool.queued()
    busy = pool.busy()
    for worker in pool.workers:
        tally = worker.tally
        if tally is None:
            continue
        # A worker may add to its tally meanwhile: copy before reading (a dict changing
        # size while iterated raises; a copy of it never does).
        for (method, status_class, protocol), n in tally.requests.copy().items():
            key = "%s %s %s" % (method, status_class, protocol)  # JSON's keys are strings
            requests[key] = requests.get(key, 0) + n
        for i, n in enumerate(list(tally.buckets)):
            buckets[i] += n
        seconds += tally.seconds
        sent += tally.sent
    for protocol, refused in (("HTTP/1.1", server.refused), ("HTTP/2", server.refused_h2)):
        for status, n in refused.items():
            key = "%s %d %s" % (REFUSED, status // 100, protocol)
            requests[key] = requests.get(key, 0) + n
    hops = pool.hops()
    bridge = server.websockets
    ws_open = sum(1 for p in bridge.protocols if p.status == 101)
    cpu = os.times()
    return {
        "requests": requests, "buckets": buckets, "seconds": seconds,
        "received": server.received, "sent": sent, "connections": server.connections,
        "handovers": hops["worker_wakeups"] + hops["reactor_wakeups"],
        "ws_sessions": bridge.opened, "ws_in": bridge.messages_in,
        "ws_out": bridge.messages_out, "cpu_seconds": cpu.user + cpu.system,
        "in_flight": queued + busy, "queued": queued, "busy": busy,
        "workers": len(pool.workers),
        "connections_open": len(server.sessions) + len(server.awaiting_header)
        + len(bridge.protocols),
        "ws_open": ws_open, "resident_bytes": resident_bytes(),
    }


def add(total: Dict[str, Any], part: Dict[str, Any],
        fields: Optional[Iterable[str]] = None) -> None:
    """Add the ``fields`` (all by default) of snapshot ``part`` to ``total``."""
    for name in part if fields is None else fields:
        value = part.get(name)
        if value is None:
            continue
        have = total.get(name)
        if isinstance(value, dict):
            merged = dict(have or {})
            for key, n in value.items():
                merged[key] = merged.get(key, 0) + n
            total[name] = merged
        elif isinstance(value, list):
            total[name] = [a + b for a, b in zip(have, value)] if have else list(value)
        else:
            total[name] = (have or 0) + value


class Totals:
    """
    The manager's sum over its server processes: the live ones' latest snapshots, plus the
    counters of those that have ended (their last snapshot, sent as they stopped), and
    the manager's own counts of restarts and recycles.
    """

    def __init__(self) -> None:
        self.ended: Dict[str, Any] = {}

    def process_ended(self, last: Optional[Dict[str, Any]]) -> None:
        if last is not None:
            add(self.ended, last, COUNTERS)

    def sum(self, live: List[Dict[str, Any]]) -> Dict[str, Any]:
        total: Dict[str, Any] = {}
        add(total, self.ended)
        for part in live:
            add(total, part)
        return total


# -- the page -------------------------------------------------------------------------

def _families(data: Dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)

    def counter(name: str, doc: str, field: str) -> Any:
        return CounterMetricFamily(name, doc, value=data.get(field, 0))

    def gauge(name: str, doc: str, field: str) -> Any:
        return GaugeMetricFamily(name, doc, value=data.get(field, 0))

    requests = CounterMetricFamily("yimmo_requests", "HTTP requests answered, by method, "
                                   "status class and protocol (method - : refused before "
                                   "any app ran)", labels=("method", "status", "protocol"))
    by_label: Dict[tuple, int] = {}
    for key, n in data.get("requests", {}).items():
        method, status_class, protocol = key.split(" ", 2)  # a protocol an app set may hold spaces
        if method != REFUSED and method not in METHODS:
            method = "other"
        if protocol not in PROTOCOLS:
            protocol = "other"
        label = (method, status_class + "xx", protocol)
        by_label[label] = by_label.get(label, 0) + n
    for label, n in sorted(by_label.items()):
        requests.add_metric(label, n)
    yield requests
    buckets = data.get("buckets") or [0] * (len(BOUNDS) + 1)
    cumulative, running = [], 0
    for bound, n in zip([repr(b) for b in BOUNDS] + ["+Inf"], buckets):
        running += n
        cumulative.append((bound, running))
    yield HistogramMetricFamily("yimmo_request_duration_seconds",
                                "Time from a request's head to the app's last byte",
                                buckets=cumulative, sum_value=data.get("seconds", 0.0))
    yield gauge("yimmo_requests_in_flight", "Requests received and not yet answered "
                "(queued or running)", "in_flight")
    yield gauge("yimmo_queue_depth", "Exchanges (and WebSocket callbacks) waiting for a "
                "worker thread", "queued")
    yield gauge("yimmo_workers_busy", "Worker threads running the application", "busy")
    yield gauge("yimmo_workers", "Worker threads", "workers")
    yield counter("yimmo_thread_handovers", "Times a worker thread or the reactor had to "
                  "be woken to take work", "handovers")
    yield gauge("yimmo_connections_open", "Client connections open (HTTP and WebSocket)",
                "connections_open")
    yield counter("yimmo_connections", "Client connections accepted", "connections")
    yield counter("yimmo_received_bytes", "Bytes received on HTTP connections (heads and "
                  "bodies)", "received")
    yield counter("yimmo_sent_body_bytes", "Response body bytes sent", "sent")
    yield gauge("yimmo_websocket_sessions_open", "WebSocket sessions open", "ws_open")
    yield counter("yimmo_websocket_sessions", "WebSocket sessions opened", "ws_sessions")
    messages = CounterMetricFamily("yimmo_websocket_messages", "WebSocket messages",
                                   labels=("direction",))
    messages.add_metric(("in",), data.get("ws_in", 0))
    messages.add_metric(("out",), data.get("ws_out", 0))
    yield messages
    yield counter("yimmo_process_cpu_seconds", "CPU time of the server processes (user and "
                  "system)", "cpu_seconds")
    yield gauge("yimmo_process_resident_bytes", "Resident memory of the server processes",
                "resident_bytes")
    if "processes" in data:  # the manager's
        yield gauge("yimmo_processes", "Server processes running", "processes")
        yield counter("yimmo_process_restarts", "Server processes that died and were "
                      "started again", "restarts")
        recycles = CounterMetricFamily("yimmo_process_recycles", "Server processes replaced "
                                       "past a limit, by limit", labels=("reason",))
        for reason, n in sorted(data.get("recycles", {}).items()):
            recycles.add_metric((reason,), n)
        yield recycles
        yield counter("yimmo_reloads", "Reloads (SIGHUP): every server process replaced",
                      "reloads")


def render(data: Dict[str, Any]) -> bytes:
    """The page in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class _Collector(Collector):  # an ABC in older prometheus-client, a Protocol in newer
        def collect(self) -> Iterator[Any]:
            return _families(data)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    page: bytes = generate_latest(registry)
    return page


def listen(reactor: Any, description: str,
           source: Callable[[], "defer.Deferred[Dict[str, Any]]"]) -> "defer.Deferred[Any]":
    """Serve ``source()``'s snapshot at /metrics on ``description``: its listening port."""
    from prometheus_client import CONTENT_TYPE_LATEST
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    class Page(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            if request.path != PATH:
                request.setResponseCode(404)
                return b"metrics are at /metrics\n"

            def done(data: Dict[str, Any]) -> None:
                if request.finished or request.channel is None:
                    return  # the scraper has gone
                request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
                request.write(render(data))
                request.finish()

            def failed(failure: Any) -> None:
                log.failure("cannot make the metrics page", failure)
                if not request.finished and request.channel is not None:
                    request.setResponseCode(500)
                    request.finish()

            source().addCallbacks(done, failed)
            return NOT_DONE_YET

    class Quiet(Site):
        noisy = False

        def log(self, request: Any) -> None:
            pass  # a line per scrape (every 15 s of a Prometheus) is no access log

    site = Quiet(Page())
    return serverFromString(reactor, description).listen(site)
