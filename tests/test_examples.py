"""
The Flask app (examples/flask/) and the Django project (examples/django/), each served by
the very command its README.md gives (read from the README, so that it stays true), less
its pip install: real yimmo-wsgi, real sockets on 127.0.0.1 (the port through
YIMMO_WSGI_LISTEN, which the command leaves to the environment), a real HTTP client with
cookies (urllib), and the routes each example has.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from conftest import LOCAL, ROOT, ServerProcess

SCRIPTS = os.path.dirname(sys.executable)  # this venv's bin: yimmo-wsgi


def _readme_blocks(example: str) -> list:
    with open(os.path.join(ROOT, "examples", example, "README.md")) as f:
        return [b.strip() for b in re.findall(r"```sh\n(.*?)```", f.read(), re.S)]


def readme_command(example: str) -> list:
    """The quick start's ``&&``-joined commands, from the example's README.md."""
    (line,) = [b for b in _readme_blocks(example) if "yimmo-wsgi" in b]
    return [c.strip() for c in line.split("&&")]


def readme_curls(example: str, server: ServerProcess) -> None:
    """The README's curl commands, sent to the server under test: each gets a 2xx."""
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    lines = [line for b in _readme_blocks(example) for line in b.splitlines()
             if line.startswith("curl ")]
    assert lines
    for line in lines:
        argv = shlex.split(line.replace("http://127.0.0.1:8081/", server.url + "/"))
        done = subprocess.run(argv[:1] + ["-fsS", "--max-time", "5"] + argv[1:],
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, (line, done.stderr)


def serve_readme(example: str, framework: str) -> ServerProcess:
    """Run the README's command (its install left out) as a shell would, from the root."""
    pytest.importorskip(framework)
    if shutil.which("yimmo-wsgi", path=SCRIPTS) is None:
        pytest.skip("no yimmo-wsgi script beside %s (pip install .)" % sys.executable)
    install, *rest = readme_command(example)
    assert install.split() == ["python3", "-m", "pip", "install", ".", framework], install
    assert rest[-1].startswith("yimmo-wsgi ")
    # exec: the shell becomes the server, so that the test's SIGTERM reaches it.
    script = " && ".join(rest[:-1] + ["exec " + rest[-1]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIMMO_")}
    env.update(PATH=SCRIPTS + os.pathsep + env["PATH"], YIMMO_WSGI_LISTEN=LOCAL,
               YIMMO_ACCESS_LOG="off", PYTHONUNBUFFERED="1")
    server = ServerProcess(["sh", "-c", script], env, cwd=ROOT)
    server._wait_listening(20)
    return server


class Client:
    """urllib with a cookie jar, as a browser keeps cookies; errors are answers too."""

    def __init__(self, server: ServerProcess) -> None:
        self.base = server.url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies))

    def __call__(self, path, data=None, json_body=None, headers=None):
        headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(data, dict):
            data = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with self.opener.open(request, timeout=5) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers, e.read().decode()


@pytest.fixture(scope="module")
def flask_server():
    server = serve_readme("flask", "flask")
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def django_server():
    server = serve_readme("django", "django")
    yield server
    assert server.stop() == 0, server.output()


# -- Flask ------------------------------------------------------------------------------

def test_flask_page_and_form(flask_server):
    get = Client(flask_server)
    status, headers, body = get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<h1>Flask on yimmo-twisted</h1>" in body and 'action="/greet"' in body
    assert "yimmo-twisted" in body.split("Served by", 1)[1]  # SERVER_SOFTWARE
    status, _, body = get("/greet", {"name": "Ada <Lovelace>"})
    assert status == 200 and "<h1>Hello, Ada &lt;Lovelace&gt;!</h1>" in body  # escaped
    assert get("/greet", {"name": " "})[0] == 400
    assert get("/greet")[0] == 405  # a GET


def test_flask_json_api_and_404(flask_server):
    call = Client(flask_server)
    status, headers, body = call("/api/items", json_body={"name": "tea"})
    assert status == 201 and headers["Content-Type"] == "application/json"
    item = json.loads(body)
    assert item["name"] == "tea"
    status, _, body = call("/api/items")
    assert status == 200 and item in json.loads(body)["items"]
    status, _, body = call("/api/items", json_body=["not", "an", "object"])
    assert status == 400 and "error" in json.loads(body)
    assert call("/no/such/page")[0] == 404
    assert call("/healthz")[:1] == (200,)


def test_flask_readme_curls(flask_server):
    readme_curls("flask", flask_server)


def test_flask_websocket_echo(flask_server):
    with ws_connect("ws://127.0.0.1:%d/ws" % flask_server.port, open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"
    with pytest.raises(InvalidStatus) as refused:  # only /ws speaks WebSocket
        with ws_connect("ws://127.0.0.1:%d/elsewhere" % flask_server.port, open_timeout=5):
            pass
    assert refused.value.response.status_code == 403


# -- Django -----------------------------------------------------------------------------

def test_django_form_with_its_csrf_token(django_server):
    browser = Client(django_server)
    status, headers, body = browser("/")
    assert status == 200 and "<h1>Notes</h1>" in body and "yimmo-twisted" in body
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
    assert any(c.name == "csrftoken" for c in browser.cookies)
    # POST, then the redirect's GET (post/redirect/get): the note is on the page.
    status, _, body = browser("/", {"csrfmiddlewaretoken": token, "text": "buy <tea>"})
    assert status == 200 and "<li>buy &lt;tea&gt;</li>" in body
    # Without the token, or without the cookie: 403, and no note.
    assert browser("/", {"text": "forged"})[0] == 403
    stranger = Client(django_server)
    assert stranger("/", {"csrfmiddlewaretoken": token, "text": "forged"})[0] == 403
    assert "forged" not in browser("/")[2]


def test_django_json_api_404_and_allowed_hosts(django_server):
    call = Client(django_server)
    status, headers, body = call("/api/notes", json_body={"text": "call Bob"})
    assert status == 201 and headers["Content-Type"] == "application/json"
    note = json.loads(body)
    status, _, body = call("/api/notes")
    assert status == 200 and note in json.loads(body)["notes"]
    assert call("/api/notes", data=b"{not json", headers={
        "Content-Type": "application/json"})[0] == 400
    status, _, body = call("/no/such/page")
    # DEBUG off: the plain page, not the one that lists the project's URL patterns.
    assert status == 404 and "Not Found" in body and "URLconf" not in body
    assert call("/healthz")[:1] == (200,)
    assert call("/", headers={"Host": "evil.example"})[0] == 400  # ALLOWED_HOSTS


def test_django_readme_curls(django_server):
    readme_curls("django", django_server)


def test_django_manage_py_check():
    pytest.importorskip("django")
    done = subprocess.run([sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
                          cwd=os.path.join(ROOT, "examples", "django"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
