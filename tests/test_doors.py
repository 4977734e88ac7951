"""
Each operations feature through each door: ``yimmo-wsgi`` (options), ``twistd yimmo``
(the plugin's options) and a ``.tac`` file (``YimmoService`` keywords in the YAML file's
shape).  The options and keywords are made from the one options table, as the doors
are: a setting missing from one door fails here.  (The features' own behaviour is tested
in their own files; metrics and reload have their door tests there.)
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import LOCAL, TWISTD_NODAEMON, ServerProcess, _env, wait_for
from test_systemd import Notifications
from yimmo_twisted.config import BY_NAME

DOORS = ("yimmo-wsgi", "twistd", "tac")


def door_server(door: str, app: str, settings: Dict[str, Any], tmp_path: Path,
                env: Optional[Dict[str, str]] = None) -> ServerProcess:
    """A server started through ``door`` with ``settings`` (names of the options table)."""
    settings = dict(settings, listen=LOCAL)
    if door == "tac":
        keywords: Dict[str, Any] = {}
        for name, value in settings.items():
            path = BY_NAME[name].yaml
            node = keywords
            for key in path[1:-1] if path[0] == "wsgi" else path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = [value] if BY_NAME[name].repeat else value
        tac = tmp_path / ("%s.tac" % door)
        tac.write_text(textwrap.dedent("""\
            from twisted.application import service
            from yimmo_twisted import YimmoService
            application = service.Application("doors")
            YimmoService(app=%r, **%r).setServiceParent(application)
            """ % (app, keywords)))
        argv = TWISTD_NODAEMON + ["-y", str(tac)]
    else:
        options: List[str] = []
        for name, value in settings.items():
            options += ["--" + BY_NAME[name].long, str(value)]
        if door == "twistd":
            argv = TWISTD_NODAEMON + ["yimmo", "--app", app] + options
        else:
            argv = [sys.executable, "-m", "yimmo_twisted"] + options + [app]
    server = ServerProcess(argv, _env(env))
    server._wait_listening(20)
    return server


@pytest.fixture
def through(tmp_path):
    servers: List[ServerProcess] = []

    def start(door: str, app: str, settings: Dict[str, Any], **kw: Any) -> ServerProcess:
        server = door_server(door, app, settings, tmp_path, **kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("door", DOORS)
def test_forwarded_headers(through, door):
    server = through(door, "apps:environ_app", {"forwarded_allow_ips": "127.0.0.1",
                                                "no_threads": 1})
    r = server.get("/", headers=[("X-Forwarded-For", "203.0.113.7"),
                                 ("X-Forwarded-Proto", "https")])
    environ = r.json()
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("203.0.113.7", "https")


@pytest.mark.parametrize("door", DOORS)
def test_file_response_and_access_log_file(through, door, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "f.bin").write_bytes(data)
    log = tmp_path / "access.log"
    server = through(door, "file_apps:app", {"access_log_file": str(log), "no_threads": 1})
    r = server.get("/file?path=%s&cl=size" % (tmp_path / "f.bin"), timeout=10)
    assert r.status == 200 and r.body == data
    line = wait_for(lambda: log.exists() and log.read_text().strip(), 5)
    assert line and '"GET /file?' in line and " 200 1048576 " in line
    assert line.rsplit(" ", 1)[-1].isdigit()  # the duration, microseconds


@pytest.mark.parametrize("door", DOORS)
def test_max_requests_recycles(through, door):
    server = through(door, "apps:hello", {"max_requests": 5, "no_threads": 1,
                                          "access_log": "off"})
    for _ in range(8):
        assert server.get("/").status == 200
    server.wait_for_output(r"recycling server process 0 \(pid \d+\): ", 15)
    server.wait_for_output(r"server process 0 ready[\s\S]*server process 0 ready", 15)


@pytest.mark.parametrize("door", DOORS)
def test_request_timeout_logs_the_stack(through, door):
    server = through(door, "apps:sleep", {"request_timeout": 0.3, "no_threads": 1,
                                          "access_log": "off"})
    started = time.monotonic()
    assert server.get("/?t=1.5", timeout=10).status == 200
    assert time.monotonic() - started < 5
    server.wait_for_output(r"request running for \d\.\d s \(request_timeout 0\.3 s\)"
                           r"[\s\S]*time\.sleep\(t\)", 5)


@pytest.mark.parametrize("door", DOORS)
def test_systemd_ready(through, door, tmp_path):
    listener = Notifications(str(tmp_path / "notify"))
    try:
        server = through(door, "apps:hello", {"no_threads": 1},
                         env={"NOTIFY_SOCKET": listener.address})
        pid, fields = listener.next()
        assert fields.get("READY") == "1" and pid == server.proc.pid
        assert server.get("/").status == 200
    finally:
        listener.close()

