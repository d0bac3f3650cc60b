"""`geniehive bench run` and `geniehive bench ingest`: workloads streamed through the gateway,
measured per case, and the report (geniehive/benchreport.py) written or posted."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from geniehive.benchreport import CaseResult, build_report
from geniehive.commands.client import CommandError, call, open_client, run, server_message
from geniehive.commands.tables import cell
from geniehive.commands.workloads import BUILTIN_WORKLOADS, Case, Workload, parse_workloads


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


def progress_stream(stream: TextIO | None = None) -> TextIO | None:
    """Where the progress bar is drawn: standard error (or `stream`) when it is a terminal,
    else nowhere, so that a piped or logged run holds no carriage returns."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream if stream.isatty() else None
    except ValueError:  # a closed stream
        return None


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
        bar = progress_stream()
        with open_client(args, timeout=600.0) as client:
            for index, case in enumerate(workload.cases):
                if bar is not None:
                    print(render_progress(index, len(workload.cases), case.case_id),
                          end="", file=bar, flush=True)
                results.append(stream_case(client, args.model, case))
            if bar is not None:
                print(render_progress(len(results), len(results), "done"), file=bar)
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
