"""The OpenTelemetry side of tracing: the exporter, the request span and the tracing relay.

Imported only when `tracing.otlp_endpoint` is set (geniehive/tracing.py `start_tracing`,
`relay_for`); this module imports the OpenTelemetry SDK and its OTLP/HTTP exporter, the
`geniehive[tracing]` extra.

    Tracing       the tracer provider: a parent-based ratio sampler, a BatchSpanProcessor
                  (its own thread: ending a span only queues it) posting OTLP/HTTP protobuf;
                  `shutdown` flushes it (geniehive/daemon.py, after the proxy drained)
    RequestTrace  one client request's SERVER span, continued from the client's traceparent
    TracedRelay   the relay with child spans: the route decision, the queue wait (only when
                  it waited) and each upstream attempt (CLIENT; its context is the
                  traceparent the upstream receives), with a first-token event

Rule: spans are started with explicit parents (`set_span_in_context`), never through the
implicit current span, which does not follow trio's tasks the way a request does; no
attribute carries prompt text, message content, an answer or a key (geniehive/tracing.py
builds them all).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from geniehive import routing
from geniehive.attempts import Attempt, Failed
from geniehive.capacity import Ticket
from geniehive.config import TracingConfig
from geniehive.errors import UpstreamStatus
from geniehive.exchange import Inbound, Outcome
from geniehive.relay import Relay
from geniehive.tracing import (
    attempt_attributes,
    attempt_result,
    outcome_attributes,
    request_attributes,
    route_attributes,
    span_name,
    traces_url,
)

FIRST_TOKEN_EVENT = "gen_ai.first_token"
TTFT_ATTRIBUTE = "gen_ai.server.time_to_first_token"  # seconds, as the GenAI metric


class Tracing:
    """The tracer provider of one gateway; `begin` starts a request's span."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.otlp_endpoint is not None
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        exporter = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("geniehive")
        self.propagator = TraceContextTextMapPropagator()

    def begin(self, headers: Mapping[str, str], endpoint: str, operation: str) -> RequestTrace:
        """A request's SERVER span, the child of the client's `traceparent` when it sent one."""
        parent = self.propagator.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span(
            span_name(operation, None), context=parent, kind=SpanKind.SERVER,
            attributes=request_attributes(endpoint, operation),
        )
        return RequestTrace(self, span, operation)

    def headers_for(self, span: Span) -> tuple[tuple[bytes, bytes], ...]:
        """The W3C trace headers that make `span` the parent of what the upstream records."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter's thread (blocking: run it in a
        thread)."""
        self.provider.shutdown()


class RequestTrace:
    """One client request's SERVER span and the context its children start in."""

    __slots__ = ("context", "operation", "provider", "span", "tracing")

    def __init__(self, tracing: Tracing, span: Span, operation: str) -> None:
        self.tracing = tracing
        self.span = span
        self.operation = operation
        self.context: Context = trace.set_span_in_context(span)
        self.provider: str | None = None  # the adapter kind of the service that answered

    def child(self, name: str, kind: SpanKind = SpanKind.INTERNAL,
              attributes: dict[str, object] | None = None) -> Span:
        return self.tracing.tracer.start_span(
            name, context=self.context, kind=kind, attributes=attributes,  # type: ignore[arg-type]
        )

    def finish(self, model: str | None, outcome: Outcome) -> None:
        """End the span with what became of the request (geniehive/tracing.py
        `outcome_attributes`); a 5xx marks it an error (HTTP server span rule)."""
        span = self.span
        span.update_name(span_name(self.operation, model))
        span.set_attributes(outcome_attributes(model, outcome, self.provider))
        if outcome.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class TracedRelay(Relay):
    """The relay, with the child spans of the request's trace (`inbound.trace`; a request
    without one, a websocket's, is relayed as by the plain relay)."""

    def decide(self, inbound: Inbound) -> routing.RouteDecision:
        parent = inbound.trace
        if parent is None:
            return super().decide(inbound)
        span = parent.child("geniehive.route")
        try:
            decision = super().decide(inbound)
            span.set_attributes(route_attributes(decision))
            return decision
        finally:
            span.end()

    async def wait_for_slot(self, inbound: Inbound, ticket: Ticket, ids: list[str]) -> str:
        parent = inbound.trace
        if parent is None:
            return await super().wait_for_slot(inbound, ticket, ids)
        span = parent.child("geniehive.queue", attributes={"geniehive.queue.services": len(ids)})
        try:
            service_id = await super().wait_for_slot(inbound, ticket, ids)
            span.set_attribute("geniehive.service_id", service_id)
            return service_id
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            span.set_attribute("geniehive.queued_ms", ticket.waited_s * 1000)
            span.end()

    async def attempt(self, attempt: Attempt) -> None:
        parent = attempt.inbound.trace
        if parent is None:
            await super().attempt(attempt)
            return
        service = attempt.service
        span = parent.child(
            span_name(parent.operation, attempt.model), SpanKind.CLIENT,
            attempt_attributes(service.service_id, service.base_url, parent.operation,
                               attempt.model, service.adapter),
        )
        parent.provider = service.adapter
        attempt.inbound.trace_headers = parent.tracing.headers_for(span)
        began, began_ns = trio.current_time(), time.time_ns()
        try:
            await super().attempt(attempt)
        except Failed as failed:
            _failed(span, attempt_result("failed", failed.status, failed.kind))
            raise
        except UpstreamStatus as refused:
            _failed(span, attempt_result("refused", refused.upstream_status))
            raise
        except BaseException:
            _failed(span, attempt_result("abandoned"))
            raise
        else:
            status = attempt.outcome.status
            if status >= 400:  # it broke off after its first byte
                _failed(span, attempt_result("broken", status))
            else:
                span.set_attributes(attempt_result("ok", status))
            if attempt.ttft_ms is not None:
                first_ns = began_ns + int(
                    ((attempt.started - began) * 1000 + attempt.ttft_ms) * 1_000_000
                )
                event = {TTFT_ATTRIBUTE: attempt.ttft_ms / 1000}
                span.add_event(FIRST_TOKEN_EVENT, event, timestamp=first_ns)
                parent.span.add_event(FIRST_TOKEN_EVENT, event, timestamp=first_ns)
        finally:
            span.end()


def _failed(span: Span, attributes: dict[str, object]) -> None:
    span.set_attributes(attributes)  # type: ignore[arg-type]
    span.set_status(Status(StatusCode.ERROR))
