"""The vLLM adapter on recorded payloads and against `httpx.MockTransport`.

Claims: `/v1/models` gives each model (LoRA adapters included) with `max_model_len` as its
context; `/metrics` gives running → in_flight, waiting → queue_depth and KV-cache use (V1 and
V0 names); only a 200 from `/health` is healthy; a failed metrics read is no reading, never a
discovery failure; thinking is turned off through `chat_template_kwargs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, Observed, ProbeResult, parse_openai_models
from plugins.vllm import ADAPTER, VllmAdapter, parse_vllm_metrics
from tests.fakes.transport import connect_refused, open_adapter, read_timeout, routes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- pure parsers ---------------------------------------------------------------------------


def test_models_fixture_gives_max_model_len_as_context():
    assert parse_openai_models(json.loads(fixture("vllm_models.json"))) == [
        Asset(asset_id="Qwen/Qwen3-8B", loaded=True, context_length=32768),
        Asset(asset_id="sql-lora", loaded=True, context_length=None),
    ]


def test_metrics_fixture_gives_running_waiting_and_kv_cache():
    assert parse_vllm_metrics(fixture("vllm_metrics.txt").decode()) == Observed(
        in_flight=3, queue_depth=2, kv_cache_usage=0.4375
    )


def test_v0_gpu_cache_name_is_read_when_the_v1_name_is_absent():
    text = (
        'vllm:num_requests_running{model_name="m"} 1.0\n'
        'vllm:num_requests_waiting{model_name="m"} 0.0\n'
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
    )
    assert parse_vllm_metrics(text) == Observed(in_flight=1, queue_depth=0, kv_cache_usage=0.9)


def test_engines_add_their_requests_and_the_fullest_cache_counts():
    text = (
        'vllm:num_requests_running{engine="0"} 2.0\n'
        'vllm:num_requests_running{engine="1"} 5.0\n'
        'vllm:num_requests_waiting{engine="0"} 1.0\n'
        'vllm:num_requests_waiting{engine="1"} 3.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.7\n'
    )
    assert parse_vllm_metrics(text) == Observed(in_flight=7, queue_depth=4, kv_cache_usage=0.7)


def test_a_page_without_vllm_metrics_reports_nothing():
    assert parse_vllm_metrics("# nothing here\nprocess_cpu_seconds_total 1.5\n") == Observed()


def test_spec():
    assert (ADAPTER.kind, ADAPTER.default_port) == ("vllm", 8000)
    assert ADAPTER.operations == frozenset({"chat", "completion", "embeddings"})


# --- through the adapter --------------------------------------------------------------------


def vllm_routes(seen: list[httpx.Request]):
    return routes(
        {
            ("GET", "/v1/models"): httpx.Response(200, content=fixture("vllm_models.json")),
            ("GET", "/metrics"): httpx.Response(
                200, content=fixture("vllm_metrics.txt"),
                headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
            ),
            ("GET", "/health"): httpx.Response(200),
        },
        seen,
    )


async def test_discover_reads_the_model_list_with_the_key():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter, vllm_routes(seen), api_key="sk-v") as adapter:
            assets = await adapter.discover()
    assert [(a.asset_id, a.context_length) for a in assets] == [
        ("Qwen/Qwen3-8B", 32768), ("sql-lora", None)
    ]
    assert [r.url.path for r in seen] == ["/v1/models"]
    assert seen[0].headers["authorization"] == "Bearer sk-v"


async def test_probe_asks_health():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter, vllm_routes(seen)) as adapter:
            assert await adapter.probe() == ProbeResult(True, "HTTP 200")
    assert [str(r.url) for r in seen] == ["http://upstream.test:8000/health"]


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (lambda r: httpx.Response(500), ProbeResult(False, "HTTP 500")),
        (lambda r: httpx.Response(503), ProbeResult(False, "HTTP 503")),
        (lambda r: httpx.Response(404), ProbeResult(False, "HTTP 404")),
        (connect_refused, ProbeResult(False, "unreachable: ConnectError")),
        (read_timeout, ProbeResult(False, "timed out")),
    ],
)
async def test_probe_failures(handler, expected):
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter, handler) as adapter:
            assert await adapter.probe() == expected


async def test_observe_reads_metrics():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter, vllm_routes(seen)) as adapter:
            observed = await adapter.observe()
    assert observed == Observed(in_flight=3, queue_depth=2, kv_cache_usage=0.4375)
    assert [r.url.path for r in seen] == ["/metrics"]


@pytest.mark.parametrize("handler", [lambda r: httpx.Response(404), connect_refused])
async def test_observe_without_metrics_is_no_reading(handler):
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter, handler) as adapter:
            assert await adapter.observe() is None


async def test_thinking_off_uses_chat_template_kwargs():
    with trio.fail_after(5):
        async with open_adapter(VllmAdapter) as adapter:
            shaped = adapter.thinking_off({"model": "Qwen/Qwen3-8B", "messages": []})
    assert shaped == {"model": "Qwen/Qwen3-8B", "messages": [],
                      "chat_template_kwargs": {"enable_thinking": False}}
