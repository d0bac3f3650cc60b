"""The GenieHive performance harness: one command, side-by-side figures.

    python bench/run.py [--quick | --smoke] [--profile] [--only PHASE,...] [--out bench/results]

It starts nginx (the JSON and short-SSE upstream), a raw-socket streaming upstream
(bench/upstream.py) and `geniehive serve`, with the gateway pinned to one CPU and every
load source to the other, then measures, in one run and on the same processes:
  - chat completions, JSON and SSE, direct (wrk -> upstream) and through the gateway, at
    each concurrency, with the added latency paired run by run;
  - time to the first SSE byte, direct and through the gateway;
  - relayed SSE events per second over many concurrent streams;
  - (with --profile) where the gateway's time goes, sampled with py-spy under load;
  - the gateway's RSS with many concurrently open streams;
  - route-decision time for 10 to 10,000 services (in-process);
  - the admission queue: its cost per request with nothing waiting and to admit one of
    1,000 waiting (in-process), and a burst of 10x a hive's slots (real processes);
  - what placement adds to a decision among 1,000 services (in-process, bench/placement.py);
  - session affinity's lookup and remember per request among 100,000 sessions (in-process,
    bench/affinity.py);
  - the cold start of a real model server, by hand and through the gateway's on-demand
    start (bench/coldstart.py; not measured when the model packages are absent);
  - the failover scorecard: what a client gets when the first upstream tried fails in
    each way (bench/failover.py), and the time to a stream's first content, direct and
    through the gateway (bench/ttfb.py);
  - JSON chat requests/s with `[server] workers = 1` and `= 2` (bench/workers.py);
  - what `[tracing]` costs: a gateway with tracing off and one exporting every span, wrk
    alternating between them (bench/tracing.py);
  - the gateway's CPU and the heartbeat latency, window by window, while 1,000 simulated
    nodes heartbeat every 5 s (bench/heartbeats.py; --hb-* options).
`--only` runs some phases alone (PHASES; e.g. `--only placement,coldstart`), in the same
report without the others' sections and targets.
It writes report.json and report.md under --out and prints the Markdown. Nothing is
installed: a missing tool is reported with the command that installs it (exit 2).
Exit status: 0 measured (targets missed are reported, not failed), 1 a run broke, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `geniehive` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench import (
    affinity,
    capacity,
    coldstart,
    failover,
    heartbeats,
    placement,
    procs,
    report,
    routes,
    streams,
    tracing,
    ttfb,
    workers,
)
from bench.procs import Proc
from bench.wrkrun import WrkError, cpu_us_per_request, run_wrk, summarize


@dataclass(frozen=True)
class Plan:
    runs: int
    duration_s: int
    concurrency: tuple[int, ...]
    warmup_s: int
    event_streams: int
    events: int
    first_byte_samples: int
    held_streams: int
    route_sizes: tuple[int, ...]
    route_repeat: int
    profile_s: int
    settle_s: float  # idle time before a new body kind and the profile (see settle())
    admit_releases: int  # timed admissions of one of 1,000 waiting requests
    placement_hosts: int  # hosts of 10 services each in the placement snapshot
    coldstart_repeat: int  # cold starts each way (0: not measured)
    ttfb_samples: int = 20  # streams per target and upstream behaviour (bench/ttfb.py)
    failover_scenarios: tuple[str, ...] = ()  # the scorecard's scenarios; empty: all
    hb_nodes: int = 1000  # simulated nodes heartbeating (bench/heartbeats.py)
    hb_duration_s: float = 600  # how long they heartbeat
    hb_window_s: float = 60  # one report row per window
    tracing_rounds: int = 5  # off/on rounds per case (bench/tracing.py)
    tracing_flush_s: float = tracing.FLUSH_S  # wait for the exporter's last batch per case


PLANS = {
    "full": Plan(3, 5, (1, 16, 64), 2, 200, 200, 200, 1000, (10, 100, 1000, 10000), 5, 8, 6, 5000,
                 100, 3),
    "quick": Plan(1, 1, (1, 16, 64), 1, 200, 200, 50, 1000, (10, 100, 1000, 10000), 3, 3, 6, 2000,
                  100, 1, hb_duration_s=60, hb_window_s=15, tracing_rounds=4),
    "smoke": Plan(1, 1, (2,), 0, 10, 20, 10, 20, (10, 100), 1, 1, 0, 200, 4, 0,
                  ttfb_samples=3, failover_scenarios=failover.SMOKE, hb_nodes=20,
                  hb_duration_s=3, hb_window_s=1.5, tracing_rounds=1, tracing_flush_s=0),
}
# What --only selects: the wrk/stream phases on one gateway, the capacity burst, route
# decisions, the admission queue's decisions, placement, session affinity's lookups, the cold
# start, the failover scorecard, the time to first content, 1 worker against 2, many
# nodes' heartbeats and tracing off against on.
PHASES = ("gateway", "burst", "routes", "capacity", "placement", "affinity", "coldstart",
          "failover", "ttfb", "workers", "heartbeats", "tracing")
# The phases that run nginx, wrk or pinned processes.
NEEDS_TOOLS = {"gateway", "burst", "workers", "tracing"}


def settle(plan: Plan) -> None:
    """Let the gateway's idle upstream connections from the previous phase expire.

    The httpx pool the gateway uses today scans every pooled connection on each request, so
    64 idle connections left by a c=64 cell slow the next cell for their keep-alive expiry
    (httpx's default, 5 s). Waiting longer than that keeps one cell from skewing the next;
    the `chat_after_streams` figure measures that effect on purpose.
    """
    time.sleep(plan.settle_s)


def measure_chat(stack: dict[str, Proc], plan: Plan, cpu: int) -> tuple[list, list]:
    """wrk direct and through the gateway, interleaved run by run so drift hits both."""
    gateway = stack["gateway"].port
    watch = (stack["gateway"].pid, procs.cpu_plan()[0])
    direct = {"json": stack["nginx"].port, "sse": stack["nginx_sse"].port}
    if plan.warmup_s:
        for kind in direct:
            run_wrk(kind, gateway, 16, plan.warmup_s, cpu)
    cells: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
    for kind, direct_port in direct.items():
        settle(plan)
        for conc in plan.concurrency:
            pairs = []
            for _ in range(plan.runs):
                pairs.append((run_wrk(kind, direct_port, conc, plan.duration_s, cpu),
                              run_wrk(kind, gateway, conc, plan.duration_s, cpu, watch)))
            for index, target in enumerate(("direct", "gateway")):
                runs = [pair[index] for pair in pairs]
                cells.append({"kind": kind, "concurrency": conc, "target": target,
                              "runs": runs, "summary": summarize(runs)})
            per_run = [round(g["p50_ms"] - d["p50_ms"], 3) for d, g in pairs]
            added.append({"kind": kind, "concurrency": conc, "per_run_ms": per_run,
                          "added_p50_ms": round(statistics.median(per_run), 3)})
            print(f"  {kind} c={conc}: gateway {cells[-1]['summary']['rps_median']:,.0f} req/s, "
                  f"direct {cells[-2]['summary']['rps_median']:,.0f} req/s", file=sys.stderr)
    return cells, added


def measure_streams(stack: dict[str, Proc], plan: Plan) -> dict[str, Any]:
    gateway = stack["gateway"].port

    async def main() -> dict[str, Any]:
        first = {
            "direct": await streams.first_byte(stack["nginx_sse"].port, "bench-sse",
                                               plan.first_byte_samples, 60),
            "gateway": await streams.first_byte(gateway, "bench-sse",
                                                plan.first_byte_samples, 60),
        }
        first["added_ms"] = round(first["gateway"]["median_ms"] - first["direct"]["median_ms"], 3)
        events = {
            "direct": await streams.relay_events(stack["stream"].port, plan.event_streams,
                                                 plan.events, 120),
        }
        watch = (stack["gateway"].pid, procs.cpu_plan()[0])
        before = procs.cpu_sample(*watch)
        events["gateway"] = await streams.relay_events(gateway, plan.event_streams, plan.events,
                                                       120)
        relayed = events["gateway"].get("events") or 0
        if relayed:  # the gateway's CPU time per relayed event, as cpu_us_per_req for wrk
            events["gateway"]["cpu_us_per_event"] = cpu_us_per_request(
                before, procs.cpu_sample(*watch), relayed)
        return {"first_byte": first, "sse_events": events}

    return trio.run(main)


def measure_held(gateway: Proc, plan: Plan) -> dict[str, Any]:
    pid = gateway.pid
    before = procs.rss_kib(pid)["VmRSS"]

    def on_held(held: int) -> dict[str, Any]:
        now = procs.rss_kib(pid)
        return {
            "rss_before_mib": round(before / 1024, 1),
            "rss_mib": round(now["VmRSS"] / 1024, 1),
            "hwm_mib": round(now["VmHWM"] / 1024, 1),
            "per_stream_kib": round((now["VmRSS"] - before) / max(held, 1), 1),
            "gateway_fds": len(os.listdir(f"/proc/{pid}/fd")),
        }

    result = trio.run(streams.hold_streams, gateway.port, plan.held_streams, 120, on_held)

    async def after() -> str:
        # The gateway must still answer once every held stream has gone.
        first = await streams.first_byte(gateway.port, "bench-sse", 3, 30)
        return "ok" if first["samples"] and not first["errors"] else f"failed: {first}"

    result["after_release"] = trio.run(after)
    return result


def measure_after(stack: dict[str, Proc], plan: Plan, cpu: int) -> dict[str, Any]:
    """JSON chat at the middle concurrency right after the relayed-events burst, while the
    upstream connections that burst opened are still pooled: a pool whose cost grows with
    its size shows it here (compare with the same cell of the matrix)."""
    conc = plan.concurrency[len(plan.concurrency) // 2]
    gateway = stack["gateway"]
    run = run_wrk("json", gateway.port, conc, plan.duration_s, cpu,
                  (gateway.pid, procs.cpu_plan()[0]))
    return {"kind": "json", "concurrency": conc, **run}


def measure_profile(stack: dict[str, Proc], plan: Plan, cpu: int, out: Path) -> dict[str, Any]:
    from bench import profile

    gateway = stack["gateway"]
    found = {}
    for kind in ("json", "sse"):
        settle(plan)
        found[kind] = profile.record(gateway.pid, kind, gateway.port, plan.profile_s, cpu, out)
    return found


def hb_settings(args: argparse.Namespace, plan: Plan) -> heartbeats.Settings:
    """The heartbeats phase's settings: the plan's, with the --hb-* options over them."""
    return heartbeats.Settings(
        nodes=args.hb_nodes or plan.hb_nodes,
        duration_s=args.hb_duration or plan.hb_duration_s,
        window_s=args.hb_window or plan.hb_window_s,
        registry_url_env=args.hb_registry_url_env, postgres=args.hb_postgres,
        keep_alive=not args.hb_new_connections,
    )


def run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    plan = PLANS[mode]
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    nofile = procs.raise_open_files()
    all_cpus = os.sched_getaffinity(0)
    gw_cpu, load_cpu = procs.cpu_plan()
    phases = args.only or PHASES
    # The harness's own clients are load too: keep them off the gateway's CPU.
    os.sched_setaffinity(0, {load_cpu})
    results: dict[str, Any] = {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": procs.machine_info(),
        "cpus": {"gateway": gw_cpu, "load": load_cpu},
        "plan": asdict(plan),
    }
    if args.only:
        results["only"] = list(phases)
    if "gateway" in phases:
        measure_gateway(results, args, plan, out, nofile, load_cpu)
    if "burst" in phases:
        print("a burst of 10x the slots through the admission queue", file=sys.stderr)
        results["capacity_burst"] = capacity.measure_burst(out, nofile)
    if "failover" in phases:
        print("the failover scorecard", file=sys.stderr)
        results["failover"] = failover.measure(out, plan.failover_scenarios)
    if "ttfb" in phases:
        print("time to first content, direct and through the gateway", file=sys.stderr)
        results["ttfb"] = ttfb.measure(out, plan.ttfb_samples)
    if "workers" in phases:
        print("JSON chat with 1 worker and with 2", file=sys.stderr)
        results["workers"] = workers.measure(out, plan.runs, plan.duration_s, plan.warmup_s,
                                             nofile, all_cpus)
    if "heartbeats" in phases:
        results["heartbeats"] = heartbeats.measure(out, hb_settings(args, plan),
                                                   (gw_cpu, load_cpu), nofile)
    if "tracing" in phases:
        print("JSON and SSE chat with tracing off and on", file=sys.stderr)
        results["tracing"] = tracing.measure(out, plan.tracing_rounds, plan.duration_s,
                                             plan.warmup_s, nofile, plan.tracing_flush_s)
    os.sched_setaffinity(0, {gw_cpu})  # the in-process timings run alone, on the quiet CPU
    # The smoke run only checks that the timing works: a few fixed loops are enough.
    loops = 20 if mode == "smoke" else None
    if "routes" in phases:
        print("route decisions", file=sys.stderr)
        results["routes"] = routes.measure(plan.route_sizes, plan.route_repeat, loops)
        results["route_growth"] = {shape: routes.growth(results["routes"], shape)
                                   for shape in routes.COLUMNS}
    if "capacity" in phases:
        print("the admission queue's decisions", file=sys.stderr)
        results["capacity"] = capacity.measure(plan.route_repeat, loops, plan.admit_releases)
    if "placement" in phases:
        print("placement in route decisions", file=sys.stderr)
        results["placement"] = placement.measure(plan.placement_hosts, plan.route_repeat, loops)
    if "affinity" in phases:
        print("session affinity's lookups", file=sys.stderr)
        results["affinity"] = affinity.measure(plan.route_repeat, loops)
    if "coldstart" in phases:
        results["coldstart"] = measure_coldstart(plan, out, all_cpus)
    os.sched_setaffinity(0, all_cpus)
    targets = report.check_targets(results)
    if args.only:  # the targets of the phases not run
        targets = [t for t in targets if t["measured"] is not None]
    results["targets"] = targets
    return results


def measure_coldstart(plan: Plan, out: Path, cpus: set[int]) -> dict[str, Any]:
    """The cold start, on every CPU the harness was given (the server is a real workload)."""
    if not plan.coldstart_repeat:
        reason = "not run in this mode (real model server starts take seconds)"
        return {"repeat": 0, "not_measured": {"by_hand": reason, "gateway": reason}}
    print(f"cold start of a real model server, {plan.coldstart_repeat}x each way",
          file=sys.stderr)
    os.sched_setaffinity(0, cpus)
    return coldstart.measure(out, plan.coldstart_repeat)


def measure_gateway(results: dict[str, Any], args: argparse.Namespace, plan: Plan, out: Path,
                    nofile: tuple[int, int], load_cpu: int) -> None:
    """The phases on one stack of nginx, the streaming upstream and the gateway."""
    print(f"starting upstreams and the gateway (logs in {out / 'logs'})", file=sys.stderr)
    with procs.open_stack(out, plan.events, nofile) as stack:
        print("chat completions (wrk)", file=sys.stderr)
        results["chat"], results["added_latency"] = measure_chat(stack, plan, load_cpu)
        if args.profile:
            # Before the streaming phases, which leave the upstream pool larger.
            print("profiling the gateway with py-spy", file=sys.stderr)
            results["profile"] = measure_profile(stack, plan, load_cpu, out)
        print("first byte and relayed SSE events", file=sys.stderr)
        settle(plan)
        results.update(measure_streams(stack, plan))
        print("chat completions again, right after the burst of streams", file=sys.stderr)
        results["chat_after_streams"] = measure_after(stack, plan, load_cpu)
        print(f"{plan.held_streams} concurrently open streams", file=sys.stderr)
        results["held_streams"] = measure_held(stack["gateway"], plan)
        results["gateway_log_problems"] = _log_problems(stack["gateway"])


def _log_problems(gateway: Proc) -> int:
    text = gateway.log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)


def phase_list(text: str) -> tuple[str, ...]:
    """`--only`'s value: known phase names, comma-separated, in the harness's order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(PHASES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(PHASES)}")
    return tuple(name for name in PHASES if name in names)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="one run of 1 s per cell")
    speed.add_argument("--smoke", action="store_true",
                       help="seconds-long sanity run (tests): tiny load, 20 held streams")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the gateway with py-spy under load")
    parser.add_argument("--only", type=phase_list, default=None, metavar="PHASE,...",
                        help=f"run only these phases, comma-separated: {', '.join(PHASES)}")
    hb = parser.add_argument_group("heartbeats phase")
    hb.add_argument("--hb-nodes", type=positive_int, default=None, metavar="N",
                    help="simulated nodes (default 1000; smoke 20)")
    hb.add_argument("--hb-duration", type=positive_float, default=None, metavar="S",
                    help="seconds of heartbeats (default 600; quick 60; smoke 3)")
    hb.add_argument("--hb-window", type=positive_float, default=None, metavar="S",
                    help="seconds per report window (default 60; quick 15; smoke 1.5)")
    hb.add_argument("--hb-registry-url-env", default=None, metavar="NAME",
                    help="the gateway's registry is the PostgreSQL URL in this environment "
                         "variable ([registry] url_env) instead of a SQLite file")
    hb.add_argument("--hb-postgres", action="store_true",
                    help="start a throwaway PostgreSQL server (tests/pgserver.py) and use it "
                         "through url_env")
    hb.add_argument("--hb-new-connections", action="store_true",
                    help="one connection per heartbeat instead of one kept per node (the "
                         "agent's)")
    parser.add_argument("--out", type=Path, default=procs.BENCH / "results",
                        help="folder for report.md, report.json, logs (default bench/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    needs_tools = NEEDS_TOOLS & set(args.only or PHASES)
    missing = procs.missing_tools(("py-spy",) if args.profile else ()) if needs_tools else []
    if missing:
        print(f"missing: {', '.join(missing)}; install with:\n{procs.install_hint(missing)}",
              file=sys.stderr)
        return 2
    try:
        results = run(args, mode)
    except (RuntimeError, WrkError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report.write_report(args.out.resolve(), results).markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
