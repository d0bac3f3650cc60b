"""The OpenAI Responses API (`POST /v1/responses`) on the chat operation.

The request is translated into a chat body (geniehive/dialects/responses_request.py), its
answer back into a Responses object or event stream (responses_answer.py,
responses_stream.py). The only I/O is the store of responses (`store: true`,
geniehive/registry_responses.py): `prepare` reads the response a `previous_response_id`
names and puts its input and output items before the request's own, in the body's
`input` itself, so the native path and `finish` see the whole conversation too; `finish`
stores the complete answer with that input. `store` defaults to false.

A native upstream (an adapter listing "responses" in `native_dialects`) gets the client's
body with the model rewritten, the expanded input and no `previous_response_id` (it does
not hold our stored responses), `store: false`, the policy's system prompt in
`instructions` and its body defaults and overrides applied (`max_tokens` as
`max_output_tokens`, `reasoning_effort` as `reasoning.effort`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from geniehive.dialects.responses_answer import make_context
from geniehive.dialects.responses_request import normalize_input, to_chat
from geniehive.dialects.responses_stream import ResponsesTranslation
from geniehive.errors import GenieHiveError, InvalidRequest, NotFound
from geniehive.policy import deep_fill, deep_force

if TYPE_CHECKING:
    from geniehive.dialects import Translation
    from geniehive.gateway import Gateway
    from geniehive.models import Policy

# Chat names of policy fields, and their names in a Responses body.
RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}


def new_id(prefix: str) -> str:
    """An id like the API's own: `resp_<hex>`, `msg_<hex>`, `fc_<hex>`..."""
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponsesDialect:
    """The Responses API dialect (one per gateway); `clock` gives `created_at`."""

    name = "responses"
    native_path = "/v1/responses"

    def __init__(self, gateway: Gateway, clock: Callable[[], float] = time.time) -> None:
        self.store = gateway.responses
        self.clock = clock

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        items = normalize_input(body)
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str) or not previous:
                raise InvalidRequest("'previous_response_id' must be a response id",
                                     param="previous_response_id")
            stored = await self.store.get(previous)
            if stored is None:
                raise NotFound(f"no stored response '{previous}'",
                               param="previous_response_id")
            output = stored.response.get("output")
            items = [*stored.input, *(output if isinstance(output, list) else []), *items]
        body["input"] = items
        return to_chat(body, items)

    def translation(self, body: dict[str, Any]) -> Translation:
        ctx = make_context(body, new_id("resp"), int(self.clock()), new_id)
        return ResponsesTranslation(ctx)

    def native_body(self, body: dict[str, Any], model: str, policy: Policy) -> dict[str, Any]:
        return native_body(body, model, policy)

    def error_body(self, exc: GenieHiveError) -> bytes:
        return exc.body()  # the Responses API's errors have the chat API's shape

    async def finish(self, body: dict[str, Any], translation: Translation) -> None:
        result = translation.result
        if body.get("store") is not True or result is None:
            return
        items = body.get("input")
        await self.store.put(str(result["id"]), items if isinstance(items, list) else [],
                             result)


def native_body(body: Mapping[str, Any], model: str, policy: Policy) -> dict[str, Any]:
    """The client's body for a Responses upstream (see the module docstring)."""
    out = {k: v for k, v in body.items() if k != "previous_response_id"}
    out["model"] = model
    out["store"] = False
    prompt = policy.system_prompt
    if prompt:
        out["instructions"] = with_prompt(out.get("instructions"), prompt,
                                          policy.system_prompt_position)
    if policy.body_defaults:
        out = deep_fill(out, renamed(policy.body_defaults))
    if policy.body_overrides:
        out = deep_force(out, renamed(policy.body_overrides))
    return out


def with_prompt(instructions: Any, prompt: str, position: str) -> str:
    """`instructions` with the policy's system prompt placed as chat places it: first,
    last, or instead; nothing is added when they already are the prompt."""
    current = instructions if isinstance(instructions, str) else ""
    if not current or current == prompt or position == "replace":
        return prompt
    return f"{current}\n\n{prompt}" if position == "append" else f"{prompt}\n\n{current}"


def renamed(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Policy body fields (chat names) under their Responses names."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "reasoning_effort":
            out["reasoning"] = {"effort": value}
        else:
            out[RENAMED.get(key, key)] = value
    return out
