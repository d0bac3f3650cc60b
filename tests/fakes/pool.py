"""An in-memory stand-in for `geniehive.pool.UpstreamPool`: scripted answers, no sockets.

    transport = FakeTransport()
    transport.script("http://a.test", Reply.error(503, "busy"), Reply.json({"ok": True}))
    transport.script("http://b.test", Stream([b"data: {}\\n\\n"], end="fail"))
    relay = Relay(gateway, transport)

Each request to a base URL takes that URL's next answer; the last one repeats. A request to
an URL no script names fails the test. Answers:

- `Reply(status, body, headers)`: headers at once, then the body (`Reply.json`, `Reply.error`)
- `Stream(chunks, end=...)`: a 200 event stream of `chunks`, `gap_s` apart, then `end`:
  "done" (the body ends), "fail" (the upstream breaks off: `ProtocolFailed`) or "stall"
  (no further byte, ever)
- `Refused()`: the connection is refused (`ConnectFailed`); `Refused(timeout=True)`: it
  times out (`ConnectTimeout`)
- `SlowHead(delay_s, answer)`: the answer's headers only after `delay_s`

Time passes on trio's clock, so tests run these on the autojump clock. Every request is
recorded in `sent`, every response in `responses` (with whether it was closed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from geniehive.pool import ConnectFailed, ConnectTimeout, ProtocolFailed

JSON = ((b"content-type", b"application/json"),)
EVENT_STREAM = ((b"content-type", b"text/event-stream"),)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = JSON

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        """An OpenAI-shaped error answer."""
        return cls.json({"error": {"message": message, "type": "server_error"}}, status)


@dataclass(frozen=True)
class Stream:
    chunks: Sequence[bytes]
    end: str = "done"  # done | fail | stall
    gap_s: float = 0.0

    def __post_init__(self) -> None:
        if self.end not in ("done", "fail", "stall"):
            raise ValueError(f"unknown stream end {self.end!r}")


@dataclass(frozen=True)
class Refused:
    timeout: bool = False


@dataclass(frozen=True)
class SlowHead:
    delay_s: float
    answer: Reply | Stream


Answer = Reply | Stream | Refused | SlowHead


@dataclass
class Sent:
    """One request the relay sent."""

    method: str
    url: str
    headers: dict[bytes, bytes]
    body: bytes
    content_length: int | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeResponse:
    """Implements what the relay reads of `geniehive.pool.PoolResponse`."""

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]],
                 chunks: Sequence[bytes], end: str, gap_s: float) -> None:
        self.status = status
        self.headers = list(headers)
        self._chunks = list(chunks)
        self._end = end
        self._gap_s = gap_s
        self.closed = False
        self.read_to_end = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    async def read_chunk(self) -> bytes | None:
        if self.closed:
            raise ProtocolFailed("the response is closed")
        if self._chunks:
            if self._gap_s:
                await trio.sleep(self._gap_s)
            return self._chunks.pop(0)
        if self._end == "fail":
            raise ProtocolFailed("upstream failed mid-body: reset by peer")
        if self._end == "stall":
            await trio.sleep_forever()
        self.read_to_end = True
        return None

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeTransport:
    """Implements `geniehive.exchange.Transport` from per-base-URL scripts."""

    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    responses: list[FakeResponse] = field(default_factory=list)

    def script(self, base_url: str, *answers: Answer) -> None:
        if not answers:
            raise ValueError("a script needs at least one answer")
        self.scripts[base_url.rstrip("/")] = list(answers)

    def urls(self) -> list[str]:
        """The URL of each request, in the order they were sent."""
        return [s.url for s in self.sent]

    def open_responses(self) -> list[FakeResponse]:
        return [r for r in self.responses if not r.closed]

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        content_length: int | None = None,
    ) -> FakeResponse:
        if not isinstance(body, bytes):
            body = b"".join([part async for part in body])
        self.sent.append(Sent(method, url, dict(headers), body, content_length))
        answer = self._next(url)
        if isinstance(answer, SlowHead):
            await trio.sleep(answer.delay_s)
            answer = answer.answer
        if isinstance(answer, Refused):
            if answer.timeout:
                raise ConnectTimeout(f"no connection to {url} in time")
            raise ConnectFailed(f"cannot connect to {url}: [Errno 111] Connection refused")
        if isinstance(answer, Stream):
            response = FakeResponse(200, EVENT_STREAM, answer.chunks, answer.end, answer.gap_s)
        else:
            response = FakeResponse(
                answer.status, answer.headers, [answer.body] if answer.body else [], "done", 0.0
            )
        self.responses.append(response)
        return response

    def _next(self, url: str) -> Answer:
        for base, answers in self.scripts.items():
            if url.startswith(base + "/"):
                return answers.pop(0) if len(answers) > 1 else answers[0]
        raise AssertionError(f"no script answers {url}")
