"""The standard fields of the client API's requests, checked before anything is forwarded.

Rule: what the OpenAI API defines (docs/architecture.md, "Request validation") is checked for
type and range; every other field passes through untouched, so upstream extensions
(`top_k`, `chat_template_kwargs`, ...) keep working. A wrong field raises `InvalidRequest`
(400 `invalid_request`) whose `param` is the field's path: `messages[2].content`,
`tools[0].function.name`. `null` in an optional field means "not sent", as in the OpenAI API.
Strict on types, lenient on counts: a `stop` list of five strings passes, a `stop` of `5` does
not.

The checks see what the client sent, before any request policy is merged in (a policy's
`body_defaults` and `body_overrides` are the operator's, checked when the config loads).

Values are taken as a JSON parser produces them: `bool` is never a number, and an integer
field takes only JSON integers (`10`, not `10.0` or `"10"`). Each table maps a field name to a
check `(value) -> None`; a chat body of a few messages is checked in a few
microseconds. Pure: imports no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from geniehive.errors import InvalidRequest

Check = Callable[[Any], None]


class _Wrong(Exception):
    """A value that is not what its field takes; `where` is the path below the field.

    Paths are built only on this error path, outward as it propagates: checking a right
    body formats no strings.
    """

    def __init__(self, expected: str, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.where = where


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is float


def _all_of(items: list[Any], kind: type) -> bool:
    # set(map(type, ...)) runs in C: a 2,048-item input costs microseconds, not a loop.
    return not items or set(map(type, items)) == {kind}


# --- scalar checks ------------------------------------------------------------------------


def string(value: Any) -> None:
    if type(value) is not str:
        raise _Wrong("a string")


def boolean(value: Any) -> None:
    if type(value) is not bool:
        raise _Wrong("true or false")


def json_object(value: Any) -> None:
    if type(value) is not dict:
        raise _Wrong("an object")


def integer(low: int | None = None, high: int | None = None) -> Check:
    """An integer within [low, high] (either bound may be open)."""
    if low is None and high is None:
        expected = "an integer"
    elif high is None:
        expected = f"an integer of at least {low}"
    elif low is None:
        expected = f"an integer of at most {high}"
    else:
        expected = f"an integer from {low} to {high}"
    lowest = float("-inf") if low is None else low
    highest = float("inf") if high is None else high

    def check(value: Any) -> None:
        if type(value) is not int or not lowest <= value <= highest:
            raise _Wrong(expected)

    return check


def number(low: float, high: float) -> Check:
    """A number within [low, high]."""
    expected = f"a number from {low:g} to {high:g}"

    def check(value: Any) -> None:
        if not _is_number(value) or not low <= value <= high:
            raise _Wrong(expected)

    return check


def one_of(*choices: str) -> Check:
    allowed = frozenset(choices)
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any) -> None:
        if type(value) is not str or value not in allowed:
            raise _Wrong(expected)

    return check


def string_list(value: Any) -> None:
    if type(value) is not list or not _all_of(value, str):
        raise _Wrong("a list of strings")


# --- structured checks --------------------------------------------------------------------


def _fields(value: Mapping[str, Any], table: Mapping[str, Check]) -> None:
    """Check the known fields of a nested object; `null` means not sent."""
    for key, item in value.items():
        check = table.get(key)
        if check is not None and item is not None:
            try:
                check(item)
            except _Wrong as exc:
                exc.where = f".{key}{exc.where}"
                raise


def stop(value: Any) -> None:
    if type(value) is str:
        return
    if type(value) is not list or not _all_of(value, str):
        raise _Wrong("a string or a list of strings")


def typed_object(value: Any) -> None:
    """An object with a string `type` (response_format, prediction)."""
    if type(value) is not dict:
        raise _Wrong("an object with a string 'type'")
    if type(value.get("type")) is not str:
        raise _Wrong("a string", ".type")


def tool_choice(value: Any) -> None:
    """A mode ("auto", "none", "required") or an object with a string `type` naming a tool."""
    if type(value) is not str:
        typed_object(value)


def named(value: Any) -> None:
    """An object with a string `name` (the deprecated `function_call`)."""
    if type(value) is not dict:
        raise _Wrong("an object with a string 'name'")
    if type(value.get("name")) is not str:
        raise _Wrong("a string", ".name")


def function_call(value: Any) -> None:
    """The deprecated `function_call`: a mode, or an object with the function's `name`."""
    if type(value) is not str:
        try:
            named(value)
        except _Wrong as exc:
            if not exc.where:
                exc.expected = "a string or an object with a string 'name'"
            raise


def logit_bias(value: Any) -> None:
    if type(value) is not dict:
        raise _Wrong("an object mapping token ids to numbers")
    for token, bias in value.items():
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise _Wrong("a number from -100 to 100", f".{token}")


def stream_options(value: Any) -> None:
    if type(value) is not dict:
        raise _Wrong("an object")
    include = value.get("include_usage")
    if include is not None and type(include) is not bool:
        raise _Wrong("true or false", ".include_usage")


def token_input(value: Any) -> None:
    """Embeddings `input`, completions `prompt`: text, texts, tokens or lists of tokens."""
    if type(value) is str:
        return
    if type(value) is list:
        kinds = set(map(type, value))
        if not value or kinds == {str} or kinds == {int}:
            return
        if kinds == {list} and all(_all_of(item, int) for item in value):
            return
    raise _Wrong("a string, a list of strings, a list of token ids or a list of such lists")


FUNCTION: dict[str, Check] = {
    "name": string, "description": string, "parameters": json_object, "strict": boolean,
}
CUSTOM_TOOL: dict[str, Check] = {"name": string, "description": string, "format": json_object}


def _definition(value: Any, table: Mapping[str, Check]) -> None:
    """A tool's `function` (or `custom`) object: a string `name` and its known fields."""
    named(value)
    _fields(value, table)


def function(value: Any) -> None:
    _definition(value, FUNCTION)


def custom_tool(value: Any) -> None:
    _definition(value, CUSTOM_TOOL)


TOOL_KINDS: dict[str, tuple[str, Check]] = {
    "function": ("function", function), "custom": ("custom", custom_tool),
}


def tools(value: Any) -> None:
    if type(value) is not list:
        raise _Wrong("a list of tools")
    for index, tool in enumerate(value):
        if type(tool) is not dict:
            raise _Wrong("an object", f"[{index}]")
        name = tool.get("type")
        kind = TOOL_KINDS.get(name) if type(name) is str else None
        if kind is None:
            raise _Wrong("'function' or 'custom'", f"[{index}].type")
        field, check = kind
        try:
            check(tool.get(field))
        except _Wrong as exc:
            exc.where = f"[{index}].{field}{exc.where}"
            raise


def functions(value: Any) -> None:
    """The deprecated `functions` list: objects with a string `name`."""
    if type(value) is not list:
        raise _Wrong("a list of functions")
    for index, item in enumerate(value):
        try:
            function(item)
        except _Wrong as exc:
            exc.where = f"[{index}]{exc.where}"
            raise


def _call_function(value: Any) -> None:
    if type(value) is not dict:
        raise _Wrong("an object")
    _fields(value, {"name": string, "arguments": string})


TOOL_CALL: dict[str, Check] = {"id": string, "type": string, "function": _call_function}


def tool_calls(value: Any) -> None:
    if type(value) is not list:
        raise _Wrong("a list of tool calls")
    for index, call in enumerate(value):
        if type(call) is not dict:
            raise _Wrong("an object", f"[{index}]")
        try:
            _fields(call, TOOL_CALL)
        except _Wrong as exc:
            exc.where = f"[{index}]{exc.where}"
            raise


def content(value: Any) -> None:
    """A message's content: a string, or a list of content parts (`null` handled by caller)."""
    if type(value) is str:
        return
    if type(value) is not list:
        raise _Wrong("a string, null or a list of content parts")
    for index, part in enumerate(value):
        if type(part) is not dict:
            raise _Wrong("a content part object", f"[{index}]")
        kind = part.get("type")
        if type(kind) is not str:
            raise _Wrong("a string", f"[{index}].type")
        if kind == "text" and type(part.get("text")) is not str:
            raise _Wrong("a string", f"[{index}].text")


MESSAGE: dict[str, Check] = {
    "content": content,
    "name": string,
    "tool_call_id": string,
    "tool_calls": tool_calls,
    "function_call": json_object,
    "refusal": string,
}


def messages(value: Any) -> None:
    if type(value) is not list:
        raise _Wrong("a list of messages")
    for index, message in enumerate(value):
        if type(message) is not dict:
            raise _Wrong("an object with a 'role'", f"[{index}]")
        if type(message.get("role")) is not str:
            raise _Wrong("a string", f"[{index}].role")
        # Most messages are a role and a string content: checked without a call.
        if len(message) == 2 and type(message.get("content")) is str:
            continue
        try:
            _fields(message, MESSAGE)
        except _Wrong as exc:
            exc.where = f"[{index}]{exc.where}"
            raise


def voice(value: Any) -> None:
    """A voice name, or an object naming a custom voice by `id`."""
    if type(value) is str:
        return
    if type(value) is not dict or type(value.get("id")) is not str:
        raise _Wrong("a string or an object with a string 'id'")


# --- the tables ---------------------------------------------------------------------------

_SAMPLING: dict[str, Check] = {
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "n": integer(1),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "stop": stop,
    "logit_bias": logit_bias,
    "seed": integer(),
    "stream": boolean,
    "stream_options": stream_options,
    "user": string,
}

CHAT: dict[str, Check] = {
    **_SAMPLING,
    "messages": messages,
    "max_tokens": integer(1),
    "max_completion_tokens": integer(1),
    "tools": tools,
    "tool_choice": tool_choice,
    "parallel_tool_calls": boolean,
    "functions": functions,
    "function_call": function_call,
    "response_format": typed_object,
    "logprobs": boolean,
    "top_logprobs": integer(0),
    "metadata": json_object,
    "store": boolean,
    "reasoning_effort": string,
    "service_tier": string,
    "modalities": string_list,
    "prediction": typed_object,
    "audio": json_object,
    "web_search_options": json_object,
    "verbosity": string,
    "prompt_cache_key": string,
    "safety_identifier": string,
}

COMPLETION: dict[str, Check] = {
    **_SAMPLING,
    "prompt": token_input,
    # 0 is valid here: with `echo` it scores the prompt without generating.
    "max_tokens": integer(0),
    "best_of": integer(1),
    "echo": boolean,
    "logprobs": integer(0),
    "suffix": string,
}

EMBEDDINGS: dict[str, Check] = {
    "input": token_input,
    "encoding_format": one_of("float", "base64"),
    "dimensions": integer(1),
    "user": string,
    "stream": boolean,
}

SPEECH: dict[str, Check] = {
    "input": string,
    "voice": voice,
    "instructions": string,
    "response_format": one_of("mp3", "opus", "aac", "flac", "wav", "pcm"),
    "speed": number(0.25, 4),
    "stream_format": one_of("sse", "audio"),
    "stream": boolean,
}

IMAGE: dict[str, Check] = {
    "prompt": string,
    "n": integer(1),
    "size": string,
    "quality": string,
    "style": string,
    "response_format": one_of("url", "b64_json"),
    "background": string,
    "moderation": string,
    "output_format": string,
    "output_compression": integer(0, 100),
    "partial_images": integer(0),
    "user": string,
    "stream": boolean,
}

# operation -> (the field a request cannot do without, the field table)
TABLES: dict[str, tuple[str, dict[str, Check]]] = {
    "chat": ("messages", CHAT),
    "completion": ("prompt", COMPLETION),
    "embeddings": ("input", EMBEDDINGS),
    "speech": ("input", SPEECH),
    "image": ("prompt", IMAGE),
}


def check_body(body: Mapping[str, Any], operation: str) -> None:
    """Check a JSON request body of `operation`. Raises InvalidRequest naming the field."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("'model' is required", param="model")
    if type(model) is not str or not model:
        raise _refusal(_Wrong("a non-empty string"), "model")
    required, table = TABLES[operation]
    if required not in body:
        raise InvalidRequest(f"'{required}' is required", param=required)
    for key, value in body.items():
        check = table.get(key)
        # null is "not sent" for an optional field; the required one has to be there.
        if check is not None and (value is not None or key == required):
            try:
                check(value)
            except _Wrong as exc:
                raise _refusal(exc, key) from None


def _refusal(exc: _Wrong, field: str) -> InvalidRequest:
    param = field + exc.where
    return InvalidRequest(f"'{param}' must be {exc.expected}", param=param)


# --- multipart forms (transcriptions, translations) ---------------------------------------
# Every form value is text; a field's "type" is the form its text must take.

_FORM_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
# ISO-639-1 codes ("en"), the regional forms some servers take ("zh-TW"), and "auto".
_LANGUAGE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")


def form_number(low: float, high: float) -> Check:
    expected = f"a number from {low:g} to {high:g}"

    def check(value: str) -> None:
        if not _FORM_NUMBER.fullmatch(value) or not low <= float(value) <= high:
            raise _Wrong(expected)

    return check


def form_boolean(value: str) -> None:
    if value.lower() not in ("true", "false"):
        raise _Wrong("true or false")


def language(value: str) -> None:
    if not _LANGUAGE.fullmatch(value):
        raise _Wrong("a language code such as 'en'")


def model_name(value: str) -> None:
    if not value:
        raise _Wrong("a non-empty string")


def any_text(value: str) -> None:
    """Free text (a prompt): every value is right."""


TRANSCRIPTION_FORM: dict[str, Check] = {
    "model": model_name,
    "language": language,
    "prompt": any_text,
    "response_format": one_of("json", "text", "srt", "verbose_json", "vtt", "diarized_json"),
    "temperature": form_number(0, 1),
    "stream": form_boolean,
    "chunking_strategy": any_text,
    "timestamp_granularities[]": one_of("word", "segment"),
    "include[]": any_text,
}
# Fields a form may repeat (arrays, as the OpenAI SDK sends them); any other known field
# given twice is refused: the gateway and the upstream could each read a different one.
REPEATABLE = frozenset({"timestamp_granularities[]", "include[]"})


def check_form(fields: Sequence[tuple[str, str]]) -> None:
    """Check the form fields of a transcription or translation. Raises InvalidRequest."""
    seen: set[str] = set()
    for key, value in fields:
        check = TRANSCRIPTION_FORM.get(key)
        if check is None:
            continue
        if key in seen and key not in REPEATABLE:
            raise InvalidRequest(f"'{key}' is given twice", param=key)
        seen.add(key)
        try:
            check(value)
        except _Wrong as exc:
            raise _refusal(exc, key) from None
