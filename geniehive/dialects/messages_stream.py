"""A chat answer as an Anthropic Messages answer: whole, or as Messages stream events.

`MessagesTranslation` is one request's `Translation` (geniehive/dialects/__init__.py):

- `answer`: a `chat.completion` as a Messages `message` (content: a thinking block when the
  upstream reasoned, the text, then one `tool_use` block per tool call);
- `chunk` ... `done`: OpenAI chunks as the Messages event sequence: `message_start`, `ping`,
  then per content block `content_block_start`, its deltas (`thinking_delta`, `text_delta`,
  `input_json_delta` as tool arguments arrive) and `content_block_stop`; a block ends when
  the kind of content changes or another tool call begins. `message_delta` (stop reason and
  usage) is held until `done`, since usage comes in the last chunk, then `message_stop`;
- `error`: an OpenAI error object as an `error` event;
- `native_answer` / `native_event`: an upstream's own Messages answer, with thinking blocks
  removed when reasoning is stripped (the later blocks of a stream renumbered).

Choices made here:
- Tool arguments that are not a JSON object become `{}` in the answer's `input` (the raw
  text is lost: Messages has no field for it); a stream's deltas carry them as they came.
- `stop_sequence` is named when the upstream says which stop matched (vLLM's
  `stop_reason`, llama.cpp's `stopping_word`) and it is one the client sent.
- `input_tokens` excludes cached prompt tokens, which go in `cache_read_input_tokens`.

Rule: pure; nothing here does I/O.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from geniehive.sse import event_object

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
THINKING = frozenset({"thinking", "redacted_thinking"})
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def encode_event(name: str, data: dict[str, Any]) -> bytes:
    """One Messages SSE event: `event: <name>` and its JSON data."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode()


def message_id(chat_id: Any) -> str:
    """A `msg_` id derived from the chat answer's id (a fresh one when it has none)."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + _ID_CHARS.sub("", chat_id.removeprefix("chatcmpl-"))
    return "msg_" + uuid.uuid4().hex


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool call arguments as an `input` object: `{}` when they are not a JSON object."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def usage_of(usage: Any) -> dict[str, int]:
    """An OpenAI `usage` as Messages usage (zeros when the upstream gave none)."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = prompt if isinstance(prompt, int) else 0
    out = {"input_tokens": prompt, "output_tokens": completion if isinstance(completion, int)
           else 0}
    if isinstance(cached, int) and cached > 0:
        out["input_tokens"] = max(prompt - cached, 0)
        out["cache_read_input_tokens"] = cached
    return out


def stop_of(finish: Any, matched: Any, stops: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a chat `finish_reason`; `matched` is the stop the
    upstream says it met, if it says."""
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    if finish is None:
        return None, None
    return STOP_REASONS.get(finish, "end_turn"), None


def _matched_stop(choice: dict[str, Any]) -> Any:
    return choice.get("stop_reason", choice.get("stopping_word"))


def _obj(value: Any) -> dict[str, Any]:
    """`value` when it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _reasoning(message: dict[str, Any]) -> str:
    value = message.get("reasoning_content")
    if not isinstance(value, str):
        value = message.get("reasoning")
    return value if isinstance(value, str) else ""


class MessagesTranslation:
    """One request's answer in the Messages dialect (see the module's docstring)."""

    def __init__(self, model: str, stops: tuple[str, ...] = ()) -> None:
        self.model = model  # the model name the client asked for
        self.stops = stops
        self.result: dict[str, Any] | None = None
        # the stream's state
        self._message: dict[str, Any] | None = None  # the answer being built
        self._kind: Any = None  # "thinking", "text", ("tool", index) or None: the open block
        self._tools: dict[int, dict[str, Any]] = {}  # chat tool index -> its block
        self._args: dict[int, list[str]] = {}  # block index -> argument pieces
        self._finish: Any = None
        self._matched: Any = None
        self._usage: Any = None
        # the native stream's state
        self._dropped: list[int] = []  # upstream block indices left out
        self._native_args: dict[int, list[str]] = {}

    # -- a whole answer -----------------------------------------------------------------
    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        choices = chat.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(
            choices[0], dict) else {}
        message = _obj(choice.get("message"))
        content: list[dict[str, Any]] = []
        thinking = _reasoning(message)
        if thinking:
            content.append({"type": "thinking", "thinking": thinking, "signature": ""})
        text = message.get("content")
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        for call in message.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            function = _obj(call.get("function"))
            content.append({"type": "tool_use", "id": call.get("id") or _tool_id(),
                            "name": function.get("name") or "",
                            "input": tool_input(function.get("arguments"))})
        reason, sequence = stop_of(choice.get("finish_reason") or "stop",
                                   _matched_stop(choice), self.stops)
        if any(block["type"] == "tool_use" for block in content):
            reason = "tool_use"  # some servers say "stop" after calling a tool
        self.result = {
            "id": message_id(chat.get("id")), "type": "message", "role": "assistant",
            "model": self.model, "content": content, "stop_reason": reason,
            "stop_sequence": sequence, "usage": usage_of(chat.get("usage")),
        }
        return self.result

    # -- a stream -----------------------------------------------------------------------
    def _start(self, chunk_id: Any) -> bytes:
        self._message = {
            "id": message_id(chunk_id), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        start = {**self._message, "content": []}
        return (encode_event("message_start", {"type": "message_start", "message": start})
                + encode_event("ping", {"type": "ping"}))

    def _close(self) -> bytes:
        """End the open block, if one is open."""
        if self._kind is None:
            return b""
        assert self._message is not None
        index = len(self._message["content"]) - 1
        block = self._message["content"][index]
        if block["type"] == "tool_use":
            block["input"] = tool_input("".join(self._args.pop(index, [])))
        self._kind = None
        return encode_event("content_block_stop", {"type": "content_block_stop",
                                                   "index": index})

    def _open(self, kind: Any, block: dict[str, Any]) -> bytes:
        """Close the open block and start `block` of `kind`."""
        out = self._close()
        assert self._message is not None
        index = len(self._message["content"])
        self._message["content"].append(block)
        self._kind = kind
        shown = {**block, "input": {}} if block["type"] == "tool_use" else dict(block)
        return out + encode_event("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": shown})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._message is not None
        index = len(self._message["content"]) - 1
        return encode_event("content_block_delta", {"type": "content_block_delta",
                                                    "index": index, "delta": delta})

    def _thinking(self, text: str) -> bytes:
        out = b""
        if self._kind != "thinking":
            out = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        assert self._message is not None
        self._message["content"][-1]["thinking"] += text
        return out + self._delta({"type": "thinking_delta", "thinking": text})

    def _text(self, text: str) -> bytes:
        out = b""
        if self._kind != "text":
            out = self._open("text", {"type": "text", "text": ""})
        assert self._message is not None
        self._message["content"][-1]["text"] += text
        return out + self._delta({"type": "text_delta", "text": text})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = _obj(call.get("function"))
        out = b""
        if self._kind != ("tool", index):
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or _tool_id(),
                     "name": function.get("name") or "", "input": {}}
            self._tools[index] = block
            out = self._open(("tool", index), block)
        pieces = function.get("arguments")
        if isinstance(pieces, str) and pieces:
            assert self._message is not None
            self._args.setdefault(len(self._message["content"]) - 1, []).append(pieces)
            out += self._delta({"type": "input_json_delta", "partial_json": pieces})
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self._message is not None else self._start(chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _obj(choice.get("delta"))
            thinking = _reasoning(delta)
            if thinking:
                out += self._thinking(thinking)
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text(text)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    out += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = _matched_stop(choice)
        return out

    def done(self) -> bytes:
        out = b"" if self._message is not None else self._start(None)
        out += self._close()
        assert self._message is not None
        reason, sequence = stop_of(self._finish or "stop", self._matched, self.stops)
        if self._tools:
            reason = "tool_use"
        usage = usage_of(self._usage)
        self._message.update(stop_reason=reason, stop_sequence=sequence, usage=usage)
        self.result = self._message
        out += encode_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        })
        return out + encode_event("message_stop", {"type": "message_stop"})

    def error(self, error: dict[str, Any]) -> bytes:
        return encode_event("error", error_event(error))

    # -- a native upstream's answer -----------------------------------------------------
    def native_answer(self, answer: dict[str, Any], strip: bool) -> dict[str, Any]:
        if strip and isinstance(answer.get("content"), list):
            answer = {**answer, "content": [
                b for b in answer["content"]
                if not (isinstance(b, dict) and b.get("type") in THINKING)
            ]}
        self.result = answer
        return answer

    def native_event(self, event: bytes, strip: bool) -> bytes:
        parsed = event_object(event)
        if parsed is None:
            return event
        if isinstance(parsed.get("error"), dict) and "type" not in parsed:
            return encode_event("error", error_event(parsed["error"]))  # the gateway's own
        kind = parsed.get("type")
        index = parsed.get("index")
        changed = False
        if strip and isinstance(index, int):
            if kind == "content_block_start":
                block = parsed.get("content_block")
                if isinstance(block, dict) and block.get("type") in THINKING:
                    self._dropped.append(index)
                    return b""
            if index in self._dropped:
                return b""
            shift = sum(1 for dropped in self._dropped if dropped < index)
            if shift:
                parsed = {**parsed, "index": index - shift}
                changed = True
        self._accumulate(parsed)
        if not changed:
            return event
        return encode_event(str(kind), parsed)

    def _accumulate(self, event: dict[str, Any]) -> None:
        """Build the native stream's whole answer from its events (already renumbered)."""
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._message = {**event["message"], "content": []}
            return
        message = self._message
        if message is None:
            return
        index = event.get("index")
        content = message["content"]
        if kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            content.append(dict(event["content_block"]))
        elif kind == "content_block_delta" and isinstance(index, int) and index < len(content):
            _apply_delta(content[index], event.get("delta"), self._native_args, index)
        elif kind == "content_block_stop" and index in self._native_args:
            content[index]["input"] = tool_input("".join(self._native_args.pop(index)))
        elif kind == "message_delta":
            delta = _obj(event.get("delta"))
            message.update({k: v for k, v in delta.items()
                            if k in ("stop_reason", "stop_sequence")})
            if isinstance(event.get("usage"), dict):
                message["usage"] = {**(message.get("usage") or {}), **event["usage"]}
        elif kind == "message_stop":
            self.result = message


def _apply_delta(block: dict[str, Any], delta: Any, args: dict[int, list[str]],
                 index: int) -> None:
    if not isinstance(delta, dict):
        return
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + str(delta.get("text", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + str(delta.get("signature", ""))
    elif kind == "input_json_delta":
        args.setdefault(index, []).append(str(delta.get("partial_json", "")))


def error_event(error: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI error object (what the relay writes when a stream breaks) as the data of a
    Messages `error` event."""
    code, kind = error.get("code"), error.get("type")
    if kind == "rate_limit_error":
        anthropic = "rate_limit_error"
    elif code in ("upstream_timeout", "request_timeout"):
        anthropic = "timeout_error"
    elif code in ("shutting_down", "no_healthy_upstream", "queue_full", "model_load_failed"):
        anthropic = "overloaded_error"
    else:
        anthropic = "api_error"
    message = error.get("message")
    return {"type": "error", "error": {
        "type": anthropic, "message": message if isinstance(message, str) else "error"}}


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]
