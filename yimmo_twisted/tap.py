"""``twistd yimmo`` / ``twist yimmo``: the options and the service of the plugin."""

from __future__ import annotations

from twisted.python import usage

from .config import OPTIONS, ConfigError, Settings
from .server import YimmoService
from .util import AppError

_defaults = Settings()


class Options(usage.Options):
    synopsis = "--app MODULE:APP [options]"
    optParameters = [["app", "a", None, 'the WSGI application: module:name or module:factory("arg")']] + [
        [o.flags[-1][2:], o.flags[0][1:] if len(o.flags) > 1 else None, None,
         "%s (default %s; env %s)" % (o.help, getattr(_defaults, o.name), o.env)]
        for o in OPTIONS
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on (repeatable; replaces --port)"""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        # Build the service here: twistd reports a UsageError from postOptions as one
        # line and a non-zero exit, which is what a bad app or setting deserves.
        if not self["app"]:
            raise usage.UsageError("--app MODULE:APP is required")
        settings = {o.name: self[o.flags[-1][2:]] for o in OPTIONS
                    if self[o.flags[-1][2:]] is not None}
        try:
            self.service = YimmoService(self["app"], listen=self["listen"] or None, **settings)
        except (ConfigError, AppError) as e:
            raise usage.UsageError(str(e))


def makeService(options: Options) -> YimmoService:
    return options.service
