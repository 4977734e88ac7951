"""
The WebSocket echo servers that ``ws_bench.py`` compares, on 127.0.0.1.

* ``yimmo-wsgi benchmarks.ws_echo:app``: yimmo-twisted with echo callbacks (the yimmo API).
* ``python benchmarks/ws_echo.py PORT``: autobahn's own Twisted echo server (a
  ``WebSocketServerProtocol`` whose onMessage sends the message back, on the reactor
  thread, as in autobahn's examples), with the same protocol options as yimmo's
  defaults.  It prints ``listening on PORT`` once it listens.
* ``python benchmarks/ws_echo.py --ceiling PORT``: a bare Twisted protocol that answers
  any request with a 101 and echoes each whole frame unmasked, the frames of one read in
  one write: no checks, no threads, no application.  The least a WebSocket echo costs on
  this reactor, as ``ceiling.py`` is for HTTP.
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


def ceiling_main(port: int) -> None:
    import base64
    import hashlib
    import re
    import struct

    from twisted.internet import protocol, reactor

    key_field = re.compile(rb"(?im)^sec-websocket-key:[ \t]*(\S+)")
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    class Echo(protocol.Protocol):
        buf = b""
        opened = False

        def dataReceived(self, data: bytes) -> None:
            buf = self.buf + data
            if not self.opened:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self.buf = buf
                    return
                m = key_field.search(buf[:end])
                accept = base64.b64encode(hashlib.sha1((m.group(1) if m else b"") + guid)
                                          .digest())
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
                                     b"websocket\r\nConnection: Upgrade\r\n"
                                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                buf = buf[end + 4:]
                self.opened = True
            out = []
            i, end = 0, len(buf)
            while end - i >= 6:
                n = buf[i + 1] & 0x7F
                head = i + 2
                if n == 126:
                    n = struct.unpack_from("!H", buf, head)[0] if end - i >= 4 else -1
                    head += 2
                elif n == 127:
                    n = struct.unpack_from("!Q", buf, head)[0] if end - i >= 10 else -1
                    head += 8
                if n < 0 or head + 4 + n > end:
                    break
                key = (buf[head:head + 4] * ((n >> 2) + 1))[:n]
                payload = (int.from_bytes(buf[head + 4:head + 4 + n], "little")
                           ^ int.from_bytes(key, "little")).to_bytes(n, "little")
                out.append(bytes((buf[i], n)) if n < 126 else
                           struct.pack("!BBH", buf[i], 126, n) if n < 65536 else
                           struct.pack("!BBQ", buf[i], 127, n))
                out.append(payload)
                i = head + 4 + n
            self.buf = buf[i:]
            if out:
                self.transport.write(b"".join(out))

    factory = protocol.Factory.forProtocol(Echo)
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("listening on %d" % listening.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--ceiling"]:
        ceiling_main(int(args[1]) if len(args) > 1 else 0)
    else:
        autobahn_main(int(args[0]) if args else 0)
