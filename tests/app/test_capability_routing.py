"""Capabilities over real sockets: an Ollama emulator whose `/api/show` says its models can
use tools, and a plain OpenAI-compatible server configured as able to complete only.

Claims: discovery reads the capabilities and the maximum context from `/api/show` (asked once
per model, not on every pass) and `/v1/models` shows them; a request with `tools` to a role
lands on the capable service while a plain one may go to either; a request nothing can serve
(images, or tools to a model configured without them) is a 503 naming the gate, which the
route explanation names too; `min_context` is judged on the model's maximum context, not the
context Ollama allocated when it loaded the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.ollama import FakeOllama
from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import assert_openai_error, calls

ROLES = """
[roles.assistant]
operation = "chat"

[roles.long]
operation = "chat"
[roles.long.routing]
min_context = 16384
"""
PLAIN = """
[[upstreams.assets]]
asset_id = "small"
capabilities = ["completion"]
"""
ASK = [{"role": "user", "content": "hello"}]
TOOL = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "what is it?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]


async def wait_for(predicate: Any) -> None:
    # The registry publishes snapshots without an event to wait on; poll (under a deadline).
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


@pytest.fixture
async def hive(nursery: trio.Nursery, tmp_path: Path) -> Any:
    ollama = FakeOllama(["qwen3:8b"])
    ollama.add_model("tiny:1b", max_context=8192, capabilities=["completion"])
    plain = FakeUpstream(["small"])
    ollama_port = await nursery.start(ollama.serve)
    plain_port = await nursery.start(plain.serve)
    catalog = tmp_path / "roles.toml"
    catalog.write_text(ROLES)
    config = write_config(
        tmp_path,
        upstream_toml("ol", ollama_port, ["chat"], "ollama")
        + upstream_toml("plain", plain_port, ["chat"], "openai", PLAIN),
        roles=False,
    )
    config.write_text(config.read_text().replace("catalogs = []", f'catalogs = ["{catalog}"]'))
    running = await gateway_in_process(nursery, config)
    gateway = running.gateway

    def discovered() -> bool:
        service = gateway.snapshot.services.get("ol/chat")
        return service is not None and all(a.capabilities for a in service.assets)

    with trio.fail_after(10):
        await wait_for(discovered)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield client, ollama, plain, gateway
    await running.stop()


async def test_discovery_reads_capabilities_once_per_model_and_models_show_them(hive) -> None:
    client, ollama, _, gateway = hive
    with trio.fail_after(10):
        passes = sum(1 for c in ollama.native_calls if c["path"] == "/api/tags")
        await wait_for(lambda: sum(1 for c in ollama.native_calls
                                   if c["path"] == "/api/tags") >= passes + 3)
        listed = {m["id"]: m["geniehive"] for m in (await client.get("/v1/models")).json()["data"]}
        services = (await client.get("/v1/cluster/services")).json()["data"]
    shown = [c["model"] for c in ollama.native_calls if c["path"] == "/api/show"]
    assert sorted(shown) == ["qwen3:8b", "tiny:1b"]  # several passes, one /api/show each
    assert listed["qwen3:8b"]["capabilities"] == ["completion", "tools"]
    assert listed["qwen3:8b"]["max_context"] == 40960
    assert listed["small"]["capabilities"] == ["completion"]
    assert "capabilities" not in listed["assistant"] or listed["assistant"]["capabilities"]
    assets = {a["asset_id"]: a for s in services for a in s["assets"]}
    assert assets["tiny:1b"]["capabilities"] == ["completion"]
    assert assets["tiny:1b"]["max_context"] == 8192


async def test_a_tools_request_lands_on_the_capable_service_a_plain_one_anywhere(hive) -> None:
    client, ollama, plain, _ = hive
    with trio.fail_after(10):
        tools = [await client.post("/v1/chat/completions", json={
            "model": "assistant", "messages": ASK, "tools": TOOL}) for _ in range(4)]
        plain_answers = [await client.post("/v1/chat/completions", json={
            "model": "assistant", "messages": ASK}) for _ in range(4)]
        explained = (await client.get("/v1/cluster/routes/resolve",
                                      params={"model": "assistant", "needs": "tools"})).json()
    assert [r.status_code for r in tools] == [200] * 4
    assert {r.headers["x-geniehive-service"] for r in tools} == {"ol/chat"}
    assert {r.headers["x-geniehive-model"] for r in tools} == {"qwen3:8b"}
    assert not [c for c in calls(plain) if c["json"].get("tools")]
    assert [r.status_code for r in plain_answers] == [200] * 4
    assert {r.headers["x-geniehive-service"] for r in plain_answers} <= {"ol/chat", "plain/chat"}
    assert explained["needs"] == ["tools"]
    assert [c["service_id"] for c in explained["candidates"]] == ["ol/chat"]
    assert explained["excluded"] == [
        {"service_id": "plain/chat", "gate": "capability", "detail": "no tools support"}]


async def test_a_request_no_service_can_serve_is_a_503_naming_the_gate(hive) -> None:
    client, ollama, plain, _ = hive
    with trio.fail_after(10):
        images = await client.post("/v1/chat/completions",
                                   json={"model": "assistant", "messages": IMAGE})
        tools = await client.post("/v1/chat/completions",
                                  json={"model": "small", "messages": ASK, "tools": TOOL})
        explained = (await client.get("/v1/cluster/routes/resolve",
                                      params={"model": "assistant", "needs": "vision"})).json()
        bad = await client.get("/v1/cluster/routes/resolve",
                               params={"model": "assistant", "needs": "wings"})
    error = assert_openai_error(images, 503, "no_healthy_upstream")
    assert error["message"] == "no service for 'assistant' supports vision"
    error = assert_openai_error(tools, 503, "no_healthy_upstream")
    assert error["message"] == "no service for 'small' supports tools"
    assert {e["gate"] for e in explained["excluded"]} == {"capability"}
    assert explained["message"] == "no service for 'assistant' supports vision"
    assert bad.status_code == 400
    assert not calls(plain) and not calls(ollama)


async def test_min_context_is_judged_on_the_models_maximum_context(hive) -> None:
    client, ollama, _, gateway = hive
    with trio.fail_after(10):
        # Chatting loads qwen3:8b with the gateway's num_ctx, 8192 tokens allocated, below the
        # role's 16384; its maximum, 40960, is what the role asks about.
        warm = await client.post("/v1/chat/completions",
                                 json={"model": "qwen3:8b", "messages": ASK})
        await wait_for(lambda: gateway.snapshot.services["ol/chat"].asset("qwen3:8b")
                       .context_length == 8192)  # discovery read /api/ps
        answer = await client.post("/v1/chat/completions", json={"model": "long", "messages": ASK})
        explained = (await client.get("/v1/cluster/routes/resolve",
                                      params={"model": "long"})).json()
    assert warm.status_code == 200
    models = {c["service_id"]: c["upstream_model"] for c in explained["candidates"]}
    assert models["ol/chat"] == "qwen3:8b"  # tiny:1b (8192 at most) is narrowed away
    assert answer.status_code == 200


async def test_dialect_requests_with_tools_pass_the_same_gate(hive) -> None:
    client, _, plain, _ = hive
    anthropic_tool = [{"name": "get_weather", "description": "The weather",
                       "input_schema": {"type": "object", "properties": {}}}]
    responses_tool = [{"type": "function", "name": "get_weather", "description": "The weather",
                       "parameters": {"type": "object", "properties": {}}}]
    with trio.fail_after(10):
        messages = [await client.post("/v1/messages", json={
            "model": "assistant", "max_tokens": 16, "messages": ASK, "tools": anthropic_tool})
            for _ in range(3)]
        responses = [await client.post("/v1/responses", json={
            "model": "assistant", "input": "hello", "tools": responses_tool})
            for _ in range(3)]
        refused = await client.post("/v1/messages", json={
            "model": "small", "max_tokens": 16, "messages": ASK, "tools": anthropic_tool})
    for answer in [*messages, *responses]:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-geniehive-service"] == "ol/chat"
    assert not [c for c in calls(plain) if c["json"].get("tools")]
    assert refused.status_code == 503
    assert refused.json()["error"]["message"] == "no service for 'small' supports tools"
