"""Forwarding (SPEC §7): failover over a route's candidates, then its fallbacks; relaying.

Outcomes of one attempt:

    Delivered            the client received a whole answer (or a stream that ended)
    Failed(kind)         retryable before the first byte: connect, timeout, protocol, 5xx, 429
    UpstreamStatus       an upstream 4xx: raised at once, never retried

Rule: before the first byte reaches the client, a retryable failure moves on to the next
candidate, up to `routing.max_attempts` tries in all; then the error is raised (502 or 504).
After the first byte nothing is retried: a failure ends the stream with one SSE error event.
Every upstream call has a connect timeout (the pool's), a time-to-headers timeout and an
idle-chunk timeout (a cancel scope each: `IdleTimed` moves one deadline along a stream);
none caps the total duration.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import trio

from geniehive import health, routing
from geniehive import policy as policy_mod
from geniehive.adapters import Adapter, UpstreamRequest
from geniehive.asgi import route_headers
from geniehive.egress import HOP_HEADER_BYTES
from geniehive.errors import (
    LoopDetected,
    NoHealthyUpstream,
    UpstreamFailed,
    UpstreamStatus,
    UpstreamTimeout,
    render_error,
)
from geniehive.models import Policy, Service
from geniehive.pool import ConnectFailed, ConnectTimeout, PoolError, PoolResponse
from geniehive.routing import Candidate
from geniehive.sse import (
    SSEStripper,
    contains_reasoning,
    encode_error_event,
    encode_json,
    strip_reasoning,
)

log = logging.getLogger("geniehive.relay")

RETRY_STATUSES = frozenset({500, 502, 503, 504, 505, 507, 508})
JSON_OPERATIONS = frozenset({"chat", "completion", "embeddings"})
MAX_ERROR_BODY = 64 * 1024

StartFn = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
BodyFn = Callable[[bytes, bool], Awaitable[None]]


@dataclass(slots=True)
class Upload:
    """A multipart upload, spooled by the proxy: form fields plus one file."""

    fields: list[tuple[str, str]]
    file_field: str
    filename: str
    content_type: str
    file: Any  # a seekable binary file object
    size: int


@dataclass(slots=True)
class Inbound:
    """One parsed client request."""

    endpoint: str  # an adapters.OPENAI_PATHS key: chat, completion, embeddings, transcription...
    operation: str
    model: str
    stream: bool = False
    body: dict[str, Any] | None = None
    raw: bytes | None = None  # the client's body bytes, sent as they are when nothing changed
    upload: Upload | None = None
    request_id: str = ""
    hops: bytes = b""  # the hop header to send upstream (empty: this gateway's id alone)


@dataclass(slots=True)
class Writer:
    """Where the answer goes: `start(status, headers)` once, then `body(chunk, more)`.

    `sse` says the answer is an event stream (set before its start), `ended` that its last
    body part was written, `pending_since` when the send under way began (None: none is):
    what ends an answer cut by a shutdown, and what the write timeout watches.
    """

    start: StartFn
    body: BodyFn
    started: bool = False
    bytes_out: int = 0
    sse: bool = False
    ended: bool = False
    pending_since: float | None = None


@dataclass(slots=True)
class Outcome:
    status: int = 0
    service_id: str | None = None
    upstream_model: str | None = None
    route: str = "direct"
    attempts: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (service id, why)
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def take_usage(self, usage: Any) -> None:
        """Remember the token counts of an upstream `usage` object, if it is one."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) else None
            self.completion_tokens = completion if isinstance(completion, int) else None


class _Queue:
    """The candidates of a decision and then of each fallback decision, as (decision,
    candidate) pairs, computed as they are reached; `has_next` looks one ahead."""

    def __init__(self, chain: Iterator[routing.RouteDecision]) -> None:
        self._pairs = ((d, c) for d in chain for c in d.candidates)
        self._ahead: list[tuple[routing.RouteDecision, Candidate]] = []

    def __iter__(self) -> _Queue:
        return self

    def __next__(self) -> tuple[routing.RouteDecision, Candidate]:
        return self._ahead.pop() if self._ahead else next(self._pairs)

    def has_next(self) -> bool:
        if not self._ahead:
            self._ahead.extend(islice(self._pairs, 1))
        return bool(self._ahead)


class _Failed(Exception):
    """A retryable failure of one attempt (internal)."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # connect | timeout | protocol | status
        self.message = message
        self.status = status


def floats_to_base64(vector: list[float]) -> str:
    """Little-endian float32, as the OpenAI API encodes `encoding_format: base64`."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class Relay:
    """Sends one inbound request through the hive; owned by the gateway."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    # -- shaping ------------------------------------------------------------------------
    def shape_body(
        self,
        inbound: Inbound,
        service: Service,
        adapter: Adapter,
        model: str,
        role_policy: Policy | None,
    ) -> tuple[dict[str, Any], bool]:
        """The body to send upstream and whether reasoning is stripped from the answer."""
        assert inbound.body is not None
        asset = service.asset(model)
        effective = policy_mod.effective_policy(asset.policy if asset else None, role_policy)
        body = inbound.body
        if effective.system_prompt is not None or effective.body_defaults or (
            effective.body_overrides
        ):
            body = policy_mod.apply_policy(body, inbound.operation, effective)
        if policy_mod.needs_thinking_off(body, model, inbound.operation):
            body = adapter.thinking_off(body)
        if inbound.operation == "embeddings" and body.get("encoding_format") == "base64":
            # Ask for floats and encode ourselves: upstreams that ignore or reject base64
            # then behave alike (SPEC §4).
            body = {k: v for k, v in body.items() if k != "encoding_format"}
        strip = effective.strip_reasoning is not False
        return body, strip

    # -- the attempt loop ---------------------------------------------------------------
    async def run(self, inbound: Inbound, writer: Writer, outcome: Outcome) -> None:
        """Route and forward, filling `outcome`.

        Raises a GenieHiveError when nothing was sent to the client.
        """
        gw = self.gw
        decision = gw.resolve(inbound.model, inbound.operation, stream=inbound.stream)
        if decision.route_label:
            outcome.route = decision.route_label
        gw.raise_for_decision(decision)
        gw.live.advance_round_robin(decision.rr_key)
        role_policy = gw.role_policy(decision)
        max_attempts = gw.config.routing.max_attempts
        timeouts = loops = 0
        last: _Failed | None = None
        queue = _Queue(gw.decision_chain(decision, stream=inbound.stream))

        def more_candidates() -> bool:  # asked only on a 429: the next fallback is computed then
            return outcome.attempts < max_attempts and queue.has_next()

        for current, candidate in queue:
            if outcome.attempts >= max_attempts:
                break
            outcome.route = current.route_label
            service = gw.snapshot.services.get(candidate.service_id)
            if service is None or (outcome.attempts and not self.still_open(service)):
                continue
            outcome.attempts += 1
            outcome.service_id = service.service_id
            outcome.upstream_model = candidate.upstream_model
            try:
                await self.attempt(
                    inbound, writer, service, candidate.upstream_model, role_policy,
                    outcome, more_candidates,
                )
                return
            except _Failed as failed:
                last = failed
                timeouts += failed.kind == "timeout"
                loops += failed.status == 508
                outcome.failures.append((service.service_id, failed.message))
                log.warning(
                    "request %s: attempt %d on %s failed: %s",
                    inbound.request_id, outcome.attempts, service.service_id, failed.message,
                )
        if last is None:
            raise NoHealthyUpstream(f"no routable service for '{inbound.model}' now")
        if last.status == 429:
            # Retried in case another candidate had room; none had: the client gets the 429.
            raise UpstreamStatus(429, last.message)
        summary = "; ".join(f"{service_id}: {message}" for service_id, message in outcome.failures)
        if timeouts == len(outcome.failures):
            raise UpstreamTimeout(f"every upstream timed out: {summary}")
        if loops == len(outcome.failures):
            # Each candidate led back to a gateway this request had passed (508 Loop Detected).
            raise LoopDetected(f"every upstream looped back: {summary}")
        raise UpstreamFailed(f"every upstream failed: {summary}")

    def still_open(self, service: Service) -> bool:
        """Whether a failover candidate may still be tried: its breaker may have opened (or
        its one half-open trial been taken) and it may have been drained since the decision."""
        if service.state.availability != "available" or not service.state.accept_requests:
            return False
        live = self.gw.live.services.get(service.service_id)
        return live is None or health.breaker_allows(
            live.breaker, trio.current_time(), self.gw.live.open_s
        )

    async def attempt(
        self,
        inbound: Inbound,
        writer: Writer,
        service: Service,
        model: str,
        role_policy: Policy | None,
        outcome: Outcome,
        more_candidates: Callable[[], bool],
    ) -> None:
        """One try on one service. Raises _Failed (retryable) or UpstreamStatus."""
        gw = self.gw
        adapter = gw.adapter_for(service)
        strip = False
        if inbound.body is not None:
            body, strip = self.shape_body(inbound, service, adapter, model, role_policy)
            request = adapter.build_request(inbound.endpoint, model, body=body)
        else:
            assert inbound.upload is not None
            request = adapter.build_request(inbound.endpoint, model, fields=inbound.upload.fields)
        started = trio.current_time()
        gw.live.attempt_started(service.service_id, started)
        try:
            result = await self._exchange(
                adapter, request, inbound, writer, outcome, strip, started, more_candidates
            )
        except _Failed:
            gw.live.attempt_failed(service.service_id, trio.current_time())
            raise
        except UpstreamStatus:
            gw.live.attempt_refused(service.service_id, trio.current_time())
            raise
        except BaseException:
            # Cancelled (the client went away): neither a success nor a failure.
            gw.live.attempt_abandoned(service.service_id)
            raise
        ok, ttft, tps = result
        now = trio.current_time()
        if ok:
            gw.live.attempt_succeeded(
                service.service_id, now, latency_ms=(now - started) * 1000,
                ttft_ms=ttft, tokens_per_sec=tps,
            )
        else:
            gw.live.attempt_failed(service.service_id, now)

    async def _exchange(
        self,
        adapter: Adapter,
        request: UpstreamRequest,
        inbound: Inbound,
        writer: Writer,
        outcome: Outcome,
        strip: bool,
        started: float,
        more_candidates: Callable[[], bool],
    ) -> tuple[bool, float | None, float | None]:
        response = await self._send(adapter, request, inbound)
        try:
            await self._check_status(adapter, response, more_candidates)
            outcome.status = response.status
            headers = route_headers(inbound.request_id, outcome)
            content_type = (response.header(b"content-type") or b"").decode("latin-1")
            if inbound.stream and content_type.startswith("text/event-stream"):
                return await self._relay_stream(
                    response, writer, headers, strip, outcome, started
                )
            if inbound.operation in JSON_OPERATIONS:
                return await self._relay_json(
                    adapter, inbound, request, response, content_type, writer, headers, strip,
                    started, outcome,
                )
            return await self._relay_passthrough(
                adapter, inbound, request, response, content_type, writer, headers, outcome
            )
        finally:
            await response.aclose()  # never blocks; closes the connection unless fully read

    async def _send(
        self, adapter: Adapter, request: UpstreamRequest, inbound: Inbound
    ) -> PoolResponse:
        gw = self.gw
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
        headers.append((HOP_HEADER_BYTES, inbound.hops or gw.hops.own))
        if inbound.request_id:
            headers.append((b"x-request-id", inbound.request_id.encode("latin-1")))
        length: int | None = None
        if request.body is not None:
            headers.append((b"content-type", b"application/json"))
            content: Any = (
                inbound.raw if request.body is inbound.body and inbound.raw is not None
                else encode_json(request.body)
            )
        else:
            assert inbound.upload is not None
            boundary, length, content = encode_multipart(request, inbound.upload)
            headers.append(
                (b"content-type", f"multipart/form-data; boundary={boundary}".encode())
            )
        try:
            with trio.CancelScope(
                deadline=trio.current_time() + gw.config.routing.first_byte_timeout_s
            ):
                return await gw.pool.request(
                    request.method, adapter.url(request.path), headers, content,
                    content_length=length,
                )
            raise _Failed("timeout", "no response headers in time")  # only if it expired
        except ConnectTimeout:
            raise _Failed("timeout", "connect timed out") from None
        except ConnectFailed as exc:
            raise _Failed("connect", f"connection failed ({exc})") from None
        except PoolError as exc:
            raise _Failed("protocol", f"bad answer ({exc})") from None

    async def _read_all(self, response: PoolResponse, limit: int | None = None) -> bytes:
        """The whole body, each gap bounded by the idle timeout; `limit` truncates."""
        parts: list[bytes] = []
        size = 0
        async for chunk in IdleTimed(response, self.gw.config.routing.idle_stream_timeout_s):
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_answer(self, response: PoolResponse) -> bytes:
        """A whole answer before the first byte to the client: failures are retryable."""
        try:
            return await self._read_all(response)
        except trio.TooSlowError:
            raise _Failed("timeout", "the upstream stalled while answering") from None
        except PoolError as exc:
            raise _Failed("protocol", f"the answer broke off ({exc})") from None

    async def _check_status(
        self, adapter: Adapter, response: PoolResponse, more_candidates: Callable[[], bool]
    ) -> None:
        status = response.status
        if status < 400:
            return
        try:
            body = await self._read_all(response, MAX_ERROR_BODY)
        except (trio.TooSlowError, PoolError):
            body = b""
        message = adapter.parse_error(status, body)
        if status == 429 and more_candidates():  # SPEC §7: tried elsewhere only if there is one
            raise _Failed("status", message, status=429)
        if status in RETRY_STATUSES:
            raise _Failed("status", f"HTTP {status}: {message}", status=status)
        # Other 4xx, and 501 (the server lacks the feature, e.g. llama.cpp without
        # --embeddings), are the same everywhere: passed on at once, not failed over.
        raise UpstreamStatus(status, message)

    async def _relay_stream(
        self,
        response: PoolResponse,
        writer: Writer,
        headers: list[tuple[bytes, bytes]],
        strip: bool,
        outcome: Outcome,
        started: float,
    ) -> tuple[bool, float | None, float | None]:
        """Relay an SSE answer. TTFT counts from the attempt's start: many servers send
        their headers only with the first token."""
        stripper = SSEStripper(strip=strip)
        first: float | None = None
        writer.sse = True
        await writer.start(200, [*SSE_HEADERS, *headers])
        try:
            async for chunk in IdleTimed(response, self.gw.config.routing.idle_stream_timeout_s):
                if first is None:
                    first = trio.current_time()
                out = stripper.feed(chunk)
                if out:
                    await writer.body(out, True)
            await writer.body(stripper.flush(), False)
        except (trio.TooSlowError, PoolError) as exc:
            stalled = isinstance(exc, trio.TooSlowError)
            outcome.status = 504 if stalled else 502  # for the log and metrics only
            await writer.body(encode_error_event(render_error(
                f"the upstream {'stalled' if stalled else 'broke off'} mid-stream",
                "server_error", "upstream_timeout" if stalled else "upstream_error",
            )), False)
            return False, None, None
        end = trio.current_time()
        ttft = (first - started) * 1000 if first is not None else None
        outcome.ttft_ms = ttft
        outcome.take_usage(stripper.usage)
        return True, ttft, _tokens_per_sec(stripper.usage, stripper.events, first, end)

    async def _relay_json(
        self,
        adapter: Adapter,
        inbound: Inbound,
        request: UpstreamRequest,
        response: PoolResponse,
        content_type: str,
        writer: Writer,
        headers: list[tuple[bytes, bytes]],
        strip: bool,
        started: float,
        outcome: Outcome,
    ) -> tuple[bool, float | None, float | None]:
        raw = await self._read_answer(response)
        status, content_type, raw = adapter.translate_response(
            inbound.endpoint, response.status, content_type, raw, request
        )
        try:
            data = json.loads(raw)
            changed = False
            if strip and isinstance(data, dict) and contains_reasoning(raw):
                stripped = strip_reasoning(data)
                changed = stripped is not data
                data = stripped
            if inbound.body is not None and inbound.body.get("encoding_format") == "base64":
                changed |= _encode_embeddings(data)
            if changed:
                raw = encode_json(data)
        except (ValueError, RecursionError):  # not JSON, or nested past what we walk
            raise _Failed("protocol", "the upstream answered a body that is not JSON") from None
        await writer.start(status, [*JSON_HEADERS, _length(raw), *headers])
        await writer.body(raw, False)
        usage = data.get("usage") if isinstance(data, dict) else None
        outcome.take_usage(usage)
        return True, None, _tokens_per_sec(usage, 0, started, trio.current_time())

    async def _relay_passthrough(
        self,
        adapter: Adapter,
        inbound: Inbound,
        request: UpstreamRequest,
        response: PoolResponse,
        content_type: str,
        writer: Writer,
        headers: list[tuple[bytes, bytes]],
        outcome: Outcome,
    ) -> tuple[bool, float | None, float | None]:
        content_type = content_type or "application/octet-stream"
        if inbound.upload is not None:
            # Transcripts are small and may need dialect translation: read them whole.
            raw = await self._read_answer(response)
            status, content_type, raw = adapter.translate_response(
                inbound.endpoint, response.status, content_type, raw, request
            )
            await writer.start(
                status, [(b"content-type", content_type.encode()), _length(raw), *headers]
            )
            await writer.body(raw, False)
            return True, None, None
        # Binary answers (speech, images) are streamed back as they come, with the
        # upstream's length when it gave one, so a body cut short is detectable.
        length = response.header(b"content-length")
        framing = [(b"content-length", length)] if length is not None else []
        await writer.start(
            response.status, [(b"content-type", content_type.encode()), *framing, *headers]
        )
        try:
            async for chunk in IdleTimed(response, self.gw.config.routing.idle_stream_timeout_s):
                await writer.body(chunk, True)
        except (trio.TooSlowError, PoolError):
            # No clean end: the response stays unfinished and the server closes the
            # connection, so the client sees a broken download, not a short "success".
            outcome.status = 502
            return False, None, None
        await writer.body(b"", False)
        return True, None, None


SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
JSON_HEADERS = ((b"content-type", b"application/json"),)


class IdleTimed:
    """The body chunks of an upstream answer; trio.TooSlowError when a gap exceeds `idle_s`.

    One cancel scope per read, created directly (cheaper than `trio.fail_after`'s context
    manager on a path that runs for every chunk). Only the wait for the upstream is timed:
    the time the caller spends writing to a slow client is not an upstream gap.
    """

    __slots__ = ("idle_s", "response")

    def __init__(self, response: PoolResponse, idle_s: float) -> None:
        self.response = response
        self.idle_s = idle_s

    def __aiter__(self) -> IdleTimed:
        return self

    async def __anext__(self) -> bytes:
        with trio.CancelScope(deadline=trio.current_time() + self.idle_s) as scope:
            chunk = await self.response.read_chunk()
        if scope.cancelled_caught:
            raise trio.TooSlowError
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def _length(raw: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(raw)).encode())


def _tokens_per_sec(
    usage: Any, events: int, start: float | None, end: float
) -> float | None:
    if start is None or end <= start:
        return None
    tokens = None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        tokens = usage["completion_tokens"]
    elif events:
        tokens = events
    if not tokens:
        return None
    return tokens / (end - start)


def _encode_embeddings(data: Any) -> bool:
    changed = False
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        for item in data["data"]:
            if isinstance(item, dict) and isinstance(item.get("embedding"), list):
                item["embedding"] = floats_to_base64(item["embedding"])
                changed = True
    return changed


def encode_multipart(
    request: UpstreamRequest, upload: Upload
) -> tuple[str, int, AsyncIterator[bytes]]:
    """A multipart body streamed from the spooled upload, with its exact length."""
    boundary = f"----geniehive{secrets.token_hex(12)}"
    head = bytearray()
    for name, value in request.fields:
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        ).encode()
        head += value.encode() + b"\r\n"
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(request.file_field)}"; '
        f'filename="{_quote(upload.filename)}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + upload.size + len(tail)

    async def body() -> AsyncIterator[bytes]:
        yield bytes(head)
        upload.file.seek(0)
        while True:
            # The spooled upload may live on disk: read it off the event loop.
            block = await trio.to_thread.run_sync(upload.file.read, 256 * 1024)
            if not block:
                break
            yield block
        yield tail

    return boundary, length, body()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
