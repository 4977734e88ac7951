"""yimmo-twisted: a WSGI server (PEP 3333) on the Twisted reactor."""

__version__ = "0.1.0"
