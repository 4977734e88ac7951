"""
Settings: one object, built from defaults < environment (``YIMMO_*``) < command line.

Every setting is declared once in ``OPTIONS``; the command line, the environment and
the documentation are generated from that table, so a limit cannot exist without its
default, its variable and its option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, List, Mapping, Optional

LOG_LEVELS = ("FATAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG", "TRACE")


class ConfigError(ValueError):
    """A setting with a value that cannot be used; the message names it and its source."""


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _size(text: str) -> int:
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    text = str(text).strip()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    value = _int(text[:-1] if scale > 1 else text) * scale
    if value < 1:
        raise ValueError("must be at least 1 byte")
    return value


def _log_level(text: str) -> str:
    level = str(text).upper()
    if level not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return level


@dataclass(frozen=True)
class Option:
    name: str  # attribute of Settings
    parse: Callable[[str], Any]
    env: Optional[str]
    flags: tuple
    help: str


OPTIONS = (
    Option("port", _port, "YIMMO_WSGI_PORT", ("-P", "--port"),
           "TCP port to listen on, all interfaces (used when no --listen is given)"),
    Option("no_threads", _positive_int, "YIMMO_WSGI_NO_THREADS", ("-t", "--no-threads"),
           "worker threads running the application"),
    Option("log_level", _log_level, "YIMMO_LOG_LEVEL", ("-l", "--log-level"),
           "one of " + ", ".join(LOG_LEVELS)),
    Option("idle_timeout", _seconds, "YIMMO_SERVER_IDLE_TIMEOUT", ("--idle-timeout",),
           "seconds a keep-alive connection may wait for its next request"),
    Option("header_timeout", _seconds, "YIMMO_HEADER_TIMEOUT", ("--header-timeout",),
           "seconds from the first byte of a request head to its end (slow clients get 408)"),
    Option("read_timeout", _seconds, "YIMMO_READ_TIMEOUT", ("--read-timeout",),
           "seconds a request body may stall between two reads (408)"),
    Option("max_request_line", _size, "YIMMO_MAX_REQUEST_LINE", ("--max-request-line",),
           "bytes of the request target (414 beyond)"),
    Option("max_header_bytes", _size, "YIMMO_MAX_HEADER_BYTES", ("--max-header-bytes",),
           "bytes of all request header fields together (431 beyond)"),
    Option("max_headers", _positive_int, "YIMMO_MAX_HEADERS", ("--max-headers",),
           "number of request header fields (431 beyond)"),
    Option("max_body_size", _size, "YIMMO_MAX_BODY_SIZE", ("--max-body-size",),
           "bytes of one request body (413 beyond)"),
    Option("input_buffer", _size, "YIMMO_INPUT_BUFFER", ("--input-buffer",),
           "request body bytes buffered before reading from the client pauses"),
    Option("output_buffer", _size, "YIMMO_OUTPUT_BUFFER", ("--output-buffer",),
           "response bytes not yet written before the application's writes wait"),
    Option("max_pipeline", _positive_int, "YIMMO_MAX_PIPELINE", ("--max-pipeline",),
           "requests of one connection queued before reading from it pauses"),
    Option("steal_after", _seconds, "YIMMO_STEAL_AFTER", ("--steal-after",),
           "seconds an exchange may run before the worker is taken to be blocked and "
           "idle workers take the exchanges queued behind it"),
    Option("linger", _seconds, "YIMMO_LINGER", ("--linger",),
           "seconds to drain a client's input after an error response before closing"),
)


@dataclass
class Settings:
    """Every setting of the server, with its default."""

    app: Optional[str] = None  # MODULE:EXPR
    listen: List[str] = field(default_factory=list)  # Twisted endpoint strings
    port: int = 8081  # as yimmo-wsgi
    no_threads: int = 4
    log_level: str = "INFO"
    idle_timeout: float = 5.0  # as yimmo-wsgi
    header_timeout: float = 10.0
    read_timeout: float = 30.0
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_body_size: int = 1 << 30
    input_buffer: int = 1 << 20
    output_buffer: int = 1 << 20
    max_pipeline: int = 32
    steal_after: float = 0.001
    linger: float = 2.0

    def endpoints(self) -> List[str]:
        return list(self.listen) or ["tcp:%d" % self.port]

    def update(self, values: Mapping[str, str], source: Callable[[Option], str]) -> None:
        """Parse and set raw values (by option name), naming ``source`` in any error."""
        for option in OPTIONS:
            if option.name in values and values[option.name] is not None:
                raw = values[option.name]
                try:
                    setattr(self, option.name, option.parse(raw))
                except (TypeError, ValueError) as e:
                    raise ConfigError("invalid %s %r from %s: %s"
                                      % (option.name, raw, source(option), e)) from None


def from_environ(environ: Mapping[str, str] = os.environ, settings: Optional[Settings] = None
                 ) -> Settings:
    settings = settings or Settings()
    values = {o.name: environ[o.env] for o in OPTIONS if o.env and o.env in environ}
    settings.update(values, lambda o: "environment variable " + o.env)
    return settings


def setting_names() -> List[str]:
    return [f.name for f in fields(Settings)]
