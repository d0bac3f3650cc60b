"""The Anthropic Messages dialect's pure translations: a Messages request as a chat body, a
chat answer (whole or streamed) as a Messages answer, a native answer stripped, the policy
in Messages fields, and errors in Anthropic's shape."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from geniehive.dialects import DialectWriter
from geniehive.dialects.messages import MessagesDialect, to_chat
from geniehive.dialects.messages_stream import MessagesTranslation
from geniehive.errors import (
    AuthenticationFailed,
    GenieHiveError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyUpstream,
    QueueFull,
    RequestTooLarge,
    UpstreamFailed,
    UpstreamTimeout,
)
from geniehive.exchange import Writer
from geniehive.models import Policy

# A request as Claude Code sends it: system blocks with cache_control, client tools, a
# thinking block and a tool_use in the history, the tool's result and a user text after it.
CLAUDE_CODE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>cwd: /src</system-reminder>"},
            {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should run ls.", "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": "I'll list them."},
            {"type": "tool_use", "id": "toolu_01A", "name": "Bash",
             "input": {"command": "ls", "description": "List files"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.py\nb.py"},
            {"type": "text", "text": "thanks"},
        ]},
    ],
    "tools": [
        {"name": "Bash", "description": "Run a shell command",
         "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                          "required": ["command"]}},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "metadata": {"user_id": "user_abc_account__session_1"},
    "temperature": 1,
    "thinking": {"type": "enabled", "budget_tokens": 10000},
}


def test_a_claude_code_request_becomes_the_chat_body_it_means() -> None:
    assert to_chat(CLAUDE_CODE) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "messages": [
            {"role": "system", "content": "You are Claude Code, Anthropic's official CLI for "
                                          "Claude.\n\nBe concise."},
            {"role": "user", "content": "<system-reminder>cwd: /src</system-reminder>\n\n"
                                        "list the files"},
            {"role": "assistant", "content": "I'll list them.", "tool_calls": [
                {"id": "toolu_01A", "type": "function", "function": {
                    "name": "Bash",
                    "arguments": '{"command": "ls", "description": "List files"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "a.py\nb.py"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "Bash", "description": "Run a shell command",
            "parameters": CLAUDE_CODE["tools"][0]["input_schema"]}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "user": "user_abc_account__session_1",
        "temperature": 1,
        "reasoning_effort": "medium",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _one(content: Any, role: str = "user") -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": role, "content": content}]}


def test_images_become_image_url_parts_and_tool_errors_are_marked() -> None:
    chat = to_chat(_one([
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": [{"type": "text", "text": "no such file"},
                     {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}]},
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
    ]))
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "[error] no such file"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]},
    ]


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
    ({"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages[0].role"),
    ({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
        {"role": "user", "content": [{"type": "video", "url": "v"}]}]},
     "messages[2].content[0].type"),
    (_one([{"type": "tool_use", "id": "a", "name": "n", "input": {}}]),
     "messages[0].content[0].type"),
    (_one([{"type": "tool_result", "tool_use_id": "a"}], role="assistant"),
     "messages[0].content[0].type"),
    (_one([{"type": "image", "source": {"type": "file", "file_id": "f"}}]),
     "messages[0].content[0].source.type"),
    ({**_one("x"), "system": [{"type": "image"}]}, "system[0].type"),
    ({**_one("x"), "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({**_one("x"), "stop_sequences": "END"}, "stop_sequences"),
    ({**_one("x"), "thinking": {"type": "sometimes"}}, "thinking.type"),
])
def test_a_wrong_field_is_refused_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_chat(body)
    assert caught.value.param == param
    assert caught.value.http_status == 400


def test_a_server_tool_is_refused_by_name() -> None:
    body = {**_one("search"), "tools": [
        {"name": "Bash", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}
    with pytest.raises(InvalidRequest) as caught:
        to_chat(body)
    assert caught.value.param == "tools[1].type"
    assert "web_search" in caught.value.message and "web_search_20250305" in caught.value.message


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_maps_to_the_chat_choice(choice: dict[str, Any], expected: Any) -> None:
    chat = to_chat({**_one("x"), "tool_choice": choice})
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_sampling_stops_and_thinking_off_carry_over() -> None:
    chat = to_chat({**_one("x"), "top_k": 40, "top_p": 0.9, "stop_sequences": ["END", "##"],
                    "thinking": {"type": "disabled"}})
    assert (chat["top_k"], chat["top_p"], chat["stop"]) == (40, 0.9, ["END", "##"])
    assert chat["reasoning_effort"] == "none"
    assert "stream" not in chat


# -- answers -------------------------------------------------------------------------------

CHAT_TOOL_ANSWER = {
    "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "qwen3-8b",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check.",
        "reasoning_content": "The user wants weather.",
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_time", "arguments": "not json"}},
        ]}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
              "prompt_tokens_details": {"cached_tokens": 100}},
}


def test_a_chat_answer_with_tool_calls_becomes_a_messages_answer() -> None:
    assert MessagesTranslation("claude-x").answer(CHAT_TOOL_ANSWER) == {
        "id": "msg_abc123", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 30, "cache_read_input_tokens": 100},
    }


@pytest.mark.parametrize(("choice", "reason", "sequence"), [
    ({"finish_reason": "length"}, "max_tokens", None),
    ({"finish_reason": "stop"}, "end_turn", None),
    ({"finish_reason": "stop", "stop_reason": "END"}, "stop_sequence", "END"),
    ({"finish_reason": "stop", "stop_reason": 151645}, "end_turn", None),  # vLLM: a token id
])
def test_the_stop_reason_follows_the_finish_reason(
    choice: dict[str, Any], reason: str, sequence: str | None
) -> None:
    chat = {"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}, **choice}]}
    answer = MessagesTranslation("m", ("END",)).answer(chat)
    assert (answer["stop_reason"], answer["stop_sequence"]) == (reason, sequence)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
           **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": choices, **extra}


STREAM = [
    _chunk({"role": "assistant", "content": None}),
    _chunk({"reasoning_content": "Weather "}),
    _chunk({"reasoning_content": "in Paris."}),
    _chunk({"content": "Checking"}),
    _chunk({"content": "."}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
    _chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"}}]}),
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}),
]


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in raw.decode().split("\n\n"):
        if not event:
            continue
        name, data = event.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        parsed = json.loads(data[6:])
        assert parsed["type"] == name[7:]
        out.append((name[7:], parsed))
    return out


EXPECTED_EVENTS = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "",
                                               "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "Weather "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "in Paris."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Checking"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {
        "type": "input_json_delta", "partial_json": 'ty": "Paris"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
        "type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 3,
                             "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta",
                       "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"input_tokens": 50, "output_tokens": 12}}),
    ("message_stop", {"type": "message_stop"}),
]


def test_a_chat_stream_becomes_the_messages_event_sequence() -> None:
    translation = MessagesTranslation("claude-x")
    raw = b"".join(translation.chunk(c) for c in STREAM) + translation.done()
    assert _events(raw) == EXPECTED_EVENTS
    assert translation.result is not None
    assert translation.result["content"][2]["input"] == {"city": "Paris"}
    assert translation.result["usage"] == {"input_tokens": 50, "output_tokens": 12}


class _Collector:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.status = 0
        self.writer = Writer(self.start, self.body)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    async def body(self, chunk: bytes, more: bool) -> None:
        self.parts.append(chunk)


@pytest.mark.parametrize("cut", [1, 7, 64, 1000])
async def test_an_sse_stream_cut_anywhere_gives_the_same_events(cut: int) -> None:
    sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in STREAM)
    sse += b"data: [DONE]\n\n"
    client = _Collector()
    writer = DialectWriter(client.writer, MessagesTranslation("claude-x"))
    writer.writer.sse = True
    await writer.writer.start(200, [])
    pieces = [sse[i:i + cut] for i in range(0, len(sse), cut)]
    for index, piece in enumerate(pieces):
        await writer.writer.body(piece, index < len(pieces) - 1)
    assert _events(b"".join(client.parts)) == EXPECTED_EVENTS
    assert writer.complete


def test_an_empty_stream_still_ends_as_a_message() -> None:
    translation = MessagesTranslation("m")
    names = [name for name, _ in _events(translation.done())]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]


@pytest.mark.parametrize(("error", "kind"), [
    ({"message": "the upstream stalled mid-stream", "type": "server_error",
      "code": "upstream_timeout"}, "timeout_error"),
    ({"message": "the upstream broke off mid-stream", "type": "server_error",
      "code": "upstream_error"}, "api_error"),
    ({"message": "the gateway is shutting down", "type": "server_error",
      "code": "shutting_down"}, "overloaded_error"),
])
def test_a_broken_stream_ends_with_an_anthropic_error_event(
    error: dict[str, Any], kind: str
) -> None:
    translation = MessagesTranslation("m")
    translation.chunk(_chunk({"content": "par"}))
    assert _events(translation.error(error)) == [
        ("error", {"type": "error", "error": {"type": kind, "message": error["message"]}})]


# -- a native upstream ---------------------------------------------------------------------

def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


NATIVE = [
    _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_n1", "type": "message", "role": "assistant", "model": "smollm2",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "sig"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    _sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"a":'}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": " 1}"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
    _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                               "stop_sequence": None},
                           "usage": {"output_tokens": 7}}),
    _sse("message_stop", {"type": "message_stop"}),
]


def test_a_native_stream_loses_its_thinking_blocks_and_is_renumbered() -> None:
    translation = MessagesTranslation("smollm2")
    out = [translation.native_event(event, True) for event in NATIVE]
    events = _events(b"".join(out))
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]
    assert out[0] == NATIVE[0]  # an event with nothing to change passes as it came
    assert translation.result is not None
    assert translation.result["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]
    assert translation.result["usage"] == {"input_tokens": 9, "output_tokens": 7}


def test_a_native_stream_keeps_its_thinking_when_reasoning_is_not_stripped() -> None:
    translation = MessagesTranslation("smollm2")
    out = [translation.native_event(event, False) for event in NATIVE]
    assert out == NATIVE
    assert translation.result is not None
    assert translation.result["content"][0] == {"type": "thinking", "thinking": "hmm",
                                                "signature": "sig"}


def test_the_gateways_own_failure_in_a_native_stream_becomes_an_error_event() -> None:
    failure = b'data: {"error": {"message": "the upstream broke off mid-stream", ' \
              b'"type": "server_error", "param": null, "code": "upstream_error"}}\n\n'
    translation = MessagesTranslation("m")
    assert _events(translation.native_event(failure, True)) == [("error", {
        "type": "error",
        "error": {"type": "api_error", "message": "the upstream broke off mid-stream"}})]
    assert translation.result is None


def test_a_native_answer_loses_its_thinking_blocks() -> None:
    answer = {"id": "msg_1", "type": "message", "content": [
        {"type": "thinking", "thinking": "x", "signature": "s"},
        {"type": "redacted_thinking", "data": "abc"},
        {"type": "text", "text": "Hello"}]}
    translation = MessagesTranslation("m")
    stripped = translation.native_answer(answer, True)
    assert stripped["content"] == [{"type": "text", "text": "Hello"}]
    assert translation.result == stripped
    assert translation.native_answer(answer, False) == answer


# -- the policy in Messages fields ------------------------------------------------------------

def _policy(**kwargs: Any) -> Policy:
    for name in ("body_defaults", "body_overrides"):
        if name in kwargs:
            kwargs[name] = MappingProxyType(kwargs[name])
    return Policy(**kwargs)


@pytest.mark.parametrize(("system", "position", "expected"), [
    (None, "prepend", "Be brief."),
    ("You help.", "prepend", "Be brief.\n\nYou help."),
    ("You help.", "append", "You help.\n\nBe brief."),
    ("You help.", "replace", "Be brief."),
    ([{"type": "text", "text": "You help."}], "prepend",
     [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "You help."}]),
    ([{"type": "text", "text": "Be brief."}], "append", [{"type": "text", "text": "Be brief."}]),
])
def test_the_policy_system_prompt_goes_into_system(
    system: Any, position: str, expected: Any
) -> None:
    body: dict[str, Any] = {"model": "alias", "max_tokens": 5, "messages": []}
    if system is not None:
        body["system"] = system
    policy = _policy(system_prompt="Be brief.", system_prompt_position=position)
    out = MessagesDialect().native_body(body, "smollm2", policy)
    assert out["model"] == "smollm2"
    assert out["system"] == expected
    assert body["model"] == "alias"  # the client's body is left alone


def test_policy_defaults_and_overrides_go_into_messages_fields() -> None:
    body = {"model": "a", "max_tokens": 500, "temperature": 0.2, "messages": []}
    policy = _policy(
        body_defaults={"temperature": 0.7, "top_p": 0.8, "stop": "###",
                       "chat_template_kwargs": {"enable_thinking": False}},
        body_overrides={"max_tokens": 100, "top_k": 20},
    )
    out = MessagesDialect().native_body(body, "m", policy)
    assert out == {"model": "m", "max_tokens": 100, "temperature": 0.2, "top_p": 0.8,
                   "top_k": 20, "stop_sequences": ["###"], "messages": []}


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "kind"), [
    (InvalidRequest("bad"), "invalid_request_error"),
    (AuthenticationFailed("no key"), "authentication_error"),
    (ModelNotFound("no model"), "not_found_error"),
    (RequestTooLarge("big"), "request_too_large"),
    (QueueFull("full"), "rate_limit_error"),
    (NoHealthyUpstream("none"), "overloaded_error"),
    (UpstreamFailed("boom"), "api_error"),
    (UpstreamTimeout("slow"), "timeout_error"),
    (GenieHiveError("internal"), "api_error"),
])
def test_errors_take_anthropics_shape(exc: GenieHiveError, kind: str) -> None:
    body = json.loads(MessagesDialect().error_body(exc))
    assert body == {"type": "error", "error": {"type": kind, "message": exc.message}}
