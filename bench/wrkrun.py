"""Running wrk and reading the summary line its Lua `done()` prints (bench/wrk/common.lua).

Rule: one wrk thread pinned to the load CPU; a run that prints no summary is an error, not
a zero, so a broken setup never reads as a slow gateway.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from typing import Any

from bench.procs import BENCH, cpu_sample, cpu_shares, find_tool

SCRIPTS = {"json": BENCH / "wrk" / "chat_json.lua", "sse": BENCH / "wrk" / "chat_sse.lua"}
MARK = "WRKJSON "


class WrkError(RuntimeError):
    """wrk exited without its summary line."""


def run_wrk(kind: str, port: int, connections: int, duration_s: int, cpu: int,
            watch: tuple[int, int] | None = None) -> dict[str, Any]:
    """One wrk run against 127.0.0.1:port; requests/s, latency in ms and error counts.

    `watch` = (gateway pid, gateway CPU): also report the CPU shares on that CPU and the
    gateway's CPU time per request served (see cpu_us_per_request).
    """
    argv = [
        find_tool("taskset") or "taskset", "-c", str(cpu), find_tool("wrk") or "wrk",
        "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s", "--latency",
        "-s", str(SCRIPTS[kind]), f"http://127.0.0.1:{port}/v1/chat/completions",
    ]
    before = cpu_sample(*watch) if watch else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60,
                          check=False)
    after = cpu_sample(*watch) if watch else None
    shares = cpu_shares(before, after) if before and after else {}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise WrkError(f"wrk exited {done.returncode}: {done.stdout[-500:]}{done.stderr[-500:]}")
    raw = json.loads(line[len(MARK):])
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    errors = raw["errors"]
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": round(latency["p50"] / 1000, 3),
        "p90_ms": round(latency["p90"] / 1000, 3),
        "p99_ms": round(latency["p99"] / 1000, 3),
        "max_ms": round(latency["max"] / 1000, 3),
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "errors": dict(errors),
        **shares,
        **({"cpu_us_per_req": cpu_us_per_request(before, after, raw["requests"])}
           if before and after else {}),
    }


TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_us_per_request(before: tuple, after: tuple, requests: int) -> float | None:
    """The gateway process's CPU time (utime + stime, /proc/<pid>/stat) between two
    cpu_sample()s divided by the requests wrk saw answered, in µs.

    Rule: this is the figure least disturbed by other work on a shared machine (it counts
    only the gateway's own time, not the wall clock); its resolution is one clock tick
    (10 ms) over the whole cell, so about 10 µs at 1,000 requests. No requests: None.
    """
    if requests <= 0:
        return None
    return round((after[1] - before[1]) / TICKS_PER_S * 1e6 / requests, 1)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max requests/s, median p50/p99 and total errors over repeated runs."""
    rps = [r["rps"] for r in runs]
    shares = {key: round(statistics.median(r[key] for r in runs), 1)
              for key in ("gateway_cpu_pct", "irq_cpu_pct", "others_cpu_pct", "steal_cpu_pct",
                          "cpu_us_per_req")
              if runs[0].get(key) is not None}
    return {
        **shares,
        "rps_median": round(statistics.median(rps), 1),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
    }
