"""
The ``yimmo`` module given to applications, as yimmo-wsgi's C server does (ymo_wsgi_mod):
not installed on its own, but placed in ``sys.modules`` at start-up, before the
application is imported, so that ``import yimmo`` works in the app::

    try:
        import yimmo
    except ImportError:
        yimmo = None

    if hasattr(yimmo, "WebSocket"):
        yimmo.init_websockets(on_open, on_message, on_close)
"""

from __future__ import annotations

import sys
from types import ModuleType

from . import websockets

# The API of yimmo-wsgi's module: these names and nothing else.
API = (
    "init_websockets", "WebSocket",
    "YMO_WS_FLAG_FIN", "YMO_WS_FLAG_RSV1", "YMO_WS_FLAG_RSV2", "YMO_WS_FLAG_RSV3",
    "YMO_WS_OP_CONTINUATION", "YMO_WS_OP_TEXT", "YMO_WS_OP_BINARY",
    "YMO_WS_OP_CLOSE", "YMO_WS_OP_PING", "YMO_WS_OP_PONG",
)


def install() -> ModuleType:
    """Put the ``yimmo`` module into ``sys.modules`` (idempotent); return it."""
    existing = sys.modules.get("yimmo")
    if existing is not None and getattr(existing, "__yimmo_twisted__", False):
        return existing
    module = ModuleType("yimmo", "The yimmo-twisted server's API for applications "
                                 "(WebSockets), as yimmo-wsgi's.")
    setattr(module, "__yimmo_twisted__", True)  # noqa: B010 (a marker of ours)
    for name in API:
        setattr(module, name, getattr(websockets, name))
    sys.modules["yimmo"] = module
    return module
