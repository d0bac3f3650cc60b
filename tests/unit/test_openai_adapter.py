"""The OpenAI-compatible base adapter against `httpx.MockTransport` upstreams.

Claims: discovery reads `/v1/models` (vLLM's `max_model_len` included), the probe tells a live
server from a failing, unreachable or silent one, requests are rewritten without touching the
caller's data, and error bodies of the usual shapes become one readable message.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import (
    Asset,
    OpenAICompatibleAdapter,
    ProbeResult,
    UpstreamContext,
    UpstreamError,
    UpstreamRequest,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
BASE_URL = "http://upstream.test:8000/"
Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def open_adapter(
    handler: Handler, api_key: str | None = "sk-test"
) -> AsyncIterator[OpenAICompatibleAdapter]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = UpstreamContext("up1", BASE_URL, client, timeout_s=2.0, api_key=api_key)
        yield OpenAICompatibleAdapter(ctx)


def models_fixture() -> bytes:
    return (FIXTURES / "openai_models.json").read_bytes()


def refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected, got {request.method} {request.url}")


# --- discover -------------------------------------------------------------------------------


async def test_discover_parses_the_model_list_with_max_model_len():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, content=models_fixture(), headers={"content-type": "application/json"}
        )

    with trio.fail_after(5):
        async with open_adapter(handler) as adapter:
            assets = await adapter.discover()
    assert assets == [
        Asset(asset_id="Qwen/Qwen3-8B", loaded=True, context_length=32768),
        Asset(asset_id="text-embedding-3-small", loaded=True, context_length=None),
    ]
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "http://upstream.test:8000/v1/models")
    ]
    assert seen[0].headers["authorization"] == "Bearer sk-test"


async def test_discover_without_a_key_sends_no_authorization():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    with trio.fail_after(5):
        async with open_adapter(handler, api_key=None) as adapter:
            assert await adapter.discover() == []
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("response", "message"),
    [
        pytest.param(
            httpx.Response(500, text="oops"), "GET /v1/models answered HTTP 500", id="status"
        ),
        pytest.param(
            httpx.Response(200, text="<html>"),
            "GET /v1/models answered a body that is not JSON",
            id="not-json",
        ),
        pytest.param(
            httpx.Response(200, json=[{"id": "m"}]),
            "expected an OpenAI model list with a 'data' array",
            id="foreign-shape",
        ),
    ],
)
async def test_discover_raises_upstream_error_on_an_unusable_answer(response, message):
    with trio.fail_after(5):
        async with open_adapter(lambda request: response) as adapter:
            with pytest.raises(UpstreamError) as info:
                await adapter.discover()
    assert str(info.value) == message


# --- probe ----------------------------------------------------------------------------------


def connect_refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def never_answers(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        pytest.param(
            lambda request: httpx.Response(200, json={"data": []}),
            ProbeResult(True, "HTTP 200"),
            id="ok",
        ),
        pytest.param(
            lambda request: httpx.Response(404), ProbeResult(True, "HTTP 404"), id="alive-404"
        ),
        pytest.param(lambda request: httpx.Response(503), ProbeResult(False, "HTTP 503"), id="503"),
        pytest.param(connect_refused, ProbeResult(False, "unreachable: ConnectError"), id="down"),
        pytest.param(never_answers, ProbeResult(False, "timed out"), id="timeout"),
    ],
)
async def test_probe_verdict(handler, expected):
    with trio.fail_after(5):
        async with open_adapter(handler) as adapter:
            assert await adapter.probe() == expected


async def test_probe_asks_the_model_list_with_the_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    with trio.fail_after(5):
        async with open_adapter(handler) as adapter:
            await adapter.probe()
    assert str(seen[0].url) == "http://upstream.test:8000/v1/models"
    assert seen[0].headers["authorization"] == "Bearer sk-test"


# --- build_request --------------------------------------------------------------------------


async def test_build_request_rewrites_the_json_model_without_mutating_the_input():
    body = {"model": "fast-chat", "messages": [{"role": "user", "content": "hi"}]}
    before = copy.deepcopy(body)
    with trio.fail_after(5):
        async with open_adapter(refuse) as adapter:
            request = adapter.build_request("chat", "qwen3:8b", body=body)
    assert request == UpstreamRequest(
        "POST",
        "/v1/chat/completions",
        body={"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": "Bearer sk-test"},
    )
    assert body == before


@pytest.mark.parametrize(
    ("operation", "path"),
    [
        ("completion", "/v1/completions"),
        ("embeddings", "/v1/embeddings"),
        ("speech", "/v1/audio/speech"),
        ("image", "/v1/images/generations"),
    ],
)
async def test_build_request_uses_the_openai_path_and_adds_a_missing_model(operation, path):
    with trio.fail_after(5):
        async with open_adapter(refuse, api_key=None) as adapter:
            request = adapter.build_request(operation, "m1", body={"input": "x"})
    assert request == UpstreamRequest("POST", path, body={"input": "x", "model": "m1"})


async def test_build_request_rewrites_the_form_model_field_in_place():
    fields = [("model", "transcriber"), ("language", "en"), ("response_format", "json")]
    before = list(fields)
    with trio.fail_after(5):
        async with open_adapter(refuse) as adapter:
            request = adapter.build_request("transcription", "large-v3", fields=fields)
    assert request == UpstreamRequest(
        "POST",
        "/v1/audio/transcriptions",
        fields=(("model", "large-v3"), ("language", "en"), ("response_format", "json")),
        headers={"authorization": "Bearer sk-test"},
    )
    assert fields == before


async def test_build_request_puts_a_missing_form_model_first():
    with trio.fail_after(5):
        async with open_adapter(refuse, api_key=None) as adapter:
            request = adapter.build_request("translation", "large-v3", fields=[("prompt", "p")])
    assert request == UpstreamRequest(
        "POST", "/v1/audio/translations", fields=(("model", "large-v3"), ("prompt", "p"))
    )


# --- parse_error ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        pytest.param(
            400,
            json.dumps(
                {"error": {"message": "context too long", "type": "invalid_request_error"}}
            ).encode(),
            "context too long",
            id="openai-shape",
        ),
        pytest.param(404, b'{"detail": "Model not found"}', "Model not found", id="detail"),
        pytest.param(500, b'{"error": "out of memory"}', "out of memory", id="error-string"),
        pytest.param(502, b"Bad Gateway\n", "Bad Gateway", id="plain-text"),
        pytest.param(502, b"", "upstream answered HTTP 502", id="empty"),
        pytest.param(400, b'{"unexpected": true}', "upstream answered HTTP 400", id="foreign"),
    ],
)
async def test_parse_error_message(status, body, message):
    with trio.fail_after(5):
        async with open_adapter(refuse) as adapter:
            assert adapter.parse_error(status, body) == message
