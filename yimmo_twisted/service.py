"""
The service every door runs: ``yimmo-wsgi``, ``twistd yimmo`` / ``twist yimmo`` and .tac
files.  With ``no_proc = 1`` it is the server itself; above, or with a limit that
replaces server processes (``Settings.recycles``), the manager of server processes
(proc.py), as gunicorn always runs its arbiter.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, Optional, Union

from twisted.application import service
from twisted.internet import defer

from . import systemd
from .config import ConfigError, Settings, build
from .logs import banner, logger, set_level
from .proc import Manager
from .server import Server, describe
from .util import load_app, stop_on_sigterm

log = logger("yimmo.service")


class YimmoService(service.MultiService):
    """
    The server as a service for .tac files::

        application = service.Application("myapp")
        YimmoService(app="myapp:app", port=8081, no_threads=4).setServiceParent(application)

    The keywords are the keys of the YAML file's ``wsgi:`` section, plus ``log_level`` and
    ``config`` (a YAML file); ``tls={"cert": ..., "key": ...}`` as in YAML.  ``app`` is a
    ``MODULE:EXPR`` string, or the WSGI callable itself (then ``no_proc`` must be 1).
    Precedence: YAML file < environment < keywords.  Bad values raise ``ConfigError``, an
    application that cannot be loaded ``AppError``.
    """

    def __init__(self, app: Union[str, Callable, None] = None, reactor=None, *,
                 settings: Optional[Settings] = None, **keywords: Any) -> None:
        super().__init__()
        callable_app = None if app is None or isinstance(app, str) else app
        if settings is None:
            shaped = {k: v for k, v in keywords.items() if k in ("config", "log_level")}
            wsgi = {k: v for k, v in keywords.items() if k not in shaped}
            if isinstance(app, str):
                wsgi["app"] = app
            if wsgi:
                shaped["wsgi"] = wsgi
            settings = build({}, lambda o: "", os.environ, shaped, "keywords of YimmoService",
                             need_app=callable_app is None)
        if callable_app is not None and not settings.app_spec:
            # For the banner: the callable's name, as MODULE:APP would give it.
            settings.app = "%s:%s" % (getattr(callable_app, "__module__", "?"),
                                      getattr(callable_app, "__qualname__", "app"))
        self.settings = settings
        self.exit_code = 0
        set_level(settings.log_level)
        if settings.tls and settings.listen:
            log.warn("tls_cert and tls_key apply to the port setting only; with listen, "
                     "write ssl: endpoints (ssl:8443:privateKey=KEY:certKey=CERT)")
        restore = stop_on_sigterm()
        try:
            self._make_child(settings, callable_app, reactor)
        finally:
            restore()

    def _make_child(self, settings: Settings, callable_app: Optional[Callable], reactor) -> None:
        if settings.managed:
            if callable_app is not None:
                raise ConfigError("no_proc > 1 needs the application as MODULE:APP (each "
                                  "server process imports it), as do max_requests, "
                                  "max_lifetime, max_rss, timeout_action recycle and "
                                  "reload")
            self.child: Union[Manager, Server] = Manager(settings, self._fatal, reactor)
        else:
            assert callable_app is not None or settings.app_spec is not None  # build() checked
            self.child = Server(callable_app or load_app(str(settings.app_spec)), settings,
                                reactor)
        self.child.setServiceParent(self)

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        d = defer.maybeDeferred(self.child.startService)
        if not self.settings.managed:
            d.addCallback(self._started)
        d.addErrback(self._cannot_start)
        return d

    def _started(self, _: object) -> None:
        endpoints = [describe(p) for p in self.child.ports]
        banner(log, self.settings, "server", endpoints)
        systemd.ready(endpoints)  # the manager says it itself, once its processes are

    def stopService(self) -> defer.Deferred:
        systemd.stopping()
        return super().stopService()

    def _cannot_start(self, failure) -> None:
        log.critical("yimmo-wsgi: error: cannot start: {error}", error=failure.getErrorMessage())
        self._fatal(1)
        reactor = self.child.reactor
        if reactor.running:
            reactor.stop()

    def _fatal(self, code: int) -> None:
        """The manager gave up: make the process exit with ``code``, whoever runs it."""
        self.exit_code = code
        # twistd ignores how its reactor stopped; its process status is set here, after
        # twistd's own clean-up (pid file) has run.
        atexit.register(_exit, code)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
