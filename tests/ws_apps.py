"""
A WSGI app with WebSocket callbacks for tests/test_websockets.py (``ws_apps:app``).

HTTP routes:
    /                   "hello"
    /ws-log             JSON: close_paths (PATH_INFO of each session whose on_close ran)
                        and overlap (times two callbacks of one session ran at once)
    /modules            as apps:app's

WebSocket paths (the handshake's PATH_INFO picks the behaviour in on_open):
    /reject             on_open returns 1: the handshake is refused (403)
    /raise-open         on_open raises (500)
    /greet              on_open sends "hello" before the handshake completes
    /choose             on_open picks the last subprotocol the client offered
    anything else       accepted; messages are echoed with their flags, except these
                        text commands:
        "environ"       JSON of the handshake request: path, query, cookie, remote_addr,
                        header (X-Test), subprotocol, scheme, and the server's pid
        "thread"        JSON: the callback's thread name, and whether it is the reactor's
        "raise"         on_message raises: the session is closed with 1011
        "sleep:S"       sleeps S seconds, then replies "slept"
        "flood:N:SIZE"  sends N binary messages of SIZE bytes, then the text
                        "flood done" or "flood failed: <error>" (for backpressure)
        "threads:N"     4 threads of the app's own each send N messages "t<i>:<j>" at
                        once, then "threads done"
        "close"         closes the session with 1000 from the callback
        "fragments"     sends "frag" "ment" "ed" as one fragmented text message
"""

from __future__ import annotations

import json
import os
import threading
import time

from twisted.python.threadable import isInIOThread

import apps

try:
    import yimmo
except ImportError:  # pragma: no cover - run only under the server
    yimmo = None

_lock = threading.Lock()
_log = {"close_paths": [], "overlap": 0, "active": {}}


def app(environ, start_response):
    if environ["PATH_INFO"] == "/modules":
        return apps.modules(environ, start_response)
    if environ["PATH_INFO"] == "/ws-log":
        with _lock:
            body = json.dumps({k: v for k, v in _log.items() if k != "active"}).encode()
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _enter(ws):
    """Count callbacks of one session running at once (must never exceed one)."""
    with _lock:
        n = _log["active"].get(id(ws), 0) + 1
        _log["active"][id(ws)] = n
        if n > 1:
            _log["overlap"] += 1


def _leave(ws):
    with _lock:
        _log["active"][id(ws)] -= 1


def on_open(ws):
    path = ws.environ["PATH_INFO"]
    if path == "/reject":
        return 1
    if path == "/raise-open":
        raise RuntimeError("on_open fails on purpose")
    if path == "/greet":
        ws.send("hello")
    if path == "/choose" and ws.protocols:
        ws.subprotocol = ws.protocols[-1]  # the app's choice over the setting's
    return 0


def on_message(ws, msg, flags):
    _enter(ws)
    try:
        _message(ws, msg, flags)
    finally:
        _leave(ws)


def _message(ws, msg, flags):
    text = (flags & 0x0F) == yimmo.YMO_WS_OP_TEXT
    if text and msg == b"environ":
        env = ws.environ
        ws.send(json.dumps({
            "path": env["PATH_INFO"], "query": env["QUERY_STRING"],
            "cookie": env.get("HTTP_COOKIE"), "remote_addr": env["REMOTE_ADDR"],
            "header": env.get("HTTP_X_TEST"), "subprotocol": ws.subprotocol,
            "scheme": env["wsgi.url_scheme"], "pid": os.getpid(),
        }))
    elif text and msg == b"thread":
        ws.send(json.dumps({"name": threading.current_thread().name,
                            "reactor": isInIOThread()}))
    elif text and msg == b"raise":
        raise RuntimeError("on_message fails on purpose")
    elif text and msg.startswith(b"sleep:"):
        time.sleep(float(msg[6:]))
        ws.send("slept")
    elif text and msg.startswith(b"flood:"):
        n, size = (int(x) for x in msg[6:].split(b":"))
        block = b"x" * size
        try:
            for _ in range(n):
                ws.send(block, yimmo.YMO_WS_FLAG_FIN | yimmo.YMO_WS_OP_BINARY)
        except Exception as e:
            report = "flood failed: %s" % type(e).__name__
            while True:  # this send may time out too, until the client reads again
                try:
                    ws.send(report)
                    break
                except TimeoutError:
                    continue
                except Exception:
                    break
        else:
            ws.send("flood done")
    elif text and msg.startswith(b"threads:"):
        n = int(msg[8:])

        def sender(i):
            for j in range(n):
                ws.send("t%d:%d" % (i, j))

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ws.send("threads done")
    elif text and msg == b"close":
        ws.close()
    elif text and msg == b"fragments":
        ws.send(b"frag", yimmo.YMO_WS_OP_TEXT)
        ws.send(b"ment", yimmo.YMO_WS_OP_CONTINUATION)
        ws.send(b"ed", yimmo.YMO_WS_FLAG_FIN | yimmo.YMO_WS_OP_CONTINUATION)
    else:
        ws.send(msg, flags)


def on_close(ws):
    with _lock:
        _log["close_paths"].append(ws.environ["PATH_INFO"])
        _log["active"].pop(id(ws), None)


if hasattr(yimmo, "WebSocket"):
    yimmo.init_websockets(on_open, on_message, on_close)
