"""
benchmarks/h2_bench.py reads what h2load prints and logs: its summary's counts, and the
per-request times of its ``--log-file`` from which the table's percentiles come (h2load
prints none).
"""

from __future__ import annotations

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import h2_bench  # noqa: E402

SUMMARY = """\
Application protocol: h2c
Warm-up phase is over for thread #0.

finished in 5.00s, 3312.75 req/s, 119.92KB/s
requests: 13251 total, 13351 started, 13251 done, 13249 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 13249 2xx, 0 3xx, 1 4xx, 1 5xx
traffic: 479.69KB (491207) total, 91.76KB (93960) headers (space savings 94.91%), 252.55KB
"""


def test_the_summary_gives_the_rate_the_counts_and_the_protocol():
    result = h2_bench.parse_h2load(SUMMARY)
    assert result["rps"] == 3312.75
    assert result["protocol"] == "h2c"
    assert (result["done"], result["succeeded"], result["failed"], result["errored"],
            result["timeout"]) == (13251, 13249, 2, 1, 0)
    assert result["non2xx"] == 2  # 4xx and 5xx
    assert h2_bench.error_count(result) == 5


def test_percentiles_of_the_log_are_nearest_rank():
    # start time (µs since the epoch), status, µs until the end of the response
    lines = ["1796148486558673\t200\t%d\n" % (1000 * ms) for ms in range(100, 0, -1)]
    lines.append("1796148486558999\t503\t250000\n")
    lines.append("\n")  # a blank line is no request
    stats = h2_bench.latencies(lines)
    assert stats["logged"] == 101
    assert stats["log_non2xx"] == 1
    assert stats["p50_ms"] == 51.0  # the 51st of 101 in order
    assert stats["p99_ms"] == 100.0  # the 100th
    assert stats["max_ms"] == 250.0
    assert abs(stats["mean_ms"] - (5050 + 250) / 101) < 1e-9
    assert h2_bench.latencies([])["p99_ms"] is None


def test_a_percentile_of_one_value_is_that_value():
    assert h2_bench.percentile([7.0], 99) == 7.0
    assert h2_bench.percentile([1.0, 2.0], 50) == 1.0
    assert h2_bench.percentile([1.0, 2.0], 51) == 2.0
