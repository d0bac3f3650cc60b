"""The failover scorecard: what a client gets when the first upstream tried misbehaves.

Rule: real processes. Each scenario starts a fresh `geniehive serve` (so no breaker, round-robin
counter or pooled connection carries over from the one before) in front of two recording fake
upstreams (`python -m tests.fakes.upstream`) serving model `m1` in one pool; the first upstream
tried is faulty, the second healthy. The client sends a streamed chat (and, for the faults that
happen before the response headers, a non-streamed one too) under a deadline and classifies
what it got:

  rescued      the whole healthy answer: the text the healthy upstream sends, ended by
               `[DONE]` for a stream, from the second upstream (`X-GenieHive-Service`);
  clean error  an OpenAI-shaped error status, or an SSE `error` event and no `[DONE]`: the
               client knows the answer is cut;
  late         the whole answer, but from the faulty upstream once its delay was over: the
               gateway waited instead of failing over;
  wrong        anything else: a partial answer that looks whole, a stream that ends without
               `[DONE]` or an error, a dropped connection, garbage relayed, or no outcome
               before the deadline (a hang).

Which upstream goes first: the gateway orders the pool with `strategy = "round_robin"`,
which rotates the candidates (in id order) by a counter the gateway advances once per routed
request; a fresh gateway's first request therefore tries `a-first`, its second `b-second`.
The fault is set on `a-first` with `times = 1`, and before the second measured request of a
scenario one healthy filler request moves the counter back to `a-first`. Setting the fault on
both upstreams with `times = 1` would not do: the failover try would meet the other one's
fault. Each row checks the fake's record that the faulty upstream did receive the request
(`exercised`); the refused port has no record, its row says "n/a".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from bench import procs
from bench.procs import Proc

FIRST, SECOND = "a-first", "b-second"
MODEL = "m1"
PROMPT = "one two three four five six seven eight"
DEADLINE_S = 5.0  # the client's deadline for one answer
FIRST_TOKEN_TIMEOUT_S = 1.0
SLOW_TOKEN_S = 3.0  # the "slow first token" delay: longer than FIRST_TOKEN_TIMEOUT_S
STALL_S = 30.0  # "stall before headers": longer than the deadline
RESCUED, CLEAN, LATE, WRONG = "rescued", "clean error", "late", "wrong"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: dict[str, Any] | None  # the body of POST /_fake/fault; None: the port is closed
    non_stream: bool  # the fault strikes before the headers: a non-streamed chat too
    expect: str


SCENARIOS = (
    Scenario("refuse", "the first upstream's port is closed", None, True, RESCUED),
    Scenario("reset before content", "an SSE comment and a role-only chunk, then a TCP reset",
             {"mode": "preamble", "then": "reset"}, False, RESCUED),
    Scenario("reset after content", "two chunks with content, then a TCP reset",
             {"mode": "reset_mid_stream", "after_chunks": 2}, False, CLEAN),
    Scenario("stall before headers", f"no response headers for {STALL_S:g} s",
             {"mode": "slow_headers", "delay_s": STALL_S}, True, RESCUED),
    Scenario("stall after the role chunk", "a comment and a role-only chunk, then nothing",
             {"mode": "preamble", "then": "stall"}, False, RESCUED),
    Scenario("slow first token",
             f"a comment and a role-only chunk, then {SLOW_TOKEN_S:g} s before the content",
             {"mode": "preamble", "then": "delay", "delay_s": SLOW_TOKEN_S}, False, RESCUED),
    Scenario("garbage", "bytes that are not HTTP, then close",
             {"mode": "garbage", "kind": "bad_http"}, True, RESCUED),
    Scenario("5xx", "HTTP 500 with an OpenAI error body", {"mode": "status", "status": 500},
             True, RESCUED),
    Scenario("429", "HTTP 429 with Retry-After: 1",
             {"mode": "status", "status": 429, "headers": {"retry-after": "1"}}, True, RESCUED),
)
SMOKE = ("refuse", "reset before content", "5xx")  # fast on every revision


def commit_on_content() -> bool:
    """Whether this revision's gateway has `[routing] first_token_timeout_s` (and with it
    commit on content)."""
    from geniehive.config.values import RoutingConfig

    return "first_token_timeout_s" in {f.name for f in dataclasses.fields(RoutingConfig)}


def routing_toml(first_token_timeout_s: float) -> str:
    """The `[routing]` table of the bench gateways; the timeout only where it exists."""
    lines = ["[routing]", 'strategy = "round_robin"']
    if commit_on_content():
        lines.append(f"first_token_timeout_s = {first_token_timeout_s:g}")
    return "\n" + "\n".join(lines) + "\n"


ASSET = f'\n[[upstreams.assets]]\nasset_id = "{MODEL}"\n'


def gateway_config(work: Path, port: int, upstreams: dict[str, int], name: str,
                   first_token_timeout_s: float = FIRST_TOKEN_TIMEOUT_S) -> str:
    """A control file: `upstreams` (id -> port) each serving `m1` (declared, so a closed port
    is still a candidate), round robin, the short first-token timeout."""
    return procs.gateway_config(work, port, upstreams, name=name, upstream_extra=ASSET,
                                extra=routing_toml(first_token_timeout_s))


def config_used() -> dict[str, Any]:
    """What the report prints about the configuration of the scorecard."""
    supported = commit_on_content()
    return {
        "strategy": "round_robin",
        "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S if supported else
        "not in this revision (no commit on content)",
        "first_byte_timeout_s": "600 (default)",
        "idle_stream_timeout_s": "120 (default)",
        "max_attempts": "3 (default)",
        "client_deadline_s": DEADLINE_S,
    }


def spawn_fake(name: str, logs: Path, cpu: int | None) -> Proc:
    port = procs.free_port()
    proc = procs.spawn(name, [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port),
                              "--model", MODEL, "--name", name], cpu, port, logs)
    procs.wait_port(proc)
    return proc


@contextlib.contextmanager
def gateway(work: Path, logs: Path, upstreams: dict[str, int], name: str,
            **options: Any) -> Iterator[Proc]:
    """A `geniehive serve` on the gateway CPU, ready (`/readyz`), stopped on exit."""
    port = procs.free_port()
    config = work / f"{name}.toml"
    config.write_text(gateway_config(work, port, upstreams, name, **options))
    proc = procs.spawn(name, [sys.executable, "-m", "geniehive", "serve", "--config",
                              str(config)], procs.cpu_plan()[0], port, logs)
    try:
        procs.wait_ready(proc, models=())
        yield proc
    finally:
        procs.stop(proc)


# -- one request, classified -------------------------------------------------------------------
def chat_body(stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of a complete SSE text, in order."""
    found = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].strip() for line in event.split("\n") if line.startswith("data:")]
        if data:
            found.append("\n".join(data))
    return found


def classify_stream(text: str, expected: str, by: str | None) -> tuple[str, str]:
    """(outcome, detail) of a complete 200 SSE body."""
    content, done, error = [], False, None
    for data in sse_data(text):
        if data == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            return WRONG, f"garbage relayed: {data[:60]!r}"
        if isinstance(chunk, dict) and "error" in chunk:
            error = chunk["error"]
            continue
        for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
            content.append((choice.get("delta") or {}).get("content") or "")
    got = "".join(content)
    if error is not None and not done:
        return CLEAN, f"SSE error event after {len(got)} chars: {_error_code(error)}"
    if not done:
        return WRONG, f"stream ended without [DONE] or error after {len(got)} chars"
    if error is not None:
        return WRONG, "an error event and [DONE]"
    return _whole(got, expected, by)


def classify_json(status: int, body: bytes, expected: str, by: str | None) -> tuple[str, str]:
    """(outcome, detail) of a complete non-200, or non-streamed, answer."""
    try:
        data = json.loads(body)
    except ValueError:
        return WRONG, f"HTTP {status} with a body that is not JSON: {body[:60]!r}"
    if status != 200:
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return CLEAN, f"HTTP {status} {_error_code(data['error'])}"
        return WRONG, f"HTTP {status} without an OpenAI error: {body[:60]!r}"
    try:
        got = data["choices"][0]["message"]["content"]
    except (LookupError, TypeError):
        return WRONG, f"HTTP 200 that is not a chat completion: {body[:60]!r}"
    return _whole(got, expected, by)


def _whole(got: str, expected: str, by: str | None) -> tuple[str, str]:
    if got != expected:
        return WRONG, f"an answer that looks whole but is not: {got!r}"
    if by is not None and FIRST in by:
        return LATE, "the whole answer from the faulty upstream, after its delay"
    return RESCUED, f"answered by {by}"


def _error_code(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "")
    return str(error)[:40]


async def ask(client: httpx.AsyncClient, port: int, stream: bool, expected: str,
              deadline_s: float = DEADLINE_S) -> dict[str, Any]:
    """One chat to the gateway: outcome, detail, ms to the outcome, attempts, answered by."""
    row: dict[str, Any] = {"request": "stream" if stream else "non-stream", "attempts": None,
                           "answered_by": None}
    started = time.perf_counter()
    with trio.move_on_after(deadline_s) as scope:
        try:
            async with client.stream("POST", f"http://127.0.0.1:{port}{CHAT_PATH}",
                                     json=chat_body(stream)) as response:
                row["attempts"] = response.headers.get("x-geniehive-attempts")
                by = row["answered_by"] = response.headers.get("x-geniehive-service")
                body = await response.aread()
            if response.status_code == 200 and stream:
                row["outcome"], row["detail"] = classify_stream(body.decode("utf-8", "replace"),
                                                                expected, by)
            else:
                row["outcome"], row["detail"] = classify_json(response.status_code, body,
                                                              expected, by)
        except httpx.HTTPError as exc:
            row["outcome"], row["detail"] = WRONG, f"connection dropped: {type(exc).__name__}"
    if scope.cancelled_caught:
        row["outcome"], row["detail"] = WRONG, f"no outcome in {deadline_s:g} s (a hang)"
    row["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return row


# -- the scenarios -------------------------------------------------------------------------------
async def _fault(client: httpx.AsyncClient, fake: Proc, body: dict[str, Any]) -> None:
    response = await client.post(f"http://127.0.0.1:{fake.port}/_fake/fault", json=body)
    response.raise_for_status()


async def _records(client: httpx.AsyncClient, fake: Proc) -> list[dict[str, Any]]:
    response = await client.get(f"http://127.0.0.1:{fake.port}/_fake/requests")
    return [r for r in response.json() if r.get("path") == CHAT_PATH]


async def expected_text(fake: Proc) -> str:
    """What the healthy upstream answers, asked directly (the scorecard's 'whole answer')."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"http://127.0.0.1:{fake.port}{CHAT_PATH}",
                                     json=chat_body(False))
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])


async def run_scenario(scenario: Scenario, port: int, fakes: dict[str, Proc],
                       expected: str) -> list[dict[str, Any]]:
    """The scenario's requests against one fresh gateway on `port`."""
    rows = []
    limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection per request
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        for number, stream in enumerate((True, False) if scenario.non_stream else (True,)):
            if number:  # the round-robin counter is odd now: the filler goes to b-second
                await ask(client, port, False, expected)
            fault = scenario.fault
            seen = 0
            if fault is not None:
                seen = len(await _records(client, fakes[FIRST]))
                await _fault(client, fakes[FIRST], {**fault, "times": 1, "path": CHAT_PATH})
            row = {"scenario": scenario.name, "expect": scenario.expect,
                   **await ask(client, port, stream, expected)}
            if fault is None:
                row["exercised"] = "n/a"
            else:
                tried = (await _records(client, fakes[FIRST]))[seen:]
                hit = bool(tried) and tried[0].get("fault") == fault["mode"]
                row["exercised"] = "yes" if hit else "NO"
                await _fault(client, fakes[FIRST], {"mode": "ok"})  # an unused one-off too
            rows.append(row)
    return rows


def measure(out: Path, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The scorecard: every scenario (or those named), each against a fresh gateway."""
    _, load_cpu = procs.cpu_plan()
    work, logs = out / "work", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    result: dict[str, Any] = {"commit_on_content": commit_on_content(), "config": config_used(),
                              "rows": []}
    fakes = {name: spawn_fake(f"failover-{name}", logs, load_cpu) for name in (FIRST, SECOND)}
    try:
        expected = trio.run(expected_text, fakes[SECOND])
        for index, scenario in enumerate(chosen):
            print(f"  failover: {scenario.name}", file=sys.stderr)
            ports = {FIRST: fakes[FIRST].port, SECOND: fakes[SECOND].port}
            if scenario.fault is None:
                ports[FIRST] = procs.free_port()  # nothing listens there
            with gateway(work, logs, ports, f"failover-{index}") as proc:
                result["rows"] += trio.run(run_scenario, scenario, proc.port, fakes, expected)
    finally:
        for fake in fakes.values():
            procs.stop(fake)
    result["unexpected"] = sum(1 for row in result["rows"]
                               if row["outcome"] != row["expect"] or row["exercised"] == "NO")
    return result


def section(result: dict[str, Any] | None) -> list[str]:
    """The scorecard's part of report.md."""
    if not result:
        return []
    state = "with" if result["commit_on_content"] else "without"
    out = [f"## Failover scorecard (bench/failover.py, {state} commit on content)", "",
           "Two fake upstreams in one pool; the first tried is faulty, the second healthy. "
           "rescued: the whole healthy answer (and `[DONE]`); clean error: an OpenAI error "
           "status or an SSE error event without `[DONE]`; late: the whole answer from the "
           "faulty upstream after its delay; wrong: a partial answer that looks whole, a "
           "dropped connection, garbage or a hang. ms: from sending to the outcome.", "",
           "Configuration: " + ", ".join(f"{k} {v}" for k, v in result["config"].items()) + ".",
           ""]
    what = {s.name: s.what for s in SCENARIOS}
    lines = ["| scenario | fault | request | expected | outcome | ms | attempts | exercised "
             "| detail |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        outcome = row["outcome"] if row["outcome"] == row["expect"] else f"**{row['outcome']}**"
        lines.append(f"| {row['scenario']} | {what.get(row['scenario'], '')} | {row['request']} "
                     f"| {row['expect']} | {outcome} | {row['ms']:,.0f} | "
                     f"{row['attempts'] or '-'} | {row['exercised']} | "
                     f"{row['detail'].replace('|', '/')} |")
    return [*out, *lines, "", f"Outcomes other than expected: {result['unexpected']}.", ""]
