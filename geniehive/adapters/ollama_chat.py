"""Ollama's native chat dialect (`POST /api/chat`) to and from the OpenAI chat API.

Pure functions, for the Ollama adapter (plugins/ollama.py), testable on recorded payloads:

- `chat_request`: an OpenAI chat body as the `/api/chat` body. Messages keep their role
  (`developer` becomes `system`); content parts are joined text, `image_url` data URLs become
  the message's `images` (base64); assistant `tool_calls` get their `arguments` as objects;
  a `tool` message gets the `tool_name` of the call it answers (from its `tool_call_id`).
  `tools` pass as they are, `response_format` becomes `format`, sampling fields become
  `options`, `reasoning_effort` becomes `think` (an explicit `think` wins). `stream` is always
  sent: Ollama streams unless told not to.
- `num_ctx_needed` and `choose_num_ctx`: the context window asked for (the rule is in
  docs/deployment.md, Ollama section).
- `chat_completion`: a non-streamed `/api/chat` answer as an OpenAI `chat.completion`.
- `ChatStream`: a streamed answer (NDJSON, one object per line) as OpenAI SSE chunks.

Requests Ollama cannot take (an image by http URL, a content part of another type, tool call
arguments that are not JSON) raise `InvalidRequest`: the client gets a 400 naming the field.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from geniehive.errors import InvalidRequest, render_error
from geniehive.sse import encode_error_event, encode_json

DEFAULT_NUM_CTX = 8192
NUM_CTX_STEP = 2048
CHARS_PER_TOKEN = 3
# OpenAI sampling fields that Ollama takes under `options` with the same name.
SAME_OPTIONS = ("temperature", "top_p", "top_k", "seed", "presence_penalty",
                "frequency_penalty")
THINK_LEVELS = frozenset({"minimal", "low", "medium", "high"})
DONE = b"data: [DONE]\n\n"


# -- request -------------------------------------------------------------------------------

def chat_request(body: Mapping[str, Any], model: str, *, num_ctx: int,
                 keep_alive: str | int | None = None) -> dict[str, Any]:
    """The `/api/chat` body for the OpenAI chat `body`, sent to `model`.

    Raises InvalidRequest for what Ollama cannot take.
    """
    out: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(body.get("messages") or []),
        "stream": body.get("stream") is True,
    }
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = tools
    fmt = response_format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    out["options"] = {**chat_options(body), "num_ctx": num_ctx}
    if keep_alive is not None:
        out["keep_alive"] = keep_alive
    think = think_choice(body)
    if think is not None:
        out["think"] = think
    return out


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as Ollama's. Raises InvalidRequest naming the bad field."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list")
    names: dict[str, str] = {}  # tool call id -> the function it called
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"messages[{i}] must be an object")
        role = message.get("role")
        text, images = message_content(message.get("content"), f"messages[{i}].content")
        converted: dict[str, Any] = {
            "role": "system" if role == "developer" else role, "content": text,
        }
        if images:
            converted["images"] = images
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            converted["tool_calls"] = [
                _native_call(call, names, f"messages[{i}].tool_calls[{j}]")
                for j, call in enumerate(calls)
            ]
        if role == "tool":
            name = names.get(str(message.get("tool_call_id")))
            if name is None and isinstance(message.get("name"), str):
                name = message["name"]
            if name is not None:
                converted["tool_name"] = name
        out.append(converted)
    return out


def message_content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and its inline images (base64): a string, or a list of parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of parts")
    texts: list[str] = []
    images: list[str] = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(inline_image(part.get("image_url"), f"{where}[{k}].image_url"))
        else:
            raise InvalidRequest(
                f"{where}[{k}]: Ollama takes only text and image_url parts, not {kind!r}"
            )
    return "\n".join(texts), images


def inline_image(image: Any, where: str) -> str:
    """The base64 data of an `image_url` (a `data:` URL). Ollama fetches no URLs."""
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}.url must be a string")
    head, comma, data = url.partition(",")
    if url.startswith("data:") and comma and head.endswith(";base64"):
        return data
    raise InvalidRequest(
        f"{where}: Ollama takes only inline images (a base64 data: URL), not {url[:64]!r}"
    )


def _native_call(call: Any, names: dict[str, str], where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function.name must be a string")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise InvalidRequest(f"{where}.function.arguments is not JSON") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object")
    if isinstance(call.get("id"), str):
        names[call["id"]] = function["name"]
    return {"function": {"name": function["name"], "arguments": dict(arguments)}}


def response_format(value: Any) -> Any:
    """Ollama's `format`: a `json_schema`'s schema object, "json" for `json_object`."""
    if not isinstance(value, Mapping):
        return None
    if value.get("type") == "json_object":
        return "json"
    if value.get("type") == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return schema if isinstance(schema, Mapping) else "json"
    return None


def num_predict(body: Mapping[str, Any]) -> int | None:
    """The answer's token limit: `max_completion_tokens`, else `max_tokens`."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def chat_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama `options` from the OpenAI sampling fields present in `body` (not `num_ctx`)."""
    options = {key: body[key] for key in SAME_OPTIONS if body.get(key) is not None}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        options["stop"] = stop
    limit = num_predict(body)
    if limit is not None:
        options["num_predict"] = limit
    return options


def think_choice(body: Mapping[str, Any]) -> bool | str | None:
    """`think`: the body's own `think`, else from `reasoning_effort` ("none": false, a level:
    true); None (not sent: the model's default) when neither says."""
    think = body.get("think")
    if isinstance(think, bool | str):
        return think
    effort = body.get("reasoning_effort")
    if effort == "none":
        return False
    if effort in THINK_LEVELS:
        return True
    return None


def num_ctx_needed(body: Mapping[str, Any]) -> int:
    """The context the request needs: prompt characters / 3 plus `num_predict`, rounded up to
    a multiple of 2048. The prompt is the messages' text, tool calls and tools as JSON."""
    chars = 0
    for message in body.get("messages") or []:
        if isinstance(message, Mapping):
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(p["text"]) for p in content
                             if isinstance(p, Mapping) and isinstance(p.get("text"), str))
            if message.get("tool_calls"):
                chars += len(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    tokens = math.ceil(chars / CHARS_PER_TOKEN) + (num_predict(body) or 0)
    return max(1, math.ceil(tokens / NUM_CTX_STEP)) * NUM_CTX_STEP


def choose_num_ctx(context_length: int | None, needed: int, previous: int | None) -> int:
    """The `num_ctx` to send: the model's context length when known, else 8192; never below
    what the prompt needs; never below what was sent before for the model (so Ollama keeps
    its runner instead of reloading it with another context size)."""
    base = context_length if context_length else DEFAULT_NUM_CTX
    return max(base, needed, previous or 0)


# -- answers -------------------------------------------------------------------------------

def openai_tool_calls(calls: Any, first_index: int = 0) -> list[dict[str, Any]]:
    """Ollama tool calls as OpenAI's: ids `call_<n>`, `arguments` as JSON strings."""
    out = []
    for n, call in enumerate(calls if isinstance(calls, list) else [], first_index):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        arguments = function.get("arguments")
        out.append({
            "id": f"call_{n}",
            "type": "function",
            "function": {
                "name": function.get("name"),
                "arguments": arguments if isinstance(arguments, str)
                else encode_json(arguments if arguments is not None else {}).decode(),
            },
        })
    return out


def finish_reason(done_reason: Any, tool_calls: bool) -> str:
    """"tool_calls" when the answer called tools, "length" when cut at the limit, else "stop"."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(payload: Mapping[str, Any]) -> dict[str, int]:
    prompt = _count(payload.get("prompt_eval_count"))
    completion = _count(payload.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def created(value: Any) -> int:
    """Unix seconds of Ollama's `created_at` (RFC 3339, nanoseconds allowed), else now."""
    if isinstance(value, str):
        text = value.replace("Z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:  # Python parses at most microseconds: drop the fraction
            zone = next((i for i, c in enumerate(rest) if c in "+-"), len(rest))
            text = head + rest[zone:]
        try:
            return int(datetime.fromisoformat(text).timestamp())
        except ValueError:
            pass
    return int(time.time())


def chat_completion(payload: Any, model: str) -> dict[str, Any]:
    """A non-streamed `/api/chat` answer as an OpenAI `chat.completion` body.

    Raises ValueError when `payload` is not an Ollama chat answer.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("message"), Mapping):
        raise ValueError("not an Ollama chat answer")
    message = payload["message"]
    calls = openai_tool_calls(message.get("tool_calls"))
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("thinking"):
        out_message["reasoning_content"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": created(payload.get("created_at")),
        "model": model,
        "choices": [{"index": 0, "message": out_message,
                     "finish_reason": finish_reason(payload.get("done_reason"), bool(calls))}],
        "usage": usage(payload),
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ChatStream:
    """A streamed `/api/chat` answer (NDJSON) fed in as it comes, OpenAI SSE out.

    The first chunk carries `delta.role`; content, thinking (`reasoning_content`) and tool
    calls (`delta.tool_calls`, each with its index, id, name and arguments) follow as they
    come; the last line (`done`) gives a chunk with `finish_reason` and `usage`, then, when
    the client asked for `stream_options.include_usage`, the usage chunk with no choices
    (OpenAI's form), then `[DONE]`. A line `{"error": ...}`, a line that is not JSON or an
    end without the `done` line ends the stream with one error event: `failed` is then True.
    """

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.failed = False
        self._buf = b""
        self._started = False
        self._ended = False
        self._calls = 0
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created: int | None = None

    def feed(self, data: bytes) -> bytes:
        """The SSE bytes for every complete line so far (a partial line waits)."""
        buf = self._buf + data
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return b"".join(self._line(line) for line in lines)

    def flush(self) -> bytes:
        """At the end of the answer: its last line if unterminated; an error if it never
        finished."""
        tail, self._buf = self._buf, b""
        out = self._line(tail)
        if not self._ended:
            out += self._fail("the upstream stream ended before its last line")
        return out

    def _line(self, line: bytes) -> bytes:
        if self._ended or not line.strip():
            return b""
        try:
            item = json.loads(line)
        except ValueError:
            return self._fail("the upstream sent a stream line that is not JSON")
        if not isinstance(item, dict):
            return self._fail("the upstream sent a stream line that is not an object")
        if item.get("error") is not None:
            error = item["error"]
            text = error if isinstance(error, str) else json.dumps(error)
            return self._fail(f"upstream error: {text}")
        if self._created is None:
            self._created = created(item.get("created_at"))
        message: dict[str, Any] = item["message"] if isinstance(item.get("message"), dict) else {}
        delta: dict[str, Any] = {}
        if not self._started:
            delta["role"] = "assistant"
            self._started = True
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        calls = openai_tool_calls(message.get("tool_calls"), self._calls)
        if calls:
            delta["tool_calls"] = [{"index": self._calls + i, **c} for i, c in enumerate(calls)]
            self._calls += len(calls)
        out = self._chunk(delta, None) if delta else b""
        if item.get("done"):
            self._ended = True
            counts = usage(item)
            reason = finish_reason(item.get("done_reason"), self._calls > 0)
            out += self._chunk({}, reason, counts)
            if self.include_usage:
                out += self._event({"choices": [], "usage": counts})
            out += DONE
        return out

    def _chunk(self, delta: dict[str, Any], reason: str | None,
               counts: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        if counts is not None:
            chunk["usage"] = counts
        return self._event(chunk)

    def _event(self, fields: dict[str, Any]) -> bytes:
        chunk = {"id": self._id, "object": "chat.completion.chunk",
                 "created": self._created or int(time.time()), "model": self.model, **fields}
        return b"data: " + encode_json(chunk) + b"\n\n"

    def _fail(self, message: str) -> bytes:
        self._ended = self.failed = True
        return encode_error_event(render_error(message, "server_error", "upstream_error"))
