"""
``yimmo-wsgi --help`` and ``twistd yimmo --help`` tell the truth: each option's shown
default is the setting's default, given as one would type it, and is what the README's
settings tables say.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List

import pytest

from conftest import ROOT, TWISTD, _env
from yimmo_twisted.config import BY_NAME, OPTIONS, Settings

DOORS = {
    "yimmo-wsgi": [sys.executable, "-m", "yimmo_twisted", "--help"],
    # From this checkout: twisted/plugins is found on PYTHONPATH (conftest's _env).
    "twistd yimmo": TWISTD + ["yimmo", "--help"],
}


def _help(argv: List[str]) -> str:
    """The help text, its lines joined (both doors wrap to the terminal's width)."""
    out = subprocess.run(argv, cwd=ROOT, env=_env({"COLUMNS": "1000"}), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out
    return " ".join(out.stdout.split())


def _shown_defaults(text: str) -> Dict[str, str]:
    """The default each option's help shows, by setting name (found by its variable)."""
    by_env = {o.env: o.name for o in OPTIONS}
    return {by_env[env]: value
            for value, env in re.findall(r"\(default ([^;]*); env (\w+);", text)}


def _readme_defaults() -> Dict[str, str]:
    """The default column of the README's settings tables, by setting name, in the
    options' syntax: ``30 s`` -> ``30``, ``1 ms`` -> ``0.001``, ``8 KiB`` -> ``8K``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
                for line in f if line.startswith("| ")]
    defaults = {}
    for names, flags, _env_var, default, *_ in (r for r in rows if len(r) >= 5):
        if not flags.startswith("`-"):  # the header rows and the other tables
            continue
        default = default.strip("`")
        m = re.fullmatch(r"([\d.]+) (ms|s|KiB|MiB|GiB)", default)
        if m:
            number, unit = m.groups()
            default = {"s": number, "ms": "%g" % (float(number) / 1000)}.get(
                unit, number + unit[0])
        for name in names.split(", "):
            defaults[name] = default
    return defaults


def _value(name: str, shown: str):
    return None if shown in ("", "none") else BY_NAME[name].parse(shown)


def _default(name: str):
    value = getattr(Settings(), name)
    return None if value == [] else value


@pytest.mark.parametrize("door", DOORS)
def test_help_shows_each_default_as_a_value(door):
    text = _help(DOORS[door])
    shown = _shown_defaults(text)
    expected = {o.name for o in OPTIONS if o.flags}
    # yimmo-wsgi takes the app as its argument; twistd documents --listen like the rest.
    assert set(shown) == expected - ({"app"} if door == "yimmo-wsgi" else set())
    for name, value in shown.items():
        assert _value(name, value) == _default(name), (name, value)
    assert (shown["ws_compression"], shown["ws_origins"], shown["grace"],
            shown["max_body_size"]) == ("off", "*", "30", "1G")
    assert "others are refused with 403" in text and "refused with 400" not in text


def test_readme_tables_give_the_defaults():
    readme = _readme_defaults()
    assert set(readme) == {o.name for o in OPTIONS} - {"module", "app"}
    for name, value in readme.items():
        assert _value(name, value) == _default(name), (name, value)
