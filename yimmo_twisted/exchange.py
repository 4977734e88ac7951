"""
The exchange: one request and its response.

An exchange is created on the reactor thread when a request head is complete, handed to
a worker thread that runs the application, and its output handed back.  This module also
holds the HTTP/1.1 framing helpers that do not need a socket (status lines, error
responses, the Date header), so that they can be tested with bytes alone.
"""

from __future__ import annotations

import threading
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from time import monotonic, time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional

from .http1 import HTTPError

if TYPE_CHECKING:  # pragma: no cover
    from .sendfile import FileSender
    from .session import HTTPSession

SERVER_SOFTWARE = "yimmo-twisted"

# Handoff end codes: what the reactor does after writing a record's bytes.
MORE = 0  # more output for this exchange will follow
DONE = 1  # the response is complete; the connection may be kept alive
CLOSE = 2  # the response is complete (or cut short); close after flushing
ABORT = 3  # the response cannot be completed; drop the connection now
RESUME = 4  # no output: the app drained the request body, read from the client again
FILE = 5  # after the bytes (the head), the reactor sends the exchange's file, then ends it


class ClientDisconnected(OSError):
    """The client went away; raised to an application that writes or reads after that."""


class RequestBody:
    """
    The body of one request, fed by the reactor thread and read by a worker thread.

    The reactor appends chunks as the parser delivers them; the worker takes them,
    blocking (with the GIL released) while none are there.  Memory is bounded by flow
    control: the session pauses reading from the client when more than ``limit`` bytes
    wait unread, and the worker asks for reading to resume once it has caught up.

    ``fed`` is written only by the reactor and ``taken`` only by the worker, so their
    difference is the amount buffered without a lock on the fast path; the lock guards
    only the pause/resume decision, where a lost wake-up would deadlock.

    The worker's Event is made the first time it has to wait: most bodies are read
    whole before the app runs and never wait, and an Event (a Condition and its lock)
    cost the reactor more than the rest of a 10 KiB upload's body handling.
    """

    __slots__ = (
        "length", "fed", "taken", "complete", "error", "paused", "discard",
        "_chunks", "_event", "_lock", "_limit",
    )

    def __init__(self, length: Optional[int], limit: int) -> None:
        self.length = length  # declared Content-Length, or None when chunked
        self.fed = 0
        self.taken = 0
        self.complete = False
        self.error: "HTTPError | ClientDisconnected | None" = None
        self.paused = False
        self.discard = False  # the app is done: drop whatever still arrives
        self._chunks: Deque[bytes] = deque()
        self._event: Optional[threading.Event] = None  # once the worker waits
        self._lock = threading.Lock()
        self._limit = limit

    # -- reactor side --------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Add body bytes; True when the session should pause reading."""
        if self.discard:
            return False
        self._chunks.append(data)
        self.fed += len(data)
        self._wake()
        if self.fed - self.taken > self._limit:
            with self._lock:
                if self.fed - self.taken > self._limit and not self.discard:
                    self.paused = True
                    return True
        return False

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def whole(self, data: bytes) -> None:
        """The complete body, at once, before any worker reads it."""
        self._chunks.append(data)
        self.fed = len(data)
        self.complete = True

    def fail(self, error: "HTTPError | ClientDisconnected") -> None:
        """The body cannot be completed (too large, malformed, timed out, client gone)."""
        if not self.complete:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        # Read after the change it signals; take() sets _event before it looks again at
        # what it waits for: so either this sees the Event, or take() sees the change.
        event = self._event
        if event is not None:
            event.set()

    # -- worker side ---------------------------------------------------------------

    def take(self, resume: Callable[[], None]) -> bytes:
        """
        The next chunk of the body, b"" at its end.  Blocks until one arrives.
        ``resume`` is called (at most once per pause) to let the reactor read again.
        """
        chunks = self._chunks
        while True:
            if chunks:
                data: bytes = chunks.popleft()
                self.taken += len(data)
                if self.paused and self.fed - self.taken <= self._limit // 2:
                    self._unpause(resume)
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            event = self._event
            if event is None:
                event = self._event = threading.Event()
            else:
                event.clear()
            if chunks or self.complete or self.error is not None:
                continue
            # About to sleep: the reactor must be reading, or nothing will wake us.
            self._unpause(resume)
            event.wait()

    def _unpause(self, resume: Callable[[], None]) -> None:
        with self._lock:
            if self.paused:
                self.paused = False
                resume()

    def release(self) -> None:
        """The app is finished with the body: free what is buffered, drop the rest."""
        with self._lock:
            self.discard = True
            self._chunks.clear()
            self.paused = False


class Exchange:
    """One request (built on the reactor thread) and the state of its response."""

    __slots__ = (
        "session", "environ", "body", "keep_alive", "http11", "head_only",
        "expect_continue", "continue_sent", "dispatched", "file", "started",
    )

    def __init__(self, session: "HTTPSession", environ: Dict[str, Any],
                 body: Optional[RequestBody],
                 keep_alive: bool, http11: bool, head_only: bool,
                 expect_continue: bool) -> None:
        self.session = session
        self.environ = environ
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        self.head_only = head_only
        self.expect_continue = expect_continue
        self.continue_sent = False
        self.dispatched = False
        self.file: Optional["FileSender"] = None  # the body the reactor sends (end code FILE)
        self.started = monotonic()  # its head is parsed: the access log's duration starts


# -- framing helpers ---------------------------------------------------------------

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_date_cache: List[Any] = [0, b""]  # [second, its Date line]


def date_header() -> bytes:
    """The ``Date: ...\\r\\n`` line, formatted at most once a second (shared by all threads)."""
    now = int(time())
    cache = _date_cache
    if cache[0] != now:
        # A benign race: two threads may format the same second; both results are right.
        cache[1] = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        cache[0] = now
    line: bytes = cache[1]
    return line


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_response(status: int, reason: str = "", keep_alive: bool = False,
                   head_only: bool = False) -> bytes:
    """A complete plain-text response for errors the server answers by itself."""
    phrase = HTTPStatus(status).phrase
    body = ("%d %s: %s\n" % (status, phrase, reason) if reason and reason != phrase
            else "%d %s\n" % (status, phrase)).encode("latin-1", "replace")
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii")),
        b"Server: " + SERVER_SOFTWARE.encode("ascii") + b"\r\n",
        date_header(),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"" if keep_alive else b"Connection: close\r\n",
        b"\r\n",
    ]
    if not head_only:
        head.append(body)
    return b"".join(head)
