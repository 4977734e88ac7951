"""
The documentation (docs/, built by .ci/run with Sphinx, warnings as errors) covers what it
must: every file of examples/deploy/ shown in the deployment page, every name of the
``yimmo`` module in the API reference, and the README's links lead to pages that exist.
The build itself checks the rest (cross-references, included files, the generated
settings reference).
"""

from __future__ import annotations

import os
import re

from conftest import ROOT
from yimmo_twisted.yimmo_module import API

DOCS = os.path.join(ROOT, "docs")


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def test_every_deployment_file_is_in_the_deployment_page():
    page = _read("docs", "deployment.rst")
    included = set(re.findall(r"^\.\. literalinclude:: \.\./examples/deploy/(\S+)$", page, re.M))
    assert included == set(os.listdir(os.path.join(ROOT, "examples", "deploy")))


def test_the_api_reference_documents_every_name_of_the_yimmo_module():
    page = _read("docs", "websockets.rst")
    documented = set(re.findall(r"^\.\. auto(?:function|class|data):: yimmo::(\w+)$", page,
                                re.M))
    assert documented == set(API)


def test_the_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(((?:docs|examples|benchmarks)/[^)#]*)\)", _read("README.md"))
    assert any(link.startswith("docs/") and link.endswith(".rst") for link in links)
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link
    pages = {name[:-4] for name in os.listdir(DOCS) if name.endswith(".rst")}
    toctree = set(re.findall(r"^   ([\w-]+)$", _read("docs", "index.rst"), re.M))
    assert toctree == pages - {"index"}
