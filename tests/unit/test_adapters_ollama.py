"""The Ollama adapter on recorded `/api/*` payloads and against `httpx.MockTransport`.

Claims: discovery joins the pulled models with the ones in memory (VRAM, expiry, allocated
context, family); the probe asks `/api/version` and never generates; thinking is turned off
the way the request's path honours (`think: false` on `/api/chat`, `reasoning_effort: "none"`
on `/v1`); embeddings, completions and the `openai` dialect go through `/v1`; load and unload
only change `keep_alive` (and, natively, a load allocates chat's `num_ctx`); observe counts models in memory and their VRAM, and never fails discovery.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, Observed, ProbeResult, UpstreamError, UpstreamRequest
from plugins.ollama import (
    ADAPTER,
    OllamaAdapter,
    observed_from_ps,
    parse_ollama_ps,
    parse_ollama_tags,
    parse_ollama_version,
)
from tests.fakes.transport import connect_refused, open_adapter, routes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
BASE_URL = "http://ollama.test:11434"

QWEN_LOADED = Asset(
    asset_id="qwen3:8b", loaded=True, context_length=4096, family="qwen3",
    size_bytes=5225376047, vram_bytes=6654289920,
    expires_at="2025-05-02T10:19:52.117862+02:00",
)
NOMIC_LOADED = Asset(
    asset_id="nomic-embed-text:latest", loaded=True, context_length=8192, family="nomic-bert",
    size_bytes=274302450, vram_bytes=424919552,
    expires_at="2025-05-02T09:59:30.501223+02:00",
)
LLAMA_IDLE = Asset(asset_id="llama3.2:3b", loaded=False, family="llama", size_bytes=2019393189)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def ollama(handler=None):
    if handler is None:
        return open_adapter(OllamaAdapter, base_url=BASE_URL)
    return open_adapter(OllamaAdapter, handler, base_url=BASE_URL)


# --- pure parsers ---------------------------------------------------------------------------


def test_parse_ps_reads_vram_expiry_and_allocated_context():
    running = parse_ollama_ps(json.loads(fixture("ollama_ps.json")))
    assert running == {
        "qwen3:8b": Asset(
            asset_id="qwen3:8b", loaded=True, context_length=4096, family="qwen3",
            size_bytes=6654289920, vram_bytes=6654289920,
            expires_at="2025-05-02T10:19:52.117862+02:00",
        ),
        "nomic-embed-text:latest": Asset(
            asset_id="nomic-embed-text:latest", loaded=True, context_length=8192,
            family="nomic-bert", size_bytes=849839104, vram_bytes=424919552,
            expires_at="2025-05-02T09:59:30.501223+02:00",
        ),
    }


def test_parse_tags_marks_the_running_models_loaded_and_keeps_disk_size():
    running = parse_ollama_ps(json.loads(fixture("ollama_ps.json")))
    assets = parse_ollama_tags(json.loads(fixture("ollama_tags.json")), running)
    assert assets == [QWEN_LOADED, NOMIC_LOADED, LLAMA_IDLE]


def test_parse_tags_with_nothing_running_marks_every_model_unloaded():
    assets = parse_ollama_tags(json.loads(fixture("ollama_tags.json")), {})
    assert [(a.asset_id, a.loaded, a.context_length) for a in assets] == [
        ("qwen3:8b", False, None),
        ("nomic-embed-text:latest", False, None),
        ("llama3.2:3b", False, None),
    ]


def test_parse_tags_keeps_a_running_model_missing_from_the_tags():
    running = {"fresh:1b": Asset(asset_id="fresh:1b", loaded=True, vram_bytes=10)}
    assert parse_ollama_tags({"models": []}, running) == [running["fresh:1b"]]


@pytest.mark.parametrize("payload", [[], {"models": {}}, {"data": []}, None])
def test_parse_tags_and_ps_reject_a_foreign_shape(payload):
    with pytest.raises(UpstreamError) as info:
        parse_ollama_tags(payload)
    assert str(info.value) == "expected an Ollama /api/tags answer with a 'models' array"
    with pytest.raises(UpstreamError):
        parse_ollama_ps(payload)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, fixture("ollama_version.json"), ProbeResult(True, "ollama 0.9.6")),
        (200, b"<html>", ProbeResult(False, "no version in /api/version answer")),
        (200, b"[]", ProbeResult(False, "no version in /api/version answer")),
        (500, b"", ProbeResult(False, "HTTP 500")),
    ],
)
def test_parse_version_verdict(status, body, expected):
    assert parse_ollama_version(status, body) == expected


def test_observed_counts_models_in_memory_and_their_vram():
    running = parse_ollama_ps(json.loads(fixture("ollama_ps.json")))
    assert observed_from_ps(running) == Observed(
        loaded_model_count=2, vram_used_bytes=6654289920 + 424919552
    )
    assert observed_from_ps({}) == Observed(loaded_model_count=0, vram_used_bytes=0)


def test_spec_declares_the_openai_operations_ollama_serves():
    assert ADAPTER.kind == "ollama"
    assert ADAPTER.operations == frozenset({"chat", "completion", "embeddings"})
    assert ADAPTER.default_port == 11434


# --- through the adapter --------------------------------------------------------------------


def ollama_routes(seen: list[httpx.Request]):
    return routes(
        {
            ("GET", "/api/tags"): httpx.Response(200, content=fixture("ollama_tags.json")),
            ("GET", "/api/ps"): httpx.Response(200, content=fixture("ollama_ps.json")),
            ("GET", "/api/version"): httpx.Response(200, content=fixture("ollama_version.json")),
        },
        seen,
    )


async def test_discover_joins_tags_and_ps():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with ollama(ollama_routes(seen)) as adapter:
            assets = await adapter.discover()
    assert assets == [QWEN_LOADED, NOMIC_LOADED, LLAMA_IDLE]
    assert sorted(r.url.path for r in seen) == ["/api/ps", "/api/tags"]


async def test_discover_raises_when_tags_fail():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/ps":
            return httpx.Response(200, json={"models": []})
        return httpx.Response(500, json={"error": "boom"})

    with trio.fail_after(5):
        async with ollama(handler) as adapter:
            with pytest.raises(UpstreamError) as info:
                await adapter.discover()
    assert str(info.value) == "GET /api/tags answered HTTP 500"


async def test_probe_asks_the_version_and_generates_nothing():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with ollama(ollama_routes(seen)) as adapter:
            assert await adapter.probe() == ProbeResult(True, "ollama 0.9.6")
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "http://ollama.test:11434/api/version")
    ]


async def test_probe_of_a_stopped_server_is_unreachable():
    with trio.fail_after(5):
        async with ollama(connect_refused) as adapter:
            assert await adapter.probe() == ProbeResult(False, "unreachable: ConnectError")


async def test_observe_reads_ps():
    seen: list[httpx.Request] = []
    with trio.fail_after(5):
        async with ollama(ollama_routes(seen)) as adapter:
            observed = await adapter.observe()
    assert observed == Observed(loaded_model_count=2, vram_used_bytes=7079209472)


async def test_observe_failure_is_no_reading_rather_than_an_error():
    with trio.fail_after(5):
        async with ollama(lambda request: httpx.Response(502)) as adapter:
            assert await adapter.observe() is None


@pytest.mark.parametrize(
    ("dialect", "body", "added"),
    [
        ("native", {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]},
         {"think": False}),
        ("openai", {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]},
         {"reasoning_effort": "none"}),
        # Completions go through /v1 in both dialects: its own switch.
        ("native", {"model": "qwen3:8b", "prompt": "hi"}, {"reasoning_effort": "none"}),
    ],
)
async def test_thinking_off_speaks_the_path_the_request_takes(dialect, body, added):
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, base_url=BASE_URL, dialect=dialect) as adapter:
            shaped = adapter.thinking_off(body)
    assert shaped == {**body, **added}
    assert set(body) == {"model", "messages"} or set(body) == {"model", "prompt"}
    assert "chat_template_kwargs" not in shaped


@pytest.mark.parametrize(
    ("dialect", "operation", "path"),
    [("openai", "chat", "/v1/chat/completions"), ("native", "embeddings", "/v1/embeddings"),
     ("native", "completion", "/v1/completions")],
)
async def test_build_request_goes_to_the_openai_compatible_path(dialect, operation, path):
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, base_url=BASE_URL, dialect=dialect) as adapter:
            request = adapter.build_request(operation, "qwen3:8b", body={"model": "fast", "x": 1})
    assert request == UpstreamRequest("POST", path, body={"model": "qwen3:8b", "x": 1})


@pytest.mark.parametrize(
    ("method", "dialect", "sent"),
    [("load", "native", {"keep_alive": "30m", "options": {"num_ctx": 8192}}),
     ("load", "openai", {"keep_alive": "30m"}),
     ("unload", "native", {"keep_alive": 0}), ("unload", "openai", {"keep_alive": 0})],
)
async def test_load_and_unload_post_generate_without_a_prompt(method, dialect, sent):
    # Natively a load allocates the context chat will ask for, so chat does not reload it.
    seen: list[httpx.Request] = []
    answer = {"model": "llama3.2:3b", "created_at": "2025-05-02T08:00:00Z", "response": "",
              "done": True, "done_reason": method}
    handler = routes({("POST", "/api/generate"): httpx.Response(200, json=answer)}, seen)
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, handler, base_url=BASE_URL,
                                dialect=dialect) as adapter:
            await getattr(adapter, method)("llama3.2:3b")
    assert [json.loads(r.content) for r in seen] == [{"model": "llama3.2:3b", **sent}]


@pytest.mark.parametrize("keep_alive", ["1h30m", 600, -1])
async def test_load_sends_the_configured_keep_alive_and_unload_still_sends_zero(keep_alive):
    seen: list[httpx.Request] = []
    answer = {"model": "qwen3:8b", "response": "", "done": True}
    handler = routes({("POST", "/api/generate"): httpx.Response(200, json=answer)}, seen)
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, handler, base_url=BASE_URL,
                                keep_alive=keep_alive) as adapter:
            await adapter.load("qwen3:8b")
            await adapter.unload("qwen3:8b")
    assert [json.loads(r.content)["keep_alive"] for r in seen] == [keep_alive, 0]


async def test_load_of_an_unknown_model_raises_with_ollamas_message():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "model 'nope' not found"})

    with trio.fail_after(5):
        async with ollama(handler) as adapter:
            with pytest.raises(UpstreamError) as info:
                await adapter.load("nope")
    assert str(info.value) == "POST /api/generate answered HTTP 404: model 'nope' not found"
