"""Forwarding: failover over a route's candidates, then its fallbacks; relaying.

Outcomes of one attempt:

    Delivered            the client received a whole answer (or a stream that ended)
    Failed(kind)         retryable before the first byte: connect, timeout, protocol, 5xx, 429
    UpstreamStatus       an upstream 4xx: raised at once, never retried

Rule: before the first byte reaches the client, a retryable failure moves on to the next
candidate, up to `routing.max_attempts` tries in all; then the error is raised (502 or 504).
A stream's first byte is sent with its first content (`_hold_until_content`): what comes
before it is held, so a stream that dies before any token fails over too. After the first
byte nothing is retried: a failure ends the stream with one SSE error event. Every upstream
call has a connect timeout (the pool's), a time-to-headers timeout, for chat and completion a
first-token timeout, and an idle-chunk timeout (a cancel scope each: `IdleTimed` moves one
deadline along a stream); none caps the total duration.

Each try is an `Attempt` (geniehive/attempts.py), one small object with everything that try
needs and reports; the requests go out through the relay's `Transport` (geniehive/exchange.py:
the pool in production, an in-memory fake in the unit tests).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import trio

from geniehive import health, routing, shaping
from geniehive.adapters import StreamTranslator
from geniehive.affinity import Stick, pinned
from geniehive.answers import (
    JSON_HEADERS,
    SSE_HEADERS,
    IdleTimed,
    encode_embeddings,
    encode_multipart,
    length_header,
    tokens_per_sec,
)
from geniehive.asgi import route_headers
from geniehive.attempts import Attempt, Decisions, Failed, exhausted, stream_translator
from geniehive.capacity import Ticket, slots_of
from geniehive.demand import LoadFailed
from geniehive.egress import HOP_HEADER_BYTES
from geniehive.errors import (
    UpstreamStatus,
    raise_for_decision,
    render_error,
    upstream_error_code,
)
from geniehive.exchange import Inbound, Outcome, Transport, UpstreamResponse, Writer
from geniehive.models import Service
from geniehive.pool import ConnectFailed, ConnectTimeout, PoolError
from geniehive.routing import Candidate
from geniehive.sse import (
    ContentWatch,
    SSEStripper,
    contains_reasoning,
    encode_error_event,
    encode_json,
    strip_reasoning,
)

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.relay")

RETRY_STATUSES = frozenset({500, 502, 503, 504, 505, 507, 508})
JSON_OPERATIONS = frozenset({"chat", "completion", "embeddings"})
# Operations that generate tokens: `routing.first_token_timeout_s` bounds their first one.
TOKEN_OPERATIONS = frozenset({"chat", "completion"})
MAX_ERROR_BODY = 64 * 1024


class Relay:
    """Sends one inbound request through the hive; owned by the gateway.

    `transport` sends the upstream requests; without one, the gateway's `pool` (given when
    the gateway is built) does. The routing limits and timeouts are read from the gateway's
    config at each use, so a reload (geniehive/reload.py) applies to the next request.
    """

    def __init__(self, gateway: Gateway, transport: Transport | None = None) -> None:
        self.gw = gateway
        transport = transport if transport is not None else gateway.pool
        if transport is None:
            raise ValueError(
                "the relay needs a transport: pass one or build the gateway with a pool"
            )
        self.transport: Transport = transport

    # The routing limits, read from the gateway's config at each use (a reload changes them).
    @property
    def max_attempts(self) -> int:
        return self.gw.config.routing.max_attempts

    @property
    def first_byte_timeout_s(self) -> float:
        return self.gw.config.routing.first_byte_timeout_s

    @property
    def first_token_s(self) -> float:
        return self.gw.config.routing.first_token_timeout_s

    @property
    def idle_s(self) -> float:
        return self.gw.config.routing.idle_stream_timeout_s

    # -- the attempt loop ---------------------------------------------------------------
    async def run(self, inbound: Inbound, writer: Writer, outcome: Outcome) -> None:
        """Route and forward, filling `outcome`.

        Raises a GenieHiveError when nothing was sent to the client.
        """
        gw = self.gw
        decision = self.decide(inbound)
        if decision.route_label:
            outcome.route = decision.route_label
        raise_for_decision(decision)
        ticket = Ticket(
            inbound.key, klass=inbound.priority, weight=inbound.weight,
            key_limit=inbound.key_limit,
        )
        stick = gw.affinity.stick(inbound.key, inbound.model, inbound.session, gw.affinity_clock())
        try:
            # The session's own service when it can take it (a hit leaves round robin be).
            taken = self.take_pinned(ticket, decision, stick)
            if taken is None:
                gw.live.advance_round_robin(decision.rr_key)
            await self.forward(inbound, writer, outcome, decision, ticket, stick, taken)
        finally:
            gw.admission.finish(ticket)

    def decide(self, inbound: Inbound) -> routing.RouteDecision:
        """The route decision for `inbound` (a seam: the tracing relay spans it)."""
        return self.gw.resolve(
            inbound.model, inbound.operation, stream=inbound.stream, needs=inbound.needs
        )

    async def wait_for_slot(self, inbound: Inbound, ticket: Ticket, ids: list[str]) -> str:
        """Wait at the admission queue for a slot on one of `ids`, within the request's
        budget; returns the service whose slot it took (a seam: the tracing relay spans it)."""
        return await self.gw.admission.wait(
            ticket, ids, self.wait_budget(inbound) - ticket.waited_s,
            f"model '{inbound.model}'",
        )

    async def forward(
        self,
        inbound: Inbound,
        writer: Writer,
        outcome: Outcome,
        decision: routing.RouteDecision,
        ticket: Ticket,
        stick: Stick | None = None,
        taken: str | None = None,
    ) -> None:
        """Try the candidates in order, each once a slot on it is taken (waiting for one
        when all are full), then each fallback decision's, up to `max_attempts` tries.
        `taken` is a candidate whose slot is already taken (the session's): tried first.
        The session (`stick`) moves to the service that answers."""
        gw = self.gw
        admission = gw.admission
        role_policy = gw.role_policy(decision)
        max_attempts = self.max_attempts
        decisions = Decisions(gw.decision_chain(decision, stream=inbound.stream))
        current = decisions.next()
        pending: list[Candidate] = list(decision.candidates)

        def more_candidates() -> bool:  # asked only on a 429: the next fallback is computed then
            return outcome.attempts < max_attempts and (bool(pending) or decisions.has_next())

        last: Failed | None = None
        timeouts = loops = loads = 0
        while current is not None and outcome.attempts < max_attempts:
            outcome.route = current.route_label
            services = self.open_services(pending, bool(outcome.attempts or ticket.waited_s))
            if not services:
                current = decisions.next()
                pending = list(current.candidates) if current is not None else []
                continue
            # The pool's candidates first: a lower tier is only a failover.
            pool = [s for s, c in zip(services, pending, strict=True) if c.pool] or services
            ids = [s.service_id for s in pool]
            service_id = taken or admission.take(ticket, ids, [slots_of(s) for s in pool])
            taken = None
            if service_id is None:
                service_id = await self.wait_for_slot(inbound, ticket, ids)
                outcome.queued_ms = ticket.waited_s * 1000
            index = next(i for i, c in enumerate(pending) if c.service_id == service_id)
            candidate = pending.pop(index)
            service = gw.snapshot.services.get(service_id)
            recheck = bool(outcome.attempts or ticket.waited_s)
            try:
                if service is None or (recheck and not self.still_open(service)):
                    continue  # it went away, or its breaker opened, while this waited
                outcome.attempts += 1
                outcome.service_id = service_id
                outcome.upstream_model = candidate.upstream_model
                if candidate.placement.cold or gw.demand.may_need(
                    service, candidate.upstream_model
                ):
                    await self.warm(service, candidate, outcome)
                attempt = Attempt(
                    inbound=inbound, writer=writer, outcome=outcome, decision=current,
                    candidate=candidate, service=service, adapter=gw.adapter_for(service),
                    role_policy=role_policy, more_candidates=more_candidates,
                )
                if stick is not None:
                    outcome.affinity = stick.result(service_id)
                await self.attempt(attempt)
                if stick is not None:
                    stick.served(service_id, gw.affinity_clock())
                return
            except Failed as failed:
                last = failed
                timeouts += failed.kind == "timeout"
                loops += failed.status == 508
                loads += failed.kind == "load"
                outcome.failures.append((service_id, failed.message))
                log.warning(
                    "request %s: attempt %d on %s failed: %s",
                    inbound.request_id, outcome.attempts, service_id, failed.message,
                )
            finally:
                admission.release(service_id)
        raise exhausted(inbound.model, outcome, last, timeouts, loops, loads)

    def take_pinned(
        self, ticket: Ticket, decision: routing.RouteDecision, stick: Stick | None
    ) -> str | None:
        """A slot on the service the session went to last, taken when that service is a
        warm pool-tier candidate of `decision` with one free (`affinity.pinned`); None
        otherwise (no session, not remembered, gone, unhealthy, gated, cold or full)."""
        candidate = pinned(decision.candidates, stick.remembered) if stick is not None else None
        if candidate is None:
            return None
        service = self.gw.snapshot.services.get(candidate.service_id)
        if service is None:
            return None
        return self.gw.admission.take(ticket, [service.service_id], [slots_of(service)])

    async def warm(self, service: Service, candidate: Candidate, outcome: Outcome) -> None:
        """Start the candidate's server or load its model first when it is cold
        (geniehive/demand.py); a load that fails is a failed attempt."""
        try:
            load_ms = await self.gw.demand.warm(service, candidate.upstream_model)
        except LoadFailed as exc:
            raise Failed("load", exc.message) from None
        if load_ms is not None:
            outcome.load_ms = load_ms

    def open_services(self, pending: list[Candidate], recheck: bool) -> list[Service]:
        """The services of `pending` that may still be tried (dropping the others from it):
        present in the snapshot and, once time has passed since the decision (a failed try,
        a wait), still open (`still_open`)."""
        services = self.gw.snapshot.services
        kept: list[Service] = []
        keep: list[Candidate] = []
        for candidate in pending:
            service = services.get(candidate.service_id)
            if service is None or (recheck and not self.still_open(service)):
                continue
            kept.append(service)
            keep.append(candidate)
        pending[:] = keep
        return kept

    def wait_budget(self, inbound: Inbound) -> float:
        """How long the request may wait for slots in all."""
        budget = self.gw.admission.queue_timeout_s
        if inbound.max_wait_s is not None:
            budget = min(budget, inbound.max_wait_s)
        return budget

    def still_open(self, service: Service) -> bool:
        """Whether a failover candidate may still be tried: its breaker may have opened (or
        its one half-open trial been taken) and it may have been drained since the decision."""
        if service.state.availability != "available" or not service.state.accept_requests:
            return False
        live = self.gw.live.services.get(service.service_id)
        return live is None or health.breaker_allows(
            live.breaker, trio.current_time(), self.gw.live.open_s
        )

    async def attempt(self, attempt: Attempt) -> None:
        """One try on one service. Raises Failed (retryable) or UpstreamStatus."""
        live = self.gw.live
        service_id = attempt.service.service_id
        shaping.build_request(attempt)
        attempt.started = started = trio.current_time()
        live.attempt_started(service_id, started)
        # Which models are in use, for eviction (only where the gateway loads models).
        models = live.get(service_id) if attempt.adapter.loads_models else None
        if models is not None:
            models.model_started(attempt.model, started)
        try:
            ok = await self._exchange(attempt)
        except Failed:
            live.attempt_failed(service_id, trio.current_time())
            raise
        except UpstreamStatus:
            live.attempt_refused(service_id, trio.current_time())
            raise
        except BaseException:
            # Cancelled (the client went away): neither a success nor a failure.
            live.attempt_abandoned(service_id)
            raise
        finally:
            if models is not None:
                models.model_finished(attempt.model, trio.current_time())
                self.gw.demand.model_finished()
        now = trio.current_time()
        if ok:
            live.attempt_succeeded(
                service_id, now, latency_ms=(now - started) * 1000,
                ttft_ms=attempt.ttft_ms, tokens_per_sec=attempt.tokens_per_sec,
            )
        else:
            live.attempt_failed(service_id, now)

    async def _exchange(self, attempt: Attempt) -> bool:
        """Send the request and relay the answer; False when it broke off after its start."""
        inbound = attempt.inbound
        response = await self._send(attempt)
        try:
            await self._check_status(attempt, response)
            attempt.outcome.status = response.status
            headers = route_headers(inbound.request_id, attempt.outcome)
            content_type = (response.header(b"content-type") or b"").decode("latin-1")
            translator = stream_translator(attempt, content_type)
            if translator is not None or (
                inbound.stream and content_type.startswith("text/event-stream")
            ):
                return await self._relay_stream(attempt, response, headers, translator)
            if inbound.operation in JSON_OPERATIONS:
                return await self._relay_json(attempt, response, content_type, headers)
            return await self._relay_passthrough(attempt, response, content_type, headers)
        finally:
            await response.aclose()  # never blocks; closes the connection unless fully read

    async def _send(self, attempt: Attempt) -> UpstreamResponse:
        inbound, request = attempt.inbound, attempt.request
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
        headers.append((HOP_HEADER_BYTES, inbound.hops or self.gw.hops.own))
        if inbound.request_id:
            headers.append((b"x-request-id", inbound.request_id.encode("latin-1")))
        headers.extend(inbound.trace_headers)  # W3C trace context (geniehive/tracing.py)
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
        timeout = self.first_byte_timeout_s
        if inbound.operation in TOKEN_OPERATIONS:  # generating answers: the first-token bound
            timeout = min(timeout, self.first_token_s)
        try:
            with trio.CancelScope(deadline=attempt.started + timeout):
                return await self.transport.request(
                    request.method, attempt.adapter.url(request.path), headers, content,
                    content_length=length,
                )
            raise Failed("timeout", "no response headers in time")  # only if it expired
        except ConnectTimeout:
            raise Failed("timeout", "connect timed out") from None
        except ConnectFailed as exc:
            raise Failed("connect", f"connection failed ({exc})") from None
        except PoolError as exc:
            raise Failed("protocol", f"bad answer ({exc})") from None

    async def _read_all(self, response: UpstreamResponse, limit: int | None = None) -> bytes:
        """The whole body, each gap bounded by the idle timeout; `limit` truncates."""
        parts: list[bytes] = []
        size = 0
        async for chunk in IdleTimed(response, self.idle_s):
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_answer(self, response: UpstreamResponse) -> bytes:
        """A whole answer before the first byte to the client: failures are retryable."""
        try:
            return await self._read_all(response)
        except trio.TooSlowError:
            raise Failed("timeout", "the upstream stalled while answering") from None
        except PoolError as exc:
            raise Failed("protocol", f"the answer broke off ({exc})") from None

    async def _check_status(self, attempt: Attempt, response: UpstreamResponse) -> None:
        status = response.status
        if status < 400:
            return
        try:
            body = await self._read_all(response, MAX_ERROR_BODY)
        except (trio.TooSlowError, PoolError):
            body = b""
        message = attempt.adapter.parse_error(status, body)
        if status == 429 and attempt.more_candidates():  # elsewhere only if there is one
            raise Failed("status", message, status=429)
        if status in RETRY_STATUSES:
            raise Failed("status", f"HTTP {status}: {message}", status=status)
        # Other 4xx, and 501 (the server lacks the feature, e.g. llama.cpp without
        # --embeddings), are the same everywhere: passed on at once, not failed over.
        raise UpstreamStatus(status, message, upstream_code=upstream_error_code(body, message))

    async def _relay_stream(
        self, attempt: Attempt, response: UpstreamResponse, headers: list[tuple[bytes, bytes]],
        translator: StreamTranslator | None = None,
    ) -> bool:
        """Relay an SSE answer (the `translator`'s output when the adapter gave one), once it
        shows content (`_hold_until_content`): until then a failure is a failed attempt.
        TTFT counts from the attempt's start to that first content."""
        writer, outcome = attempt.writer, attempt.outcome
        # A native dialect stream is stripped by its dialect writer, which knows its events.
        stripper = SSEStripper(strip=attempt.strip and not attempt.native)
        chunks = IdleTimed(response, self.idle_s)
        held, ended = await self._hold_until_content(attempt, chunks, stripper, translator)
        first = trio.current_time()
        writer.sse = True
        writer.body_follows = bool(held) or ended  # written at once below
        await writer.start(200, [*SSE_HEADERS, *headers])
        try:
            if held and not ended:
                await writer.body(held, True)
                held = b""
            if not ended and not writer.ended:
                async for chunk in chunks:
                    out = stripper.feed(translator.feed(chunk) if translator else chunk)
                    if out:
                        await writer.body(out, True)
                        if writer.ended:  # a dialect's answer ended with its last event
                            break
                if translator is not None and not writer.ended:
                    held = stripper.feed(translator.flush())
            await writer.body(held + stripper.flush(), False)
            if translator is not None and translator.failed:  # it sent an error event
                outcome.status = 502
                return False
        except (trio.TooSlowError, PoolError) as exc:
            stalled = isinstance(exc, trio.TooSlowError)
            outcome.status = 504 if stalled else 502  # for the log and metrics only
            await writer.body(encode_error_event(render_error(
                f"the upstream {'stalled' if stalled else 'broke off'} mid-stream",
                "server_error", "upstream_timeout" if stalled else "upstream_error",
            )), False)
            return False
        end = trio.current_time()
        outcome.ttft_ms = attempt.ttft_ms = (first - attempt.started) * 1000
        outcome.take_usage(stripper.usage)
        attempt.tokens_per_sec = tokens_per_sec(stripper.usage, stripper.events, first, end)
        return True

    async def _hold_until_content(
        self, attempt: Attempt, chunks: IdleTimed, stripper: SSEStripper,
        translator: StreamTranslator | None,
    ) -> tuple[bytes, bool]:
        """Read the stream until its first event with content (text, reasoning, a tool call,
        a finish reason, the end), by `routing.first_token_timeout_s` after the request went
        out; returns the bytes held so far (relayed with it) and whether the stream already
        ended (its translator flushed). Nothing has reached the client yet, so every failure
        here raises Failed and the next candidate is tried."""
        watch = ContentWatch()
        held: list[bytes] = []
        verdict = ""
        ended = False
        with trio.CancelScope(deadline=attempt.started + self.first_token_s) as scope:
            try:
                async for chunk in chunks:
                    data = translator.feed(chunk) if translator else chunk
                    verdict = watch.feed(data)
                    held.append(stripper.feed(data))
                    if verdict:
                        break
                else:
                    ended = True
                    data = translator.flush() if translator is not None else b""
                    verdict = watch.feed(data) or watch.end()
                    held.append(stripper.feed(data))
            except trio.TooSlowError:
                raise Failed("timeout", "the upstream stalled before its first token") from None
            except PoolError as exc:
                raise Failed("protocol", f"the stream broke off before any content ({exc})") \
                    from None
        if scope.cancelled_caught:
            raise Failed(
                "timeout", f"no first token within {self.first_token_s:g} s (first_token_timeout_s)"
            )
        if verdict == "error":
            raise Failed("status", "the upstream's stream failed before any content")
        if not verdict:
            raise Failed("protocol", "the stream ended before any content")
        return b"".join(held), ended

    async def _relay_json(
        self,
        attempt: Attempt,
        response: UpstreamResponse,
        content_type: str,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        inbound = attempt.inbound
        raw = await self._read_answer(response)
        status = response.status
        if not attempt.native:  # a native dialect answer is its dialect writer's to shape
            status, content_type, raw = attempt.adapter.translate_response(
                inbound.endpoint, response.status, content_type, raw, attempt.request
            )
        try:
            data = json.loads(raw)
            changed = False
            if attempt.strip and not attempt.native and isinstance(data, dict) and (
                contains_reasoning(raw)
            ):
                stripped = strip_reasoning(data)
                changed = stripped is not data
                data = stripped
            if inbound.body is not None and inbound.body.get("encoding_format") == "base64":
                changed |= encode_embeddings(data)
            if changed:
                raw = encode_json(data)
        except (ValueError, RecursionError):  # not JSON, or nested past what we walk
            raise Failed("protocol", "the upstream answered a body that is not JSON") from None
        await attempt.writer.start(status, [*JSON_HEADERS, length_header(raw), *headers])
        await attempt.writer.body(raw, False)
        usage = data.get("usage") if isinstance(data, dict) else None
        attempt.outcome.take_usage(usage)
        attempt.tokens_per_sec = tokens_per_sec(
            usage, 0, attempt.started, trio.current_time()
        )
        return True

    async def _relay_passthrough(
        self,
        attempt: Attempt,
        response: UpstreamResponse,
        content_type: str,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        writer = attempt.writer
        content_type = content_type or "application/octet-stream"
        if attempt.inbound.upload is not None:
            # Transcripts are small and may need dialect translation: read them whole.
            raw = await self._read_answer(response)
            status, content_type, raw = attempt.adapter.translate_response(
                attempt.inbound.endpoint, response.status, content_type, raw, attempt.request
            )
            await writer.start(
                status, [(b"content-type", content_type.encode()), length_header(raw), *headers]
            )
            await writer.body(raw, False)
            return True
        # Binary answers (speech, images) are streamed back as they come, with the
        # upstream's length when it gave one, so a body cut short is detectable.
        length = response.header(b"content-length")
        framing = [(b"content-length", length)] if length is not None else []
        await writer.start(
            response.status, [(b"content-type", content_type.encode()), *framing, *headers]
        )
        try:
            async for chunk in IdleTimed(response, self.idle_s):
                await writer.body(chunk, True)
        except (trio.TooSlowError, PoolError):
            # No clean end: the response stays unfinished and the server closes the
            # connection, so the client sees a broken download, not a short "success".
            attempt.outcome.status = 502
            return False
        await writer.body(b"", False)
        return True
