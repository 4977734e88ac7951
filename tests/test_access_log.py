"""
The access log: the duration of each request.
"""

from __future__ import annotations

import json


# -- duration ---------------------------------------------------------------------------

def test_duration_at_the_end_of_the_combined_line(serve):
    server = serve("apps:app", "-t", "2")
    assert server.get("/sleep?t=0.2").status == 200
    assert server.get("/").status == 200
    slow = server.wait_for_output(r'"GET /sleep\?t=0\.2 HTTP/1\.1" 200 \d+ "-" "[^"]*" (\d+)\n')
    fast = server.wait_for_output(r'"GET / HTTP/1\.1" 200 14 "-" "[^"]*" (\d+)\n')
    assert 200_000 <= int(slow.group(1)) < 5_000_000
    assert int(fast.group(1)) < 200_000
    # A request the server refuses itself has no exchange to time: "-".
    assert server.exchange(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").status == 400
    server.wait_for_output(r'"-" 400 - "-" "-" -\n')


def test_duration_us_in_json(serve):
    server = serve("apps:app", "--access-log", "json")
    assert server.get("/sleep?t=0.2").status == 200
    assert server.exchange(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").status == 400
    slow = json.loads(server.wait_for_output(r'\{[^\n]*"target":"/sleep\?t=0.2"[^\n]*\}').group(0))
    refused = json.loads(server.wait_for_output(r'\{[^\n]*"status":400[^\n]*\}').group(0))
    assert 200_000 <= slow["duration_us"] < 5_000_000 and slow["bytes"] > 0
    assert refused["duration_us"] is None
    assert "websocket" not in slow  # only WebSocket lines say so
