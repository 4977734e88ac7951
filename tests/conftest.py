"""
Shared fixtures: ``serve`` starts the real server (``python -m yimmo_twisted``) as a
subprocess on 127.0.0.1 and an ephemeral port, and always stops it at teardown.

    def test_hello(serve):
        server = serve("apps:hello", "-t", "2", "--idle-timeout", "1")
        r = server.get("/")
        assert r.status == 200

``serve(app, *args, env=None, wait=True, timeout=10)``: ``app`` is a MODULE:EXPR spec
(``tests/`` is on PYTHONPATH, so ``apps:hello`` works), ``args`` extra CLI arguments,
``env`` extra environment variables.  With ``wait=False`` it returns at once (for tests
of start-up failures): use ``server.wait_exit()``.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

import pytest

import rawhttp

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# An endpoint on a free port of the loopback: what servers under test listen on.
LOCAL = "tcp:0:interface=127.0.0.1"
# twistd with this checkout's code (its plugin found on PYTHONPATH, see _env), run by this
# Python: Twisted's scripts live outside a venv.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
TWISTD_NODAEMON = TWISTD + ["-n", "--pidfile="]

LISTENING = re.compile(r"listening on (\S+) ([0-9.]+|\[[0-9a-fA-F:]+\]|[^\s:]+):(\d+)")


class ServerProcess:
    """A running server subprocess and the output it has logged."""

    def __init__(self, argv: List[str], env: dict, pass_fds: tuple = (), cwd: str = ROOT) -> None:
        self.argv = argv
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        self._lines: List[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._eof = False
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, bufsize=0, pass_fds=pass_fds,
        )
        self._reader = threading.Thread(target=self._read, daemon=True,
                                         name="server-output-%d" % self.proc.pid)
        self._reader.start()

    # -- output --------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.proc.stdout
        try:
            for line in iter(stream.readline, b""):
                with self._changed:
                    self._lines.append(line.decode("utf-8", "replace"))
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    def output(self) -> str:
        """Everything the server has logged so far (stdout and stderr)."""
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """The first match of the regex ``pattern`` in the output; fails after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = regex.search("".join(self._lines))
                if m:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._changed.wait(remaining)
        pytest.fail("no %r in the server output within %.1f s:\n%s"
                    % (pattern, timeout, self.output()))

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = LISTENING.search("".join(self._lines))
                if m:
                    self.port = int(m.group(3))
                    return
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
        self.stop()
        pytest.fail("server %r did not log 'listening on' within %.1f s (exit code %r); "
                    "output:\n%s" % (self.argv, timeout, self.proc.returncode, self.output()))

    # -- process -------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float = 10.0) -> int:
        """The exit code; fails the test if the process is still running after ``timeout``."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("server still running after %.1f s; output:\n%s"
                        % (timeout, self.output()))
        self._reader.join(2)
        return code

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, grace: float = 5.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``grace`` seconds.  Returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except OSError:
                pass
        self._reader.join(2)
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        return self.proc.returncode

    # -- client helpers ------------------------------------------------------------

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def connect(self, timeout: float = rawhttp.DEFAULT_TIMEOUT) -> rawhttp.Connection:
        return rawhttp.connect(self.port, self.host, timeout)

    def get(self, target: str = "/", headers=None, **kw) -> rawhttp.Response:
        """One request on a fresh connection, closed after the response."""
        return rawhttp.get(self.port, target, headers, **kw)

    def exchange(self, data: bytes, timeout: float = rawhttp.DEFAULT_TIMEOUT,
                 head_request: bool = False) -> rawhttp.Response:
        """Send raw bytes on a fresh connection, read one response, close."""
        with self.connect(timeout) as c:
            c.send(data)
            return c.read_response(head_request=head_request)

    def send_raw(self, data: bytes, timeout: float = 3.0) -> bytes:
        """Send raw bytes on a fresh connection, return everything until the server closes."""
        with self.connect(timeout) as c:
            c.send(data)
            return c.read_until_close(timeout)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """The first true value of ``predicate()`` within ``timeout`` seconds, else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def _env(extra: Optional[dict]) -> dict:
    env = dict(os.environ)
    # A clean slate: no YIMMO_* settings leak from the outer environment into a test.
    for key in list(env):
        if key.startswith("YIMMO_"):
            del env[key]
    path = [ROOT, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def start_server(app: Optional[str] = "apps:hello", *args: str, env: Optional[dict] = None,
                 wait: bool = True, timeout: float = 10.0, listen: bool = True) -> ServerProcess:
    """Start a server subprocess (the caller stops it: ``server.stop()``)."""
    argv = [sys.executable, "-m", "yimmo_twisted"]
    if listen:
        argv += ["--listen", LOCAL]
    argv += [str(a) for a in args]
    if app is not None:
        argv.append(app)
    server = ServerProcess(argv, _env(env))
    if wait:
        server._wait_listening(timeout)
    return server


@pytest.fixture
def serve():
    """Factory: ``serve(app_spec, *cli_args, env=None, wait=True, timeout=10)``."""
    servers: List[ServerProcess] = []

    def start(app: Optional[str] = "apps:hello", *args: str, **kw) -> ServerProcess:
        wait = kw.pop("wait", True)
        server = start_server(app, *args, wait=False, **kw)
        servers.append(server)  # registered first: stopped at teardown even if start fails
        if wait:
            server._wait_listening(kw.get("timeout", 10.0))
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    where = tmp_path_factory.mktemp("tls")
    cert_path, key_path = where / "site.crt", where / "site.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
