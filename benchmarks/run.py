#!/usr/bin/env python3
"""Compare yimmo-wsgi with other WSGI servers under wrk, on 127.0.0.1 only.

    python benchmarks/run.py                 # every installed server, every scenario, 10 s each
    python benchmarks/run.py --quick         # 3 s each
    python benchmarks/run.py --servers yimmo,gunicorn --scenarios hello --json out.json

For each scenario, each server is started in turn (one process, same app from
benchmarks/apps.py, a free 127.0.0.1 port), waited for until it answers, warmed up for
about a second, measured with ``wrk -t1 -c50 -dNs --latency`` and stopped (SIGTERM to its
process group, SIGKILL after a timeout).  Every server is stopped on errors and on Ctrl-C
too.  Results go to stdout as Markdown tables (req/s, the server's CPU time per request,
p99, errors, ratios to yimmo and to the ceiling); progress goes to stderr.

Besides the WSGI servers, two bounds: "ceiling" (ceiling.py: a bare Twisted protocol with
a canned hello answer, the most any server on this reactor can do) and the C yimmo-wsgi,
where ../shared/yimmo-c/build.sh has built it.  Servers not installed are noted, not run.

Two scenarios serve a 200 MB file (made in a temporary folder for the run, removed after
it) through wsgi.file_wrapper: "download" times whole downloads by a client of this
script that reads as fast as it can; "slow-downloads" measures /hello with wrk, alone and
while 20 clients of this script download the file at 64 KiB/s each.  "memory" opens
10,000 idle keep-alive connections and reports the server's RSS growth per connection.

Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from importlib import metadata
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # repository root: servers run there, benchmarks.apps importable
HOST = "127.0.0.1"

START_TIMEOUT = 30.0  # seconds for a server to answer its first request
STOP_TIMEOUT = 10.0   # seconds between SIGTERM and SIGKILL
WARMUP = 1            # seconds of wrk before the measurement
STDERR_LINES = 5      # lines of a failed server's output shown in the table


# --- scenarios ---------------------------------------------------------------------------

SCENARIOS = {
    # name: (application: NAME in benchmarks/apps.py or MODULE:NAME in benchmarks/,
    #        wrk Lua script or None, description)
    "hello": ("hello", None, "GET, 14-byte body with Content-Length"),
    "10k": ("payload_10k", None, "GET, 10 KiB body with Content-Length"),
    "upload": ("upload_echo", "upload.lua",
               "POST of 1 MiB, the app reads it all, answers its length"),
    "upload-10k": ("upload_echo", "upload_10k.lua",
                   "POST of 10 KiB, the app reads it all, answers its length"),
    "cpu": ("cpu", None, "GET, ~2 ms of pure-Python CPU work per request (GIL-bound)"),
    "flask": ("flask_app:app", None, "GET of a Flask hello route"),
    "django": ("django_app:application", None,
               "GET of a minimal Django hello (one URL, CommonMiddleware)"),
    # Measured by clients of this script (see CLIENTS), not by wrk alone.
    "download": ("download", None, "GET of a 200 MB file through wsgi.file_wrapper, "
                 "read as fast as the client can"),
    "slow-downloads": ("download", None, "GET /hello under wrk, alone and while 20 clients "
                       "download the 200 MB file at 64 KiB/s each"),
    "memory": ("hello", None, "RSS per idle keep-alive connection: 10,000 connections, one "
               "request each, left open"),
}
# The framework a scenario's app needs (distribution name): the scenario is skipped without.
SCENARIO_NEEDS = {"flask": "Flask", "django": "Django"}
FILE_SCENARIOS = ("download", "slow-downloads")
FILE_SIZE = 200 * 1000 * 1000
SLOW_RATE = 64 * 1024  # bytes per second for each slow downloader


# --- servers -----------------------------------------------------------------------------

def _script(name: str) -> str:
    """A console script of the running Python if it has one (same interpreter), else PATH's."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(local, os.X_OK):
        return local
    return shutil.which(name) or name


# Builders: (port, app, idle) -> argv.  ``idle`` is the memory scenario's: the server keeps
# an idle keep-alive connection open for IDLE_TIMEOUT seconds at least, and takes as many
# connections as that scenario opens, where its defaults would close or refuse them first.
IDLE_TIMEOUT = 60


def target(app: str) -> str:
    """The ``module:name`` of an application of SCENARIOS, importable from the repository root."""
    return "benchmarks." + (app if ":" in app else "apps:" + app)


def _yimmo(port: int, app: str, idle: bool, procs: int = 1) -> List[str]:
    argv = [sys.executable, "-m", "yimmo_twisted", "--listen", "tcp:%d:interface=%s" % (port, HOST)]
    if procs > 1:
        argv += ["--no-proc", str(procs)]
    if idle:  # its default idle timeout is 5 s
        argv += ["--idle-timeout", str(IDLE_TIMEOUT)]
    return argv + [target(app)]


def _ceiling(port: int, app: str, idle: bool) -> List[str]:
    return [sys.executable, os.path.join(HERE, "ceiling.py"), str(port)]


def _gunicorn(port: int, app: str, idle: bool, workers: int = 1) -> List[str]:
    argv = [_script("gunicorn"), "-k", "gthread", "-w", str(workers), "--threads", "4",
            "-b", "%s:%d" % (HOST, port)]
    if idle:  # its keep-alive is 2 s, and a worker takes 1000 connections at most
        argv += ["--keep-alive", str(IDLE_TIMEOUT), "--worker-connections", "20000"]
    return argv + [target(app)]


def _granian(port: int, app: str, idle: bool, workers: int = 1) -> List[str]:
    argv = [_script("granian"), "--interface", "wsgi", "--workers", str(workers),
            "--host", HOST, "--port", str(port)]
    if idle:  # its backpressure (backlog/workers, 1024) caps the connections it serves
        argv += ["--backpressure", "20000"]
    return argv + [target(app)]


def _twisted(port: int, app: str, idle: bool) -> List[str]:
    return [_script("twist"), "web", "--listen", "tcp:%d:interface=%s" % (port, HOST),
            "--wsgi", target(app).replace(":", ".")]


def _waitress(port: int, app: str, idle: bool) -> List[str]:
    argv = [_script("waitress-serve"), "--listen=%s:%d" % (HOST, port), "--threads=4"]
    if idle:  # it takes 100 connections at most, and select() fails above fd 1024
        argv += ["--connection-limit=20000", "--channel-timeout=%d" % IDLE_TIMEOUT,
                 "--asyncore-use-poll"]
    return argv + [target(app)]


def _bjoern(port: int, app: str, idle: bool) -> List[str]:
    return [sys.executable, os.path.join(HERE, "bjoern_server.py"), str(port), target(app)]


def _uwsgi(port: int, app: str, idle: bool) -> List[str]:
    # --http11-socket: uWSGI 2.0's --http-socket closes every connection after its answer,
    # --http-keepalive or not (that option is its HTTP router's), which wrk counts as one
    # read error per request.
    argv = [_script("uwsgi"), "--http11-socket", "%s:%d" % (HOST, port),
            "--master", "--processes", "1", "--threads", "4", "--module", target(app),
            "--need-app",          # exit, not serve 500s, when the app does not import
            "--disable-logging",   # no access line per request (gunicorn, granian log none)
            "--die-on-term"]       # uWSGI 2.0 reloads on SIGTERM without it
    if sys.prefix != sys.base_prefix:  # the embedded Python finds this venv's packages
        argv += ["--virtualenv", sys.prefix]
    return argv


def yimmo_c_runner() -> Optional[str]:
    """The run.sh of a yimmo-wsgi (C) build, or None.

    ``build.sh OUT`` (in ../shared/yimmo-c) leaves OUT/bin/yimmo-wsgi and OUT/run.sh, which
    sets the library path and the embedded Python's home before exec'ing the binary.  Where:
    $YIMMO_C (the binary, or its run.sh), else OUT = ../shared/yimmo-c/build beside this
    repository, else ~/.cache/yimmo-c (the yimmo-c README's example).
    """
    if os.environ.get("YIMMO_C"):
        candidates = [os.environ["YIMMO_C"]]
    else:
        candidates = [os.path.join(ROOT, "..", "shared", "yimmo-c", "build", "bin", "yimmo-wsgi"),
                      os.path.expanduser(os.path.join("~", ".cache", "yimmo-c", "bin",
                                                      "yimmo-wsgi"))]
    for path in candidates:
        if os.path.basename(path) == "run.sh":
            runner = path
        else:
            runner = os.path.join(os.path.dirname(os.path.dirname(path)), "run.sh")
        if os.access(runner, os.X_OK):
            return os.path.abspath(runner)
    return None


def _yimmo_c(port: int, app: str, idle: bool, threads: int) -> List[str]:
    # -P binds every interface (it has no address option); wrk still talks to 127.0.0.1.
    return [yimmo_c_runner() or "yimmo-wsgi", "-P", str(port), "-t", str(threads), "-p", "1",
            target(app)]


def _yimmo_c_env(idle: bool) -> Dict[str, str]:
    # run.sh adds the site-packages of PATH's python3 (flask, django); name ours instead.
    env = {"YIMMO_C_SITE": sysconfig.get_paths()["purelib"]}
    if idle:  # the C server's idle timeout (libyimmo's default: 5 s)
        env["YIMMO_SERVER_IDLE_TIMEOUT"] = str(IDLE_TIMEOUT)
    return env


class Peer(NamedTuple):
    build: Callable[[int, str, bool], List[str]]
    dist: Optional[str]  # distribution whose version is reported (None: yimmo-c)
    label: str
    env: Optional[Callable[[bool], Dict[str, str]]] = None  # (idle) -> extra environment
    serves: Optional[Tuple[str, ...]] = None  # scenarios it can serve (None: all)


SERVERS = {
    "yimmo": Peer(_yimmo, "yimmo-twisted", "yimmo-wsgi (4 threads)"),
    # The reactor's upper bound; its canned answer is the hello app's, so hello and memory.
    "ceiling": Peer(_ceiling, "Twisted", "ceiling: bare Twisted protocol, canned response",
                    serves=("hello", "memory")),
    "yimmo-c1": Peer(lambda port, app, idle: _yimmo_c(port, app, idle, 1), None,
                     "yimmo-wsgi C (-t 1)", env=_yimmo_c_env),
    "yimmo-c4": Peer(lambda port, app, idle: _yimmo_c(port, app, idle, 4), None,
                     "yimmo-wsgi C (-t 4)", env=_yimmo_c_env),
    "gunicorn": Peer(_gunicorn, "gunicorn", "gunicorn gthread (1 worker, 4 threads)"),
    "granian": Peer(_granian, "granian", "granian wsgi (1 worker)"),
    "bjoern": Peer(_bjoern, "bjoern", "bjoern (1 thread)"),
    "uwsgi": Peer(_uwsgi, "uWSGI", "uWSGI (1 process, 4 threads)"),
    "twisted": Peer(_twisted, "Twisted", "twisted.web.wsgi (twist web)"),
    "waitress": Peer(_waitress, "waitress", "waitress (4 threads)"),
    # Two processes each (not run unless named: --servers yimmo2,gunicorn2,granian2).
    "yimmo2": Peer(lambda port, app, idle: _yimmo(port, app, idle, procs=2), "yimmo-twisted",
                   "yimmo-wsgi -p 2 (2 processes x 4 threads)"),
    "gunicorn2": Peer(lambda port, app, idle: _gunicorn(port, app, idle, 2), "gunicorn",
                      "gunicorn gthread (2 workers, 4 threads)"),
    "granian2": Peer(lambda port, app, idle: _granian(port, app, idle, 2), "granian",
                     "granian wsgi (2 workers)"),
}
DEFAULT_SERVERS = [name for name in SERVERS if not name.endswith("2")]


def missing(name: str) -> Optional[str]:
    """Why server ``name`` cannot run here (not installed, not built), or None."""
    dist = SERVERS[name].dist
    if dist is None:
        if yimmo_c_runner() is None:
            return ("not built (bash ../shared/yimmo-c/build.sh ~/.cache/yimmo-c, or "
                    "$YIMMO_C naming its bin/yimmo-wsgi)")
        return None
    if version(dist) == "not installed":
        return "not installed (pip install %s)" % dist.lower()
    return None


# --- processes ---------------------------------------------------------------------------

class Server:
    """One server process, in its own process group so that its workers stop with it."""

    live: List["Server"] = []  # every started server not yet stopped

    def __init__(self, name: str, argv: List[str], port: int,
                 extra_env: Optional[Dict[str, str]] = None):
        self.name, self.argv, self.port = name, argv, port
        self.log = tempfile.TemporaryFile(prefix="bench-%s-" % name)
        env = dict(os.environ, **(extra_env or {}))
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        Server.live.append(self)
        self.stop_info: Dict[str, object] = {}

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def head(self, lines: int = STDERR_LINES) -> str:
        text = [line for line in self.output().splitlines() if line.strip()]
        return " / ".join(text[:lines]) or "(no output)"

    def wait_ready(self, path: str = "/",
                   probe: Optional[Callable[[int], Optional[str]]] = None) -> Optional[str]:
        """None once the server answers a request with 2xx, else why it did not.
        ``probe(port)`` makes that request (None: answered with 2xx, else why not); the
        default is an HTTP/1.1 GET of ``path``."""
        probe = probe or (lambda port: http_get(port, path))
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited with status %s: %s" % (self.proc.returncode, self.head())
            why = probe(self.port)
            if why is None:
                return None
            last = why
            time.sleep(0.1)
        return "not ready after %.0f s (%s): %s" % (START_TIMEOUT, last, self.head())

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after STOP_TIMEOUT; idempotent."""
        if self not in Server.live:
            return
        started = time.monotonic()
        killed = False
        try:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                killed = True
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        finally:
            # Workers left behind by a leader that exited (group still alive): kill them.
            self._signal(signal.SIGKILL)
            Server.live.remove(self)
        self.stop_info = {"exit_status": self.proc.returncode, "killed": killed,
                          "stop_seconds": round(time.monotonic() - started, 2)}

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the group id is the leader's pid (new session)
        except (ProcessLookupError, PermissionError):
            pass

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls.live):
            try:
                server.stop()
            except Exception as e:  # keep stopping the others
                print("error stopping %s: %s" % (server.name, e), file=sys.stderr)


def http_get(port: int, path: str = "/") -> Optional[str]:
    """None if an HTTP/1.1 GET of ``path`` is answered with 2xx, else why it was not."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if 200 <= resp.status < 300:
            return None
        return "answered %d %s" % (resp.status, resp.reason)
    except (OSError, http.client.HTTPException) as e:
        return "%s: %s" % (type(e).__name__, e)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- wrk ---------------------------------------------------------------------------------

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError("unknown wrk duration %r" % text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out: str) -> Dict[str, object]:
    result: Dict[str, object] = {"rps": None, "p99_ms": None, "requests": None,
                                 "non2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        result["rps"] = float(m.group(1))
    m = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if m:
        result["p99_ms"] = to_ms(m.group(1))
    m = re.search(r"^\s*(\d+) requests in", out, re.M)
    if m:
        result["requests"] = int(m.group(1))
        if not result["requests"]:
            result["p99_ms"] = None  # wrk prints 0.00us: no request was answered
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        result["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups()):
            result[key] = int(value)
    return result


def wrk(port: int, script: Optional[str], seconds: int, args) -> str:
    argv = ["wrk", "-t%d" % args.threads_wrk, "-c%d" % args.connections, "-d%ds" % seconds,
            "--latency"]
    if script:
        argv += ["-s", os.path.join(HERE, script)]
    argv.append("http://%s:%d/" % (HOST, port))
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=seconds + 60, check=False)
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        raise RuntimeError("wrk exited with status %d: %s" % (done.returncode, out.strip()))
    return out


# --- one measurement ---------------------------------------------------------------------

# Lines of a server's output worth a look (kept in the JSON; counted on stderr).
ERROR_PATTERNS = re.compile(r'Traceback|Unhandled|CRITICAL|\bcritical\b|ERROR|\berror\b|'
                            r'Exception|"isError": 1')


def stop_and_report(server: "Server", row: Dict[str, object]) -> str:
    """Stop ``server``; how it stopped and the suspicious lines it logged go in ``row``.
    Its whole output."""
    server.stop()
    output = server.output()
    row["stop"] = server.stop_info
    suspicious = [line for line in output.splitlines() if ERROR_PATTERNS.search(line)]
    row["server_errors"] = suspicious[:20]
    row["server_error_count"] = len(suspicious)
    server.log.close()
    return output


def measure(server_name: str, scenario: str, args) -> Dict[str, object]:
    peer = SERVERS[server_name]
    app, script, _ = SCENARIOS[scenario]
    port = free_port()
    idle = scenario == "memory"
    argv = peer.build(port, app, idle)
    env = peer.env(idle) if peer.env else {}
    row: Dict[str, object] = {"server": server_name, "scenario": scenario, "app": app,
                              "port": port, "command": " ".join(argv), "env": env, "ok": False}
    print("[%s] %s: starting %s" % (scenario, server_name, row["command"]), file=sys.stderr)
    try:
        server = Server(server_name, argv, port, env)
    except OSError as e:
        row["error"] = "cannot start: %s" % e
        return row
    try:
        why = server.wait_ready()
        if why:
            row["error"] = "failed to start: " + why
            return row
        CLIENTS.get(scenario, run_wrk)(server, script, args, row)
        if server.proc.poll() is not None:
            row["crashed"] = "exited with status %s during the run" % server.proc.returncode
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        row["error"] = str(e)
    finally:
        row["server_output_lines"] = len(stop_and_report(server, row).splitlines())
    if row["server_error_count"]:
        print("[%s] %s: %d suspicious line(s) in its output, first: %s"
              % (scenario, server_name, row["server_error_count"], row["server_errors"][0][:300]),
              file=sys.stderr)
    if row.get("ok"):
        print("[%s] %s: %s" % (scenario, server_name, SUMMARIES.get(scenario, wrk_summary)(row)),
              file=sys.stderr)
    else:
        print("[%s] %s: %s" % (scenario, server_name, row.get("error")), file=sys.stderr)
    return row


def measured_wrk(server: Server, script: Optional[str], args) -> Dict[str, object]:
    """wrk for ``args.duration`` seconds, parsed, with its output and the server's CPU time
    per request (user + system of its process group, so workers count too), and that of
    the group leader's main thread alone (a one-process yimmo's reactor: the rest is its
    workers')."""
    pid = server.proc.pid  # the group's id is the leader's pid (new session)
    cpu, main, machine = cpu_seconds(pid), thread_seconds(pid), machine_ticks()
    out = wrk(server.port, script, args.duration, args)
    cpu = cpu_seconds(pid) - cpu
    main_user, main_system = (b - a for a, b in zip(main, thread_seconds(pid)))
    busy, idle = (after - before for after, before in zip(machine_ticks(), machine))
    result = parse_wrk(out)
    result["wrk"] = out
    requests = result["requests"]
    result["cpu_us"] = 1e6 * cpu / requests if requests else None
    result["main_us"] = 1e6 * (main_user + main_system) / requests if requests else None
    # Of the main thread's: the kernel's (its syscalls), in the JSON and the progress line.
    result["main_system_us"] = 1e6 * main_system / requests if requests else None
    # The cores left idle over the run (wrk's and everything else's time counts as busy):
    # a server that leaves some while its clients wait is bound by something else than
    # the machine (its own threads' serialisation, a lock, a timer).
    result["idle_cores"] = os.cpu_count() * idle / (busy + idle) if busy + idle else None
    return result


def machine_ticks() -> Tuple[int, int]:
    """The machine's busy and idle ticks so far, all cores (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks[:8]) - idle, idle  # user nice system idle iowait irq softirq steal


def run_wrk(server: Server, script: Optional[str], args, row: Dict[str, object]) -> None:
    """A warm-up, then wrk for ``args.duration`` seconds."""
    wrk(server.port, script, WARMUP, args)  # warm-up, discarded
    row.update(measured_wrk(server, script, args))
    row["ok"] = row.get("rps") is not None
    if not row["ok"]:
        row["error"] = "wrk output not understood"


def p99_text(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.2f" % value


def cpu_text(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.0f" % value


def wrk_summary(row: Dict[str, object]) -> str:
    return ("%.0f req/s, %s us CPU/req (main thread %s, of it system %s), p99 %.2f ms, "
            "errors %s" % (row["rps"], cpu_text(row.get("cpu_us")),
                           cpu_text(row.get("main_us")), cpu_text(row.get("main_system_us")),
                           row["p99_ms"] or 0.0, errors_text(row)))


# --- the file scenarios: clients of this script ------------------------------------------

DOWNLOAD = b"GET /download HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def make_file(folder: str) -> str:
    """FILE_SIZE random bytes in ``folder``, on disk and in the page cache."""
    path = os.path.join(folder, "download.bin")
    with open(path, "wb") as f:
        for _ in range(FILE_SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(FILE_SIZE % (1 << 20)))
        f.flush()
        os.fsync(f.fileno())  # no write-back during the measurements
    return path


def _read_head(sock: socket.socket) -> bytes:
    """The response head (checked: 200 with a Content-Length of FILE_SIZE); the body
    bytes read with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise RuntimeError("connection closed before the response head")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    if not lines[0].startswith(b"http/1.1 200") or (
            b"content-length: %d" % FILE_SIZE) not in lines:
        raise RuntimeError("unexpected response head: %r" % head[:300])
    return rest


def download(port: int) -> float:
    """Seconds for one GET /download, read to its end as fast as this client can."""
    view = memoryview(bytearray(1 << 20))
    with socket.create_connection((HOST, port), timeout=30) as sock:
        started = time.perf_counter()
        sock.sendall(DOWNLOAD)
        got = len(_read_head(sock))
        while got < FILE_SIZE:
            n = sock.recv_into(view)
            if not n:
                raise RuntimeError("connection closed after %d of %d bytes" % (got, FILE_SIZE))
            got += n
        return time.perf_counter() - started


def stat_fields(path: str) -> Optional[List[str]]:
    """The fields of a /proc stat file after the command name; None once it is gone."""
    try:
        with open(path) as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_ticks(fields: List[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime


def group_stats(group: int) -> Dict[str, List[str]]:
    """The /proc/PID/stat fields after the command name of each process in ``group``."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields("/proc/%s/stat" % name)
            if fields is not None and int(fields[2]) == group:  # the process group
                stats[name] = fields
    return stats


def cpu_seconds(group: int) -> float:
    """User and system CPU time so far of the processes in process group ``group``."""
    ticks = sum(cpu_ticks(fields) for fields in group_stats(group).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def thread_seconds(pid: int) -> Tuple[float, float]:
    """User and system CPU time so far of the main thread of process ``pid``."""
    fields = stat_fields("/proc/%d/task/%d/stat" % (pid, pid))
    if fields is None:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def rss_kib(group: int) -> int:
    """The resident set size (VmRSS) of the processes in ``group``, summed, in KiB."""
    total = 0
    for pid in group_stats(group):
        try:
            with open("/proc/%s/status" % pid) as f:
                total += next((int(line.split()[1]) for line in f
                               if line.startswith("VmRSS:")), 0)
        except OSError:
            pass  # gone meanwhile
    return total


def run_download(server: Server, script: Optional[str], args, row: Dict[str, object]) -> None:
    """``args.downloads`` downloads after a warm-up one: the best, the median, and the
    server's CPU time per download."""
    download(server.port)
    cpu = cpu_seconds(server.proc.pid)  # the group's id is the leader's pid (new session)
    times = [download(server.port) for _ in range(args.downloads)]
    cpu = cpu_seconds(server.proc.pid) - cpu
    row.update(seconds=min(times), median=sorted(times)[len(times) // 2], times=times,
               cpu_ms=1000 * cpu / len(times), ok=True)


def download_summary(row: Dict[str, object]) -> str:
    return "best %.3f s, median %.3f s, server CPU %.0f ms per download" % (
        row["seconds"], row["median"], row["cpu_ms"])


class SlowDownloader(threading.Thread):
    """One client reading GET /download at SLOW_RATE until ``stop`` is set."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.received = 0  # body bytes
        self.error: Optional[str] = None

    def run(self) -> None:
        try:
            with socket.socket() as sock:
                # A small receive buffer, as on a slow link: the server's sends wait.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.settimeout(30)
                sock.connect((HOST, self.port))
                sock.sendall(DOWNLOAD)
                self.received = len(_read_head(sock))
                started = time.monotonic()
                sock.settimeout(0.5)
                while not self.stop.is_set():
                    allowed = int((time.monotonic() - started) * SLOW_RATE) - self.received
                    if allowed < 16384:
                        self.stop.wait((16384 - allowed) / SLOW_RATE)
                        continue
                    try:
                        data = sock.recv(min(allowed, 65536))
                    except socket.timeout:
                        continue
                    if not data:
                        raise RuntimeError("closed after %d bytes" % self.received)
                    self.received += len(data)
        except (OSError, RuntimeError) as e:
            if not self.stop.is_set():
                self.error = str(e)


def run_slow_downloads(server: Server, script: Optional[str], args,
                       row: Dict[str, object]) -> None:
    """wrk on /hello alone, then with ``args.slow_clients`` slow downloads under way."""
    wrk(server.port, None, WARMUP, args)  # warm-up, discarded
    row["alone"] = measured_wrk(server, None, args)
    stop = threading.Event()
    clients = [SlowDownloader(server.port, stop) for _ in range(args.slow_clients)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)  # connected and answered, the socket buffers full
        out = wrk(server.port, None, args.duration, args)
    finally:
        stop.set()
        for client in clients:
            client.join(5)
    row["wrk"] = out
    row.update(parse_wrk(out))
    # Served: clients that got at least a second's worth (a server with fewer threads
    # than clients leaves the others waiting for a thread).
    row["served"] = sum(1 for c in clients if c.received >= SLOW_RATE)
    row["slow_clients"] = len(clients)
    row["client_errors"] = [c.error for c in clients if c.error]
    row["ok"] = row.get("rps") is not None and row["alone"].get("rps") is not None
    if not row["ok"]:
        row["error"] = "wrk output not understood"


def slow_summary(row: Dict[str, object]) -> str:
    alone = row["alone"]
    return ("/hello %.0f req/s, p99 %s ms alone; %.0f req/s, p99 %s ms with %d of %d slow "
            "downloads served, errors %s" % (
                alone["rps"], p99_text(alone.get("p99_ms")), row["rps"],
                p99_text(row.get("p99_ms")), row["served"], row["slow_clients"],
                errors_text(row)))


# --- the memory scenario: idle keep-alive connections --------------------------------------

HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
IN_FLIGHT = 32   # connections opened but not yet answered: below the smallest backlog (50)
STALL = 3.0      # seconds without a new answer before the client stops opening
SETUP_LIMIT = 30.0  # seconds for all of them: well within IDLE_TIMEOUT, so none times out
SETTLE = 1.0     # seconds between the last answer and the second RSS reading


def _answered(data: bytes) -> Optional[bool]:
    """True once ``data`` holds a whole 200 response, False for another status, None
    while incomplete (every app of the scenario sends a Content-Length)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    if not head.startswith(b"HTTP/1.1 200"):
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return None if m and len(body) < int(m.group(1)) else True


def open_idle(port: int, count: int) -> Tuple[List[socket.socket], List[str]]:
    """Open ``count`` connections, send one request on each and read its answer, at most
    IN_FLIGHT unanswered at a time (a fast server sets 10,000 up in a second or two); stop
    after STALL seconds without an answer or SETUP_LIMIT in all.  The answered
    connections, left open, and the errors of the others."""
    sel = selectors.DefaultSelector()
    pending: Dict[socket.socket, bytes] = {}
    idle: List[socket.socket] = []
    errors: List[str] = []
    opened = 0
    last = started = time.monotonic()
    try:
        while (len(idle) + len(errors) < count and time.monotonic() - last < STALL
               and time.monotonic() - started < SETUP_LIMIT):
            while opened < count and len(pending) < IN_FLIGHT:
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((HOST, port))
                sel.register(sock, selectors.EVENT_WRITE)
                pending[sock] = b""
                opened += 1
            for key, events in sel.select(0.2):
                sock = key.fileobj
                try:
                    if events & selectors.EVENT_WRITE:  # connected (or refused)
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                        sock.sendall(HELLO_REQUEST)  # a few bytes: the buffer takes them
                        sel.modify(sock, selectors.EVENT_READ)
                        continue
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed before the answer")
                    pending[sock] += data
                    done = _answered(pending[sock])
                    if done is None:
                        continue
                    if not done:
                        raise OSError("answered %r" % pending[sock][:40])
                    idle.append(sock)
                    last = time.monotonic()
                except OSError as e:
                    errors.append(str(e))
                    sock.close()
                sel.unregister(sock)
                del pending[sock]
    finally:
        for sock in pending:  # never answered
            sel.unregister(sock)
            sock.close()
        sel.close()
    return idle, errors


def still_open(socks: List[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (no EOF, no reset to read)."""
    alive = 0
    for sock in socks:
        try:
            alive += sock.recv(1, socket.MSG_PEEK) != b""  # b"": closed by the server
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE (the servers inherit it) to ``wanted``, or as
    far as the hard limit allows; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:  # beyond the hard limit too, where allowed (root)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_memory(server: Server, script: Optional[str], args, row: Dict[str, object]) -> None:
    """RSS of the server's processes before and after ``args.idle_connections`` idle
    keep-alive connections: KiB per connection."""
    # A warm-up batch first, so that first-use costs (imports, thread starts, buffers)
    # fall before the first reading, not on the connections measured.
    warm, _ = open_idle(server.port, min(IN_FLIGHT * 4, args.idle_connections))
    for sock in warm:
        sock.close()
    time.sleep(SETTLE)
    before = rss_kib(server.proc.pid)
    started = time.monotonic()
    idle, errors = open_idle(server.port, args.idle_connections)
    try:
        row["setup_s"] = time.monotonic() - started
        time.sleep(SETTLE)
        if server.proc.poll() is not None:  # its RSS would read as 0
            raise RuntimeError("exited with status %s while the connections were opened: %s"
                               % (server.proc.returncode, server.head()))
        after = rss_kib(server.proc.pid)
        row.update(rss_before_kib=before, rss_after_kib=after, answered=len(idle),
                   wanted=args.idle_connections, conn_errors=errors[:5],
                   conn_error_count=len(errors), still_open=still_open(idle),
                   kib_per_conn=(after - before) / len(idle) if idle else None, ok=True)
    finally:
        for sock in idle:
            sock.close()


def memory_summary(row: Dict[str, object]) -> str:
    return ("%d of %d connections answered in %.1f s, %d still open; RSS %.1f -> %.1f MiB, "
            "%s KiB per connection" % (
                row["answered"], row["wanted"], row["setup_s"], row["still_open"],
                row["rss_before_kib"] / 1024, row["rss_after_kib"] / 1024,
                kib_text(row.get("kib_per_conn"))))


def kib_text(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.1f" % value


CLIENTS = {"download": run_download, "slow-downloads": run_slow_downloads,
           "memory": run_memory}
SUMMARIES = {"download": download_summary, "slow-downloads": slow_summary,
             "memory": memory_summary}


def errors_text(row: Dict[str, object]) -> str:
    parts = ["%s %d" % (k, row[k]) for k in ("non2xx", "connect", "read", "write", "timeout")
             if row.get(k)]
    if row.get("crashed"):
        parts.append("CRASHED: " + str(row["crashed"]))
    return ", ".join(parts) or "0"


# --- report ------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def server_version(name: str) -> str:
    dist = SERVERS[name].dist
    if dist is not None:
        return version(dist)
    runner = yimmo_c_runner()  # build.sh writes the commits it built in BUILD-INFO.txt
    try:
        with open(os.path.join(os.path.dirname(runner or ""), "BUILD-INFO.txt")) as f:
            commit = next(line.split()[1][:7] for line in f if line.startswith("libyimmo"))
        return "C, libyimmo %s + fixes.patch" % commit
    except (OSError, StopIteration, IndexError):
        return "C" if runner else "not built"


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every number."""
    try:
        return " ".join("%.2f" % x for x in os.getloadavg())
    except OSError:
        return "unknown"


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        return out.splitlines()[0].split(" Copyright")[0].replace("wrk ", "", 1).strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> Dict[str, object]:
    """The date and what the numbers depend on: CPU, cores, kernel, Python, load average."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.system() + " " + platform.release(),
        "python": platform.python_implementation() + " " + platform.python_version(),
        "loadavg": load_average(),
    }


def machine_line(h: Dict[str, object]) -> str:
    return ("- machine: %s, nproc %s, %s, %s; load average at start %s"
            % (h["cpu"], h["nproc"], h["kernel"], h["python"], h["loadavg"]))


def header(args) -> Dict[str, object]:
    return {
        **machine(),
        "versions": {name: server_version(name) for name in args.servers},
        "wrk": wrk_version(),
        "wrk_args": "-t%d -c%d -d%ds --latency" % (args.threads_wrk, args.connections,
                                                    args.duration),
    }


def print_header(h: Dict[str, object]) -> None:
    print("## yimmo-wsgi comparison benchmark")
    print()
    print("- date: %s" % h["date"])
    print(machine_line(h))
    print("- servers: " + "; ".join("%s %s" % (n, v) for n, v in h["versions"].items()))
    print("- client: wrk %s, `wrk %s`, after a %d s warm-up; one server process at a time, "
          "127.0.0.1 only" % (h["wrk"], h["wrk_args"], WARMUP))
    print()
    sys.stdout.flush()


def ratio(rows: List[Dict[str, object]], row: Dict[str, object]) -> str:
    """yimmo's req/s over this row's, yimmo with as many processes (yimmo2 for *2 rows)."""
    own = "yimmo2" if row["server"].endswith("2") else "yimmo"
    if row["server"] == own:
        return "—"
    yimmo = next((r for r in rows if r["server"] == own), None)
    if not (yimmo and yimmo.get("ok") and row.get("ok") and row["rps"]):
        return "n/a"
    return "%s/%s = %.2fx" % (own, row["server"], yimmo["rps"] / row["rps"])


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def print_table(scenario: str, rows: List[Dict[str, object]], skipped: List[str]) -> None:
    print("### %s: %s" % (scenario, SCENARIOS[scenario][2]))
    print()
    columns, cells = TABLES.get(scenario, (WRK_COLUMNS, wrk_cells))
    print("| server | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "|".join(align for _, align in columns) + "|")
    for row in rows:
        label = SERVERS[row["server"]].label
        if row.get("ok"):
            print("| %s | %s |" % (label, " | ".join(cells(rows, row))))
        else:
            print("| %s | FAILED | %s |" % (label, " | ".join(
                [cell(row.get("error", "?"))] + ["—"] * (len(columns) - 2))))
    print()
    notes = [note for row in rows for note in row_notes(row)] + skipped
    for note in notes:
        print("- note: " + note)
    if notes:
        print()
    sys.stdout.flush()


WRK_COLUMNS = [("req/s", "---:"), ("server CPU µs/req", "---:"),
               ("of it, main thread", "---:"), ("cores idle", "---:"), ("p99 ms", "---:"),
               ("errors", "---"), ("yimmo/peer", "---"), ("server/ceiling", "---")]


def ceiling_ratio(rows: List[Dict[str, object]], row: Dict[str, object]) -> str:
    """This row's req/s over the ceiling's (yimmo's row: yimmo/ceiling): how much of the
    reactor's bound a server reaches; — where the ceiling does not serve the scenario."""
    ceiling = next((r for r in rows if r["server"] == "ceiling"), None)
    if ceiling is None or row["server"] == "ceiling":
        return "—"
    if not (ceiling.get("ok") and ceiling["rps"] and row.get("ok")):
        return "n/a"
    return "%s/ceiling = %.2fx" % (row["server"], row["rps"] / ceiling["rps"])


def wrk_cells(rows: List[Dict[str, object]], row: Dict[str, object]) -> List[str]:
    idle = row.get("idle_cores")
    return ["%.0f" % row["rps"], cpu_text(row.get("cpu_us")), cpu_text(row.get("main_us")),
            "n/a" if idle is None else "%.2f" % idle, p99_text(row.get("p99_ms")),
            cell(errors_text(row)), ratio(rows, row), ceiling_ratio(rows, row)]


DOWNLOAD_COLUMNS = [("best s", "---:"), ("median s", "---:"), ("MB/s (best)", "---:"),
                    ("server CPU ms per download", "---:"), ("peer/yimmo (best)", "---")]


def download_cells(rows: List[Dict[str, object]], row: Dict[str, object]) -> List[str]:
    own = "yimmo2" if row["server"].endswith("2") else "yimmo"
    yimmo = next((r for r in rows if r["server"] == own and r.get("ok")), None)
    if row["server"] == own:
        versus = "—"
    elif yimmo is None:
        versus = "n/a"
    else:  # above 1: yimmo is faster
        versus = "%.2fx" % (row["seconds"] / yimmo["seconds"])
    return ["%.3f" % row["seconds"], "%.3f" % row["median"],
            "%.0f" % (FILE_SIZE / 1e6 / row["seconds"]), "%.0f" % row["cpu_ms"], versus]


SLOW_COLUMNS = [("/hello req/s alone", "---:"), ("server CPU µs/req alone", "---:"),
                ("p99 ms alone", "---:"),
                ("req/s with slow downloads", "---:"), ("p99 ms with", "---:"),
                ("p99 delay ms", "---:"), ("downloads served", "---:"), ("errors", "---")]


def slow_cells(rows: List[Dict[str, object]], row: Dict[str, object]) -> List[str]:
    alone = row["alone"]
    delay = (row["p99_ms"] - alone["p99_ms"]
             if row.get("p99_ms") is not None and alone.get("p99_ms") is not None else None)
    return ["%.0f" % alone["rps"], cpu_text(alone.get("cpu_us")), p99_text(alone.get("p99_ms")),
            "%.0f" % row["rps"],
            p99_text(row.get("p99_ms")), p99_text(delay),
            "%d of %d" % (row["served"], row["slow_clients"]), cell(errors_text(row))]


MEMORY_COLUMNS = [("connections answered", "---:"), ("setup s", "---:"),
                  ("still open after", "---:"), ("RSS before MiB", "---:"),
                  ("RSS after MiB", "---:"), ("KiB per connection", "---:"),
                  ("peer/yimmo", "---")]


def memory_cells(rows: List[Dict[str, object]], row: Dict[str, object]) -> List[str]:
    own = "yimmo2" if row["server"].endswith("2") else "yimmo"
    yimmo = next((r for r in rows if r["server"] == own and r.get("ok")), None)
    if row["server"] == own:
        versus = "—"
    elif not (yimmo and yimmo.get("kib_per_conn") and row.get("kib_per_conn") is not None):
        versus = "n/a"
    else:  # above 1: yimmo takes less memory per connection
        versus = "%.2fx" % (row["kib_per_conn"] / yimmo["kib_per_conn"])
    return ["%d of %d" % (row["answered"], row["wanted"]), "%.1f" % row["setup_s"],
            "%d" % row["still_open"], "%.1f" % (row["rss_before_kib"] / 1024),
            "%.1f" % (row["rss_after_kib"] / 1024), kib_text(row.get("kib_per_conn")), versus]


TABLES = {"download": (DOWNLOAD_COLUMNS, download_cells),
          "slow-downloads": (SLOW_COLUMNS, slow_cells),
          "memory": (MEMORY_COLUMNS, memory_cells)}


def row_notes(row: Dict[str, object]) -> List[str]:
    """Anything odd about one server's run besides the numbers: slow stop, errors logged."""
    notes = []
    stop = row.get("stop") or {}
    if stop.get("killed"):
        notes.append("%s did not exit within %.0f s of SIGTERM after the run; killed with "
                     "SIGKILL" % (row["server"], STOP_TIMEOUT))
    elif stop.get("stop_seconds", 0) > 2:
        notes.append("%s took %.1f s to exit after SIGTERM" % (row["server"], stop["stop_seconds"]))
    if row.get("conn_error_count"):
        notes.append("%s: %d connection(s) not answered, first: %s"
                     % (row["server"], row["conn_error_count"], cell(row["conn_errors"][0])))
    if row.get("answered") is not None and row["answered"] < row["wanted"]:
        notes.append("%s answered %d of %d connections (then no new answer for %.0f s, "
                     "or %.0f s in all)" % (row["server"], row["answered"], row["wanted"],
                                            STALL, SETUP_LIMIT))
    if row.get("still_open") is not None and row["still_open"] < row["answered"]:
        notes.append("%s closed %d of its %d idle connections within %.0f s of their answer"
                     % (row["server"], row["answered"] - row["still_open"], row["answered"],
                        row["setup_s"] + SETTLE))
    if row.get("client_errors"):
        notes.append("%s: %d slow downloader(s) failed, first: %s"
                     % (row["server"], len(row["client_errors"]), cell(row["client_errors"][0])))
    if row.get("ok") and row.get("server_error_count"):
        notes.append("%s logged %d error-looking line(s), first: `%s`"
                     % (row["server"], row["server_error_count"],
                        cell(row["server_errors"][0][:200])))
    return notes


def target_check(results: Dict[str, List[Dict[str, object]]]) -> None:
    print("### target (hello): yimmo >= 3x gunicorn and >= 0.5x granian req/s, "
          "p99 below gunicorn's")
    print()
    rows = {r["server"]: r for r in results.get("hello", [])}

    def ok(name):
        r = rows.get(name)
        return r if r and r.get("ok") else None

    y, g, gr = ok("yimmo"), ok("gunicorn"), ok("granian")
    checks = []
    if y and g:
        checks.append(("req/s >= 3x gunicorn", y["rps"] >= 3 * g["rps"],
                       "%.2fx" % (y["rps"] / g["rps"])))
    else:
        checks.append(("req/s >= 3x gunicorn", None, "not measured"))
    if y and gr:
        checks.append(("req/s >= 0.5x granian", y["rps"] >= 0.5 * gr["rps"],
                       "%.2fx" % (y["rps"] / gr["rps"])))
    else:
        checks.append(("req/s >= 0.5x granian", None, "not measured"))
    if y and g and y.get("p99_ms") is not None and g.get("p99_ms") is not None:
        checks.append(("p99 below gunicorn's", y["p99_ms"] < g["p99_ms"],
                       "%.2f ms vs %.2f ms" % (y["p99_ms"], g["p99_ms"])))
    else:
        checks.append(("p99 below gunicorn's", None, "not measured"))
    print_checks(checks)


def print_checks(checks: List[Tuple[str, Optional[bool], str]]) -> None:
    """The verdict of each target: (what, passed or None when not measured, detail)."""
    for name, passed, detail in checks:
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        print("- %s: %s (%s)" % (name, verdict, detail))
    print()
    sys.stdout.flush()


def file_target_check(results: Dict[str, List[Dict[str, object]]]) -> None:
    print("### targets (files): a download at least as fast as gunicorn's; slow downloads "
          "delay /hello's p99 by at most 10 ms")
    print()

    def ok(scenario, name):
        r = next((r for r in results.get(scenario, []) if r["server"] == name), None)
        return r if r and r.get("ok") else None

    checks = []
    y, g = ok("download", "yimmo"), ok("download", "gunicorn")
    if y and g:
        checks.append(("download at least as fast as gunicorn", y["seconds"] <= g["seconds"],
                       "best %.3f s vs %.3f s" % (y["seconds"], g["seconds"])))
    elif "download" in results:
        checks.append(("download at least as fast as gunicorn", None, "not measured"))
    y = ok("slow-downloads", "yimmo")
    if y and y.get("p99_ms") is not None and y["alone"].get("p99_ms") is not None:
        delay = y["p99_ms"] - y["alone"]["p99_ms"]
        checks.append(("/hello p99 delayed by at most 10 ms", delay <= 10 and
                       y["served"] == y["slow_clients"],
                       "%.2f ms (%.2f ms alone, %.2f ms with %d of %d downloads served)"
                       % (delay, y["alone"]["p99_ms"], y["p99_ms"], y["served"],
                          y["slow_clients"])))
    elif "slow-downloads" in results:
        checks.append(("/hello p99 delayed by at most 10 ms", None, "not measured"))
    print_checks(checks)


# --- main --------------------------------------------------------------------------------

def names(text: str, known: Dict[str, object], what: str) -> List[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError("unknown %s %s; choose from %s"
                                         % (what, ", ".join(unknown) or "(none)",
                                            ",".join(known)))
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   type=lambda t: names(t, SERVERS, "server"),
                   help="comma-separated, from %s (default %s)"
                        % (",".join(SERVERS), ",".join(DEFAULT_SERVERS)))
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   type=lambda t: names(t, SCENARIOS, "scenario"),
                   help="comma-separated, from %s (default all)" % ",".join(SCENARIOS))
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk per run (default 10)")
    p.add_argument("--quick", action="store_true", help="3-second runs (sets --duration 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads-wrk", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--downloads", type=int, default=5,
                   help="download: timed downloads per server, after a warm-up (default 5)")
    p.add_argument("--slow-clients", type=int, default=20,
                   help="slow-downloads: clients at 64 KiB/s each (default 20)")
    p.add_argument("--idle-connections", type=int, default=10000,
                   help="memory: idle keep-alive connections opened (default 10000)")
    p.add_argument("--json", metavar="FILE", help="write the raw results here")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 3
    if (args.duration < 1 or args.connections < 1 or args.threads_wrk < 1
            or args.downloads < 1 or args.slow_clients < 1 or args.idle_connections < 1):
        p.error("--duration, --connections, --threads-wrk, --downloads, --slow-clients and "
                "--idle-connections must be at least 1")
    if args.connections < args.threads_wrk:
        p.error("--connections must be at least --threads-wrk")
    if not shutil.which("wrk"):
        p.error("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk)")
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def lacks_its_app(scenario: str) -> bool:
    """The scenario's app needs a package that is not installed: said so, and True."""
    need = SCENARIO_NEEDS.get(scenario)
    if need and version(need) == "not installed":
        print("### %s: skipped, %s not installed (pip install %s)\n"
              % (scenario, need, need.lower()))
        return True
    return False


def wrap_up(folder: tempfile.TemporaryDirectory, path: Optional[str],
            data: Dict[str, object]) -> None:
    """Every server stopped, the run's folder removed, and the raw results kept if asked."""
    Server.stop_all()
    folder.cleanup()
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        print("raw results written to %s" % path, file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    h = header(args)
    print_header(h)
    results: Dict[str, List[Dict[str, object]]] = {}
    status = 0
    folder = tempfile.TemporaryDirectory(prefix="bench-files-")
    try:
        if any(scenario in FILE_SCENARIOS for scenario in args.scenarios):
            print("writing a %d MB file in %s" % (FILE_SIZE // 1000000, folder.name),
                  file=sys.stderr)
            os.environ["BENCH_FILE"] = make_file(folder.name)  # the servers' apps.download
        if "memory" in args.scenarios:
            # This client and each server hold a descriptor per connection, and more.
            limit = raise_nofile(args.idle_connections + 1024)
            print("RLIMIT_NOFILE %d for this client and the servers" % limit, file=sys.stderr)
        # Servers not installed or not built: a note under every table.
        absent = {name: missing(name) for name in args.servers}
        skipped = ["%s not run: %s" % (name, why) for name, why in absent.items() if why]
        for scenario in args.scenarios:
            if lacks_its_app(scenario):
                continue
            results[scenario] = []
            for server in args.servers:
                serves = SERVERS[server].serves
                if absent[server] or (serves and scenario not in serves):
                    continue
                results[scenario].append(measure(server, scenario, args))
            print_table(scenario, results[scenario], skipped)
        if "hello" in results:
            target_check(results)
        if any(scenario in results for scenario in FILE_SCENARIOS):
            file_target_check(results)
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        status = 130
    finally:
        wrap_up(folder, args.json, {"meta": h, "duration": args.duration, "results": results})
    return status


if __name__ == "__main__":
    sys.exit(main())
