"""Both client dialects end to end in front of the Ollama emulator, driven by the real
`anthropic` and `openai` SDKs: a Messages or Responses request becomes chat at the edge, the
Ollama adapter sends that to the native `/api/chat` (with its `num_ctx`), and a tool call the
model makes streams back to each SDK as its own kind of tool call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import trio

from tests.fakes.ollama import FakeOllama
from tests.harness import InProcess, closing, gateway_in_process, upstream_toml, write_config

WEATHER_SCHEMA = {"type": "object", "properties": {"request": {"type": "string"}}}


async def start(nursery: trio.Nursery, tmp_path: Path) -> tuple[FakeOllama, InProcess]:
    fake = FakeOllama(["llama3.2:3b"])
    port = await nursery.start(fake.serve)
    config = write_config(tmp_path, upstream_toml("ol", port, ["chat"], "ollama"))
    return fake, await gateway_in_process(nursery, config)


def chats(fake: FakeOllama) -> list[dict[str, Any]]:
    return [c for c in fake.native_calls if c["path"] == "/api/chat"]





async def test_a_messages_stream_with_a_tool_call_from_ollama(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path)
        client = closing(anthropic.Anthropic(base_url=running.url, api_key="unused",
                                             max_retries=0, timeout=20))

        def run() -> tuple[Any, Any]:
            plain = client.messages.create(
                model="llama3.2:3b", max_tokens=64,
                messages=[{"role": "user", "content": "hello ollama"}])
            with client.messages.stream(
                model="llama3.2:3b", max_tokens=64,
                tools=[{"name": "get_weather", "description": "The weather in a city",
                        "input_schema": WEATHER_SCHEMA}],
                messages=[{"role": "user", "content": "get_weather for Paris"}],
            ) as stream:
                return plain, stream.get_final_message()

        plain, final = await trio.to_thread.run_sync(run)
        await running.stop()
    assert plain.content[0].text == "echo: hello ollama"
    assert plain.stop_reason == "end_turn" and plain.usage.output_tokens > 0
    assert final.stop_reason == "tool_use"
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather"
    assert call.input == {"request": "get_weather for Paris"}
    assert [c["num_ctx"] for c in chats(fake)] == [8192, 8192]


async def test_a_responses_stream_with_a_function_call_from_ollama(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake, running = await start(nursery, tmp_path)
        client = closing(openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused",
                                       max_retries=0, timeout=20))

        def run() -> tuple[Any, list[Any]]:
            plain = client.responses.create(model="llama3.2:3b", input="hello ollama")
            events = list(client.responses.create(
                model="llama3.2:3b", input="get_weather for Oslo", stream=True,
                tools=[{"type": "function", "name": "get_weather",
                        "description": "The weather in a city", "parameters": WEATHER_SCHEMA}],
            ))
            return plain, events

        plain, events = await trio.to_thread.run_sync(run)
        await running.stop()
    assert plain.output_text == "echo: hello ollama"
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.done" in kinds
    [call] = [i for i in events[-1].response.output if i.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"request": "get_weather for Oslo"}
    assert len(chats(fake)) == 2
