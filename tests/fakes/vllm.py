"""A vLLM emulator: the recording fake upstream with vLLM's model list, metrics and health.

`FakeVllm` is a `FakeUpstream` (same recording, waiting helpers and fault modes) that answers:

- ``GET /v1/models`` with ``max_model_len``, ``root`` and ``owned_by: "vllm"``;
- ``GET /metrics`` Prometheus text in vLLM's names (``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) from values a test sets;
- ``GET /health`` 200 with an empty body (503 once ``healthy`` is False);
- ``/v1/chat/completions`` and the other OpenAI endpoints of the base fake; unknown models 404.

Control: ``POST /_fake/vllm/metrics {"running"?, "waiting"?, "kv_cache_usage"?}`` and
``POST /_fake/vllm/health {"ok": bool}``. Run alone:
``python -m tests.fakes.vllm --port 0 --model Qwen/Qwen3-8B --max-model-len 32768``.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from tests.fakes import replies
from tests.fakes.process import serve_until_signalled
from tests.fakes.replies import Reply
from tests.fakes.upstream import FakeUpstream

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_vllm_metrics(model: str, running: int, waiting: int, kv_cache_usage: float) -> str:
    """A metrics page in vLLM V1's names and layout (engine and model_name labels)."""
    labels = f'{{engine="0",model_name="{model}"}}'
    gauges = [
        ("vllm:num_requests_running", "Number of requests in model execution batches.",
         float(running)),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
         float(waiting)),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
         float(kv_cache_usage)),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{labels} {value}"]
    return "\n".join(lines) + "\n"


class FakeVllm(FakeUpstream):
    """A vLLM OpenAI-compatible server with settable load."""

    def __init__(self, models: list[str] | None = None, *, max_model_len: int = 4096,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", "vllm")
        kwargs.setdefault("strict_models", True)
        super().__init__(models if models is not None else ["Qwen/Qwen3-8B"], **kwargs)
        self.max_model_len = max_model_len
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.healthy = True

    def set_load(self, *, running: int | None = None, waiting: int | None = None,
                 kv_cache_usage: float | None = None) -> None:
        """Set what `/metrics` reports; None leaves a value as it is."""
        if running is not None:
            self.running = int(running)
        if waiting is not None:
            self.waiting = int(waiting)
        if kv_cache_usage is not None:
            self.kv_cache_usage = float(kv_cache_usage)

    def _route(self, record: dict[str, Any]) -> Reply:
        key = (record["method"], record["path"])
        if key == ("GET", "/v1/models"):
            return self._models()
        if key == ("GET", "/metrics"):
            model = self.models[0] if self.models else ""
            text = render_vllm_metrics(model, self.running, self.waiting, self.kv_cache_usage)
            return Reply(content_type=METRICS_TYPE, body=text.encode())
        if key == ("GET", "/health"):
            # vLLM answers an empty 200 while the engine lives.
            return Reply(status=200 if self.healthy else 503, content_type="application/json")
        return super()._route(record)

    def _models(self) -> Reply:
        data = [{"id": m, "object": "model", "created": replies.CREATED, "owned_by": "vllm",
                 "root": m, "parent": None, "max_model_len": self.max_model_len,
                 "permission": []} for m in self.models]
        return replies.json_reply({"object": "list", "data": data})

    def _control(self, record: dict[str, Any]) -> Reply:
        key = (record["method"], record["path"])
        body = record["json"] if isinstance(record["json"], dict) else {}
        try:
            if key == ("POST", "/_fake/vllm/metrics"):
                self.set_load(running=body.get("running"), waiting=body.get("waiting"),
                              kv_cache_usage=body.get("kv_cache_usage"))
            elif key == ("POST", "/_fake/vllm/health"):
                self.healthy = bool(body["ok"])
            else:
                return super()._control(record)
        except (ValueError, KeyError, TypeError) as exc:
            return replies.error_reply(400, f"bad control request: {exc}")
        return replies.json_reply({"ok": True, "running": self.running, "waiting": self.waiting,
                                   "kv_cache_usage": self.kv_cache_usage,
                                   "healthy": self.healthy})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.vllm",
                                     description="A vLLM emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--reply", default=None)
    args = parser.parse_args(argv)
    fake = FakeVllm(args.models, max_model_len=args.max_model_len, reply=args.reply)
    trio.run(serve_until_signalled, fake, args.host, args.port)


if __name__ == "__main__":
    main()
