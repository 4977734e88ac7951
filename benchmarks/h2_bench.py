#!/usr/bin/env python3
"""HTTP/2 comparison under h2load: yimmo-wsgi, granian and gunicorn, on 127.0.0.1 only.

    python benchmarks/h2_bench.py                    # hello world, 3 rounds of 10 s each
    python benchmarks/h2_bench.py --duration 4 --rounds 5
    python benchmarks/h2_bench.py --scenarios hello,flask --tls

Each server is one process (plus gunicorn's arbiter) serving the same application as
run.py's scenario (benchmarks/apps.py, or flask_app.py), started on a free port, waited
for until it answers an HTTP/2 request, loaded with ``h2load -c 10 -m 10 -D N
--warm-up-time 1`` (10 connections x 10 concurrent streams: 100 streams) and stopped.
Plain HTTP/2 by prior knowledge (h2c) by default; with ``--tls``, HTTPS with a
self-signed certificate made for the run and h2 chosen by ALPN, as browsers speak it.

The servers take turns: ``--rounds`` rounds, the order reversed every other round, so
that the drift of a shared machine falls on all alike; the table (stdout, Markdown) has
the medians of the rounds: req/s (and their range), the server's CPU time per request
(user + system time of its process group from /proc over the measured seconds, as run.py
counts it; for yimmo also its reactor thread's part), p50 and p99 latency from h2load's
per-request log (h2load prints no percentiles), the streams in flight (req/s times the
mean latency, Little's law: 100 when the server works on every stream h2load keeps
open), errors (non-2xx responses, failed, errored and timed-out requests: any makes the
row FAILED, and the exit status 1), and yimmo's req/s over each peer's.
Then a PASS/FAIL line per target: yimmo ahead of gunicorn, and at least 0.5x granian.

Progress goes to stderr.  A server not installed is noted, not run.  Every run is
bounded (30 s to start, h2load killed 30 s after its due end, SIGKILL 10 s after
SIGTERM), and every server is stopped on errors, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # run.py beside this file (benchmarks/ is no package)
from run import (HOST, SCENARIOS, STOP_TIMEOUT, Server, _granian, _gunicorn,  # noqa: E402
                 _yimmo, cell, cpu_seconds, free_port, lacks_its_app, machine, machine_line,
                 names, print_checks, stop_and_report, thread_seconds, version, wrap_up)

# The targets of HTTP/2 hello world: yimmo's req/s over each peer's.
TARGET_GUNICORN = 1.0  # ahead of it
TARGET_GRANIAN = 0.5
H2LOAD_GRACE = 30  # seconds past its due end before h2load is killed
# Scenarios of run.py that are one GET of "/" (no request body, no client of run.py's).
H2_SCENARIOS = ("hello", "10k", "cpu", "flask", "django")

TLS = Optional[Tuple[str, str]]  # (certificate, key) PEM files, or None for h2c


def with_options(argv: List[str], options: List[str]) -> List[str]:
    """run.py's command with ``options`` before its last argument, the application."""
    return argv[:-1] + options + argv[-1:]


def _yimmo_h2(port: int, app: str, tls: TLS, connections: int) -> List[str]:
    argv = _yimmo(port, app, False)
    if tls is None:  # h2c by prior knowledge next to HTTP/1.1 on the plain endpoint
        return with_options(argv, ["--http2-cleartext", "on"])
    cert, key = tls  # an ssl: endpoint offers h2 by ALPN (--http2 is on by default)
    argv[argv.index("--listen") + 1] = ("ssl:%d:interface=%s:privateKey=%s:certKey=%s"
                                        % (port, HOST, key, cert))
    return argv


def _granian_h2(port: int, app: str, tls: TLS, connections: int) -> List[str]:
    options = ["--http", "2"]
    if tls is not None:
        options += ["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1]]
    return with_options(_granian(port, app, False), options)


def _gunicorn_h2(port: int, app: str, tls: TLS, connections: int) -> List[str]:
    # gthread: of gunicorn's workers the one with HTTP/2 that needs no other package (the
    # sync worker falls back to HTTP/1.1; gevent's and the ASGI worker are the others).
    # It holds a thread per HTTP/2 connection for the connection's life, its streams one
    # after the other: with run.py's 4 threads, 6 of h2load's 10 connections would wait,
    # unanswered, for the whole run; so a thread per connection.
    # Prior-knowledge h2c is only for peers of --forwarded-allow-ips: 127.0.0.1 by default.
    argv = _gunicorn(port, app, False)
    argv[argv.index("--threads") + 1] = str(connections)
    options = ["--http-protocols", "h2,h1"]
    if tls is None:
        options += ["--http2-cleartext", "prior-knowledge"]
    else:
        options += ["--certfile", tls[0], "--keyfile", tls[1]]
    return with_options(argv, options)


class H2Peer(NamedTuple):
    build: Callable[[int, str, TLS, int], List[str]]  # (port, app, tls, connections)
    dist: str  # distribution whose version is reported
    label: str


SERVERS = {
    "yimmo": H2Peer(_yimmo_h2, "yimmo-twisted", "yimmo-wsgi (4 threads)"),
    "granian": H2Peer(_granian_h2, "granian", "granian wsgi --http 2 (1 worker)"),
    "gunicorn": H2Peer(_gunicorn_h2, "gunicorn",
                       "gunicorn gthread h2 (1 worker, a thread per connection)"),
}


# --- h2load ------------------------------------------------------------------------------

def url(port: int, tls: TLS) -> str:
    return "%s://%s:%d/" % ("https" if tls else "http", HOST, port)


def parse_h2load(out: str) -> Dict[str, Any]:
    """h2load's summary: req/s, the request counts, the status classes, the protocol."""
    result: Dict[str, Any] = {"rps": None, "protocol": None, "done": 0, "succeeded": 0,
                                 "failed": 0, "errored": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"^finished in [\d.]+\w*, ([\d.]+) req/s", out, re.M)
    if m:
        result["rps"] = float(m.group(1))
    m = re.search(r"^Application protocol: (\S+)", out, re.M)
    if m:
        result["protocol"] = m.group(1)
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out, re.M)
    if m:
        for key, value in zip(("total", "started", "done", "succeeded", "failed", "errored",
                               "timeout"), m.groups()):
            result[key] = int(value)
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if m:
        result["non2xx"] = sum(int(n) for n in m.groups()[1:])
    return result


def percentile(ordered: List[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latencies(lines) -> Dict[str, Any]:
    """p50, p99 and max in ms of the requests of an h2load ``--log-file`` (one line per
    request of the measured duration: start time in µs since the epoch, status code, µs
    until the end of the response; tab-separated), their mean, and how many had no 2xx
    status."""
    times: List[float] = []
    total = 0.0
    non2xx = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        status = int(fields[1])
        if not 200 <= status < 300:
            non2xx += 1
        times.append(int(fields[2]) / 1000.0)
        total += times[-1]
    times.sort()
    if not times:
        return {"logged": 0, "log_non2xx": non2xx, "mean_ms": None, "p50_ms": None,
                "p99_ms": None, "max_ms": None}
    return {"logged": len(times), "log_non2xx": non2xx, "mean_ms": total / len(times),
            "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "max_ms": times[-1]}


def h2load_argv(port: int, tls: TLS, args, log: Optional[str] = None) -> List[str]:
    argv = ["h2load", "-c", str(args.connections), "-m", str(args.streams),
            "-D", str(args.duration), "--warm-up-time", str(args.warmup)]
    if log:
        argv += ["--log-file", log]
    return argv + [url(port, tls)]


def h2_probe(tls: TLS) -> Callable[[int], Optional[str]]:
    """Server.wait_ready's probe: None once one h2load request over HTTP/2 gets a 2xx."""
    def probe(port: int) -> Optional[str]:
        try:
            done = subprocess.run(["h2load", "-n", "1", "-c", "1", url(port, tls)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return "h2load -n 1 took more than 10 s"
        out = done.stdout.decode("utf-8", "replace")
        result = parse_h2load(out)
        if result["succeeded"] == 1 and not result["non2xx"]:
            return None
        return "h2load -n 1: " + (" / ".join(line for line in out.splitlines()[-8:]
                                             if line.strip()) or "no output")
    return probe


def sleep_until(when: float) -> None:
    while True:
        left = when - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)


def run_h2load(server: Server, tls: TLS, args, folder: str) -> Dict[str, Any]:
    """One measured h2load run, its latencies, and the server's CPU over the measured
    seconds (sampled when h2load's warm-up ends and when its duration does)."""
    log = os.path.join(folder, "h2load-%s-%d.log" % (server.name, server.port))
    pid = server.proc.pid  # the group's id is the leader's pid (new session)
    if os.path.exists(log):
        os.unlink(log)  # h2load appends to its log file
    with tempfile.TemporaryFile(dir=folder) as out:
        proc = subprocess.Popen(h2load_argv(server.port, tls, args, log), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            started = time.monotonic()  # h2load's clients connect at once, then warm up
            sleep_until(started + args.warmup)
            cpu, main = cpu_seconds(pid), sum(thread_seconds(pid))
            sleep_until(started + args.warmup + args.duration)
            cpu, main = cpu_seconds(pid) - cpu, sum(thread_seconds(pid)) - main
            proc.wait(H2LOAD_GRACE)
        except subprocess.TimeoutExpired:
            raise RuntimeError("h2load did not end %d s after its duration"
                               % H2LOAD_GRACE) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    result = parse_h2load(text)
    result["h2load"] = text
    result["h2load_status"] = proc.returncode
    try:
        with open(log) as f:
            result.update(latencies(f))
        os.unlink(log)
    except OSError as e:
        result.update(latencies([]))
        result["log_error"] = str(e)
    done = result["done"]
    if result["rps"] and result.get("mean_ms") is not None:
        # Little's law: the streams the server kept busy, of the connections x streams
        # h2load keeps open (fewer: some waited unanswered, as gunicorn's beyond its threads).
        result["in_flight"] = result["rps"] * result["mean_ms"] / 1000.0
    result["cpu_us"] = 1e6 * cpu / done if done else None
    result["main_us"] = 1e6 * main / done if done else None
    return result


def error_count(run: Dict[str, Any]) -> int:
    return sum(int(run.get(k) or 0) for k in ("non2xx", "failed", "errored", "timeout"))


# --- one measurement ---------------------------------------------------------------------

def measure(name: str, scenario: str, tls: TLS, args, folder: str) -> Dict[str, Any]:
    """Start server ``name``, wait until it answers over HTTP/2, run h2load, stop it."""
    app = SCENARIOS[scenario][0]
    port = free_port()
    argv = SERVERS[name].build(port, app, tls, args.connections)
    run: Dict[str, Any] = {"server": name, "scenario": scenario, "port": port,
                              "command": " ".join(argv), "ok": False}
    print("[%s] %s: starting %s" % (scenario, name, run["command"]), file=sys.stderr)
    try:
        server = Server(name, argv, port)
    except OSError as e:
        run["error"] = "cannot start: %s" % e
        return run
    try:
        why = server.wait_ready(probe=h2_probe(tls))
        if why:
            run["error"] = "failed to start: " + why
            return run
        run.update(run_h2load(server, tls, args, folder))
        wanted = "h2" if tls else "h2c"
        if server.proc.poll() is not None:
            run["error"] = "exited with status %s during the run" % server.proc.returncode
        elif run["rps"] is None or run["h2load_status"] != 0:
            run["error"] = "h2load (status %s): %s" % (run["h2load_status"], " / ".join(
                str(run["h2load"]).strip().splitlines()[-5:]))
        elif run["protocol"] != wanted:
            run["error"] = "h2load spoke %s, not %s" % (run["protocol"], wanted)
        else:
            run["ok"] = True
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        run["error"] = str(e)
    finally:
        stop_and_report(server, run)
    if run["ok"]:
        print("[%s] %s: %.0f req/s, %s µs CPU/req, p99 %s ms, errors %d" % (
            scenario, name, run["rps"], number(run.get("cpu_us"), "%.0f"),
            number(run.get("p99_ms"), "%.2f"), error_count(run)), file=sys.stderr)
    else:
        print("[%s] %s: %s" % (scenario, name, run.get("error")), file=sys.stderr)
    if run["server_error_count"]:
        print("[%s] %s: %d suspicious line(s) in its output, first: %s"
              % (scenario, name, run["server_error_count"], run["server_errors"][0][:300]),
              file=sys.stderr)
    return run


def summarize(name: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The medians of a server's rounds; not ok if a round failed or had errors."""
    good = [r for r in runs if r.get("ok")]
    row: Dict[str, Any] = {"server": name, "runs": runs, "rounds": len(runs),
                              "errors": sum(error_count(r) for r in good),
                              "failures": [r.get("error") for r in runs if not r.get("ok")]}
    row["ok"] = bool(good) and not row["failures"] and not row["errors"]
    if good:
        rates = [float(r["rps"]) for r in good]
        row.update(rps=statistics.median(rates), rps_min=min(rates), rps_max=max(rates))
        for key in ("cpu_us", "main_us", "p50_ms", "p99_ms", "in_flight"):
            values = [float(r[key]) for r in good if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
    return row


# --- report ------------------------------------------------------------------------------

def number(value: Optional[object], fmt: str) -> str:
    return "n/a" if value is None else fmt % value


def errors_cell(row: Dict[str, Any]) -> str:
    parts = []
    totals: Dict[str, int] = {}
    for r in row["runs"]:
        if r.get("ok"):
            for key in ("non2xx", "failed", "errored", "timeout"):
                totals[key] = totals.get(key, 0) + int(r.get(key) or 0)
    parts += ["%s %d" % (k, n) for k, n in totals.items() if n]
    failures = row["failures"]
    if failures:
        parts.append("%d of %d rounds failed: %s" % (len(failures), row["rounds"],
                                                     failures[0]))
    return cell(", ".join(parts) or "0")


def ratio_cell(rows: List[Dict[str, Any]], row: Dict[str, Any]) -> str:
    if row["server"] == "yimmo":
        return "—"
    yimmo = next((r for r in rows if r["server"] == "yimmo"), None)
    if not (yimmo and yimmo.get("rps") and row.get("rps")):
        return "n/a"
    return "yimmo/%s = %.2fx" % (row["server"], yimmo["rps"] / row["rps"])


COLUMNS = [("req/s", "---:"), ("range", "---:"), ("server CPU µs/req", "---:"),
           ("of it, yimmo's reactor", "---:"), ("p50 ms", "---:"), ("p99 ms", "---:"),
           ("streams in flight", "---:"), ("errors", "---"), ("yimmo/peer", "---")]


def print_table(scenario: str, rows: List[Dict[str, Any]], notes: List[str]) -> None:
    print("### %s: %s" % (scenario, SCENARIOS[scenario][2]))
    print()
    print("| server | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|" + "|".join(align for _, align in COLUMNS) + "|")
    for row in rows:
        label = SERVERS[str(row["server"])].label
        if not row["ok"]:
            label += " **FAILED**"
        if row.get("rps") is None:
            cells = ["—"] * (len(COLUMNS) - 2) + [errors_cell(row), "n/a"]
        else:
            cells = ["%.0f" % row["rps"], "%.0f-%.0f" % (row["rps_min"], row["rps_max"]),
                     number(row.get("cpu_us"), "%.0f"),
                     number(row.get("main_us"), "%.0f") if row["server"] == "yimmo" else "—",
                     number(row.get("p50_ms"), "%.2f"), number(row.get("p99_ms"), "%.2f"),
                     number(row.get("in_flight"), "%.0f"), errors_cell(row),
                     ratio_cell(rows, row)]
        print("| %s | %s |" % (label, " | ".join(cells)))
    print()
    for row in rows:
        for r in row["runs"]:
            if r.get("server_error_count"):
                notes.append("%s logged %d error-looking line(s) in a round, first: `%s`"
                             % (row["server"], r["server_error_count"],
                                cell(r["server_errors"][0][:200])))
                break
        for r in row["runs"]:
            if (r.get("stop") or {}).get("killed"):
                notes.append("%s did not exit within %.0f s of SIGTERM; killed with SIGKILL"
                             % (row["server"], STOP_TIMEOUT))
                break
    for note in notes:
        print("- note: " + note)
    if notes:
        print()
    sys.stdout.flush()


def target_check(scenario: str, rows: List[Dict[str, Any]]) -> None:
    """The targets' PASS/FAIL lines."""
    print("### target (%s): yimmo ahead of gunicorn and >= %.1fx granian in req/s, "
          "no errors" % (scenario, TARGET_GRANIAN))
    print()
    by = {str(r["server"]): r for r in rows}
    y = by.get("yimmo")
    checks: List[Tuple[str, Optional[bool], str]] = []
    for peer, target in (("gunicorn", TARGET_GUNICORN), ("granian", TARGET_GRANIAN)):
        what = ("req/s ahead of gunicorn" if peer == "gunicorn"
                else "req/s >= %.1fx granian" % target)
        p = by.get(peer)
        if y and p and y.get("rps") and p.get("rps"):
            r = y["rps"] / p["rps"]
            passed = r > target if peer == "gunicorn" else r >= target
            checks.append((what, passed, "%.2fx" % r))
        else:
            checks.append((what, None, "not measured"))
    if y:
        checks.append(("yimmo without errors", bool(y["ok"]), errors_cell(y)))
    print_checks(checks)


def h2load_version() -> str:
    try:
        out = subprocess.run(["h2load", "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        return out.split()[-1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def header(args) -> Dict[str, Any]:
    return {**machine(),
            "versions": {name: version(SERVERS[name].dist) for name in args.servers},
            "h2": version("h2"), "h2load": h2load_version(),
            "h2load_args": " ".join(h2load_argv(0, None, args)[1:-1]),
            "mode": "TLS, h2 by ALPN" if args.tls else "cleartext h2c by prior knowledge"}


def print_header(h: Dict[str, Any], args) -> None:
    print("## yimmo-wsgi HTTP/2 benchmark")
    print()
    print("- date: %s" % h["date"])
    print(machine_line(h))
    print("- servers: " + "; ".join("%s %s" % (n, v) for n, v in h["versions"].items())
          + "; h2 (the Python HTTP/2 library of yimmo and gunicorn) %s" % h["h2"])
    print("- client: h2load %s, `h2load %s`, %s; %d round(s), servers in turns (order reversed "
          "every other round), medians; 127.0.0.1 only"
          % (h["h2load"], h["h2load_args"], h["mode"], args.rounds))
    print()
    sys.stdout.flush()


# --- main --------------------------------------------------------------------------------

def make_certificate(folder: str) -> Tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert path, key path)."""
    cert, key = os.path.join(folder, "site.crt"), os.path.join(folder, "site.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return cert, key


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(SERVERS),
                   type=lambda t: names(t, SERVERS, "server"),
                   help="comma-separated, from %s (default all)" % ",".join(SERVERS))
    scenarios = {name: SCENARIOS[name] for name in H2_SCENARIOS}
    p.add_argument("--scenarios", default="hello",
                   type=lambda t: names(t, scenarios, "scenario"),
                   help="comma-separated, from %s (run.py's; default hello)"
                        % ",".join(H2_SCENARIOS))
    p.add_argument("--duration", type=int, default=10,
                   help="seconds measured per run, h2load -D (default 10)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of warm-up before them, h2load --warm-up-time (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")
    p.add_argument("--connections", type=int, default=10, help="h2load -c (default 10)")
    p.add_argument("--streams", type=int, default=10,
                   help="concurrent streams per connection, h2load -m (default 10)")
    p.add_argument("--tls", action="store_true",
                   help="HTTPS with a self-signed certificate, h2 by ALPN (default: h2c)")
    p.add_argument("--json", metavar="FILE", help="write the raw results here")
    p.add_argument("--h2-alone", action="store_true",
                   help="only time the h2 library's own work per request, in this process "
                        "(no server, no socket)")
    args = p.parse_args(argv)
    if min(args.duration, args.warmup, args.rounds, args.connections, args.streams) < 1:
        p.error("--duration, --warmup, --rounds, --connections and --streams must be at "
                "least 1")
    if not shutil.which("h2load"):
        p.error("h2load not found on PATH (Debian/Ubuntu: apt-get install nghttp2-client)")
    if args.tls and not shutil.which("openssl"):
        p.error("--tls needs openssl on PATH for its certificate")
    return args


def h2_alone(requests: int = 20000, batch: int = 10) -> Dict[str, float]:
    """
    What the h2 library itself costs the server per hello-world request, in this process,
    with no socket and no thread: µs to read a batch of h2load's requests (frames, HPACK,
    state machines), to check their heads (h2's validate_headers, as the server runs it),
    to send the answers (HEADERS and DATA, HPACK), and to read the client's
    WINDOW_UPDATEs for them; configured as the server configures it.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived
    from h2.utilities import HeaderValidationFlags, validate_headers

    from yimmo_twisted.http2 import h2_configuration
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(h2_configuration())
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
               (b":authority", b"127.0.0.1:8000"), (b"user-agent", b"h2load nghttp2/1.52.0")]
    response = [(b":status", b"200"), (b"content-type", b"text/plain"),
                (b"content-length", b"13"), (b"server", b"yimmo-twisted"),
                (b"date", b"Tue, 01 Dec 2026 18:00:00 GMT")]
    flags = HeaderValidationFlags(is_client=False, is_trailer=False,
                                  is_response_header=False, is_push_promise=False)
    spent = {"read": 0.0, "check": 0.0, "send": 0.0, "acks": 0.0}
    clock = time.thread_time  # CPU time: what other processes take is left out
    for _ in range(requests // batch):
        sids = []
        for _ in range(batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, request, end_stream=True)
            sids.append(sid)
        data = client.data_to_send()
        t0 = clock()
        events = server.receive_data(data)
        t1 = clock()
        for event in events:
            headers = getattr(event, "headers", None)
            if headers is not None:
                list(validate_headers(headers, flags))
        t2 = clock()
        for sid in sids:
            server.send_headers(sid, response)
            server.send_data(sid, b"Hello, World!", end_stream=True)
        out = server.data_to_send()
        t3 = clock()
        for event in client.receive_data(out):
            if isinstance(event, DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        acks = client.data_to_send()
        t4 = clock()
        server.receive_data(acks)
        t5 = clock()
        spent["read"] += t1 - t0
        spent["check"] += t2 - t1
        spent["send"] += t3 - t2
        spent["acks"] += t5 - t4
    per = {k: v / requests * 1e6 for k, v in spent.items()}
    per["total"] = sum(per.values())
    return per


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.h2_alone:
        best = min((h2_alone() for _ in range(5)), key=lambda per: per["total"])
        print("h2 alone, µs per hello-world request (the best of 5 runs of 20,000): "
              + ", ".join("%s %.1f" % kv for kv in best.items()))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    h = header(args)
    print_header(h, args)
    absent = [n for n in args.servers if version(SERVERS[n].dist) == "not installed"]
    servers = [n for n in args.servers if n not in absent]
    notes = ["%s not run: not installed (pip install %s)" % (n, SERVERS[n].dist.lower())
             for n in absent]
    results: Dict[str, List[Dict[str, Any]]] = {}
    status = 0
    folder = tempfile.TemporaryDirectory(prefix="bench-h2-")
    try:
        tls = make_certificate(folder.name) if args.tls else None
        for scenario in args.scenarios:
            if lacks_its_app(scenario):
                continue
            runs: Dict[str, List[Dict[str, Any]]] = {n: [] for n in servers}
            for rnd in range(args.rounds):
                order = servers if rnd % 2 == 0 else servers[::-1]
                for name in order:
                    runs[name].append(measure(name, scenario, tls, args, folder.name))
            results[scenario] = [summarize(n, runs[n]) for n in servers]
            print_table(scenario, results[scenario], list(notes))
            target_check(scenario, results[scenario])
            if not all(row["ok"] for row in results[scenario]):
                status = 1  # a round failed, or had errors
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        status = 130
    finally:
        wrap_up(folder, args.json, {"meta": h, "results": results})
    return status


if __name__ == "__main__":
    sys.exit(main())
