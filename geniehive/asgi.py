"""The edge toolkit: what every ASGI front of the gateway shares (docs/architecture.md).

Rule: the proxy, the node port, the node routes on the client port, the websocket and the
Quart app read bodies, answer errors and log requests only through this module, so each of
those has one rule; edge modules import this and lower layers, never each other.

    Scope, Receive, Send, ASGIApp   the ASGI type aliases
    ClientGone                      the client disconnected (reading or writing)
    BodyClock                       `receive` with `server.body_timeout_s` between body bytes
    receive_body(), read_body()     the request body, counted; the one drain rule past the cap
    chunk_receive()                 a framework's body iterator (Quart) as an ASGI `receive`
    parse_json()                    a body as a JSON object, by geniehive/strictjson.py
    route_headers()                 X-Request-Id and the X-GenieHive-* route headers
    render_error_answer()           an error as (status, headers, body) in the OpenAI shape
    send_error(), error_messages()  that answer onto an ASGI `send`
    refuse_websocket()              a websocket handshake denied with that answer
    log_request()                   the one request log line (HTTP and websocket)
    log_unrouted(), quoted()        the log line of a request no route serves; a client's text
                                    quoted and capped for a log line
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, MutableMapping
from contextlib import suppress
from typing import Any, Protocol

import trio

from geniehive import strictjson
from geniehive.errors import (
    GenieHiveError,
    InvalidRequest,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
)

log = logging.getLogger("geniehive.request")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Past the body limit the rest is read and discarded up to this much more (at least the
# limit again), then 413: the keep-alive connection then stays usable for the client's next
# request. Beyond it the connection is not worth saving.
DRAIN_BYTES = 16 * 1024 * 1024


class ClientGone(Exception):
    """The client disconnected while we were reading its request or writing the answer."""


class RouteFacts(Protocol):
    """What the route headers and the request log say about where a request went
    (the relay's `Outcome`)."""

    @property
    def service_id(self) -> str | None: ...
    @property
    def upstream_model(self) -> str | None: ...
    @property
    def route(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def queued_ms(self) -> float | None: ...
    @property
    def load_ms(self) -> float | None: ...
    @property
    def affinity(self) -> str | None: ...


# --- headers ---------------------------------------------------------------------------------


def scope_headers(scope: Scope) -> dict[str, str]:
    """The request headers as a dict (ASGI header names arrive lower-cased)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def scope_request_id(scope: Scope) -> str:
    """The client's X-Request-Id, or a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and value:
            return value.decode("latin-1")
    return new_request_id()


def new_request_id() -> str:
    return uuid.uuid4().hex


WARM = (b"x-geniehive-load", b"warm")
COLD = (b"x-geniehive-load", b"cold")


def route_headers(request_id: str, route: RouteFacts | None) -> list[tuple[bytes, bytes]]:
    """X-Request-Id, then the service and model that answered and the route and attempts
    taken (each pair once known), and how long it waited for a slot (when it did), as sent
    on every answer to a forwarded request; an upstream's answer also says whether the model
    was warm or had to be started or loaded first, and then how long that took; a request
    that named a session, whether it went where that session went last (`hit`, `miss`,
    `moved`: geniehive/affinity.py)."""
    if route is None:
        return [(b"x-request-id", request_id.encode())]
    headers = _route_headers(request_id, route)
    if route.affinity is not None:
        headers.append((b"x-geniehive-affinity", route.affinity.encode()))
    return headers


def _route_headers(request_id: str, route: RouteFacts) -> list[tuple[bytes, bytes]]:
    queued = route.queued_ms
    if route.service_id is not None and route.attempts:  # every answer from an upstream
        headers = [
            (b"x-request-id", request_id.encode()),
            (b"x-geniehive-service", route.service_id.encode()),
            (b"x-geniehive-model", (route.upstream_model or "").encode()),
            (b"x-geniehive-route", route.route.encode()),
            (b"x-geniehive-attempts", str(route.attempts).encode()),
        ]
        if queued is not None:
            headers.append((b"x-geniehive-queued-ms", str(round(queued)).encode()))
        load = route.load_ms
        if load is None:
            headers.append(WARM)
        else:
            headers.append(COLD)
            headers.append((b"x-geniehive-load-ms", str(round(load)).encode()))
        return headers
    headers = [(b"x-request-id", request_id.encode())]
    if route.service_id is not None:
        headers.append((b"x-geniehive-service", route.service_id.encode()))
        headers.append((b"x-geniehive-model", (route.upstream_model or "").encode()))
    if route.attempts:
        headers.append((b"x-geniehive-route", route.route.encode()))
        headers.append((b"x-geniehive-attempts", str(route.attempts).encode()))
    if queued is not None:
        headers.append((b"x-geniehive-queued-ms", str(round(queued)).encode()))
    return headers


# --- the request body ----------------------------------------------------------------------


class BodyClock:
    """`receive` for one HTTP request: each wait for body bytes lasts at most `timeout_s`.

    Raises RequestTimeout past it. Once the body is complete, receive passes through
    unbounded (the app then only waits for the client's disconnect).
    """

    __slots__ = ("_done", "_nowait", "_receive", "_timeout_s")

    def __init__(self, receive: Receive, timeout_s: float) -> None:
        self._receive = receive
        self._timeout_s = timeout_s
        self._done = False
        # hypercorn's receive is a trio memory channel's: a message already queued (a small
        # body usually is) is taken without arming a timer, which costs more than the read.
        self._nowait = getattr(getattr(receive, "__self__", None), "receive_nowait", None)

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        message: Message | None = None
        if self._nowait is not None:
            with suppress(trio.WouldBlock):
                message = self._nowait()
        if message is None:
            with trio.move_on_after(self._timeout_s) as waited:
                message = await self._receive()
            if waited.cancelled_caught or message is None:
                raise RequestTimeout(f"no request body bytes arrived for {self._timeout_s:g} s")
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message


async def receive_body(
    receive: Receive, limit: int, sink: Callable[[bytes], object], what: str = "the request body"
) -> int:
    """Feed the request body to `sink` chunk by chunk and return its size.

    Past `limit` the rest is read and discarded (up to `drain_cap(limit)`) and then
    RequestTooLarge is raised, so the keep-alive connection stays usable for the client's
    next request. Raises ClientGone when the client disconnects, and RequestTimeout from a
    BodyClock.
    """
    size = 0
    cap = drain_cap(limit)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            sink(chunk)
        if not message.get("more_body", False) or size > cap:
            break
    if size > limit:
        raise RequestTooLarge(f"{what} is over the {limit} byte limit")
    return size


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; raises as receive_body does."""
    chunks: list[bytes] = []
    await receive_body(receive, limit, chunks.append)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def drain_cap(limit: int) -> int:
    """How much of an oversized body is read and discarded before answering 413."""
    return limit + max(limit, DRAIN_BYTES)


def chunk_receive(chunks: AsyncIterable[bytes]) -> Receive:
    """An ASGI `receive` over a framework's body iterator (Quart's `request.body`), so that
    the routes of the Quart app read bodies by the same rule as the raw ASGI routes."""
    iterator = aiter(chunks)

    async def receive() -> Message:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    return receive


def parse_json(raw: bytes, what: str = "the request body") -> dict[str, Any]:
    """`raw` as a JSON object, read by the one strict parser (geniehive/strictjson.py).

    Raises InvalidRequest (not JSON, NaN/Infinity, a key twice, too deep, not an object).
    """
    try:
        return strictjson.parse_object(raw)
    except strictjson.JSONRejected as exc:
        raise InvalidRequest(f"{what} {exc.problem}", param=exc.param) from None


async def read_json_body(chunks: AsyncIterable[bytes], limit: int) -> dict[str, Any]:
    """A Quart route's JSON body (pass `request.body`), counted, drained and parsed by the
    rules of the raw ASGI routes. Raises as read_body and parse_json do."""
    return parse_json(await read_body(chunk_receive(chunks), limit))


# --- error answers -------------------------------------------------------------------------


def render_error_answer(
    exc: GenieHiveError, request_id: str, route: RouteFacts | None = None, *, close: bool = False,
    render: Callable[[GenieHiveError], bytes] | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error answer in the OpenAI shape (or the one `render` gives, a client dialect's):
    (status, headers, body).

    `close` adds `Connection: close`, for an answer given while the request body is left
    unread; a late body (RequestTimeout) always closes, as the rest is not worth waiting for.
    A 429 says when to retry (`Retry-After`).
    """
    body = exc.body() if render is None else render(exc)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *route_headers(request_id, route),
    ]
    if close or isinstance(exc, RequestTimeout):
        headers.append((b"connection", b"close"))
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    return exc.http_status, headers, body


def error_messages(
    exc: GenieHiveError, request_id: str, route: RouteFacts | None = None, *, close: bool = False,
    render: Callable[[GenieHiveError], bytes] | None = None,
) -> tuple[Message, Message]:
    """The two ASGI messages of an error answer (see render_error_answer)."""
    status, headers, body = render_error_answer(exc, request_id, route, close=close, render=render)
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


async def send_error(
    send: Send, exc: GenieHiveError, request_id: str, route: RouteFacts | None = None,
    *, close: bool = False, render: Callable[[GenieHiveError], bytes] | None = None,
) -> int:
    """Answer `exc` (see render_error_answer), shielded so that a cancellation cannot leave
    the connection stuck halfway through the answer. Returns the size of the body sent,
    which the request log counts as it counts any answer's body (the head is not counted)."""
    start, body = error_messages(exc, request_id, route, close=close, render=render)
    with trio.CancelScope(shield=True):
        await send(start)
        await send(body)
    return len(body["body"])


async def send_json(
    send: Send, status: int, payload: Any, request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A JSON answer that is not an error (the node port's), with `extra` headers."""
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def refuse_websocket(receive: Receive, send: Send, exc: GenieHiveError) -> None:
    """Deny a websocket handshake with an HTTP answer in the OpenAI error shape."""
    if (await receive())["type"] != "websocket.connect":
        return
    body = exc.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "websocket.http.response.start", "status": exc.http_status,
                "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


# --- the request log -----------------------------------------------------------------------

LOGGED_TEXT_CHARS = 256  # of a client's text (a path, a User-Agent) in a log line

_HTTP_LINE = (
    "request id=%s endpoint=%s key=%s model=%s route=%s service=%s status=%d attempts=%d "
    "duration_ms=%.1f bytes=%d"
)
_WS_LINE = (
    "request id=%s endpoint=%s ws_id=%s key=%s model=%s route=%s service=%s status=%d "
    "attempts=%d duration_ms=%.1f bytes=%d"
)


def log_request(
    request_id: str, endpoint: str, key: str, model: str, route: RouteFacts, status: int,
    duration_s: float, bytes_out: int, *, ws_id: str | None = None,
) -> None:
    """The one log line of a finished request. `endpoint` is the API the client called, as
    the metrics name it (`chat`, `embeddings`, `responses`, ...): one model serves several,
    and the line says which. `ws_id` is the client's id of a websocket request, logged as a
    JSON string so that no id can forge a line."""
    service = route.service_id or "-"
    if ws_id is None:
        log.info(_HTTP_LINE, request_id, endpoint, key, model, route.route, service, status,
                 route.attempts, duration_s * 1000, bytes_out)
    else:
        log.info(_WS_LINE, request_id, endpoint, json.dumps(ws_id), key, model, route.route,
                 service, status, route.attempts, duration_s * 1000, bytes_out)


def quoted(text: str, limit: int = LOGGED_TEXT_CHARS) -> str:
    """`text` as a JSON string literal for a log line, cut to its first `limit` characters
    (then ending in `...`): whatever a client sends, it stays one value on one line."""
    return json.dumps(text if len(text) <= limit else text[:limit] + "...")


def log_unrouted(method: str, path: str, user_agent: str | None) -> None:
    """The log line of a request no route serves, naming its client's User-Agent.

    WARNING under `/v1` (a client expects an API this gateway does not serve), INFO elsewhere
    (browsers and scanners). The method, path and User-Agent are `quoted`.
    """
    level = logging.WARNING if path == "/v1" or path.startswith("/v1/") else logging.INFO
    log.log(level, "no route for %s %s user_agent=%s", quoted(method, 32), quoted(path),
            quoted(user_agent) if user_agent is not None else "-")
