"""
A PROXY protocol connection that never sends its header falls under header_timeout and
the drain.
"""

from __future__ import annotations

import signal
import time

import rawhttp
from test_startup import LOCAL

PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n"


# -- PROXY protocol: a connection waiting for its header ---------------------------------

def test_proxy_header_falls_under_header_timeout(serve):
    server = serve("apps:environ_app", "--header-timeout", "1", "--listen", "haproxy:" + LOCAL,
                   listen=False)
    with server.connect() as silent, server.connect() as partial:
        partial.send(PROXY_V1[:20])  # half a v1 line, never finished
        started = time.monotonic()
        assert silent.closed(2.5) and partial.closed(2.5)
        assert time.monotonic() - started < 2.5
    with server.connect() as c:  # one that sends its header is served as before
        c.send(PROXY_V1 + rawhttp.request())
        assert c.read_response().json()["REMOTE_ADDR"] == "203.0.113.7"


def test_sigterm_closes_a_connection_waiting_for_its_proxy_header(serve):
    server = serve("proc_apps:slow", "--grace", "30", "--listen", "haproxy:" + LOCAL,
                   listen=False)
    with server.connect() as stalled, server.connect() as busy:
        busy.send(PROXY_V1 + rawhttp.request("GET", "/?s=2"))  # in flight during the drain
        with server.connect() as c:
            c.send(PROXY_V1 + rawhttp.request("GET", "/?s=0", {"Connection": "close"}))
            assert c.read_response().body.split()[3] == b"203.0.113.7"
        assert stalled.is_open()
        server.signal(signal.SIGTERM)
        stopped = time.monotonic()
        # Closed as an idle connection is, not once the request in flight is done.
        assert stalled.closed(1)
        assert busy.read_response().status == 200
        assert server.wait_exit(5) == 0
        assert time.monotonic() - stopped < 4  # the drain did not wait its grace
    assert "drain over" not in server.output()
