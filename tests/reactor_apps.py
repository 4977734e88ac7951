"""
The app of tests/test_reactors.py (``reactor_apps:app``): the HTTP routes of ``apps:app``
(hello, /echo, /sleep...) and the WebSocket callbacks of ``ws_apps`` (echo), on one port.
"""

import ws_apps  # noqa: F401  (registers its WebSocket callbacks when imported)
from apps import app  # noqa: F401
