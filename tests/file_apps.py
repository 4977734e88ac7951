"""
File responses for tests/test_files.py (``serve("file_apps:app")``): ``wsgi.file_wrapper``
over a file the test wrote, with what happened to it counted per ``?key=``.

Routes:
    /file?path=P        wsgi.file_wrapper(open(P)); options:
                        &key=K         the counters' key (default "file")
                        &cl=N          Content-Length N ("size": the file's size left)
                        &offset=N      the file is seeked to N before it is wrapped
                        &status=NNN    the status (204, 304...)
                        &write=TEXT    write(TEXT) before returning the wrapper
                        &mode=M        "bytesio": the file's bytes in a BytesIO (no
                                       fileno); "fileno-error": fileno() raises;
                                       "fstat-error": fileno() gives a closed descriptor;
                                       "pipe": a pipe fed with the file (not regular)
    /stats?key=K        JSON: opened, closed (close() calls), read (bytes read through
                        read(), that is by iteration)
    /hello              "Hello, World!\\n"
    /flask/send_file?path=P   werkzeug's send_file, through Flask
"""

from __future__ import annotations

import io
import json
import os
import threading
from http import HTTPStatus
from urllib.parse import parse_qs

_lock = threading.Lock()
_stats: dict = {}


def _bump(key: str, what: str, n: int = 1) -> None:
    with _lock:
        counts = _stats.setdefault(key, {"opened": 0, "closed": 0, "read": 0})
        counts[what] += n


class CountedFile:
    """A file whose opening, close() and reads are counted."""

    def __init__(self, raw, key: str, mode: str = "") -> None:
        self.raw = raw
        self.key = key
        self.mode = mode
        _bump(key, "opened")

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        _bump(self.key, "read", len(data))
        return data

    def fileno(self) -> int:
        if self.mode == "fileno-error":
            raise OSError("no descriptor today")
        if self.mode == "fstat-error":
            return 1 << 20  # not an open descriptor: fstat fails
        return self.raw.fileno()

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        _bump(self.key, "closed")


def _query(environ) -> dict:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response, data) -> list:
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _open(path: str, mode: str):
    if mode == "bytesio":
        with open(path, "rb") as f:
            return io.BytesIO(f.read())
    if mode == "pipe":
        r, w = os.pipe()

        def feed() -> None:
            with open(path, "rb") as f, os.fdopen(w, "wb") as out:
                while True:
                    data = f.read(65536)
                    if not data:
                        return
                    out.write(data)

        threading.Thread(target=feed, daemon=True).start()
        return os.fdopen(r, "rb")
    return open(path, "rb")


def file_app(environ, start_response):
    q = _query(environ)
    key = q.get("key", "file")
    mode = q.get("mode", "")
    raw = _open(q["path"], mode)
    if "offset" in q:
        raw.seek(int(q["offset"]))
    f = CountedFile(raw, key, mode)
    code = int(q.get("status", "200"))
    headers = [("Content-Type", "application/octet-stream")]
    if "cl" in q:
        cl = q["cl"]
        if cl == "size":
            cl = str(os.path.getsize(q["path"]) - int(q.get("offset", "0")))
        headers.append(("Content-Length", cl))
    write = start_response("%d %s" % (code, HTTPStatus(code).phrase), headers)
    if "write" in q:
        write(q["write"].encode())
    return environ["wsgi.file_wrapper"](f, 65536)


def _flask_app():
    from flask import Flask, request, send_file

    flask = Flask(__name__)

    @flask.route("/flask/send_file")
    def send():
        return send_file(request.args["path"], mimetype="application/octet-stream")

    return flask


_flask = None


def app(environ, start_response):
    global _flask
    path = environ["PATH_INFO"]
    if path == "/file":
        return file_app(environ, start_response)
    if path == "/stats":
        with _lock:
            counts = dict(_stats.get(_query(environ).get("key", "file"),
                                     {"opened": 0, "closed": 0, "read": 0}))
        return _json(start_response, counts)
    if path.startswith("/flask/"):
        if _flask is None:
            _flask = _flask_app()
        return _flask(environ, start_response)
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
