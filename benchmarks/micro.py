"""
The per-request cost of one keep-alive connection on the reactor thread and its worker,
without sockets or threads: a real Server and HTTPSession on a StringTransport, the app run
inline on this thread (the pool is not started: its queue is emptied here), bytes fed one
request per dataReceived as wrk sends them.

    python benchmarks/micro.py                       # the checkout's yimmo_twisted
    PYTHONPATH=/tmp/old python benchmarks/micro.py   # another one (a git worktree)

For each request kind it prints µs/request of ``dataReceived`` alone (reader, exchange,
dispatch) and of the full inline path (that, plus Context.run of the app, the handoff's
drain, the write and the exchange's end).  The best of ``--repeat`` runs of ``--number``
requests each: the minimum is the least disturbed by other processes on the machine.
"""

from __future__ import annotations

import argparse
import gc
from time import perf_counter
from typing import Callable, Dict, List

from twisted.internet.testing import StringTransport

from yimmo_twisted.config import Settings
from yimmo_twisted.context import Context
from yimmo_twisted.server import Server
from yimmo_twisted.session import HTTPSession

# What wrk sends, and a browser-like request with the usual dozen header fields.
REQUESTS: Dict[str, bytes] = {
    "wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser": (
        b"GET /some/path?q=1&r=2 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"Connection: keep-alive\r\n"
        b"Cookie: session=0123456789abcdef; theme=dark\r\n"
        b"Upgrade-Insecure-Requests: 1\r\n"
        b"Sec-Fetch-Dest: document\r\n"
        b"Sec-Fetch-Mode: navigate\r\n"
        b"Sec-Fetch-Site: none\r\n"
        b"\r\n"),
}

HELLO = b"Hello, World!\n"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


class Reactor:
    """What the server needs of a reactor here: callFromThread, run by ``pump``."""

    def __init__(self) -> None:
        self.calls: List = []

    def callFromThread(self, fn: Callable, *args) -> None:
        self.calls.append((fn, args))

    def pump(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)


def connection():
    reactor = Reactor()
    server = Server(hello, Settings(access_log="off"), reactor)
    transport = StringTransport()
    session = HTTPSession(server)
    session.makeConnection(transport)
    return reactor, server, transport, session


def run(request: bytes, number: int, full: bool) -> float:
    """Seconds for ``number`` requests; with ``full`` False, only their dataReceived."""
    reactor, server, transport, session = connection()
    pool = server.pool
    queue = pool.workers[0].queue
    emit = pool.handoff.emit
    data_received = session.dataReceived
    elapsed = 0.0
    gc.disable()
    try:
        start = perf_counter()
        for _ in range(number):
            if not full:
                start = perf_counter()
            data_received(request)
            if not full:
                elapsed += perf_counter() - start
            # The rest of the exchange, inline: the app, the output back on the "reactor".
            Context(queue.popleft(), emit).run(hello)
            reactor.pump()
            transport.clear()
        if full:
            elapsed = perf_counter() - start
    finally:
        gc.enable()
    assert not queue and session.inflight == 0, "a request did not complete"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is shown")
    args = parser.parse_args()
    # perf_counter's own cost, taken off the dataReceived-alone figure.
    t0 = perf_counter()
    for _ in range(args.number):
        perf_counter()
    overhead = (perf_counter() - t0) / args.number
    print("%-8s %18s %12s" % ("request", "dataReceived µs", "full µs"))
    for name, request in REQUESTS.items():
        alone = min(run(request, args.number, False) for _ in range(args.repeat))
        full = min(run(request, args.number, True) for _ in range(args.repeat))
        print("%-8s %18.2f %12.2f" % (
            name, (alone / args.number - overhead) * 1e6, full / args.number * 1e6))


if __name__ == "__main__":
    main()
