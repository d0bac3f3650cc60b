"""A chat answer as a Responses API object (pure): the response, its output items, usage.

    reasoning_content / reasoning    a `reasoning` item, the text as its summary
    content                          a `message` item with one `output_text` part
    tool_calls                       `function_call` items (`custom_tool_call` for a
                                     custom tool: the `input` argument as its input)
    finish_reason length             status `incomplete`, reason `max_output_tokens`
    usage                            input/output/total tokens, cached and reasoning tokens

The response echoes the request's settings (instructions, tools, tool_choice, temperature,
top_p, text, reasoning, store, metadata...), which the SDKs' `Response` type expects.
Rule: pure; ids and the clock come in through `Context`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geniehive.dialects.responses_request import custom_tool_names


@dataclass(slots=True)
class Context:
    """What one request's answer is made with: its id and creation time, the model name
    the client asked for, the request fields echoed back, the custom tools' names, and
    `new_id(prefix)` for item ids."""

    response_id: str
    created_at: int
    model: str
    echo: dict[str, Any]
    new_id: Callable[[str], str]
    custom: frozenset[str] = field(default_factory=frozenset)


def make_context(
    body: Mapping[str, Any], response_id: str, created_at: int, new_id: Callable[[str], str]
) -> Context:
    model = body.get("model")
    return Context(response_id, created_at, model if isinstance(model, str) else "",
                   echo_fields(body), new_id, custom_tool_names(body.get("tools")))


def echo_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request settings a response carries, with the API's defaults where not sent."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), Mapping) else {}
    assert isinstance(reasoning, Mapping)

    def given(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    return {
        "background": False,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": given("metadata", {}),
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store") is True,
        "temperature": given("temperature", 1.0),
        "text": given("text", {"format": {"type": "text"}}),
        "tool_choice": given("tool_choice", "auto"),
        "tools": given("tools", []),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
        "user": body.get("user"),
    }


def response_object(
    ctx: Context, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
    *, error: dict[str, Any] | None = None, incomplete: bool = False,
) -> dict[str, Any]:
    """The Responses object in its field order."""
    return {
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": ctx.model,
        "output": output,
        **ctx.echo,
        "usage": usage,
    }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    """A chat `usage` object in the Responses shape; None when there is none."""
    if not isinstance(chat_usage, Mapping):
        return None
    prompt = _count(chat_usage.get("prompt_tokens"))
    completion = _count(chat_usage.get("completion_tokens"))
    total = chat_usage.get("total_tokens")
    prompt_details = chat_usage.get("prompt_tokens_details")
    completion_details = chat_usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else 0
    reasoning = (completion_details.get("reasoning_tokens")
                 if isinstance(completion_details, Mapping) else 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": _count(cached)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(reasoning)},
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def reasoning_text(message: Mapping[str, Any]) -> str | None:
    """The reasoning of a chat message or delta (`reasoning_content`, else `reasoning`)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return None


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": summary}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}


def call_item(
    ctx: Context, item_id: str, call_id: str, name: str, arguments: str,
    status: str = "completed",
) -> dict[str, Any]:
    """A `function_call` item, or a `custom_tool_call` for a custom tool (its input the
    call's `input` argument, or the arguments as they came when they hold none)."""
    if name in ctx.custom:
        return {"id": item_id, "type": "custom_tool_call", "status": status,
                "call_id": call_id, "name": name, "input": custom_input(arguments)}
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def custom_input(arguments: str) -> str:
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return parsed["input"]
    return arguments


def answer(ctx: Context, chat: Mapping[str, Any]) -> dict[str, Any]:
    """A whole `chat.completion` as a Responses object."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, Mapping) else None
    message = message if isinstance(message, Mapping) else {}
    output: list[dict[str, Any]] = []
    thought = reasoning_text(message)
    if thought:
        output.append(reasoning_item(ctx.new_id("rs"), thought))
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(ctx.new_id("msg"), content))
    for call in message.get("tool_calls") or []:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        assert isinstance(function, Mapping)
        given = call.get("id")
        call_id = given if isinstance(given, str) else ctx.new_id("call")
        arguments = function.get("arguments")
        output.append(call_item(ctx, ctx.new_id("fc"), call_id, str(function.get("name", "")),
                                arguments if isinstance(arguments, str) else "{}"))
    incomplete = isinstance(choice, Mapping) and choice.get("finish_reason") == "length"
    return response_object(ctx, "incomplete" if incomplete else "completed", output,
                           usage_of(chat.get("usage")), incomplete=incomplete)


def failure(error: Mapping[str, Any]) -> dict[str, Any]:
    """A response's `error` for an OpenAI error object."""
    code = error.get("code") or error.get("type") or "server_error"
    message = error.get("message")
    return {"code": str(code), "message": message if isinstance(message, str) else "failed"}


def strip_reasoning_items(response: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses object without its `reasoning` output items."""
    output = response.get("output")
    if not isinstance(output, list):
        return dict(response)
    kept = [i for i in output if not (isinstance(i, Mapping) and i.get("type") == "reasoning")]
    return {**response, "output": kept}
