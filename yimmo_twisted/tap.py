"""``twistd yimmo`` / ``twist yimmo``: the options (from config.OPTIONS) and the service."""

from __future__ import annotations

import os

from twisted.python import usage

from .config import BY_NAME, OPTIONS, ConfigError, build, help_text
from .util import AppError


class Options(usage.Options):
    synopsis = "--app MODULE:APP [options]"
    optParameters = [[o.long, o.short, None, help_text(o)] for o in OPTIONS
                     if o.flags and not o.repeat and not o.switch]
    optFlags = [[o.long, o.short, help_text(o)] for o in OPTIONS if o.switch]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []  # the one repeatable option (config.OPTIONS: repeat=True)

    def opt_listen(self, endpoint: str) -> None:
        self["listen"].append(endpoint)

    opt_listen.__doc__ = help_text(BY_NAME["listen"])  # usage.Options shows it as the help

    def postOptions(self) -> None:
        # Build the service here: twistd reports a UsageError from postOptions as one
        # line and a non-zero exit, which is what a bad app or setting deserves.
        values = {o.name: self.get(o.long, self.get(o.name)) for o in OPTIONS if o.flags}
        for o in OPTIONS:
            if o.switch:  # usage.Options gives a flag 0 or 1: 0 is "not given", not "off"
                values[o.name] = "on" if values[o.name] else None
        if values.get("app"):
            values["module"] = None  # --app names module and app at once
        try:
            from .service import YimmoService
            self.service = YimmoService(settings=build(
                values, lambda o: "option --" + o.long, os.environ))
        except (ConfigError, AppError) as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options):
    return options.service
