"""
The settings reference, generated from ``yimmo_twisted.config.OPTIONS``: the one table
that also makes ``yimmo-wsgi --help``, ``twistd yimmo --help`` and the YAML keys, so the
documentation cannot drift from the code.

``.. yimmo-settings::`` writes one ``.. setting::`` entry per option (``:setting:`grace```
links to it), each with its command-line flags, environment variable, YAML key, twistd
option, ``YimmoService`` keyword and default (``config.show_default``, as ``--help``
shows it).  ``entries`` and ``rst`` need neither Sphinx nor docutils, so the tests can
check the text without them.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from yimmo_twisted.config import OPTIONS, Option, show_default

# What the command line takes in the option's place (the app is yimmo-wsgi's argument).
POSITIONAL = {"app": "WSGI_MODULE:WSGI_APP (the argument)"}


def escape(text: str) -> str:
    """Plain text for reStructuredText: ``*`` and friends are markup there."""
    return re.sub(r"([\\*`|_])", r"\\\1", text)


def _with_value(option: Option, flag: str) -> str:
    return flag if option.switch else "%s %s" % (flag, option.metavar)


def _keyword(option: Option) -> str:
    """The YimmoService keyword: the YAML path below ``wsgi`` (``log_level`` above it)."""
    path = option.yaml[1:] if option.yaml[:1] == ("wsgi",) else option.yaml
    if not path:
        return "config=FILE" if option.name == "config" else ""
    value = "..."
    for key in reversed(path[1:]):
        value = '{"%s": %s}' % (key, value)
    return "%s=%s" % (path[0], value)


def entries() -> List[Tuple[str, Dict[str, str], str]]:
    """(setting name, fields, help) for every option, in the table's order; a field's
    value is literal text, empty when the setting has no such door."""
    out = []
    for option in OPTIONS:
        repeat = " (repeatable)" if option.repeat else ""
        if option.name in POSITIONAL:
            command_line = POSITIONAL[option.name]
        else:
            command_line = ", ".join(_with_value(option, f) for f in option.flags) + repeat
        # twistd's options are the same flags (tap.py: the long one and the short one).
        twistd = (", ".join(_with_value(option, f) for f in option.flags) + repeat
                  if option.flags else "")
        fields = {
            "command line": command_line,
            "environment": option.env or "",
            "YAML": option.key,
            "under twistd": twistd,
            "YimmoService": _keyword(option),
            "default": show_default(option),
        }
        out.append((option.name, fields, option.help))
    return out


def rst() -> List[str]:
    """The reference as reStructuredText lines: a summary table, then an entry each."""
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - setting", "     - command line", "     - environment", "     - default"]
    for name, fields, _help in entries():
        lines += ["   * - :setting:`%s`" % name]
        lines += ["     - %s" % ("``%s``" % fields[k] if fields[k] else "")
                  for k in ("command line", "environment", "default")]
    lines.append("")
    for name, fields, help_ in entries():
        lines += [".. setting:: %s" % name, "", "   %s" % escape(help_), ""]
        for label, value in fields.items():
            lines.append("   :%s: %s" % (label, "``%s``" % value if value else "(none)"))
        lines.append("")
    return lines


def setup(app: Any) -> Dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class SettingsDirective(SphinxDirective):
        """``.. yimmo-settings::``: every setting, from config.OPTIONS."""

        def run(self) -> List[Any]:
            container = nodes.container()
            source = self.get_source_info()[0]
            self.state.nested_parse(StringList(rst(), source), self.content_offset,
                                    container)
            return container.children

    app.add_object_type("setting", "setting", indextemplate="pair: %s; setting")
    app.add_directive("yimmo-settings", SettingsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
