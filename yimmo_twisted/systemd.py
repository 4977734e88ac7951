"""
systemd's service notifications (sd_notify(3)) for ``Type=notify`` and
``Type=notify-reload`` units, without libsystemd: one datagram per state change to the
AF_UNIX socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).
Without that variable every call does nothing.  A notification that cannot be sent is
logged once and never stops the server.
"""

from __future__ import annotations

import os
import socket
import time
from typing import List

from .logs import logger

log = logger("yimmo.systemd")

_failed = False  # a send has failed and been logged: later failures are not


def notify(*fields: str) -> None:
    """Send ``fields`` (``READY=1``...) as one notification."""
    global _failed
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode("utf-8", "replace"), address)
    except OSError as e:
        if not _failed:
            _failed = True
            log.warn("cannot notify systemd at {address}: {error}",
                     address=os.environ.get("NOTIFY_SOCKET"), error=e)


def ready(endpoints: List[str], processes: int = 0) -> None:
    """Serving (at the start, and at the end of a reload) on ``endpoints``."""
    status = "serving on " + ", ".join(endpoints)
    if processes:
        status += " with %d server process%s" % (processes, "" if processes == 1 else "es")
    notify("READY=1", "MAINPID=%d" % os.getpid(), "STATUS=" + status)


def reloading() -> None:
    """
    A reload begins.  systemd (253 and later, ``Type=notify-reload``) wants the monotonic
    clock's time with it, to match this notification to the reload it asked for.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", "MONOTONIC_USEC=%d" % usec,
                  "STATUS=reloading: replacing the server processes")


def stopping() -> None:
    """The drain begins."""
    notify("STOPPING=1", "STATUS=stopping: draining requests in flight")
