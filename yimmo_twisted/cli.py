"""The ``yimmo-wsgi`` command: ``yimmo-wsgi [OPTIONS] WSGI_MODULE:WSGI_APP``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver,
)

from . import __version__
from .config import OPTIONS, ConfigError, Settings, from_environ
from .util import AppError, load_app

# yimmo's levels on Twisted's: NOTICE and INFO share "info", DEBUG and TRACE "debug".
TWISTED_LEVELS = {
    "FATAL": LogLevel.critical, "ERROR": LogLevel.error, "WARNING": LogLevel.warn,
    "NOTICE": LogLevel.info, "INFO": LogLevel.info, "DEBUG": LogLevel.debug,
    "TRACE": LogLevel.debug,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yimmo-wsgi",
        description="Serve a WSGI application (PEP 3333) on the Twisted reactor.",
        epilog="Each option can also be set by the environment variable shown; "
               "the command line wins.",
    )
    p.add_argument("app", nargs="?", metavar="WSGI_MODULE:WSGI_APP",
                   help='the application: module:name or module:factory("arg")')
    p.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                   help="Twisted endpoint string to listen on, e.g. tcp:8081:interface=127.0.0.1 "
                        "(repeatable; replaces --port)")
    defaults = Settings()
    for option in OPTIONS:
        p.add_argument(*option.flags, dest=option.name, default=None, metavar="N",
                       help="%s (default %s; env %s)"
                            % (option.help, getattr(defaults, option.name), option.env))
    p.add_argument("--version", action="version", version="yimmo-twisted " + __version__)
    return p


def settings_from(argv: Optional[List[str]]) -> Settings:
    args = parser().parse_args(argv)
    settings = from_environ(os.environ)
    settings.update(vars(args), lambda o: "option " + "/".join(o.flags))
    settings.app = args.app
    settings.listen = args.listen
    if not settings.app:
        raise ConfigError("no application given: yimmo-wsgi [OPTIONS] WSGI_MODULE:WSGI_APP")
    return settings


def start_logging(level: str) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=TWISTED_LEVELS[level])
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Optional[List[str]] = None) -> None:
    try:
        settings = settings_from(argv)
        app = load_app(settings.app)
    except (ConfigError, AppError) as e:
        sys.exit("yimmo-wsgi: error: %s" % e)

    from twisted.internet import reactor

    from .server import Server

    start_logging(settings.log_level)
    server = Server(app, settings, reactor)
    reactor.callWhenRunning(_start, server, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    sys.exit(getattr(reactor, "_yimmo_exit", 0))


def _start(server, reactor) -> None:
    from twisted.logger import Logger
    log = Logger(namespace="yimmo.cli")
    d = server.startService()

    def failed(failure):
        log.critical("cannot start: {error}", error=failure.getErrorMessage())
        reactor._yimmo_exit = 1
        reactor.stop()

    d.addErrback(failed)
