"""The benchmark report: target checks, the Markdown rendering, and the files on disk.

Rule: every figure in the Markdown comes from the results dictionary, so report.json and
report.md never disagree; a target whose figure is missing reads "n/a", never "ok". This
module is the only one that writes or reads the two files: `write_report` and `read_report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import failover, heartbeats, tracing, ttfb, workers

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"


class ReportError(ValueError):
    """A report folder whose files are missing, unreadable or disagree with each other."""


@dataclass(frozen=True)
class Report:
    results: dict[str, Any]
    markdown: str


def write_report(folder: Path, results: dict[str, Any]) -> Report:
    """Write report.json and report.md (rendered from the same results) into `folder`."""
    report = Report(results, render(results))
    (folder / JSON_NAME).write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / MARKDOWN_NAME).write_text(report.markdown + "\n", encoding="utf-8")
    return report


def read_report(folder: Path) -> Report:
    """Read a report folder written by `write_report`.

    Raises ReportError when a file is missing or not a report, or when report.md is not the
    rendering of report.json (one of them was edited or comes from another run).
    """
    try:
        results = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
        markdown = (folder / MARKDOWN_NAME).read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{folder}: cannot read the report: {exc}") from exc
    if not isinstance(results, dict):
        raise ReportError(f"{folder / JSON_NAME}: not a results object")
    try:
        expected = render(results)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{folder / JSON_NAME}: not a benchmark report ({exc!r})") from exc
    if markdown != expected:
        raise ReportError(f"{folder / MARKDOWN_NAME} is not the rendering of {JSON_NAME}")
    return Report(results, markdown)


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _target(name: str, value: float | None, limit: float, higher_is_better: bool,
            unit: str, kind: str = "target") -> dict[str, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        ok = None
    else:
        ok = value >= limit if higher_is_better else value <= limit
    sign = "≥" if higher_is_better else "≤"
    return {"name": name, "kind": kind, "goal": f"{sign} {limit:g} {unit}", "measured": value,
            "unit": unit, "ok": ok}


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The product's performance targets and aims, each with its measured figure."""
    chat = results.get("chat", [])
    added = results.get("added_latency", [])
    checks = []
    json16 = _find(chat, kind="json", concurrency=16, target="gateway")
    add1 = _find(added, kind="json", concurrency=1)
    rps16 = json16["summary"]["rps_median"] if json16 else None
    added1 = add1["added_p50_ms"] if add1 else None
    checks.append(_target("JSON chat req/s at concurrency 16", rps16, 800, True, "req/s"))
    checks.append(_target("added median latency, JSON, concurrency 1", added1, 1.0, False, "ms"))
    at64 = [r for r in chat if r["target"] == "gateway" and r["concurrency"] == 64]
    errors64 = (sum(r["summary"]["non_2xx"] + r["summary"]["socket_errors"] for r in at64)
                if at64 else None)
    checks.append(_target("errors at concurrency 64 (JSON and SSE)", errors64, 0, False,
                          "errors"))
    held = results.get("held_streams") or {}
    checks.append(_target(f"errors with {held.get('streams', '?')} open streams",
                          held.get("errors"), 0, False, "errors"))
    checks.append(_target(f"gateway RSS with {held.get('streams', '?')} open streams",
                          held.get("rss_mib"), 250, False, "MiB"))
    checks.append(_target("JSON chat req/s at concurrency 16", rps16, 1200, True, "req/s", "aim"))
    checks.append(_target("added median latency, JSON, concurrency 1", added1, 0.7, False, "ms",
                          "aim"))
    json1 = _find(chat, kind="json", concurrency=1, target="gateway")
    checks.append(_target("p99 latency, JSON, concurrency 1",
                          json1["summary"]["p99_ms"] if json1 else None, 3, False, "ms", "aim"))
    events = (results.get("sse_events") or {}).get("gateway") or {}
    checks.append(_target("relayed SSE events/s", events.get("events_per_s"), 5000, True,
                          "events/s", "aim"))
    routes = {row["services"]: row for row in results.get("routes", [])}
    r1000 = routes.get(1000) or {}
    for suffix, how in (("", "router alone"), ("_live", "live counters")):
        checks.append(_target(f"route decision, ≤ 10 of 1,000 services, direct ({how})",
                              r1000.get(f"direct10{suffix}_us"), 100, False, "µs"))
        checks.append(_target(f"route decision, 10 of 1,000 services, role gate ({how})",
                              r1000.get(f"role_gated{suffix}_us"), 100, False, "µs"))
        checks.append(_target(f"route decision, all 1,000 services candidates ({how})",
                              r1000.get(f"role_all{suffix}_us"), 1000, False, "µs"))
    checks.append(_target("route decision, all 1,000 services candidates (live counters, "
                          "a request started and one finished between decisions)",
                          r1000.get("role_all_live_churn_us"), 1000, False, "µs"))
    # Growth is judged on the gateway's own way of deciding (live counters, idle and under
    # traffic); the router-alone columns re-read every runtime and are reported beside them.
    growth = results.get("route_growth") or {}
    for shape in ("direct10_live", "role_gated_live", "role_all_live", "role_all_live_churn"):
        checks.append(_target(f"route time growth per 10x services ({shape})",
                              growth.get(shape), 10, False, "x (10 = linear)"))
    checks += _capacity_targets(results)
    aff = results.get("affinity") or {}
    checks.append(_target("session affinity, lookup and remember at 100,000 sessions (hit)",
                          aff.get("hit_us"), 5, False, "µs"))
    checks.append(_target("session affinity, lookup and remember at 100,000 sessions (miss)",
                          aff.get("miss_us"), 5, False, "µs"))
    checks += _failover_targets(results)
    checks += _heartbeat_targets(results)
    return checks


def _heartbeat_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    hb = results.get("heartbeats") or {}
    summary = hb.get("summary") or {}
    nodes = f"{hb['nodes']:,} nodes" if "nodes" in hb else "nodes"
    return [
        _target(f"heartbeats of {nodes}: gateway CPU per 100 nodes (worst window)",
                summary.get("cpu_per_100_nodes_worst_pct"), heartbeats.TARGET_CPU_PER_100,
                False, "% of a core"),
        _target(f"heartbeats of {nodes}: p99 latency, last window / first",
                summary.get("p99_ratio"), heartbeats.FLAT_P99, False, "x"),
        _target(f"heartbeats of {nodes}: gateway CPU, last window / first",
                summary.get("cpu_ratio"), heartbeats.FLAT_CPU, False, "x"),
        _target(f"heartbeats of {nodes}: beats failed or skipped", summary.get("errors"), 0,
                False, "beats"),
    ]


def _failover_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    card = results.get("failover") or {}
    checks = [_target("failover scorecard: outcomes other than expected",
                      card.get("unexpected"), 0, False, "scenarios")]
    plain, held = ((results.get("ttfb") or {}).get(kind) or {} for kind in ("plain", "preamble"))
    extra = None
    if plain.get("added_first_content_ms") is not None and \
            held.get("added_first_content_ms") is not None:
        extra = round(held["added_first_content_ms"] - plain["added_first_content_ms"], 3)
    checks.append(_target("first content after a preamble: added delay beyond the plain "
                          "stream's", extra, 1, False, "ms", "aim"))
    return checks


def _capacity_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    cap = results.get("capacity") or {}
    checks = []
    for count in (1, 3, 50):
        both = [v for v in (cap.get(f"idle_{count}_us"), cap.get(f"idle_{count}_rpm_us"))
                if v is not None]
        worst = max(both) if len(both) == 2 else None
        checks.append(_target(f"admission with nothing waiting, {count} candidate(s)", worst,
                              20, False, "µs"))
    checks.append(_target("admitting one of 1,000 waiting over 50 services (median)",
                          cap.get("admit_median_us"), 100, False, "µs"))
    checks.append(_target("admitting one of 1,000 waiting over 50 services (p99)",
                          cap.get("admit_p99_us"), 100, False, "µs", "aim"))
    for row in results.get("capacity_burst") or [{"queue": "?", "problems": None}]:
        problems = row.get("problems")
        checks.append(_target(f"burst of 10x the slots, {row['queue']}: lost, over-slot or "
                              "unexplained answers", None if problems is None else len(problems),
                              0, False, "problems"))
    return checks


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    plan = results["plan"]
    out = [
        "# GenieHive performance report", "",
        f"Command: `{results['command']}` (mode {results['mode']}, {results['started']})", "",
        f"Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"Linux {machine['kernel']}; {machine['wrk']}; {machine['nginx']}; "
        f"revision {machine['revision']}.", "",
    ]
    if results.get("only"):
        out += [f"Phases run: {', '.join(results['only'])} (`--only`); the others' sections "
                "and targets are left out.", ""]
    if "chat" in results:
        out += [f"CPUs: gateway on CPU {results['cpus']['gateway']}; nginx, the streaming "
                f"upstream, wrk and the harness's clients on CPU {results['cpus']['load']}. "
                f"Each chat cell: {plan['runs']} run(s) of {plan['duration_s']} s, one wrk "
                "thread.", ""]
    problems = results.get("gateway_log_problems")
    if problems:
        out += [f"**Warning:** the gateway logged {problems} error line(s); see logs/gateway.log.",
                ""]
    busy = [row["summary"].get("others_cpu_pct", 0) + row["summary"].get("steal_cpu_pct", 0)
            for row in results.get("chat", []) if row["target"] == "gateway"]
    if busy and max(busy) > 15:
        out += [f"**Warning:** other processes or the hypervisor (steal) took up to "
                f"{max(busy):.0f} % of the gateway's CPU during some runs; the gateway figures "
                "are lower than on a quiet machine.", ""]
    if results["targets"]:
        out += ["## Targets", ""]
        rows = []
        for check in results["targets"]:
            verdict = {True: "ok", False: "MISSED", None: "n/a"}[check["ok"]]
            rows.append([check["kind"], check["name"], check["goal"],
                         _fmt(check["measured"]), verdict])
        out += _table(["", "what", "goal", "measured", "verdict"], rows)
    if "chat" in results:
        out += _chat_section(results)
        out += _stream_section(results)
    if "routes" in results:
        out += _route_section(results)
    out += _capacity_section(results)
    out += _placement_section(results)
    out += _affinity_section(results)
    out += _coldstart_section(results)
    out += failover.section(results.get("failover"))
    out += ttfb.section(results.get("ttfb"), results.get("first_byte"))
    out += workers.section(results.get("workers"))
    out += heartbeats.section(results.get("heartbeats"))
    out += tracing.section(results.get("tracing"))
    if results.get("profile"):
        out += _profile_section(results["profile"])
    return "\n".join(out)


def _chat_section(results: dict[str, Any]) -> list[str]:
    out = ["## Chat completions (wrk)", "",
           "req/s: median (min-max) over the runs; latency: median over the runs of wrk's "
           "percentiles; errors: non-2xx / socket errors summed over the runs.", ""]
    rows = []
    for row in results["chat"]:
        s = row["summary"]
        rows.append([row["kind"], row["concurrency"], row["target"],
                     f"{s['rps_median']:,.0f} ({s['rps_min']:,.0f}-{s['rps_max']:,.0f})",
                     s["p50_ms"], s["p99_ms"], f"{s['non_2xx']} / {s['socket_errors']}",
                     s.get("gateway_cpu_pct", "-"), s.get("irq_cpu_pct", "-"),
                     s.get("others_cpu_pct", "-"), s.get("steal_cpu_pct", "-"),
                     s.get("cpu_us_per_req", "-")])
    out += ["CPU columns: shares of the gateway's CPU during the gateway runs: the gateway "
            "process, interrupts (mostly its own loopback traffic), other processes, steal; "
            "CPU µs/req: the gateway process's CPU time (utime + stime) per request served, "
            "the figure other work on the machine disturbs least.", ""]
    out += _table(["body", "conc.", "target", "req/s", "p50 ms", "p99 ms", "errors",
                   "gateway %", "irq %", "others %", "steal %", "CPU µs/req"], rows)
    after = results.get("chat_after_streams")
    if after:
        out += [f"Again right after the burst of relayed streams ({after['kind']}, concurrency "
                f"{after['concurrency']}, one run): {after['rps']:,.0f} req/s, p50 "
                f"{_fmt(after['p50_ms'], 3)} ms, p99 {_fmt(after['p99_ms'], 3)} ms, errors "
                f"{after['non_2xx']} / {after['socket_errors']}, gateway CPU "
                f"{_fmt(after.get('gateway_cpu_pct'), 1)} %, "
                f"{_fmt(after.get('cpu_us_per_req'), 1)} CPU µs/req.", ""]
    out += ["Added latency (gateway p50 - direct p50, paired within each run; median of runs):",
            ""]
    out += _table(["body", "conc.", "added p50 ms", "per run"],
                  [[a["kind"], a["concurrency"], a["added_p50_ms"],
                    ", ".join(f"{v:.3f}" for v in a["per_run_ms"])]
                   for a in results["added_latency"]])
    return out


def _stream_section(results: dict[str, Any]) -> list[str]:
    out = ["## Streaming", ""]
    events = results.get("sse_events") or {}
    rows = [[target, e.get("streams"), e.get("events_per_stream"), e.get("events"),
             e.get("seconds"), e.get("events_per_s"), e.get("errors"),
             e.get("cpu_us_per_event", "-")]
            for target, e in events.items()]
    out += ["Relayed SSE events (concurrent streams, each event written separately upstream):",
            ""]
    out += _table(["target", "streams", "events each", "events", "s", "events/s", "errors",
                   "CPU µs/event"], rows)
    first = results.get("first_byte") or {}
    out += ["Time to first SSE byte (sequential, one keep-alive connection):", ""]
    out += _table(["target", "samples", "median ms", "p90 ms", "errors"],
                  [[t, f.get("samples"), f.get("median_ms"), f.get("p90_ms"), f.get("errors")]
                   for t, f in first.items() if isinstance(f, dict)])
    if "added_ms" in first:
        out += [f"Added first-byte delay: {_fmt(first['added_ms'], 3)} ms.", ""]
    held = results.get("held_streams") or {}
    if held:
        out += ["Concurrent open streams (the upstream sends one event, then holds each open):",
                ""]
        out += _table(
            ["streams", "held", "errors", "open s", "RSS before MiB", "RSS held MiB",
             "peak MiB", "per stream KiB", "gateway fds", "after release"],
            [[held.get("streams"), held.get("held"), held.get("errors"),
              held.get("open_seconds"), held.get("rss_before_mib"), held.get("rss_mib"),
              held.get("hwm_mib"), held.get("per_stream_kib"), held.get("gateway_fds"),
              held.get("after_release", "n/a")]],
        )
        if held.get("error"):
            out += [f"Note: {held['error']}", ""]
    return out


def _route_section(results: dict[str, Any]) -> list[str]:
    out = ["## Route decisions (`routing.resolve`, median µs per decision)", "",
           "direct10: a model served by 10 services; role_gated: a role whose trust-tier gate "
           "leaves 10; role_all: a role every service passes. Plain columns time the router "
           "with precomputed runtime values, every one looked up per decision; *live* columns "
           "read them from `LiveState` (a full window of 100 measurements per service) as the "
           "gateway does, looking up only those that changed since the previous decision; "
           "*churn*: role_all live with one request started and one finished between "
           "decisions.", ""]
    rows = [[r["services"], r["snapshot_build_ms"], r["direct10_us"], r["role_gated_us"],
             r["role_all_us"], r.get("direct10_live_us"), r.get("role_gated_live_us"),
             r.get("role_all_live_us"), r.get("role_all_live_churn_us")]
            for r in results.get("routes", [])]
    out += _table(["services", "snapshot build ms", "direct10", "role_gated", "role_all",
                   "direct10 live", "role_gated live", "role_all live", "role_all churn"], rows)
    growth = results.get("route_growth") or {}
    if growth:
        out += ["Worst growth per 10x services (10 = linear): " + ", ".join(
            f"{shape} {_fmt(value)}" for shape, value in growth.items()), ""]
    return out


def _capacity_section(results: dict[str, Any]) -> list[str]:
    cap = results.get("capacity")
    if not cap:
        return []
    out = ["## The admission queue (geniehive/capacity.py)", "",
           "Nothing waiting: one request's place, ticket, slot taken and given back, median µs "
           "(a named key with max_in_flight, weight and priority; *with rpm*: also a "
           "requests-per-minute limit).", ""]
    out += _table(["candidates", "µs", "µs with rpm"],
                  [[n, cap.get(f"idle_{n}_us"), cap.get(f"idle_{n}_rpm_us")] for n in (1, 3, 50)])
    out += [f"Admitting one of {cap['waiting']:,} waiting requests over {cap['services']} full "
            f"services ({cap['keys']} keys, three classes, each request wanting 3 services), "
            f"{cap['releases']:,} releases timed one by one: median "
            f"{_fmt(cap['admit_median_us'])} µs, p99 {_fmt(cap['admit_p99_us'])} µs, max "
            f"{_fmt(cap['admit_max_us'])} µs.", ""]
    bursts = results.get("capacity_burst") or []
    if bursts:
        out += ["A burst of 10x the slots at once (two upstreams with max_in_flight each, "
                "`geniehive serve`, real sockets):", ""]
        out += _table(
            ["queue", "max_queue", "sent", "answered", "200", "429 (with Retry-After)",
             "most at once per upstream", "slots", "queued ms median / max", "s", "problems"],
            [[b["queue"], b["max_queue"], b["sent"], b["answered"], b["ok"],
              f"{b['refused_429']} ({b['refused_with_retry_after']})",
              ", ".join(str(m) for m in b["max_active"]), b["slots_per_upstream"],
              f"{_fmt(b['queued_median_ms'], 1)} / {_fmt(b['queued_max_ms'], 1)}",
              b["seconds"], "; ".join(b["problems"]) or "none"] for b in bursts])
    return out


def _profile_section(profile: dict[str, Any]) -> list[str]:
    out = ["## Profile (py-spy, gateway under wrk c=16)", ""]
    for kind, ranking in profile.items():
        if "error" in ranking:
            out += [f"{kind}: {ranking['error']}", ""]
            continue
        out += [f"### {kind}: {ranking['samples']} samples "
                f"({_fmt(ranking.get('rps_while_sampled'), 0)} req/s while sampled)", "",
                "By package (own time): " + ", ".join(
                    f"{p['name']} {p['pct']}%" for p in ranking["packages"][:10]), ""]
        out += _table(["own %", "function"],
                      [[p["pct"], f"`{p['name']}`"] for p in ranking["self"][:12]])
        out += _table(["inclusive %", "geniehive function"],
                      [[p["pct"], f"`{p['name']}`"] for p in ranking["inclusive_geniehive"][:12]])
    return out


def _placement_section(results: dict[str, Any]) -> list[str]:
    row = results.get("placement")
    if not row:
        return []
    classes = list(row["mixed_classes"])
    out = [f"## Placement in route decisions ({row['services']:,} services, bench/placement.py)",
           "",
           "One model on every service; hosts with room, crowded hosts, hosts capped at one "
           "loaded model, and hosts too small for it. *mixed*: loaded and not loaded assets "
           "as below; *warm*: the same snapshot with every asset's loaded state unknown. "
           "*churn*: one service's runtime replaced between decisions (its candidate and "
           "placement rebuilt, the pool re-sorted). Median µs per decision.", ""]
    out += _table(["snapshot", "candidates", *classes, "µs", "µs churn"],
                  [[v, row[f"{v}_candidates"], *(row[f"{v}_classes"][k] for k in classes),
                    row[f"{v}_us"], row[f"{v}_churn_us"]] for v in ("mixed", "warm")])
    out += [f"Placement adds {_fmt(row['added_us'])} µs per decision idle (mixed/warm "
            f"{_fmt(row['ratio'])}x) and {_fmt(row['added_churn_us'])} µs under churn "
            f"({_fmt(row['ratio_churn'])}x).", ""]
    place = row["place_ns"]
    out += ["`place()` alone, median ns per call: " + ", ".join(
        f"{name} {_fmt(value, 1)}" for name, value in place.items()) + ".", ""]
    return out


def _affinity_section(results: dict[str, Any]) -> list[str]:
    row = results.get("affinity")
    if not row:
        return []
    out = [f"## Session affinity ({row['sessions']:,} sessions, bench/affinity.py)", "",
           "A request's lookup of where its session went last and, once answered, the "
           "session remembered again (geniehive/affinity.py), sessions taken at random. "
           "Median µs per request.", ""]
    out += _table(["sessions remembered", "hit µs", "miss µs"],
                  [[row["remembered"], row["hit_us"], row["miss_us"]]])
    return out


def _coldstart_section(results: dict[str, Any]) -> list[str]:
    cold = results.get("coldstart")
    if not cold:
        return []
    out = [f"## Cold start of a real model server (bench/coldstart.py, median of "
           f"{cold['repeat']})", ""]
    hand, gateway = cold.get("by_hand"), cold.get("gateway")
    rows = []
    if hand:
        rows.append(["by hand (spawn, /health, request)", hand["answer_ms_median"],
                     hand["healthy_ms_median"], "-", "-", hand["warm_ms_median"]])
    if gateway:
        rows.append(["through the gateway (on-demand start)", gateway["answer_ms_median"], "-",
                     ", ".join(str(load) for load in gateway["loads"]),
                     gateway["load_ms_median"], gateway["warm_ms_median"]])
    if rows:
        out += [f"Chat completion of max_tokens {cold['max_tokens']}, from nothing running to "
                "the whole answer; then a second request (warm).", ""]
        out += _table(["way", "cold answer ms", "healthy ms", "X-GenieHive-Load",
                       "X-GenieHive-Load-Ms", "warm answer ms"], rows)
    if "ratio" in cold:
        out += [f"Gateway / by hand, cold: {_fmt(cold['ratio'])}x.", ""]
    for part, reason in cold.get("not_measured", {}).items():
        out += [f"{part.replace('_', ' ')}: not measured: {reason}", ""]
    return out
