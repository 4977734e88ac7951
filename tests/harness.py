"""
The session with bytes alone: a real HTTPSession and Server on a StringTransport, the
app run on the test's own thread (the worker pool is not started; its queue is drained
here), and a task.Clock for every deadline, so each test is bytes in, bytes out, with no
socket, no thread and no sleeping.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from yimmo_twisted.config import Settings
from yimmo_twisted.context import Context
from yimmo_twisted.server import Server
from yimmo_twisted.session import HTTPSession


class ThreadReactor:
    """Just what the server needs of a reactor here: callFromThread, run when pumped."""

    def __init__(self):
        self.calls = []

    def callFromThread(self, fn, *args):
        self.calls.append((fn, args))


class Harness:
    """One connection: ``feed`` bytes, get the bytes written back; ``advance`` the clock."""

    def __init__(self, app, **settings):
        self.reactor = ThreadReactor()
        self.clock = Clock()
        self.app = app
        self.server = Server(app, Settings(**settings), self.reactor, clock=self.clock)
        self.transport = StringTransport()
        self.session = HTTPSession(self.server)
        self.session.makeConnection(self.transport)

    def feed(self, data: bytes) -> bytes:
        """Bytes from the client; returns the bytes written back since the last call."""
        self.session.dataReceived(data)
        self.run()
        out = self.transport.value()
        self.transport.clear()
        return out

    def run(self) -> None:
        """
        Run queued exchanges and deliver their output until nothing is left.  An exchange
        runs once its whole body is in (or has failed): the app runs on this thread, so
        it must never wait for bytes the test has yet to feed.
        """
        pool = self.server.pool
        while True:
            ran = False
            for worker in pool.workers:
                while worker.queue:
                    body = worker.queue[0].body
                    if body is not None and not body.complete and body.error is None:
                        break
                    Context(worker.queue.popleft(), pool.handoff.emit).run(self.app)
                    ran = True
            calls, self.reactor.calls = self.reactor.calls, []
            for fn, args in calls:
                fn(*args)
            if not ran and not calls:
                return

    def advance(self, seconds: float) -> bytes:
        """Let ``seconds`` pass and run the server's timeout sweep; the bytes written."""
        self.clock.advance(seconds)
        self.server._check_timeouts()
        self.run()
        out = self.transport.value()
        self.transport.clear()
        return out
