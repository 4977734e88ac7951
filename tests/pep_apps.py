"""
WSGI applications for the PEP 3333 black-box tests (tests/test_pep3333.py).

``pep_apps:app`` routes on PATH_INFO; ``pep_apps:validated`` is an app wrapped in
``wsgiref.validate.validator``; ``pep_apps:flask_app`` is a small Flask application.

Counters (close() calls, bytes produced, ...) live in this module, in the server process;
``/stats?key=K`` returns them as JSON, so the tests can see what the server did to the
application's iterables.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator


def query(environ) -> dict:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def send_json(start_response, data, status="200 OK"):
    body = json.dumps(data, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def text(start_response, body: bytes, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]


# -- counters ----------------------------------------------------------------------------

_lock = threading.Lock()
_stats: dict = {}


def stat(key: str) -> dict:
    with _lock:
        return _stats.setdefault(key, {"closed": 0, "next": 0, "next_after_close": 0,
                                       "produced": 0, "started": 0, "finished": 0,
                                       "errors": [], "read": 0, "starts": []})


def bump(key: str, name: str, n: int = 1) -> None:
    s = stat(key)
    with _lock:
        s[name] += n


def stats_app(environ, start_response):
    key = query(environ).get("key", "default")
    with _lock:
        data = dict(_stats.get(key, {}))
    return send_json(start_response, data)


# -- environ -----------------------------------------------------------------------------


def env_app(environ, start_response):
    """Every environ key as [type name, value (str) or repr], plus a few probes."""
    q = query(environ)
    report = {}
    for key, value in environ.items():
        report[key] = [type(value).__name__, value if isinstance(value, str) else repr(value)]
    inp = environ["wsgi.input"]
    err = environ["wsgi.errors"]
    probes = {
        "key_types": sorted({type(k).__name__ for k in environ}),
        "input_methods": [m for m in ("read", "readline", "readlines", "__iter__")
                          if callable(getattr(inp, m, None))],
        "errors_methods": [m for m in ("write", "writelines", "flush")
                           if callable(getattr(err, m, None))],
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
    }
    token = q.get("err")
    if token:
        err.write("wsgi.errors says %s\n" % token)
        err.writelines(["wsgi.errors lines %s\n" % token])
        err.flush()
    if q.get("read"):
        probes["body"] = inp.read().decode("latin-1")
    if q.get("mutate"):
        # Apps may change their environ at will; the next request must not see it.
        environ["HTTP_X_LEAKED"] = "leaked"
        environ["SCRIPT_NAME"] = "/leaked"
        environ["wsgi.url_scheme"] = "leaked"
        environ["QUERY_STRING"] = "leaked"
        environ.pop("SERVER_NAME", None)
    return send_json(start_response, {"environ": report, "probes": probes})


# -- wsgi.input --------------------------------------------------------------------------


def input_app(environ, start_response):
    """
    Reads the body with ?mode= and returns the pieces as JSON (latin-1 strings), then
    what reads after the end return ("after": must all be empty).
    """
    q = query(environ)
    mode = q.get("mode", "read_all")
    n = int(q.get("n", "7"))
    stream = environ["wsgi.input"]
    pieces = []
    if mode == "read_n":
        while True:
            data = stream.read(n)
            if not data:
                break
            pieces.append(data)
    elif mode == "read_all":
        pieces.append(stream.read())
    elif mode == "read_none":
        pieces.append(stream.read(None))
    elif mode == "read_big":
        pieces.append(stream.read(1 << 30))
    elif mode == "readline":
        while True:
            line = stream.readline()
            if not line:
                break
            pieces.append(line)
    elif mode == "readline_n":
        while True:
            line = stream.readline(n)
            if not line:
                break
            pieces.append(line)
    elif mode == "readlines":
        pieces = stream.readlines()
    elif mode == "readlines_hint":
        pieces = stream.readlines(n)
        pieces.append(b"|")
        pieces += stream.readlines()
    elif mode == "iter":
        pieces = list(stream)
    elif mode == "mixed":
        pieces.append(stream.read(3))
        pieces.append(stream.readline())
        pieces.append(next(iter(stream), b""))
        pieces.append(stream.readline(4))
        pieces += stream.readlines()
    else:
        raise ValueError("unknown mode %r" % mode)
    after = [stream.read(), stream.read(10), stream.readline(), stream.readline(5)]
    return send_json(start_response, {
        "pieces": [p.decode("latin-1") for p in pieces],
        "types": sorted({type(p).__name__ for p in pieces + after}),
        "after": [a.decode("latin-1") for a in after],
        "content_length": environ.get("CONTENT_LENGTH"),
    })


def sink_app(environ, start_response):
    """
    Sleeps ?stall= seconds, then reads the body in ?n= byte pieces (n=-1: one
    read(CONTENT_LENGTH); mode=readline: readline() until the end); returns its digest
    and the seconds spent reading.
    """
    q = query(environ)
    time.sleep(float(q.get("stall", "0")))
    n = int(q.get("n", "65536"))
    if n < 0:
        n = int(environ["CONTENT_LENGTH"])  # the classic read(CONTENT_LENGTH)
    by_line = q.get("mode") == "readline"
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = reads = short = 0
    biggest = 0
    started = time.perf_counter()
    while True:
        data = stream.readline() if by_line else stream.read(n)
        if not data:
            break
        reads += 1
        if len(data) < n:
            short += 1
        biggest = max(biggest, len(data))
        total += len(data)
        digest.update(data)
    return send_json(start_response, {"total": total, "sha256": digest.hexdigest(),
                                      "reads": reads, "short_reads": short,
                                      "biggest": biggest,
                                      "seconds": time.perf_counter() - started})


def read_record_app(environ, start_response):
    """Reads the whole body in 4 KiB pieces, recording how much and any exception."""
    key = query(environ).get("key", "default")
    stat(key)
    stream = environ["wsgi.input"]
    try:
        while True:
            data = stream.read(4096)
            if not data:
                break
            bump(key, "read", len(data))
    except BaseException as e:
        with _lock:
            _stats[key]["errors"].append("%s(%s)" % (type(e).__name__, ", ".join(
                c.__name__ for c in type(e).__mro__[1:-1])))
        raise
    with _lock:
        _stats[key]["errors"].append("none")
    return text(start_response, b"read %d" % stat(key)["read"])


def sleep_record_app(environ, start_response):
    """Records when it started (server clock), sleeps ?t= seconds, answers."""
    q = query(environ)
    key = q.get("key", "default")
    stat(key)
    with _lock:
        _stats[key]["starts"].append(time.monotonic())
    time.sleep(float(q.get("t", "0.3")))
    return text(start_response, b"slept")


# -- response streams with counters ------------------------------------------------------


def block_bytes(index: int, block: int) -> bytes:
    """Block ``index`` of a /stream body: distinct per index, so loss or reordering shows."""
    head = b"%010d:" % index
    filler = bytes(range(256)) * (block // 256 + 1)
    return (head + filler)[:block]


class Stream:
    """A response iterable with close(), counting what the server does with it."""

    def __init__(self, key, size, block, sleep, fail_after=None):
        self.key = key
        self.left = size
        self.block = block
        self.sleep = sleep
        self.fail_after = fail_after
        self.index = 0
        self.closed = False
        bump(key, "started")

    def __iter__(self):
        return self

    def __next__(self):
        bump(self.key, "next")
        if self.closed:
            bump(self.key, "next_after_close")
        if self.fail_after is not None and self.index >= self.fail_after:
            raise RuntimeError("stream %s failed on purpose after %d blocks"
                               % (self.key, self.index))
        if self.left <= 0:
            bump(self.key, "finished")
            raise StopIteration
        if self.sleep:
            time.sleep(self.sleep)
        n = min(self.block, self.left)
        data = block_bytes(self.index, n)
        self.index += 1
        self.left -= n
        bump(self.key, "produced", n)
        return data

    def close(self):
        self.closed = True
        bump(self.key, "closed")


def stream_app(environ, start_response):
    q = query(environ)
    key = q.get("key", "default")
    stat(key)
    headers = [("Content-Type", "application/octet-stream")]
    size = int(q.get("size", "1000"))
    if q.get("cl"):
        headers.append(("Content-Length", str(size)))
    fail_after = int(q["fail_after"]) if "fail_after" in q else None
    stream = Stream(key, size, int(q.get("block", "1000")), float(q.get("sleep", "0")),
                    fail_after)
    start_response("200 OK", headers)
    return stream


class CountingFile:
    """A file whose close() is counted (wsgi.file_wrapper must call it)."""

    def __init__(self, path, key):
        self.f = open(path, "rb")
        self.key = key
        bump(key, "started")

    def read(self, n=-1):
        data = self.f.read(n)
        bump(self.key, "produced", len(data))
        return data

    def close(self):
        self.f.close()
        bump(self.key, "closed")


def file_app(environ, start_response):
    q = query(environ)
    key = q.get("key", "file")
    stat(key)
    f = CountingFile(q["path"], key)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        import os
        headers.append(("Content-Length", str(os.path.getsize(q["path"]))))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, int(q.get("block", "65536")))


# -- start_response, write(), exc_info -----------------------------------------------------


BAD_START = {
    "crlf": ("200 OK", [("X-Bad", "v\r\nX-Injected: evil")]),
    "lf": ("200 OK", [("X-Bad", "v\nX-Injected: evil")]),
    "cr": ("200 OK", [("X-Bad", "v\rX-Injected: evil")]),
    "nul": ("200 OK", [("X-Bad", "v\x00evil")]),
    "nonlatin": ("200 OK", [("X-Bad", "evil \u20ac \u2603")]),
    "name_space": ("200 OK", [("X Injected", "evil")]),
    "name_colon": ("200 OK", [("X-Injected: evil\r\nX-More", "v")]),
    "name_nonlatin": ("200 OK", [("X-\u20ac", "evil")]),
    "status_crlf": ("200 OK\r\nX-Injected: evil", []),
    "status_nonlatin": ("200 evil \u20ac", []),
    "status_short": ("200", []),
    "status_bytes": (b"200 OK", []),
    "headers_tuple": ("200 OK", (("X-Injected", "evil"),)),
    "headers_dict": ("200 OK", {"X-Injected": "evil"}),
    "item_list": ("200 OK", [["X-Injected", "evil"]]),
    "value_bytes": ("200 OK", [("X-Injected", b"evil")]),
}


def bad_start_app(environ, start_response):
    status, headers = BAD_START[query(environ)["case"]]
    start_response(status, headers)
    return [b"this body must never be sent"]


def twice_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Second", "1")])
    return [b"second status accepted"]


def exc_before_app(environ, start_response):
    """The error page pattern of PEP 3333, before anything was sent: replaces the status."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
    try:
        raise ValueError("handled by the app")
    except ValueError:
        start_response("500 Internal Server Error",
                       [("Content-Type", "text/plain"), ("X-Second", "1")], sys.exc_info())
    return [b"handled error page"]


def exc_after_app(environ, start_response):
    """start_response(exc_info) once the head is sent: it must re-raise; the app lets it."""
    token = query(environ).get("token", "exc-after")
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"partial body\n")
    try:
        raise ValueError("original error " + token)
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"must never be sent"]


def write_iter_app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"")
    write(b"w1-")
    write(b"w2-")

    def gen():
        yield b"i1-"
        yield b""
        yield b"i2"
    return gen()


def empty_then_sleep_app(environ, start_response):
    """Yields b"" first, sleeps, then the body: the head must wait for the body."""
    t = float(query(environ).get("t", "1.0"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b""
        time.sleep(t)
        yield b"late body"
    return gen()


def write_empty_then_sleep_app(environ, start_response):
    t = float(query(environ).get("t", "1.0"))
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"")
    time.sleep(t)
    return [b"late body"]


def early_then_sleep_app(environ, start_response):
    """Yields a chunk, sleeps: the chunk must reach the client before the sleep ends."""
    t = float(query(environ).get("t", "1.0"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"early"
        time.sleep(t)
        yield b"-late"
    return gen()


def write_early_then_sleep_app(environ, start_response):
    t = float(query(environ).get("t", "1.0"))
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"early")
    time.sleep(t)
    return [b"-late"]


def generator_app(environ, start_response):
    """A generator function as the app: start_response runs on the first next()."""
    q = query(environ)
    if q.get("empty_first"):
        yield b""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-From", "generator")])
    yield b"from "
    yield b"a generator"


def raise_before_app(environ, start_response):
    token = query(environ).get("token", "raise-before")
    raise RuntimeError("app failure before headers " + token)


def raise_after_app(environ, start_response):
    token = query(environ).get("token", "raise-after")
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first chunk\n"
        raise RuntimeError("app failure after headers " + token)
    return gen()


ROUTES = {
    "/env": env_app,
    "/input": input_app,
    "/sink": sink_app,
    "/read-record": read_record_app,
    "/sleep-record": sleep_record_app,
    "/stream": stream_app,
    "/stats": stats_app,
    "/file": file_app,
    "/bad-start": bad_start_app,
    "/twice": twice_app,
    "/exc-before": exc_before_app,
    "/exc-after": exc_after_app,
    "/write-iter": write_iter_app,
    "/empty-then-sleep": empty_then_sleep_app,
    "/write-empty-then-sleep": write_empty_then_sleep_app,
    "/early-then-sleep": early_then_sleep_app,
    "/write-early-then-sleep": write_early_then_sleep_app,
    "/generator": generator_app,
    "/raise-before": raise_before_app,
    "/raise-after": raise_after_app,
}


def app(environ, start_response):
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if handler is None:
        # Any other path: the environ report (for PATH_INFO decoding tests).
        handler = env_app
    return handler(environ, start_response)


# -- an application under wsgiref.validate ------------------------------------------------


def _validated_inner(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/v/post":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        first = environ["wsgi.input"].readline(5)
        rest = environ["wsgi.input"].read(length - len(first))
        body = b"posted:" + first + rest
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/v/lines":
        lines = list(environ["wsgi.input"]) + environ["wsgi.input"].readlines()
        body = b"%d lines" % len(lines)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/v/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            for i in range(5):
                yield b"chunk %d\n" % i
        return gen()
    if path == "/v/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/v/errors":
        environ["wsgi.errors"].write("validated app writes to wsgi.errors\n")
        environ["wsgi.errors"].flush()
    if path == "/v/bad":
        # A negative control: a str body, which the validator must flag.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["not bytes"]
    body = b"validated " + method.encode("ascii") + b" " + path.encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


validated = validator(_validated_inner)


# -- Flask ---------------------------------------------------------------------------------


def _make_flask():
    from flask import Flask, jsonify, request

    fapp = Flask("pep_apps")

    @fapp.get("/hello")
    def hello():
        return "hello " + request.args.get("name", "world")

    @fapp.post("/form")
    def form():
        return jsonify(form={k: request.form.getlist(k) for k in request.form},
                       files={k: [f.filename, f.read().decode("latin-1")]
                              for k, f in request.files.items()},
                       mimetype=request.mimetype)

    @fapp.post("/json")
    def json_echo():
        data = request.get_json()
        return jsonify(received=data, length=request.content_length)

    @fapp.get("/fail")
    def fail():
        raise RuntimeError("flask view failure")

    @fapp.get("/path/<name>")
    def path(name):
        return jsonify(name=name, path=request.path, script_root=request.script_root,
                       url=request.url)

    return fapp


flask_app = _make_flask()
