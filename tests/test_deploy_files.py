"""
The systemd units in examples/deploy/ (the README's): clean under ``systemd-analyze
verify`` (Debian's systemd package; .ci/run installs it), and their stop timeout matched
to the grace period they give the server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from yimmo_twisted.proc import KILL_MARGIN

DEPLOY = os.path.join(ROOT, "examples", "deploy")
UNITS = ("myapp.service", "myapp.socket")


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
