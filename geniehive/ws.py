"""Websocket chat (SPEC §4): several streamed chat requests at once on one socket.

Client messages (JSON text frames)::

    {"type": "auth", "api_key": "..."}                  browsers, which cannot set headers
    {"type": "chat.request", "id": "r1", "body": {...}}  any chat body; `stream` is forced on
    {"type": "cancel", "id": "r1"}                       stops r1's upstream generation

Server messages::

    {"type": "chat.chunk", "id": "r1", "chunk": {...}}   one chat.completion.chunk, as relayed
    {"type": "chat.done", "id": "r1", "usage": {...}|null}            the stream ended
    {"type": "chat.done", "id": "r1", "usage": null, "cancelled": true}   after `cancel`
    {"type": "error", "id": "r1"|null, "error": {message, type, param, code}}

Rule: every request ends with exactly one `chat.done` or `error` carrying its id, and an
error with an id always means that request is over. An error about a message that names a
live request's id (a duplicate) therefore carries `id: null`. Bad input is answered and the
socket stays usable; a `cancel` for an id that is not live is ignored (it may have just
finished). Each request runs in its own task of the connection's nursery through the relay;
every outgoing frame goes through one sender task, so frames of concurrent requests never
interleave mid-frame and a cancelled request cannot cut a frame in half.

Close codes: 1000 idle (no message and no live request for IDLE_TIMEOUT_S), 1001 the gateway
is shutting down (sent once live requests finished, or at the grace deadline), 4401 missing
or invalid key, 4403 a key without the `inference` scope.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio
from quart import Response

from geniehive.affinity import request_session
from geniehive.asgi import (
    Receive,
    Scope,
    Send,
    log_request,
    new_request_id,
    parse_json,
    scope_headers,
)
from geniehive.auth import OPEN, Principal, presented_key
from geniehive.capacity import place
from geniehive.egress import HOP_HEADER
from geniehive.errors import (
    AuthenticationFailed,
    GenieHiveError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    ShuttingDown,
    render_error,
)
from geniehive.events import failure_message
from geniehive.exchange import Inbound, Outcome, Writer, body_needs
from geniehive.fields import check_body
from geniehive.gate import client_address
from geniehive.relay import Relay
from geniehive.sse import EVENT_END, parse_event_lines
from geniehive.writes import abort_connection, release_on_cut, send_bounded, wait_stalled

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway
    from geniehive.proxy import ProxyApp

log = logging.getLogger("geniehive.request")

PATH = "/v1/chat/completions/ws"
MAX_MESSAGE_BYTES = 1024 * 1024
# hypercorn closes the socket (1009) past its own limit before we see the message; keeping
# it above ours lets an oversized message get an `error` while the socket stays usable.
HYPERCORN_MAX_MESSAGE_BYTES = 4 * MAX_MESSAGE_BYTES
PING_INTERVAL_S = 20.0  # hypercorn's websocket_ping_interval: keeps idle NATs and proxies open
MAX_LIVE_REQUESTS = 16
MAX_ID_CHARS = 128
IDLE_TIMEOUT_S = 300.0
AUTH_TIMEOUT_S = 10.0
SHUTDOWN_POLL_S = 1.0
CLOSE_BUDGET_S = 1.0  # the longest a close frame may take on the way out
OUTBOX_SIZE = 256

SHUTTING_DOWN = ShuttingDown("the gateway is shutting down").error_object()


class BadMessage(Exception):
    """A client message that cannot be acted on; `id` is the id it named, if any."""

    def __init__(self, error: GenieHiveError, request_id: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error.error_object()
        self.id = request_id


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: str
    id: str | None = None
    body: Any = None
    api_key: str | None = None


def parse_message(raw: str | bytes) -> ClientMessage:
    """One client frame as a message; raises BadMessage naming the problem."""
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(RequestTooLarge(f"the message is over the {MAX_MESSAGE_BYTES} byte limit"))
    try:
        obj = parse_json(data, "the message")
    except InvalidRequest as exc:
        raise BadMessage(exc) from None
    kind = obj.get("type")
    request_id = obj.get("id")
    if kind == "auth":
        key = obj.get("api_key")
        if not isinstance(key, str) or not key:
            raise BadMessage(
                InvalidRequest("'api_key' must be a non-empty string", param="api_key")
            )
        return ClientMessage("auth", api_key=key)
    named = request_id if isinstance(request_id, str) else None
    if kind not in ("chat.request", "cancel"):
        raise BadMessage(
            InvalidRequest(f"unknown message type {kind!r}: expected chat.request, cancel or auth",
                           param="type"), named,
        )
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
        raise BadMessage(InvalidRequest(
            f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters", param="id"
        ))
    return ClientMessage(kind, request_id, obj.get("body"))


def encode_message(obj: dict[str, Any]) -> str:
    # ASCII escapes: a client's id may hold lone surrogates, which a text frame cannot carry.
    return json.dumps(obj, separators=(",", ":"))


def chunk_of_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A whole chat.completion (an upstream that ignored `stream`) as one chunk."""
    choices = [
        {"index": c.get("index", 0), "delta": c.get("message") or {},
         "finish_reason": c.get("finish_reason")}
        for c in completion.get("choices") or [] if isinstance(c, dict)
    ]
    chunk = {k: v for k, v in completion.items() if k not in ("choices", "usage")}
    return {**chunk, "object": "chat.completion.chunk", "choices": choices}


class _Request:
    """One live request: turns the relay's SSE bytes into messages for its id."""

    def __init__(self, conn: _Connection, request_id: str) -> None:
        self.conn = conn
        self.id = request_id
        self.scope = trio.CancelScope()
        self.finished = False  # its one terminal message (done or error) is queued
        self.usage: dict[str, Any] | None = None
        self.sse = True
        self.buffer = b""
        self.writer = Writer(self.start, self.body)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.writer.started = True
        content_type = dict(headers).get(b"content-type", b"")
        self.sse = content_type.startswith(b"text/event-stream")

    async def body(self, chunk: bytes, more: bool) -> None:
        self.writer.bytes_out += len(chunk)
        buffer = self.buffer + chunk if self.buffer else chunk
        if not self.sse:
            self.buffer = buffer
            if not more:
                await self._whole_answer(buffer)
            return
        start = 0
        for match in EVENT_END.finditer(buffer):
            await self._event(buffer[start:match.start()])
            start = match.end()
        self.buffer = buffer[start:]
        if not more and self.buffer:
            await self._event(self.buffer)

    async def _event(self, event: bytes) -> None:
        _, data = parse_event_lines(event)
        if data is None or self.finished:
            return  # a comment or keep-alive event, or trailing bytes after the end
        if data.strip() == b"[DONE]":
            await self.done()
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return  # not JSON: nothing a client could use; the HTTP relay passes it, we cannot
        if not isinstance(obj, dict):
            return
        if "error" in obj and "choices" not in obj:
            error = obj["error"]
            if not isinstance(error, dict):
                error = render_error(str(error), "server_error", "upstream_error")
            await self.fail(error)
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        # Splice the relayed JSON text in as is: parsed once to check it, never re-encoded.
        text = data.decode("utf-8", "replace")
        await self.conn.emit(f'{{"type":"chat.chunk","id":{json.dumps(self.id)},"chunk":{text}}}')

    async def _whole_answer(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            await self.fail(render_error("the upstream answer is not JSON", "server_error",
                                         "upstream_error"))
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        chunk = chunk_of_completion(obj)
        await self.conn.emit(encode_message({"type": "chat.chunk", "id": self.id, "chunk": chunk}))
        await self.done()

    async def done(self, *, cancelled: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        message: dict[str, Any] = {"type": "chat.done", "id": self.id,
                                   "usage": None if cancelled else self.usage}
        if cancelled:
            message["cancelled"] = True
        await self.conn.emit(encode_message(message))

    async def fail(self, error: dict[str, Any], *, counted: bool = False) -> None:
        """End the request with one error message. `counted`: the error is the gateway's
        answer, not relayed bytes, so the request log counts its frame as the answer's bytes
        (an upstream's error event was counted as it arrived)."""
        if self.finished:
            return
        self.finished = True
        text = encode_message({"type": "error", "id": self.id, "error": error})
        if counted:
            self.writer.bytes_out += len(text)  # ASCII: characters are bytes
        await self.conn.emit(text)


class _Connection:
    """One websocket: a reader (this task), a sender task and one task per live request."""

    def __init__(self, gateway: Gateway, relay: Relay, send: Send, principal: Principal | None):
        self.gw = gateway
        self.relay = relay
        self.send = send
        self.principal = principal
        self.headers: dict[str, str] = {}  # the handshake's (priority and longest wait)
        self.live: dict[str, _Request] = {}
        self.orphans: list[_Request] = []  # cancelled with the connection before their end
        self.outbox, self.outgoing = trio.open_memory_channel[str](OUTBOX_SIZE)
        self.nursery: trio.Nursery | None = None
        self.idle = trio.CancelScope()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = False  # a close frame went out, or the peer is gone
        self.stopping = False
        self.seen_ready = bool(gateway.ready)
        self.hops = b""  # the hop header its requests send upstream (see egress.py)
        self.pending_since: float | None = None  # when the frame being sent began to wait
        self.address = "-"  # the client's address, for the key gate's failure buckets

    # -- output -------------------------------------------------------------------------
    async def emit(self, text: str) -> None:
        # Closing: what is left to say is dropped with the socket.
        with suppress(trio.ClosedResourceError):
            await self.outbox.send(text)

    async def emit_error(self, error: dict[str, Any], request_id: str | None) -> None:
        await self.emit(encode_message({"type": "error", "id": request_id, "error": error}))

    def request_close(self, code: int, reason: str) -> None:
        """Send what is queued, then a close frame; the sender then ends the connection."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.outbox.close()

    async def run_sender(self) -> None:
        clock = trio.current_time
        async for text in self.outgoing:
            self.pending_since = clock()
            await self.send({"type": "websocket.send", "text": text})
            self.pending_since = None
        await self.send_close(self.close_code or 1000, self.close_reason)
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    async def send_close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        close = {"type": "websocket.close", "code": code, "reason": reason}
        await send_bounded(self.send, [close], CLOSE_BUDGET_S)

    async def watch_writes(self) -> None:
        """Close the connection once a frame has waited `server.write_timeout_s` for the
        client to read: its live requests then end and their upstream calls are cancelled."""
        timeout = self.gw.config.server.write_timeout_s
        try:
            await wait_stalled(self, timeout)
        except trio.Cancelled:
            await release_on_cut(self, self.send)
            raise
        log.warning("websocket: the client accepted no bytes for %.1f s: closed its "
                    "connection and cancelled its %d live request(s)", timeout, len(self.live))
        self.gw.metrics.client_write_timeouts.labels("chat_ws").inc()
        self.closed = True  # no close frame: the client reads nothing
        abort_connection(self.send)

    # -- input --------------------------------------------------------------------------
    def arm_idle(self) -> None:
        """Start the idle clock when nothing is live (the auth clock before a key)."""
        if self.close_code is not None or self.live:
            self.idle.deadline = math.inf
        else:
            timeout = IDLE_TIMEOUT_S if self.principal is not None else AUTH_TIMEOUT_S
            self.idle.deadline = trio.current_time() + timeout

    async def run_reader(self, receive: Receive) -> None:
        while True:
            with trio.CancelScope() as self.idle:
                self.arm_idle()
                message = await receive()
            if self.idle.cancelled_caught:
                if self.principal is None:
                    await self.refuse(AuthenticationFailed("no API key sent in time"), 4401)
                else:
                    self.request_close(1000, "idle")
                continue
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return
            if message["type"] == "websocket.receive" and self.close_code is None:
                await self.on_frame(message.get("text") or message.get("bytes") or b"")

    async def on_frame(self, raw: str | bytes) -> None:
        try:
            message = parse_message(raw)
        except BadMessage as exc:
            if self.principal is None:
                await self.refuse(AuthenticationFailed("authentication required"), 4401)
                return
            named = exc.id if exc.id not in self.live else None
            await self.emit_error(exc.error, named)
            return
        if message.type == "auth":
            await self.authenticate(message.api_key)
        elif self.principal is None:
            await self.refuse(AuthenticationFailed(
                'authentication required: send {"type": "auth", "api_key": ...} first'), 4401)
        elif message.type == "cancel":
            request = self.live.get(message.id or "")
            if request is not None:
                request.scope.cancel()
        else:
            await self.submit(message)

    async def authenticate(self, key: str | None) -> None:
        if self.gw.auth.open_mode:
            self.principal = self.principal or OPEN
            return
        try:
            # Verified off the event loop (and throttled per address) before the scope check.
            await self.gw.gate.identify(key or "", self.address)
            self.principal = self.gw.auth.authorize({"x-api-key": key or ""}, "inference")
        except GenieHiveError as exc:
            await self.refuse(exc, 4403 if isinstance(exc, PermissionDenied) else 4401)

    async def refuse(self, exc: GenieHiveError, code: int) -> None:
        await self.emit_error(exc.error_object(), None)
        self.request_close(code, exc.message[:120])

    # -- requests -----------------------------------------------------------------------
    async def submit(self, message: ClientMessage) -> None:
        request_id = message.id
        assert request_id is not None and self.principal is not None
        if request_id in self.live:
            error = InvalidRequest(f"a request with id {request_id!r} is still live", param="id")
            await self.emit_error(error.error_object(), None)
            return
        try:
            inbound = self.inbound(message.body)
        except GenieHiveError as exc:
            await self.emit_error(exc.error_object(), request_id)
            return
        request = _Request(self, request_id)
        self.live[request_id] = request
        self.arm_idle()
        assert self.nursery is not None
        self.nursery.start_soon(self.run_request, request, inbound)

    def inbound(self, body: Any) -> Inbound:
        """The relay's view of a chat body; raises the error the request gets."""
        if self.stopping or (self.seen_ready and not self.gw.ready):
            raise ShuttingDown(SHUTTING_DOWN["message"])
        if len(self.live) >= MAX_LIVE_REQUESTS:
            raise RateLimited(f"at most {MAX_LIVE_REQUESTS} live requests per connection")
        if not isinstance(body, dict):
            raise InvalidRequest("'body' must be a chat completion request object", param="body")
        check_body(body, "chat")
        assert self.principal is not None
        if not self.principal.may_use_model(body["model"]):
            raise PermissionDenied(f"this key may not use the model '{body['model']}'")
        inbound = Inbound("chat", "chat", body["model"], stream=True,
                          body={**body, "stream": True}, needs=body_needs(body))
        inbound.request_id = new_request_id()
        inbound.hops = self.hops
        # The session: the handshake's headers, or the request's body.
        inbound.session = request_session(self.headers, body)
        # Its place at the admission queue: from the key and the handshake's headers.
        place(inbound, self.principal, self.headers, open_mode=self.gw.auth.open_mode,
              rates=self.gw.key_rates, now=trio.current_time())
        return inbound

    async def run_request(self, request: _Request, inbound: Inbound) -> None:
        outcome = Outcome()
        error: GenieHiveError | None = None
        started = trio.current_time()
        try:
            with request.scope:
                await self.relay.run(inbound, request.writer, outcome)
            if request.scope.cancelled_caught:
                await request.done(cancelled=True)
            else:
                await request.done()  # a stream that ended without [DONE]
        except GenieHiveError as exc:
            outcome.status = exc.http_status
            error = exc
            await request.fail(exc.error_object(), counted=True)
        except Exception:
            log.exception("websocket request %s failed unexpectedly", inbound.request_id)
            outcome.status = 500
            await request.fail(render_error("internal error", "server_error", "internal_error"),
                               counted=True)
        finally:
            del self.live[request.id]
            if not request.finished:
                self.orphans.append(request)
            # 499 as for HTTP: the client cancelled, or went away before the end.
            gone = request.scope.cancelled_caught or not request.finished
            log_request(
                inbound.request_id, "chat", self.principal.name if self.principal else "-",
                inbound.model, outcome, 499 if gone else outcome.status,
                trio.current_time() - started, request.writer.bytes_out, ws_id=request.id,
            )
            if not gone and outcome.status >= 400:
                self.gw.recent_errors.add(
                    request_id=inbound.request_id, endpoint="chat", model=inbound.model,
                    service_id=outcome.service_id, status=outcome.status,
                    message=failure_message(outcome.status, error, outcome.failures),
                )
            if self.stopping and not self.live:
                self.request_close(1001, "server shutting down")
            self.arm_idle()

    async def watch_shutdown(self) -> None:
        """Refuse new requests once the gateway stops; close when the live ones are done."""
        while True:
            if self.gw.ready:
                self.seen_ready = True
            elif self.seen_ready:
                break
            await trio.sleep(SHUTDOWN_POLL_S)
        self.stopping = True
        if not self.live:
            self.request_close(1001, "server shutting down")

    async def say_goodbye(self) -> None:
        """Cancelled from outside (the shutdown grace ran out): end each request, then close,
        within CLOSE_BUDGET_S in all."""
        if self.closed:
            return
        self.closed = True
        messages: list[dict[str, Any]] = [
            {"type": "websocket.send", "text": encode_message(
                {"type": "error", "id": request.id, "error": SHUTTING_DOWN})}
            for request in self.orphans
        ]
        messages.append({"type": "websocket.close", "code": 1001,
                         "reason": "server shutting down"})
        await send_bounded(self.send, messages, CLOSE_BUDGET_S)


async def serve_websocket(
    gateway: Gateway, relay: Relay, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one websocket connection until either side closes it."""
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    headers = scope_headers(scope)
    principal: Principal | None = None
    failure: GenieHiveError | None = None
    address = client_address(scope)
    key = presented_key(headers)
    if gateway.auth.open_mode or key is not None:
        try:
            if key is not None and not gateway.auth.open_mode:
                await gateway.gate.identify(key, address)
            principal = gateway.auth.authorize(headers, "inference")
        except GenieHiveError as exc:
            failure = exc
    await send({"type": "websocket.accept"})
    conn = _Connection(gateway, relay, send, principal)
    conn.headers = headers
    # The proxy refused a handshake that had passed through this gateway before.
    conn.hops = gateway.hops.next_hops(headers.get(HOP_HEADER))
    conn.address = address
    try:
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            nursery.start_soon(conn.run_sender)
            nursery.start_soon(conn.watch_shutdown)
            nursery.start_soon(conn.watch_writes)
            if failure is not None:
                await conn.refuse(failure, 4403 if isinstance(failure, PermissionDenied) else 4401)
            await conn.run_reader(receive)
            nursery.cancel_scope.cancel()  # the peer is gone: stop every live request
    finally:
        if not conn.closed:
            await conn.say_goodbye()


def register_websocket(proxy: ProxyApp, gateway: Gateway) -> None:
    """Serve websocket chat at PATH beside the proxy's HTTP routes."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_websocket(gateway, proxy.relay, scope, receive, send)

    proxy.websockets[PATH] = handler


def register_playground(app: QuartTrio, gateway: Gateway) -> None:
    """Serve the browser playground (one static page) at GET /playground.

    The page holds no data and needs no key to load: a browser cannot send one on
    navigation. Every call it makes (`/v1/models`, the websocket) is authorized as usual.
    """
    page = resources.files("geniehive").joinpath("playground.html").read_bytes()

    @app.get("/playground")
    async def playground() -> Response:
        response = Response(page, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = PLAYGROUND_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


# Inline script and style only; the page may talk to its own origin (HTTP and websocket).
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
