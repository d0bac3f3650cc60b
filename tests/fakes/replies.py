"""Pure pieces of the fake upstream: OpenAI-shaped reply bodies and a small multipart parser.

Nothing here does I/O. `tests.fakes.upstream` hands in parsed requests and sends out the
`Reply` values built here, applying its fault modes on the way. Replies are deterministic
(fixed `created`, embeddings derived from a hash of the input) so tests can compare exact values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

CREATED = 1_700_000_000  # a fixed timestamp keeps replies byte-stable across runs
SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Reply:
    """One HTTP answer: a whole `body`, or `events` each sent as its own chunk when set."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    events: list[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class BadRequest(Exception):
    """The request cannot be answered; carries the OpenAI-shaped error to send instead."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Form:
    """A parsed multipart/form-data body: text fields in order, files described by digest."""

    items: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, str]:
        return dict(self.items)


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=json.dumps(obj).encode())


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_reply(status: int, message: str, code: str | None = None) -> Reply:
    return json_reply(error_body(status, message, code), status)


def sse_event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def word_pieces(text: str) -> list[str]:
    """Split a reply into one piece per word, spaces kept, so the pieces join back exactly."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def count_tokens(text: str) -> int:
    return len(text.split())


def message_text(content: Any) -> str:
    """The text of a chat message content: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def render_models(ids: list[str]) -> Reply:
    data = [{"id": i, "object": "model", "created": CREATED, "owned_by": "fake"} for i in ids]
    return json_reply({"object": "list", "data": data})


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_reply_text(body: dict[str, Any]) -> str:
    """The default chat answer: 'echo: ' and the last user message."""
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return "echo: " + (message_text(users[-1].get("content")) if users else "")


def render_chat(body: dict[str, Any], text: str, request_id: str) -> Reply:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list")
    prompt = sum(count_tokens(message_text(m.get("content"))) for m in messages
                 if isinstance(m, dict))
    usage = _usage(prompt, count_tokens(text))
    head = {"id": request_id, "created": CREATED, "model": body.get("model")}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": "stop"}
        return json_reply({**head, "object": "chat.completion", "choices": [choice],
                           "usage": usage})
    pieces = word_pieces(text)
    deltas = [{"content": p} for p in pieces]
    deltas[0]["role"] = "assistant"
    choices = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
    return _stream(body, {**head, "object": "chat.completion.chunk"}, choices, usage)


def wants_tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the fake calls: the first function tool, when the last message is the
    user's (after a tool's answer it answers in text)."""
    tools = body.get("tools")
    messages = body.get("messages") or []
    if not isinstance(tools, list) or not tools or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    return function if isinstance(function, dict) else None


def tool_reply_text(body: dict[str, Any]) -> str | None:
    """After a tool's answer: 'tool said: ' and that answer."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return "tool said: " + message_text(last.get("content"))
    return None


def render_tool_call(body: dict[str, Any], function: dict[str, Any], request_id: str) -> Reply:
    """A call of `function` with arguments `{"q": <the user's text>}`, id `call_fake1`;
    streamed as the name, then the arguments in two pieces."""
    arguments = json.dumps({"q": chat_reply_text(body).removeprefix("echo: ")})
    head = {"id": request_id, "created": CREATED, "model": body.get("model")}
    usage = _usage(3, 5)
    call = {"id": "call_fake1", "type": "function",
            "function": {"name": function.get("name"), "arguments": arguments}}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": None,
                                          "tool_calls": [call]},
                  "finish_reason": "tool_calls"}
        return json_reply({**head, "object": "chat.completion", "choices": [choice],
                           "usage": usage})
    half = len(arguments) // 2
    deltas = [
        {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                              "function": {"name": function.get("name"),
                                                           "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]
    choices = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
    return _stream(body, {**head, "object": "chat.completion.chunk"}, choices, usage,
                   finish="tool_calls")


def completion_reply_text(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    return "echo: " + (prompt if isinstance(prompt, str) else "")


def render_completion(body: dict[str, Any], text: str, request_id: str) -> Reply:
    if "prompt" not in body:
        raise BadRequest("'prompt' is required")
    prompt_text = completion_reply_text(body).removeprefix("echo: ")
    usage = _usage(count_tokens(prompt_text), count_tokens(text))
    head = {"id": request_id, "object": "text_completion", "created": CREATED,
            "model": body.get("model")}
    if not body.get("stream"):
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return json_reply({**head, "choices": [choice], "usage": usage})
    choices = [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}
               for p in word_pieces(text)]
    return _stream(body, head, choices, usage)


def _stream(body: dict[str, Any], head: dict[str, Any], choices: list[dict[str, Any]],
            usage: dict[str, int], finish: str = "stop") -> Reply:
    """SSE events: one per choice piece (the last one carries finish_reason), usage, [DONE]."""
    choices[-1]["finish_reason"] = finish
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if with_usage else {}
    events = [sse_event({**head, "choices": [c], **extra}) for c in choices]
    if with_usage:
        events.append(sse_event({**head, "choices": [], "usage": usage}))
    events.append(SSE_DONE)
    return Reply(content_type="text/event-stream", events=events,
                 headers=[("cache-control", "no-cache")])


def expected_embedding(text: str, dim: int = 8) -> list[float]:
    """The vector the fake returns for `text`: hash bytes mapped to exact float32 values."""
    digest = b""
    counter = 0
    while len(digest) < dim:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    # (b - 128) / 128 is exact in float32, so floats and base64 round-trip to equal values.
    return [(b - 128) / 128 for b in digest[:dim]]


def render_embeddings(body: dict[str, Any], dim: int, ignore_base64: bool) -> Reply:
    raw = body.get("input")
    if raw is None:
        raise BadRequest("'input' is required")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    texts = [i if isinstance(i, str) else json.dumps(i) for i in inputs]
    as_base64 = body.get("encoding_format") == "base64" and not ignore_base64
    data = []
    for index, text in enumerate(texts):
        vector: Any = expected_embedding(text, dim)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(count_tokens(t) for t in texts)
    return json_reply({"object": "list", "data": data, "model": body.get("model"),
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


def header_params(value: str) -> dict[str, str]:
    """Parameters of a header value such as `form-data; name="file"; filename="a.wav"`."""
    return {m[1].lower(): (m[2] if m[2] is not None else m[3].strip())
            for m in _PARAM.finditer(value)}


def parse_multipart(body: bytes, content_type: str) -> Form:
    """Parse a multipart/form-data body, keeping text fields and a digest of each file."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("expected a multipart/form-data body")
    boundary = header_params(content_type).get("boundary")
    if not boundary:
        raise BadRequest("multipart content type has no boundary")
    # A delimiter is CRLF--boundary; prefixing CRLF lets the first one match the same way.
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode())
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise BadRequest("multipart body has no closing boundary")
    form = Form()
    for section in sections[1:-1]:
        _add_part(form, section)
    return form


def _add_part(form: Form, section: bytes) -> None:
    _, _, rest = section.partition(b"\r\n")
    head, sep, content = rest.partition(b"\r\n\r\n")
    if not sep:
        raise BadRequest("multipart part has no header end")
    headers = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    params = header_params(headers.get("content-disposition", ""))
    name = params.get("name")
    if name is None:
        raise BadRequest("multipart part has no name")
    if "filename" in params:
        form.files[name] = {"filename": params["filename"], "size": len(content),
                            "sha256": hashlib.sha256(content).hexdigest(),
                            "content_type": headers.get("content-type")}
    else:
        form.items.append((name, content.decode("utf-8", "replace")))


_SUBTITLES = {
    "srt": ("application/x-subrip", "1\n00:00:00,000 --> 00:00:01,000\n{}\n\n"),
    "vtt": ("text/vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{}\n\n"),
    "text": ("text/plain; charset=utf-8", "{}"),
}


def render_transcription(form: Form, task: str, text: str) -> Reply:
    """Answer an audio request in its `response_format` (json, text, srt, vtt, verbose_json)."""
    if "file" not in form.files:
        raise BadRequest("'file' is required")
    fmt = form.fields.get("response_format", "json")
    if fmt in _SUBTITLES:
        content_type, template = _SUBTITLES[fmt]
        return Reply(content_type=content_type, body=template.format(text).encode())
    if fmt == "json":
        return json_reply({"text": text})
    if fmt == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": text}
        return json_reply({"task": task, "language": form.fields.get("language", "english"),
                           "duration": 1.0, "text": text, "segments": [segment]})
    raise BadRequest(f"unsupported response_format {fmt!r}")
