"""The client API's forwarding routes as a lean ASGI app in front of the Quart app.

Rule: this is the hot path. It reads the body itself (counting bytes, so chunked uploads
cannot pass the cap), validates, routes on the immutable snapshot and relays; every other
path goes to the Quart app. A client that goes away (`http.disconnect`) cancels the relay
at once, which closes the upstream request. Errors before the first byte are rendered in
the OpenAI shape; none escapes as a plain-text 500. The body reader, the error writer and
the request log line are the edge toolkit's (geniehive/asgi.py), shared with the other ports.
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING, Any

import trio

from geniehive.affinity import request_session
from geniehive.asgi import (
    ASGIApp,
    BodyClock,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    error_messages,
    log_request,
    new_request_id,
    parse_json,
    read_body,
    receive_body,
    refuse_websocket,
    scope_headers,
    scope_request_id,
    send_error,
    send_json,
)
from geniehive.capacity import place
from geniehive.dialects import Dialect, DialectWriter
from geniehive.edge import HOLD_WRITES
from geniehive.egress import HOP_HEADER, HOP_HEADER_BYTES
from geniehive.errors import (
    GenieHiveError,
    InvalidRequest,
    PermissionDenied,
    RequestTimeout,
    ShuttingDown,
    render_error,
)
from geniehive.events import PATH as EVENTS
from geniehive.events import failure_message, serve_events
from geniehive.exchange import NO_NEEDS, Inbound, Outcome, Upload, Writer, body_needs
from geniehive.fields import check_body, check_form
from geniehive.sse import encode_error_event
from geniehive.tokencount import count_input_tokens
from geniehive.tracing import client_trace_headers, relay_for
from geniehive.writes import (
    abort_connection,
    release_on_cut,
    send_bounded,
    wait_stalled_or_gone,
)

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.request")

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
# The Messages API's token counter, served beside the Messages dialect.
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MULTIPART_ENDPOINTS = frozenset({"transcription", "translation"})
SPOOL_BYTES = 1024 * 1024
# A large body is written in parts of this size, so the write timeout measures the client's
# progress, not the time one huge send takes to drain.
WRITE_PART_BYTES = 256 * 1024
SHUTTING_DOWN_ERROR = render_error(
    "the gateway is shutting down: this answer was cut short", "server_error", "shutting_down"
)
SHUTTING_DOWN_EVENT = encode_error_event(SHUTTING_DOWN_ERROR)


class ClientStalled(ClientGone):
    """The client accepted no bytes for `server.write_timeout_s`: its connection was closed."""


class ProxyApp:
    def __init__(self, gateway: Gateway, fallback: ASGIApp) -> None:
        self.gw = gateway
        self.fallback = fallback
        self.relay = relay_for(gateway)
        self.tracing = gateway.tracing  # None: tracing is off (geniehive/tracing.py)
        self.write_timeout_s = gateway.config.server.write_timeout_s
        # path -> ASGI app for websocket routes served beside the proxy (websocket chat).
        self.websockets: dict[str, ASGIApp] = {}
        # path -> a client dialect served on the chat operation (geniehive/dialects/).
        self.dialects: dict[str, Dialect] = {}
        self.body_timeout_s = gateway.config.server.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.fallback(scope, receive, send)
            return
        # Count every request and websocket while it runs: a graceful shutdown waits for
        # these, not for idle keep-alive connections.
        self.gw.request_started()
        try:
            # Before the key check: a looped request carries no client key, and must be told
            # it looped rather than that it is unauthenticated.
            if await self.refused_loop(scope, receive, send):
                return
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
        path = scope["path"].rstrip("/") or "/"
        dialect = self.dialects.get(path)
        # The token counter beside the Messages API answers in its shape too.
        shape = self.dialects.get(MESSAGES_PATH) if path == COUNT_TOKENS_PATH else dialect
        await send_error(send, refusal, scope_request_id(scope), close=True,
                         render=shape.error_body if shape is not None else None)
        route = ROUTES.get(path)
        if dialect is not None:
            route = (dialect.name, "chat")
        if route is not None and scope["method"] == "POST":
            outcome = Outcome(status=refusal.http_status)
            self.gw.metrics.observe_request(route[0], outcome, trio.current_time() - started)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"].rstrip("/") or "/"
            route = ROUTES.get(path)
            if route is not None:
                await self.handle(scope, receive, send, *route)
                return
            dialect = self.dialects.get(path)
            if dialect is not None:
                await self.handle(scope, receive, send, dialect.name, "chat", dialect)
                return
            messages = self.dialects.get(MESSAGES_PATH)
            if path == COUNT_TOKENS_PATH and messages is not None:
                await self.count_tokens(scope, receive, send, messages)
                return
        elif scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == EVENTS:
            await serve_events(self.gw, scope, receive, send)
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

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.fallback(scope, receive, tracked)
        except* RequestTimeout:
            if not started:
                late = f"no request body bytes arrived for {self.body_timeout_s:g} s"
                await send_error(send, RequestTimeout(late), scope_request_id(scope))

    async def refused_loop(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer 508 to a request that already passed through this gateway (a probe or a
        discovery call of a service that points back here; 400 for an oversized hop header).
        True when it was refused. A forwarding route refuses it itself, so that the refusal
        is logged and counted as its request."""
        hops = next((v for k, v in scope["headers"] if k == HOP_HEADER_BYTES), None)
        if hops is None:
            return False
        try:
            self.gw.hops.check(hops.decode("latin-1"))
        except GenieHiveError as exc:  # LoopDetected, or InvalidRequest for a huge header
            if scope["type"] == "websocket":
                await refuse_websocket(receive, send, exc)
            elif scope["method"] == "POST" and (
                scope["path"].rstrip("/") in ROUTES or scope["path"].rstrip("/") in self.dialects
            ):
                await self.dispatch(scope, receive, send)  # handle() raises it before the key
            else:
                await send_error(send, exc, new_request_id())
            return True
        return False

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str, operation: str,
        dialect: Dialect | None = None,
    ) -> None:
        """One forwarding request. `endpoint` names it in the log and metrics; a `dialect`
        request is read, relayed and answered through its dialect (geniehive/dialects/)."""
        headers = scope_headers(scope)
        request_id = headers.get("x-request-id") or new_request_id()
        started = trio.current_time()
        writer = _writer(send)
        outcome = Outcome()
        principal_name = "-"
        model = "-"
        inbound: Inbound | None = None
        error: GenieHiveError | None = None
        render = dialect.error_body if dialect is not None else None
        tracing = self.tracing
        trace = tracing.begin(headers, endpoint, operation) if tracing is not None else None
        try:
            # Before the key check: a looped request carries no client key, and must be told
            # it looped rather than that it is unauthenticated.
            hops = self.gw.hops.next_hops(headers.get(HOP_HEADER))
            principal = self.gw.auth.authorize(headers, "inference")
            principal_name = principal.name
            if dialect is None:
                inbound = await self.read_inbound(headers, receive, endpoint, operation)
            else:
                inbound = await self.read_dialect(receive, dialect)
            inbound.request_id = request_id
            inbound.hops = hops
            inbound.trace = trace
            inbound.trace_headers = client_trace_headers(headers)
            inbound.session = request_session(headers, inbound.body, inbound.dialect_body)
            model = inbound.model
            if not principal.may_use_model(model):
                raise PermissionDenied(f"this key may not use the model '{model}'")
            place(inbound, principal, headers, open_mode=self.gw.auth.open_mode,
                  rates=self.gw.key_rates, now=started)
            await self.run_cancellable(inbound, writer, receive, send, outcome)
        except ClientGone as gone:
            outcome.status = 499
            if isinstance(gone, ClientStalled):
                self.note_stalled(request_id, endpoint)
        except GenieHiveError as exc:
            outcome.status = exc.http_status
            error = exc
            if not writer.started:
                writer.bytes_out += await send_error(send, exc, request_id, outcome,
                                                     render=render)
        except Exception:
            log.exception("request %s failed unexpectedly", request_id)
            outcome.status = 500
            if not writer.started:
                writer.bytes_out += await send_error(send, GenieHiveError("internal error"),
                                                     request_id, outcome, render=render)
        except BaseException:
            # Only a cancellation from outside gets here: the server is cutting the requests
            # still running when its shutdown grace ran out (docs/architecture.md).
            outcome.status = 503
            await end_cut(send, writer, request_id, outcome, inbound)
            raise
        finally:
            if outcome.status == 0:
                outcome.status = 499  # the client went away mid-answer
            duration = trio.current_time() - started
            log_request(request_id, endpoint, principal_name, model, outcome, outcome.status,
                        duration, writer.bytes_out)
            self.gw.metrics.observe_request(endpoint, outcome, duration)
            if trace is not None:
                trace.finish(inbound.model if inbound is not None else None, outcome)
            if outcome.status >= 400 and outcome.status != 499:  # 499: the client left
                self.gw.recent_errors.add(
                    request_id=request_id, endpoint=endpoint, model=model,
                    service_id=outcome.service_id, status=outcome.status,
                    message=failure_message(outcome.status, error, outcome.failures),
                )
            if inbound is not None and inbound.upload is not None:
                inbound.upload.file.close()

    async def count_tokens(
        self, scope: Scope, receive: Receive, send: Send, dialect: Dialect
    ) -> None:
        """`POST /v1/messages/count_tokens`: `{"input_tokens": N}` of a Messages request
        (geniehive/tokencount.py), with `X-GenieHive-Token-Count: exact | estimate`; the key
        is checked as for a request, and errors are in the Messages shape."""
        headers = scope_headers(scope)
        request_id = headers.get("x-request-id") or new_request_id()
        try:
            principal = self.gw.auth.authorize(headers, "inference")
            body = parse_json(await read_body(receive, self.gw.config.server.max_body_bytes))
            model = body.get("model")
            if isinstance(model, str) and not principal.may_use_model(model):
                raise PermissionDenied(f"this key may not use the model '{model}'")
            count, exact = await count_input_tokens(self.gw, body)
        except GenieHiveError as exc:
            await send_error(send, exc, request_id, render=dialect.error_body)
            return
        how = b"exact" if exact else b"estimate"
        await send_json(send, 200, {"input_tokens": count}, request_id,
                        [(b"x-geniehive-token-count", how)])

    async def run_cancellable(
        self, inbound: Inbound, writer: Writer, receive: Receive, send: Send, outcome: Outcome
    ) -> None:
        """Relay while watching the client: its disconnect cancels the relay, and so does a
        send it leaves pending for `server.write_timeout_s` (its connection is closed).

        Raises ClientGone when the client left, ClientStalled when it stopped reading, or
        what the relay raised.
        """
        failure: Exception | None = None
        finished = False
        stalled = False

        async def watch() -> None:
            nonlocal stalled
            try:
                stalled = await wait_stalled_or_gone(writer, self.write_timeout_s, receive)
            except trio.Cancelled:
                await release_on_cut(writer, send)
                raise
            if stalled:
                abort_connection(send)  # frees the blocked send; the relay is cancelled next
            nursery.cancel_scope.cancel()

        relayed = writer
        if inbound.dialect is not None:
            # The relay writes chat; the client reads its dialect (geniehive/dialects/).
            dialect, body = inbound.dialect, inbound.dialect_body
            assert body is not None
            translation = dialect.translation(body)
            inbound.answer = DialectWriter(
                writer, translation, lambda: dialect.finish(body, translation)
            )
            relayed = inbound.answer.writer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            try:
                await self.relay.run(inbound, relayed, outcome)
                finished = True
            except Exception as exc:  # re-raised below, outside the nursery's group
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None and not stalled:
            raise failure
        if stalled:
            raise ClientStalled()
        if not finished:
            raise ClientGone()

    def note_stalled(self, request_id: str, endpoint: str) -> None:
        log.warning(
            "request %s: the client accepted no bytes for %.1f s: closed its connection and "
            "cancelled the upstream call", request_id, self.write_timeout_s,
        )
        self.gw.metrics.client_write_timeouts.labels(endpoint).inc()

    async def read_inbound(
        self, headers: dict[str, str], receive: Receive, endpoint: str, operation: str
    ) -> Inbound:
        limit = self.gw.config.server.max_body_bytes
        if endpoint in MULTIPART_ENDPOINTS:
            upload, model = await read_multipart(headers, receive, limit)
            return Inbound(endpoint, operation, model, upload=upload)
        raw = await read_body(receive, limit)
        body = parse_json(raw)
        check_body(body, operation)
        stream = body.get("stream", False)
        needs = body_needs(body) if endpoint == "chat" else NO_NEEDS
        return Inbound(
            endpoint, operation, body["model"], stream=bool(stream), body=body, raw=raw,
            needs=needs,
        )


    async def read_dialect(self, receive: Receive, dialect: Dialect) -> Inbound:
        """A dialect request: its body, validated and translated into a chat body (which
        passes the chat checks like any other and needs what a chat body with its tools and
        images needs)."""
        raw = await read_body(receive, self.gw.config.server.max_body_bytes)
        body = parse_json(raw)
        chat = await dialect.prepare(body)
        check_body(chat, "chat")
        return Inbound(
            "chat", "chat", chat["model"], stream=bool(chat.get("stream", False)), body=chat,
            dialect=dialect, dialect_body=body, needs=body_needs(chat),
        )


def _writer(send: Send) -> Writer:
    """The relay's writer onto an ASGI response; each send's start is noted in
    `pending_since` for the write timeout's watcher."""
    writer: Writer
    clock = trio.current_time

    async def start(status: int, headers: list[tuple[bytes, bytes]]) -> None:
        writer.started = True
        writer.pending_since = clock()
        if writer.body_follows:  # the head waits for the first body part (geniehive/edge.py)
            token = HOLD_WRITES.set(True)
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
            finally:
                HOLD_WRITES.reset(token)
        else:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        writer.pending_since = None

    async def body(chunk: bytes, more: bool) -> None:
        writer.bytes_out += len(chunk)
        if len(chunk) > WRITE_PART_BYTES:
            await parts(chunk, more)
        elif more:
            writer.pending_since = clock()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            writer.pending_since = None
        else:
            writer.ended = True
            writer.pending_since = clock()
            # Shield the final send so a cancellation cannot leave the connection stuck. Its
            # part and the answer's end (a chunked answer's last chunk) go out in one write.
            token = HOLD_WRITES.set(True)
            try:
                with trio.CancelScope(shield=True):
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
            finally:
                HOLD_WRITES.reset(token)
            writer.pending_since = None

    async def parts(chunk: bytes, more: bool) -> None:
        view = memoryview(chunk)
        last = len(chunk) - WRITE_PART_BYTES
        for offset in range(0, len(chunk), WRITE_PART_BYTES):
            final = offset >= last and not more
            writer.ended = final
            writer.pending_since = clock()
            with trio.CancelScope(shield=final):
                await send({"type": "http.response.body",
                            "body": view[offset:offset + WRITE_PART_BYTES], "more_body": not final})
        writer.pending_since = None

    writer = Writer(start, body)
    return writer


async def end_cut(
    send: Send, writer: Writer, request_id: str, outcome: Outcome, inbound: Inbound | None
) -> None:
    """Tell a client whose request the shutdown cuts: 503 `shutting_down` before the head,
    one SSE error event (and no `[DONE]`) into a stream, in the client's dialect; any other
    body is just cut."""
    dialect = inbound.dialect if inbound is not None else None
    if not writer.started:
        exc = ShuttingDown("the gateway is shutting down")
        render = dialect.error_body if dialect is not None else None
        messages = error_messages(exc, request_id, outcome, render=render)
        writer.bytes_out += len(messages[1]["body"])
        await send_bounded(send, messages)
    elif writer.sse and not writer.ended:
        writer.ended = True
        event = SHUTTING_DOWN_EVENT
        if inbound is not None and inbound.answer is not None:
            event = inbound.answer.translation.error(SHUTTING_DOWN_ERROR)
        writer.bytes_out += len(event)
        await send_bounded(send, [
            {"type": "http.response.body", "body": event, "more_body": False}
        ])


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
    try:
        check_form(fields)
        if not model:
            raise InvalidRequest("'model' is required", param="model")
    except InvalidRequest:
        upload.file.close()
        raise
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
