"""The `geniehive` command: argument parsing and wiring only.

Exit codes: 0 ok, 1 runtime or HTTP failure, 2 usage or configuration error. A program that
stops on a `StartupError` (see geniehive/errors.py) prints each of its problems on one line,
no traceback, and exits with the error's status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geniehive.commands import COMMANDS as CLIENT_COMMANDS
from geniehive.commands import add_client_commands
from geniehive.errors import StartupError

DEFAULT_CONFIG = "conf/geniehive.toml"

log = logging.getLogger("geniehive")


def _escapes() -> dict[int, str]:
    """Control characters and Unicode line breaks as visible escapes."""
    codes = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
    return {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in codes}


ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """`text` with every control character shown as an escape, so no value can end a line."""
    return text.translate(ESCAPES) if not text.isprintable() else text


class TextFormatter(logging.Formatter):
    """One line per record: values a client or node sent (a model name with a newline, say)
    cannot forge a line of their own. A traceback, written by us, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO with full upstream URLs: a line per proxied request,
    # which also cost about a fifth of the throughput.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geniehive", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control daemon and gateway")
    serve.add_argument("--config", default=DEFAULT_CONFIG, type=Path)
    node = sub.add_parser("node", help="run the node agent on a GPU host")
    node.add_argument("--config", default="conf/node.toml", type=Path)
    check = sub.add_parser("check-config", help="validate control, node and role files")
    check.add_argument("files", nargs="+", type=Path)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    from geniehive.config import check_files

    problems = check_files(args.files, os.environ)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    print(f"ok: {len(args.files)} file(s) valid")
    return 0


def load_control_or_exit(path: Path) -> Any:
    from geniehive.config import ConfigError, load_control

    try:
        config = load_control(path.resolve(), os.environ)
    except ConfigError as exc:
        raise SystemExit(report_startup_errors(path, [exc])) from None
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Open mode off loopback is refused by the daemon, which also knows the named keys.
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from geniehive.workers import serve_worker, supervise_workers, worker_index

    config = load_control_or_exit(args.config)
    setup_logging(config.logging.level, config.logging.format)
    index = worker_index(os.environ)
    if index is None and config.server.workers > 1:
        return int(trio.run(supervise_workers, config))  # imports no app, binds nothing
    started = time.monotonic()
    stopped_by: list[StartupError] = []
    try:
        if index is None:
            from geniehive.daemon import serve_control

            trio.run(serve_control, config)
        else:
            trio.run(serve_worker, config, index)
    except* StartupError as group:
        stopped_by = _leaves(group)
    if stopped_by:
        return report_startup_errors(args.config, stopped_by)
    log.info("stopped after %.1f s", time.monotonic() - started)
    return 0


def report_startup_errors(config_path: Path, errors: Sequence[StartupError]) -> int:
    """Print the problems of the StartupErrors that stopped the program; its exit status.

    The configuration's problems (exit status 2) are named after the file and, when there are
    any, are the only ones shown: they are what the operator has to fix first. Any other
    problem (the stored registry, say) is shown as geniehive's own, with exit status 1.
    """
    in_config = [exc for exc in errors if exc.in_config]
    shown = in_config or errors
    prefix = str(config_path) if in_config else "geniehive"
    for exc in shown:
        for problem in exc.problems:
            print(f"{prefix}: {problem}", file=sys.stderr)
    return max(exc.exit_status for exc in shown)


def _leaves(group: BaseExceptionGroup) -> list[Any]:
    """The exceptions inside a (possibly nested) exception group."""
    found: list[Any] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def supervise_node(run_node: Any, config: Any) -> None:
    """Run the node agent under systemd's eyes until SIGTERM/SIGINT, then stop cleanly."""
    import signal

    import trio

    from geniehive.sdnotify import notify_ready, notify_stopping, run_watchdog

    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog)
        await nursery.start(run_node, config)
        await notify_ready()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: stopping the node agent", signal.Signals(signum).name)
                break
        await notify_stopping()
        nursery.cancel_scope.cancel()


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    from geniehive.config import ConfigError, load_node
    from geniehive.node import run_node

    try:
        config = load_node(args.config.resolve(), os.environ)
    except ConfigError as exc:
        return report_startup_errors(args.config, [exc])
    except OSError as exc:
        print(f"{args.config}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.format)
    stopped_by: list[StartupError] = []
    try:
        trio.run(supervise_node, run_node, config)
    except* StartupError as group:
        stopped_by = _leaves(group)
    return report_startup_errors(args.config, stopped_by) if stopped_by else 0


COMMANDS: dict[str, Any] = {
    **CLIENT_COMMANDS,
    "node": cmd_node,
    "serve": cmd_serve,
    "check-config": cmd_check_config,
}
