"""yimmo-twisted: a WSGI server (PEP 3333) on the Twisted reactor."""

__version__ = "0.1.0"

__all__ = ["YimmoService", "__version__"]


def __getattr__(name: str):
    # Lazy: the twistd plugin and ``python -m yimmo_twisted.proc`` import this package
    # first, and need none of the server until they run it.
    if name == "YimmoService":
        from .service import YimmoService
        return YimmoService
    raise AttributeError(name)
