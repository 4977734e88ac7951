"""
The demo of yimmo-wsgi, on yimmo-twisted: a Flask app and WebSocket callbacks on one port::

    pip install flask
    cd examples/demo && yimmo-wsgi app:app          # then open http://localhost:8081/websocket

Routes:
    /status                         JSON: server software, pid, thread
    /echo/headers                   the request headers as JSON
    /echo/body                      the request body, as sent (POST/PUT)
    /chunked?no_chunks=5&delay_ms=0 a chunked response of no_chunks parts, delay_ms apart
    /payload/10k                    10 KiB of text
    /websocket                      an HTML page whose JavaScript opens a WebSocket to this
                                    same URL, sends what you type, and shows the echo

The WebSocket callbacks echo every message, keeping text/binary.
"""

from __future__ import annotations

import os
import threading
import time

from flask import Flask, Response, jsonify, request

try:
    import yimmo  # provided by the server at start-up
except ImportError:
    yimmo = None

app = Flask(__name__)

PAYLOAD_10K = (b"0123456789abcdef" * 640)


@app.get("/status")
def status():
    return jsonify(status="ok", server=request.environ.get("SERVER_SOFTWARE"),
                   pid=os.getpid(), thread=threading.current_thread().name,
                   websockets=hasattr(yimmo, "WebSocket"))


@app.get("/echo/headers")
def echo_headers():
    return jsonify(dict(request.headers))


@app.route("/echo/body", methods=["POST", "PUT"])
def echo_body():
    return Response(request.get_data(),
                    content_type=request.content_type or "application/octet-stream")


@app.get("/chunked")
def chunked():
    no_chunks = request.args.get("no_chunks", 5, type=int)
    delay = request.args.get("delay_ms", 0, type=int) / 1000.0

    def parts():
        for i in range(no_chunks):
            if delay and i:
                time.sleep(delay)
            yield ("chunk %d\n" % i).encode()

    return Response(parts(), content_type="text/plain")


@app.get("/payload/10k")
def payload_10k():
    return Response(PAYLOAD_10K, content_type="text/plain")


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>yimmo-twisted WebSocket echo</title></head>
<body>
<h1>WebSocket echo</h1>
<form id="form"><input id="text" value="Hello from the browser" size="40">
<button>Send</button></form>
<pre id="log"></pre>
<script>
const log = document.getElementById("log");
function show(line) { log.textContent += line + "\\n"; }
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const url = scheme + location.host + location.pathname;
const ws = new WebSocket(url);
ws.onopen = () => { show("open"); ws.send(document.getElementById("text").value); };
ws.onmessage = (event) => show("echo: " + event.data);
ws.onclose = (event) => show("closed: " + event.code);
ws.onerror = () => show("error");
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  ws.send(document.getElementById("text").value);
};
</script>
</body></html>
"""


@app.get("/websocket")
def websocket_page():
    # The handshake to this URL never gets here: the server hands it to the callbacks.
    return Response(PAGE, content_type="text/html; charset=utf-8")


def on_open(ws):
    return 0  # accept every session (ws.environ holds the handshake request)


def on_message(ws, msg, flags):
    ws.send(msg, flags)  # echo, keeping text/binary


def on_close(ws):
    pass


if hasattr(yimmo, "WebSocket"):
    yimmo.init_websockets(on_open, on_message, on_close)
