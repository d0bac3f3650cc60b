"""Streaming measurements driven by a lean h11 client: relayed SSE events per second,
time to the first SSE byte, and many concurrently held streams.

Rule: the client counts, it does not parse JSON, so it stays cheap next to the gateway. Every
measurement runs under a deadline and counts its failures instead of raising them.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import h11
import trio

CONNECT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


def chat_body(model: str, stream: bool = True) -> bytes:
    return json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hi."}]}
    ).encode()


class StreamError(Exception):
    """A request that did not end in a complete 200 answer."""


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send_post(self, body: bytes, path: str = "/v1/chat/completions",
                        headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Send a POST (with `headers` besides the usual ones) and wait for the response
        head; returns the status."""
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = (("host", f"127.0.0.1:{self.port}"), ("content-type", "application/json"),
                   ("content-length", str(len(body))), *headers)
        data = self.conn.send(h11.Request(method="POST", target=path, headers=headers))
        data += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        event = await self.next_event()
        if not isinstance(event, h11.Response):
            raise StreamError(f"expected a response, got {type(event).__name__}")
        return event.status_code

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                if not data and self.conn.their_state is not h11.DONE:
                    raise StreamError("connection closed mid-response")
                continue
            return event

    async def first_data(self) -> None:
        """Wait for the first body chunk carrying an SSE `data:` line (the stream stays open)."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data) and b"data:" in event.data:
                return
            if isinstance(event, h11.EndOfMessage):
                raise StreamError("stream ended before its first event")

    async def body_chunks(self) -> Any:
        """The body's data chunks until the end of the message."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return


def count_events(buffer: bytearray, chunk: bytes) -> tuple[int, bool]:
    """Append `chunk`; consume complete SSE events; (data events, whether [DONE] came)."""
    buffer.extend(chunk)
    count = 0
    done = False
    while (end := buffer.find(b"\n\n")) >= 0:
        event = bytes(buffer[:end])
        del buffer[: end + 2]
        if event.startswith(b"data:"):
            if event[5:].strip() == b"[DONE]":
                done = True
            else:
                count += 1
    return count, done


async def relay_events(port: int, streams: int, events: int, timeout_s: float) -> dict[str, Any]:
    """`streams` concurrent `bench-events` streams; events received per second overall.

    Connections are opened first, so the clock covers only requests and relayed events.
    """
    body = chat_body("bench-events")
    received = 0
    errors = 0
    clients: list[Client] = []
    with trio.move_on_after(timeout_s) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(_connect_into, port, clients)
        errors += streams - len(clients)
        start = time.perf_counter()

        async def one(client: Client) -> None:
            nonlocal received, errors
            buffer = bytearray()
            got, done = 0, False
            try:
                if await client.send_post(body) != 200:
                    raise StreamError("status")
                async for chunk in client.body_chunks():
                    n, finished = count_events(buffer, chunk)
                    got += n
                    done = done or finished
            except (StreamError, *CONNECT_ERRORS):
                pass
            received += got
            if got != events or not done:
                errors += 1

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(one, client)
        elapsed = time.perf_counter() - start
    for client in clients:
        await client.aclose()
    if scope.cancelled_caught:
        return {"error": f"timed out after {timeout_s} s", "events": received, "errors": streams}
    return {
        "streams": streams, "events_per_stream": events, "events": received,
        "seconds": round(elapsed, 3), "events_per_s": round(received / elapsed, 1),
        "errors": errors,
    }


async def _connect_into(port: int, clients: list[Client]) -> None:
    with contextlib.suppress(OSError):
        clients.append(await Client.connect(port))


async def first_byte(port: int, model: str, count: int, timeout_s: float) -> dict[str, Any]:
    """Time from sending a streamed request to its first `data:` byte, on one connection."""
    body = chat_body(model)
    samples: list[float] = []
    errors = 0
    with trio.move_on_after(timeout_s):
        client = await Client.connect(port)
        try:
            for index in range(count + 5):
                start = time.perf_counter()
                first: float | None = None
                try:
                    if await client.send_post(body) != 200:
                        raise StreamError("status")
                    async for chunk in client.body_chunks():
                        if first is None and b"data:" in chunk:
                            first = time.perf_counter() - start
                except (StreamError, *CONNECT_ERRORS):
                    errors += 1
                    await client.aclose()
                    client = await Client.connect(port)
                    continue
                if index >= 5 and first is not None:  # the first five warm the path
                    samples.append(first * 1000)
        finally:
            await client.aclose()
    return {
        "samples": len(samples),
        "median_ms": round(statistics.median(samples), 3) if samples else math.nan,
        "p90_ms": round(percentile(samples, 90), 3) if samples else math.nan,
        "errors": errors + max(0, count - len(samples) - errors),
    }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def hold_streams(
    port: int, count: int, timeout_s: float, on_held: Callable[[int], dict[str, Any]]
) -> dict[str, Any]:
    """Open `count` streams that the upstream keeps open, call `on_held` once all are open
    (or failed), then close them all. Returns what `on_held` measured plus error counts.

    Connections are opened 50 at a time so the gateway's accept backlog is not the test.
    """
    body = chat_body("bench-hold")
    held = 0
    failed = 0
    settled = trio.Event()
    opening = trio.CapacityLimiter(50)
    measured: dict[str, Any] = {}

    def note(ok: bool) -> None:
        nonlocal held, failed
        if ok:
            held += 1
        else:
            failed += 1
        if held + failed == count:
            settled.set()

    async def one() -> None:
        client = None
        try:
            async with opening:
                client = await Client.connect(port)
                if await client.send_post(body) != 200:
                    raise StreamError("status")
                await client.first_data()
            note(True)
            await trio.sleep_forever()
        except (StreamError, *CONNECT_ERRORS):
            note(False)
        finally:
            if client is not None:
                await client.aclose()

    start = time.perf_counter()
    with trio.move_on_after(timeout_s) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
            await settled.wait()
            measured = dict(on_held(held))
            measured["open_seconds"] = round(time.perf_counter() - start, 3)
            nursery.cancel_scope.cancel()
    result = {"streams": count, "held": held, "errors": failed + (count - held - failed)}
    if scope.cancelled_caught:
        result["error"] = f"timed out after {timeout_s} s with {held} held"
    return {**result, **measured}
