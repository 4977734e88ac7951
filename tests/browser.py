"""
Headless Chromium, driven over its DevTools protocol: a page opened in a real browser,
its ``#log`` element read until the page's script has written what a test waits for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Sequence

import pytest
from websockets.sync.client import connect as ws_connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")


def page_text(page: str, wanted: str, args: Sequence[str] = (), timeout: float = 20.0) -> str:
    """The text of ``page``'s #log once it holds ``wanted`` (or after ``timeout``)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--user-data-dir=" + profile, "--remote-debugging-port=0", *args, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # Its singleton socket's folder goes in TMPDIR, which a killed browser leaves
            # behind: in the profile, it goes with it.
            env=dict(os.environ, TMPDIR=profile),
            start_new_session=True)  # its own process group: its helpers go with it
        try:
            return _log_text(_devtools_url(browser), page, wanted, timeout)
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(10)


def _devtools_url(browser: subprocess.Popen, timeout: float = 20.0) -> str:
    """The browser's DevTools WebSocket, from the line Chromium prints at start."""
    found = []

    def read():
        for line in iter(browser.stderr.readline, b""):
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            if m:
                found.append(m.group(1).decode())
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        pytest.fail("chromium did not start DevTools within %.0f s" % timeout)
    return found[0]


def _log_text(devtools: str, page: str, wanted: str, timeout: float) -> str:
    """Open ``page`` in a new tab; poll its #log text until it holds ``wanted``."""
    ids = iter(range(1, 1 << 30))

    def call(ws, method, session=None, **params):
        n = next(ids)
        message = {"id": n, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        ws.send(json.dumps(message))
        while True:
            reply = json.loads(ws.recv(timeout=10))
            if reply.get("id") == n:
                assert "error" not in reply, reply
                return reply["result"]

    with ws_connect(devtools, open_timeout=10, max_size=None, compression=None) as ws:
        target = call(ws, "Target.createTarget", url=page)["targetId"]
        session = call(ws, "Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            result = call(ws, "Runtime.evaluate", session,
                          expression="(document.getElementById('log') || {}).textContent",
                          returnByValue=True)
            text = result["result"].get("value") or ""
            if wanted in text:
                break
            time.sleep(0.1)
        return text
