"""Sphinx configuration: ``python3 -m sphinx -W --keep-going -b html docs OUT``."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The local extension, and this checkout's package ahead of any installed copy.
sys.path[:0] = [os.path.join(HERE, "_ext"), os.path.dirname(HERE)]

from yimmo_twisted import __version__, yimmo_module  # noqa: E402

# The module apps import exists only once a server has put it in sys.modules: the API
# reference documents it by that name.
yimmo_module.install()

project = "yimmo-twisted"
author = "the yimmo-twisted authors"
copyright = "the yimmo-twisted authors"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "settings_reference"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "a WSGI server on the Twisted reactor",
    # Wider than alabaster's 940px: the reference and migration tables have four columns.
    "page_width": "1180px",
    "body_max_width": "none",
}
html_static_path: list = []
highlight_language = "none"
autodoc_member_order = "bysource"
# Every cross-reference must resolve (with -W a wrong :setting: name fails the build); the
# Settings object is the config module's, not documented as such.
nitpicky = True
nitpick_ignore = [("py:class", "yimmo_twisted.config.Settings")]


def _plain_api(app, what, name, obj, options, lines):
    # The yimmo constants are plain ints: their docstring would be int's.
    if what == "data" and name.startswith("yimmo."):
        lines[:] = []


def _no_constructor(app, what, name, obj, options, signature, return_annotation):
    # The server makes each WebSocket; its constructor is not the app's to call.
    if what == "class" and name == "yimmo.WebSocket":
        return "", None
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _plain_api)
    app.connect("autodoc-process-signature", _no_constructor)
