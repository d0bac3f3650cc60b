"""The field checks of the client API: every rule passes a right value and names a wrong one."""

from __future__ import annotations

from typing import Any

import pytest

from geniehive.errors import InvalidRequest
from geniehive.fields import check_body, check_form

USER = {"role": "user", "content": "hi"}
BASE = {
    "chat": {"model": "m", "messages": [USER]},
    "completion": {"model": "m", "prompt": "Once"},
    "embeddings": {"model": "m", "input": "text"},
    "speech": {"model": "m", "input": "Hello", "voice": "alloy"},
    "image": {"model": "m", "prompt": "a cat"},
}
FUNCTION_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("chat", {"temperature": 0}), ("chat", {"temperature": 2}), ("chat", {"temperature": 0.7}),
    ("chat", {"top_p": 1}), ("chat", {"top_p": 0.0}), ("chat", {"n": 1}), ("chat", {"n": 128}),
    ("chat", {"max_tokens": 1}), ("chat", {"max_completion_tokens": 32000}),
    ("chat", {"presence_penalty": -2}), ("chat", {"frequency_penalty": 2.0}),
    ("chat", {"stop": "\n"}), ("chat", {"stop": []}), ("chat", {"stop": ["a", "b", "c", "d", "e"]}),
    ("chat", {"tools": [FUNCTION_TOOL]}), ("chat", {"tools": []}),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                          "strict": True}}]}),
    ("chat", {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}),
    ("chat", {"tool_choice": "auto"}),
    ("chat", {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("chat", {"parallel_tool_calls": False}),
    ("chat", {"response_format": {"type": "json_object"}}),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
    ("chat", {"logit_bias": {"50256": -100, "13": 2.5}}), ("chat", {"logit_bias": {}}),
    ("chat", {"seed": -3}), ("chat", {"seed": 2**63}), ("chat", {"stream": True}),
    ("chat", {"stream_options": {"include_usage": True}}), ("chat", {"stream_options": {}}),
    ("chat", {"user": "u1"}), ("chat", {"logprobs": True, "top_logprobs": 5}),
    ("chat", {"functions": [{"name": "f"}], "function_call": "auto"}),
    ("chat", {"function_call": {"name": "f"}}), ("chat", {"metadata": {"a": "b"}}),
    ("chat", {"modalities": ["text", "audio"]}), ("chat", {"reasoning_effort": "low"}),
    ("chat", {"prediction": {"type": "content", "content": "x"}}),
    # null means "not sent" for an optional field
    ("chat", {"temperature": None, "max_tokens": None, "tools": None, "stop": None,
              "stream": None}),
    # unknown fields pass untouched, whatever their type
    ("chat", {"top_k": "anything", "chat_template_kwargs": {"enable_thinking": False},
              "min_p": [1], "repetition_penalty": "x"}),
    ("chat", {"messages": []}),
    ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "developer",
                                                                "content": "d"}]}),
    ("chat", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42", "name": "f"}]}),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
    ("chat", {"messages": [{"role": "user", "content": "hi", "x-extra": 5}]}),
    ("chat", {"messages": [{"role": "assistant", "refusal": None, "content": ""}]}),
    ("completion", {"prompt": ["a", "b"]}), ("completion", {"prompt": [1, 2, 3]}),
    ("completion", {"prompt": [[1, 2], [3]]}), ("completion", {"prompt": []}),
    ("completion", {"max_tokens": 0, "echo": True, "logprobs": 5}),
    ("completion", {"best_of": 2, "suffix": "end", "n": 2, "temperature": 1.5, "stop": "x"}),
    ("embeddings", {"input": ["a", "b"]}), ("embeddings", {"input": [101, 102]}),
    ("embeddings", {"input": [[101], [102, 103]]}),
    ("embeddings", {"encoding_format": "float"}), ("embeddings", {"encoding_format": "base64"}),
    ("embeddings", {"dimensions": 256, "user": "u"}),
    ("speech", {"voice": {"id": "voice_123"}}), ("speech", {"speed": 0.25}),
    ("speech", {"speed": 4}), ("speech", {"response_format": "wav", "instructions": "calm"}),
    ("speech", {"stream_format": "sse"}),
    ("image", {"n": 2, "size": "1024x1024", "quality": "hd", "response_format": "b64_json"}),
    ("image", {"output_compression": 100, "style": "vivid", "user": "u"}),
]


@pytest.mark.parametrize(("operation", "extra"), GOOD)
def test_right_values_pass(operation: str, extra: dict[str, Any]) -> None:
    check_body({**BASE[operation], **extra}, operation)


BAD: list[tuple[str, dict[str, Any], str]] = [
    # the examples that reached an upstream
    ("chat", {"max_tokens": "10"}, "max_tokens"),
    ("chat", {"max_tokens": 1.5}, "max_tokens"),
    ("chat", {"temperature": "NaN"}, "temperature"),
    ("chat", {"top_p": "high"}, "top_p"),
    ("chat", {"n": "many"}, "n"),
    ("chat", {"tools": "x"}, "tools"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    # numbers: type, bool, range
    ("chat", {"max_tokens": 0}, "max_tokens"), ("chat", {"max_tokens": True}, "max_tokens"),
    ("chat", {"max_tokens": 10.0}, "max_tokens"),
    ("chat", {"max_completion_tokens": -1}, "max_completion_tokens"),
    ("chat", {"temperature": 2.01}, "temperature"), ("chat", {"temperature": -0.1}, "temperature"),
    ("chat", {"temperature": True}, "temperature"),
    ("chat", {"top_p": 1.5}, "top_p"), ("chat", {"n": 0}, "n"), ("chat", {"n": 2.0}, "n"),
    ("chat", {"n": False}, "n"),
    ("chat", {"presence_penalty": 3}, "presence_penalty"),
    ("chat", {"frequency_penalty": "0"}, "frequency_penalty"),
    ("chat", {"seed": "7"}, "seed"), ("chat", {"seed": 7.5}, "seed"),
    ("chat", {"top_logprobs": -1}, "top_logprobs"), ("chat", {"logprobs": 5}, "logprobs"),
    # strings, booleans, objects
    ("chat", {"stream": "yes"}, "stream"), ("chat", {"stream": 1}, "stream"),
    ("chat", {"user": 5}, "user"), ("chat", {"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ("chat", {"stop": 5}, "stop"), ("chat", {"stop": ["a", 5]}, "stop"),
    ("chat", {"stop": [["a"]]}, "stop"),
    ("chat", {"stream_options": "usage"}, "stream_options"),
    ("chat", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("chat", {"response_format": "json"}, "response_format"),
    ("chat", {"response_format": {"type": 1}}, "response_format.type"),
    ("chat", {"response_format": {}}, "response_format.type"),
    ("chat", {"logit_bias": [1]}, "logit_bias"),
    ("chat", {"logit_bias": {"50256": "-100"}}, "logit_bias.50256"),
    ("chat", {"logit_bias": {"1": 101}}, "logit_bias.1"),
    ("chat", {"logit_bias": {"1": True}}, "logit_bias.1"),
    ("chat", {"tool_choice": 1}, "tool_choice"),
    ("chat", {"tool_choice": {"function": {"name": "f"}}}, "tool_choice.type"),
    ("chat", {"metadata": "m"}, "metadata"), ("chat", {"modalities": "text"}, "modalities"),
    ("chat", {"prediction": {"content": "x"}}, "prediction.type"),
    # tools
    ("chat", {"tools": {"type": "function"}}, "tools"),
    ("chat", {"tools": ["f"]}, "tools[0]"),
    ("chat", {"tools": [FUNCTION_TOOL, {"type": "func", "function": {"name": "f"}}]},
     "tools[1].type"),
    ("chat", {"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
    ("chat", {"tools": [{"type": ["function"], "function": {"name": "f"}}]}, "tools[0].type"),
    ("chat", {"tools": [{"type": "function"}]}, "tools[0].function"),
    ("chat", {"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ("chat", {"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
    ("chat", {"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
     "tools[0].function.description"),
    ("chat", {"tools": [{"type": "custom", "custom": {}}]}, "tools[0].custom.name"),
    ("chat", {"functions": [{"name": 1}]}, "functions[0].name"),
    ("chat", {"functions": {}}, "functions"),
    ("chat", {"function_call": 1}, "function_call"),
    ("chat", {"function_call": {"arguments": "{}"}}, "function_call.name"),
    # messages
    ("chat", {"messages": "hi"}, "messages"), ("chat", {"messages": None}, "messages"),
    ("chat", {"messages": {"role": "user"}}, "messages"),
    ("chat", {"messages": [USER, "hi"]}, "messages[1]"),
    ("chat", {"messages": [USER, USER, {"content": "x"}]}, "messages[2].role"),
    ("chat", {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": None, "content": "x"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]"),
    ("chat", {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0].type"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ("chat", {"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name"),
    ("chat", {"messages": [{"role": "tool", "content": "x", "tool_call_id": 1}]},
     "messages[0].tool_call_id"),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": {"id": "1"}}]},
     "messages[0].tool_calls"),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": ["c"]}]},
     "messages[0].tool_calls[0]"),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ("chat", {"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]},
     "messages[0].tool_calls[0].id"),
    # model and the required fields
    ("chat", {"model": None}, "model"), ("chat", {"model": ""}, "model"),
    ("chat", {"model": ["m"]}, "model"),
    # completions
    ("completion", {"prompt": 5}, "prompt"), ("completion", {"prompt": None}, "prompt"),
    ("completion", {"prompt": ["a", 1]}, "prompt"), ("completion", {"prompt": [1.5]}, "prompt"),
    ("completion", {"prompt": [[1], ["a"]]}, "prompt"),
    ("completion", {"prompt": [True, False]}, "prompt"),
    ("completion", {"max_tokens": -1}, "max_tokens"), ("completion", {"echo": "no"}, "echo"),
    ("completion", {"logprobs": True}, "logprobs"), ("completion", {"best_of": 0}, "best_of"),
    ("completion", {"suffix": 1}, "suffix"), ("completion", {"temperature": 3}, "temperature"),
    # embeddings
    ("embeddings", {"input": 5}, "input"), ("embeddings", {"input": {"text": "a"}}, "input"),
    ("embeddings", {"input": ["a", ["b"]]}, "input"),
    ("embeddings", {"encoding_format": "int8"}, "encoding_format"),
    ("embeddings", {"dimensions": 0}, "dimensions"),
    ("embeddings", {"dimensions": "256"}, "dimensions"), ("embeddings", {"user": 1}, "user"),
    # speech
    ("speech", {"input": 5}, "input"), ("speech", {"voice": 5}, "voice"),
    ("speech", {"voice": {"name": "v"}}, "voice"), ("speech", {"speed": 0.2}, "speed"),
    ("speech", {"speed": "1"}, "speed"), ("speech", {"response_format": "ogg"}, "response_format"),
    ("speech", {"instructions": ["calm"]}, "instructions"),
    ("speech", {"stream_format": "chunks"}, "stream_format"),
    # images
    ("image", {"prompt": ["a cat"]}, "prompt"), ("image", {"n": "2"}, "n"),
    ("image", {"n": 0}, "n"), ("image", {"size": 1024}, "size"),
    ("image", {"response_format": "png"}, "response_format"),
    ("image", {"output_compression": 101}, "output_compression"),
    ("image", {"stream": "true"}, "stream"),
]


@pytest.mark.parametrize(("operation", "extra", "param"), BAD)
def test_a_wrong_value_is_refused_naming_its_path(
    operation: str, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_body({**BASE[operation], **extra}, operation)
    assert refused.value.param == param
    assert refused.value.http_status == 400 and refused.value.code == "invalid_request"
    assert refused.value.message.startswith(f"'{param}' ")


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": []}, "'model' is required"),
    ({"model": "m", "messages": [], "max_tokens": "10"},
     "'max_tokens' must be an integer of at least 1"),
    ({"model": "m", "messages": [], "temperature": "NaN"},
     "'temperature' must be a number from 0 to 2"),
    ({"model": "m"}, "'messages' is required"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]},
     "'messages[0].content' must be a string, null or a list of content parts"),
    ({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]},
     "'tools[0].function.name' must be a string"),
    ({"model": "m", "messages": [], "stop": 1}, "'stop' must be a string or a list of strings"),
])
def test_messages_say_what_was_expected(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_body(body, "chat")
    assert refused.value.message == message


def test_the_first_wrong_field_in_the_body_is_named() -> None:
    body = {"model": "m", "messages": [], "top_p": "high", "n": "many"}
    with pytest.raises(InvalidRequest) as refused:
        check_body(body, "chat")
    assert refused.value.param == "top_p"


def test_the_body_is_not_changed() -> None:
    body = {**BASE["chat"], "top_k": 5, "temperature": None}
    before = repr(body)
    check_body(body, "chat")
    assert repr(body) == before


FORM_GOOD = [
    [("model", "whisper-1")],
    [("model", "w"), ("language", "en"), ("language_extra", "x"), ("prompt", "any\ntext")],
    [("model", "w"), ("language", "zh-TW"), ("temperature", "0"), ("temperature_inc", "x")],
    [("model", "w"), ("temperature", "1")],
    [("model", "w"), ("temperature", "1e-1"), ("stream", "true"), ("response_format", "srt")],
    [("model", "w"), ("stream", "False"), ("response_format", "verbose_json")],
    [("model", "w"), ("timestamp_granularities[]", "word"),
     ("timestamp_granularities[]", "segment"), ("include[]", "logprobs"),
     ("include[]", "other")],
    [("model", "w"), ("unknown", "a"), ("unknown", "b")],  # unknown fields may repeat
]


@pytest.mark.parametrize("form", FORM_GOOD)
def test_right_form_fields_pass(form: list[tuple[str, str]]) -> None:
    check_form(form)


@pytest.mark.parametrize(("form", "param"), [
    ([("model", "")], "model"),
    ([("model", "w"), ("model", "x")], "model"),
    ([("model", "w"), ("temperature", "NaN")], "temperature"),
    ([("model", "w"), ("temperature", "hot")], "temperature"),
    ([("model", "w"), ("temperature", "1.5")], "temperature"),
    ([("model", "w"), ("temperature", "-0.1")], "temperature"),
    ([("model", "w"), ("temperature", "1_0")], "temperature"),
    ([("model", "w"), ("temperature", " 0.5")], "temperature"),
    ([("model", "w"), ("temperature", "0.1"), ("temperature", "0.9")], "temperature"),
    ([("model", "w"), ("response_format", "mp3")], "response_format"),
    ([("model", "w"), ("response_format", "")], "response_format"),
    ([("model", "w"), ("response_format", "json"), ("response_format", "text")],
     "response_format"),
    ([("model", "w"), ("language", "")], "language"),
    ([("model", "w"), ("language", "en\nfake: line")], "language"),
    ([("model", "w"), ("language", "12")], "language"),
    ([("model", "w"), ("language", "e" * 17)], "language"),
    ([("model", "w"), ("stream", "yes")], "stream"),
    ([("model", "w"), ("timestamp_granularities[]", "char")], "timestamp_granularities[]"),
    ([("model", "w"), ("prompt", "a"), ("prompt", "b")], "prompt"),
])
def test_a_wrong_form_field_is_refused_naming_it(
    form: list[tuple[str, str]], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_form(form)
    assert refused.value.param == param
    assert refused.value.http_status == 400
