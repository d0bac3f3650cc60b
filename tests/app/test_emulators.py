"""Claims about the Ollama, vLLM, llama.cpp and whisper.cpp emulators, checked with the real
adapters.

Each emulator runs in-process on 127.0.0.1 port 0 and is driven over real sockets, mostly
through the adapter that will talk to the real server, so emulator and adapter are held to
the same recorded dialect. One test per emulator runs it as its own process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive.adapters import (
    Adapter,
    Asset,
    Observed,
    ProbeResult,
    UpstreamContext,
    UpstreamError,
)
from plugins.llamacpp import LlamaCppAdapter
from plugins.ollama import OllamaAdapter
from plugins.vllm import VllmAdapter
from plugins.whispercpp import WhisperCppAdapter
from tests.fakes.llamacpp import FakeLlamaCpp
from tests.fakes.ollama import FakeOllama, parse_keep_alive, render_expiry
from tests.fakes.replies import BadRequest
from tests.fakes.upstream import FakeUpstream
from tests.fakes.vllm import FakeVllm
from tests.fakes.whispercpp import FakeWhisperCpp

REPO = Path(__file__).resolve().parents[2]
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)


@asynccontextmanager
async def serving(
    fake: FakeUpstream, adapter_type: type[Adapter], assets: tuple[Asset, ...] = (),
    dialect: str = "native",
) -> AsyncIterator[tuple[Adapter, httpx.AsyncClient]]:
    """The fake on port 0, an adapter for it and a plain client on its base URL."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            ctx = UpstreamContext("emu", base, client, timeout_s=5, configured_assets=assets,
                                  dialect=dialect)
            yield adapter_type(ctx), client
        nursery.cancel_scope.cancel()


# --- Ollama ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30m", 1800.0), ("1h30m", 5400.0), ("10s", 10.0), ("250ms", 0.25), ("0", 0.0), (0, 0.0),
     (300, 300.0), ("-1", None), (-1, None), ("-5m", None), ("12.5", 12.5)],
)
def test_keep_alive_durations(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "m", True])
def test_bad_keep_alive_is_a_bad_request(value):
    with pytest.raises(BadRequest):
        parse_keep_alive(value)


def test_expiry_counts_from_the_fixed_instant():
    assert render_expiry(1800.0) == "2025-01-01T00:30:00Z"
    assert render_expiry(None) == "2318-01-01T00:00:00Z"


async def test_ollama_load_and_unload_change_ps_and_discovery():
    fake = FakeOllama(["qwen3:8b", "llama3.2:3b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, _):
            assert [a.loaded for a in await adapter.discover()] == [False, False]
            await adapter.load("qwen3:8b")
            loaded = await adapter.discover()
            observed = await adapter.observe()
            await adapter.unload("qwen3:8b")
            after = await adapter.discover()
            version = await adapter.probe()
    assert loaded[0] == Asset(
        asset_id="qwen3:8b", loaded=True, context_length=8192, family="qwen3",
        size_bytes=1_000_000_000, vram_bytes=1_000_000_000, expires_at="2025-01-01T00:30:00Z",
    )
    assert loaded[1].loaded is False
    assert observed == Observed(loaded_model_count=1, vram_used_bytes=1_000_000_000)
    assert [a.loaded for a in after] == [False, False]
    assert version == ProbeResult(True, "ollama 0.9.6")
    generate = [r["json"] for r in fake.requests if r["path"] == "/api/generate"]
    # The load allocates the context chat will ask for (the default 8192).
    assert generate == [{"model": "qwen3:8b", "keep_alive": "30m", "options": {"num_ctx": 8192}},
                        {"model": "qwen3:8b", "keep_alive": 0}]


async def test_ollama_pulled_and_controlled_models_appear_in_discovery():
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            pulled = await client.post("/api/pull", json={"model": "phi4:14b", "stream": False})
            added = await client.post("/_fake/ollama/models",
                                      json={"name": "gemma3:4b", "family": "gemma3", "size": 42})
            assets = await adapter.discover()
    assert pulled.json() == {"status": "success"}
    assert added.status_code == 200
    assert [(a.asset_id, a.family, a.size_bytes) for a in assets] == [
        ("qwen3:8b", "qwen3", 1_000_000_000), ("phi4:14b", "phi4", 1_000_000_000),
        ("gemma3:4b", "gemma3", 42),
    ]


async def test_ollama_streamed_pull_answers_ndjson_progress():
    fake = FakeOllama([])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (_, client):
            response = await client.post("/api/pull", json={"model": "tiny:1b"})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in response.text.splitlines()] == [
        {"status": "pulling manifest"}, {"status": "success"}
    ]
    assert fake.models == ["tiny:1b"]


async def test_ollama_native_chat_records_think_and_num_ctx_and_loads_the_model():
    fake = FakeOllama(["qwen3:8b"], reply="hi")
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hello"}]}
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            request = adapter.build_request("chat", "qwen3:8b", body=adapter.thinking_off(body))
            response = await client.post(request.path, json=dict(request.body))
            status, _, raw = adapter.translate_response(
                "chat", response.status_code, "application/json", response.content, request)
            assets = await adapter.discover()
    assert request.path == "/api/chat"
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "hi"
    assert [(c["num_ctx"], c["think"]) for c in fake.native_calls
            if c["path"] == "/api/chat"] == [(8192, False)]
    assert assets[0].loaded is True and assets[0].context_length == 8192


async def test_ollama_v1_chat_records_reasoning_effort_and_loads_the_model():
    fake = FakeOllama(["qwen3:8b"], reply="hi")
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hello"}]}
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter, dialect="openai") as (adapter, client):
            request = adapter.build_request("chat", "qwen3:8b", body=adapter.thinking_off(body))
            response = await client.post(request.path, json=dict(request.body))
            assets = await adapter.discover()
    assert response.json()["choices"][0]["message"]["content"] == "hi"
    assert fake.requests[0]["json"] == {
        "model": "qwen3:8b", "messages": [{"role": "user", "content": "hello"}],
        "reasoning_effort": "none",
    }
    assert assets[0].loaded is True


async def test_ollama_unknown_models_are_refused_natively_and_on_v1():
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            with pytest.raises(UpstreamError) as info:
                await adapter.load("nope:1b")
            v1 = await client.post("/v1/chat/completions",
                                   json={"model": "nope:1b", "messages": []})
    assert str(info.value) == "POST /api/generate answered HTTP 404: model 'nope:1b' not found"
    assert v1.status_code == 404


async def test_ollama_generate_with_a_prompt_answers_and_loads():
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (_, client):
            answer = await client.post("/api/generate", json={
                "model": "qwen3:8b", "prompt": "ping", "stream": False, "keep_alive": "1h"})
            ps = await client.get("/api/ps")
    assert answer.json()["response"] == "echo: ping"
    assert [(m["name"], m["expires_at"]) for m in ps.json()["models"]] == [
        ("qwen3:8b", "2025-01-01T01:00:00Z")
    ]


async def test_ollama_loading_takes_the_delay_and_ps_lists_the_model_only_then(
    autojump_clock: trio.abc.Clock,
):
    fake = FakeOllama(["qwen3:8b"])
    seen: list[list[str]] = []
    with trio.fail_after(120):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            configured = await client.post("/_fake/ollama/config", json={"load_delay_s": 30})
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(adapter.load, "qwen3:8b")
                await fake.wait_for_request(lambda r: r["path"] == "/api/generate")
                await trio.sleep(10)
                seen.append([a.asset_id for a in await adapter.discover() if a.loaded])
            took = trio.current_time() - start
            seen.append([a.asset_id for a in await adapter.discover() if a.loaded])
            again = trio.current_time()
            await adapter.load("qwen3:8b")  # already in memory: no second wait
            reloaded = trio.current_time() - again
    assert configured.json() == {"ok": True, "load_delay_s": 30.0, "max_loaded": None}
    assert seen == [[], ["qwen3:8b"]]
    assert 30 <= took < 31
    assert reloaded < 1


async def test_ollama_max_loaded_evicts_the_least_recently_used_model():
    fake = FakeOllama(["a:1b", "b:1b", "c:1b"])
    chat = {"model": "a:1b", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            await client.post("/_fake/ollama/config", json={"max_loaded": 2})
            await adapter.load("a:1b")
            await adapter.load("b:1b")
            await client.post("/v1/chat/completions", json=chat)  # a is now the most recent
            await adapter.load("c:1b")
            ps = await client.get("/api/ps")
    assert [m["name"] for m in ps.json()["models"]] == ["a:1b", "c:1b"]


async def test_ollama_models_have_their_own_vram_size_in_ps():
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            await client.post("/_fake/ollama/models",
                              json={"name": "big:70b", "size": 40, "size_vram": 38})
            await adapter.load("big:70b")
            await adapter.load("qwen3:8b")
            observed = await adapter.observe()
            assets = {a.asset_id: a for a in await adapter.discover()}
    assert (assets["big:70b"].size_bytes, assets["big:70b"].vram_bytes) == (40, 38)
    assert assets["qwen3:8b"].vram_bytes == 1_000_000_000
    assert observed == Observed(loaded_model_count=2, vram_used_bytes=1_000_000_038)


async def test_ollama_records_every_native_call_with_its_model():
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (adapter, client):
            await adapter.probe()
            await adapter.discover()
            await adapter.load("qwen3:8b")
            await client.post("/v1/chat/completions", json={"model": "qwen3:8b", "messages": []})
            listed = await client.get("/_fake/ollama/calls")
    assert listed.json() == fake.native_calls == [
        {"method": "GET", "path": "/api/version", "model": None},
        {"method": "GET", "path": "/api/ps", "model": None},
        {"method": "GET", "path": "/api/tags", "model": None},
        {"method": "POST", "path": "/api/generate", "model": "qwen3:8b"},
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [({"load_delay_s": -1}, "'load_delay_s' must be a number >= 0"),
     ({"max_loaded": 0}, "'max_loaded' must be an integer >= 1 or null"),
     ({"delay": 1}, "unknown fields ['delay']")],
)
async def test_ollama_config_control_refuses_bad_values(body, problem):
    fake = FakeOllama(["qwen3:8b"])
    with trio.fail_after(10):
        async with serving(fake, OllamaAdapter) as (_, client):
            refused = await client.post("/_fake/ollama/config", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == f"bad control request: {problem}"
    assert (fake.load_delay_s, fake.max_loaded) == (0.0, None)


# --- vLLM -----------------------------------------------------------------------------------


async def test_vllm_models_metrics_and_health_through_the_adapter():
    fake = FakeVllm(["Qwen/Qwen3-8B"], max_model_len=32768)
    with trio.fail_after(10):
        async with serving(fake, VllmAdapter) as (adapter, client):
            assets = await adapter.discover()
            idle = await adapter.observe()
            fake.set_load(running=4, waiting=7, kv_cache_usage=0.5)
            busy = await adapter.observe()
            controlled = await client.post("/_fake/vllm/metrics", json={"waiting": 1})
            after_control = await adapter.observe()
            healthy = await adapter.probe()
            await client.post("/_fake/vllm/health", json={"ok": False})
            sick = await adapter.probe()
    assert assets == [Asset(asset_id="Qwen/Qwen3-8B", loaded=True, context_length=32768)]
    assert idle == Observed(in_flight=0, queue_depth=0, kv_cache_usage=0.0)
    assert busy == Observed(in_flight=4, queue_depth=7, kv_cache_usage=0.5)
    assert controlled.json()["waiting"] == 1
    assert after_control == Observed(in_flight=4, queue_depth=1, kv_cache_usage=0.5)
    assert (healthy, sick) == (ProbeResult(True, "HTTP 200"), ProbeResult(False, "HTTP 503"))


async def test_vllm_chat_records_the_thinking_off_body():
    fake = FakeVllm(["Qwen/Qwen3-8B"])
    with trio.fail_after(10):
        async with serving(fake, VllmAdapter) as (adapter, client):
            body = adapter.thinking_off({"model": "x", "messages": [
                {"role": "user", "content": "hi there"}]})
            request = adapter.build_request("chat", "Qwen/Qwen3-8B", body=body)
            response = await client.post(request.path, json=dict(request.body))
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi there"
    assert fake.requests[0]["json"]["chat_template_kwargs"] == {"enable_thinking": False}


# --- llama.cpp ------------------------------------------------------------------------------


async def test_llamacpp_models_props_and_slots_through_the_adapter():
    fake = FakeLlamaCpp(["smollm2"], total_slots=8, n_ctx=2048, n_ctx_train=8192)
    with trio.fail_after(10):
        async with serving(fake, LlamaCppAdapter) as (adapter, client):
            assets = await adapter.discover()
            idle = await adapter.observe()
            controlled = await client.post("/_fake/llamacpp/slots", json={"busy": 3})
            busy = await adapter.observe()
            healthy = await adapter.probe()
    assert assets == [Asset(asset_id="smollm2", loaded=True, context_length=2048)]
    assert idle == Observed(slots_total=8, slots_busy=0)
    assert controlled.json() == {"ok": True, "total": 8, "busy": 3}
    assert busy == Observed(slots_total=8, slots_busy=3)
    assert healthy == ProbeResult(True, "HTTP 200")


# --- whisper.cpp ----------------------------------------------------------------------------


async def send_form(client: httpx.AsyncClient, adapter: Adapter, operation: str,
                    fields: list[tuple[str, str]], *, with_file: bool = True) -> Any:
    """Send what the adapter builds, then translate the answer back as the relay does."""
    request = adapter.build_request(operation, "ggml-base.en", fields=fields)
    files = {request.file_field: ("jfk.wav", WAV, "audio/wav")} if with_file else None
    # httpx sends a form without a file as urlencoded; an empty file part keeps it multipart.
    files = files or {"other": ("x", b"", "application/octet-stream")}
    response = await client.post(request.path, data=dict(request.fields), files=files)
    return adapter.translate_response(operation, response.status_code,
                                      response.headers["content-type"], response.content, request)


@pytest.mark.parametrize(
    ("fmt", "content_type", "body"),
    [
        ("json", "application/json", b'{"text": "fake transcription of jfk.wav"}'),
        ("text", "text/plain; charset=utf-8", b"fake transcription of jfk.wav\n"),
        ("srt", "text/plain; charset=utf-8",
         b"1\n00:00:00,000 --> 00:00:01,000\n fake transcription of jfk.wav\n\n"),
        ("vtt", "text/plain; charset=utf-8",
         b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n fake transcription of jfk.wav\n\n"),
    ],
)
async def test_whispercpp_answers_come_back_in_openai_shape(fmt, content_type, body):
    fake = FakeWhisperCpp()
    fields = [("model", "whisper-1"), ("response_format", fmt), ("language", "en")]
    with trio.fail_after(10):
        async with serving(fake, WhisperCppAdapter) as (adapter, client):
            answer = await send_form(client, adapter, "transcription", fields)
    assert answer == (200, content_type, body)
    record = fake.requests[0]
    assert (record["path"], record["form"]) == (
        "/inference", {"response_format": fmt, "language": "en"})
    assert record["files"]["file"]["filename"] == "jfk.wav"


async def test_whispercpp_translation_sends_translate_true():
    fake = FakeWhisperCpp(transcript="Hello, my friends.")
    fields = [("model", "whisper-1"), ("response_format", "verbose_json")]
    with trio.fail_after(10):
        async with serving(fake, WhisperCppAdapter) as (adapter, client):
            status, _, body = await send_form(client, adapter, "translation", fields)
    data = json.loads(body)
    assert (status, data["task"], data["text"]) == (200, "translate", "Hello, my friends.")
    assert data["segments"][0]["text"] == " Hello, my friends."
    assert fake.requests[0]["form"] == {"response_format": "verbose_json", "translate": "true"}


async def test_whispercpp_missing_file_is_its_200_error_and_becomes_a_400():
    fake = FakeWhisperCpp()
    with trio.fail_after(10):
        async with serving(fake, WhisperCppAdapter) as (adapter, client):
            raw = await client.post("/inference", files={"other": ("x", b"", "text/plain")})
            status, _, body = await send_form(client, adapter, "transcription", [],
                                              with_file=False)
    assert (raw.status_code, raw.json()) == (200, {"error": "no 'file' field in the request"})
    assert status == 400
    assert json.loads(body)["error"]["message"] == "no 'file' field in the request"


async def test_whispercpp_health_discovery_and_foreign_paths():
    fake = FakeWhisperCpp()
    configured = (Asset(asset_id="ggml-base.en"),)
    with trio.fail_after(10):
        async with serving(fake, WhisperCppAdapter, configured) as (adapter, client):
            probe = await adapter.probe()
            assets = await adapter.discover()
            foreign = await client.get("/v1/models")
    assert probe == ProbeResult(True, "HTTP 200")
    assert assets == [Asset(asset_id="ggml-base.en", loaded=True)]
    assert (foreign.status_code, foreign.text) == (404, "File Not Found (/v1/models)")


# --- process mode ---------------------------------------------------------------------------


async def read_line(stream: Any) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        data = await stream.receive_some(1024)
        assert data, f"stdout closed after {line!r}"
        line += data
    return line


@pytest.mark.parametrize(
    ("module", "args", "path", "expected"),
    [
        ("tests.fakes.upstream", ["--model", "p1"], "/v1/models", "p1"),
        ("tests.fakes.ollama", [], "/api/version", {"version": "0.9.6"}),
        ("tests.fakes.vllm", [], "/v1/models", "Qwen/Qwen3-8B"),
        ("tests.fakes.llamacpp", ["--total-slots", "2"], "/props",
         {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}}),
        ("tests.fakes.whispercpp", [], "/health", {"status": "ok"}),
    ],
)
async def test_fake_process_prints_listening_and_exits_zero_on_sigterm(module, args, path,
                                                                       expected):
    command = [sys.executable, "-m", module, "--port", "0", *args]
    process = await trio.lowlevel.open_process(command, cwd=REPO, stdout=subprocess.PIPE)
    try:
        with trio.fail_after(10):
            line = (await read_line(process.stdout)).decode()
            port = int(line.split()[1])
            async with httpx.AsyncClient() as client:
                answer = (await client.get(f"http://127.0.0.1:{port}{path}")).json()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
    assert line == f"LISTENING {port}\n"
    if isinstance(expected, str):
        answer = answer["data"][0]["id"]
    assert answer == expected
