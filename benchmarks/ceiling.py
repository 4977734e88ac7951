#!/usr/bin/env python3
"""The ceiling of any server on the Twisted reactor: a bare protocol with a canned answer.

    python benchmarks/ceiling.py PORT

It parses nothing: every ``\\r\\n\\r\\n`` ends a request (GET only, no bodies), answered by
the same 14-byte hello response that ``benchmarks.apps:hello`` gives, on a keep-alive
HTTP/1.1 connection; pipelined requests get their answers in one write.  No WSGI, no
threads, no headers parsed: what is left is the reactor's own cost per request, which
``run.py`` compares yimmo-wsgi with.  Listens on 127.0.0.1 only, with yimmo's default
backlog (2048).
"""

import sys

from twisted.internet import protocol, reactor

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n"
            b"Hello, World!\n")
END = b"\r\n\r\n"


class Canned(protocol.Protocol):
    tail = b""  # the end of the last read after its last END: an END may straddle reads

    def dataReceived(self, data: bytes) -> None:
        data = self.tail + data
        count = data.count(END)
        if count:
            self.transport.write(RESPONSE * count)
            data = data[data.rfind(END) + len(END):]
        self.tail = data[-(len(END) - 1):]


def main() -> None:
    factory = protocol.Factory.forProtocol(Canned)
    reactor.listenTCP(int(sys.argv[1]), factory, backlog=2048, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
