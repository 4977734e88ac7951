"""
The ``twistd yimmo`` plugin, found by Twisted's plugin discovery.  Kept to imports and
names: every twistd run imports every plugin module.
"""

from twisted.application.service import ServiceMaker

yimmo = ServiceMaker(
    "yimmo-twisted",
    "yimmo_twisted.tap",
    "A fast, strict WSGI server (PEP 3333) with WebSockets",
    "yimmo",
)
