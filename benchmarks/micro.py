"""
The per-request cost of one keep-alive connection on the reactor thread and its worker,
without sockets or threads: a real Server and HTTPSession on a StringTransport, the app run
inline on this thread (the pool is not started: its queue is emptied here), bytes fed one
request per dataReceived as wrk sends them.  Three kinds of request: wrk's GET and a
browser-like one, answered by a hello world, and wrk's 10 KiB POST (upload_10k.lua, head
and body in one read), answered by an app that reads wsgi.input to its end.

    python benchmarks/micro.py                      # the yimmo_twisted that imports
    python benchmarks/micro.py ../old .            # checkouts (git worktrees), compared
    python benchmarks/micro.py --app benchmarks.flask_app:app   # another app, for all three

For each request kind it prints µs/request of ``dataReceived`` alone (reader, exchange,
dispatch) and of the full inline path (that, plus Context.run of the app, the handoff's
drain, the write and the exchange's end).  The best of ``--repeat`` runs of ``--number``
requests each: the minimum is the least disturbed by other processes on the machine.
Checkouts are loaded side by side in this one process and their runs interleaved, so
that a noisy machine slows them alike.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import io
import os
import sys
from time import perf_counter, thread_time
from types import ModuleType
from typing import Callable, Dict, List, Optional

from twisted.internet.testing import StringTransport

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
    # wrk's POST of upload_10k.lua: head and body in one read, as they arrive from it.
    "upload": (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 10240\r\n\r\n"
        + b"x" * 10240),
}

HELLO = b"Hello, World!\n"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def upload(environ, start_response):
    """benchmarks.apps.upload_echo: reads the body 64 KiB at a time, answers its length."""
    stream = environ["wsgi.input"]
    total = 0
    while True:
        data = stream.read(65536)
        if not data:
            break
        total += len(data)
    body = b"%d" % total
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


# The app of each request kind, unless --app names one for all.
APPS: Dict[str, Callable] = {"wrk": hello, "browser": hello, "upload": upload}


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


class Tree:
    """The modules of one yimmo_twisted: the importable one, or a checkout's by path."""

    loaded = 0  # checkouts loaded so far, for their package names

    def __init__(self, root: Optional[str] = None) -> None:
        self.name = root or "yimmo_twisted"
        package = "yimmo_twisted"
        if root is not None:
            # Under a name of its own, so that several checkouts load side by side (the
            # package imports itself relatively).
            package = "yimmo_checkout_%d" % Tree.loaded
            Tree.loaded += 1
            path = os.path.join(root, "yimmo_twisted")
            spec = importlib.util.spec_from_file_location(
                package, os.path.join(path, "__init__.py"), submodule_search_locations=[path])
            assert spec is not None and spec.loader is not None, root
            sys.modules[package] = module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)

        def sub(name: str) -> ModuleType:
            return importlib.import_module(package + "." + name)
        self.Settings = sub("config").Settings
        self.Context = sub("context").Context
        self.Server = sub("server").Server
        self.HTTPSession = sub("session").HTTPSession


def connection(tree: Tree, app: Callable = hello):
    reactor = Reactor()
    server = tree.Server(app, tree.Settings(access_log="off"), reactor)
    transport = StringTransport()
    session = tree.HTTPSession(server)
    session.makeConnection(transport)
    return reactor, server, transport, session


def run(tree: Tree, request: bytes, number: int, full: bool, app: Callable = hello) -> float:
    """
    Seconds for ``number`` requests; with ``full`` False, only their dataReceived.  The
    whole path is timed in this thread's CPU time, which leaves out the time the machine
    gives other processes meanwhile; dataReceived alone by the clock, as a CPU-time clock
    costs a system call (some 0.5 µs) per reading.
    """
    reactor, server, transport, session = connection(tree, app)
    Context = tree.Context
    pool = server.pool
    queue = pool.workers[0].queue
    emit = pool.handoff.emit
    data_received = session.dataReceived
    elapsed = 0.0
    gc.disable()
    try:
        start = thread_time()
        for _ in range(number):
            if not full:
                start = perf_counter()
            data_received(request)
            if not full:
                elapsed += perf_counter() - start
            # The rest of the exchange, inline: the app, the output back on the "reactor".
            Context(queue.popleft(), emit).run(app)
            reactor.pump()
            transport.clear()
        if full:
            elapsed = thread_time() - start
    finally:
        gc.enable()
    assert not queue and session.inflight == 0, "a request did not complete"
    return elapsed


def app_alone(tree: Tree, request: bytes, number: int, app: Callable) -> float:
    """Seconds for ``number`` calls of ``app`` itself, with this server's environ for
    ``request`` and a start_response that does nothing: what the app costs without a
    server, for the whole path's figure to be compared with."""
    reactor, server, transport, session = connection(tree, app)
    session.dataReceived(request)
    environ = server.pool.workers[0].queue.popleft().environ
    body = request.partition(b"\r\n\r\n")[2]

    def start_response(status, headers, exc_info=None):
        return lambda data: None

    gc.disable()
    try:
        start = thread_time()
        for _ in range(number):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO(body)
            result = app(env, start_response)
            for _ in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return thread_time() - start
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", metavar="CHECKOUT",
                        help="directories holding a yimmo_twisted/ (default: the importable one)")
    parser.add_argument("--number", type=int, default=20000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is shown")
    parser.add_argument("--app", metavar="MODULE:NAME", default=None,
                        help="the WSGI app to run for every request (default: a hello world, "
                             "and for the upload one that reads the body); the figure "
                             "'app alone' is then that app called without the server")
    args = parser.parse_args()
    apps = dict(APPS)
    if args.app is not None:
        from yimmo_twisted.util import load_app  # as yimmo-wsgi finds and loads apps
        apps = dict.fromkeys(REQUESTS, load_app(args.app))
    trees = [Tree(root) for root in args.trees] or [Tree()]
    # perf_counter's own cost, taken off the dataReceived-alone figure.
    t0 = perf_counter()
    for _ in range(args.number):
        perf_counter()
    overhead = (perf_counter() - t0) / args.number
    best: Dict[tuple, float] = {}
    for _ in range(args.repeat):
        for tree in trees:
            for name, request in REQUESTS.items():
                for full in (False, True):
                    seconds = run(tree, request, args.number, full, apps[name]) / args.number
                    key = (tree.name, name, full)
                    best[key] = min(best.get(key, seconds), seconds)
                seconds = app_alone(tree, request, args.number, apps[name]) / args.number
                key = (tree.name, name, None)
                best[key] = min(best.get(key, seconds), seconds)
    width = max(len(tree.name) for tree in trees)
    print("%-*s  %-8s %16s %8s %14s" % (width, "checkout", "request", "dataReceived µs",
                                         "full µs", "app alone µs"))
    for tree in trees:
        for name in REQUESTS:
            print("%-*s  %-8s %16.2f %8.2f %14.2f" % (
                width, tree.name, name, (best[(tree.name, name, False)] - overhead) * 1e6,
                best[(tree.name, name, True)] * 1e6, best[(tree.name, name, None)] * 1e6))


if __name__ == "__main__":
    main()
