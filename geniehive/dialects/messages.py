"""The Anthropic Messages API (`POST /v1/messages`) on the chat operation.

A Messages request is checked and translated into an OpenAI chat body (`to_chat`); its
answer is translated back by `MessagesTranslation` (geniehive/dialects/messages_stream.py).
An upstream that speaks Messages itself gets the client's body with the model rewritten
and the role's policy put into Messages fields (`native_body`).

Choices made here:
- Text blocks of one turn (or of `system`) are joined with a blank line; a user turn with
  an image keeps its parts as an OpenAI content list instead.
- A `tool_result` becomes a `tool` message, placed before the rest of its user turn (the
  chat form wants tool answers right after the assistant's calls); an image inside a tool
  result travels in that user turn. `is_error` prefixes the result's text with `[error] `.
- Thinking blocks in the history are dropped: an upstream neither needs nor checks them.
- Server tools (any tool `type` but "custom") are refused: the gateway cannot run them.
- `thinking` maps to `reasoning_effort`: enabled (or adaptive) is "medium", disabled "none".
- Fields the gateway does not use (`service_tier`, `container`, ...) are ignored.

Rule: pure apart from the Dialect's async methods, which do no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from geniehive.dialects.messages_stream import MessagesTranslation
from geniehive.errors import GenieHiveError, InvalidRequest

if TYPE_CHECKING:
    from geniehive.gateway import Gateway
    from geniehive.models import Policy

USER_BLOCKS = frozenset({"text", "image", "tool_result"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# The OpenAI sampling fields a policy may set, as the Messages fields they become.
POLICY_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                 "max_tokens": "max_tokens", "stop": "stop_sequences"}
# Anthropic's error type for each status; any other 5xx is `api_error`.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               408: "timeout_error", 409: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status: the table above, else `api_error`
    (a 4xx not in it is `invalid_request_error`)."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def render_error_body(status: int, message: str) -> bytes:
    """`{"type": "error", "error": {"type", "message"}}`, Anthropic's error answer."""
    body = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return json.dumps(body, ensure_ascii=False).encode()


def _wrong(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' must be {expected}", param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _block_list(value: Any, param: str) -> list[dict[str, Any]]:
    """A content list whose items are objects with a string `type`."""
    if not isinstance(value, list):
        raise _wrong(param, "a string or a list of content blocks")
    for index, block in enumerate(value):
        if not isinstance(block, dict):
            raise _wrong(f"{param}[{index}]", "an object")
        if not isinstance(block.get("type"), str):
            raise _wrong(f"{param}[{index}].type", "a string")
    return value


def _text_of(blocks: list[dict[str, Any]], param: str) -> str:
    """The text of a list of text blocks, joined with a blank line; another block refused."""
    texts = []
    for index, block in enumerate(_block_list(blocks, param)):
        if block["type"] != "text":
            raise InvalidRequest(
                f"'{param}[{index}].type' must be \"text\" here, not {block['type']!r}",
                param=f"{param}[{index}].type",
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise _wrong(f"{param}[{index}].text", "a string")
        texts.append(text)
    return "\n\n".join(texts)


def system_text(value: Any) -> str | None:
    """The `system` field as one text (`cache_control` and other block keys ignored)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return _text_of(value, "system")


def image_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    """An image block as an OpenAI `image_url` part: base64 data becomes a data URL."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _wrong(f"{param}.source", "an object")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _wrong(f"{param}.source", "an object with string 'media_type' and 'data'")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str):
            raise _wrong(f"{param}.source.url", "a string")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(
        f"'{param}.source.type' must be \"base64\" or \"url\"", param=f"{param}.source.type"
    )


def _tool_result(block: Mapping[str, Any], param: str) -> tuple[dict[str, Any],
                                                                 list[dict[str, Any]]]:
    """A `tool_result` block: its `tool` message and the image parts it carried."""
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str) or not tool_id:
        raise _wrong(f"{param}.tool_use_id", "a non-empty string")
    content = block.get("content", "")
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    elif content is None:
        text = ""
    else:
        texts = []
        for index, part in enumerate(_block_list(content, f"{param}.content")):
            where = f"{param}.content[{index}]"
            if part["type"] == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part["type"] == "image":
                images.append(image_part(part, where))
            else:
                raise InvalidRequest(
                    f"'{where}.type' must be \"text\" or \"image\"", param=f"{where}.type"
                )
        text = "\n\n".join(texts)
    if block.get("is_error") is True:
        text = "[error] " + text
    return {"role": "tool", "tool_call_id": tool_id, "content": text}, images


def _block_text(block: dict[str, Any], where: str) -> str:
    """A text block's text (400 naming `where.text` when it is not a string)."""
    if not isinstance(block.get("text"), str):
        raise _wrong(f"{where}.text", "a string")
    return str(block["text"])


def _user_turn(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """A user turn: its tool messages first, then one user message with the rest."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{param}[{index}]"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(block, where)})
        elif kind == "image":
            parts.append(image_part(block, where))
        else:  # tool_result
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)
    if not parts:
        return tools
    if all(part["type"] == "text" for part in parts):
        content: Any = "\n\n".join(part["text"] for part in parts)
    else:
        content = parts
    return [*tools, {"role": "user", "content": content}]


def _assistant_turn(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """An assistant turn: its text, and its `tool_use` blocks as `tool_calls`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{param}[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(_block_text(block, where))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise _wrong(f"{where}.id", "a non-empty string")
            if not isinstance(name, str) or not name:
                raise _wrong(f"{where}.name", "a non-empty string")
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise _wrong(f"{where}.input", "an object")
            calls.append({"id": call_id, "type": "function", "function": {
                "name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}})
        # thinking and redacted_thinking: dropped
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant",
                               "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """The `messages` field as OpenAI chat messages (system excluded)."""
    if not isinstance(messages, list) or not messages:
        raise _wrong("messages", "a non-empty list of messages")
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong(param, "an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"'{param}.role' must be \"user\" or \"assistant\"",
                                 param=f"{param}.role")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = _block_list(content, f"{param}.content")
        known = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
        for number, block in enumerate(blocks):
            if block["type"] not in known:
                where = f"{param}.content[{number}].type"
                raise InvalidRequest(
                    f"'{where}': a {role} turn cannot hold a {block['type']!r} block "
                    f"(expected one of {', '.join(sorted(known))})", param=where,
                )
        turn = _user_turn if role == "user" else _assistant_turn
        out.extend(turn(blocks, f"{param}.content"))
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Client tools as OpenAI function tools; a server tool is refused, named."""
    if not isinstance(tools, list):
        raise _wrong("tools", "a list of tools")
    out = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _wrong(param, "an object")
        name = tool.get("name")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(
                f"'{param}': the tool {name!r} is an Anthropic server tool ({kind}): this "
                "gateway cannot run it; declare it as a client tool with an input_schema",
                param=f"{param}.type",
            )
        if not isinstance(name, str) or not name:
            raise _wrong(f"{param}.name", "a non-empty string")
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict):
            raise _wrong(f"{param}.input_schema", "an object")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> tuple[Any, bool]:
    """`tool_choice` as the OpenAI one, and whether parallel calls are turned off."""
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _wrong("tool_choice", "an object with a string 'type'")
    kind = choice["type"]
    serial = choice.get("disable_parallel_tool_use") is True
    if kind in TOOL_CHOICES:
        return TOOL_CHOICES[kind], serial
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _wrong("tool_choice.name", "a non-empty string")
        return {"type": "function", "function": {"name": name}}, serial
    raise InvalidRequest("'tool_choice.type' must be one of auto, any, tool, none",
                         param="tool_choice.type")


def reasoning_effort(thinking: Any) -> str | None:
    """`thinking` as a `reasoning_effort`: enabled or adaptive "medium", disabled "none"."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind in ("enabled", "adaptive"):
        return "medium"
    if kind == "disabled":
        return "none"
    raise InvalidRequest("'thinking.type' must be \"enabled\", \"adaptive\" or \"disabled\"",
                         param="thinking.type")


def _sampling(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    """Copy the sampling fields, checked, into the chat body."""
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _is_number(value):
                raise _wrong(name, "a number")
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < 0:
            raise _wrong("top_k", "a non-negative integer")
        chat["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _wrong("stop_sequences", "a list of strings")
        if stops:
            chat["stop"] = list(stops)


def to_chat(body: Any) -> dict[str, Any]:
    """A Messages request as the OpenAI chat body it means. Raises InvalidRequest (with the
    field's `param`) for a body the Messages API would refuse or the gateway cannot serve."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _wrong("model", "a non-empty string")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _wrong("max_tokens", "a positive integer")
    messages = chat_messages(body.get("messages"))
    system = system_text(body.get("system"))
    if system:
        messages.insert(0, {"role": "system", "content": system})
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    _sampling(body, chat)
    if body.get("tools"):
        chat["tools"] = chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice, serial = chat_tool_choice(body["tool_choice"])
        chat["tool_choice"] = choice
        if serial:
            chat["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    effort = reasoning_effort(body.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong("stream", "a boolean")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def place_system(system: Any, prompt: str, position: str) -> Any:
    """`system` with the policy's prompt at `position` (prepend, append; replace puts it in
    place of the whole system prompt). A prompt already there is not added again."""
    if isinstance(system, list):
        if any(isinstance(b, dict) and b.get("text") == prompt for b in system):
            return system
        block = {"type": "text", "text": prompt}
        if position == "replace":
            return [block]
        return [*system, block] if position == "append" else [block, *system]
    if not system or position == "replace":
        return prompt
    if not isinstance(system, str) or system == prompt:
        return system
    return f"{system}\n\n{prompt}" if position == "append" else f"{prompt}\n\n{system}"


def _policy_value(key: str, value: Any) -> Any:
    from geniehive.policy import thaw

    value = thaw(value)
    if key == "stop" and isinstance(value, str):
        return [value]
    return value


def policy_body(body: Mapping[str, Any], model: str, policy: Policy) -> dict[str, Any]:
    """The client's Messages body for a native upstream: `model` rewritten, the policy's
    system prompt put into `system`, and its defaults and overrides of the sampling fields
    (`temperature`, `top_p`, `top_k`, `max_tokens`, `stop` as `stop_sequences`) applied;
    other policy fields have no Messages form and are left out."""
    out = {**body, "model": model}
    if policy.system_prompt:
        out["system"] = place_system(out.get("system"), policy.system_prompt,
                                     policy.system_prompt_position)
    for key, target in POLICY_FIELDS.items():
        if key in policy.body_defaults and target not in out:
            out[target] = _policy_value(key, policy.body_defaults[key])
        if key in policy.body_overrides:
            out[target] = _policy_value(key, policy.body_overrides[key])
    return out


class MessagesDialect:
    """The Messages API as a dialect (geniehive/dialects/__init__.py)."""

    name = "messages"
    native_path = "/v1/messages"

    def __init__(self, gateway: Gateway | None = None) -> None:
        self.gateway = gateway

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    def translation(self, body: dict[str, Any]) -> MessagesTranslation:
        stops = body.get("stop_sequences")
        return MessagesTranslation(
            str(body.get("model", "")), tuple(stops) if isinstance(stops, list) else ()
        )

    def native_body(self, body: dict[str, Any], model: str, policy: Policy) -> dict[str, Any]:
        return policy_body(body, model, policy)

    def error_body(self, exc: GenieHiveError) -> bytes:
        return render_error_body(exc.http_status, exc.message)

    async def finish(self, body: dict[str, Any], translation: Any) -> None:
        return None  # nothing is stored
