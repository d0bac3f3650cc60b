"""The client dialects against a real llama.cpp server (SmolLM2-135M) behind a real
`geniehive serve`: llama.cpp speaks Messages and Responses itself, so the gateway passes
both through (model rewritten), and count_tokens is counted by its tokenizer. Driven by the
real `anthropic` and `openai` clients, streamed and not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import trio

from tests.harness import Proc, closing, free_port, spawn_gateway, write_config
from tests.realmodel.support import in_thread, llamacpp_toml, sdk, wait_routable

pytestmark = pytest.mark.realmodel

QUESTION = "Name a colour."


async def test_messages_and_responses_pass_through_to_llamacpp(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    config = write_config(tmp_path, llamacpp_toml("smollm2", free_port()))
    with trio.fail_after(150):
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        await wait_routable(gateway.url, "smollm2")
        claude = closing(anthropic.Anthropic(base_url=gateway.url, api_key="unused",
                                             max_retries=0, timeout=60))
        openai_client = sdk(gateway)

        def run() -> dict[str, Any]:
            ask = [{"role": "user", "content": QUESTION}]
            out: dict[str, Any] = {
                "message": claude.messages.create(model="smollm2", max_tokens=16, messages=ask),
                "response": openai_client.responses.create(
                    model="smollm2", input=QUESTION, max_output_tokens=16),
                "events": [e.type for e in openai_client.responses.create(
                    model="smollm2", input=QUESTION, max_output_tokens=16, stream=True)],
            }
            with claude.messages.stream(model="smollm2", max_tokens=16, messages=ask) as s:
                out["streamed"] = "".join(s.text_stream)
                out["final"] = s.get_final_message()
            counted = httpx.post(
                f"{gateway.url}/v1/messages/count_tokens", timeout=30,
                json={"model": "smollm2", "messages": ask})
            out["count"] = (counted.status_code, counted.headers.get("x-geniehive-token-count"),
                            counted.json())
            return out

        out = await in_thread(run)
    message = out["message"]
    assert message.type == "message" and message.model == "smollm2"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16
    assert out["streamed"].strip() and out["final"].content[0].text == out["streamed"]
    response = out["response"]
    assert response.status in {"completed", "incomplete"} and response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens > 0
    events = out["events"]
    assert events[0] == "response.created" and "response.output_text.delta" in events
    assert events[-1] in {"response.completed", "response.incomplete"}
    status, kind, body = out["count"]
    assert status == 200 and kind == "exact" and body["input_tokens"] > 0
