"""The price of the metrics on hello world: yimmo with and without ``--metrics-listen``,
alternating, on 127.0.0.1 only.

    python benchmarks/metrics_cost.py              # 8 rounds of 4 s each way
    python benchmarks/metrics_cost.py --rounds 4 --duration 3 --no-proc 2

Each round starts the server one way, warms it up, measures ``wrk -t1 -c50`` and stops it,
then the other way; with the metrics on, the page is scraped every second meanwhile (15
times as often as Prometheus's default). It prints the median and range of req/s and of
server CPU per request, each way, and the cost: how much lower the median req/s is with
the metrics, and how much more CPU each request takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from typing import Dict, List

from run import HOST, Server, cpu_seconds, free_port, parse_wrk, wrk

APP = "examples.hello:app"


def serve(port: int, metrics_port: int, no_proc: int) -> Server:
    argv = [sys.executable, "-m", "yimmo_twisted", "--listen",
            "tcp:%d:interface=%s" % (port, HOST), "-p", str(no_proc), "--access-log", "off"]
    if metrics_port:
        argv += ["--metrics-listen", "tcp:%d:interface=%s" % (metrics_port, HOST)]
    return Server("yimmo-metrics" if metrics_port else "yimmo", argv + [APP], port)


def scrape_every_second(port: int, stop: threading.Event, pages: List[int]) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, port), timeout=5) as r:
            pages.append(len(r.read()))


def one_run(metrics: bool, args) -> Dict[str, float]:
    port, metrics_port = free_port(), free_port() if metrics else 0
    server = serve(port, metrics_port, args.no_proc)
    try:
        why = server.wait_ready()
        if why is not None:
            raise SystemExit("the server did not start: %s\n%s" % (why, server.output()))
        wrk(port, None, 1, args)  # warm-up
        stop = threading.Event()
        pages: List[int] = []
        scraper = threading.Thread(target=scrape_every_second, args=(metrics_port, stop, pages))
        if metrics:
            scraper.start()
        cpu = cpu_seconds(server.proc.pid)
        row = parse_wrk(wrk(port, None, args.duration, args))
        cpu = cpu_seconds(server.proc.pid) - cpu
        stop.set()
        if metrics:
            scraper.join(10)
            if not pages:
                raise SystemExit("no metrics page was served")
        requests = row["requests"]
        assert isinstance(requests, int) and requests > 0, row
        rps = row["rps"]
        assert isinstance(rps, float)
        return {"rps": rps, "cpu_us": cpu / requests * 1e6}
    finally:
        server.stop()


def summary(runs: List[Dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return "%.1f (%.1f-%.1f)" % (statistics.median(values), min(values), max(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=int, default=4, help="seconds of wrk each")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads-wrk", type=int, default=1)
    parser.add_argument("--no-proc", type=int, default=1)
    args = parser.parse_args()
    runs: Dict[bool, List[Dict[str, float]]] = {False: [], True: []}
    for i in range(args.rounds):
        for metrics in (False, True) if i % 2 == 0 else (True, False):  # neither always first
            runs[metrics].append(one_run(metrics, args))
            print("round %d, metrics %s: %.0f req/s, %.1f us CPU/request"
                  % (i + 1, "on" if metrics else "off", runs[metrics][-1]["rps"],
                     runs[metrics][-1]["cpu_us"]), file=sys.stderr)
    print("hello world, yimmo -p %d, wrk -t%d -c%d -d%ds, %d rounds (median (range)), %s"
          % (args.no_proc, args.threads_wrk, args.connections, args.duration, args.rounds,
             time.strftime("%Y-%m-%d", time.gmtime())))
    print("| metrics | req/s | server CPU us/request |\n|---|---:|---:|")
    for metrics in (False, True):
        print("| %s | %s | %s |" % ("on, scraped every second" if metrics else "off",
                                    summary(runs[metrics], "rps"),
                                    summary(runs[metrics], "cpu_us")))
    off = statistics.median(r["rps"] for r in runs[False])
    on = statistics.median(r["rps"] for r in runs[True])
    cpu_off = statistics.median(r["cpu_us"] for r in runs[False])
    cpu_on = statistics.median(r["cpu_us"] for r in runs[True])
    print("\ncost: %.1f%% of the median req/s, %+.2f us of CPU per request (%+.1f%%)"
          % ((off - on) / off * 100, cpu_on - cpu_off, (cpu_on - cpu_off) / cpu_off * 100))


if __name__ == "__main__":
    main()
