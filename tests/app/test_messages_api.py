"""`POST /v1/messages` and `/v1/messages/count_tokens` driven by the real `anthropic` SDK:
a gateway in front of the fake upstream (answers translated from chat) or of the llama.cpp
fake, which speaks Messages itself (answers passed through, thinking stripped)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anthropic
import pytest
import trio

from tests.fakes.llamacpp import FakeLlamaCpp
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config
from tests.hive import ENV, KEYS, Hive, calls, start_hive

SDK = Callable[..., anthropic.AsyncAnthropic]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


@pytest.fixture
async def keyed(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Hive]:
    """A gateway that wants keys (tests/hive.py KEYS) in front of the fake upstream."""
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=KEYS, environ=ENV)
    yield h
    await h.client.aclose()
    with trio.fail_after(10):
        await h.running.stop()


@pytest.fixture
async def sdk() -> AsyncIterator[SDK]:
    """Makes SDK clients (`sdk(url, key)`), each closed after the test."""
    made: list[anthropic.AsyncAnthropic] = []

    def sdk(url: str, key: str = ENV["APPS_KEY"]) -> anthropic.AsyncAnthropic:
        made.append(anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0,
                                             timeout=10))
        return made[-1]

    yield sdk
    for client in made:
        await client.close()


async def test_create_answers_a_messages_answer_from_a_chat_upstream(sdk: SDK, keyed: Hive) -> None:
    with trio.fail_after(10):
        message = await sdk(keyed.url).messages.create(
            model="m1", max_tokens=64, system="Be brief.", stop_sequences=["END"],
            messages=[{"role": "user", "content": "hello there"}],
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "m1"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "echo: hello there")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    sent = calls(keyed.fake)[-1]["json"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert (sent["max_tokens"], sent["stop"]) == (64, ["END"])


async def test_a_stream_gives_the_text_and_the_final_message(sdk: SDK, keyed: Hive) -> None:
    with trio.fail_after(10):
        async with sdk(keyed.url).messages.stream(
            model="m1", max_tokens=64, messages=[{"role": "user", "content": "hello there"}],
        ) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(pieces) == "echo: hello there"
    assert len(pieces) == 3  # one per word the upstream streamed
    assert final.content[0].type == "text" and final.content[0].text == "echo: hello there"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)
    assert calls(keyed.fake)[-1]["json"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_and_its_result_round_trip(sdk: SDK, keyed: Hive, stream: bool) -> None:
    client = sdk(keyed.url)
    ask = [{"role": "user", "content": "weather in Paris?"}]
    with trio.fail_after(10):
        if stream:
            async with client.messages.stream(model="m1", max_tokens=64, tools=[WEATHER],
                                              messages=ask) as events:
                first = await events.get_final_message()
        else:
            first = await client.messages.create(model="m1", max_tokens=64, tools=[WEATHER],
                                                 messages=ask)
        assert first.stop_reason == "tool_use"
        [call] = first.content
        assert call.type == "tool_use"
        assert (call.name, call.input) == ("get_weather", {"q": "weather in Paris?"})
        follow = await client.messages.create(model="m1", max_tokens=64, tools=[WEATHER], messages=[
            *ask,
            {"role": "assistant", "content": [call.model_dump()]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}]},
        ])
    assert follow.content[0].type == "text"
    assert follow.content[0].text == "tool said: 18C, sunny"
    sent = calls(keyed.fake)[-1]["json"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"}


async def test_errors_come_in_anthropics_shape(sdk: SDK, keyed: Hive) -> None:
    ask = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(10):
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk(keyed.url).messages.create(model="no-such-model", **ask)
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            await sdk(keyed.url, key="sk-wrong").messages.create(model="m1", **ask)
        with pytest.raises(anthropic.BadRequestError) as server_tool:
            await sdk(keyed.url).messages.create(
                model="m1", tools=[{"type": "web_search_20250305", "name": "web_search"}],
                **ask)
    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in missing.value.body["error"]["message"]
    assert unknown.value.body["type"] == "error"
    assert unknown.value.body["error"]["type"] == "authentication_error"
    assert server_tool.value.body["error"]["type"] == "invalid_request_error"
    assert "web_search" in server_tool.value.body["error"]["message"]
    assert calls(keyed.fake) == []


async def test_count_tokens_estimates_where_the_upstream_has_no_tokenizer(
    sdk: SDK, keyed: Hive
) -> None:
    with trio.fail_after(10):
        raw = await sdk(keyed.url).messages.with_raw_response.count_tokens(
            model="m1", messages=[{"role": "user", "content": "x" * 35}])
        with pytest.raises(anthropic.NotFoundError):
            await sdk(keyed.url).messages.count_tokens(
                model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            await sdk(keyed.url, key="sk-wrong").messages.count_tokens(
                model="m1", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": unknown.value.body["error"]["message"]}}
    assert raw.headers["x-geniehive-token-count"] == "estimate"
    assert (await raw.parse()).input_tokens == 11  # "user: " and 35 characters, 4 to a token


@pytest.fixture
async def llama(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[InProcess,
                                                                              FakeLlamaCpp]]:
    """A gateway in front of the llama.cpp fake, which reasons before it answers."""
    fake = FakeLlamaCpp(["smollm2"], thinking="Let me think.")
    with trio.fail_after(10):
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("llama", port, ["chat"], "llamacpp"))
        running = await gateway_in_process(nursery, config)
    yield running, fake
    with trio.fail_after(10):
        await running.stop()


async def test_a_llamacpp_upstream_gets_the_messages_body_itself(
    sdk: SDK, llama: tuple[InProcess, FakeLlamaCpp],
) -> None:
    running, fake = llama
    client = sdk(running.url, key="unused")
    ask = [{"role": "user", "content": "hello there"}]
    with trio.fail_after(10):
        message = await client.messages.create(model="smollm2", max_tokens=20, messages=ask)
        async with client.messages.stream(model="smollm2", max_tokens=20,
                                          messages=ask) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    native = [r for r in fake.requests if r["path"] == "/v1/messages"]
    assert len(native) == 2 and calls(fake) == []
    assert native[0]["json"] == {"model": "smollm2", "max_tokens": 20, "messages": ask}
    # The reasoning is stripped by default; the blocks after it are renumbered.
    assert [(b.type, b.text) for b in message.content] == [("text", "echo: hello there")]
    assert message.id == "msg_fake" + str(native[0]["index"])
    assert "".join(pieces) == "echo: hello there"
    assert [b.type for b in final.content] == ["text"]
    assert final.usage.output_tokens == 3


async def test_count_tokens_uses_the_llamacpp_tokenizer(
    sdk: SDK, llama: tuple[InProcess, FakeLlamaCpp],
) -> None:
    running, fake = llama
    with trio.fail_after(10):
        raw = await sdk(running.url, key="unused").messages.with_raw_response.count_tokens(
            model="smollm2", system="Be brief.",
            messages=[{"role": "user", "content": "one two three"}])
    assert raw.headers["x-geniehive-token-count"] == "exact"
    tokenized = [r for r in fake.requests if r["path"] == "/tokenize"]
    assert tokenized[-1]["json"] == {"content": "system: Be brief.\nuser: one two three"}
    assert (await raw.parse()).input_tokens == 7  # the fake counts words
