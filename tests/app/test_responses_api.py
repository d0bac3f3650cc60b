"""The Responses API end to end: the real `openai` SDK's `client.responses` against a gateway
in front of the fake chat upstream (tests/fakes/upstream.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest
import trio

from tests.harness import closing
from tests.hive import Hive, calls

T = TypeVar("T")

TOOL = {"type": "function", "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}




def sdk(hive: Hive) -> openai.OpenAI:
    return closing(openai.OpenAI(base_url=f"{hive.url}/v1", api_key="unused", max_retries=0,
                                   timeout=10))



async def run(fn: Callable[[], T]) -> T:
    """The SDK is synchronous: it runs on a worker thread, the gateway on this trio run."""
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


def upstream_bodies(hive: Hive) -> list[dict[str, Any]]:
    return [r["json"] for r in calls(hive.fake)]


async def test_a_string_input_is_answered_as_a_response(hive: Hive) -> None:
    client = sdk(hive)
    response = await run(lambda: client.responses.create(
        model="m1", input="hello there", instructions="Be brief.", max_output_tokens=50,
        temperature=0.5,
    ))
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == "m1"
    assert response.output_text == "echo: hello there"
    assert response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    assert response.instructions == "Be brief." and response.temperature == 0.5
    [body] = upstream_bodies(hive)
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5
    assert "input" not in body and "instructions" not in body


async def test_a_stream_gives_the_responses_events_in_order(hive: Hive) -> None:
    client = sdk(hive)

    def stream() -> list[Any]:
        return list(client.responses.create(model="m1", input="one two", stream=True))

    events = await run(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "echo: one two")
    final = events[-1].response
    assert final.output_text == "echo: one two" and final.usage.output_tokens == 3
    [body] = upstream_bodies(hive)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_the_sdk_stream_helper_accumulates_the_final_response(hive: Hive) -> None:
    client = sdk(hive)

    def stream() -> tuple[str, Any]:
        with client.responses.stream(model="m1", input="stream me") as events:
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            return text, events.get_final_response()

    text, final = await run(stream)
    assert text == "echo: stream me"
    assert final.output_text == "echo: stream me" and final.status == "completed"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_function_tool_is_called_and_its_output_answered(
    hive: Hive, stream: bool
) -> None:
    client = sdk(hive)

    def first() -> Any:
        if not stream:
            return client.responses.create(model="m1", input="find cats", tools=[TOOL])
        with client.responses.stream(model="m1", input="find cats", tools=[TOOL]) as events:
            for _ in events:
                pass
            return events.get_final_response()

    response = await run(first)
    [call] = response.output
    assert call.type == "function_call" and call.name == "lookup"
    assert call.call_id == "call_fake1" and json.loads(call.arguments) == {"q": "find cats"}
    follow = [
        {"role": "user", "content": "find cats"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "3 cats"},
    ]
    second = await run(lambda: client.responses.create(model="m1", input=follow,
                                                       tools=[TOOL]))
    assert second.output_text == "tool said: 3 cats"
    sent = upstream_bodies(hive)
    assert sent[0]["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.", "parameters": TOOL["parameters"]}}]
    assert sent[1]["messages"] == [
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_fake1", "type": "function",
            "function": {"name": "lookup", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": "call_fake1", "content": "3 cats"},
    ]


async def test_a_json_schema_text_format_reaches_the_upstream_as_response_format(
    hive: Hive
) -> None:
    client = sdk(hive)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    await run(lambda: client.responses.create(
        model="m1", input="json please",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema,
                         "strict": True}},
    ))
    [body] = upstream_bodies(hive)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}


async def test_a_stored_response_is_continued_retrieved_and_deleted(hive: Hive) -> None:
    client = sdk(hive)
    first = await run(lambda: client.responses.create(model="m1", input="hello",
                                                      store=True))
    assert first.store is True
    second = await run(lambda: client.responses.create(
        model="m1", input="again", previous_response_id=first.id, store=True))
    assert second.previous_response_id == first.id
    third = await run(lambda: client.responses.create(
        model="m1", input="and again", previous_response_id=second.id))
    bodies = upstream_bodies(hive)
    assert bodies[1]["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "again"},
    ]
    assert [m["content"] for m in bodies[2]["messages"]] == [
        "hello", "echo: hello", "again", "echo: again", "and again"]
    fetched = await run(lambda: client.responses.retrieve(first.id))
    assert fetched.id == first.id and fetched.output_text == "echo: hello"
    # Not asked to be stored: not kept.
    with pytest.raises(openai.NotFoundError) as missing:
        await run(lambda: client.responses.retrieve(third.id))
    assert missing.value.body["code"] == "not_found"  # type: ignore[index]
    await run(lambda: client.responses.delete(first.id))
    with pytest.raises(openai.NotFoundError):
        await run(lambda: client.responses.retrieve(first.id))


async def test_an_unknown_previous_response_is_404_and_never_forwarded(hive: Hive) -> None:
    client = sdk(hive)
    with pytest.raises(openai.NotFoundError) as caught:
        await run(lambda: client.responses.create(model="m1", input="hi",
                                                  previous_response_id="resp_nope"))
    assert caught.value.body["message"] == "no stored response 'resp_nope'"  # type: ignore[index]
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert upstream_bodies(hive) == []


async def test_a_stored_response_expires_after_the_retention(hive: Hive) -> None:
    now = [1_000_000.0]
    hive.gateway.responses.clock = lambda: now[0]
    client = sdk(hive)
    first = await run(lambda: client.responses.create(model="m1", input="hi", store=True))
    now[0] += 3599
    assert (await run(lambda: client.responses.retrieve(first.id))).id == first.id
    now[0] += 2
    with pytest.raises(openai.NotFoundError):
        await run(lambda: client.responses.retrieve(first.id))
    with pytest.raises(openai.NotFoundError):
        await run(lambda: client.responses.create(model="m1", input="more",
                                                  previous_response_id=first.id))


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type",
                 id="builtin-tool"),
    pytest.param({"input": [{"role": "user", "content": "a"}, {"type": "mystery"}]},
                 "input[1].type", id="unknown-item"),
    pytest.param({"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-1"}]}]},
                 "input[0].content[0].file_id", id="image-file-id"),
    pytest.param({"input": 5}, "input", id="input-number"),
])
async def test_a_request_the_gateway_cannot_serve_is_400_naming_the_field(
    hive: Hive, body: dict[str, Any], param: str
) -> None:
    with trio.fail_after(10):
        response = await hive.client.post("/v1/responses", json={"model": "m1", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream_bodies(hive) == []


async def test_an_upstream_failure_before_the_answer_is_an_openai_error(hive: Hive) -> None:
    hive.fake.set_fault("status", status=500)
    client = sdk(hive)
    with pytest.raises(openai.APIStatusError) as caught:
        await run(lambda: client.responses.create(model="m1", input="hi"))
    assert caught.value.status_code == 502


async def test_a_stream_cut_mid_answer_ends_with_response_failed(hive: Hive) -> None:
    hive.fake.set_fault("reset_mid_stream", after_chunks=2)
    client = sdk(hive)
    events = await run(lambda: list(client.responses.create(
        model="m1", input="one two three four", stream=True)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.id == events[0].response.id
    assert failed.error is not None and failed.error.message
    assert "response.completed" not in [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
