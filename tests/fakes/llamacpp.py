"""A llama.cpp `llama-server` emulator: the recording fake upstream with its slots and props.

`FakeLlamaCpp` is a `FakeUpstream` (same recording, waiting helpers and fault modes) that
answers what the llama.cpp adapter reads:

- ``GET /v1/models`` with ``owned_by: "llamacpp"`` and ``meta.n_ctx_train``;
- ``GET /props`` with ``total_slots`` and ``default_generation_settings.n_ctx``;
- ``GET /slots`` one entry per slot, the first ``busy`` of them ``is_processing``;
- ``GET /health`` ``{"status": "ok"}``;
- ``POST /tokenize {"content"}`` ``{"tokens": [...]}``, one token per word;
- ``POST /v1/messages``, the Anthropic Messages API llama-server speaks itself: "echo: " and
  the last user text, after a thinking block when ``thinking`` is set, whole or streamed;
- ``/v1/chat/completions`` and the other OpenAI endpoints of the base fake.

Control: ``POST /_fake/llamacpp/slots {"total"?, "busy"?}``. Run alone:
``python -m tests.fakes.llamacpp --port 0 --model smollm2 --total-slots 4``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from tests.fakes import replies
from tests.fakes.process import serve_until_signalled
from tests.fakes.replies import Reply
from tests.fakes.upstream import FakeUpstream


class FakeLlamaCpp(FakeUpstream):
    """A llama-server holding one model, with a settable number of slots."""

    def __init__(self, models: list[str] | None = None, *, total_slots: int = 1,
                 n_ctx: int = 4096, n_ctx_train: int = 8192, thinking: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", "llamacpp")
        super().__init__(models if models is not None else ["smollm2"], **kwargs)
        self.total_slots = total_slots
        self.busy = 0
        self.n_ctx = n_ctx
        self.n_ctx_train = n_ctx_train
        self.thinking = thinking  # the reasoning its Messages answers show first

    def _route(self, record: dict[str, Any]) -> Reply:
        key = (record["method"], record["path"])
        if key == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "created": replies.CREATED,
                     "owned_by": "llamacpp", "meta": {"n_ctx_train": self.n_ctx_train}}
                    for m in self.models]
            return replies.json_reply({"object": "list", "data": data})
        if key == ("GET", "/props"):
            return replies.json_reply({"total_slots": self.total_slots,
                                       "default_generation_settings": {"n_ctx": self.n_ctx}})
        if key == ("GET", "/slots"):
            slots = [{"id": i, "n_ctx": self.n_ctx, "is_processing": i < self.busy}
                     for i in range(self.total_slots)]
            return replies.json_reply(slots)
        if key == ("POST", "/tokenize"):
            body = record["json"] if isinstance(record["json"], dict) else {}
            words = replies.count_tokens(str(body.get("content", "")))
            return replies.json_reply({"tokens": list(range(words))})
        if key == ("POST", "/v1/messages"):
            return self._messages(record)
        return super()._route(record)

    def _messages(self, record: dict[str, Any]) -> Reply:
        body = record["json"] if isinstance(record["json"], dict) else {}
        turns = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        text = "echo: " + (messages_text(turns[-1].get("content")) if turns else "")
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if self.thinking is not None:
            blocks.insert(0, {"type": "thinking", "thinking": self.thinking,
                              "signature": "fake-signature"})
        usage = {"input_tokens": replies.count_tokens(text) - 1,
                 "output_tokens": replies.count_tokens(text)}
        message = {"id": f"msg_fake{record['index']}", "type": "message",
                   "role": "assistant", "model": body.get("model"), "content": blocks,
                   "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return replies.json_reply(message)
        events = [_event("message_start", {"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None,
            "usage": {**usage, "output_tokens": 1}}})]
        for index, block in enumerate(blocks):
            kind = block["type"]
            events.append(_event("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": kind, kind: ""}}))
            for piece in replies.word_pieces(block[kind]):
                events.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": f"{kind}_delta", kind: piece}}))
            events.append(_event("content_block_stop",
                                 {"type": "content_block_stop", "index": index}))
        events.append(_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]}}))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return Reply(content_type="text/event-stream", events=events)

    def _control(self, record: dict[str, Any]) -> Reply:
        if (record["method"], record["path"]) != ("POST", "/_fake/llamacpp/slots"):
            return super()._control(record)
        body = record["json"] if isinstance(record["json"], dict) else {}
        try:
            self.total_slots = int(body.get("total", self.total_slots))
            self.busy = int(body.get("busy", self.busy))
        except (ValueError, TypeError) as exc:
            return replies.error_reply(400, f"bad control request: {exc}")
        return replies.json_reply({"ok": True, "total": self.total_slots, "busy": self.busy})


def messages_text(content: Any) -> str:
    """The text of a Messages turn: a string, or its text blocks."""
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    return content if isinstance(content, str) else ""


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.llamacpp",
                                     description="A llama.cpp llama-server emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--total-slots", type=int, default=1)
    parser.add_argument("--reply", default=None)
    args = parser.parse_args(argv)
    fake = FakeLlamaCpp(args.models, total_slots=args.total_slots, reply=args.reply)
    trio.run(serve_until_signalled, fake, args.host, args.port)


if __name__ == "__main__":
    main()
