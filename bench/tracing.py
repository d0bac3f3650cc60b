"""Phase `tracing`: what `[tracing]` costs a request, the same gateway with tracing off and on.

Rule: one nginx (the `bench-json` and `bench-sse` upstreams) and an OTLP/HTTP sink
(bench/otlpsink.py, answers 200 and counts the spans) on the load CPU, and two gateways, both
pinned to the gateway CPU: `off` (no `[tracing]`) and `on` (`sample_ratio = 1.0`, every
request's spans exported to the sink). Only one of them is under load at a time. For each
case (JSON chat at c=1 and c=16, SSE at c=16) wrk runs off and on alternately for a few
rounds, the order flipped every round (off-on, on-off, ...), so drift and order hit both
alike.

The exporter batches (512 spans, or every 5 s) in a thread of the gateway, so part of a run's
export work may happen after it: a case's CPU µs per request is the gateway's whole CPU time
over the case (its rounds, then 5.5 s for the last batch) divided by the requests wrk saw
answered, and the sink's span count, read once the `on` gateway has stopped (which flushes
it), shows the export happened.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.procs import Proc
from bench.wrkrun import cpu_us_per_request, run_wrk, summarize

CASES = (("json", 1), ("json", 16), ("sse", 16))
MODES = ("off", "on")
FLUSH_S = 5.5  # the batch processor's schedule delay (5 s), and a margin
SPANS_PER_REQUEST = 3  # the request's server span, its route decision and its attempt
NEEDS = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def missing_extra() -> str | None:
    """Why the phase cannot run here (the OpenTelemetry packages absent), else None."""
    try:
        found = all(importlib.util.find_spec(name) for name in NEEDS)
    except ModuleNotFoundError:  # a parent package is absent
        found = False
    return None if found else "needs the OpenTelemetry packages: pip install -e '.[tracing]'"


@contextlib.contextmanager
def open_gateways(out: Path, nofile: tuple[int, int]) -> Iterator[dict[str, Proc]]:
    """nginx, the sink and the two gateways (`off`, `on`); all stopped after."""
    gw_cpu, load_cpu = procs.cpu_plan()
    work, logs = out / "work-tracing", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    started: dict[str, Proc] = {}
    try:
        json_port, sse_port, sink_port = (procs.free_port() for _ in range(3))
        conf = work / "nginx.conf"
        conf.write_text(procs.nginx_conf(work, json_port, sse_port))
        nginx = procs.find_tool("nginx") or "nginx"
        started["nginx"] = procs.spawn(
            "nginx-tracing",
            [nginx, "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)],
            load_cpu, json_port, logs,
        )
        started["sink"] = procs.spawn(
            "otlpsink", [sys.executable, "-m", "bench.otlpsink", "--port", str(sink_port)],
            load_cpu, sink_port, logs,
        )
        for name in ("nginx", "sink"):
            procs.wait_port(started[name])
        tracing = (f'[tracing]\notlp_endpoint = "http://127.0.0.1:{sink_port}"\n'
                   'service_name = "geniehive-bench"\nsample_ratio = 1.0\n')
        upstreams = {"nginx-json": json_port, "nginx-sse": sse_port}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for mode in MODES:
            name, port = f"tracing-{mode}", procs.free_port()
            config = work / f"{name}.toml"
            config.write_text(procs.gateway_config(
                work, port, upstreams, name=name, extra=tracing if mode == "on" else "",
            ))
            started[mode] = procs.spawn(
                name, [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
                gw_cpu, port, logs, env=env, nofile=nofile,
            )
        for mode in MODES:
            procs.wait_ready(started[mode], models=(("bench-json", False), ("bench-sse", True)))
        yield started
    finally:
        for proc in reversed(list(started.values())):
            procs.stop(proc)


def sink_stats(sink: Proc) -> dict[str, int]:
    with httpx.Client(timeout=10) as client:
        stats: dict[str, int] = client.get(f"http://127.0.0.1:{sink.port}/stats").json()
        return stats


def measure_case(started: dict[str, Proc], kind: str, conc: int, rounds: int,
                 duration_s: int, flush_s: float) -> dict[str, Any]:
    """One case's alternated rounds: per-run figures, then the case's CPU per request."""
    gw_cpu, load_cpu = procs.cpu_plan()
    watch = {mode: (started[mode].pid, gw_cpu) for mode in MODES}
    before = {mode: procs.cpu_sample(*watch[mode]) for mode in MODES}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for index in range(rounds):
        for mode in MODES if index % 2 == 0 else reversed(MODES):
            runs[mode].append(run_wrk(kind, started[mode].port, conc, duration_s, load_cpu,
                                      watch[mode]))
    time.sleep(flush_s)  # the on gateway's last batch is exported within its schedule delay
    after = {mode: procs.cpu_sample(*watch[mode]) for mode in MODES}
    found: dict[str, Any] = {"kind": kind, "concurrency": conc}
    for mode in MODES:
        served = sum(r["requests"] for r in runs[mode])
        found[mode] = {"runs": runs[mode], "summary": summarize(runs[mode]), "requests": served,
                       "cpu_us_per_req": cpu_us_per_request(before[mode], after[mode], served)}
    per_round = [round(on["p50_ms"] - off["p50_ms"], 3)
                 for off, on in zip(runs["off"], runs["on"], strict=True)]
    found["added_p50_per_round_ms"] = per_round
    found["added_p50_ms"] = round(statistics.median(per_round), 3)
    return found


def measure(out: Path, rounds: int, duration_s: int, warmup_s: int,
            nofile: tuple[int, int], flush_s: float = FLUSH_S) -> dict[str, Any]:
    """Each case off and on, alternated; the spans the sink received."""
    missing = missing_extra()
    if missing is not None:
        return {"not_measured": missing}
    _, load_cpu = procs.cpu_plan()
    with open_gateways(out, nofile) as started:
        if warmup_s:
            for kind in ("json", "sse"):
                for mode in MODES:
                    run_wrk(kind, started[mode].port, 16, warmup_s, load_cpu)
        cases = []
        for kind, conc in CASES:
            case = measure_case(started, kind, conc, rounds, duration_s, flush_s)
            cases.append(case)
            off, on = case["off"], case["on"]
            print(f"  {kind} c={conc}: off {off['summary']['rps_median']:,.0f} req/s, "
                  f"{off['cpu_us_per_req']} CPU µs/req; on {on['summary']['rps_median']:,.0f} "
                  f"req/s, {on['cpu_us_per_req']} CPU µs/req", file=sys.stderr)
        procs.stop(started["on"])  # flushes what its exporter still holds
        sink = sink_stats(started["sink"])
    served = sum(case["on"]["requests"] for case in cases)
    return {"rounds": rounds, "duration_s": duration_s, "cases": cases, "sink": sink,
            "on_requests": served,
            "spans_per_request": round(sink["spans"] / served, 2) if served else None}


def ratio(on: float | None, off: float | None) -> float | None:
    return round(on / off, 2) if on is not None and off else None


def rows(found: dict[str, Any]) -> list[list[Any]]:
    """One row per case: req/s, added p50 and CPU µs/req off and on."""
    table = []
    for case in found["cases"]:
        off, on = case["off"], case["on"]
        off_rps, on_rps = off["summary"]["rps_median"], on["summary"]["rps_median"]
        off_cpu, on_cpu = off["cpu_us_per_req"], on["cpu_us_per_req"]
        table.append([
            f"{case['kind']} c={case['concurrency']}", f"{off_rps:,.0f}", f"{on_rps:,.0f}",
            ratio(on_rps, off_rps), off["summary"]["p50_ms"], on["summary"]["p50_ms"],
            case["added_p50_ms"], off_cpu, on_cpu,
            round(on_cpu - off_cpu, 1) if on_cpu is not None and off_cpu is not None else "-",
            ratio(on_cpu, off_cpu),
        ])
    return table


HEAD = ["case", "req/s off", "req/s on", "on/off", "p50 ms off", "p50 ms on",
        "added p50 ms", "CPU µs/req off", "on", "on-off", "on/off"]


def section(found: dict[str, Any] | None) -> list[str]:
    """The report's section; [] when the phase did not run."""
    if not found:
        return []
    out = ["## Tracing: what it costs (bench/tracing.py)", ""]
    if "not_measured" in found:
        return [*out, f"Not measured: {found['not_measured']}.", ""]
    sink = found["sink"]
    out += [f"Two gateways on the gateway CPU, one with `[tracing]` off and one exporting "
            f"every request's spans (`sample_ratio = 1.0`) over OTLP/HTTP to a sink on the "
            f"load CPU; wrk alternates between them, {found['rounds']} round(s) of "
            f"{found['duration_s']} s each per case. req/s and p50: medians of the runs; "
            "added p50: on - off, paired round by round (median); CPU µs/req: the gateway's "
            "CPU time over the whole case (the exporter's thread included) per request "
            "answered.", ""]
    out += _table(HEAD, rows(found))
    out += [f"The sink received {sink['spans']:,} spans in {sink['posts']:,} posts "
            f"({sink['bytes'] / 1e6:,.1f} MB) for {found['on_requests']:,} requests wrk saw "
            f"answered by the `on` gateway: {found['spans_per_request']} per request "
            f"({SPANS_PER_REQUEST} expected: the request, its route decision, its attempt; "
            "the warm-up and readiness requests add a few).", ""]
    return out


def _table(head: list[str], body: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |"
              for row in body]
    return [*lines, ""]
