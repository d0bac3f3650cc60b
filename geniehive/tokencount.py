"""Counting a Messages request's input tokens (`POST /v1/messages/count_tokens`).

The request is checked and translated like a Messages request (geniehive/dialects/
messages.py), and its model resolved like any chat request. The prompt's text (each turn's
role and text, tool calls and results, the tool definitions as JSON) is counted by the first
candidate's tokenizer when its adapter has one (`Adapter.tokenize`: llama.cpp's
`/tokenize`), else estimated as one token per 4 characters, rounded up.

Either way the count leaves out the tokens the chat template adds around each turn, so it
is a close lower bound, not the upstream's exact prompt length.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from geniehive.dialects.messages import to_chat
from geniehive.errors import raise_for_decision

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

CHARS_PER_TOKEN = 4


def prompt_text(chat: dict[str, Any]) -> str:
    """The text of a chat body's prompt: each message's role and text (tool calls as their
    name and arguments), then each tool definition as JSON, one per line."""
    lines: list[str] = []
    for message in chat.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content if p.get("type") == "text")
        lines.append(f"{message.get('role')}: {content or ''}")
        for call in message.get("tool_calls") or []:
            function = call["function"]
            lines.append(f"{function['name']}({function['arguments']})")
    for tool in chat.get("tools") or []:
        lines.append(json.dumps(tool["function"], ensure_ascii=False, sort_keys=True))
    return "\n".join(lines)


def estimate_tokens(text: str) -> int:
    """One token per 4 characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


async def count_input_tokens(gateway: Gateway, body: Any) -> tuple[int, bool]:
    """(input tokens, whether an upstream's tokenizer counted them) for a count_tokens body.

    Raises InvalidRequest for a body the Messages API would refuse, ModelNotFound (and the
    other routing errors) for a model the gateway cannot route.
    """
    if isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 1}  # count_tokens takes no max_tokens
    chat = to_chat(body)
    text = prompt_text(chat)
    decision = gateway.resolve(chat["model"], "chat")
    raise_for_decision(decision)
    candidate = decision.chosen
    service = gateway.snapshot.services.get(candidate.service_id) if candidate else None
    if candidate is not None and service is not None:
        counted = await gateway.adapter_for(service).tokenize(candidate.upstream_model, text)
        if counted is not None:
            return counted, True
    return estimate_tokens(text), False
