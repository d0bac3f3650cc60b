"""OpenTelemetry traces of the client requests (`[tracing]`): the rules, without OpenTelemetry.

Rule: with `tracing.otlp_endpoint` unset nothing here imports OpenTelemetry, and a request
pays for one attribute check in the proxy (`ProxyApp.tracing is not None`) plus the client's
W3C `traceparent`/`tracestate`, passed upstream unchanged (`client_trace_headers`), so a
client's own trace still continues past the gateway. With it set, `start_tracing` builds the
exporter (geniehive/traced.py, which does import OpenTelemetry) and `relay_for` the relay that
makes the child spans.

The attributes follow the OpenTelemetry GenAI and HTTP semantic conventions. They are built
here from the request's plain values (`Outcome`, a `Failed`, a service's id and URL) by pure
functions, and never carry a prompt, message content, an answer or a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from geniehive.config import ConfigError, TracingConfig
from geniehive.exchange import Outcome
from geniehive.relay import Relay

if TYPE_CHECKING:
    from geniehive.gateway import Gateway
    from geniehive.routing import RouteDecision
    from geniehive.traced import Tracing

TRACES_PATH = "/v1/traces"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The longest trace header passed on as it came (a valid traceparent is 55 characters; the
# W3C limit for tracestate is 512): anything longer is not a trace context, it is dropped.
MAX_TRACE_HEADER = 512
MISSING_EXTRA = (
    "tracing.otlp_endpoint: tracing needs the OpenTelemetry packages; install them with "
    "pip install 'geniehive[tracing]' (or remove [tracing] otlp_endpoint)"
)
# Our operations -> `gen_ai.operation.name` (the convention's well-known values where one fits).
OPERATION_NAMES: Mapping[str, str] = {
    "chat": "chat",
    "completion": "text_completion",
    "embeddings": "embeddings",
    "transcription": "transcription",
    "speech": "speech",
    "image": "image_generation",
}
NoHeaders = tuple[tuple[bytes, bytes], ...]
NO_HEADERS: NoHeaders = ()


def start_tracing(config: TracingConfig) -> Tracing | None:
    """The exporter for `config`, None when tracing is off (no endpoint).

    Raises ConfigError (at `tracing.otlp_endpoint`, naming the `geniehive[tracing]` extra)
    when an endpoint is set but the OpenTelemetry packages are not installed.
    """
    if config.otlp_endpoint is None:
        return None
    try:
        from geniehive.traced import Tracing
    except ImportError:
        raise ConfigError([MISSING_EXTRA]) from None
    return Tracing(config)


async def stop_tracing(tracing: Tracing | None) -> None:
    """Flush the spans still queued and stop the exporter, in a thread (its export may take
    up to its timeout; the trio loop goes on meanwhile)."""
    if tracing is not None:
        await trio.to_thread.run_sync(tracing.shutdown)


def relay_for(gateway: Gateway) -> Relay:
    """The gateway's relay: the tracing one (child spans) only when tracing is on."""
    if gateway.tracing is None:
        return Relay(gateway)
    from geniehive.traced import TracedRelay

    return TracedRelay(gateway)


def traces_url(endpoint: str) -> str:
    """Where spans are posted: the endpoint's `/v1/traces`, unless it names that path."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def client_trace_headers(headers: Mapping[str, str]) -> NoHeaders:
    """The client's `traceparent` (and its `tracestate`) as upstream headers, unchanged;
    none when it sent no traceparent or an oversized one."""
    parent = headers.get(TRACEPARENT)
    if parent is None or len(parent) > MAX_TRACE_HEADER:
        return NO_HEADERS
    state = headers.get(TRACESTATE)
    if state is None or len(state) > MAX_TRACE_HEADER:
        return ((b"traceparent", parent.encode("latin-1")),)
    return ((b"traceparent", parent.encode("latin-1")), (b"tracestate", state.encode("latin-1")))


def operation_name(operation: str) -> str:
    """The `gen_ai.operation.name` of one of our operations."""
    return OPERATION_NAMES.get(operation, operation)


def span_name(operation: str, model: str | None) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, the convention's span name."""
    name = operation_name(operation)
    return f"{name} {model}" if model else name


def request_attributes(endpoint: str, operation: str) -> dict[str, Any]:
    """What a request's server span knows at its start."""
    return {"gen_ai.operation.name": operation_name(operation), "geniehive.endpoint": endpoint}


def error_type(status: int) -> str | None:
    """`error.type` of an answer's status: the status code itself for 4xx and 5xx (499: the
    client went away), None for a success."""
    return str(status) if status >= 400 else None


def outcome_attributes(
    model: str | None, outcome: Outcome, provider: str | None
) -> dict[str, Any]:
    """What a request's server span says once it is answered: the model asked for and the
    one that answered, the tokens, the status, the route and the service (None values left
    out)."""
    attributes: dict[str, Any] = {"http.response.status_code": outcome.status,
                                  "geniehive.route": outcome.route,
                                  "geniehive.attempts": outcome.attempts}
    optional = {
        "gen_ai.request.model": model,
        "gen_ai.response.model": outcome.upstream_model,
        "gen_ai.provider.name": provider,
        "gen_ai.usage.input_tokens": outcome.prompt_tokens,
        "gen_ai.usage.output_tokens": outcome.completion_tokens,
        "geniehive.service_id": outcome.service_id,
        "geniehive.queued_ms": outcome.queued_ms,
        "geniehive.load_ms": outcome.load_ms,
        "geniehive.ttft_ms": outcome.ttft_ms,
        "geniehive.affinity": outcome.affinity,
        "error.type": error_type(outcome.status),
    }
    attributes.update((k, v) for k, v in optional.items() if v is not None)
    return attributes


def route_attributes(decision: RouteDecision) -> dict[str, Any]:
    """The route decision's span: how the model name matched, the route, the candidates."""
    attributes: dict[str, Any] = {
        "geniehive.route": decision.route_label or decision.match,
        "geniehive.route.match": decision.match,
        "geniehive.route.candidates": len(decision.candidates),
    }
    if decision.strategy:
        attributes["geniehive.route.strategy"] = decision.strategy
    if decision.error:
        attributes["error.type"] = decision.error
    return attributes


def attempt_attributes(
    service_id: str, base_url: str, operation: str, upstream_model: str, provider: str
) -> dict[str, Any]:
    """An upstream attempt's client span at its start: the service, its host and port, the
    model it is asked for (never the URL's user info or path)."""
    parts = urlsplit(base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation_name(operation),
        "gen_ai.request.model": upstream_model,
        "gen_ai.provider.name": provider,
        "geniehive.service_id": service_id,
    }
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.scheme in ("http", "https"):
        port = 443 if parts.scheme == "https" else 80
    if port is not None:
        attributes["server.port"] = port
    return attributes


def attempt_result(
    outcome: str, status: int | None = None, kind: str | None = None
) -> dict[str, Any]:
    """How an attempt ended: `geniehive.attempt.outcome` is ok, failed (retryable: `kind`
    says why: connect, timeout, protocol, status, load), refused (an upstream 4xx, passed
    on), broken (it failed after its first byte) or abandoned (the client went away)."""
    attributes: dict[str, Any] = {"geniehive.attempt.outcome": outcome}
    if status:
        attributes["http.response.status_code"] = status
    if kind is not None:
        attributes["geniehive.attempt.failure"] = kind
    if outcome != "ok":
        attributes["error.type"] = str(status) if status and outcome == "refused" else (
            kind or outcome
        )
    return attributes
