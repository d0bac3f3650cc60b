"""The Responses API translations (geniehive/dialects/responses*.py) on recorded payloads:
requests into chat bodies, chat answers and chunk streams into Responses objects and events,
native answers passed through."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import trio

from geniehive.dialects import DialectWriter
from geniehive.dialects.responses import native_body
from geniehive.dialects.responses_answer import make_context
from geniehive.dialects.responses_request import normalize_input, to_chat
from geniehive.dialects.responses_stream import ResponsesTranslation
from geniehive.errors import InvalidRequest
from geniehive.exchange import Writer
from geniehive.models import Policy
from geniehive.sse import EVENT_END, parse_event_lines

# A request as Codex sends it: instructions, developer and user messages, a function tool,
# the freeform `apply_patch` tool, an earlier turn's reasoning, call and its output.
CODEX = {
    "model": "gpt-5-codex",
    "instructions": "You are Codex.",
    "input": [
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "sandbox: workspace-write"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ls"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
        {"type": "function_call", "call_id": "call_1", "name": "shell",
         "arguments": "{\"command\":[\"ls\"]}"},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch",
         "input": "*** Begin Patch\n*** End Patch"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done"},
    ],
    "tools": [
        {"type": "function", "name": "shell", "description": "Runs a command.",
         "strict": False, "parameters": {"type": "object", "properties": {
             "command": {"type": "array", "items": {"type": "string"}}}}},
        {"type": "custom", "name": "apply_patch", "description": "Edit files.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: patch"}},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "abc",
}


def test_a_codex_request_becomes_a_chat_body() -> None:
    chat = to_chat(CODEX, normalize_input(CODEX))
    assert chat["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "system", "content": "sandbox: workspace-write"},
        {"role": "user", "content": "ls"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}},
            {"id": "call_2", "type": "function", "function": {
                "name": "apply_patch",
                "arguments": json.dumps({"input": "*** Begin Patch\n*** End Patch"})}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Done"},
    ]
    shell, patch = chat["tools"]
    assert shell == {"type": "function", "function": {
        "name": "shell", "description": "Runs a command.", "strict": False,
        "parameters": CODEX["tools"][0]["parameters"]}}
    assert patch["function"]["parameters"]["required"] == ["input"]
    assert "lark grammar:\nstart: patch" in patch["function"]["description"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is False
    assert chat["reasoning_effort"] == "medium"
    assert chat["stream_options"] == {"include_usage": True}
    assert not {"include", "prompt_cache_key", "store", "input"} & set(chat)


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
    ({"tools": [CODEX["tools"][0], {"type": "file_search"}]}, "tools[1].type"),
    ({"input": [{"type": "message", "role": "user", "content": "a"}, {},
                {"type": "item_reference", "id": "x"}]}, "input[1].type"),
    ({"input": [{"role": "tool", "content": "a"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "n", "arguments": {}}]},
     "input[0].arguments"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"background": True}, "background"),
])
def test_what_a_chat_upstream_cannot_do_is_refused_naming_the_field(
    change: dict[str, Any], param: str
) -> None:
    body = {**CODEX, **change}
    with pytest.raises(InvalidRequest) as caught:
        to_chat(body, normalize_input(body))
    assert caught.value.param == param


def test_an_image_part_becomes_an_image_url_and_text_parts_join() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "a "},
                                          {"type": "output_text", "text": "cat"}]}],
        "text": {"format": {"type": "json_object"}}, "max_output_tokens": 9}
    chat = to_chat(body, normalize_input(body))
    assert chat["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "what is"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "a cat"},
    ]
    assert chat["response_format"] == {"type": "json_object"} and chat["max_tokens"] == 9


def translation(body: dict[str, Any] | None = None) -> ResponsesTranslation:
    counter = itertools.count(1)
    ctx = make_context(body or {"model": "m1", "tools": CODEX["tools"]}, "resp_1", 1700,
                       lambda prefix: f"{prefix}_{next(counter)}")
    return ResponsesTranslation(ctx)


def test_a_chat_answer_with_reasoning_and_tool_calls_becomes_output_items() -> None:
    chat = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me look.", "reasoning_content": "Think.",
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}},
            {"id": "call_b", "type": "function",
             "function": {"name": "apply_patch", "arguments": "{\"input\":\"*** P\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 6},
                  "completion_tokens_details": {"reasoning_tokens": 2}}}
    out = translation().answer(chat)
    assert out["id"] == "resp_1" and out["status"] == "completed" and out["model"] == "m1"
    assert out["output"] == [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text",
                                                          "text": "Think."}]},
        {"id": "msg_2", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": [],
                      "logprobs": []}]},
        {"id": "fc_3", "type": "function_call", "status": "completed", "call_id": "call_a",
         "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
        {"id": "fc_4", "type": "custom_tool_call", "status": "completed", "call_id": "call_b",
         "name": "apply_patch", "input": "*** P"},
    ]
    assert out["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6},
                            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 2},
                            "total_tokens": 14}


def test_an_answer_cut_by_its_length_is_incomplete() -> None:
    chat = {"choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "abc"}}]}
    out = translation().answer(chat)
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hm"}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
    {"choices": [{"index": 0, "delta": {"content": "!"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "function": {"name": "shell", "arguments": "{\"c"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "\":1}"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_b", "function": {"name": "apply_patch",
                                                  "arguments": "{\"input\":"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"arguments": "\"P\"}"}}]}}], "finish_reason": None},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
]
EXPECTED = [
    ("response.created", {}), ("response.in_progress", {}),
    ("response.output_item.added", {"output_index": 0}),
    ("response.reasoning_summary_part.added", {"item_id": "rs_1"}),
    ("response.reasoning_summary_text.delta", {"delta": "Hm"}),
    ("response.reasoning_summary_text.done", {"text": "Hm"}),
    ("response.reasoning_summary_part.done", {}),
    ("response.output_item.done", {"output_index": 0}),
    ("response.output_item.added", {"output_index": 1}),
    ("response.content_part.added", {"item_id": "msg_2", "content_index": 0}),
    ("response.output_text.delta", {"delta": "Hi", "output_index": 1}),
    ("response.output_text.delta", {"delta": "!"}),
    ("response.output_text.done", {"text": "Hi!"}),
    ("response.content_part.done", {}),
    ("response.output_item.done", {"output_index": 1}),
    ("response.output_item.added", {"output_index": 2}),
    ("response.function_call_arguments.delta", {"item_id": "fc_3", "delta": "{\"c"}),
    ("response.function_call_arguments.delta", {"delta": "\":1}"}),
    ("response.function_call_arguments.done", {"arguments": "{\"c\":1}", "name": "shell"}),
    ("response.output_item.done", {"output_index": 2}),
    ("response.output_item.added", {"output_index": 3}),
    ("response.custom_tool_call_input.delta", {"delta": "P"}),
    ("response.custom_tool_call_input.done", {"input": "P"}),
    ("response.output_item.done", {"output_index": 3}),
    ("response.completed", {}),
]


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in [e + b"\n\n" for e in EVENT_END.split(raw) if e.strip()]:
        lines, data = parse_event_lines(event)
        assert data is not None and lines[0] is not None
        parsed = json.loads(data)
        assert lines[0] == b"event: " + parsed["type"].encode()
        out.append((parsed["type"], parsed))
    return out


@pytest.mark.parametrize("cut", [1, 7, 64, 10_000])
def test_a_chunk_stream_split_anywhere_gives_the_exact_event_sequence(cut: int) -> None:
    """The chunks as the relay hands them over, whatever the read sizes upstream were."""
    sent: list[bytes] = []

    async def start(status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def body(chunk: bytes, more: bool) -> None:
        sent.append(chunk)

    t = translation()
    writer = DialectWriter(Writer(start, body), t)
    raw = b"".join(sse(c) for c in CHUNKS) + b"data: [DONE]\n\n"

    async def feed() -> None:
        writer.writer.sse = True
        await writer.writer.start(200, [])
        for offset in range(0, len(raw), cut):
            part = raw[offset:offset + cut]
            await writer.writer.body(part, offset + cut < len(raw))

    trio.run(feed)
    events = events_of(b"".join(sent))
    assert [k for k, _ in events] == [k for k, _ in EXPECTED]
    for (_, got), (_, want) in zip(events, EXPECTED, strict=True):
        assert {k: got[k] for k in want} == want
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == [
        "reasoning", "message", "function_call", "custom_tool_call"]
    assert final["usage"]["total_tokens"] == 12
    assert t.result == final


def test_a_stream_that_breaks_ends_with_response_failed() -> None:
    t = translation()
    out = t.chunk(CHUNKS[1]) + t.error({"message": "upstream went away", "type": "server_error",
                                        "code": "upstream_error", "param": None})
    events = events_of(out)
    assert events[-1][0] == "response.failed"
    response = events[-1][1]["response"]
    assert response["status"] == "failed"
    assert response["error"] == {"code": "upstream_error", "message": "upstream went away"}
    assert t.result is None


def native(kind: str, **fields: Any) -> bytes:
    return (b"event: " + kind.encode() + b"\ndata: "
            + json.dumps({"type": kind, **fields, "sequence_number": 99}).encode() + b"\n\n")


def test_a_native_stream_loses_its_reasoning_items_and_is_renumbered() -> None:
    t = translation()
    response = {"id": "resp_up", "status": "in_progress", "model": "up-model", "output": []}
    done = {**response, "status": "completed", "output": [
        {"type": "reasoning", "id": "rs"}, {"type": "message", "id": "m"}]}
    stream = [
        native("response.created", response=response),
        native("response.output_item.added", output_index=0, item={"type": "reasoning"}),
        native("response.reasoning_summary_text.delta", output_index=0, delta="hm"),
        native("response.output_item.done", output_index=0, item={"type": "reasoning"}),
        native("response.output_item.added", output_index=1, item={"type": "message"}),
        native("response.output_text.delta", output_index=1, content_index=0, delta="hi"),
        native("response.completed", response=done),
    ]
    events = events_of(b"".join(t.native_event(e, True) for e in stream))
    assert [(k, e.get("output_index")) for k, e in events] == [
        ("response.created", None), ("response.output_item.added", 0),
        ("response.output_text.delta", 0), ("response.completed", None)]
    assert [e["sequence_number"] for _, e in events] == [0, 1, 2, 3]
    assert events[-1][1]["response"]["output"] == [{"type": "message", "id": "m"}]
    assert t.result is not None and t.result["model"] == "m1"
    kept = events_of(b"".join(translation().native_event(e, False) for e in stream))
    assert len(kept) == len(stream)


def test_the_gateways_failure_event_in_a_native_stream_becomes_response_failed() -> None:
    t = translation()
    t.native_event(native("response.created", response={"id": "resp_up", "output": []}), True)
    out = t.native_event(sse({"error": {"message": "cut", "code": "upstream_timeout"}}), True)
    [(kind, event)] = events_of(out)
    assert kind == "response.failed"
    assert event["response"]["id"] == "resp_up" and event["response"]["status"] == "failed"
    assert event["response"]["error"] == {"code": "upstream_timeout", "message": "cut"}


def test_a_native_answer_keeps_the_clients_model_and_loses_reasoning() -> None:
    t = translation()
    out = t.native_answer({"id": "resp_up", "status": "completed", "model": "up",
                           "output": [{"type": "reasoning"}, {"type": "message"}]}, True)
    assert out["output"] == [{"type": "message"}] and out["model"] == "m1"
    assert t.result == out


def test_a_native_body_carries_the_policy_in_its_own_fields() -> None:
    policy = Policy(system_prompt="Be kind.", system_prompt_position="prepend",
                    body_defaults={"temperature": 0.2, "max_tokens": 100},
                    body_overrides={"top_p": 0.9, "reasoning_effort": "low"})
    body = {"model": "role/coder", "input": [{"role": "user", "content": "x"}],
            "instructions": "Be brief.", "temperature": 0.7, "store": True,
            "previous_response_id": "resp_1"}
    out = native_body(body, "qwen3-8b", policy)
    assert out["model"] == "qwen3-8b"
    assert out["instructions"] == "Be kind.\n\nBe brief."
    assert out["temperature"] == 0.7 and out["max_output_tokens"] == 100
    assert out["top_p"] == 0.9 and out["reasoning"] == {"effort": "low"}
    assert out["store"] is False and "previous_response_id" not in out
    assert body["model"] == "role/coder"  # the client's body is left as it was
