"""
The server as real clients use it: curl (Debian's), with its own framing choices:
keep-alive across URLs, Expect: 100-continue before a large upload, chunked uploads from
a pipe, HEAD.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]


@pytest.fixture(scope="module")
def server():
    from conftest import start_server
    s = start_server("apps:app", "-t", "4")
    yield s
    s.stop()


def curl(*args: str, data: bytes = None) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], input=data,
                          capture_output=True, timeout=30)


def test_keep_alive_across_urls(server):
    r = curl("-w", "%{num_connects} ", "%s/" % server.url, "%s/chunked?n=2" % server.url,
             "%s/status/204" % server.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, World!\n1 part 0\npart 1\n0 0 "  # one connection, reused


def test_large_upload_with_expect_100_continue(server, tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    r = curl("-v", "--data-binary", "@%s" % path, "-H", "Content-Type: application/octet-stream",
             "%s/echo" % server.url)
    assert r.returncode == 0, r.stderr
    assert b"HTTP/1.1 100 Continue" in r.stderr  # curl asked, and was told to go on
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(data).digest()


def test_chunked_upload_from_a_pipe(server):
    data = os.urandom(1 << 20)
    r = curl("-T", "-", "-X", "POST", "%s/discard" % server.url, data=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"%d" % len(data)


def test_head(server):
    r = curl("-I", "%s/" % server.url)
    assert r.returncode == 0 and r.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 14\r\n" in r.stdout
