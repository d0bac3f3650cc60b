"""The client subcommands: status, route, keys and bench, talking to a gateway over HTTP.

    geniehive status                          hosts, services and roles as tables
    geniehive route MODEL [--kind chat]       how a name resolves now, with gates and scores
    geniehive keys create|list|disable|enable|delete
    geniehive bench run --model M --workload W [--workloads FILE] [--ingest] [--output FILE]
    geniehive bench ingest REPORT.json

Rule: the rendering (`tables`), the workloads (`workloads`) and the report
(geniehive/benchreport.py) are pure; the `cmd_*` functions (`cluster`, `bench`) do the I/O with
a synchronous httpx client (`client`) and return the exit status: 0 ok, 1 runtime or HTTP
failure (the server's error message is printed), 2 usage. This module wires them into argparse
and re-exports what the CLI and the tests import.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geniehive.auth import PRIORITIES, SCOPES
from geniehive.benchreport import SOURCE, CaseResult, build_report, case_view, sample_results
from geniehive.commands.bench import (
    cmd_bench,
    cmd_bench_ingest,
    cmd_bench_run,
    iso_now,
    load_workloads,
    parse_sse_lines,
    progress_stream,
    render_progress,
    stream_case,
)
from geniehive.commands.client import (
    DEFAULT_URL,
    CommandError,
    call,
    client_args,
    open_client,
    run,
    server_message,
)
from geniehive.commands.cluster import cmd_keys, cmd_route, cmd_status
from geniehive.commands.tables import (
    cell,
    render_explanation,
    render_keys,
    render_rows,
    render_status,
    render_table,
)
from geniehive.commands.workloads import (
    BRIEF,
    BUILTIN_WORKLOADS,
    Case,
    Workload,
    parse_case,
    parse_workloads,
)

__all__ = [
    "BRIEF", "BUILTIN_WORKLOADS", "COMMANDS", "DEFAULT_URL", "SOURCE", "Case", "CaseResult",
    "CommandError", "Workload", "add_client_commands", "build_report", "call", "case_view",
    "cell", "client_args", "cmd_bench", "cmd_bench_ingest", "cmd_bench_run", "cmd_keys",
    "cmd_route", "cmd_status", "iso_now", "load_workloads", "open_client", "parse_case",
    "parse_sse_lines", "parse_workloads", "progress_stream", "render_explanation", "render_keys",
    "render_progress", "render_rows", "render_status", "render_table", "run", "sample_results",
    "server_message", "stream_case",
]  # fmt: skip


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
    create.add_argument("--max-in-flight", type=int, metavar="N",
                        help="its requests served at once; more wait (default: no limit)")
    create.add_argument("--requests-per-minute", type=int, metavar="N",
                        help="more are answered 429 (default: no limit)")
    create.add_argument("--priority", choices=PRIORITIES,
                        help="its default and highest priority class")
    create.add_argument("--weight", type=float, metavar="W",
                        help="its share against the keys of its class (default 1)")
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
