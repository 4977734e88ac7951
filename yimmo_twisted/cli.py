"""The ``yimmo-wsgi`` command: ``yimmo-wsgi [OPTIONS] WSGI_MODULE:WSGI_APP``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, List, Optional

from . import __version__
from .config import OPTIONS, ConfigError, Settings, build, help_text
from .logs import logger, start_logging
from .util import AppError, stop_on_sigterm

log = logger("yimmo.cli")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yimmo-wsgi",
        description="Serve a WSGI application (PEP 3333) on the Twisted reactor.",
        epilog="Precedence: command line > environment > YAML config file > default.",
    )
    p.add_argument("spec", nargs="?", metavar="WSGI_MODULE:WSGI_APP",
                   help='the application: module:name or module:factory("arg") '
                        "(env YIMMO_WSGI_MODULE and YIMMO_WSGI_APP)")
    for option in OPTIONS:
        if not option.flags or option.name == "app":
            continue  # the application is the positional argument
        if option.switch:  # --reload: "on" when given, else the lower sources decide
            p.add_argument(*option.flags, dest=option.name, action="store_const", const="on",
                           default=None, help=help_text(option))
            continue
        p.add_argument(*option.flags, dest=option.name, metavar=option.metavar,
                       action="append" if option.repeat else "store", default=None,
                       help=help_text(option))
    p.add_argument("--version", action="version", version="yimmo-twisted " + __version__)
    return p


def settings_from(argv: Optional[List[str]]) -> Settings:
    args = vars(parser().parse_args(argv))
    spec = args.pop("spec")
    if spec:
        # The argument names module and app at once: YIMMO_WSGI_MODULE must not prefix it.
        args["app"] = spec
        args["module"] = None
    return build(args, lambda o: "option " + "/".join(o.flags), os.environ)


def main(argv: Optional[List[str]] = None) -> None:
    # SIGTERM stops the server until the reactor runs and installs its own handler (kept
    # until then: YimmoService would put the default back after the import).
    stop_on_sigterm()
    try:
        settings = settings_from(argv)
        from .service import YimmoService
        top = YimmoService(settings=settings)
    except (ConfigError, AppError) as e:
        sys.exit("yimmo-wsgi: error: %s" % e)

    from twisted.internet import reactor as _reactor
    reactor: Any = _reactor  # the installed reactor: IReactorCore and IReactorThreads

    start_logging(settings.log_level)
    if not settings.managed:
        # The manager replaces its processes on SIGHUP; one process has nothing to replace.
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
            log.warn, "SIGHUP ignored: reloading needs no_proc > 1"))
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    sys.exit(top.exit_code)
