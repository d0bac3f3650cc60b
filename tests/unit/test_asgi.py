"""The edge toolkit's rules, on in-memory ASGI messages: the body reader's drain rule, the
error answer's headers, the route headers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from geniehive.asgi import (
    DRAIN_BYTES,
    ClientGone,
    chunk_receive,
    read_body,
    render_error_answer,
    route_headers,
)
from geniehive.errors import (
    AuthenticationFailed,
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    TooManyAuthFailures,
)


def receiver(chunks: list[bytes], *, disconnect: bool = False) -> tuple[Any, list[int]]:
    """An ASGI receive that sends `chunks` as one body; the list counts what was taken."""
    taken: list[int] = []

    async def receive() -> dict[str, Any]:
        if len(taken) == len(chunks):
            return {"type": "http.disconnect"}
        taken.append(len(chunks[len(taken)]))
        more = len(taken) < len(chunks) or disconnect
        return {"type": "http.request", "body": chunks[len(taken) - 1], "more_body": more}

    return receive, taken


async def test_a_body_within_the_limit_is_read_whole() -> None:
    receive, _ = receiver([b'{"a":', b" 1}"])
    assert await read_body(receive, 8) == b'{"a": 1}'


async def test_past_the_limit_the_rest_is_drained_before_the_413() -> None:
    receive, taken = receiver([b"x" * 1024] * 40)
    with pytest.raises(RequestTooLarge, match="over the 4096 byte limit"):
        await read_body(receive, 4096)
    assert len(taken) == 40  # every chunk read, so the connection can serve the next request


async def test_draining_stops_at_the_hard_cap() -> None:
    limit = 1024
    part = 1024 * 1024
    parts = (limit + DRAIN_BYTES) // part + 10
    receive, taken = receiver([b"x" * part] * parts)
    with pytest.raises(RequestTooLarge):
        await read_body(receive, limit)
    assert sum(taken) == (limit + DRAIN_BYTES) // part * part + part  # the first past the cap


async def test_a_client_that_leaves_mid_body_raises_client_gone() -> None:
    receive, _ = receiver([b"partial"], disconnect=True)
    with pytest.raises(ClientGone):
        await read_body(receive, 1024)


async def test_a_framework_body_iterator_is_read_by_the_same_rule() -> None:
    async def chunks() -> Any:
        for _ in range(8):
            yield b"x" * 1024

    with pytest.raises(RequestTooLarge):
        await read_body(chunk_receive(chunks()), 4096)

    async def small() -> Any:
        yield b"ok"

    assert await read_body(chunk_receive(small()), 4096) == b"ok"


@dataclass
class Route:
    service_id: str | None = None
    upstream_model: str | None = None
    route: str = "direct"
    attempts: int = 0
    queued_ms: float | None = None
    load_ms: float | None = None
    affinity: str | None = None


@pytest.mark.parametrize(
    ("exc", "close", "expected"),
    [
        (InvalidRequest("bad"), False, {}),
        (AuthenticationFailed("no key"), True, {"connection": "close"}),
        (RequestTimeout("late"), False, {"connection": "close"}),
        (TooManyAuthFailures("slow down", retry_after_s=7), True,
         {"connection": "close", "retry-after": "7"}),
    ],
)
def test_an_error_answer_closes_where_the_body_is_unread_or_late(
    exc: Any, close: bool, expected: dict[str, str]
) -> None:
    status, headers, body = render_error_answer(exc, "r1", close=close)
    named = {k.decode(): v.decode() for k, v in headers}
    assert status == exc.http_status
    assert named == {"content-type": "application/json", "content-length": str(len(body)),
                     "x-request-id": "r1", **expected}
    assert json.loads(body) == {"error": exc.error_object()}


def test_route_headers_name_each_pair_once_known() -> None:
    assert route_headers("r1", Route()) == [(b"x-request-id", b"r1")]
    answered = Route("gpu/chat", "qwen3:8b", "role:general", 2)
    assert dict(route_headers("r1", answered)) == {
        b"x-request-id": b"r1", b"x-geniehive-service": b"gpu/chat",
        b"x-geniehive-model": b"qwen3:8b", b"x-geniehive-route": b"role:general",
        b"x-geniehive-attempts": b"2", b"x-geniehive-load": b"warm",
    }
    loaded = Route("gpu/chat", "qwen3:8b", "direct", 1, load_ms=1234.4)
    headers = dict(route_headers("r1", loaded))
    assert headers[b"x-geniehive-load"] == b"cold"
    assert headers[b"x-geniehive-load-ms"] == b"1234"
    assert b"x-geniehive-affinity" not in headers  # it named no session
    sticky = Route("gpu/chat", "qwen3:8b", "direct", 1, affinity="hit")
    assert dict(route_headers("r1", sticky))[b"x-geniehive-affinity"] == b"hit"

