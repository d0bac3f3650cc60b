"""A Responses API request as an OpenAI chat body (pure).

    input (a string, or items)     messages, after `instructions` as the first system message
    message / {role, content}      a message; developer → system; parts input_text,
                                   output_text, refusal → text, input_image → image_url
    function_call (consecutive)    one assistant message with their tool_calls
    custom_tool_call               likewise, its `input` as the one string argument `input`
    function_call_output,          tool messages
    custom_tool_call_output
    reasoning                      dropped (a chat upstream cannot take it back)
    tools: function                chat function tools
    tools: custom (freeform)       a function with one string parameter `input`; the model's
                                   call comes back as a `custom_tool_call` item
    tools: web_search, file_search, code_interpreter, computer_use, image_generation, mcp,
           local_shell, shell, apply_patch...   400: they run on OpenAI's servers
    max_output_tokens → max_tokens, text.format → response_format, reasoning.effort →
    reasoning_effort; temperature, top_p, parallel_tool_calls, user, stream as they are

Rule: every refusal is an `InvalidRequest` naming the field (`input[3].type`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from geniehive.errors import InvalidRequest

MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system",
                 "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "refusal"})
CALL_TYPES = frozenset({"function_call", "custom_tool_call"})
OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output"})
DROPPED_TYPES = frozenset({"reasoning"})
# Request fields of the Responses API that have no meaning on a chat upstream and are
# refused rather than silently ignored.
REFUSED_FIELDS = {
    "background": "background responses are not supported by this gateway",
    "conversation": "conversations are not supported; chain with previous_response_id",
}
# Copied to the chat body under the same name.
SAME_FIELDS = ("temperature", "top_p", "parallel_tool_calls", "user")


def normalize_input(body: Mapping[str, Any]) -> list[Any]:
    """The request's `input` as a list of items (a string is one user message).

    Raises InvalidRequest when it is missing or neither a string nor a list.
    """
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if isinstance(value, list):
        return value
    raise InvalidRequest("'input' must be a string or a list of items", param="input")


def to_chat(body: Mapping[str, Any], items: list[Any]) -> dict[str, Any]:
    """The chat body for a Responses request whose whole input (its chain's items first)
    is `items`. Raises InvalidRequest naming the field at fault."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    for name, why in REFUSED_FIELDS.items():
        if body.get(name) not in (None, False):
            raise InvalidRequest(why, param=name)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    messages += items_to_messages(items)
    if not messages:
        raise InvalidRequest("'input' holds no message", param="input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    tools = body.get("tools")
    if tools is not None:
        chat_tools = convert_tools(tools)
        if chat_tools:
            chat["tools"] = chat_tools
    if body.get("tool_choice") is not None and "tools" in chat:
        chat["tool_choice"] = convert_tool_choice(body["tool_choice"])
    for name in SAME_FIELDS:
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    response_format = convert_text_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        chat["stream"] = True
        # The final event carries the usage, so the upstream is always asked for it.
        chat["stream_options"] = {"include_usage": True}
    return chat


def items_to_messages(items: list[Any]) -> list[dict[str, Any]]:
    """Chat messages for input items; consecutive calls join one assistant message (with
    the assistant message just before them, when there is one)."""
    out: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest("each input item must be an object", param=where)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            out.append(_message(item, where))
        elif kind in CALL_TYPES:
            call = _tool_call(item, kind, where)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and (
                "tool_calls" in last or _is_text_only(last)
            ):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in OUTPUT_TYPES:
            out.append(_tool_output(item, where))
        elif kind in DROPPED_TYPES:
            continue
        else:
            raise InvalidRequest(
                f"input items of type {kind!r} are not supported by this gateway",
                param=f"{where}.type",
            )
    return out


def _is_text_only(message: Mapping[str, Any]) -> bool:
    return isinstance(message.get("content"), str)


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = MESSAGE_ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise InvalidRequest(
            "a message's role must be user, assistant, system or developer",
            param=f"{where}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("a message's content must be a string or a list of parts",
                             param=f"{where}.content")
    parts = [_part(part, f"{where}.content[{n}]") for n, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        # One string: what every chat upstream takes, for any role.
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    if role != "user":
        raise InvalidRequest(f"only user messages may hold images (a {item.get('role')} "
                             "message does)", param=f"{where}.content")
    return {"role": role, "content": parts}


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, Mapping):
        raise InvalidRequest("each content part must be an object", param=where)
    kind = part.get("type")
    if kind in TEXT_PARTS:
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("a text part needs a string 'text'", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            if part.get("file_id") is not None:
                raise InvalidRequest("images by file id are not supported; send image_url "
                                     "(a URL or a data: URL)", param=f"{where}.file_id")
            raise InvalidRequest("an input_image needs 'image_url'",
                                 param=f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(f"content parts of type {kind!r} are not supported by this gateway",
                         param=f"{where}.type")


def _tool_call(item: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool call needs a string 'call_id'", param=f"{where}.call_id")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a tool call needs a string 'name'", param=f"{where}.name")
    if kind == "custom_tool_call":
        value = item.get("input")
        if not isinstance(value, str):
            raise InvalidRequest("a custom tool call needs a string 'input'",
                                 param=f"{where}.input")
        arguments = json.dumps({"input": value}, ensure_ascii=False)
    else:
        given = item.get("arguments")
        if not isinstance(given, str):
            raise InvalidRequest("a function call's 'arguments' must be a string of JSON",
                                 param=f"{where}.arguments")
        arguments = given
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _tool_output(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool output needs a string 'call_id'", param=f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        texts = [_part(p, f"{where}.output[{n}]") for n, p in enumerate(output)]
        if any(t["type"] != "text" for t in texts):
            raise InvalidRequest("a tool output may hold text only", param=f"{where}.output")
        output = "".join(t["text"] for t in texts)
    if not isinstance(output, str):
        raise InvalidRequest("a tool output's 'output' must be a string",
                             param=f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def custom_tool_names(tools: Any) -> frozenset[str]:
    """The names of the request's custom (freeform) tools, whose calls are answered as
    `custom_tool_call` items."""
    if not isinstance(tools, list):
        return frozenset()
    return frozenset(t["name"] for t in tools if isinstance(t, Mapping)
                     and t.get("type") == "custom" and isinstance(t.get("name"), str))


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    """Chat function tools for the request's function and custom tools.

    Raises InvalidRequest for a tool the gateway cannot run (a built-in tool of OpenAI's).
    """
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    out = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, Mapping):
            raise InvalidRequest("each tool must be an object", param=where)
        kind = tool.get("type")
        if kind not in ("function", "custom"):
            raise InvalidRequest(
                f"the tool type {kind!r} runs on OpenAI's servers and this gateway cannot "
                "run it; remove it or offer it as a function tool", param=f"{where}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a tool needs a string 'name'", param=f"{where}.name")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if kind == "custom":
            description = _custom_description(description, tool.get("format"))
            function["parameters"] = {
                "type": "object", "properties": {"input": {"type": "string"}},
                "required": ["input"], "additionalProperties": False,
            }
        else:
            parameters = tool.get("parameters")
            function["parameters"] = (parameters if isinstance(parameters, Mapping)
                                      else {"type": "object", "properties": {}})
            if tool.get("strict") is not None:
                function["strict"] = tool["strict"]
        if isinstance(description, str) and description:
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _custom_description(description: Any, fmt: Any) -> str:
    """A custom tool's description, told that its input is one string and, for a grammar
    format, which grammar that string follows."""
    text = description if isinstance(description, str) else ""
    if isinstance(fmt, Mapping) and fmt.get("type") == "grammar":
        syntax, definition = fmt.get("syntax"), fmt.get("definition")
        if isinstance(definition, str) and definition:
            text += (f"\n\nPass the whole input as the string argument `input`; it must "
                     f"follow this {syntax or 'grammar'} grammar:\n{definition}")
            return text.strip()
    return (text + "\n\nPass the whole input as the string argument `input`.").strip()


def convert_tool_choice(choice: Any) -> Any:
    """The chat `tool_choice`: the modes as they are; a named tool as a chat function."""
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind in ("function", "custom") and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            return choice["mode"]
    raise InvalidRequest("'tool_choice' must be auto, none, required or a function tool",
                         param="tool_choice")


def convert_text_format(text: Any) -> dict[str, Any] | None:
    """The chat `response_format` for `text.format` (None for plain text)."""
    if text is None:
        return None
    if not isinstance(text, Mapping):
        raise InvalidRequest("'text' must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, Mapping)
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a json_schema format needs a 'name'", param="text.format.name")
        if not isinstance(schema, Mapping):
            raise InvalidRequest("a json_schema format needs a 'schema' object",
                                 param="text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        if fmt.get("strict") is not None:
            spec["strict"] = fmt["strict"]
        if isinstance(fmt.get("description"), str):
            spec["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest("'text.format.type' must be text, json_object or json_schema",
                         param="text.format.type")
