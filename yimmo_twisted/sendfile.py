"""
File bodies sent by the reactor: ``wsgi.file_wrapper`` over a regular file (PEP 3333,
"Optional Platform-Specific File Handling").

A worker finds such a body (context.Context.run), sends the head and hands the file over
in a FileSender, through the Handoff like any other output (end code FILE), so the head
and any write() output before it go first.  The worker is free at once: a download
holds a file descriptor, not a thread.

The reactor sends ``count`` bytes from ``offset`` (the file's position when the app
returned it) with a pull producer on the transport, which asks for more only when
everything it holds has been written:

* plain TCP and Unix connections on Linux: ``os.sendfile`` from the file to the socket,
  zero-copy.  Twisted's buffer is empty whenever the producer is asked (see
  compat.pull_after_drain_ok); a full socket buffer (EAGAIN) waits for writability.
* anything else (TLS, which must encrypt; a PROXY wrapper; other systems): blocks of
  the file read with ``os.pread`` and written through the transport, one per turn.

Either way one turn sends a bounded amount, so other connections get the reactor
between turns.  The app's close() runs on a worker once the file is sent or the send
has stopped (``run``, submitted by the session): PEP 3333 has the server call it on
completion of the request, apps do work there (Django's request_finished closes
database connections) that must neither run on the reactor nor before the response is
out, and the file must stay open until then in any case.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IPullProducer
from twisted.logger import LogLevel
from zope.interface import implementer

from . import compat
from .exchange import ABORT, CLOSE
from .logs import logger

log = logger("yimmo.sendfile")

# os.sendfile to any socket, with offsets that leave the file's own position alone.
SENDFILE = sys.platform.startswith("linux") and hasattr(os, "sendfile")
TURN = 1 << 20  # sendfile: most bytes per reactor turn
BLOCK = 256 << 10  # read and write: one block per turn


@implementer(IPullProducer)
class FileSender:
    """
    ``count`` bytes of the open file ``fd`` from ``offset``, then the response's end code
    ``end`` (DONE, or CLOSE: no keep-alive, or the file is shorter than its
    Content-Length).  Made on a worker; ``start`` and the producer's methods run on the
    reactor; ``run`` (the app's ``close``) on a worker.
    """

    def __init__(self, close: Optional[Callable[[], None]], fd: int, offset: int,
                 count: int, end: int, path: str) -> None:
        self.close = close
        self.fd = fd
        self.offset = offset
        self.left = count
        self.end = end
        self.path = path
        self._transport: Any = None  # an ITransport, an IConsumer
        self._socket: Optional[int] = None  # sendfile to it; None: write() blocks
        self._primed = False
        self._done: Optional[Callable[[int], None]] = None
        self._progress: Callable[[], None] = lambda: None

    def start(self, transport: Any, done: Callable[[int], None],
              progress: Optional[Callable[[], None]] = None) -> None:
        """Send on ``transport`` (no producer registered), then ``done(end code)``, once;
        ``progress()`` now and whenever some of the file is sent (the client reads)."""
        self._transport = transport
        self._done = done
        if progress is not None:
            self._progress = progress
            progress()
        if SENDFILE:
            self._socket = compat.sendfile_socket(transport)
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._done is None:
            return
        sock = self._socket
        if sock is None:
            self._write_block()
        elif self._primed:
            self._sendfile(sock)
        else:
            # Asked by registerProducer: the head may still be in Twisted's buffer.  The
            # next ask comes from doWrite, once that buffer is empty.
            self._primed = True
            compat.resume_when_writable(self._transport)

    def stopProducing(self) -> None:
        """The connection is lost or dropped: nothing more to send."""
        self._finish(ABORT, unregister=False)

    def _sendfile(self, sock: int) -> None:
        budget = TURN
        while self.left and budget:
            try:
                sent = os.sendfile(sock, self.fd, self.offset, min(self.left, budget))
            except BlockingIOError:
                break  # the socket's buffer is full
            except OSError as e:
                # The client went away (EPIPE, ECONNRESET) or the file cannot be read.
                log.debug("sending {path} stopped: {error}", path=self.path, error=e)
                self._finish(ABORT)
                return
            if not sent:
                self._short()
                return
            self.offset += sent
            self.left -= sent
            budget -= sent
        if budget < TURN:
            self._progress()
        if self.left:
            compat.resume_when_writable(self._transport)
        else:
            self._finish(self.end)

    def _write_block(self) -> None:
        try:
            data = os.pread(self.fd, min(self.left, BLOCK), self.offset)
        except OSError:
            log.failure("reading {path} failed", level=LogLevel.error, path=self.path)
            self._finish(ABORT)
            return
        if not data:
            self._short()
            return
        self.offset += len(data)
        self.left -= len(data)
        self._transport.write(data)
        self._progress()
        if not self.left:
            self._finish(self.end)

    def _short(self) -> None:
        # The file shrank after its length went out in the head: cut the body short.
        log.warn("{path}: the file ended {left} bytes before its Content-Length; closing",
                 path=self.path, left=self.left)
        self._finish(CLOSE)

    def _finish(self, end: int, unregister: bool = True) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        if unregister:
            self._transport.unregisterProducer()
        done(end)

    def run(self) -> None:
        """The app's close(), on a worker: once, after the send (PEP 3333)."""
        close, self.close = self.close, None
        if close is None:
            return
        try:
            close()
        except Exception:
            log.failure("close() of the response of {path} failed", level=LogLevel.error,
                        path=self.path)
