"""The tracing rules (geniehive/tracing.py): attribute mapping, trace headers, start-up."""

from __future__ import annotations

import sys

import pytest

from geniehive.attempts import Failed
from geniehive.config import ConfigError, TracingConfig
from geniehive.exchange import Outcome
from geniehive.tracing import (
    attempt_attributes,
    attempt_result,
    client_trace_headers,
    operation_name,
    outcome_attributes,
    span_name,
    start_tracing,
    traces_url,
)

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_operations_map_to_the_genai_operation_names() -> None:
    assert operation_name("chat") == "chat"
    assert operation_name("completion") == "text_completion"
    assert operation_name("embeddings") == "embeddings"
    assert span_name("completion", "smollm2") == "text_completion smollm2"
    assert span_name("chat", None) == "chat"  # before the body named a model


def test_an_answered_request_carries_models_tokens_route_and_service() -> None:
    outcome = Outcome(status=200, service_id="a/chat", upstream_model="smollm2-135m",
                      route="role:general", attempts=2, ttft_ms=12.5, prompt_tokens=7,
                      completion_tokens=3)
    attrs = outcome_attributes("general", outcome, "llamacpp")
    assert attrs == {
        "http.response.status_code": 200, "geniehive.route": "role:general",
        "geniehive.attempts": 2, "gen_ai.request.model": "general",
        "gen_ai.response.model": "smollm2-135m", "gen_ai.provider.name": "llamacpp",
        "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3,
        "geniehive.service_id": "a/chat", "geniehive.ttft_ms": 12.5,
    }


def test_a_failed_request_has_an_error_type_and_no_empty_attributes() -> None:
    attrs = outcome_attributes(None, Outcome(status=502), None)
    assert attrs["error.type"] == "502"
    assert None not in attrs.values()
    assert "gen_ai.usage.input_tokens" not in attrs
    assert outcome_attributes("m", Outcome(status=499), None)["error.type"] == "499"


def test_an_attempt_names_its_host_and_port_but_not_the_urls_credentials_or_path() -> None:
    attrs = attempt_attributes("gpu/chat", "http://user:secret@10.1.2.3:8080/base", "chat",
                               "qwen3", "vllm")
    assert attrs == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "qwen3",
        "gen_ai.provider.name": "vllm", "geniehive.service_id": "gpu/chat",
        "server.address": "10.1.2.3", "server.port": 8080,
    }
    assert "secret" not in repr(attrs) and "/base" not in repr(attrs)
    assert attempt_attributes("x", "https://api.example", "chat", "m", "openai")[
        "server.port"] == 443


def test_an_attempts_outcome_says_ok_failed_with_its_kind_or_refused_with_its_status() -> None:
    assert attempt_result("ok", 200) == {"geniehive.attempt.outcome": "ok",
                                         "http.response.status_code": 200}
    timeout = Failed("timeout", "no first token")
    assert attempt_result("failed", timeout.status, timeout.kind) == {
        "geniehive.attempt.outcome": "failed", "geniehive.attempt.failure": "timeout",
        "error.type": "timeout",
    }
    assert attempt_result("refused", 404)["error.type"] == "404"
    assert attempt_result("abandoned")["error.type"] == "abandoned"


def test_the_clients_trace_headers_pass_unchanged_and_only_with_a_traceparent() -> None:
    assert client_trace_headers({"traceparent": PARENT, "tracestate": "a=1,b=2"}) == (
        (b"traceparent", PARENT.encode()), (b"tracestate", b"a=1,b=2"))
    assert client_trace_headers({"traceparent": PARENT}) == ((b"traceparent", PARENT.encode()),)
    assert client_trace_headers({"tracestate": "a=1"}) == ()
    assert client_trace_headers({}) == ()
    assert client_trace_headers({"traceparent": "0" * 600}) == ()
    assert client_trace_headers({"traceparent": PARENT, "tracestate": "x" * 600}) == (
        (b"traceparent", PARENT.encode()),)


def test_spans_go_to_the_endpoints_v1_traces() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/") == "https://c/otlp/v1/traces"


def test_tracing_is_off_without_an_endpoint() -> None:
    assert start_tracing(TracingConfig()) is None


def test_an_endpoint_without_the_packages_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "geniehive.traced", None)  # its import now fails
    with pytest.raises(ConfigError) as caught:
        start_tracing(TracingConfig(otlp_endpoint="http://127.0.0.1:4318"))
    (problem,) = caught.value.problems
    assert problem.startswith("tracing.otlp_endpoint:")
    assert "geniehive[tracing]" in problem


def test_an_endpoint_starts_an_exporter_that_shuts_down() -> None:
    tracing = start_tracing(TracingConfig(otlp_endpoint="http://127.0.0.1:9",
                                          service_name="svc", sample_ratio=0.5))
    assert tracing is not None
    trace = tracing.begin({"traceparent": PARENT}, "chat", "chat")
    assert trace.span.get_span_context().trace_id == int(PARENT[3:35], 16)
    headers = dict(tracing.headers_for(trace.span))
    assert headers[b"traceparent"].startswith(PARENT[:36].encode())
    tracing.provider.force_flush(0)  # nothing ended: nothing to send to the closed port
    tracing.shutdown()
