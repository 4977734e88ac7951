"""
The WebSocket echo servers that ``ws_bench.py`` compares, on 127.0.0.1.

* ``yimmo-wsgi benchmarks.ws_echo:app``: yimmo-twisted with echo callbacks (the yimmo API).
* ``python benchmarks/ws_echo.py PORT``: autobahn's own Twisted echo server (a
  ``WebSocketServerProtocol`` whose onMessage sends the message back, on the reactor
  thread, as in autobahn's examples), with the same protocol options as yimmo's
  defaults.  It prints ``listening on PORT`` once it listens.
"""

from __future__ import annotations

import sys

try:
    import yimmo
except ImportError:
    yimmo = None


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def on_open(ws):
    return 0


def on_message(ws, msg, flags):
    ws.send(msg, flags)


def on_close(ws):
    pass


if hasattr(yimmo, "WebSocket"):
    yimmo.init_websockets(on_open, on_message, on_close)


def autobahn_main(port: int) -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(versions=[13], maxMessagePayloadSize=16 << 20,
                               maxFramePayloadSize=16 << 20, failByDrop=False)
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("listening on %d" % listening.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    autobahn_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
