"""Request policy: merge the policy layers and apply the result to a request body.

Rule: pure, and nothing here mutates its inputs. Results are new containers; parts of the
client's body that a step does not touch may be shared with the result, while values taken
from a policy are always copied into plain dicts and lists (policies hold read-only mappings,
which neither JSON encoding nor later steps should see).

Choices made here:
- A key the client sent counts as sent even when its value is null: `deep_fill` leaves it.
- The system prompt applies to chat only; a completion prompt is raw text with no roles,
  and prefixing it would silently change what the model continues.
- A layer's `system_prompt` of `""` is set: it hides a lower layer's prompt and adds none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from geniehive.models import SYSTEM_PROMPT_POSITIONS, Policy

THINKING_OPERATIONS = ("chat", "completion")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def thaw(value: Any) -> Any:
    """`value` as plain JSON containers: mappings become dicts, tuples and lists become lists."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


def deep_fill(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with `defaults` added only where the client sent nothing.

    A key present in `body` (whatever its value, null included) is kept; where both sides
    hold objects, they are filled recursively.
    """
    out = dict(body)
    for key, default in defaults.items():
        if key not in out:
            out[key] = thaw(default)
        elif isinstance(out[key], Mapping) and isinstance(default, Mapping):
            out[key] = deep_fill(out[key], default)
    return out


def deep_force(body: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with `overrides` replacing the client's values; objects merged recursively."""
    out = dict(body)
    for key, override in overrides.items():
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(override, Mapping):
            out[key] = deep_force(current, override)
        else:
            out[key] = thaw(override)
    return out


def effective_policy(*layers: Policy | None) -> Policy:
    """Combine policy layers given lowest to highest precedence (inferred, asset, role).

    The last layer that sets `system_prompt` gives the prompt and its position; body
    defaults and overrides are deep-merged with later layers winning; `strip_reasoning` is
    the last one set, true when none is.
    """
    prompt: str | None = None
    position = "prepend"
    defaults: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    strip: bool | None = None
    for layer in layers:
        if layer is None:
            continue
        if layer.system_prompt is not None:
            prompt, position = layer.system_prompt, layer.system_prompt_position
        defaults = deep_force(defaults, layer.body_defaults)
        overrides = deep_force(overrides, layer.body_overrides)
        if layer.strip_reasoning is not None:
            strip = layer.strip_reasoning
    return Policy(
        system_prompt=prompt,
        system_prompt_position=position,
        body_defaults=MappingProxyType(defaults),
        body_overrides=MappingProxyType(overrides),
        strip_reasoning=True if strip is None else strip,
    )


def apply_system_prompt(
    messages: Sequence[Any], prompt: str | None, position: str
) -> list[Any]:
    """A new message list with the system prompt placed at `position`.

    `prepend` puts it first, `append` last, `replace` in place of the first system message
    (or first when there is none). A system message with the same content already present
    anywhere means nothing is added. Raises ValueError for an unknown position.
    """
    if position not in SYSTEM_PROMPT_POSITIONS:
        raise ValueError(f"unknown system prompt position {position!r}")
    out = list(messages)
    if not prompt or any(_is_system(m) and m.get("content") == prompt for m in out):
        return out
    message = {"role": "system", "content": prompt}
    if position == "append":
        out.append(message)
        return out
    if position == "replace":
        for index, existing in enumerate(out):
            if _is_system(existing):
                out[index] = message
                return out
    out.insert(0, message)
    return out


def _is_system(message: Any) -> bool:
    return isinstance(message, Mapping) and message.get("role") == "system"


def wants_thinking_off(upstream_model_id: str, operation: str) -> bool:
    """True when thinking is off by default for this model: Qwen3 family, chat or completion.

    The id's part after its last `/`, lower-cased with non-alphanumerics removed, must start
    with `qwen3` (`Qwen3.5-9B`, `qwen3:8b`, `Qwen/Qwen3-8B`; not `qwen2.5`).
    """
    if operation not in THINKING_OPERATIONS:
        return False
    name = upstream_model_id.rsplit("/", 1)[-1].lower()
    return _NOT_ALNUM.sub("", name).startswith("qwen3")


def client_chose_thinking(body: Mapping[str, Any]) -> bool:
    """True when the body expresses a thinking choice in any form an upstream knows.

    Forms: `chat_template_kwargs.enable_thinking` (llama.cpp, vLLM), `reasoning_effort`
    (OpenAI, Ollama's OpenAI API), `reasoning` (OpenAI Responses style object), `think`
    (Ollama native), top-level `enable_thinking`. A null value is no choice.
    """
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, Mapping) and kwargs.get("enable_thinking") is not None:
        return True
    return any(
        body.get(key) is not None
        for key in ("reasoning_effort", "reasoning", "think", "enable_thinking")
    )


def needs_thinking_off(body: Mapping[str, Any], upstream_model_id: str, operation: str) -> bool:
    """Whether the adapter should turn thinking off: a Qwen3 model and no choice in the body.

    Ask it of the body after `apply_policy`, so a policy's own thinking setting counts as a
    choice just as the client's does.
    """
    return wants_thinking_off(upstream_model_id, operation) and not client_chose_thinking(body)


def apply_policy(body: Mapping[str, Any], operation: str, policy: Policy) -> dict[str, Any]:
    """The body to forward: the system prompt (chat only), then defaults, then overrides.

    Raises ValueError for an unknown system prompt position.
    """
    out = dict(body)
    messages = out.get("messages")
    if operation == "chat" and policy.system_prompt and isinstance(messages, list):
        out["messages"] = apply_system_prompt(
            messages, policy.system_prompt, policy.system_prompt_position
        )
    if policy.body_defaults:
        out = deep_fill(out, policy.body_defaults)
    if policy.body_overrides:
        out = deep_force(out, policy.body_overrides)
    return out
