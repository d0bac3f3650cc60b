"""One request's answer in the Responses API: a whole answer, a stream of chat chunks
turned into Responses events, and a native upstream's own answer passed through (pure).

A translated stream, each event `event: <type>` plus its JSON with a `sequence_number`:

    response.created, response.in_progress                  before the first output
    per output item, in order:
      response.output_item.added
      reasoning      response.reasoning_summary_part.added, ..._summary_text.delta...,
                     ..._summary_text.done, ..._summary_part.done
      message        response.content_part.added, response.output_text.delta...,
                     response.output_text.done, response.content_part.done
      function_call  response.function_call_arguments.delta..., ..._arguments.done
      custom call    response.custom_tool_call_input.delta, ..._input.done (whole)
      response.output_item.done
    response.completed (or response.incomplete on finish_reason length), the whole
    response with its usage; a stream that broke off ends with response.failed instead.

An item ends when an output of another kind (or another tool call) begins, or at the end.
A native stream passes event by event; with `strip`, reasoning items and their events are
dropped and the remaining `output_index`es and every `sequence_number` renumbered, and the
gateway's own failure event (`data: {"error": ...}`) becomes response.failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geniehive.dialects import responses_answer as ra
from geniehive.dialects.responses_answer import Context
from geniehive.sse import encode_json, event_object

LIFECYCLE_DONE = frozenset({"response.completed", "response.incomplete"})


class ResponsesTranslation:
    """The `dialects.Translation` of one Responses request."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.result: dict[str, Any] | None = None
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # items so far (the open one last)
        self._open: str | None = None  # "reasoning" | "message" | "call" | None
        self._text = ""  # the open item's text or arguments so far
        self._call_index: int | None = None  # the chat tool call index of the open call
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        # native streams
        self._dropped: set[int] = set()
        self._last: dict[str, Any] | None = None

    # -- whole answers ----------------------------------------------------------------
    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        self.result = ra.answer(self.ctx, chat)
        return self.result

    def native_answer(self, answer: dict[str, Any], strip: bool) -> dict[str, Any]:
        out = ra.strip_reasoning_items(answer) if strip else dict(answer)
        out["model"] = self.ctx.model
        if out.get("status") in ("completed", "incomplete"):
            self.result = out
        return out

    # -- translated streams -----------------------------------------------------------
    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start()
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = ra.usage_of(chunk["usage"])
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                out += self._delta(delta)
            if choice.get("finish_reason") is not None:
                self._finish = str(choice["finish_reason"])
        return out

    def done(self) -> bytes:
        out = self._start() + self._close()
        incomplete = self._finish == "length"
        kind = "response.incomplete" if incomplete else "response.completed"
        response = ra.response_object(
            self.ctx, "incomplete" if incomplete else "completed", self._output,
            self._usage, incomplete=incomplete,
        )
        self.result = response
        return out + self._event(kind, {"response": response})

    def error(self, error: dict[str, Any]) -> bytes:
        out = self._start()
        response = ra.response_object(self.ctx, "failed", self._output, self._usage,
                                      error=ra.failure(error))
        return out + self._event("response.failed", {"response": response})

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = ra.response_object(self.ctx, "in_progress", [], None)
        return (self._event("response.created", {"response": response})
                + self._event("response.in_progress", {"response": response}))

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        out = b""
        thought = ra.reasoning_text(delta)
        if thought:
            if self._open != "reasoning":
                out += self._close() + self._open_reasoning()
            out += self._append("response.reasoning_summary_text.delta", thought,
                                {"summary_index": 0})
        content = delta.get("content")
        if isinstance(content, str) and content:
            if self._open != "message":
                out += self._close() + self._open_message()
            out += self._append("response.output_text.delta", content,
                                {"content_index": 0, "logprobs": []})
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                out += self._call_delta(call)
        return out

    def _call_delta(self, call: Mapping[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        assert isinstance(function, Mapping)
        if self._open != "call" or index != self._call_index:
            out += self._close()
            call_id = call.get("id") if isinstance(call.get("id"), str) else None
            out += self._open_call(index, call_id or self.ctx.new_id("call"),
                                   str(function.get("name") or ""))
        elif isinstance(function.get("name"), str) and not self._item["name"]:
            self._item["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if self._item["type"] == "custom_tool_call":
                self._text += arguments  # the input is sent whole when the call ends
            else:
                out += self._append("response.function_call_arguments.delta", arguments, {})
        return out

    @property
    def _item(self) -> dict[str, Any]:
        return self._output[-1]

    @property
    def _index(self) -> int:
        return len(self._output) - 1

    def _append(self, kind: str, text: str, extra: dict[str, Any]) -> bytes:
        self._text += text
        return self._event(kind, {"item_id": self._item["id"], "output_index": self._index,
                                  **extra, "delta": text})

    def _added(self, item: dict[str, Any], kind: str) -> bytes:
        self._output.append(item)
        self._open, self._text = kind, ""
        return self._event("response.output_item.added",
                           {"output_index": self._index, "item": dict(item)})

    def _open_reasoning(self) -> bytes:
        out = self._added({**ra.reasoning_item(self.ctx.new_id("rs"), "")}, "reasoning")
        return out + self._event("response.reasoning_summary_part.added", {
            "item_id": self._item["id"], "output_index": self._index, "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        })

    def _open_message(self) -> bytes:
        out = self._added(ra.message_item(self.ctx.new_id("msg"), None, "in_progress"),
                          "message")
        return out + self._event("response.content_part.added", {
            "item_id": self._item["id"], "output_index": self._index, "content_index": 0,
            "part": ra.text_part(""),
        })

    def _open_call(self, index: Any, call_id: str, name: str) -> bytes:
        self._call_index = index
        item = ra.call_item(self.ctx, self.ctx.new_id("fc"), call_id, name, "", "in_progress")
        return self._added(item, "call")

    def _close(self) -> bytes:
        """End the open item: its closing events, and the item completed in the output."""
        if self._open is None:
            return b""
        kind, text, item, index = self._open, self._text, self._item, self._index
        self._open, self._text, self._call_index = None, "", None
        head = {"item_id": item["id"], "output_index": index}
        out = b""
        if kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            out += self._event("response.reasoning_summary_text.done",
                               {**head, "summary_index": 0, "text": text})
            out += self._event("response.reasoning_summary_part.done",
                               {**head, "summary_index": 0, "part": part})
            done = ra.reasoning_item(item["id"], text)
        elif kind == "message":
            out += self._event("response.output_text.done",
                               {**head, "content_index": 0, "text": text, "logprobs": []})
            out += self._event("response.content_part.done",
                               {**head, "content_index": 0, "part": ra.text_part(text)})
            done = ra.message_item(item["id"], text)
        elif item["type"] == "custom_tool_call":
            done = ra.call_item(self.ctx, item["id"], item["call_id"], item["name"], text)
            out += self._event("response.custom_tool_call_input.delta",
                               {**head, "delta": done["input"]})
            out += self._event("response.custom_tool_call_input.done",
                               {**head, "input": done["input"]})
        else:
            done = ra.call_item(self.ctx, item["id"], item["call_id"], item["name"], text)
            out += self._event("response.function_call_arguments.done",
                               {**head, "name": item["name"], "arguments": text})
        self._output[index] = done
        return out + self._event("response.output_item.done",
                                 {"output_index": index, "item": done})

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + encode_json(data) + b"\n\n"

    # -- native streams ---------------------------------------------------------------
    def native_event(self, event: bytes, strip: bool) -> bytes:
        parsed = event_object(event)
        if parsed is None:
            return event
        kind = parsed.get("type")
        if not isinstance(kind, str):
            error = parsed.get("error")
            if isinstance(error, Mapping):  # the gateway's own failure event
                return self._native_failed(error)
            return event
        if strip and self._drops(parsed, kind):
            return b""
        response = parsed.get("response")
        if isinstance(response, Mapping):
            response = ra.strip_reasoning_items(response) if strip else dict(response)
            response["model"] = self.ctx.model
            parsed["response"] = self._last = response
            if kind in LIFECYCLE_DONE:
                self.result = response
        parsed.pop("sequence_number", None)
        return self._event(kind, {k: v for k, v in parsed.items() if k != "type"})

    def _drops(self, parsed: dict[str, Any], kind: str) -> bool:
        """Whether a native event belongs to a reasoning item (dropped); renumbers the
        `output_index` of one that stays."""
        index = parsed.get("output_index")
        if not isinstance(index, int):
            return kind.startswith("response.reasoning")
        item = parsed.get("item")
        if kind == "response.output_item.added" and isinstance(item, Mapping) and (
            item.get("type") == "reasoning"
        ):
            self._dropped.add(index)
        if index in self._dropped or kind.startswith("response.reasoning"):
            return True
        parsed["output_index"] = index - sum(1 for d in self._dropped if d < index)
        return False

    def _native_failed(self, error: Mapping[str, Any]) -> bytes:
        base = self._last or ra.response_object(self.ctx, "in_progress", [], None)
        response = {**base, "status": "failed", "error": ra.failure(error)}
        return self._event("response.failed", {"response": response})
