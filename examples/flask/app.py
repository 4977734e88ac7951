"""
A small Flask app on yimmo-twisted: pages from templates, a form, a JSON API, and a
WebSocket echo on the same port. See README.md beside this file for how to run it.
"""

from __future__ import annotations

import threading

from flask import Flask, abort, jsonify, render_template, request

try:
    import yimmo  # provided by the server at start-up
except ImportError:  # another server, or a test client: no WebSockets
    yimmo = None

app = Flask(__name__)

# The app runs on several worker threads at once: what they share is locked.
_lock = threading.Lock()
_items: list[dict] = []


@app.get("/")
def index():
    return render_template("index.html", server=request.environ.get("SERVER_SOFTWARE", ""))


@app.post("/greet")
def greet():
    name = request.form.get("name", "").strip()
    if not name:
        abort(400, "a name, please")
    return render_template("greet.html", name=name)


@app.get("/api/items")
def list_items():
    with _lock:
        return jsonify(items=list(_items))


@app.post("/api/items")
def add_item():
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return jsonify(error='expected a JSON object with a "name" string'), 400
    with _lock:
        item = {"id": len(_items) + 1, "name": data["name"]}
        _items.append(item)
    return jsonify(item), 201


@app.get("/healthz")
def healthz():
    # A route for probes that should go through the worker threads (an HTTP readiness
    # check); the server's metrics page answers without them.
    return "ok\n", 200, {"Content-Type": "text/plain"}


# -- WebSockets: the server's callbacks, on its worker threads -------------------------

def on_open(ws):
    # Only /ws speaks WebSocket; a handshake elsewhere is refused (403).
    return 0 if ws.environ.get("PATH_INFO") == "/ws" else 1


def on_message(ws, msg, flags):
    ws.send(msg, flags)  # echo, keeping text or binary


def on_close(ws):
    pass


if hasattr(yimmo, "WebSocket"):
    yimmo.init_websockets(on_open, on_message, on_close)
