"""
How long a server process takes to start, and its memory once it serves: the time from
spawning ``python -m yimmo_twisted ... benchmarks.apps:hello`` to its first answered
request, and its resident set size then.  A server process is started at every start,
reload, recycle and crash, so this is how long those leave a process's share of the
clients waiting, and what each of ``-p N`` processes costs the machine.

    python benchmarks/startup.py                   # this checkout, 7 starts
    python benchmarks/startup.py /tmp/old .        # checkouts side by side, interleaved
    python benchmarks/startup.py --app ws_echo:app # an app with WebSocket callbacks

Each start is on a free 127.0.0.1 port, bounded (10 s to answer, SIGKILL 5 s after
SIGTERM); the medians and minima of ``--starts`` go to stdout.  Standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # run.py beside this file (benchmarks/ is no package)
from run import HOST, free_port, rss_kib  # noqa: E402

ANSWER_WITHIN = 10.0


def answered(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), 0.5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: startup\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_once(checkout: str, app: str) -> Tuple[float, int]:
    """Seconds from spawn to the first answer, and the RSS in KiB then."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (checkout, os.path.join(checkout, "benchmarks"),
                    os.environ.get("PYTHONPATH", "")) if p))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "yimmo_twisted", "--listen",
         "tcp:%d:interface=%s" % (port, HOST), app],
        cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not answered(port):
            if proc.poll() is not None:
                raise RuntimeError("%s: the server exited with status %d"
                                   % (checkout, proc.returncode))
            if time.perf_counter() - started > ANSWER_WITHIN:
                raise RuntimeError("%s: no answer within %g s" % (checkout, ANSWER_WITHIN))
            time.sleep(0.005)
        return time.perf_counter() - started, rss_kib(proc.pid)  # its own group
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("checkouts", nargs="*", default=[os.path.dirname(HERE)],
                        help="checkouts of yimmo-twisted (default: this one)")
    parser.add_argument("--app", default="benchmarks.apps:hello")
    parser.add_argument("--starts", type=int, default=7, help="starts per checkout")
    args = parser.parse_args(argv)
    times: Dict[str, List[float]] = {c: [] for c in args.checkouts}
    memory: Dict[str, List[int]] = {c: [] for c in args.checkouts}
    for _ in range(args.starts):
        for checkout in args.checkouts:  # interleaved: a machine's drift falls on all alike
            seconds, kib = start_once(os.path.abspath(checkout), args.app)
            times[checkout].append(seconds)
            memory[checkout].append(kib)
    print("| checkout | start to first answer, median (min) | RSS then, median |")
    print("|---|---:|---:|")
    for checkout in args.checkouts:
        print("| %s | %.3f s (%.3f) | %.1f MiB |" % (
            checkout, statistics.median(times[checkout]), min(times[checkout]),
            statistics.median(memory[checkout]) / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
