#!/usr/bin/env python3
"""
WebSocket echo throughput: messages per second with N concurrent sessions, yimmo-twisted
against autobahn's own Twisted echo server, on 127.0.0.1 only.

    python benchmarks/ws_bench.py                          # 100 and 400 sessions, 5 s each
    python benchmarks/ws_bench.py --sessions 400 --duration 10 --size 64 --window 1

Each server (``benchmarks/ws_echo.py``) is started in turn, as one process; then N
client sessions, all in this process (asyncio, raw sockets, pre-masked frames, so that
the client costs little next to the servers), each keep ``--window`` binary messages
of ``--size`` bytes in flight: a session sends a message again whenever one comes
back.  After a second of warm-up, the echoed messages are counted for ``--duration``
seconds.  The table (stdout, Markdown) gives messages/s and the mean round trip.
Every session checks that the bytes come back intact.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def masked_frame(payload: bytes) -> bytes:
    """A client's binary frame (FIN, masked with a fixed key: fine for a benchmark)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 65536:
        head = bytes([0x82, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", n)
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class Session(asyncio.Protocol):
    """One client WebSocket: handshake, then echo ``window`` messages round and round."""

    def __init__(self, path: str, frame: bytes, payload: bytes, window: int,
                 stats: "Stats") -> None:
        self.path = path
        self.frame = frame
        self.payload = payload
        self.window = window
        self.stats = stats
        self.buf = bytearray()
        self.open = False
        self.done = False  # the measurement is over: the client closes
        self.sent_at: List[float] = []
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n" % (self.path, HOST, KEY)).encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(bytes(buf[:200]).decode("latin-1")))
                return
            del buf[:end + 4]
            self.open = True
            self.ready.set_result(None)
        now = time.perf_counter()
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                start = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                start = 10
            if len(buf) < start + n:
                return
            opcode = buf[0] & 0x0F
            if opcode == 0x2:
                if buf[start:start + n] != self.payload:
                    self.stats.corrupt += 1
                self.stats.received += 1
                self.stats.rtt += now - self.sent_at.pop(0)
                self.send()
            elif opcode == 0x9:  # ping: answer (masked pong, empty payload is enough)
                self.transport.write(b"\x8a\x80\x00\x00\x00\x00")
            del buf[:start + n]

    def send(self) -> None:
        self.sent_at.append(time.perf_counter())
        self.transport.write(self.frame)

    def start(self) -> None:
        for _ in range(self.window):
            self.send()

    def connection_lost(self, exc) -> None:
        if self.open and not self.done:
            self.stats.lost += 1
        elif not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))


class Stats:
    def __init__(self) -> None:
        self.received = 0
        self.rtt = 0.0
        self.corrupt = 0
        self.lost = 0


async def run_clients(port: int, sessions: int, size: int, window: int, warmup: float,
                      duration: float) -> Tuple[float, float, Stats]:
    loop = asyncio.get_running_loop()
    payload = os.urandom(size)
    frame = masked_frame(payload)
    stats = Stats()
    protocols = []
    for i in range(sessions):
        _, protocol = await loop.create_connection(
            lambda i=i: Session("/bench/%d" % i, frame, payload, window, stats), HOST, port)
        protocols.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(p.ready for p in protocols)), 30)
    for p in protocols:
        p.start()
    await asyncio.sleep(warmup)
    received, rtt = stats.received, stats.rtt
    start = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - start
    count = stats.received - received
    mean_rtt = (stats.rtt - rtt) / count if count else float("nan")
    for p in protocols:
        p.done = True
        p.transport.abort()
    return count / elapsed, mean_rtt, stats


def start_server(name: str, threads: int) -> Tuple[subprocess.Popen, int]:
    if name == "yimmo":
        argv = [sys.executable, "-m", "yimmo_twisted", "--listen",
                "tcp:0:interface=%s" % HOST, "--access-log", "off", "-t", str(threads),
                "--ws-ping-interval", "0", "benchmarks.ws_echo:app"]
        pattern = re.compile(rb"listening on tcp [0-9.]+:(\d+)")
    else:
        argv = [sys.executable, os.path.join(HERE, "ws_echo.py"), "0"]
        pattern = re.compile(rb"listening on (\d+)")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    seen = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        m = pattern.search(line)
        if m:
            # Keep draining its output so that the server never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(m.group(1))
    stop_server(proc)
    raise RuntimeError("%s did not start:\n%s" % (name, seen.decode("latin-1")))


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="yimmo,autobahn")
    p.add_argument("--sessions", default="100,400", help="comma-separated session counts")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--size", type=int, default=64, help="message size in bytes")
    p.add_argument("--window", type=int, default=1, help="messages in flight per session")
    p.add_argument("--threads", type=int, default=4, help="yimmo worker threads")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.sessions.split(",")]
    servers = args.servers.split(",")
    print("WebSocket echo, %d-byte binary messages, %d in flight per session, %g s each; "
          "%s, %d cores, Python %s\n" % (args.size, args.window, args.duration,
                                         platform.machine(), os.cpu_count(),
                                         platform.python_version()))
    print("| server | sessions | msgs/s | mean round trip | errors |")
    print("|---|---:|---:|---:|---|")
    for sessions in counts:
        for name in servers:
            print("%s, %d sessions..." % (name, sessions), file=sys.stderr, flush=True)
            proc, port = start_server(name, args.threads)
            try:
                rate, rtt, stats = asyncio.run(asyncio.wait_for(run_clients(
                    port, sessions, args.size, args.window, args.warmup, args.duration),
                    args.warmup + args.duration + 60))
            finally:
                stop_server(proc)
            errors = "%d corrupt, %d lost" % (stats.corrupt, stats.lost) \
                if stats.corrupt or stats.lost else "none"
            print("| %s | %d | %.0f | %.2f ms | %s |" % (name, sessions, rate, rtt * 1000,
                                                        errors), flush=True)


if __name__ == "__main__":
    main()
