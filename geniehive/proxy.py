"""The client API's forwarding routes as a lean ASGI app in front of the Quart app.

Rule: this is the hot path. It reads the body itself (counting bytes, so chunked uploads
cannot pass the cap), validates, routes on the immutable snapshot and relays; every other
path goes to the Quart app. A client that goes away (`http.disconnect`) cancels the relay
at once, which closes the upstream request. Errors before the first byte are rendered in
the OpenAI shape; none escapes as a plain-text 500.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from geniehive.errors import (
    GenieHiveError,
    InvalidRequest,
    PermissionDenied,
    RequestTimeout,
    RequestTooLarge,
)
from geniehive.gate import BodyClock, send_refusal
from geniehive.relay import Inbound, Outcome, Relay, Upload, Writer

log = logging.getLogger("geniehive.request")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# path -> (endpoint, operation)
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", "chat"),
    "/v1/completions": ("completion", "completion"),
    "/v1/embeddings": ("embeddings", "embeddings"),
    "/v1/audio/transcriptions": ("transcription", "transcription"),
    "/v1/audio/translations": ("translation", "transcription"),
    "/v1/audio/speech": ("speech", "speech"),
    "/v1/images/generations": ("image", "image"),
}
MULTIPART_ENDPOINTS = frozenset({"transcription", "translation"})
MAX_DEPTH = 64
SPOOL_BYTES = 1024 * 1024


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


class ProxyApp:
    def __init__(self, gateway: Any, fallback: Callable[..., Awaitable[None]]) -> None:
        self.gw = gateway
        self.fallback = fallback
        self.relay = Relay(gateway)
        # path -> ASGI app for websocket routes served beside the proxy (websocket chat).
        self.websockets: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        self.body_timeout_s = gateway.config.server.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.fallback(scope, receive, send)
            return
        # Count every request and websocket while it runs: a graceful shutdown waits for
        # these, not for idle keep-alive connections.
        self.gw.request_started()
        try:
            if scope["type"] == "http":
                refusal = await self.gw.gate.admit(scope)
                if refusal is not None:
                    await self.refuse(scope, send, refusal)
                    return
                receive = BodyClock(receive, self.body_timeout_s)
            await self.dispatch(scope, receive, send)
        finally:
            self.gw.request_finished()

    async def refuse(self, scope: Scope, send: Send, refusal: GenieHiveError) -> None:
        """Answer the key gate's refusal; on a forwarding route it counts as its request."""
        started = trio.current_time()
        await send_refusal(send, scope, refusal)
        route = ROUTES.get(scope["path"].rstrip("/") or "/")
        if route is not None and scope["method"] == "POST":
            outcome = Outcome(status=refusal.http_status)
            self.gw.metrics.observe_request(route[0], outcome, trio.current_time() - started)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = ROUTES.get(scope["path"].rstrip("/") or "/")
            if route is not None:
                await self.handle(scope, receive, send, *route)
                return
        elif scope["type"] == "websocket":
            handler = self.websockets.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.serve_fallback(scope, receive, send)

    async def serve_fallback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Quart app. A body too slow to arrive fails inside Quart's body reader; it is
        answered here (408, `Connection: close`) unless an answer had begun."""
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.fallback(scope, receive, tracked)
        except* RequestTimeout:
            if not started:
                late = f"no request body bytes arrived for {self.body_timeout_s:g} s"
                await send_refusal(send, scope, RequestTimeout(late))

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str, operation: str
    ) -> None:
        # ASGI header names arrive lower-cased.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        started = trio.current_time()
        writer = _writer(send)
        outcome = Outcome()
        principal_name = "-"
        model = "-"
        inbound: Inbound | None = None
        try:
            principal = self.gw.auth.authorize(headers, "inference")
            principal_name = principal.name
            inbound = await self.read_inbound(headers, receive, endpoint, operation)
            inbound.request_id = request_id
            model = inbound.model
            if not principal.may_use_model(model):
                raise PermissionDenied(f"this key may not use the model '{model}'")
            await self.run_cancellable(inbound, writer, receive, outcome)
        except ClientGone:
            outcome.status = 499
        except GenieHiveError as exc:
            outcome.status = exc.http_status
            if not writer.started:
                await send_error(send, exc, request_id, outcome)
        except Exception:
            log.exception("request %s failed unexpectedly", request_id)
            outcome.status = 500
            if not writer.started:
                await send_error(send, GenieHiveError("internal error"), request_id, outcome)
        finally:
            if outcome.status == 0:
                outcome.status = 499  # the client went away mid-answer
            duration = trio.current_time() - started
            _log_request(request_id, principal_name, model, outcome, duration, writer)
            self.gw.metrics.observe_request(endpoint, outcome, duration)
            if inbound is not None and inbound.upload is not None:
                inbound.upload.file.close()

    async def run_cancellable(
        self, inbound: Inbound, writer: Writer, receive: Receive, outcome: Outcome
    ) -> None:
        """Relay while watching for the client's disconnect, which cancels the relay.

        Raises ClientGone when the client left, or what the relay raised.
        """
        failure: Exception | None = None
        finished = False

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    nursery.cancel_scope.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            try:
                await self.relay.run(inbound, writer, outcome)
                finished = True
            except Exception as exc:  # re-raised below, outside the nursery's group
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not finished:
            raise ClientGone()

    async def read_inbound(
        self, headers: dict[str, str], receive: Receive, endpoint: str, operation: str
    ) -> Inbound:
        limit = self.gw.config.server.max_body_bytes
        if endpoint in MULTIPART_ENDPOINTS:
            upload, model = await read_multipart(headers, receive, limit)
            return Inbound(endpoint, operation, model, upload=upload)
        raw = await read_body(receive, limit)
        body = parse_json_body(raw)
        validate_body(body, operation)
        stream = body.get("stream", False)
        return Inbound(
            endpoint, operation, body["model"], stream=bool(stream), body=body, raw=raw
        )


def _writer(send: Send) -> Writer:
    writer: Writer

    async def start(status: int, headers: list[tuple[bytes, bytes]]) -> None:
        writer.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(chunk: bytes, more: bool) -> None:
        writer.bytes_out += len(chunk)
        if more:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            # Shield the final send so a cancellation cannot leave the connection stuck.
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": chunk, "more_body": False})

    writer = Writer(start, body)
    return writer


async def send_error(send: Send, exc: GenieHiveError, request_id: str, outcome: Outcome) -> None:
    body = exc.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if outcome.attempts:
        headers.append((b"x-geniehive-attempts", str(outcome.attempts).encode()))
        headers.append((b"x-geniehive-route", outcome.route.encode()))
    if outcome.service_id is not None:
        headers.append((b"x-geniehive-service", outcome.service_id.encode()))
        headers.append((b"x-geniehive-model", (outcome.upstream_model or "").encode()))
    if isinstance(exc, RequestTimeout):
        headers.append((b"connection", b"close"))  # the rest of the body is not worth waiting for
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; RequestTooLarge past `limit`."""
    chunks: list[bytes] = []
    await receive_body(receive, limit, chunks.append, "the request body")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def receive_body(
    receive: Receive, limit: int, sink: Callable[[bytes], object], what: str
) -> int:
    """Feed the request body to `sink` chunk by chunk and return its size.

    Past `limit` the rest is read and discarded (up to a hard cap) and then RequestTooLarge
    is raised, so the keep-alive connection stays usable for the client's next request.
    Raises ClientGone when the client disconnects.
    """
    size = 0
    hard_cap = _hard_cap(limit)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            sink(chunk)
        if not message.get("more_body", False) or size > hard_cap:
            break
    if size > limit:
        raise RequestTooLarge(f"{what} is over the {limit} byte limit")
    return size


def _hard_cap(limit: int) -> int:
    """How much of an oversized body is read and discarded before answering 413.

    Reading the rest keeps the keep-alive connection usable (the client's next request
    works); past this much, the connection is not worth saving.
    """
    return limit + max(limit, 16 * 1024 * 1024)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise InvalidRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
    return body


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level - 1


REQUIRED = {
    "chat": ("messages", list),
    "completion": ("prompt", (str, list)),
    "embeddings": ("input", (str, list)),
    "speech": ("input", str),
    "image": ("prompt", str),
}


def validate_body(body: dict[str, Any], operation: str) -> None:
    """Raise InvalidRequest naming the field that is missing or of the wrong type."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("'model' is required", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    field, types = REQUIRED[operation]
    if field not in body:
        raise InvalidRequest(f"'{field}' is required", param=field)
    if not isinstance(body[field], types):
        raise InvalidRequest(f"'{field}' has the wrong type", param=field)
    if operation == "chat":
        for index, message in enumerate(body["messages"]):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(
                    f"'messages[{index}]' must be an object with a 'role'",
                    param=f"messages[{index}]",
                )


async def read_multipart(
    headers: dict[str, str], receive: Receive, limit: int
) -> tuple[Upload, str]:
    """Spool a multipart upload to disk while counting bytes, then parse it off the loop."""
    content_type = headers.get("content-type", "")
    boundary = _boundary(content_type)
    if boundary is None:
        raise InvalidRequest("expected a multipart/form-data body with a boundary")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        size = await receive_body(receive, limit, spool.write, "the upload")
        spool.seek(0)
        fields, upload = await trio.to_thread.run_sync(_parse_multipart, spool, boundary, size)
    model = next((v for k, v in fields if k == "model"), None)
    if upload is None:
        raise InvalidRequest("'file' is required", param="file")
    if not model:
        upload.file.close()
        raise InvalidRequest("'model' is required", param="model")
    upload.fields = fields
    return upload, model


def _boundary(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    return None


def _parse_multipart(
    stream: Any, boundary: bytes, size: int
) -> tuple[list[tuple[str, str]], Upload | None]:
    from werkzeug.formparser import MultiPartParser

    try:
        form, files = MultiPartParser(max_form_memory_size=1024 * 1024).parse(
            stream, boundary, size
        )
    except Exception as exc:  # werkzeug raises ValueError or its own HTTP exceptions
        raise InvalidRequest(f"the multipart body could not be parsed: {exc}") from None
    fields = [(k, v) for k, v in form.items(multi=True)]
    storage = files.get("file")
    if storage is None:
        for other in files.values():
            other.close()
        return fields, None
    file = storage.stream
    file.seek(0, 2)
    length = file.tell()
    file.seek(0)
    upload = Upload(
        fields=fields,
        file_field="file",
        filename=storage.filename or "audio",
        content_type=storage.content_type or "application/octet-stream",
        file=file,
        size=length,
    )
    return fields, upload


def _log_request(
    request_id: str, key: str, model: str, outcome: Outcome, duration_s: float, writer: Writer
) -> None:
    duration_ms = duration_s * 1000
    log.info(
        "request id=%s key=%s model=%s route=%s service=%s status=%d attempts=%d "
        "duration_ms=%.1f bytes=%d",
        request_id, key, model, outcome.route, outcome.service_id or "-", outcome.status,
        outcome.attempts, duration_ms, writer.bytes_out,
    )

