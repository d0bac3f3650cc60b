"""Phase `workers`: JSON chat requests/s with `[server] workers = 1` and `= 2`, side by side.

Rule: one nginx (the `bench-json` upstream) and two gateways in front of it, started
together: one with `workers = 1`, pinned to the gateway CPU as in the `gateway` phase, and one
with `workers = 2`, not pinned (its two workers may use every CPU the harness was given;
nginx and wrk stay on the load CPU, so on a two-CPU machine the second worker shares that
CPU with them). wrk at concurrency 16 runs against direct nginx, then each gateway, run by
run, so drift hits all three alike.
"""

from __future__ import annotations

import contextlib
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
from bench.wrkrun import run_wrk, summarize

CONCURRENCY = 16
COUNTS = (1, 2)


def wait_all_workers(gateway: Proc, workers: int, timeout_s: float = 60.0) -> None:
    """Poll `/healthz` on fresh connections until every worker has answered once."""
    if workers == 1:
        return
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=5, limits=limits) as client:
        while len(seen) < workers:
            if time.monotonic() > deadline or gateway.popen.poll() is not None:
                raise RuntimeError(f"not every worker answered:\n{gateway.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                seen.add(client.get(f"http://127.0.0.1:{gateway.port}/healthz").json()["worker"])


@contextlib.contextmanager
def open_gateways(out: Path, nofile: tuple[int, int],
                  cpus: set[int]) -> Iterator[dict[str, Proc]]:
    """nginx plus one gateway per worker count (`gateway-1`, `gateway-2`); all stopped after.

    The several-worker gateway is given all of `cpus` (the harness itself runs pinned to the
    load CPU, and a child would inherit that)."""
    gw_cpu, load_cpu = procs.cpu_plan()
    work, logs = out / "work-workers", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    started: dict[str, Proc] = {}
    try:
        json_port, sse_port = procs.free_port(), procs.free_port()
        conf = work / "nginx.conf"
        conf.write_text(procs.nginx_conf(work, json_port, sse_port))
        nginx = procs.find_tool("nginx") or "nginx"
        started["nginx"] = procs.spawn(
            "nginx-workers",
            [nginx, "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)],
            load_cpu, json_port, logs,
        )
        procs.wait_port(started["nginx"])
        for count in COUNTS:
            name = f"gateway-{count}"
            port = procs.free_port()
            config = work / f"{name}.toml"
            config.write_text(procs.gateway_config(
                work, port, {"nginx-json": json_port}, name=name,
            ).replace("[server]\n", f"[server]\nworkers = {count}\n", 1))
            argv = [sys.executable, "-m", "geniehive", "serve", "--config", str(config)]
            if count > 1:
                every = ",".join(str(cpu) for cpu in sorted(cpus))
                argv = [procs.find_tool("taskset") or "taskset", "-c", every, *argv]
            started[name] = procs.spawn(
                name, argv, gw_cpu if count == 1 else None, port, logs,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, nofile=nofile,
            )
        for count in COUNTS:
            gateway = started[f"gateway-{count}"]
            procs.wait_ready(gateway, models=(("bench-json", False),))
            wait_all_workers(gateway, count)
        yield started
    finally:
        for proc in reversed(list(started.values())):
            procs.stop(proc)


def measure(out: Path, runs: int, duration_s: int, warmup_s: int,
            nofile: tuple[int, int], cpus: set[int]) -> dict[str, Any]:
    """Requests/s of JSON chat at c=16: direct, 1 worker, 2 workers; medians over `runs`."""
    _, load_cpu = procs.cpu_plan()
    with open_gateways(out, nofile, cpus) as started:
        targets = {"direct": started["nginx"].port,
                   **{f"workers={c}": started[f"gateway-{c}"].port for c in COUNTS}}
        if warmup_s:
            for count in COUNTS:
                run_wrk("json", targets[f"workers={count}"], CONCURRENCY, warmup_s, load_cpu)
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(runs):
            for name, port in targets.items():
                measured[name].append(run_wrk("json", port, CONCURRENCY, duration_s, load_cpu))
    rows = [{"target": name, "runs": found, "summary": summarize(found)}
            for name, found in measured.items()]
    one, two = (statistics.median(r["rps"] for r in measured[f"workers={c}"]) for c in COUNTS)
    for row in rows:
        print(f"  {row['target']}: {row['summary']['rps_median']:,.0f} req/s", file=sys.stderr)
    return {"concurrency": CONCURRENCY, "cpus": len(cpus),
            "rows": rows, "speedup": round(two / one, 2) if one else None}


def section(found: dict[str, Any] | None) -> list[str]:
    """The report's section; [] when the phase did not run."""
    if not found:
        return []
    out = ["## Workers (bench/workers.py)", "",
           f"JSON chat at c={found['concurrency']} through `[server] workers = 1` (pinned to "
           "the gateway CPU) and `workers = 2` (not pinned: both workers may use any of the "
           f"{found['cpus']} CPUs, nginx and wrk included), direct nginx for reference. "
           f"2 workers / 1 worker: {found['speedup']}x.", ""]
    rows = [[r["target"], r["summary"]["rps_median"], r["summary"]["p50_ms"],
             r["summary"]["p99_ms"], r["summary"]["non_2xx"] + r["summary"]["socket_errors"]]
            for r in found["rows"]]
    return out + _table(["target", "req/s", "p50 ms", "p99 ms", "errors"], rows)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(f"{c:,}" if isinstance(c, int | float) else str(c)
                                for c in row) + " |" for row in rows]
    return [*lines, ""]
