"""The client subcommands: status, route, keys and bench, talking to a gateway over HTTP.

    geniehive status                          hosts, services and roles as tables
    geniehive route MODEL [--kind chat]       how a name resolves now, with gates and scores
    geniehive keys create|list|disable|enable|delete
    geniehive bench run --model M --workload W [--workloads FILE] [--ingest] [--output FILE]
    geniehive bench ingest REPORT.json

Rule: the rendering, the workload parsing and the report building are pure functions; the
`cmd_*` functions do the I/O with a synchronous httpx client and return the exit status:
0 ok, 1 runtime or HTTP failure (the server's error message is printed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from geniehive.auth import SCOPES

DEFAULT_URL = "http://127.0.0.1:8800"
SOURCE = "geniehive bench run"


class CommandError(Exception):
    """A command failed; `status` is the exit code (1 runtime/HTTP, 2 usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- HTTP ---------------------------------------------------------------------------------------


def open_client(args: argparse.Namespace, timeout: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=timeout, trust_env=False)


def server_message(response: httpx.Response) -> str:
    """The error message a gateway answer carries, else its status and text."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{response.status_code}: {error['message']}"
    except (ValueError, AttributeError):
        pass
    text = response.text.strip()[:200]
    return f"{response.status_code}: {text or response.reason_phrase}"


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of one request. Raises CommandError with the server's message."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        raise CommandError(server_message(response))
    try:
        return response.json()
    except ValueError:
        raise CommandError(f"the gateway answered {path} with something not JSON") from None


def run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command body, printing a CommandError to stderr as its exit status."""
    try:
        return fn(args)
    except CommandError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.status


# --- tables (pure) ------------------------------------------------------------------------------


def cell(value: Any) -> str:
    """A value as a table cell: '-' for nothing, floats without noise, lists joined."""
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return str(value)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *text_rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


Column = tuple[str, Callable[[Mapping[str, Any]], Any]]

HOST_COLUMNS: tuple[Column, ...] = (
    ("HOST", lambda h: h["host_id"]),
    ("ADDRESS", lambda h: h.get("address")),
    ("STATE", lambda h: h["state"]),
    ("HEARTBEAT AGE S", lambda h: h.get("last_heartbeat_age_s")),
    ("SERVICES", lambda h: h.get("service_count")),
    ("LOCAL", lambda h: "yes" if h.get("is_local") else ""),
)
SERVICE_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda s: s["service_id"]),
    ("HOST", lambda s: s["host_id"]),
    ("OP", lambda s: s["operation"]),
    ("HEALTH", lambda s: s["health"]),
    ("AVAILABILITY", lambda s: s["availability"]),
    ("LOADED", lambda s: [a["asset_id"] for a in s.get("assets", []) if a.get("loaded")]),
    ("IN-FLIGHT", lambda s: s["measured"]["in_flight"]),
    ("P50 MS", lambda s: s["measured"]["p50_latency_ms"]),
    ("GATE", lambda s: s.get("gate")),
)
ROLE_COLUMNS: tuple[Column, ...] = (
    ("ROLE", lambda r: r["role_id"]),
    ("OP", lambda r: r["operation"]),
    ("STRATEGY", lambda r: r["routing"].get("strategy")),
    ("TARGETS", lambda r: r["targets"]),
    ("FALLBACK USED", lambda r: r.get("fallback_used")),
)
CANDIDATE_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda c: c["service_id"]),
    ("HOST", lambda c: c["host_id"]),
    ("MODEL", lambda c: c["upstream_model"]),
    ("SCORE", lambda c: c["score"]),
    ("LOADED", lambda c: c["loaded"]),
    ("TIER", lambda c: "pool" if c["pool"] else "failover"),
    ("BREAKDOWN", lambda c: _breakdown(c["breakdown"])),
)
EXCLUDED_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda e: e["service_id"]),
    ("GATE", lambda e: e["gate"]),
    ("DETAIL", lambda e: e["detail"]),
)
KEY_COLUMNS: tuple[Column, ...] = (
    ("KEY ID", lambda k: k["key_id"]),
    ("NAME", lambda k: k["name"]),
    ("SCOPES", lambda k: k["scopes"]),
    ("MODELS", lambda k: k["models"] or "*"),
    ("STATE", lambda k: "disabled" if k["disabled"] else "enabled"),
    ("HOST", lambda k: k.get("host")),
    ("CREATED", lambda k: _when(k.get("created_at"))),
)


def render_rows(columns: Sequence[Column], items: Iterable[Mapping[str, Any]]) -> str:
    """`items` as a table, one column per (header, getter)."""
    rows = ([get(item) for _, get in columns] for item in items)
    return render_table([header for header, _ in columns], rows)


def render_status(
    hosts: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    roles: Sequence[Mapping[str, Any]],
) -> str:
    return "\n\n".join(
        (
            "HOSTS\n" + render_rows(HOST_COLUMNS, hosts),
            "SERVICES\n" + render_rows(SERVICE_COLUMNS, services),
            "ROLES\n" + render_rows(ROLE_COLUMNS, roles),
        )
    )


def _breakdown(parts: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:+.2f}" if k != "runtime" else f"{k}={v:.2f}" for k, v in parts.items())


def _verdict(expl: Mapping[str, Any]) -> list[str]:
    head = f"{expl['model']} ({expl['operation']}): match {expl['match']}"
    if expl.get("role"):
        head += f", role {expl['role']}"
    if expl.get("fallback_role"):
        head += f", fallback used: {expl['fallback_role']}"
    if expl.get("strategy"):
        head += f", strategy {expl['strategy']}"
    candidates = expl.get("candidates") or []
    if candidates:
        chosen = f"chosen: {candidates[0]['service_id']} -> {candidates[0]['upstream_model']}"
    else:
        chosen = f"no choice: {expl.get('error')}: {expl.get('message')}"
    return [head, chosen]


def render_explanation(expl: Mapping[str, Any]) -> str:
    """`routes/resolve` as text: the verdict, candidates with scores, excluded with gates."""
    lines = _verdict(expl)
    if expl.get("candidates"):
        lines += ["", "CANDIDATES", render_rows(CANDIDATE_COLUMNS, expl["candidates"])]
    if expl.get("excluded"):
        lines += ["", "EXCLUDED", render_rows(EXCLUDED_COLUMNS, expl["excluded"])]
    for walked in expl.get("fallbacks_without_candidates") or []:
        gates = ", ".join(f"{s} ({g})" for s, g in walked["excluded"]) or "no services"
        lines.append(f"fallback {walked['role']} had no candidate: {gates}")
    return "\n".join(lines)


def render_keys(keys: Sequence[Mapping[str, Any]]) -> str:
    return render_rows(KEY_COLUMNS, keys)


def _when(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- status, route, keys -----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        with open_client(args) as client:
            hosts = call(client, "GET", "/v1/cluster/hosts")["data"]
            services = call(client, "GET", "/v1/cluster/services")["data"]
            roles = call(client, "GET", "/v1/cluster/roles")["data"]
        if getattr(args, "json", False):
            print(json.dumps({"hosts": hosts, "services": services, "roles": roles}, indent=2))
        else:
            print(render_status(hosts, services, roles))
        return 0

    return run(body, args)


def cmd_route(args: argparse.Namespace) -> int:
    """Explain a name; exit 1 when it has no routable candidate now."""

    def body(args: argparse.Namespace) -> int:
        params = {"model": args.model, "kind": args.kind}
        with open_client(args) as client:
            expl = call(client, "GET", "/v1/cluster/routes/resolve", params=params)
        if getattr(args, "json", False):
            print(json.dumps(expl, indent=2))
        else:
            print(render_explanation(expl))
        return 1 if expl.get("error") else 0

    return run(body, args)


def cmd_keys(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        action = args.keys_action
        with open_client(args) as client:
            if action == "create":
                payload = {
                    "name": args.name,
                    "scopes": args.scope or ["inference"],
                    "models": args.model or [],
                }
                if getattr(args, "host", None):
                    payload["host"] = args.host
                created = call(client, "POST", "/v1/admin/keys", json=payload)
                host = f", host {created['host']}" if created.get("host") else ""
                print(
                    f"created key {created['key_id']} ({created['name']}, "
                    f"scopes {','.join(created['scopes'])}{host})"
                )
                print(f"key: {created['key']}")
                print("store it now: it is not shown again", file=sys.stderr)
            elif action == "list":
                print(render_keys(call(client, "GET", "/v1/admin/keys")["data"]))
            else:
                method, path = ("DELETE", "") if action == "delete" else ("POST", f"/{action}")
                call(client, method, f"/v1/admin/keys/{args.key_id}{path}")
                print(f"key {args.key_id}: {action}d")
        return 0

    return run(body, args)


# --- benchmark workloads (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    case_id: str
    messages: tuple[Mapping[str, str], ...]
    expect: tuple[str, ...]  # passes when the answer contains any of these (case-insensitive)
    max_tokens: int = 64

    def passed(self, text: str) -> bool:
        lowered = text.lower()
        return any(e.lower() in lowered for e in self.expect)


@dataclass(frozen=True)
class Workload:
    workload_id: str
    description: str
    cases: tuple[Case, ...]


BRIEF = "Answer in one short sentence or less. Do not explain your reasoning."


def _case(case_id: str, prompt: str, expect: Sequence[str], max_tokens: int = 48) -> Case:
    messages = ({"role": "system", "content": BRIEF}, {"role": "user", "content": prompt})
    return Case(case_id, messages, tuple(expect), max_tokens)


# Thinking off: the bench sends no thinking field, so the gateway's inferred default turns
# thinking off in the form each upstream honours; the prompts ask for short answers.
BUILTIN_WORKLOADS: Mapping[str, Workload] = {
    "chat.short_reasoning": Workload(
        "chat.short_reasoning",
        "Small arithmetic and time reasoning with a one-token answer",
        (
            _case("sum", "What is 17 + 25? Reply with the number only.", ["42"]),
            _case(
                "train",
                "A train leaves at 3 PM and travels for 2 hours. At what hour "
                "does it arrive? Reply with the time only.",
                ["5"],
            ),
        ),
    ),
    "chat.concise_support": Workload(
        "chat.concise_support",
        "One-sentence customer support answers",
        (
            _case(
                "password",
                "A customer forgot their account password. What is the first "
                "step you advise, in one sentence?",
                ["reset"],
            ),
            _case(
                "router",
                "A customer's home internet stopped working. What is the first "
                "thing they should try with the router, in one sentence?",
                ["restart", "reboot", "unplug", "power", "turn it off", "switch it off"],
            ),
        ),
    ),
}


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: expected a string or a non-empty list of strings")
    return tuple(value)


def _parse_messages(case: Mapping[str, Any], path: str) -> tuple[Mapping[str, str], ...]:
    if "prompt" in case:
        prompt = case["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{path}.prompt: expected a non-empty string")
        system = case.get("system", BRIEF)
        if not isinstance(system, str):
            raise ValueError(f"{path}.system: expected a string")
        return ({"role": "system", "content": system}, {"role": "user", "content": prompt})
    messages = case.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{path}: expected `prompt` or a non-empty `messages` list")
    for index, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"{path}.messages[{index}]: expected {{role, content}} strings")
    return tuple(messages)


def parse_case(case: Any, path: str) -> Case:
    if not isinstance(case, dict):
        raise ValueError(f"{path}: expected a table")
    unknown = sorted(set(case) - {"id", "prompt", "system", "messages", "expect", "max_tokens"})
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown key")
    case_id = case.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise ValueError(f"{path}.id: expected a non-empty string")
    max_tokens = case.get("max_tokens", 64)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"{path}.max_tokens: expected a positive integer")
    expect = _strings(case.get("expect"), f"{path}.expect")
    return Case(case_id, _parse_messages(case, path), expect, max_tokens)


def parse_workloads(data: Mapping[str, Any]) -> dict[str, Workload]:
    """Workloads from a TOML document `[workloads.<id>]` with `[[workloads.<id>.cases]]`.

    Raises ValueError naming the dotted path of the first problem.
    """
    unknown = sorted(set(data) - {"workloads"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key")
    tables = data.get("workloads")
    if not isinstance(tables, dict) or not tables:
        raise ValueError("workloads: expected at least one [workloads.<id>] table")
    found: dict[str, Workload] = {}
    for workload_id, table in tables.items():
        path = f"workloads.{workload_id}"
        if not isinstance(table, dict):
            raise ValueError(f"{path}: expected a table")
        unknown = sorted(set(table) - {"description", "cases"})
        if unknown:
            raise ValueError(f"{path}.{unknown[0]}: unknown key")
        cases = table.get("cases")
        if not isinstance(cases, list) or not cases:
            raise ValueError(f"{path}.cases: expected at least one [[{path}.cases]]")
        parsed = tuple(parse_case(c, f"{path}.cases[{i}]") for i, c in enumerate(cases))
        found[workload_id] = Workload(workload_id, str(table.get("description", "")), parsed)
    return found


def load_workloads(path: Path | None) -> dict[str, Workload]:
    """The built-in workloads plus those of `path`. Raises CommandError (status 2)."""
    workloads = dict(BUILTIN_WORKLOADS)
    if path is None:
        return workloads
    try:
        workloads.update(parse_workloads(tomllib.loads(path.read_text())))
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}", 2) from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}", 2) from None
    return workloads


# --- benchmark runs ----------------------------------------------------------------------------


@dataclass
class CaseResult:
    case_id: str
    passed: bool = False
    service_id: str | None = None
    asset_id: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_sec: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    text: str = field(default="", repr=False)


def render_progress(done: int, total: int, label: str, width: int = 24) -> str:
    filled = width * done // total if total else width
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


def parse_sse_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of an SSE stream, until `[DONE]`. Raises CommandError on an error event."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            raise CommandError(f"stream ended with an error: {event['error'].get('message')}")
        if isinstance(event, dict):
            yield event


def stream_case(
    client: httpx.Client, model: str, case: Case, clock: Callable[[], float] = time.monotonic
) -> CaseResult:
    """Send one case, streamed, and measure it. Never raises for a failed case."""
    result = CaseResult(case.case_id)
    body = {
        "model": model,
        "messages": list(case.messages),
        "stream": True,
        "max_tokens": case.max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    started = clock()
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            result.service_id = response.headers.get("x-geniehive-service") or None
            result.asset_id = response.headers.get("x-geniehive-model") or None
            if response.status_code >= 400:
                response.read()
                result.error = server_message(response)
                return result
            _consume(result, parse_sse_lines(response.iter_lines()), started, clock)
    except (httpx.HTTPError, CommandError) as exc:
        result.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return result
    _finish(result, case, started, clock())
    return result


def _consume(
    result: CaseResult,
    events: Iterable[dict[str, Any]],
    started: float,
    clock: Callable[[], float],
) -> None:
    pieces: list[str] = []
    chunks = 0
    for event in events:
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if result.ttft_ms is None:
                    result.ttft_ms = round((clock() - started) * 1000, 3)
                pieces.append(content)
                chunks += 1
        usage = event.get("usage")
        if isinstance(usage, dict):
            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            result.completion_tokens = int(usage.get("completion_tokens") or 0)
    result.text = "".join(pieces)
    if not result.completion_tokens:
        result.completion_tokens = chunks  # no usage chunk: one token per content chunk


def _finish(result: CaseResult, case: Case, started: float, ended: float) -> None:
    result.latency_ms = round((ended - started) * 1000, 3)
    generating_s = (result.latency_ms - (result.ttft_ms or 0.0)) / 1000
    if result.completion_tokens and generating_s > 0:
        result.tokens_per_sec = round(result.completion_tokens / generating_s, 3)
    result.passed = case.passed(result.text)


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def sample_results(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The `results` of one report sample from the cases one service answered."""
    return {
        "case_count": len(results),
        "pass_rate": round(sum(1 for r in results if r.passed) / len(results), 4),
        "p50_latency_ms": _median(r.latency_ms for r in results),
        "ttft_ms": _median(r.ttft_ms for r in results),
        "tokens_per_sec": _median(r.tokens_per_sec for r in results),
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "error_count": sum(1 for r in results if r.error),
    }


def case_view(result: CaseResult) -> dict[str, Any]:
    """One case's outcome as the report lists it (never the answer text)."""
    keys = ("case_id", "passed", "service_id", "latency_ms", "ttft_ms", "error")
    return {key: getattr(result, key) for key in keys}


def build_report(
    workload: str, model: str, results: Sequence[CaseResult], report_id: str, observed_at: str
) -> dict[str, Any]:
    """The benchmark report: one sample per (service, asset) that really served.

    Cases that reached no service (no `X-GenieHive-Service`) are listed but feed no sample.
    """
    groups: dict[tuple[str, str | None], list[CaseResult]] = {}
    for result in results:
        if result.service_id:
            groups.setdefault((result.service_id, result.asset_id), []).append(result)
    samples = [
        {
            "benchmark_id": f"{report_id}-{index}",
            "service_id": service_id,
            "asset_id": asset_id,
            "workload": workload,
            "observed_at": observed_at,
            "results": sample_results(group),
        }
        for index, ((service_id, asset_id), group) in enumerate(
            sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or ""))
        )
    ]
    cases = [case_view(r) for r in results]
    return {
        "report_id": report_id,
        "observed_at": observed_at,
        "source": SOURCE,
        "model": model,
        "workload": workload,
        "samples": samples,
        "cases": cases,
    }


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_bench_run(args: argparse.Namespace) -> int:
    """Run a workload through the gateway; exit 1 when no case reached a service."""

    def body(args: argparse.Namespace) -> int:
        workloads = load_workloads(getattr(args, "workloads", None))
        workload = workloads.get(args.workload)
        if workload is None:
            raise CommandError(
                f"unknown workload '{args.workload}' (known: {', '.join(sorted(workloads))})", 2
            )
        results = []
        with open_client(args, timeout=600.0) as client:
            for index, case in enumerate(workload.cases):
                print(
                    render_progress(index, len(workload.cases), case.case_id),
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(stream_case(client, args.model, case))
            print(render_progress(len(results), len(results), "done"), file=sys.stderr)
            report = build_report(
                workload.workload_id, args.model, results, uuid.uuid4().hex, iso_now()
            )
            _emit_report(args, report)
            for failed in (r for r in results if r.error):
                print(f"case {failed.case_id}: {failed.error}", file=sys.stderr)
            if not report["samples"]:
                raise CommandError("no case reached a service; nothing to report")
            if getattr(args, "ingest", False):
                answer = call(client, "POST", "/v1/cluster/benchmarks", json=report)
                print(f"ingested {answer['ingested']} sample(s)")
        return 0

    return run(body, args)


def _emit_report(args: argparse.Namespace, report: Mapping[str, Any]) -> None:
    text = json.dumps(report, indent=2)
    output = getattr(args, "output", None)
    if output is None:
        print(text)
        return
    try:
        Path(output).write_text(text + "\n")
    except OSError as exc:
        raise CommandError(f"{output}: cannot write: {exc.strerror or exc}") from None
    for sample in report["samples"]:
        r = sample["results"]
        print(
            f"{sample['service_id']} ({sample['asset_id']}): pass {r['pass_rate']:.0%} "
            f"of {r['case_count']}, p50 {cell(r['p50_latency_ms'])} ms, "
            f"ttft {cell(r['ttft_ms'])} ms, {cell(r['tokens_per_sec'])} tok/s"
        )
    print(f"report written to {output}")


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        try:
            report = json.loads(Path(args.report).read_text())
        except OSError as exc:
            raise CommandError(f"{args.report}: cannot read: {exc.strerror or exc}", 2) from None
        except ValueError:
            raise CommandError(f"{args.report}: not a JSON report", 2) from None
        with open_client(args) as client:
            answer = call(client, "POST", "/v1/cluster/benchmarks", json=report)
        print(f"ingested {answer['ingested']} sample(s)")
        return 0

    return run(body, args)


def cmd_bench(args: argparse.Namespace) -> int:
    return cmd_bench_run(args) if args.bench_action == "run" else cmd_bench_ingest(args)


# --- argparse -----------------------------------------------------------------------------------


def client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("GENIEHIVE_URL", DEFAULT_URL),
        help="the gateway (env GENIEHIVE_URL)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GENIEHIVE_API_KEY"),
        help="an API key (env GENIEHIVE_API_KEY)",
    )


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage named API keys (admin scope)")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser("create", help="create a key; it is shown once")
    create.add_argument("name")
    create.add_argument(
        "--scope", action="append", choices=SCOPES, help="repeatable; default inference"
    )
    create.add_argument("--model", action="append", help="model glob it may use (repeatable)")
    create.add_argument(
        "--host", help="node keys: the host id it registers and heartbeats (default: NAME)"
    )
    client_args(create)
    client_args(actions.add_parser("list", help="list keys (never their secrets)"))
    for action in ("disable", "enable", "delete"):
        parser = actions.add_parser(action, help=f"{action} a key")
        parser.add_argument("key_id")
        client_args(parser)


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run or ingest benchmark workloads")
    actions = bench.add_subparsers(dest="bench_action", required=True)
    run_p = actions.add_parser("run", help="run a workload through the gateway")
    run_p.add_argument("--model", required=True, help="a model or role name")
    run_p.add_argument("--workload", required=True)
    run_p.add_argument("--workloads", type=Path, help="a TOML file of more workloads")
    run_p.add_argument("--ingest", action="store_true", help="post the report when done")
    run_p.add_argument("--output", type=Path, help="write the report here (default stdout)")
    client_args(run_p)
    ingest = actions.add_parser("ingest", help="post a report's samples")
    ingest.add_argument("report", type=Path)
    client_args(ingest)


def add_client_commands(sub: Any) -> None:
    """Register status, route, keys and bench on the `geniehive` subparsers."""
    status = sub.add_parser("status", help="hosts, services and roles")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    client_args(status)
    route = sub.add_parser("route", help="explain how a model or role name resolves now")
    route.add_argument("model")
    route.add_argument("--kind", default="chat", help="the operation (default chat)")
    route.add_argument("--json", action="store_true", help="print the raw JSON")
    client_args(route)
    _add_keys(sub)
    _add_bench(sub)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "route": cmd_route,
    "keys": cmd_keys,
    "bench": cmd_bench,
}
