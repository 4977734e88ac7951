"""
WSGI applications for the black-box tests (served with ``serve("apps:NAME", ...)``).

``apps:app`` routes on PATH_INFO to every app below, so one server can answer many kinds
of request; each app is also importable on its own (``apps:hello``, ``apps:echo``, ...).
Query parameters tune some of them (``/sleep?t=0.5``, ``/big?size=1048576``).

Routes of ``apps:app``:
    /                   hello (200, Content-Length, "Hello, World!\\n")
    /env                environ as JSON (str/int/bool/tuple values; others by type name);
                        with ?read=1 it reads the body first and adds it as "body"
    /echo               the request body read with wsgi.input.read(), Content-Length set
    /echo-chunks        the request body read with read(n) in ?n= byte pieces, streamed back
    /echo-lines         the request body read line by line, as a JSON list of lines
    /noread             200 "ignored" without reading the body
    /chunked            generator of ?n=3 parts "part i\\n" (no Content-Length)
    /write              the legacy write() callable, then an empty iterable
    /status/NNN         status NNN with body b"body" (?cl=1 adds a Content-Length)
    /long               Content-Length 5, yields 10 bytes
    /short              Content-Length 10, yields 5 bytes (then the iterable ends)
    /raise-before       raises before start_response
    /raise-after        start_response, yields one chunk, raises
    /sleep              sleeps ?t=0.5 seconds, then "slept <path>"
    /big                streams ?size= bytes (default 8 MiB) in ?block= byte blocks
    /closing            an iterable with close(), counted per ?key= (default "default")
    /close-count        JSON of close() counts per key (and of iterations started)
    /close-reset        resets the counts
    /headers            response headers from the query: /headers?X-A=1&X-B=2
    /discard            reads the body in ?n=65536 byte pieces, sleeping ?delay=0 seconds
                        after each, and answers how many bytes it read
    /modules            JSON: which of the optional parts' libraries (autobahn, h2) the
                        server process has imported
"""

from __future__ import annotations

import json
import sys
import threading
import time
from urllib.parse import parse_qs, parse_qsl


def _query(environ) -> dict:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, body: bytes, status: str = "200 OK", headers=None):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))] + list(headers or []))
    return [body]


def hello(environ, start_response):
    return _text(start_response, b"Hello, World!\n")


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return "<%s>" % type(value).__name__


def environ_app(environ, start_response):
    """The environ as JSON; with ?read=1 the body is read first and included as "body"."""
    data = {k: _jsonable(v) for k, v in environ.items()}
    if _query(environ).get("read"):
        data["body"] = environ["wsgi.input"].read().decode("latin-1")
    body = json.dumps(data, sort_keys=True).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    return _text(start_response, body, headers=[("X-Content-Length",
                                                  environ.get("CONTENT_LENGTH", "-"))])


def echo_chunks(environ, start_response):
    n = int(_query(environ).get("n", "1024"))
    stream = environ["wsgi.input"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def gen():
        while True:
            data = stream.read(n)
            if not data:
                return
            yield data
    return gen()


def echo_lines(environ, start_response):
    lines = [line.decode("latin-1") for line in environ["wsgi.input"]]
    body = json.dumps(lines).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def noread(environ, start_response):
    return _text(start_response, b"ignored")


def chunked(environ, start_response):
    n = int(_query(environ).get("n", "3"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(n):
            yield b"part %d\n" % i
    return gen()


def write_app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"twice\n")
    return []


def status(environ, start_response):
    code = environ["PATH_INFO"].rsplit("/", 1)[-1]
    from http import HTTPStatus
    try:
        phrase = HTTPStatus(int(code)).phrase
    except ValueError:
        phrase = "Whatever"
    headers = [("Content-Type", "text/plain")]
    if _query(environ).get("cl"):
        headers.append(("Content-Length", "4"))
    start_response("%s %s" % (code, phrase), headers)

    def gen():  # a generator: the server cannot know the length up front
        yield b"body"
    return gen() if not _query(environ).get("list") else [b"body"]


def long_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])

    def gen():
        yield b"01234"
        yield b"56789"
    return gen()


def short_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])

    def gen():
        yield b"01234"
    return gen()


def raise_before(environ, start_response):
    raise RuntimeError("raised before start_response (expected by the test)")


def raise_after(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first chunk\n"
        raise RuntimeError("raised after the first chunk (expected by the test)")
    return gen()


def sleep(environ, start_response):
    t = float(_query(environ).get("t", "0.5"))
    time.sleep(t)
    return _text(start_response, b"slept " + environ["PATH_INFO"].encode("latin-1")
                 + b"?" + environ.get("QUERY_STRING", "").encode("latin-1"))


def big(environ, start_response):
    q = _query(environ)
    size = int(q.get("size", str(8 << 20)))
    block = int(q.get("block", "65536"))
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    pattern = (bytes(range(256)) * (block // 256 + 1))[:block]

    def gen():
        left = size
        while left > 0:
            n = min(block, left)
            yield pattern[:n]
            left -= n
    return gen()


_close_lock = threading.Lock()
_close_counts: dict = {}
_iter_counts: dict = {}


class _Closing:
    """A response iterable that counts its close() calls."""

    def __init__(self, key: str, parts) -> None:
        self.key = key
        self.parts = list(parts)
        with _close_lock:
            _iter_counts[key] = _iter_counts.get(key, 0) + 1

    def __iter__(self):
        return iter(self.parts)

    def close(self) -> None:
        with _close_lock:
            _close_counts[self.key] = _close_counts.get(self.key, 0) + 1


def closing(environ, start_response):
    key = _query(environ).get("key", "default")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing(key, [b"closing ", key.encode("latin-1")])


def close_count(environ, start_response):
    with _close_lock:
        body = json.dumps({"closed": _close_counts, "started": _iter_counts}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def close_reset(environ, start_response):
    with _close_lock:
        _close_counts.clear()
        _iter_counts.clear()
    return _text(start_response, b"reset")


def headers_app(environ, start_response):
    extra = parse_qsl(environ.get("QUERY_STRING", ""))
    return _text(start_response, b"headers", headers=extra)


def discard(environ, start_response):
    q = _query(environ)
    n = int(q.get("n", "65536"))
    delay = float(q.get("delay", "0"))
    stream = environ["wsgi.input"]
    total = 0
    while True:
        data = stream.read(n)
        if not data:
            break
        total += len(data)
        if delay:
            time.sleep(delay)
    return _text(start_response, b"%d" % total)


# A browser's page load over HTTP/2: thirty requests at once on the one connection, an
# upload and a download of a few MiB (windows opened and used both ways), each checked.
BROWSER_PAGE = b"""<!doctype html><meta charset="utf-8"><title>h2</title><div id="log"></div>
<script>
(async () => {
  const log = document.getElementById("log");
  try {
    const nav = performance.getEntriesByType("navigation")[0].nextHopProtocol;
    const texts = await Promise.all(Array.from({length: 30}, (_, i) =>
      fetch("/sleep?t=0.05&n=" + i).then(r => r.text())));
    const sent = new Uint8Array(3 << 20).map((_, i) => i % 251);
    const echoed = new Uint8Array(await (await fetch("/echo", {method: "POST", body: sent}))
                                  .arrayBuffer());
    const same = echoed.length === sent.length && echoed.every((b, i) => b === sent[i]);
    const big = await (await fetch("/big?size=4194304")).arrayBuffer();
    const hops = [...new Set(performance.getEntriesByType("resource")
                             .map(e => e.nextHopProtocol))];
    log.textContent = JSON.stringify({nav, hops, slept: texts.filter(
      (t, i) => t === "slept /sleep?t=0.05&n=" + i).length, same, big: big.byteLength})
      + " done";
  } catch (e) {
    log.textContent = "error " + e + " done";
  }
})();
</script>
"""


def browser_page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(BROWSER_PAGE)))])
    return [BROWSER_PAGE]


def modules(environ, start_response):
    body = json.dumps({name: name in sys.modules for name in ("autobahn", "h2")}).encode()
    return _text(start_response, body)


ROUTES = {
    "/browser-page": browser_page,
    "/modules": modules,
    "/": hello,
    "/env": environ_app,
    "/echo": echo,
    "/echo-chunks": echo_chunks,
    "/echo-lines": echo_lines,
    "/noread": noread,
    "/chunked": chunked,
    "/write": write_app,
    "/long": long_body,
    "/short": short_body,
    "/raise-before": raise_before,
    "/raise-after": raise_after,
    "/sleep": sleep,
    "/big": big,
    "/closing": closing,
    "/close-count": close_count,
    "/close-reset": close_reset,
    "/headers": headers_app,
    "/discard": discard,
}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    handler = ROUTES.get(path)
    if handler is None:
        if path.startswith("/status/"):
            handler = status
        elif path.startswith("/sleep"):
            handler = sleep
        else:
            return _text(start_response, b"not found: " + path.encode("latin-1"),
                         "404 Not Found")
    return handler(environ, start_response)
