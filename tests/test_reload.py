"""
``--reload`` (reload.py): the manager replaces its server process when the app's code (or
a file of ``reload_paths``) changes; a syntax error leaves the old process serving, its
fix reloads.  Through yimmo-wsgi, ``twistd yimmo`` and a .tac file; refused in one line
without watchfiles.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from conftest import LOCAL, ROOT, TESTS, TWISTD_NODAEMON, ServerProcess, _env, wait_for
from yimmo_twisted.reload import user_files

RELOADED = 15.0  # seconds for a change to be seen and a new process to be ready


def write_app(path: Path, body: str, extra: str = "") -> None:
    """An app answering ``body``.  Each version has its own length: a .pyc whose source
    has the same mtime second and size would be taken for fresh (proc.py writes none
    under reload, but the test should not lean on it)."""
    path.write_text(textwrap.dedent("""\
        BODY = %r.encode()
        %s
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [BODY]
        """) % (body, extra))


def env_with(*folders: Path, **extra: str) -> dict:
    """The test environment, with ``folders`` on PYTHONPATH for the app."""
    env = {"PYTHONPATH": os.pathsep.join([str(f) for f in folders] + [ROOT, TESTS])}
    env.update(extra)
    return env


def body(server: ServerProcess) -> bytes:
    try:
        return server.get("/", timeout=5).body
    except (OSError, AssertionError):
        return b""


def answers(server: ServerProcess, expected: bytes, timeout: float = RELOADED) -> None:
    got = wait_for(lambda: body(server) == expected, timeout, interval=0.1)
    assert got, "no %r within %.0f s (last: %r); output:\n%s" % (
        expected, timeout, body(server), server.output())


def edits_reload(server: ServerProcess, module: Path, broken_again: int = 0) -> None:
    """v1; an edit: v2; a syntax error: still v2, the error logged (``broken_again``
    more times); its fix: v3."""
    answers(server, b"v1", 5)
    write_app(module, "v2-two")
    answers(server, b"v2-two")
    assert "reload: " in server.output() and module.name + " changed" in server.output()
    write_app(module, "v3-three", extra="def broken(:\n")
    line = server.wait_for_output(r".*did not start \(cannot import '%s': SyntaxError.*"
                                  % module.stem, RELOADED).group(0)
    assert module.name in line  # one line: what and where
    server.wait_for_output("reload stopped: the old server processes keep serving")
    assert body(server) == b"v2-two" and server.alive()
    for i in range(broken_again):  # failed reloads are no start-up failures to give up on
        write_app(module, "v3-three%s" % ("!" * i), extra="def broken(:\n")
        wait_for(lambda i=i: server.output().count("reload stopped") >= 2 + i, RELOADED)
        assert server.output().count("reload stopped") >= 2 + i, server.output()
        assert body(server) == b"v2-two" and server.alive()
    write_app(module, "v3-three")
    answers(server, b"v3-three")


def stops_promptly(server: ServerProcess) -> None:
    started = time.monotonic()
    assert server.stop(grace=10) in (0, -15)
    assert time.monotonic() - started < 5  # the watching threads do not hold it


def test_yimmo_wsgi_reload(serve, tmp_path):
    module = tmp_path / "rl_cli.py"
    write_app(module, "v1")
    server = serve("rl_cli:app", "--reload", "-t", "1", "--start-failures", "2",
                   env=env_with(tmp_path))
    assert "manager; reloads on changes" in server.output()
    edits_reload(server, module, broken_again=2)
    stops_promptly(server)


def test_twistd_reload(tmp_path):
    module = tmp_path / "rl_twistd.py"
    write_app(module, "v1")
    server = ServerProcess(TWISTD_NODAEMON + ["yimmo", "--reload", "--app", "rl_twistd:app",
                                     "--listen", LOCAL, "-t", "1"], _env(env_with(tmp_path)))
    try:
        server._wait_listening(15)
        edits_reload(server, module)
        stops_promptly(server)
    finally:
        server.stop()


def test_tac_file_reload(tmp_path):
    module = tmp_path / "rl_tac.py"
    write_app(module, "v1")
    tac = tmp_path / "app.tac"
    tac.write_text(textwrap.dedent("""\
        import sys
        from twisted.application import service
        from yimmo_twisted import YimmoService
        sys.path.insert(0, %r)
        application = service.Application("reload")
        YimmoService(app="rl_tac:app", listen=%r, no_threads=1,
                     reload=True).setServiceParent(application)
        """ % (str(tmp_path), LOCAL)))
    server = ServerProcess(TWISTD_NODAEMON + ["-y", str(tac)], _env(None))
    try:
        server._wait_listening(15)
        answers(server, b"v1", 5)
        write_app(module, "v2-two")
        answers(server, b"v2-two")
        stops_promptly(server)
    finally:
        server.stop()


def test_reload_paths_folder_and_file(serve, tmp_path):
    """A file in a folder of reload_paths (a subfolder too), and a file named alone."""
    (tmp_path / "templates" / "deep").mkdir(parents=True)
    page = tmp_path / "templates" / "deep" / "page.txt"
    page.write_text("t1")
    settings = tmp_path / "settings.ini"
    settings.write_text("s1")
    module = tmp_path / "rl_paths.py"
    module.write_text(textwrap.dedent("""\
        import os
        HERE = os.path.dirname(os.path.abspath(__file__))

        def _read(*parts):
            with open(os.path.join(HERE, *parts)) as f:
                return f.read()

        BODY = (_read("templates", "deep", "page.txt") + " " + _read("settings.ini")).encode()

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [BODY]
        """))
    server = serve("rl_paths:app", "--reload", "-t", "1", "--reload-paths",
                   "%s,%s" % (tmp_path / "templates", settings), env=env_with(tmp_path))
    answers(server, b"t1 s1", 5)
    page.write_text("t2-two")
    answers(server, b"t2-two s1")
    settings.write_text("s2-two")
    answers(server, b"t2-two s2-two")
    stops_promptly(server)


def test_reload_with_processes_warns_and_works(serve, tmp_path):
    module = tmp_path / "rl_procs.py"
    write_app(module, "v1")
    server = serve("rl_procs:app", "--reload", "-p", "2", "-t", "1", env=env_with(tmp_path))
    server.wait_for_output(r"reload is for development: it replaces 2 server processes")
    answers(server, b"v1", 5)
    write_app(module, "v2-two")
    server.wait_for_output(r"reload done", RELOADED)
    answers(server, b"v2-two", 5)
    stops_promptly(server)


@pytest.mark.parametrize("how", ["--reload", "env"])
def test_without_watchfiles_reload_is_refused_in_one_line(serve, tmp_path, how):
    (tmp_path / "watchfiles.py").write_text("raise ImportError('no watchfiles here')\n")
    args = ("--reload",) if how == "--reload" else ()
    extra = {} if args else {"YIMMO_WSGI_RELOAD": "1"}
    server = serve("apps:hello", *args, env=env_with(tmp_path, **extra), wait=False)
    assert server.wait_exit(15) != 0
    assert server.output().strip().splitlines() == [
        "yimmo-wsgi: error: reload needs watchfiles: pip install 'yimmo-twisted[reload]'"]


def test_user_files_are_the_users_modules(tmp_path, monkeypatch):
    module = tmp_path / "rl_mine.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rl_mine  # noqa: F401
    import json  # noqa: F401  (the standard library's)

    import twisted  # an installed package

    files = user_files()
    assert str(module) in files
    assert not any(f.startswith(os.path.dirname(json.__file__) + os.sep) for f in files)
    assert not any(f.startswith(os.path.dirname(twisted.__file__)) for f in files)
    assert not any(os.sep + "yimmo_twisted" + os.sep in f for f in files)
    # An import that failed: the file of the error is named, though not in sys.modules.
    broken = tmp_path / "rl_broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(SyntaxError) as info:
        import rl_broken  # noqa: F401
    assert str(broken) in user_files(info.value)


def test_broken_module_new_to_the_app_is_watched_for_its_fix(serve, tmp_path):
    """The app starts importing a module of a folder not watched yet, which has a syntax
    error: the failed process names its file, and the fix of that file alone reloads."""
    module = tmp_path / "rl_union.py"
    write_app(module, "v1")
    lib = tmp_path / "rl_lib"
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    helper = lib / "helper.py"
    helper.write_text("PART = 'two'\ndef broken(:\n")
    server = serve("rl_union:app", "--reload", "-t", "1", env=env_with(tmp_path))
    answers(server, b"v1", 5)
    write_app(module, "v2", extra="from rl_lib.helper import PART\nBODY += PART.encode()\n")
    server.wait_for_output(r"did not start \(cannot import 'rl_union': SyntaxError.*helper\.py",
                           RELOADED)
    assert body(server) == b"v1"
    helper.write_text("PART = '-two'\n")
    answers(server, b"v2-two")
    assert "rl_lib/helper.py changed" in server.output()
    stops_promptly(server)


class _Now:
    """A reactor whose callFromThread calls at once (the watcher's threads report)."""

    def __init__(self) -> None:
        self.changed: list = []

    def callFromThread(self, fn, *args):
        fn(*args)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02])
def test_a_change_while_the_watch_is_set_up_is_seen(tmp_path, delay):
    """A server process reports its files as it becomes ready; an edit saved right then
    came before watchfiles watched the folder, and no reload followed."""
    from yimmo_twisted.reload import Watcher

    module = tmp_path / "edited.py"
    module.write_text("v1")
    reactor = _Now()
    watcher = Watcher(reactor, reactor.changed.append)
    watcher.add([str(module)])
    watcher.start()
    try:
        time.sleep(delay)
        module.write_text("v2, saved at once")
        assert wait_for(lambda: reactor.changed, 5), "the change was not seen"
        assert reactor.changed[0] == [str(module)]
    finally:
        watcher.stop()
