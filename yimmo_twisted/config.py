"""
Settings: one object, built from defaults < YAML file < environment (``YIMMO_*``) <
command line (or the keywords of ``YimmoService``), with yimmo-wsgi's names.

Every setting is declared once in ``OPTIONS``: its parser, its environment variable, its
command-line flags and its place in the YAML file.  The ``yimmo-wsgi`` options, the
``twistd yimmo`` options, the ``YimmoService`` keywords and the documentation are all
generated from that table, so a setting cannot exist in one door and not in another.

A value that cannot be used stops start-up with a ``ConfigError`` whose one-line message
names the setting and where the value came from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .forwarded import DEFAULT as FORWARDED_DEFAULT
from .forwarded import Trusted

PROXY_PREFIX = "haproxy:"
# Endpoint types that listen with a ``backlog=`` (systemd's sockets come listening).
BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")

LOG_LEVELS = ("FATAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG", "TRACE")
ACCESS_LOG_FORMATS = ("combined", "json", "off")
TIMEOUT_ACTIONS = ("log", "recycle")


class ConfigError(ValueError):
    """A setting with a value that cannot be used; the message names it and its source."""


# -- parsers: raw value (str from env/CLI, or a YAML scalar) -> value ----------------------

def _int(raw: Any) -> int:
    if isinstance(raw, bool):  # YAML's yes/no: not a number
        raise ValueError("expected a whole number")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _positive_int(raw: Any) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(raw: Any) -> int:
    value = _int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _seconds(raw: Any) -> float:
    try:
        value = float(str(raw))
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _size(raw: Any) -> int:
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    text = str(raw).strip()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    value = _int(text[:-1] if scale > 1 else text) * scale
    if value < 1:
        raise ValueError("must be at least 1 byte")
    return value


def _count(raw: Any) -> int:
    """A whole number, 0 for off."""
    value = _int(raw)
    if value < 0:
        raise ValueError("must be 0 (off) or more")
    return value


def _size_or_off(raw: Any) -> int:
    """A byte count as _size takes it, or 0 (or off) for no limit."""
    if raw is False or str(raw).strip().lower() in ("0", "off"):
        return 0
    return _size(raw)


def _choice(choices: Tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if raw is False:  # YAML reads a bare ``off`` as false
            raw = "off"
        value = str(raw).strip()
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ValueError("must be one of " + ", ".join(choices))
    return parse


def _file(raw: Any) -> str:
    path = os.path.expanduser(str(raw))
    if not os.path.isfile(path):
        raise ValueError("no such file")
    if not os.access(path, os.R_OK):
        raise ValueError("file not readable")
    return path


def _log_file(raw: Any) -> str:
    """A file to append to, made absolute: it is reopened after twistd's chdir to its
    rundir, and in server processes (whether it can be opened: ``check``)."""
    text = str(raw).strip()
    if not text:
        raise ValueError("must not be empty")
    return os.path.abspath(os.path.expanduser(text))


def open_log_file(path: str) -> int:
    """A descriptor appending to ``path`` (created if need be); ConfigError if it cannot be
    opened.  O_APPEND: the processes sharing the file each write at its end."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise ConfigError("cannot open access_log_file %s for appending: %s"
                          % (path, e.strerror)) from None


def _text(raw: Any) -> str:
    value = str(raw).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _endpoints(raw: Any) -> List[str]:
    """Endpoint strings: a YAML list, or one string (whitespace separates several)."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split()
    if not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError("expected Twisted endpoint strings such as tcp:8081")
    return [i.strip() for i in items]


def _endpoint_or_off(raw: Any) -> Optional[str]:
    """One endpoint string, or off (None)."""
    text = str(raw).strip()
    if text.lower() in ("", "off", "0", "no", "false"):
        return None
    if text.startswith(PROXY_PREFIX):
        raise ValueError("the metrics endpoint takes no PROXY protocol")
    from .compat import parse_endpoint  # here: compat imports Twisted and autobahn

    try:
        parse_endpoint(text)
    except ValueError as e:
        raise ValueError("not an endpoint string: %s" % e) from None
    return text


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "on", "yes", "true"):
        return True
    if text in ("0", "off", "no", "false"):
        return False
    raise ValueError("expected on or off")


def _seconds_or_off(raw: Any) -> float:
    """Seconds, or 0 (or off) for never."""
    if raw is False or str(raw).strip().lower() == "off":
        return 0.0
    try:
        value = float(str(raw))
    except ValueError:
        raise ValueError("expected a number of seconds, or 0 for off") from None
    if not 0 <= value < float("inf"):
        raise ValueError("must be 0 (off) or a positive number of seconds")
    return value


def _allow_ips(raw: Any) -> List[str]:
    """IP addresses, networks, unix or *, as forwarded.Trusted takes them."""
    items = _names(raw)
    Trusted(items)  # raises ValueError naming a bad entry
    return items


def _names(raw: Any) -> List[str]:
    """Names: a YAML list, or one string (commas or whitespace separate several)."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).replace(",", " ").split()
    return [str(i).strip() for i in items if str(i).strip()]


def _paths(raw: Any) -> List[str]:
    """Files or folders, as _names takes them, made absolute: the manager that watches
    them for reload may run elsewhere (twistd's chdir to its rundir)."""
    return [os.path.abspath(os.path.expanduser(p)) for p in _names(raw)]


@dataclass(frozen=True)
class Option:
    name: str  # attribute of Settings
    parse: Callable[[Any], Any]
    env: Optional[str]
    flags: Tuple[str, ...]  # command line; the long one also names the twistd option
    yaml: Tuple[str, ...]  # the key's path in the YAML file (and the YimmoService keyword)
    help: str
    metavar: str = "N"
    repeat: bool = False  # a command-line option given once per value
    switch: bool = False  # a command-line option without a value: given, it turns on

    @property
    def long(self) -> str:
        return self.flags[-1][2:]

    @property
    def short(self) -> Optional[str]:
        return self.flags[0][1:] if len(self.flags) > 1 else None

    @property
    def key(self) -> str:
        return ".".join(self.yaml)


def _w(*path: str) -> Tuple[str, ...]:
    return ("wsgi",) + path


OPTIONS = (
    Option("config", _file, "YIMMO_WSGI_CONFIG", ("-c", "--config"), (),
           "YAML configuration file (the lowest of the three sources)", "FILE"),
    Option("module", _text, "YIMMO_WSGI_MODULE", (), _w("module"),
           "module of the application (with the app setting, instead of MODULE:APP)"),
    Option("app", _text, "YIMMO_WSGI_APP", ("-a", "--app"), _w("app"),
           'the application: MODULE:APP, or APP with the module setting', "MODULE:APP"),
    Option("listen", _endpoints, "YIMMO_WSGI_LISTEN", ("--listen",), _w("listen"),
           "Twisted endpoint string to listen on: tcp:, tcp6:, ssl:, unix:, systemd:, "
           "haproxy:... (repeatable; replaces --port)", "ENDPOINT", repeat=True),
    Option("port", _port, "YIMMO_WSGI_PORT", ("-P", "--port"), _w("port"),
           "TCP port to listen on, all interfaces (used when no --listen is given)"),
    Option("backlog", _positive_int, "YIMMO_WSGI_BACKLOG", ("--backlog",), _w("backlog"),
           "connections the kernel queues on each listening socket until they are accepted "
           "(capped by net.core.somaxconn; an endpoint's own backlog= wins)"),
    Option("no_proc", _positive_int, "YIMMO_WSGI_NO_PROC", ("-p", "--no-proc"), _w("no_proc"),
           "server processes; above 1 a manager process shares the sockets among them"),
    Option("no_threads", _positive_int, "YIMMO_WSGI_NO_THREADS", ("-t", "--no-threads"),
           _w("no_threads"), "worker threads running the application, per process"),
    Option("log_level", _choice(LOG_LEVELS), "YIMMO_LOG_LEVEL", ("-l", "--log-level"),
           ("log_level",), "one of " + ", ".join(LOG_LEVELS), "LEVEL"),
    Option("access_log", _choice(ACCESS_LOG_FORMATS), "YIMMO_ACCESS_LOG", ("--access-log",),
           _w("access_log"), "access log format: " + ", ".join(ACCESS_LOG_FORMATS), "FORMAT"),
    Option("access_log_file", _log_file, "YIMMO_ACCESS_LOG_FILE", ("--access-log-file",),
           _w("access_log_file"), "file the access log is appended to, by every server "
           "process, instead of stdout; reopened on SIGUSR1 (rotate: rename, then SIGUSR1)",
           "FILE"),
    Option("metrics_listen", _endpoint_or_off, "YIMMO_METRICS_LISTEN", ("--metrics-listen",),
           _w("metrics", "listen"), "endpoint serving Prometheus metrics at /metrics (off, or "
           "e.g. tcp:9100:interface=127.0.0.1); never the app's; with several server "
           "processes the manager serves their sum (needs the metrics extra: "
           "pip install yimmo-twisted[metrics])", "ENDPOINT"),
    Option("tls_cert", _file, "YIMMO_TLS_CERT_PATH", ("--tls-cert",), _w("tls", "cert"),
           "PEM certificate (chain): with --tls-key, --port serves HTTPS", "FILE"),
    Option("tls_key", _file, "YIMMO_TLS_KEY_PATH", ("--tls-key",), _w("tls", "key"),
           "PEM private key of --tls-cert", "FILE"),
    Option("forwarded_allow_ips", _allow_ips, "YIMMO_FORWARDED_ALLOW_IPS",
           ("--forwarded-allow-ips",), _w("forwarded_allow_ips"),
           "peers whose X-Forwarded-For/-Proto/-Host/-Port and Forwarded headers set "
           "REMOTE_ADDR, the scheme and the host: IP addresses, networks (10.0.0.0/8), "
           "unix (Unix-socket clients), * (any); others' are passed on, never trusted",
           "IPS"),
    Option("grace", _seconds, "YIMMO_WSGI_GRACE", ("--grace",), _w("grace"),
           "seconds in-flight requests may take to finish on SIGTERM/SIGINT/SIGHUP"),
    Option("idle_timeout", _seconds, "YIMMO_SERVER_IDLE_TIMEOUT", ("--idle-timeout",),
           _w("idle_timeout"), "seconds a keep-alive connection may wait for its next request"),
    Option("header_timeout", _seconds, "YIMMO_HEADER_TIMEOUT", ("--header-timeout",),
           _w("header_timeout"),
           "seconds from the first byte of a request head to its end (slow clients get 408)"),
    Option("read_timeout", _seconds, "YIMMO_READ_TIMEOUT", ("--read-timeout",),
           _w("read_timeout"), "seconds a request body may stall between two reads (408)"),
    Option("send_timeout", _seconds, "YIMMO_SEND_TIMEOUT", ("--send-timeout",),
           _w("send_timeout"), "seconds a response may wait for its client to read any of "
           "it; then the connection is closed (the app writing it gets ClientDisconnected)"),
    Option("max_request_line", _size, "YIMMO_MAX_REQUEST_LINE", ("--max-request-line",),
           _w("max_request_line"), "bytes of the request target (414 beyond)"),
    Option("max_header_bytes", _size, "YIMMO_MAX_HEADER_BYTES", ("--max-header-bytes",),
           _w("max_header_bytes"), "bytes of all request header fields together (431 beyond)"),
    Option("max_headers", _positive_int, "YIMMO_MAX_HEADERS", ("--max-headers",),
           _w("max_headers"), "number of request header fields (431 beyond)"),
    Option("max_body_size", _size, "YIMMO_MAX_BODY_SIZE", ("--max-body-size",),
           _w("max_body_size"), "bytes of one request body (413 beyond)"),
    Option("input_buffer", _size, "YIMMO_INPUT_BUFFER", ("--input-buffer",),
           _w("input_buffer"), "request body bytes buffered before reading from the client pauses"),
    Option("output_buffer", _size, "YIMMO_OUTPUT_BUFFER", ("--output-buffer",),
           _w("output_buffer"),
           "response bytes not yet written before the application's writes wait"),
    Option("max_pipeline", _positive_int, "YIMMO_MAX_PIPELINE", ("--max-pipeline",),
           _w("max_pipeline"), "requests of one connection queued before reading from it pauses"),
    Option("steal_after", _seconds, "YIMMO_STEAL_AFTER", ("--steal-after",), _w("steal_after"),
           "seconds an exchange may run before the worker is taken to be blocked and "
           "idle workers take the exchanges queued behind it"),
    Option("linger", _seconds, "YIMMO_LINGER", ("--linger",), _w("linger"),
           "seconds to drain a client's input after an error response before closing"),
    Option("start_failures", _positive_int, "YIMMO_WSGI_START_FAILURES", ("--start-failures",),
           _w("start_failures"), "server processes dying at start-up in a row before the "
           "manager gives up (exit 1)"),
    Option("ready_timeout", _seconds, "YIMMO_WSGI_READY_TIMEOUT", ("--ready-timeout",),
           _w("ready_timeout"), "seconds a new server process may take to import the app and "
           "listen"),
    # Recycling (recycle.py): a server process past a limit is replaced as on SIGHUP.
    Option("max_requests", _count, "YIMMO_WSGI_MAX_REQUESTS", ("--max-requests",),
           _w("max_requests"), "requests a server process serves before it is replaced "
           "(0: never; any limit runs a manager, even with one process)"),
    Option("max_requests_jitter", _count, "YIMMO_WSGI_MAX_REQUESTS_JITTER",
           ("--max-requests-jitter",), _w("max_requests_jitter"),
           "0 to N requests added at random to max_requests in each server process, so that "
           "they are not all replaced at once"),
    Option("max_lifetime", _seconds_or_off, "YIMMO_WSGI_MAX_LIFETIME", ("--max-lifetime",),
           _w("max_lifetime"), "seconds a server process lives before it is replaced (0: "
           "forever)"),
    Option("max_rss", _size_or_off, "YIMMO_WSGI_MAX_RSS", ("--max-rss",), _w("max_rss"),
           "resident memory, in bytes, past which a server process is replaced (checked "
           "every 2 s; 0: no limit)", "BYTES"),
    Option("request_timeout", _seconds_or_off, "YIMMO_WSGI_REQUEST_TIMEOUT",
           ("--request-timeout",), _w("request_timeout"), "seconds a request may run before "
           "it is logged as hung, with its thread's stack (0: never)"),
    Option("timeout_action", _choice(TIMEOUT_ACTIONS), "YIMMO_WSGI_TIMEOUT_ACTION",
           ("--timeout-action",), _w("timeout_action"), "past request_timeout: log, or "
           "recycle (also replace the process; the hung request has grace to finish, then "
           "its process is killed)", "ACTION"),
    # Development (reload.py): the manager replaces its server processes on code changes.
    Option("reload", _flag, "YIMMO_WSGI_RELOAD", ("--reload",), _w("reload"),
           "for development: replace the server processes when the app's modules (or "
           "reload_paths) change, as SIGHUP does (needs watchfiles)", "", switch=True),
    Option("reload_paths", _paths, "YIMMO_WSGI_RELOAD_PATHS", ("--reload-paths",),
           _w("reload_paths"), "more files or folders whose changes reload, with reload "
           "(commas or spaces separate several)", "PATHS"),
    # HTTP/2 (http2.py); the timeouts, max_body_size and the buffers hold for its streams too.
    Option("http2", _flag, "YIMMO_HTTP2", ("--http2",), _w("http2", "enabled"),
           "offer HTTP/2 by ALPN (h2, then http/1.1) on TLS endpoints (on/off)", "ON|OFF"),
    Option("http2_cleartext", _flag, "YIMMO_HTTP2_CLEARTEXT", ("--http2-cleartext",),
           _w("http2", "cleartext"),
           "with http2, also accept HTTP/2 by prior knowledge (h2c, no Upgrade) on plain "
           "endpoints (on/off)", "ON|OFF"),
    Option("http2_max_concurrent_streams", _positive_int, "YIMMO_HTTP2_MAX_CONCURRENT_STREAMS",
           ("--http2-max-concurrent-streams",), _w("http2", "max_concurrent_streams"),
           "HTTP/2 streams one connection may have open at once (more: REFUSED_STREAM)"),
    Option("http2_max_header_list_size", _size, "YIMMO_HTTP2_MAX_HEADER_LIST_SIZE",
           ("--http2-max-header-list-size",), _w("http2", "max_header_list_size"),
           "bytes of one HTTP/2 request's decoded header list, as RFC 9113 counts them "
           "(more: the connection ends)"),
    Option("http2_max_resets", _positive_int, "YIMMO_HTTP2_MAX_RESETS", ("--http2-max-resets",),
           _w("http2", "max_resets"),
           "HTTP/2 streams a client may reset in 30 s on one connection, against rapid "
           "reset floods (more: GOAWAY ENHANCE_YOUR_CALM)"),
    Option("http2_max_control_frames", _positive_int, "YIMMO_HTTP2_MAX_CONTROL_FRAMES",
           ("--http2-max-control-frames",), _w("http2", "max_control_frames"),
           "PING, SETTINGS, PRIORITY and empty DATA frames a client may send in 30 s on one "
           "HTTP/2 connection, against floods of them (more: GOAWAY ENHANCE_YOUR_CALM)"),
    Option("http2_max_running_streams", _count, "YIMMO_HTTP2_MAX_RUNNING_STREAMS",
           ("--http2-max-running-streams",), _w("http2", "max_running_streams"),
           "HTTP/2 streams of one connection given to the workers at once (running or "
           "queued for one); the others wait their turn on the connection, so that one "
           "connection cannot queue its hundred streams ahead of everyone (0: no_threads)"),
    # WebSockets (websockets.py); input_buffer and output_buffer bound their queues too.
    Option("ws_max_message_size", _size, "YIMMO_WS_MAX_MESSAGE_SIZE",
           ("--ws-max-message-size",), _w("websockets", "max_message_size"),
           "bytes of one WebSocket message, received or sent (larger: close 1009)"),
    Option("ws_max_frame_size", _size, "YIMMO_WS_MAX_FRAME_SIZE", ("--ws-max-frame-size",),
           _w("websockets", "max_frame_size"),
           "bytes of one received WebSocket frame (larger: close 1009)"),
    Option("ws_compression", _flag, "YIMMO_WS_COMPRESSION", ("--ws-compression",),
           _w("websockets", "compression"),
           "accept permessage-deflate when the client offers it (on/off)", "ON|OFF"),
    Option("ws_ping_interval", _seconds_or_off, "YIMMO_WS_PING_INTERVAL",
           ("--ws-ping-interval",), _w("websockets", "ping_interval"),
           "seconds between the server's pings on a WebSocket (0: no pings; autobahn's "
           "timers count whole seconds)"),
    Option("ws_ping_timeout", _seconds_or_off, "YIMMO_WS_PING_TIMEOUT",
           ("--ws-ping-timeout",), _w("websockets", "ping_timeout"),
           "seconds to wait for the pong before dropping the connection (0: wait forever)"),
    Option("ws_send_timeout", _seconds, "YIMMO_WS_SEND_TIMEOUT", ("--ws-send-timeout",),
           _w("websockets", "send_timeout"),
           "seconds ws.send may wait for a client that does not read (then TimeoutError)"),
    Option("ws_origins", _names, "YIMMO_WS_ORIGINS", ("--ws-origins",),
           _w("websockets", "origins"),
           "allowed Origin patterns of WebSocket handshakes, e.g. https://*.example.com "
           "(* allows any; others are refused with 403)", "PATTERNS"),
    Option("ws_subprotocols", _names, "YIMMO_WS_SUBPROTOCOLS", ("--ws-subprotocols",),
           _w("websockets", "subprotocols"),
           "subprotocols the server speaks, preferred first: the first one the client "
           "offers is chosen (on_open may choose another)", "NAMES"),
)

BY_NAME = {o.name: o for o in OPTIONS}


def show_default(option: Option) -> str:
    """The default of ``option`` as one would give it: ``off``, ``30``, ``1G``, ``*``."""
    value = getattr(Settings(), option.name)
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, float):
        return "%g" % value
    if option.parse is _size:
        for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % scale == 0:
                return "%d%s" % (value // scale, suffix)
    return str(value)


def help_text(option: Option) -> str:
    """The help of ``option`` in both doors' --help: what, default, env, YAML key."""
    return "%s (default %s; env %s; YAML %s)" % (option.help, show_default(option), option.env,
                                                 option.key or "-")


@dataclass
class Settings:
    """Every setting of the server, with its default."""

    config: Optional[str] = None
    module: Optional[str] = None
    app: Optional[str] = None  # MODULE:EXPR, or EXPR with ``module``
    listen: List[str] = field(default_factory=list)  # Twisted endpoint strings
    port: int = 8081  # as yimmo-wsgi
    # gunicorn's: Twisted's 50 overflows in a burst of connections, which then wait for
    # the 1 s SYN retransmit.
    backlog: int = 2048
    no_proc: int = 1
    no_threads: int = 4
    log_level: str = "INFO"
    access_log: str = "combined"
    access_log_file: Optional[str] = None  # None: stdout
    metrics_listen: Optional[str] = None  # None: off
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    forwarded_allow_ips: List[str] = field(default_factory=lambda: list(FORWARDED_DEFAULT))
    grace: float = 30.0
    idle_timeout: float = 5.0  # as yimmo-wsgi
    header_timeout: float = 10.0
    read_timeout: float = 30.0
    send_timeout: float = 60.0  # nginx's
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_body_size: int = 1 << 30
    input_buffer: int = 1 << 20
    output_buffer: int = 1 << 20
    max_pipeline: int = 32
    steal_after: float = 0.001
    linger: float = 2.0
    start_failures: int = 5
    ready_timeout: float = 60.0
    max_requests: int = 0  # 0: off, as the other limits below
    max_requests_jitter: int = 0
    max_lifetime: float = 0.0
    max_rss: int = 0
    request_timeout: float = 0.0
    timeout_action: str = "log"
    reload: bool = False
    reload_paths: List[str] = field(default_factory=list)
    http2: bool = True
    http2_cleartext: bool = False  # gunicorn's name; prior knowledge only
    http2_max_concurrent_streams: int = 100  # RFC 9113's recommended minimum, nginx's 128
    http2_max_header_list_size: int = 65536  # as max_header_bytes
    http2_max_resets: int = 200  # Netty's: 200 in 30 s
    http2_max_control_frames: int = 10000  # some 330 a second: gRPC's pings stay far below
    http2_max_running_streams: int = 0  # no_threads
    ws_max_message_size: int = 16 << 20
    ws_max_frame_size: int = 16 << 20
    ws_compression: bool = False
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_send_timeout: float = 30.0
    ws_origins: List[str] = field(default_factory=lambda: ["*"])
    ws_subprotocols: List[str] = field(default_factory=list)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def app_spec(self) -> Optional[str]:
        """MODULE:EXPR: ``app`` when it names its module, else ``module`` + ``app``."""
        if self.app and ":" in self.app:
            return self.app
        if self.module:
            return "%s:%s" % (self.module, self.app or "app")
        return self.app

    @property
    def recycles(self) -> bool:
        """A limit replaces server processes: a manager runs them, even just one."""
        return bool(self.max_requests or self.max_lifetime or self.max_rss
                    or (self.request_timeout and self.timeout_action == "recycle"))

    @property
    def managed(self) -> bool:
        """A manager runs server processes (proc.py), rather than one process serving."""
        return self.no_proc > 1 or self.recycles or self.reload  # reload replaces them

    def endpoints(self) -> List[str]:
        """
        The endpoint strings to listen on: ``listen``, else ``port`` (TLS if configured),
        with the ``backlog`` setting where it applies and the string names none.
        """
        if self.listen:
            descriptions = list(self.listen)
        elif self.tls:
            assert self.tls_cert is not None and self.tls_key is not None  # check(): both
            descriptions = ["ssl:%d:privateKey=%s:certKey=%s"
                            % (self.port, _quote(self.tls_key), _quote(self.tls_cert))]
        else:
            descriptions = ["tcp:%d" % self.port]
        return [_with_backlog(d, self.backlog) for d in descriptions]

    def set(self, name: str, raw: Any, source: str) -> None:
        """Parse and set one raw value; ``source`` says where it came from, for errors."""
        try:
            setattr(self, name, BY_NAME[name].parse(raw))
        except (TypeError, ValueError) as e:
            raise ConfigError("invalid %s %r (%s): %s" % (name, raw, source, e)) from None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        return cls(**values)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def split_endpoint(description: str) -> Tuple[bool, str]:
    """(PROXY protocol?, the endpoint beneath): ``haproxy:tcp:80`` -> (True, ``tcp:80``)."""
    if description.startswith(PROXY_PREFIX):
        return True, description[len(PROXY_PREFIX):]
    return False, description


def _with_backlog(description: str, backlog: int) -> str:
    from .compat import parse_endpoint  # here: compat imports Twisted and autobahn

    args, keywords = parse_endpoint(split_endpoint(description)[1])
    if not args or args[0] not in BACKLOG_TYPES or "backlog" in keywords:
        return description
    return "%s:backlog=%d" % (description, backlog)


# -- the three sources -------------------------------------------------------------------

def apply_yaml(settings: Settings, data: Any, source: str) -> None:
    """Set what a YAML document (or YimmoService's keywords, in the same shape) holds."""
    by_path = {o.yaml: o for o in OPTIONS if o.yaml}
    branches = {o.yaml[:i] for o in OPTIONS for i in range(1, len(o.yaml))}

    def walk(node: Any, path: Tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            raise ConfigError("%s in %s must be a mapping" % (".".join(path) or "the document",
                                                             source))
        for key, value in node.items():
            here = path + (str(key),)
            if here in by_path:
                if value is not None:
                    settings.set(by_path[here].name, value, "%s in %s" % (".".join(here), source))
            elif here in branches:
                walk(value, here)
            else:
                raise ConfigError("unknown setting %s in %s" % (".".join(here), source))

    if data is not None:
        walk(data, ())


def load_yaml(settings: Settings, path: str, source: str) -> None:
    import yaml

    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("cannot read config file %s (%s): %s"
                          % (path, source, e.strerror)) from None
    except yaml.YAMLError as e:
        raise ConfigError("config file %s is not valid YAML: %s"
                          % (path, " ".join(str(e).split()))) from None
    apply_yaml(settings, data, "config file " + path)


def build(overrides: Mapping[str, Any], override_source: Callable[[Option], str],
          environ: Mapping[str, str] = os.environ, yaml_overrides: Any = None,
          yaml_source: str = "", need_app: bool = True) -> Settings:
    """
    The settings: defaults < YAML file < environment < ``overrides`` (raw values by
    setting name, e.g. parsed from the command line; None means not given).
    ``yaml_overrides`` is a mapping in the YAML file's shape applied last (the keywords of
    YimmoService).  The file is named by ``config`` in the overrides or the environment.
    """
    settings = Settings()
    path_source: Optional[str] = None
    if overrides.get("config") is not None:
        path_source = override_source(BY_NAME["config"])
        settings.set("config", overrides["config"], path_source)
    elif isinstance(yaml_overrides, Mapping) and yaml_overrides.get("config") is not None:
        path_source = yaml_source
        settings.set("config", yaml_overrides["config"], path_source)
    elif environ.get("YIMMO_WSGI_CONFIG"):
        path_source = "environment variable YIMMO_WSGI_CONFIG"
        settings.set("config", environ["YIMMO_WSGI_CONFIG"], path_source)
    if settings.config:
        assert path_source is not None  # set with config, above
        load_yaml(settings, settings.config, path_source)
    for option in OPTIONS:
        if option.env and option.env in environ and option.name != "config":
            settings.set(option.name, environ[option.env], "environment variable " + option.env)
    for option in OPTIONS:
        raw = overrides.get(option.name)
        if raw is not None and raw != [] and option.name != "config":
            settings.set(option.name, raw, override_source(option))
    if yaml_overrides:
        rest = {k: v for k, v in yaml_overrides.items() if k != "config"}
        apply_yaml(settings, rest, yaml_source)
    check(settings, need_app)
    return settings


def check(settings: Settings, need_app: bool = True) -> None:
    """Rules across settings."""
    if settings.access_log_file is not None and settings.access_log != "off":
        # Here, for one line at start-up whichever door: the manager writes no access
        # log, its server processes open the file only once started.
        os.close(open_log_file(settings.access_log_file))
    if settings.metrics_listen is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigError("metrics_listen needs prometheus-client: pip install "
                              "'yimmo-twisted[metrics]'") from None
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("TLS needs both tls_cert and tls_key (YIMMO_TLS_CERT_PATH, "
                          "YIMMO_TLS_KEY_PATH, wsgi.tls.cert/key)")
    if settings.reload:
        try:
            import watchfiles  # noqa: F401  (here: one line at start-up, whichever door)
        except ImportError:
            raise ConfigError("reload needs watchfiles: pip install "
                              "'yimmo-twisted[reload]'") from None
    spec = settings.app_spec
    if not need_app:
        return
    if not spec:
        raise ConfigError("no application given: WSGI_MODULE:WSGI_APP, or YIMMO_WSGI_MODULE "
                          "and YIMMO_WSGI_APP")
    if ":" not in spec:
        raise ConfigError("invalid application %r: expected MODULE:APP (or the module "
                          "setting, YIMMO_WSGI_MODULE)" % spec)
