"""WSGI applications served identically by every server in ``benchmarks/run.py``.

Each is a plain PEP 3333 callable with no dependencies, so the numbers compare the
servers, not the applications (the Flask and Django hellos are in flask_app.py and
django_app.py, so that this module imports without them).  Run e.g.
``yimmo-wsgi benchmarks.apps:hello`` from the repository root.
"""

import os

HELLO = b"Hello, World!\n"
PAYLOAD_10K = (b"0123456789abcdef" * 64) * 10  # exactly 10 KiB
assert len(PAYLOAD_10K) == 10 * 1024


def hello(environ, start_response):
    """The smallest response: 14 bytes with a Content-Length."""
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def payload_10k(environ, start_response):
    """A 10 KiB body with a Content-Length."""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(PAYLOAD_10K)))])
    return [PAYLOAD_10K]


def upload_echo(environ, start_response):
    """Read the whole request body (wsgi.input) and answer with its length.

    Despite the name this does NOT send the body back: it reads all of it (64 KiB at a
    time, so the server's input path is measured) and returns a short text body with the
    byte count, so the scenario measures uploads, not a 1 MiB download as well.
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    remaining = int(length) if length and length.isdigit() else None  # None: read to EOF
    total = 0
    while remaining is None or remaining > 0:
        chunk = stream.read(65536 if remaining is None else min(remaining, 65536))
        if not chunk:
            break
        total += len(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    body = b"%d\n" % total
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def cpu(environ, start_response):
    """CPU-bound: a pure-Python loop of roughly 1-2 ms that holds the GIL."""
    result = sum(i * i for i in range(20000))
    body = b"%d\n" % result
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _blocks(f, size):
    """PEP 3333's fallback where a server has no wsgi.file_wrapper (granian)."""
    with f:
        yield from iter(lambda: f.read(size), b"")


def download(environ, start_response):
    """``/download``: the file named by $BENCH_FILE through wsgi.file_wrapper (PEP 3333's
    platform file handling: sendfile where a server has it); any other path: hello."""
    if environ["PATH_INFO"] != "/download":
        return hello(environ, start_response)
    f = open(os.environ["BENCH_FILE"], "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(os.fstat(f.fileno()).st_size))])
    return environ.get("wsgi.file_wrapper", _blocks)(f, 65536)

