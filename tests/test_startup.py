"""
Start-up: the settings (YAML < environment < command line, and their errors), every door
(yimmo-wsgi, twistd, twist, .tac, real installs, editable or not), endpoints (TLS, Unix
socket, PROXY protocol), logging (levels, banner, access log).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import rawhttp
from conftest import LOCAL, ROOT, ServerProcess, _env
from test_proc import wait_gone
from yimmo_twisted import config
from yimmo_twisted.cli import settings_from
from yimmo_twisted.config import ConfigError



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "yimmo.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- precedence: defaults < YAML < environment < command line (in-process) ----------------

def test_defaults_are_yimmo_wsgi_s(monkeypatch):
    for key in list(os.environ):
        if key.startswith("YIMMO_"):
            monkeypatch.delenv(key)
    s = settings_from(["m:app"])
    assert (s.port, s.no_proc, s.no_threads, s.log_level, s.idle_timeout) == (8081, 1, 4,
                                                                              "INFO", 5.0)


def test_yaml_then_env_then_cli(tmp_path):
    path = write_yaml(tmp_path, """\
        log_level: DEBUG
        wsgi:
          port: 9001
          no_proc: 3
          no_threads: 5
          idle_timeout: 7
          max_body_size: 2M
        """)
    env = {"YIMMO_WSGI_CONFIG": path}
    s = config.build({}, str, env, need_app=False)
    assert (s.port, s.no_proc, s.no_threads, s.log_level, s.idle_timeout, s.max_body_size) == (
        9001, 3, 5, "DEBUG", 7.0, 2 << 20)
    env.update(YIMMO_WSGI_PORT="9002", YIMMO_WSGI_NO_THREADS="6", YIMMO_LOG_LEVEL="notice",
               YIMMO_SERVER_IDLE_TIMEOUT="8", YIMMO_WSGI_NO_PROC="2")
    s = config.build({}, str, env, need_app=False)
    assert (s.port, s.no_proc, s.no_threads, s.log_level, s.idle_timeout) == (9002, 2, 6,
                                                                              "NOTICE", 8.0)
    s = config.build({"port": "9003", "no_threads": "1"}, str, env, need_app=False)
    assert (s.port, s.no_threads, s.no_proc) == (9003, 1, 2)


def test_cli_options_and_short_flags(monkeypatch, tmp_path):
    path = write_yaml(tmp_path, "wsgi: {port: 9100}\n")
    monkeypatch.setenv("YIMMO_WSGI_PORT", "9101")
    s = settings_from(["-c", path, "-l", "trace", "-P", "9102", "-p", "2", "-t", "3", "m:app"])
    assert (s.config, s.log_level, s.port, s.no_proc, s.no_threads) == (path, "TRACE", 9102, 2,
                                                                        3)
    s = settings_from(["--config", path, "m:app"])
    assert s.port == 9101  # the environment beats the file


def test_config_option_beats_config_env(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_yaml(tmp_path / "a", "wsgi: {port: 9201}\n")
    b = write_yaml(tmp_path / "b", "wsgi: {port: 9202}\n")
    monkeypatch.delenv("YIMMO_WSGI_PORT", raising=False)
    monkeypatch.setenv("YIMMO_WSGI_CONFIG", a)
    assert settings_from(["m:app"]).port == 9201
    assert settings_from(["-c", b, "m:app"]).port == 9202


def test_app_from_module_and_app_env(monkeypatch):
    monkeypatch.setenv("YIMMO_WSGI_MODULE", "pkg.mod")
    monkeypatch.setenv("YIMMO_WSGI_APP", "create()")
    assert settings_from([]).app_spec == "pkg.mod:create()"
    assert settings_from(["other:app"]).app_spec == "other:app"  # the argument wins whole
    monkeypatch.delenv("YIMMO_WSGI_APP")
    assert settings_from([]).app_spec == "pkg.mod:app"


def test_tls_from_yaml(tmp_path, certificate):
    cert, key = certificate
    path = write_yaml(tmp_path, "wsgi:\n  port: 8443\n  tls: {cert: %s, key: %s}\n" % (cert, key))
    s = config.build({"config": path}, str, {}, need_app=False)
    assert (s.tls_cert, s.tls_key) == (cert, key)
    assert s.endpoints()[0].startswith("ssl:8443:")


def test_yimmo_service_keywords_are_the_yaml_keys(monkeypatch, certificate):
    from yimmo_twisted import YimmoService

    cert, key = certificate
    monkeypatch.setenv("YIMMO_WSGI_NO_THREADS", "7")
    monkeypatch.setenv("YIMMO_WSGI_PORT", "1")
    service = YimmoService(app="apps:hello", port=8089, tls={"cert": cert, "key": key},
                           log_level="WARNING", idle_timeout=3)
    s = service.settings
    assert (s.port, s.no_threads, s.tls_key, s.log_level, s.idle_timeout) == (
        8089, 7, key, "WARNING", 3.0)
    with pytest.raises(ConfigError, match="unknown setting wsgi.bogus in keywords"):
        YimmoService(app="apps:hello", bogus=1)


def test_every_option_in_both_doors_help():
    """One table: each setting is an option of yimmo-wsgi and of twistd yimmo."""
    from yimmo_twisted.cli import parser
    from yimmo_twisted.tap import Options

    cli_help, twistd_help = parser().format_help(), str(Options())
    for option in config.OPTIONS:
        if option.env:
            assert option.env in cli_help
        for flag in option.flags:
            if option.name != "app":  # yimmo-wsgi takes it as its argument
                assert flag in cli_help, flag
        if option.flags:
            assert "--" + option.long in twistd_help, option.long
    for flag in ("-c", "-l", "-P", "-p", "-t", "-h"):
        assert flag + "," in cli_help or flag + " " in cli_help, flag


def test_yimmo_service_takes_a_callable(monkeypatch):
    from yimmo_twisted import YimmoService

    import apps
    monkeypatch.delenv("YIMMO_WSGI_MODULE", raising=False)
    service = YimmoService(app=apps.hello, listen=LOCAL)
    assert service.child.app is apps.hello and service.settings.app_spec == "apps:hello"
    with pytest.raises(ConfigError, match="no_proc > 1 needs the application as MODULE:APP"):
        YimmoService(app=apps.hello, no_proc=2)


@pytest.mark.parametrize("args, env, yaml_text, message", [
    (["-P", "abc"], {}, None, "invalid port 'abc' (option -P/--port): expected a whole number"),
    ([], {"YIMMO_WSGI_PORT": "abc"}, None,
     "invalid port 'abc' (environment variable YIMMO_WSGI_PORT)"),
    ([], {}, "wsgi: {port: abc}\n", "invalid port 'abc' (wsgi.port in config file"),
    ([], {}, "wsgi: {bogus: 1}\n", "unknown setting wsgi.bogus in config file"),
    ([], {}, "wsgi: [1, 2]\n", "wsgi in config file"),
    (["-t", "0"], {}, None, "invalid no_threads '0' (option -t/--no-threads): must be at least 1"),
    ([], {"YIMMO_LOG_LEVEL": "LOUD"}, None, "invalid log_level 'LOUD' (environment variable"),
    ([], {"YIMMO_TLS_CERT_PATH": "/nonexistent/site.crt"}, None,
     "invalid tls_cert '/nonexistent/site.crt' (environment variable YIMMO_TLS_CERT_PATH): "
     "no such file"),
    (["-c", "/nonexistent.yaml"], {}, None, "invalid config '/nonexistent.yaml' (option -c"),
    ([], {"YIMMO_WSGI_NO_PROC": "two"}, None, "YIMMO_WSGI_NO_PROC"),
])
def test_bad_setting_one_line_and_exit_code(serve, tmp_path, args, env, yaml_text, message):
    if yaml_text is not None:
        args = args + ["-c", write_yaml(tmp_path, yaml_text)]
    server = serve("apps:hello", *args, env=env, wait=False)
    assert server.wait_exit() != 0
    lines = server.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yimmo-wsgi: error: "), lines
    assert message in lines[0]


def test_cert_without_key(serve, certificate):
    server = serve("apps:hello", "--tls-cert", certificate[0], wait=False)
    assert server.wait_exit() != 0
    assert "TLS needs both tls_cert and tls_key" in server.output()


# -- doors -------------------------------------------------------------------------------

# A venv of its own for the installs tested here, made by this Python. The packages it
# needs (Twisted, ...) are this Python's: a .pth file puts this Python's site-packages
# (a venv's or the system's, whichever runs the tests) after the venv's own, so no index
# is needed and what the venv itself holds (the install under test) comes first. The
# wheels are built by this Python's setuptools (the test extra), as pip
# --no-build-isolation would, and installed by this Python's pip with --no-deps.

SHARED_PTH = "zz_running_python.pth"


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("YIMMO_") and k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _site_dirs() -> list:
    """The site-packages folders of the Python running the tests."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:  # a system Python's user site (never in a venv)
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _make_venv(where) -> Path:
    where = Path(where)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   env=_clean_env(), timeout=60)
    (_site_packages(where) / SHARED_PTH).write_text("\n".join(_site_dirs()) + "\n")
    return where


def _site_packages(venv) -> Path:
    return next(Path(venv).glob("lib/python*/site-packages"))


def _source_copy(where) -> Path:
    """This repository's files, without build products, caches or other installs.

    Built from a copy: setuptools builds in the source tree, and two test runs at once
    must not share one build/ folder (nor leave one in the checkout)."""
    source = Path(where)
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache", ".venv",
        ".pytest_cache", "tests", "benchmarks"))
    return source


def _build(source, hook: str, out) -> Path:
    """The wheel made by setuptools' PEP 517 hook ``build_wheel`` or ``build_editable``."""
    code = ("import sys; from setuptools import build_meta\n"
            "print('wheel:', build_meta.%s(sys.argv[1]))" % hook)
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=str(source),
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    name = [line for line in done.stdout.splitlines() if line.startswith("wheel: ")][-1]
    return Path(out) / name[len("wheel: "):]


def _pip_install(venv, wheel) -> None:
    """Install ``wheel`` into ``venv`` (replacing what is there), offline, no dependencies.

    pip runs for the venv with this Python's packages out of its sight, or it would take
    this Python's own yimmo-twisted (often an editable install of this checkout) for the
    one to replace."""
    shared = _site_packages(venv) / SHARED_PTH
    text = shared.read_text()
    shared.unlink()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(Path(venv) / "bin" / "python"),
             "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
            env=_clean_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        shared.write_text(text)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with a real, non-editable install of this repository (its wheel)."""
    where = _make_venv(tmp_path_factory.mktemp("venv"))
    wheel = _build(_source_copy(where / "src"), "build_wheel", where / "dist")
    _pip_install(where, wheel)
    return where


def _probe(venv, cwd) -> dict:
    """What the venv's twistd sees: its commands, and where the plugin comes from."""
    env = _clean_env()
    out = subprocess.run(_twistd(venv) + ["--help"], env=env, cwd=str(cwd),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    commands = re.findall(r"^    (\S+)", out.stdout.split("Commands:")[-1], re.M)
    probe = textwrap.dedent("""\
        import json
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins
        import twisted.plugins.yimmo_plugin as plugin, yimmo_twisted
        found = [p.tapname for p in getPlugins(IServiceMaker)]
        print(json.dumps([found, plugin.__file__, yimmo_twisted.__file__]))
        """)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env,
                         cwd=str(cwd), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    found, plugin_file, package_file = json.loads(out.stdout.strip().splitlines()[-1])
    return {"help": commands, "found": found, "plugin": plugin_file,
            "package": package_file}


def test_installed_plugin_is_discovered(venv, tmp_path):
    seen = _probe(venv, tmp_path)
    assert "yimmo" in seen["help"] and "yimmo" in seen["found"], seen
    # Both from the install, not from this checkout.
    assert seen["plugin"].startswith(str(venv)) and seen["package"].startswith(str(venv))
    # The wheel holds no plugin cache: that file is Twisted's, and rewritten by it.
    record = next(_site_packages(venv).glob("yimmo_twisted-*.dist-info/RECORD"))
    assert "dropin.cache" not in record.read_text()


def test_plugin_found_after_editable_and_plain_installs(tmp_path_factory, tmp_path):
    """An editable install (what ``pip install -e .`` makes), a plain one over it, then
    the editable one again: ``twistd --help`` lists yimmo after each. An editable install
    must put the project folder on sys.path (a static .pth): Twisted looks for plugins in
    the twisted/plugins folders of sys.path, and does not see through setuptools' import
    hook (a meta path finder)."""
    where = _make_venv(tmp_path_factory.mktemp("venv"))
    source = _source_copy(where / "src")
    editable = _build(source, "build_editable", where / "dist-editable")
    plain = _build(source, "build_wheel", where / "dist")
    # A cache Twisted wrote before the plugin was there (a name that no longer exists),
    # newer than the plugin's file: it must not hide the plugin.
    from twisted.plugin import CachedDropin
    cache = source / "twisted" / "plugins" / "dropin.cache"
    cache.write_bytes(pickle.dumps({"gone": CachedDropin("twisted.plugins.gone", "")}))
    future = time.time() + 3600
    os.utime(cache, (future, future))
    for wheel, home in [(editable, source), (plain, _site_packages(where)),
                        (editable, source)]:
        _pip_install(where, wheel)
        seen = _probe(where, tmp_path)
        assert "yimmo" in seen["help"] and "yimmo" in seen["found"], (wheel.name, seen)
        assert seen["plugin"].startswith(str(home)), (wheel.name, seen)
        assert seen["package"].startswith(str(home)), (wheel.name, seen)
    # The plugin loads (twistd --help lists plugins from the cache, unimported).
    out = subprocess.run(_twistd(where) + ["yimmo", "--help"], env=_clean_env(),
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--app" in out.stdout, out


def _twistd(venv) -> list:
    """twistd run by the venv's Python (Twisted's scripts live outside the venv)."""
    return [str(venv / "bin" / "python"), "-c",
            "from twisted.scripts.twistd import run; run()"]


def _twist(venv) -> list:
    # twist logs JSON unless told otherwise when its output is not a terminal.
    return [str(venv / "bin" / "python"), "-m", "twisted", "--log-format=text"]


def _door(argv, env=None) -> ServerProcess:
    server = ServerProcess(argv, _env(env))
    server._wait_listening(15)
    return server


@pytest.mark.parametrize("command", ["twistd", "twist"])
def test_twistd_and_twist_serve(venv, command):
    argv = (_twistd(venv) + ["-n", "--pidfile=", "yimmo"] if command == "twistd"
            else _twist(venv) + ["yimmo"])
    server = _door(argv + ["--app", "proc_apps:pid", "--listen", LOCAL, "-t", "2"])
    try:
        r = server.get("/")
        assert r.status == 200 and r.body.split()[1:] == [b"False", b"http", b"127.0.0.1"]
        assert "yimmo-twisted" in server.output()  # the banner
    finally:
        # twistd ends by re-raising the signal that stopped it (twist exits 0).
        assert server.stop() in (0, -15)


def test_twistd_runs_the_manager(venv):
    server = _door(_twistd(venv) + ["-n", "--pidfile=", "yimmo", "--app", "proc_apps:pid",
                                    "--listen", LOCAL, "--no-proc", "2", "-t", "1"])
    try:
        server.wait_for_output(r"server process 0 ready[\s\S]*server process 1 ready|"
                               r"server process 1 ready[\s\S]*server process 0 ready")
        # Two server processes answer (how evenly is test_proc's balance test's business).
        ready = {int(p) for p in re.findall(r"ready \(pid (\d+)\)", server.output())}
        answers = {int(server.get("/").body.split()[0]) for _ in range(10)}
        assert len(ready) == 2 and server.proc.pid not in ready and answers <= ready
        server.signal(signal.SIGHUP)  # reload, as under yimmo-wsgi
        server.wait_for_output("reload done", timeout=20)
        assert server.get("/").status == 200
    finally:
        assert server.stop() in (0, -15)
    children = [int(p) for p in re.findall(r"ready \(pid (\d+)\)", server.output())]
    assert len(children) == 4 and wait_gone(children, 5)


def test_twistd_log_level_filters_yimmo_events(venv):
    port = free_port()
    server = ServerProcess(_twistd(venv) + ["-n", "--pidfile=", "yimmo", "--app", "apps:hello",
                                            "--listen", "tcp:%d:interface=127.0.0.1" % port,
                                            "--log-level", "WARNING"], _env(None))
    try:
        server.wait_for_output("Server Shut Down|starting up|reactor class", timeout=15)
        server.port = port
        deadline = time.monotonic() + 10
        while True:
            try:
                assert server.get("/").status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
    finally:
        server.stop()
    out = server.output()
    assert "[yimmo." not in out, out  # info lines of yimmo: filtered
    assert '"GET / HTTP/1.1" 200' in out  # the access log is its own setting


def test_twistd_daemon_logs_server_processes(venv, tmp_path):
    """Daemonized, stdout is /dev/null: the server processes' lines reach twistd's log."""
    log, pidfile, port = tmp_path / "twistd.log", tmp_path / "twistd.pid", free_port()
    subprocess.run(_twistd(venv) + ["--pidfile", str(pidfile), "--logfile", str(log), "yimmo",
                                    "--app", "proc_apps:pid", "-p", "2", "--listen",
                                    "tcp:%d:interface=127.0.0.1" % port],
                   env=_env(None), cwd=ROOT, check=True, timeout=30)
    manager = None
    try:
        deadline = time.monotonic() + 15
        while "server process 1 ready" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.05)
        manager = int(pidfile.read_text())
        assert rawhttp.get(port, "/logged").status == 200
        wait_for = time.monotonic() + 5
        while '"GET /logged HTTP/1.1" 200' not in log.read_text():
            assert time.monotonic() < wait_for, log.read_text()
            time.sleep(0.05)
        assert "[yimmo.process.1#info] - [yimmo.server#info] listening on" in log.read_text()
    finally:
        if manager is None and pidfile.exists():
            manager = int(pidfile.read_text())
        if manager is not None:
            os.kill(manager, signal.SIGTERM)
    children = [int(p) for p in re.findall(r"ready \(pid (\d+)\)", log.read_text())]
    assert wait_gone([manager] + children, 10)


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_twistd_app_import_error(venv, no_proc):
    server = ServerProcess(_twistd(venv) + ["-n", "--pidfile=", "yimmo", "--app", "nosuch:app",
                                            "--listen", LOCAL, "-p", no_proc], _env(None))
    assert server.wait_exit(15) != 0
    assert "module 'nosuch' not found" in server.output()


def test_twistd_bad_setting_is_one_usage_error(venv):
    server = ServerProcess(_twistd(venv) + ["-n", "--pidfile=", "yimmo",
                            "--app", "apps:hello", "--port", "abc"], _env(None))
    assert server.wait_exit() != 0
    assert "invalid port 'abc' (option --port): expected a whole number" in server.output()


@pytest.mark.parametrize("no_proc", [1, 2])
def test_tac_file(venv, tmp_path, no_proc):
    """A .tac file that puts its own folder on sys.path for its app, as examples/app.tac."""
    (tmp_path / "tacapp.py").write_text("from proc_apps import pid as app\n")
    tac = tmp_path / "app.tac"
    tac.write_text(textwrap.dedent("""\
        import sys
        from twisted.application import service
        from yimmo_twisted import YimmoService
        sys.path.insert(0, %r)
        application = service.Application("myapp")
        YimmoService(app="tacapp:app", listen="%s", no_threads=2,
                     no_proc=%d).setServiceParent(application)
        """ % (str(tmp_path), LOCAL, no_proc)))
    server = _door(_twistd(venv) + ["-n", "--pidfile=", "-y", str(tac)])
    try:
        assert server.get("/").body.split()[1] == str(no_proc == 2).encode()
    finally:
        assert server.stop() in (0, -15)


def test_example_tac_builds():
    from twisted.application import service

    path = os.path.join(ROOT, "examples", "app.tac")
    namespace = {"__file__": path}
    exec(compile(open(path).read(), path, "exec"), namespace)
    services = list(service.IServiceCollection(namespace["application"]))
    assert services and services[0].settings.app_spec == "hello:app"


def test_yimmo_wsgi_console_script(serve):
    script = os.path.join(os.path.dirname(sys.executable), "yimmo-wsgi")
    if not os.access(script, os.X_OK):
        pytest.skip("no yimmo-wsgi script beside this Python")
    server = _door([script, "--listen", LOCAL, "-t", "1", "apps:hello"])
    try:
        assert server.get("/").body == b"Hello, World!\n"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("app, args, loaded", [
    ("apps:app", (), {"autobahn": False, "h2": False}),
    ("apps:app", ("--http2-cleartext", "on"), {"autobahn": False, "h2": True}),
    ("ws_apps:app", (), {"autobahn": True, "h2": False}),
], ids=["plain", "h2c", "websockets"])
def test_a_server_imports_the_libraries_of_the_parts_it_serves_alone(serve, app, args, loaded):
    # autobahn (with the crypto libraries) and h2 are for the apps and settings that use
    # them: a third of the start-up time otherwise.  The WebSocket app's is imported at
    # start-up, before any handshake, not in the reactor's turn of the first one.
    server = serve(app, *args)
    assert json.loads(server.get("/modules").body) == loaded


def test_port_from_yaml_file(serve, tmp_path):
    port = free_port()
    path = write_yaml(tmp_path, "wsgi: {port: %d, no_threads: 1}\n" % port)
    server = serve("apps:hello", "-c", path, listen=False)
    assert server.port == port
    assert server.get("/").status == 200


def test_port_env_beats_yaml_and_cli_beats_env(serve, tmp_path):
    yaml_port, env_port, cli_port = free_port(), free_port(), free_port()
    path = write_yaml(tmp_path, "wsgi: {port: %d}\n" % yaml_port)
    env = {"YIMMO_WSGI_CONFIG": path, "YIMMO_WSGI_PORT": env_port}
    assert serve("apps:hello", env=env, listen=False).port == env_port
    assert serve("apps:hello", "-P", cli_port, env=env, listen=False).port == cli_port


# -- endpoints ---------------------------------------------------------------------------

def _over(sock: socket.socket) -> rawhttp.Connection:
    """A rawhttp connection over a socket made here (TLS, Unix)."""
    c = rawhttp.Connection.__new__(rawhttp.Connection)
    c.host, c.port, c.timeout = "localhost", 0, rawhttp.DEFAULT_TIMEOUT
    c.sock, c.buf, c.eof, c.reset = sock, bytearray(), False, False
    sock.settimeout(rawhttp.DEFAULT_TIMEOUT)
    return c


def _tls_get(port: int, cert: str) -> rawhttp.Response:
    context = ssl.create_default_context(cafile=cert)
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                               server_hostname="localhost")
    with _over(sock) as c:
        c.send(rawhttp.request(headers={"Connection": "close"}))
        return c.read_response()


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_tls_from_cert_and_key(serve, certificate, no_proc):
    cert, key = certificate
    server = serve("proc_apps:pid", "-P", "0", "-p", no_proc, "-t", "1", listen=False,
                   env={"YIMMO_TLS_CERT_PATH": cert, "YIMMO_TLS_KEY_PATH": key})
    r = _tls_get(server.port, cert)
    assert r.status == 200
    assert r.body.split()[1:3] == [str(no_proc == "2").encode(), b"https"]


def test_tls_and_plain_endpoints_side_by_side(serve, certificate, tmp_path):
    cert, key = certificate
    tls_port = free_port()
    server = serve("proc_apps:pid", "--listen",
                   "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (tls_port, key, cert))
    assert server.get("/").body.split()[2] == b"http"
    server.wait_for_output(r"listening on tcp 127\.0\.0\.1:%d" % tls_port)
    assert _tls_get(tls_port, cert).body.split()[2] == b"https"


@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_unix_socket(serve, tmp_path, no_proc):
    path = str(tmp_path / "yimmo.sock")
    server = serve("proc_apps:pid", "--listen", "unix:" + path, "-p", no_proc, listen=False,
                   wait=False)
    server.wait_for_output("listening on unix " + path, timeout=10)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    with _over(sock) as c:
        c.send(rawhttp.request(headers={"Connection": "close"}))
        r = c.read_response()
    assert r.status == 200 and r.body.split()[3] == b"unix:"


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n",
    # v2: PROXY, TCP over IPv4, 12 address bytes: 203.0.113.7:40000 -> 127.0.0.1:80
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1])
    + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big"),
], ids=["v1", "v2"])
@pytest.mark.parametrize("no_proc", ["1", "2"])
def test_proxy_protocol_gives_remote_addr(serve, header, no_proc):
    server = serve("apps:environ_app", "-p", no_proc, "--listen", "haproxy:" + LOCAL,
                   listen=False)
    with server.connect() as c:
        c.send(header + rawhttp.request())  # header and request in one segment
        env = c.read_response().json()
        c.send(rawhttp.request())  # and a second request on the connection
        assert c.read_response().json()["REMOTE_ADDR"] == env["REMOTE_ADDR"]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "40000")
    assert env["wsgi.multiprocess"] is (no_proc == "2")


def test_proxy_protocol_required(serve):
    server = serve("apps:hello", "--listen", "haproxy:" + LOCAL, listen=False)
    assert server.send_raw(rawhttp.request()) == b""  # no header: closed


# -- logging -----------------------------------------------------------------------------

def test_banner_and_combined_access_log(serve):
    server = serve("apps:hello", "-t", "3")
    server.get("/path?q=1", headers={"User-Agent": "probe/1", "Referer": "http://r/"})
    server.wait_for_output(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                           r'"GET /path\?q=1 HTTP/1\.1" 200 14 "http://r/" "probe/1"')
    banner = server.wait_for_output(r"yimmo-twisted \S+ \(server, pid (\d+)\) on Twisted .*"
                                    r"1 process\(es\) x 3 thread\(s\)")
    assert int(banner.group(1)) == server.proc.pid


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_refused_requests_in_the_access_log(serve, fmt):
    server = serve("apps:hello", "--access-log", fmt)
    r = server.exchange(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert r.status == 400
    if fmt == "combined":
        server.wait_for_output(r'127\.0\.0\.1 - - \[[^]]+\] "-" 400 - "-" "-"')
    else:
        line = server.wait_for_output(r'\{"time"[^\n]*"status":400[^\n]*\}').group(0)
        assert json.loads(line)["remote_addr"] == "127.0.0.1"


def test_json_access_log(serve):
    server = serve("apps:hello", "--access-log", "json")
    server.get("/j")
    line = server.wait_for_output(r'\{"time".*"target":"/j".*\}').group(0)
    record = json.loads(line)
    assert (record["method"], record["status"], record["bytes"]) == ("GET", 200, 14)


def test_access_log_off_and_log_level(serve):
    port = free_port()
    server = serve("apps:hello", "--access-log", "off", "-l", "WARNING",
                   "--listen", "tcp:%d:interface=127.0.0.1" % port, listen=False, wait=False)
    server.port = port
    deadline = time.monotonic() + 10
    while True:  # nothing below WARNING is logged, "listening on" neither: poll
        try:
            assert server.get("/quiet").status == 200
            break
        except OSError:
            assert time.monotonic() < deadline and server.alive(), server.output()
            time.sleep(0.05)
    server.stop()
    out = server.output()
    assert "/quiet" not in out and "listening" not in out and "served" not in out, out
