#!/usr/bin/env python3
"""
WebSocket echo throughput: messages per second with N concurrent sessions, yimmo-twisted
against autobahn's own Twisted echo server (and, with ``--servers ...,ceiling``, a bare
Twisted echo of frames), on 127.0.0.1 only.

    python benchmarks/ws_bench.py                  # the cases of the targets, 3 rounds each
    python benchmarks/ws_bench.py --sessions 400 --duration 10 --pipelined none
    python benchmarks/ws_bench.py --sessions 20 --size 1024 --window 4 --pipelined none
    python benchmarks/ws_bench.py --inline --size 64  # yimmo's path alone, µs by part

Each server (``benchmarks/ws_echo.py``) is started in turn, as one process; then N
client sessions, all in this process (asyncio, raw sockets, pre-masked frames, so that
the client costs little next to the servers), each keep ``--window`` binary messages
of ``--size`` bytes in flight: a session sends a message again whenever one comes
back.  After a second of warm-up, the echoed messages are counted for ``--duration``
seconds.  Every session checks that the bytes come back intact.

The cases: each count of ``--sessions`` with ``--window`` and ``--size``, then
``--pipelined`` (few sessions, several messages in flight each).  Each case runs
``--rounds`` times, the servers alternating (A B, B A, A B...), so that the drift of a
shared machine falls on both alike; the table (stdout, Markdown) has the median of the
rounds: messages/s (and their range), the server's CPU time per message (user + system
time of its process group, /proc/PID/stat, over the measured seconds: the cost of a
message, which moves far less than msgs/s when other jobs take the cores), this client's
share of a core (near 100%: the client was the bound), yimmo's thread hand-overs per
message (from its metrics), the mean round trip, and each server's rate over
autobahn's.  Then a PASS/FAIL line per target: yimmo at least 2x autobahn with one
message in flight at 100 and 400 sessions, and at least 1x pipelined.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, List, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # run.py beside this file (benchmarks/ is no package)
from run import cpu_seconds, print_checks  # noqa: E402

HOST = "127.0.0.1"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

# The targets: yimmo's msgs/s over autobahn's.
TARGET_ONE_IN_FLIGHT = 2.0  # one message in flight per session, at these session counts
TARGET_SESSIONS = (100, 400)
TARGET_PIPELINED = 1.0  # few sessions, several messages in flight each


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


class Probe(NamedTuple):
    """Counters read at both ends of the measured seconds."""
    server_cpu: float  # seconds, the server's process group
    client_cpu: float  # seconds, this process
    handovers: Optional[float]  # yimmo's thread hand-overs so far; None for autobahn


def probe(group: int, metrics: Optional[int]) -> Probe:
    t = os.times()
    return Probe(cpu_seconds(group), t.user + t.system,
                 None if metrics is None else handovers(metrics))


def handovers(port: int) -> Optional[float]:
    """yimmo_thread_handovers, from yimmo's metrics endpoint on ``port``."""
    try:
        with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, port), timeout=5) as r:
            page = r.read().decode("latin-1")
    except OSError:
        return None
    m = re.search(r"^yimmo_thread_handovers(?:_total)? ([0-9.e+]+)$", page, re.M)
    return float(m.group(1)) if m else None


class Result(NamedTuple):
    rate: float  # echoed messages per second
    rtt: float  # mean round trip, seconds
    server_us: float  # server CPU µs per message
    client_share: float  # this process's CPU seconds per second
    hops: Optional[float]  # yimmo's hand-overs per message
    stats: Stats


async def run_clients(port: int, sessions: int, size: int, window: int, warmup: float,
                      duration: float, group: int, metrics: Optional[int]) -> Result:
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
    # /proc and the metrics page are read off the loop, so that the sessions go on.
    before = await loop.run_in_executor(None, probe, group, metrics)
    received, rtt = stats.received, stats.rtt
    start = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - start
    count = stats.received - received
    mean_rtt = (stats.rtt - rtt) / count if count else float("nan")
    after = await loop.run_in_executor(None, probe, group, metrics)
    for p in protocols:
        p.done = True
        p.transport.abort()
    hops = None
    if before.handovers is not None and after.handovers is not None and count:
        hops = (after.handovers - before.handovers) / count
    return Result(count / elapsed, mean_rtt,
                  (after.server_cpu - before.server_cpu) * 1e6 / count if count
                  else float("nan"),
                  (after.client_cpu - before.client_cpu) / elapsed, hops, stats)


def start_server(name: str, threads: int) -> Tuple[subprocess.Popen, int, Optional[int]]:
    """Start ``name`` on a free port: its process, its port, its metrics port (yimmo's)."""
    if name == "yimmo":
        argv = [sys.executable, "-m", "yimmo_twisted", "--listen",
                "tcp:0:interface=%s" % HOST, "--access-log", "off", "-t", str(threads),
                "--ws-ping-interval", "0", "--metrics-listen", "tcp:0:interface=%s" % HOST,
                "benchmarks.ws_echo:app"]
        pattern = re.compile(rb"listening on tcp [0-9.]+:(\d+)")
    elif name == "autobahn":
        argv = [sys.executable, os.path.join(HERE, "ws_echo.py"), "0"]
        pattern = re.compile(rb"listening on (\d+)")
    elif name == "ceiling":
        argv = [sys.executable, os.path.join(HERE, "ws_echo.py"), "--ceiling", "0"]
        pattern = re.compile(rb"listening on (\d+)")
    else:
        raise ValueError("unknown server %r: yimmo, autobahn or ceiling" % name)
    metrics_pattern = re.compile(rb"metrics on tcp [0-9.]+:(\d+)")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen = b""
    port = metrics = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        m = pattern.search(line)
        if m:
            port = int(m.group(1))
        m = metrics_pattern.search(line)
        if m:
            metrics = int(m.group(1))
        if port is not None and (metrics is not None or name != "yimmo"):
            # Keep draining its output so that the server never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, port, metrics
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


class Case(NamedTuple):
    sessions: int
    window: int  # messages in flight per session
    size: int  # bytes per message

    def __str__(self) -> str:
        return "%d sessions x %d in flight x %d B" % self


def parse_case(text: str) -> Optional[Case]:
    """SESSIONSxWINDOWxSIZE (20x4x1024), or none."""
    if text.strip().lower() in ("", "none"):
        return None
    try:
        parts = [int(n) for n in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError("expected SESSIONSxWINDOWxSIZE (20x4x1024) or none")
    return Case(*parts)


def measure(name: str, case: Case, args) -> Result:
    proc, port, metrics = start_server(name, args.threads)
    try:
        return asyncio.run(asyncio.wait_for(run_clients(
            port, case.sessions, case.size, case.window, args.warmup, args.duration,
            proc.pid, metrics), args.warmup + args.duration + 60))
    finally:
        stop_server(proc)


class Summary(NamedTuple):
    """The median of a server's rounds of one case."""
    rate: float
    low: float
    high: float
    server_us: float
    client_share: float
    hops: Optional[float]
    rtt: float
    rounds: int
    corrupt: int
    lost: int


def summary(results: List[Result]) -> Summary:
    med = statistics.median
    rates = [r.rate for r in results]
    hops = [r.hops for r in results if r.hops is not None]
    return Summary(med(rates), min(rates), max(rates), med(r.server_us for r in results),
                   med(r.client_share for r in results), med(hops) if hops else None,
                   med(r.rtt for r in results), len(results),
                   sum(r.stats.corrupt for r in results), sum(r.stats.lost for r in results))


def target(case: Case) -> Optional[float]:
    """yimmo's least msgs/s over autobahn's for ``case``; None: no target."""
    if case.window > 1:
        return TARGET_PIPELINED
    if case.sessions in TARGET_SESSIONS:
        return TARGET_ONE_IN_FLIGHT
    return None


def checks(summaries: Dict[Tuple[Case, str], Summary],
           cases: List[Case]) -> List[Tuple[str, Optional[bool], str]]:
    out: List[Tuple[str, Optional[bool], str]] = []
    for case in cases:
        least = target(case)
        if least is None:
            continue
        what = "%s: yimmo >= %gx autobahn msgs/s" % (case, least)
        y, a = summaries.get((case, "yimmo")), summaries.get((case, "autobahn"))
        if y is None or a is None or not a.rate or y.corrupt or y.lost:
            out.append((what, None, "not measured" if y is None or a is None or not a.rate
                        else "yimmo's echoes were not intact"))
            continue
        out.append((what, y.rate >= least * a.rate,
                    "%.2fx; server CPU %.1f against %.1f us/msg, medians of %d rounds"
                    % (y.rate / a.rate, y.server_us, a.server_us, y.rounds)))
    return out


class _Reactor:
    """What the bridge needs of a reactor for --inline: nothing runs later."""

    def callFromThread(self, fn, *args) -> None:
        raise AssertionError("--inline drains the handoff itself")

    def callLater(self, delay, fn, *args, **kw):
        raise AssertionError("no timers: pings are off")

    def wakeUp(self) -> None:
        pass


def inline(size: int, number: int, repeat: int) -> None:
    """
    yimmo's per-message path without sockets or threads: the real Bridge and protocol on
    a StringTransport, one frame per dataReceived, the inbox run here (the pool's work),
    the handoff drained here.  µs per message of each part, the best of ``repeat``.
    """
    sys.path.insert(0, ROOT)  # this checkout's yimmo_twisted
    from types import SimpleNamespace

    from twisted.internet.testing import StringTransport

    from yimmo_twisted import websockets
    from yimmo_twisted.config import Settings
    from yimmo_twisted.worker import Handoff

    settings = Settings()
    settings.ws_ping_interval = 0
    jobs: list = []
    handoff = Handoff(_Reactor(), settings.output_buffer)
    handoff.sleeping = False  # a reactor awake: no wake-ups
    server = SimpleNamespace(settings=settings, pool=SimpleNamespace(submit=jobs.append),
                             handoff=handoff, access=None, reactor=_Reactor())
    websockets.init_websockets(lambda ws: 0, lambda ws, msg, flags: ws.send(msg, flags),
                               lambda ws: None)
    bridge = websockets.Bridge(server)

    def run_jobs() -> None:
        while jobs:
            jobs.pop(0).run()

    transport = StringTransport()
    bridge.take_over(transport, {
        "REQUEST_METHOD": "GET", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": HOST, "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY, "HTTP_SEC_WEBSOCKET_VERSION": "13"}, b"")
    run_jobs()
    handoff.drain()
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200]
    protocol = transport.protocol
    payload = os.urandom(size)
    frame = masked_frame(payload)
    clock = time.perf_counter
    best = [float("inf")] * 3
    for _ in range(repeat):
        transport.clear()
        parts = [0.0] * 3
        for _ in range(number):
            t0 = clock()
            protocol.dataReceived(frame)
            t1 = clock()
            run_jobs()
            t2 = clock()
            handoff.drain()
            t3 = clock()
            parts[0] += t1 - t0
            parts[1] += t2 - t1
            parts[2] += t3 - t2
        assert transport.value().endswith(payload) and len(transport.value()) == number * (
            len(frame) - 4), "the echo is not the message"
        best = [min(b, p * 1e6 / number) for b, p in zip(best, parts)]
    print("| %d B | %.2f | %.2f | %.2f | %.2f |" % (size, best[0], best[1], best[2], sum(best)))


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--servers", default="yimmo,autobahn", help="comma-separated, of yimmo, "
                   "autobahn and ceiling (ws_echo.py --ceiling: a bare Twisted echo of "
                   "frames, the least an echo costs on this reactor); default yimmo,autobahn")
    p.add_argument("--sessions", default="100,400", help="comma-separated session counts "
                   "(default 100,400)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--window", type=int, default=1,
                   help="messages in flight per session (default 1)")
    p.add_argument("--pipelined", type=parse_case, default=Case(20, 4, 1024),
                   metavar="SxWxB", help="one more case, of sessions that pipeline: S "
                   "sessions with W messages of B bytes in flight each (default 20x4x1024; "
                   "none to skip)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each server per case, "
                   "the servers alternating; the table has their medians (default 3)")
    p.add_argument("--threads", type=int, default=4, help="yimmo worker threads")
    p.add_argument("--inline", action="store_true", help="no servers, no sockets: yimmo's "
                   "per-message path in this process, µs per --size message of its parts")
    args = p.parse_args(argv)
    if args.inline:
        print("| message | reading (dataReceived) | worker (on_message, ws.send) | "
              "reactor's write (drain, frame) | all |\n|---|---:|---:|---:|---:|")
        inline(args.size, 20000, 5)
        return
    if args.rounds < 1 or args.size < 1 or args.window < 1:
        p.error("--rounds, --size and --window must be at least 1")
    cases = [Case(int(n), args.window, args.size) for n in args.sessions.split(",") if n]
    if args.pipelined is not None and args.pipelined not in cases:
        cases.append(args.pipelined)
    servers = [n.strip() for n in args.servers.split(",") if n.strip()]
    print("WebSocket echo, binary messages, %g s per run, medians of %d rounds; %s, %d "
          "cores, Python %s, load average %s at the start\n"
          % (args.duration, args.rounds, platform.machine(), os.cpu_count(),
             platform.python_version(), " ".join("%.2f" % x for x in os.getloadavg())))
    print("| server | sessions | in flight | bytes | msgs/s (range) | server CPU us/msg "
          "| client CPU | hand-overs/msg | mean round trip | /autobahn | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    summaries: Dict[Tuple[Case, str], Summary] = {}
    for case in cases:
        results: Dict[str, List[Result]] = {name: [] for name in servers}
        for i in range(args.rounds):
            for name in servers if i % 2 == 0 else servers[::-1]:
                print("%s, %s, round %d..." % (name, case, i + 1), file=sys.stderr, flush=True)
                r = measure(name, case, args)
                results[name].append(r)
                print("  %.0f msgs/s, server CPU %.1f us/msg, client %.0f%%"
                      % (r.rate, r.server_us, 100 * r.client_share), file=sys.stderr,
                      flush=True)
        for name in servers:
            summaries[(case, name)] = summary(results[name])
        base = summaries.get((case, "autobahn"))
        for name in servers:
            s = summaries[(case, name)]
            print("| %s | %d | %d | %d | %.0f (%.0f-%.0f) | %.1f | %.0f%% | %s | %.2f ms | %s "
                  "| %s |" % (
                      name, case.sessions, case.window, case.size, s.rate, s.low, s.high,
                      s.server_us, 100 * s.client_share,
                      "—" if s.hops is None else "%.3f" % s.hops, s.rtt * 1000,
                      "%.2fx" % (s.rate / base.rate) if base and base.rate else "—",
                      "%d corrupt, %d lost" % (s.corrupt, s.lost) if s.corrupt or s.lost
                      else "none"), flush=True)
    print()
    if "yimmo" in servers and "autobahn" in servers:
        print("### targets (WebSocket echo): yimmo >= %gx autobahn's msgs/s with one "
              "message in flight at %s sessions, >= %gx with sessions that pipeline\n"
              % (TARGET_ONE_IN_FLIGHT, " and ".join(map(str, TARGET_SESSIONS)),
                 TARGET_PIPELINED))
        print_checks(checks(summaries, cases))


if __name__ == "__main__":
    main()
