"""Server-Sent Events relay logic for streamed answers: framing, reasoning stripping, metrics.

Rule: pure and on the hot path. An event is relayed byte for byte unless a cheap byte scan
says it carries something to strip; only those events are parsed and re-encoded. The same
single pass notes what metrics need (data events, `[DONE]`, the last `usage`), so the relay
never parses a chunk twice. No I/O here: the relay feeds bytes in and writes what comes out.
"""

from __future__ import annotations

import json
import re
from typing import Any

REASONING_KEYS = frozenset({"reasoning_content", "reasoning"})

# An event ends at a blank line: a line ending followed by another. A bare `\r` is a line
# ending only when no `\n` follows it, or `\r\n` would count as two endings.
EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# `"usage"` with an object value; `"usage": null` (sent on every chunk by some servers)
# does not match, so those chunks are never parsed for metrics.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_DONE = b"[DONE]"


def contains_reasoning(raw: bytes) -> bool:
    """True when `raw` may hold a reasoning key (a byte scan: false positives are possible)."""
    return b"reasoning_content" in raw or b'"reasoning"' in raw


def strip_reasoning(obj: Any) -> Any:
    """`obj` without `reasoning_content`/`reasoning` keys at any depth.

    Returns `obj` itself when nothing was removed, and new containers only along the paths
    that changed, so callers can test `result is obj` to skip re-encoding.
    """
    if isinstance(obj, dict):
        out = {}
        changed = False
        for key, value in obj.items():
            if key in REASONING_KEYS:
                changed = True
                continue
            new = strip_reasoning(value)
            changed = changed or new is not value
            out[key] = new
        return out if changed else obj
    if isinstance(obj, list):
        items = [strip_reasoning(item) for item in obj]
        if any(new is not old for new, old in zip(items, obj, strict=True)):
            return items
        return obj
    return obj


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the form every re-encoded event and error event uses."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode_error_event(error: dict[str, Any]) -> bytes:
    """The one final event that ends a stream which failed after its first byte."""
    return b"data: " + encode_json({"error": error}) + b"\n\n"


def parse_event_lines(event: bytes) -> tuple[list[bytes | None], bytes | None]:
    """Split one event into its non-data lines and its data.

    Returns the lines in order, with `None` standing where the first `data:` line was (later
    data lines are folded into it), and the data: every data line's value (one leading space
    after the colon removed) joined with `\\n`, or `None` when the event has no data line.
    """
    lines: list[bytes | None] = []
    data: list[bytes] = []
    for line in _LINE_END.split(event):
        if not line:
            continue
        if line.startswith(b"data"):
            field, colon, value = line.partition(b":")
            if field == b"data":
                if not data:
                    lines.append(None)
                data.append(value[1:] if colon and value.startswith(b" ") else value)
                continue
        lines.append(line)
    return lines, (b"\n".join(data) if data else None)


def event_object(event: bytes) -> dict[str, Any] | None:
    """The JSON object an event's data holds, or None (no data, not JSON, not an object)."""
    obj = _loads(parse_event_lines(event)[1])
    return obj if isinstance(obj, dict) else None


def render_event(lines: list[bytes | None], data: bytes) -> bytes:
    """Re-encode an event: its other lines kept in order, `data: <data>` in place, `\\n` endings."""
    out = [b"data: " + data if line is None else line for line in lines]
    return b"\n".join(out) + b"\n\n"


def _has_data_line(event: bytes) -> bool:
    return event.startswith(b"data") or b"\ndata" in event or b"\rdata" in event


class SSEStripper:
    """Incremental SSE relay: feed upstream bytes, get the bytes to send the client.

    With `strip=False` it only observes (every byte passes unchanged) and still counts.
    Metrics after (or during) the stream:
      `events`    data events seen, `[DONE]` not counted;
      `done_seen` whether a `data: [DONE]` event was seen;
      `usage`     the last top-level `usage` object seen in a chunk, else None.
    """

    __slots__ = ("_after_cr", "_buf", "_last_verbatim", "_strip", "done_seen", "events", "usage")

    def __init__(self, *, strip: bool = True) -> None:
        self._strip = strip
        self._buf = b""
        # The last event ended with a bare `\r` at the end of a read: if the next read starts
        # with `\n`, that byte completes the `\r\n` ending and belongs to the last event.
        self._after_cr = False
        self._last_verbatim = True
        self.events = 0
        self.done_seen = False
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        """The bytes to relay now: every complete event so far, stripped where needed."""
        out: list[bytes] = []
        if self._after_cr and data:
            self._after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
                if self._last_verbatim:
                    out.append(b"\n")
        buf = self._buf + data if self._buf else data
        # The pending bytes hold no terminator, so a new one starts at most 3 bytes back.
        start = 0
        for match in EVENT_END.finditer(buf, max(0, len(self._buf) - 3)):
            end = match.end()
            out.append(self._event(buf[start:end]))
            start = end
        self._buf = buf[start:]
        if start and start == len(buf) and buf.endswith(b"\r"):
            self._after_cr = True
        return b"".join(out) if len(out) != 1 else out[0]

    def flush(self) -> bytes:
        """At end of stream: the trailing partial event, as is (it is observed, not stripped)."""
        tail, self._buf = self._buf, b""
        self._after_cr = False
        if tail:
            self._observe(tail, None)
        return tail

    def _event(self, event: bytes) -> bytes:
        if not (self._strip and contains_reasoning(event)):
            self._last_verbatim = True
            self._observe(event, None)
            return event
        lines, data = parse_event_lines(event)
        obj = _loads(data)
        self._observe(event, obj)
        try:
            stripped = strip_reasoning(obj)
        except RecursionError:  # nested past what we walk: relayed as it came
            stripped = obj
        if stripped is obj:
            # A false positive of the byte scan (or not JSON): relay the original bytes.
            self._last_verbatim = True
            return event
        self._last_verbatim = False
        return render_event(lines, encode_json(stripped))

    def _observe(self, event: bytes, parsed: Any) -> None:
        if not _has_data_line(event):
            return
        if _DONE in event:
            _, data = parse_event_lines(event)
            if data is not None and data.strip() == _DONE:
                self.done_seen = True
                return
        self.events += 1
        if _USAGE_OBJECT.search(event) is None:
            return
        if parsed is None:
            parsed = _loads(parse_event_lines(event)[1])
        if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
            self.usage = parsed["usage"]


def _loads(data: bytes | None) -> Any:
    """The JSON value of event data, or None when there is none or it is not JSON."""
    if data is None or data.strip() == _DONE:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


# Native dialect events (geniehive/dialects/) that carry content, or say the stream failed.
_CONTENT_TYPES = frozenset({
    "content_block_delta", "message_delta", "message_stop",  # Anthropic Messages
    "response.output_text.delta", "response.function_call_arguments.delta",  # Responses
    "response.custom_tool_call_input.delta", "response.refusal.delta",
    "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
    "response.completed", "response.incomplete",
})
_FAILURE_TYPES = frozenset({"error", "response.failed"})
# Held before the first content: past this much, the stream is committed anyway.
MAX_HELD_BYTES = 1024 * 1024


def event_verdict(data: bytes) -> str:
    """What one event's data says of an answer that has not shown content yet: "content"
    (text, reasoning, a tool call, a finish reason, or the end of the stream), "error" (the
    upstream's own failure event) or "" (nothing yet: a role-only or empty delta, a usage or
    bookkeeping event, data that is not JSON)."""
    if data.strip() == _DONE:
        return "content"
    obj = _loads(data)
    if not isinstance(obj, dict):
        return ""
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and _choice_has_content(choice):
                return "content"
        return ""
    kind = obj.get("type")
    if kind in _CONTENT_TYPES:
        return "content"
    if kind in _FAILURE_TYPES or "error" in obj:
        return "error"
    if kind == "content_block_start":
        block = obj.get("content_block")
        return "content" if isinstance(block, dict) and block.get("type") == "tool_use" else ""
    return ""


def _choice_has_content(choice: dict[str, Any]) -> bool:
    if choice.get("finish_reason") or choice.get("text"):
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return bool(
        delta.get("content") or delta.get("tool_calls") or delta.get("function_call")
        or delta.get("reasoning_content") or delta.get("reasoning")
    )


class ContentWatch:
    """Finds the first event of a stream that carries content (see `event_verdict`).

    Feed it the stream's bytes as they come (before any stripping: reasoning is content,
    the model is answering); `feed` returns the verdict of the first telling event among
    the complete events so far, "" while there is none. Used only until a verdict, so its
    cost ends with the stream's first token.
    """

    __slots__ = ("_buf", "held")

    def __init__(self) -> None:
        self._buf = b""
        self.held = 0  # bytes seen so far

    def feed(self, data: bytes) -> str:
        self.held += len(data)
        buf = self._buf + data
        start = 0
        for match in EVENT_END.finditer(buf):
            _, event_data = parse_event_lines(buf[start:match.end()])
            start = match.end()
            if event_data is not None:
                verdict = event_verdict(event_data)
                if verdict:
                    self._buf = b""
                    return verdict
        self._buf = buf[start:]
        return "content" if self.held > MAX_HELD_BYTES else ""

    def end(self) -> str:
        """At the end of the stream: the verdict of a last event without its blank line."""
        tail, self._buf = self._buf, b""
        _, event_data = parse_event_lines(tail)
        return event_verdict(event_data) if event_data is not None else ""
