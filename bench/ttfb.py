"""Time to the first content byte of a stream, direct and through the gateway.

Rule: one recording fake upstream (`python -m tests.fakes.upstream`) and one `geniehive serve`
in front of it; the client (bench/streams.py's lean h11 client, sequential requests over one
keep-alive connection per target, `samples` each after 3 warm-up requests) records, per
request, the time from sending to the first body byte and to the first SSE event with
content (text, a tool call or a finish reason). Two upstream behaviours:

  plain     the stream answers at once (no preamble): the gateway's usual added delay, the
            same measure as "time to the first SSE byte" of the gateway phase;
  preamble  the stream opens with an SSE comment and a role-only chunk, then waits `delay_s`
            before the content (`preamble` fault, `then = "delay"`). With commit on content the
            gateway holds the preamble until the content, so its first byte comes with the
            content; its first content should trail the direct one by no more than the plain
            case's added delay.

`added_ms` = gateway median - direct median, per behaviour and measure.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from bench import failover, procs
from bench.streams import CONNECT_ERRORS, Client, StreamError
from geniehive.sse import ContentWatch

DELAY_S = 0.2  # before the first token, well under the gateway's first-token timeout
FIRST_TOKEN_TIMEOUT_S = 5.0
WARMUP = 3


async def one(client: Client, body: bytes) -> tuple[float, float]:
    """(ms to the first body byte, ms to the first content event) of one streamed chat."""
    started = time.perf_counter()
    status = await client.send_post(body)
    if status != 200:
        raise StreamError(f"HTTP {status}")
    first_byte = content = None
    watch = ContentWatch()  # the gateway's own rule of what is content (geniehive/sse.py)
    async for chunk in client.body_chunks():
        now = time.perf_counter()
        if first_byte is None and chunk:
            first_byte = now
        if content is None and watch.feed(chunk) == "content":
            content = now
    if first_byte is None or content is None:
        raise StreamError("the stream ended without content")
    return (first_byte - started) * 1000, (content - started) * 1000


async def sample(port: int, samples: int, timeout_s: float = 120) -> dict[str, Any]:
    """`samples` sequential streams over one connection (after the warm-up): medians."""
    body = json.dumps(failover.chat_body(True)).encode()
    first_bytes: list[float] = []
    contents: list[float] = []
    errors = 0
    with trio.move_on_after(timeout_s):
        client = await Client.connect(port)
        try:
            for index in range(WARMUP + samples):
                try:
                    byte_ms, content_ms = await one(client, body)
                except (StreamError, *CONNECT_ERRORS):
                    errors += 1
                    await client.aclose()
                    client = await Client.connect(port)
                    continue
                if index >= WARMUP:
                    first_bytes.append(byte_ms)
                    contents.append(content_ms)
        finally:
            await client.aclose()
    return {"samples": len(contents), "errors": errors,
            "first_byte_ms": _median(first_bytes), "first_content_ms": _median(contents)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def _set_fault(port: int, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"http://127.0.0.1:{port}/_fake/fault", json=body)
        response.raise_for_status()


def _added(gateway: dict[str, Any], direct: dict[str, Any], key: str) -> float | None:
    if gateway[key] is None or direct[key] is None:
        return None
    return round(gateway[key] - direct[key], 3)


def measure(out: Path, samples: int) -> dict[str, Any]:
    """Both behaviours, direct and through the gateway, `samples` streams each."""
    _, load_cpu = procs.cpu_plan()
    work, logs = out / "work", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"samples": samples, "delay_s": DELAY_S,
                              "commit_on_content": failover.commit_on_content()}
    fake = failover.spawn_fake("ttfb-upstream", logs, load_cpu)
    try:
        with failover.gateway(work, logs, {"fake": fake.port}, "ttfb",
                              first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S) as gateway:
            for kind, fault in (("plain", {"mode": "ok"}),
                                ("preamble", {"mode": "preamble", "then": "delay",
                                              "delay_s": DELAY_S, "path": failover.CHAT_PATH})):
                print(f"  time to first content: {kind}", file=sys.stderr)
                trio.run(_set_fault, fake.port, fault)
                row: dict[str, Any] = {"direct": trio.run(sample, fake.port, samples),
                                       "gateway": trio.run(sample, gateway.port, samples)}
                for key in ("first_byte_ms", "first_content_ms"):
                    row[f"added_{key}"] = _added(row["gateway"], row["direct"], key)
                result[kind] = row
    finally:
        procs.stop(fake)
    return result


def section(result: dict[str, Any] | None, first_byte: dict[str, Any] | None) -> list[str]:
    """The report's part: the table, and the comparison with the gateway phase's figure."""
    if not result:
        return []
    state = "with" if result["commit_on_content"] else "without"
    out = [f"## Time to first content (bench/ttfb.py, {state} commit on content)", "",
           f"Sequential streams over one keep-alive connection, median of {result['samples']}; "
           "plain: the upstream streams at once; preamble: an SSE comment and a role-only "
           f"chunk, then {result['delay_s'] * 1000:.0f} ms before the content.", "",
           "| upstream | target | samples | errors | first byte ms | first content ms |",
           "|---|---|---|---|---|---|"]
    added = []
    for kind in ("plain", "preamble"):
        row = result.get(kind)
        if not row:
            continue
        for target in ("direct", "gateway"):
            t = row[target]
            out.append(f"| {kind} | {target} | {t['samples']} | {t['errors']} | "
                       f"{_fmt(t['first_byte_ms'])} | {_fmt(t['first_content_ms'])} |")
        added.append(f"{kind}: first byte {_fmt(row['added_first_byte_ms'])} ms, first content "
                     f"{_fmt(row['added_first_content_ms'])} ms")
    out += ["", "Added by the gateway (gateway - direct medians): " + "; ".join(added) + "."]
    if first_byte and "added_ms" in first_byte:
        out += [f"For comparison, the gateway phase's added first-SSE-byte delay (nginx "
                f"upstream): {_fmt(first_byte['added_ms'])} ms."]
    return [*out, ""]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.3f}"
