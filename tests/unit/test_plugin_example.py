"""The example plugin of docs/plugins.md loads like any third-party plugin and works.

Claims: the file, copied to a fresh folder, loads through `load_adapters([folder])` as kind
"echo" after the built-ins; its adapter lists models from `/models`, probes `/ping`, sends
chat to the OpenAI path and reads the Echo error shape; and the guide shows the file verbatim.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, ProbeResult, UpstreamContext, UpstreamError, UpstreamRequest
from geniehive.adapters.loader import build_adapter, load_adapters
from tests.fakes.transport import connect_refused, routes

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tests" / "fixtures" / "plugins" / "echo_adapter.py"
GUIDE = REPO / "docs" / "plugins.md"
MODELS = {"models": [{"name": "echo-small", "context": 2048}, {"name": "echo-large"},
                     {"name": ""}, "junk"]}


@pytest.fixture
def specs(tmp_path):
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "echo_adapter.py")
    return load_adapters([folder], entry_points=False)


def echo(specs, handler):
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    ctx = UpstreamContext("echo-1", "http://echo.test:9000", client, timeout_s=2.0,
                          api_key="sk-echo")
    return client, build_adapter(specs, "echo", ctx)


def test_the_example_loads_after_the_builtins(specs):
    assert list(specs)[-1] == "echo"
    spec = specs["echo"]
    assert (spec.api_version, spec.operations, spec.default_port) == (
        1, frozenset({"chat"}), 9000)


async def test_discover_reads_models_with_the_key(specs):
    seen: list[httpx.Request] = []
    client, adapter = echo(specs, routes({("GET", "/models"): httpx.Response(200, json=MODELS)},
                                         seen))
    with trio.fail_after(5):
        async with client:
            assets = await adapter.discover()
    assert assets == [Asset(asset_id="echo-small", loaded=True, context_length=2048),
                      Asset(asset_id="echo-large", loaded=True)]
    assert [str(r.url) for r in seen] == ["http://echo.test:9000/models"]
    assert seen[0].headers["authorization"] == "Bearer sk-echo"


async def test_discover_of_a_foreign_answer_raises(specs):
    handler = routes({("GET", "/models"): httpx.Response(200, json={"data": []})}, [])
    client, adapter = echo(specs, handler)
    with trio.fail_after(5):
        async with client:
            with pytest.raises(UpstreamError) as info:
                await adapter.discover()
    assert str(info.value) == "expected {'models': [...]} from /models"


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (routes({("GET", "/ping"): httpx.Response(200, text="pong\n")}, []),
         ProbeResult(True, "pong")),
        (routes({("GET", "/ping"): httpx.Response(200, text="busy")}, []),
         ProbeResult(False, "HTTP 200")),
        (routes({("GET", "/ping"): httpx.Response(503)}, []), ProbeResult(False, "HTTP 503")),
        (connect_refused, ProbeResult(False, "unreachable: ConnectError")),
    ],
)
async def test_probe_pings(specs, handler, expected):
    client, adapter = echo(specs, handler)
    with trio.fail_after(5):
        async with client:
            assert await adapter.probe() == expected


async def test_chat_goes_to_the_openai_path_and_errors_read_the_echo_shape(specs):
    client, adapter = echo(specs, routes({}, []))
    async with client:
        request = adapter.build_request("chat", "echo-small", body={"model": "e", "messages": []})
        messages = [adapter.parse_error(400, b'{"problem": "too long"}'),
                    adapter.parse_error(500, b'{"error": {"message": "boom"}}')]
    assert request == UpstreamRequest(
        "POST", "/v1/chat/completions", body={"model": "echo-small", "messages": []},
        headers={"authorization": "Bearer sk-echo"},
    )
    assert messages == ["too long", "boom"]


def test_the_guide_shows_the_example_verbatim():
    assert EXAMPLE.read_text() in GUIDE.read_text()
