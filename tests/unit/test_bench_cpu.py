"""The harness's CPU time per request (bench/wrkrun.py)."""

from __future__ import annotations

from bench.wrkrun import TICKS_PER_S, cpu_us_per_request, summarize


def test_cpu_per_request_is_process_ticks_over_requests() -> None:
    before = (0.0, 1_000, 0, 0, 0, 0)
    after = (1.0, 1_000 + TICKS_PER_S // 2, 0, 0, 0, 0)  # half a second of CPU
    assert cpu_us_per_request(before, after, 1_000) == 500.0


def test_cpu_per_request_without_requests_is_unknown() -> None:
    sample = (0.0, 5, 0, 0, 0, 0)
    assert cpu_us_per_request(sample, sample, 0) is None


def test_summary_keeps_the_median_cpu_per_request() -> None:
    run = {"rps": 1.0, "p50_ms": 1.0, "p99_ms": 2.0, "non_2xx": 0, "socket_errors": 0}
    runs = [{**run, "cpu_us_per_req": v} for v in (900.0, 500.0, 700.0)]
    assert summarize(runs)["cpu_us_per_req"] == 700.0
