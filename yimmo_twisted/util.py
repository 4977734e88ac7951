"""Loading the application from ``MODULE:EXPR``, as every entry point does."""

from __future__ import annotations

import ast
import importlib
import signal
import sys
import threading
from typing import Any, Callable

from .yimmo_module import install as install_yimmo


class AppError(Exception):
    """The application named cannot be loaded; the message says what was not found."""


def _resolve(node: ast.AST, namespace: dict, spec: str):
    if isinstance(node, ast.Name):
        if node.id not in namespace:
            raise AppError("%r has no attribute %r" % (spec.partition(":")[0], node.id))
        return namespace[node.id]
    if isinstance(node, ast.Attribute):
        obj = _resolve(node.value, namespace, spec)
        try:
            return getattr(obj, node.attr)
        except AttributeError:
            raise AppError("%s: no attribute %r" % (spec, node.attr)) from None
    raise AppError("%s: only a name, a dotted name or a call with literal arguments is allowed"
                   % spec)


def load_app(spec: str) -> Callable:
    """
    ``module:name``, ``module:obj.attr`` or ``module:factory("arg", key=1)``.  The call
    form takes literal arguments only: the spec comes from a command line or a config
    file, and evaluating arbitrary code from there is not our business.
    """
    module_name, sep, expr = spec.partition(":")
    if not sep or not module_name or not expr.strip():
        raise AppError("%r: expected MODULE:APP, e.g. myapp:app" % spec)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # as python -m does: apps are found in the current directory
    install_yimmo()  # apps do ``import yimmo`` at import time
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise AppError("module %r not found" % module_name) from None
        raise AppError("cannot import %r: %s: %s" % (module_name, type(e).__name__, e)) from e
    except Exception as e:
        raise AppError("cannot import %r: %s: %s" % (module_name, type(e).__name__, e)) from e
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise AppError("%s: %r is not a valid expression" % (spec, expr)) from None
    namespace = vars(module)
    if isinstance(tree, ast.Call):
        func = _resolve(tree.func, namespace, spec)
        try:
            args = [ast.literal_eval(a) for a in tree.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords
                      if k.arg is not None}
            if len(kwargs) != len(tree.keywords):
                raise ValueError("**kwargs")
        except ValueError:
            raise AppError("%s: the arguments must be literals" % spec) from None
        app = func(*args, **kwargs)
    else:
        app = _resolve(tree, namespace, spec)
    if not callable(app):
        raise AppError("%s is not callable (got %s)" % (spec, type(app).__name__))
    return app


def _stopped_while_starting(signum: int, frame: Any) -> None:
    sys.stderr.write("yimmo-wsgi: stopped by SIGTERM before serving\n")
    sys.exit(0)  # nothing was served, nothing to drain: a clean stop


def stop_on_sigterm() -> Callable[[], None]:
    """
    Until the reactor runs and installs its own handler, SIGTERM has none, and PID 1 (a
    container's entrypoint) ignores a signal it has no handler for: a docker stop during
    a slow import would be lost and the server serve until killed.  This makes SIGTERM
    exit (0: nothing was served) while nobody else handles it; the returned function
    puts the default back, if this installed the handler.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return lambda: None  # a program of its own handles it, or cannot be helped here
    signal.signal(signal.SIGTERM, _stopped_while_starting)

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return restore
