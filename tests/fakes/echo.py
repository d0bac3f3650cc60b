"""The Echo server of docs/plugins.md, emulated over the recording fake upstream.

The plugin guide's example adapter (tests/fixtures/plugins/echo_adapter.py) talks to an
imaginary server; this is that server, so the example can run end to end:

- ``GET /models`` ``{"models": [{"name", "context"}]}`` (there is no ``/v1/models``);
- ``GET /ping`` ``pong`` as text/plain;
- ``/v1/chat/completions`` the OpenAI chat of the base fake (an echo of the prompt);
- errors of its own shape, ``{"problem": "..."}``, for unknown paths and unknown models.

The base fault modes work as usual (``POST /_fake/fault``), so a test can make it answer an
error body of its choosing. Run alone: ``python -m tests.fakes.echo --port 0 --model echo-7b``.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from tests.fakes import replies
from tests.fakes.process import serve_until_signalled
from tests.fakes.replies import Reply
from tests.fakes.upstream import FakeUpstream

CONTEXT = 8192


def problem_reply(status: int, problem: str) -> Reply:
    return replies.json_reply({"problem": problem}, status)


class FakeEcho(FakeUpstream):
    """The Echo server: its own model list and ping, OpenAI chat, `problem` errors."""

    def __init__(self, models: list[str] | None = None, *, context: int = CONTEXT,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", "echo")
        super().__init__(models if models is not None else ["echo-7b"], **kwargs)
        self.context = context

    def _route(self, record: dict[str, Any]) -> Reply:
        key = (record["method"], record["path"])
        if key == ("GET", "/models"):
            models = [{"name": m, "context": self.context} for m in self.models]
            return replies.json_reply({"models": models})
        if key == ("GET", "/ping"):
            return Reply(content_type="text/plain; charset=utf-8", body=b"pong")
        if key == ("POST", "/v1/chat/completions"):
            body = record["json"]
            model = body.get("model") if isinstance(body, dict) else None
            if model not in self.models:
                return problem_reply(404, f"no model named {model!r}")
            return super()._route(record)
        # Everything OpenAI-shaped beyond chat is foreign to the Echo server.
        return problem_reply(404, f"nothing at {record['path']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.echo",
                                     description="The Echo server of the plugin guide.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--context", type=int, default=CONTEXT)
    args = parser.parse_args(argv)
    fake = FakeEcho(args.models, context=args.context)
    trio.run(serve_until_signalled, fake, args.host, args.port)


if __name__ == "__main__":
    main()
