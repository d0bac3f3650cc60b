"""Ollama's native chat dialect on recorded payloads (geniehive/adapters/ollama_chat.py) and the
Ollama adapter's use of it.

Claims: an OpenAI chat body becomes the `/api/chat` body Ollama reads (inline images, tool
call arguments as objects, tool results named after their call, `format`, `options` with
`num_ctx`, `keep_alive`, `think`); images by URL are a clear 400; `num_ctx` is the model's
context length (else 8192), grown to fit the prompt, and never shrinks for a model; answers,
streamed (NDJSON, split anywhere) or not, become OpenAI answers with tool calls as tool calls,
thinking as `reasoning_content`, finish reasons and usage; an error line ends the stream with
one error event and marks it failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from geniehive.adapters import Asset
from geniehive.adapters.ollama_chat import ChatStream, chat_completion, chat_request
from geniehive.errors import InvalidRequest
from plugins.ollama import OllamaAdapter
from tests.fakes.transport import open_adapter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
BASE_URL = "http://ollama.test:11434"
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
           "AAAABJRU5ErkJggg==")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_events(raw: bytes) -> list[Any]:
    """The data of each SSE event: parsed JSON, or the text `[DONE]`."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def translate(raw: bytes, size: int, **kwargs: Any) -> tuple[list[Any], ChatStream]:
    """Feed `raw` to a ChatStream `size` bytes at a time (lines split across reads)."""
    stream = ChatStream("qwen3:8b", **kwargs)
    out = b"".join(stream.feed(raw[i:i + size]) for i in range(0, len(raw), size))
    return sse_events(out + stream.flush()), stream


# --- requests ---------------------------------------------------------------------------------


def test_a_chat_with_images_tools_and_sampling_becomes_the_api_chat_body() -> None:
    body = {
        "model": "vision",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "text", "text": "And the weather in Paris?"},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_7", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_7", "content": "18 C, sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object", "properties": {}}}},
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": "END",
        "max_completion_tokens": 300, "presence_penalty": 0.5, "frequency_penalty": 0.1,
        "reasoning_effort": "high", "stream": True,
    }
    native = chat_request(body, "llava:7b", num_ctx=8192, keep_alive="1h")
    assert native == {
        "model": "llava:7b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?\nAnd the weather in Paris?",
             "images": [PNG_B64]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18 C, sunny", "tool_name": "get_weather"},
        ],
        "stream": True,
        "tools": [WEATHER_TOOL],
        "format": {"type": "object", "properties": {}},
        "options": {"temperature": 0.2, "top_p": 0.9, "seed": 7, "presence_penalty": 0.5,
                    "frequency_penalty": 0.1, "stop": ["END"], "num_predict": 300,
                    "num_ctx": 8192},
        "keep_alive": "1h",
        "think": True,
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, {"stream": False}),
     ({"response_format": {"type": "json_object"}, "max_tokens": 5, "reasoning_effort": "none"},
      {"stream": False, "format": "json", "think": False}),
     ({"think": "low", "reasoning_effort": "none", "stream": False},
      {"stream": False, "think": "low"})],
)
def test_stream_format_and_think_are_always_explicit_where_the_client_chose(
    extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    native = chat_request(body, "qwen3:8b", num_ctx=4096)
    assert {k: v for k, v in native.items() if k in ("stream", "format", "think")} == expected
    assert "keep_alive" not in native
    assert native["options"]["num_ctx"] == 4096


@pytest.mark.parametrize(
    ("content", "where"),
    [([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
      "messages[0].content[0].image_url"),
     ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
      "messages[0].content[0]")],
)
def test_what_ollama_cannot_take_is_a_400_naming_the_field(content: Any, where: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request({"messages": [{"role": "user", "content": content}]}, "m", num_ctx=8192)
    assert info.value.status == 400
    assert str(info.value).startswith(where)


async def test_num_ctx_is_the_context_length_grows_to_fit_and_never_shrinks() -> None:
    def body(chars: int, **extra: Any) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "x" * chars}], **extra}

    assets = (Asset(asset_id="big:1b", context_length=16384),)
    sent: dict[str, list[int]] = {"qwen3:8b": [], "big:1b": []}
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, base_url=BASE_URL, assets=assets) as adapter:
            for model, request in [
                ("qwen3:8b", body(100)),            # unknown context: 8192
                ("qwen3:8b", body(100)),            # the same again
                ("qwen3:8b", body(30_000)),         # 10000 tokens -> 10240
                ("qwen3:8b", body(100)),            # stays at 10240: no runner reload
                ("qwen3:8b", body(30_000, max_tokens=4000)),  # 14000 -> 14336
                ("big:1b", body(100)),              # configured context length
            ]:
                native = adapter.build_request("chat", model, body=request)
                assert native.path == "/api/chat"
                assert native.body is not None
                sent[model].append(native.body["options"]["num_ctx"])
    assert sent == {"qwen3:8b": [8192, 8192, 10240, 10240, 14336], "big:1b": [16384]}


# --- answers ----------------------------------------------------------------------------------


def test_a_native_answer_becomes_a_chat_completion_with_thinking_and_usage() -> None:
    answer = chat_completion(json.loads(fixture("ollama_chat.json")), "qwen3:8b")
    assert answer["id"].startswith("chatcmpl-")
    assert {k: v for k, v in answer.items() if k != "id"} == {
        "object": "chat.completion",
        "created": 1746172800,
        "model": "qwen3:8b",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Paris is the capital of France.",
            "reasoning_content": "The user asks for a capital."}}],
        "usage": {"prompt_tokens": 26, "completion_tokens": 9, "total_tokens": 35},
    }


def test_a_native_tool_call_becomes_an_openai_tool_call_with_string_arguments() -> None:
    answer = chat_completion(json.loads(fixture("ollama_chat_tool_call.json")), "qwen3:8b")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{
        "id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
    }]
    cut = {**json.loads(fixture("ollama_chat.json")), "done_reason": "length"}
    assert chat_completion(cut, "m")["choices"][0]["finish_reason"] == "length"


async def test_the_adapter_translates_only_its_native_answers() -> None:
    raw = fixture("ollama_chat.json")
    with trio.fail_after(5):
        async with open_adapter(OllamaAdapter, base_url=BASE_URL) as adapter:
            request = adapter.build_request(
                "chat", "qwen3:8b", body={"model": "fast", "messages": [], "stream": True,
                                          "stream_options": {"include_usage": True}})
            status, kind, body = adapter.translate_response(
                "chat", 200, "application/json; charset=utf-8", raw, request)
            translator = adapter.stream_translator(request)
            v1 = adapter.build_request("embeddings", "nomic", body={"input": "x"})
            assert adapter.stream_translator(v1) is None
            assert adapter.translate_response("embeddings", 200, "application/json", raw, v1) \
                == (200, "application/json", raw)
    assert (status, kind) == (200, "application/json")
    assert json.loads(body)["choices"][0]["message"]["content"] == \
        "Paris is the capital of France."
    assert isinstance(translator, ChatStream) and translator.include_usage


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_streamed_tool_call_split_anywhere_arrives_as_tool_call_deltas(size: int) -> None:
    events, stream = translate(fixture("ollama_chat_stream_tool_call.ndjson"), size,
                               include_usage=True)
    assert not stream.failed
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"qwen3:8b"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "reasoning_content": "The user wants"},
        {"reasoning_content": " the weather."},
        {"tool_calls": [{"index": 0, "id": "call_0", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == \
        [None, None, None, "tool_calls"]
    usage = {"prompt_tokens": 140, "completion_tokens": 31, "total_tokens": 171}
    assert chunks[-2]["usage"] == usage  # on the last choice chunk, always
    assert chunks[-1] == {**chunks[-1], "choices": [], "usage": usage}  # asked for


def test_streamed_content_starts_with_the_role_and_ends_with_its_finish_reason() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"message": {"role": "assistant", "content": "lo"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "length", "prompt_eval_count": 3, "eval_count": 2},
    ]
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    events, stream = translate(raw, 5)
    chunks = events[:-1]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"] for c in chunks)  # no usage-only chunk unless asked
    assert events[-1] == "[DONE]" and not stream.failed


@pytest.mark.parametrize(
    ("tail", "message"),
    [(b'{"error":"model runner has unexpectedly stopped"}\n{"done":true}\n',
      "upstream error: model runner has unexpectedly stopped"),
     (b"", "the upstream stream ended before its last line"),
     (b"<html>oops</html>\n", "the upstream sent a stream line that is not JSON")],
)
def test_a_broken_stream_ends_with_one_error_event_and_is_failed(tail: bytes, message: str) -> None:
    head = b'{"message":{"role":"assistant","content":"Hi"},"done":false}\n'
    events, stream = translate(head + tail, 3)
    assert stream.failed
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert events[1:] == [{"error": {"message": message, "type": "server_error", "param": None,
                                     "code": "upstream_error"}}]
