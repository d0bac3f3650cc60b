"""Chat through the gateway to an Ollama upstream, driven by the real `openai` SDK, over real
sockets: the native `/api/chat` by default (answers and streams in the OpenAI shape, tool calls
streamed as `tool_calls` deltas, the upstream's `keep_alive` and a `num_ctx` that stays put
between requests unless a prompt needs more), `/v1` with `dialect = "openai"`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import trio

from tests.fakes.ollama import FakeOllama
from tests.harness import InProcess, closing, gateway_in_process, upstream_toml, write_config

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"request": {"type": "string"}}},
}}


async def start(nursery: trio.Nursery, tmp_path: Path, extra: str = "") -> tuple[
        FakeOllama, InProcess]:
    fake = FakeOllama(["qwen3:8b", "llama3.2:3b"])
    port = await nursery.start(fake.serve)
    config = write_config(tmp_path, upstream_toml("ol", port, ["chat"], "ollama", extra))
    return fake, await gateway_in_process(nursery, config)




def sdk(running: InProcess) -> openai.OpenAI:
    return closing(openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0,
                                   timeout=20))



def chats(fake: FakeOllama) -> list[dict[str, Any]]:
    return [c for c in fake.native_calls if c["path"] == "/api/chat"]


def v1_paths(fake: FakeOllama) -> list[str]:
    return [r["path"] for r in fake.requests if r["path"].startswith("/v1/")]


async def test_chat_and_streamed_chat_go_to_api_chat_with_the_upstreams_keep_alive(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path, 'keep_alive = "1h30m"\n')
        client = sdk(running)
        messages = [{"role": "user", "content": "hello from the sdk"}]

        def run() -> tuple[Any, list[Any]]:
            answer = client.chat.completions.create(model="qwen3:8b", messages=messages)
            stream = client.chat.completions.create(
                model="qwen3:8b", messages=messages, stream=True,
                stream_options={"include_usage": True})
            return answer, list(stream)

        answer, chunks = await trio.to_thread.run_sync(run)
        await running.stop()
    assert answer.choices[0].message.content == "echo: hello from the sdk"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 4 and answer.usage.completion_tokens == 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "echo: hello from the sdk"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    # keep_alive from the config; qwen3's thinking switched off the native way.
    assert [(c["model"], c["num_ctx"], c["keep_alive"], c["think"]) for c in chats(fake)] == [
        ("qwen3:8b", 8192, "1h30m", False)] * 2
    assert v1_paths(fake) == []


async def test_a_streamed_tool_call_reaches_the_sdk_as_tool_call_deltas(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path)
        client = sdk(running)

        def run() -> list[Any]:
            return list(client.chat.completions.create(
                model="llama3.2:3b", stream=True, tools=[WEATHER],
                messages=[{"role": "user", "content": "get_weather for Paris, please"}]))

        chunks = await trio.to_thread.run_sync(run)
        await running.stop()
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(c.index, c.id, c.type, c.function.name) for c in calls] == [
        (0, "call_0", "function", "get_weather")]
    assert json.loads(calls[0].function.arguments) == {
        "request": "get_weather for Paris, please"}
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    sent = [r["json"] for r in fake.requests if r["path"] == "/api/chat"]
    assert sent[0]["tools"] == [WEATHER] and sent[0]["stream"] is True


async def test_num_ctx_stays_put_between_requests_unless_a_prompt_needs_more(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path)
        client = sdk(running)

        def ask(chars: int) -> str | None:
            answer = client.chat.completions.create(
                model="llama3.2:3b", messages=[{"role": "user", "content": "x" * chars}])
            return answer.choices[0].finish_reason

        def run() -> list[str | None]:
            # 12 then 3000 characters: both fit the default; 30000 (10000 tokens) do not;
            # the short one after it keeps the larger window.
            return [ask(chars) for chars in (12, 3000, 30_000, 12)]

        reasons = await trio.to_thread.run_sync(run)
        await running.stop()
    assert reasons == ["stop"] * 4
    assert [c["num_ctx"] for c in chats(fake)] == [8192, 8192, 10240, 10240]
    assert fake.reloads == 1  # only for the prompt that needed a larger window
    assert [c["keep_alive"] for c in chats(fake)] == [None] * 4  # none configured


async def test_the_openai_dialect_still_chats_through_v1(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path, 'dialect = "openai"\n')
        client = sdk(running)

        def run() -> tuple[str | None, str]:
            messages = [{"role": "user", "content": "hi"}]
            answer = client.chat.completions.create(model="qwen3:8b", messages=messages)
            stream = client.chat.completions.create(model="qwen3:8b", messages=messages,
                                                    stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return answer.choices[0].message.content, text

        answer, streamed = await trio.to_thread.run_sync(run)
        await running.stop()
    assert answer == streamed == "echo: hi"
    assert chats(fake) == []
    assert v1_paths(fake) == ["/v1/chat/completions"] * 2
    bodies = [r["json"] for r in fake.requests if r["path"] == "/v1/chat/completions"]
    assert [b.get("reasoning_effort") for b in bodies] == ["none", "none"]
