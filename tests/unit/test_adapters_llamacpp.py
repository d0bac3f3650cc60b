"""The llama.cpp adapter on recorded payloads and against `httpx.MockTransport`.

Claims: discovery gives the model with its aliases and the context a request really gets
(`/props` n_ctx over the trained one); load comes from `/slots`, or from `/metrics` with the
slot count of `/props` when slots are disabled; `/health` 503 "Loading model" reads as
"loading"; the 501 of a server without `--embeddings` yields its own message.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, Observed, ProbeResult, UpstreamError, UpstreamRequest
from plugins.llamacpp import (
    ADAPTER,
    LlamaCppAdapter,
    Props,
    apply_props,
    parse_llamacpp_health,
    parse_llamacpp_metrics,
    parse_llamacpp_models,
    parse_llamacpp_props,
    parse_llamacpp_slots,
)
from tests.fakes.transport import connect_refused, open_adapter, routes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
QWEN = Asset(asset_id="Qwen3-8B-Q4_K_M.gguf", loaded=True, aliases=("qwen3-8b",),
             context_length=40960, size_bytes=5027783488)
NOT_SUPPORTED = json.dumps({"error": {"code": 501, "message": "This server does not support "
                                      "slots endpoint. Start it with `--slots`",
                                      "type": "not_supported_error"}}).encode()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- pure parsers ---------------------------------------------------------------------------


def test_models_give_id_aliases_trained_context_and_size():
    assert parse_llamacpp_models(json.loads(fixture("llamacpp_models.json"))) == [QWEN]


def test_router_mode_status_decides_loaded():
    payload = {"data": [
        {"id": "a.gguf", "status": {"value": "loaded"}},
        {"id": "b.gguf", "status": {"value": "unloaded"}},
        {"id": ""},
    ]}
    assert parse_llamacpp_models(payload) == [
        Asset(asset_id="a.gguf", loaded=True), Asset(asset_id="b.gguf", loaded=False)
    ]


def test_models_reject_a_foreign_shape():
    with pytest.raises(UpstreamError) as info:
        parse_llamacpp_models({"models": []})
    assert str(info.value) == "expected an OpenAI model list with a 'data' array"


def test_props_give_slots_and_per_slot_context():
    assert parse_llamacpp_props(json.loads(fixture("llamacpp_props.json"))) == Props(4, 8192)
    assert parse_llamacpp_props({"n_ctx": 2048}) == Props(None, 2048)
    assert parse_llamacpp_props([]) == Props(None, None)


def test_served_context_replaces_the_trained_one_for_a_single_model():
    assert apply_props([QWEN], Props(4, 8192)) == [
        Asset(asset_id="Qwen3-8B-Q4_K_M.gguf", loaded=True, aliases=("qwen3-8b",),
              context_length=8192, size_bytes=5027783488)
    ]
    assert apply_props([QWEN], Props(4, None)) == [QWEN]
    two = [QWEN, Asset(asset_id="other")]
    assert apply_props(two, Props(4, 8192)) == two


def test_slots_count_the_busy_ones():
    payload = json.loads(fixture("llamacpp_slots.json"))
    assert parse_llamacpp_slots(payload) == Observed(slots_total=4, slots_busy=2)
    with pytest.raises(UpstreamError):
        parse_llamacpp_slots(json.loads(NOT_SUPPORTED))


def test_metrics_give_busy_and_deferred_with_the_slot_count_of_props():
    text = fixture("llamacpp_metrics.txt").decode()
    assert parse_llamacpp_metrics(text, Props(4, 8192)) == Observed(
        slots_total=4, slots_busy=2, queue_depth=5
    )
    assert parse_llamacpp_metrics(text) == Observed(slots_busy=2, queue_depth=5)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"status":"ok"}', ProbeResult(True, "HTTP 200")),
        (503, fixture("llamacpp_health_loading.json"), ProbeResult(False, "loading")),
        (503, b'{"error":{"code":503,"message":"no slot available"}}',
         ProbeResult(False, "HTTP 503")),
        (503, b"Service Unavailable", ProbeResult(False, "HTTP 503")),
        (500, b"", ProbeResult(False, "HTTP 500")),
    ],
)
def test_health_verdict(status, body, expected):
    assert parse_llamacpp_health(status, body) == expected


def test_spec():
    assert (ADAPTER.kind, ADAPTER.default_port) == ("llamacpp", 8080)
    assert ADAPTER.operations == frozenset({"chat", "completion", "embeddings"})


# --- through the adapter --------------------------------------------------------------------


def server(seen: list[httpx.Request], **overrides: httpx.Response):
    table = {
        ("GET", "/v1/models"): httpx.Response(200, content=fixture("llamacpp_models.json")),
        ("GET", "/props"): httpx.Response(200, content=fixture("llamacpp_props.json")),
        ("GET", "/slots"): httpx.Response(200, content=fixture("llamacpp_slots.json")),
        ("GET", "/metrics"): httpx.Response(200, content=fixture("llamacpp_metrics.txt")),
        ("GET", "/health"): httpx.Response(200, json={"status": "ok"}),
    }
    for name, response in overrides.items():
        table[("GET", "/" + name)] = response
    return routes(table, seen)


async def test_discover_reads_models_and_props():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, server(seen)) as adapter:
            assets = await adapter.discover()
    assert [(a.asset_id, a.aliases, a.context_length) for a in assets] == [
        ("Qwen3-8B-Q4_K_M.gguf", ("qwen3-8b",), 8192)
    ]
    assert [r.url.path for r in seen] == ["/v1/models", "/props"]


async def test_discover_without_props_keeps_the_trained_context():
    seen: list[httpx.Request] = []
    handler = server(seen, props=httpx.Response(404, text="File Not Found"))
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, handler) as adapter:
            assert await adapter.discover() == [QWEN]


async def test_observe_prefers_slots():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, server(seen)) as adapter:
            observed = await adapter.observe()
    assert observed == Observed(slots_total=4, slots_busy=2)
    assert [r.url.path for r in seen] == ["/slots"]


async def test_observe_falls_back_to_metrics_when_slots_are_disabled():
    seen: list[httpx.Request] = []
    handler = server(seen, slots=httpx.Response(501, content=NOT_SUPPORTED))
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, handler) as adapter:
            observed = await adapter.observe()
    assert observed == Observed(slots_total=4, slots_busy=2, queue_depth=5)
    assert [r.url.path for r in seen] == ["/slots", "/metrics", "/props"]


async def test_observe_with_neither_slots_nor_metrics_is_no_reading():
    seen: list[httpx.Request] = []
    handler = server(seen, slots=httpx.Response(501, content=NOT_SUPPORTED),
                     metrics=httpx.Response(501, content=NOT_SUPPORTED))
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, handler) as adapter:
            assert await adapter.observe() is None


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (httpx.Response(200, json={"status": "ok"}), ProbeResult(True, "HTTP 200")),
        (httpx.Response(503, content=fixture("llamacpp_health_loading.json")),
         ProbeResult(False, "loading")),
    ],
)
async def test_probe_tells_ready_from_loading(health, expected):
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, server(seen, health=health)) as adapter:
            assert await adapter.probe() == expected
    assert [r.url.path for r in seen] == ["/health"]


async def test_probe_of_a_stopped_server():
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, connect_refused) as adapter:
            assert await adapter.probe() == ProbeResult(False, "unreachable: ConnectError")


async def test_embeddings_501_yields_the_servers_message():
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter) as adapter:
            message = adapter.parse_error(501, fixture("llamacpp_embeddings_501.json"))
    assert message == "This server does not support embeddings. Start it with `--embeddings`"


async def test_build_request_and_thinking_off_are_openai_with_template_kwargs():
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter) as adapter:
            body = adapter.thinking_off({"messages": [], "chat_template_kwargs": {"x": 1}})
            request = adapter.build_request("chat", "Qwen3-8B-Q4_K_M.gguf", body=body)
    assert request == UpstreamRequest("POST", "/v1/chat/completions", body={
        "messages": [], "chat_template_kwargs": {"x": 1, "enable_thinking": False},
        "model": "Qwen3-8B-Q4_K_M.gguf",
    })


@pytest.mark.parametrize(("answer", "count"), [
    (httpx.Response(200, json={"tokens": [1, 2, 3]}), 3),
    (httpx.Response(200, json={"detail": "no tokens here"}), None),
    (httpx.Response(404, json={"error": {"message": "no route"}}), None),
    (httpx.Response(200, content=b"not json"), None),
])
async def test_tokenize_counts_with_the_servers_tokenizer_or_says_none(
    answer: httpx.Response, count: int | None
) -> None:
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with open_adapter(LlamaCppAdapter, routes({("POST", "/tokenize"): answer},
                                                        seen)) as adapter:
            counted = await adapter.tokenize("smollm2", "hello world")
        async with open_adapter(LlamaCppAdapter, connect_refused) as adapter:
            unreachable = await adapter.tokenize("smollm2", "hello world")
    assert counted == count
    assert json.loads(seen[0].content) == {"content": "hello world"}
    assert unreachable is None
