"""An Ollama emulator: the native `/api/*` model endpoints over the recording fake upstream.

`FakeOllama` is a `FakeUpstream` (same recording, waiting helpers and fault modes) that also
answers what the Ollama adapter reads and drives:

- ``GET /api/tags`` the pulled models, ``GET /api/ps`` the ones in memory,
  ``GET /api/version``, ``GET /`` ("Ollama is running");
- ``POST /api/generate`` without a prompt loads a model for ``keep_alive`` (default 5m), with
  ``options.num_ctx`` as its allocated context when given, or, with ``keep_alive`` 0, unloads it; with a prompt it answers an echo and loads the model;
- ``POST /api/pull {"model"}`` adds a model;
- ``POST /api/chat`` answers an echo of the last user message (or the fake's ``reply``),
  streamed as NDJSON unless ``"stream": false`` (Ollama streams by default); it loads the
  model for the body's ``keep_alive`` (default 5m) with the body's ``options.num_ctx`` as the
  allocated context (``/api/ps`` shows it; a model loaded with another ``num_ctx`` is
  reloaded, counted in ``reloads``). With ``think`` true the answer has ``thinking``
  ("thinking about: <last user text>"). Tool rule: when the body has ``tools`` and the last
  user message names one of them (its function name appears in the text), the answer is one
  call of the first such tool with arguments ``{"request": <last user text>}`` and no content;
- ``/v1/*`` the OpenAI endpoints of the base fake (the body is recorded, so a test can see
  ``reasoning_effort``); a request for a model loads it, as Ollama does; unknown models 404.

Loading as Ollama does it: a model not in memory takes ``load_delay_s`` to load, during which
``/api/ps`` does not list it yet and the request that loads it (``/api/generate`` or ``/v1``)
is answered only once it is in; with ``max_loaded`` set, loading one more evicts the least
recently used (``OLLAMA_MAX_LOADED_MODELS``). Each model has a ``size_vram`` (default: its
size). Every native call (``/`` and ``/api/*``) is kept in ``native_calls`` as
``{"method", "path", "model"}`` so a test can assert which endpoints were called; those to
``/api/chat`` also carry ``num_ctx``, ``keep_alive`` and ``think`` as sent (None: absent).

Control: ``POST /_fake/ollama/models {"name", "family"?, "size"?, "size_vram"?}`` adds a model
(the base ``/_fake/models {"id"}`` works too); ``POST /_fake/ollama/config {"load_delay_s"?,
"max_loaded"?}`` sets the loading behaviour (``max_loaded`` null: no limit);
``GET /_fake/ollama/calls`` lists the native calls. Expiry times count from a fixed instant so
answers are byte-stable. Run alone: ``python -m tests.fakes.ollama --port 0 --model qwen3:8b
[--load-delay-s 0.5] [--max-loaded 1]``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from tests.fakes import replies
from tests.fakes.process import serve_until_signalled
from tests.fakes.replies import BadRequest, Reply
from tests.fakes.upstream import FakeUpstream

VERSION = "0.9.6"
DEFAULT_KEEP_ALIVE = "5m"
DEFAULT_SIZE = 1_000_000_000
CONTEXT_LENGTH = 4096
NOW = datetime(2025, 1, 1, tzinfo=UTC)  # "now" for expiry times: answers stay byte-stable
FOREVER = "2318-01-01T00:00:00Z"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model (None: forever). Numbers are seconds; strings like "1h30m"."""
    if isinstance(value, bool):
        raise BadRequest(f"invalid keep_alive {value!r}")
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = str(value).strip()
    magnitude = text.removeprefix("-")
    try:
        seconds = float(magnitude)
    except ValueError:
        parts = _DURATION.findall(magnitude)
        if not parts or "".join(n + u for n, u in parts) != magnitude:
            raise BadRequest(f"invalid keep_alive {value!r}") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return None if text.startswith("-") else seconds


def render_expiry(seconds: float | None) -> str:
    if seconds is None:
        return FOREVER
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class FakeOllama(FakeUpstream):
    """An Ollama server: pulled models, models in memory, and its OpenAI-compatible `/v1`."""

    def __init__(self, models: list[str] | None = None, *, load_delay_s: float = 0.0,
                 max_loaded: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "ollama")
        kwargs.setdefault("strict_models", True)
        super().__init__(models if models is not None else ["qwen3:8b"], **kwargs)
        self.version = VERSION
        self.details: dict[str, dict[str, Any]] = {}
        self.running: dict[str, dict[str, Any]] = {}  # in memory or loading
        self.load_delay_s = load_delay_s
        self.max_loaded = max_loaded
        self.native_calls: list[dict[str, Any]] = []
        self._ready_at: dict[str, float] = {}  # trio time a loading model is in memory
        self._used: dict[str, int] = {}  # when each running model was last asked for
        self._uses = itertools.count()
        self.reloads = 0  # runners reloaded because a chat asked another num_ctx

    # -- state ------------------------------------------------------------------------------

    def add_model(self, name: str, *, family: str | None = None, size: int | None = None,
                  size_vram: int | None = None) -> None:
        if name not in self.models:
            self.models.append(name)
        self.details[name] = {"family": family or name.split(":")[0],
                              "size": size or DEFAULT_SIZE}
        if size_vram is not None:
            self.details[name]["size_vram"] = size_vram

    def configure(self, *, load_delay_s: float | None = None,
                  max_loaded: int | None | str = "unchanged") -> None:
        """Set the load delay and the loaded-model limit (None: no limit)."""
        if load_delay_s is not None:
            self.load_delay_s = float(load_delay_s)
        if max_loaded != "unchanged":
            self.max_loaded = None if max_loaded is None else int(max_loaded)

    def load_model(self, name: str, keep_alive: Any = DEFAULT_KEEP_ALIVE) -> float:
        """Load (or, at keep_alive 0, unload) `name`; the trio time it is (was) in memory.

        A model not yet running evicts the least recently used first when `max_loaded` are.
        """
        seconds = parse_keep_alive(keep_alive)
        if seconds == 0:
            self._evict(name)
            return -math.inf
        if name not in self.running:
            if self.max_loaded is not None:
                while self.running and len(self.running) >= self.max_loaded:
                    self._evict(min(self.running, key=lambda n: self._used[n]))
            self._ready_at[name] = (trio.current_time() + self.load_delay_s
                                    if self.load_delay_s > 0 else -math.inf)
        detail = self._detail(name)
        self.running[name] = {"expires_at": render_expiry(seconds),
                              "size_vram": detail.get("size_vram", detail["size"]),
                              "context_length": CONTEXT_LENGTH}
        self._used[name] = next(self._uses)
        return self._ready_at[name]

    def loaded(self) -> list[str]:
        """The models in memory now (those still loading left out), as /api/ps lists them."""
        waiting = [t for t in self._ready_at.values() if t > -math.inf]
        now = trio.current_time() if waiting else 0.0
        return [n for n in self.running if self._ready_at[n] <= now]

    def _evict(self, name: str) -> None:
        for state in (self.running, self._ready_at, self._used):
            state.pop(name, None)

    def _detail(self, name: str) -> dict[str, Any]:
        return self.details.get(name) or {"family": name.split(":")[0], "size": DEFAULT_SIZE}

    def _entry(self, name: str) -> dict[str, Any]:
        detail = self._detail(name)
        return {
            "name": name, "model": name, "size": detail["size"],
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": detail["family"],
                        "families": [detail["family"]], "parameter_size": "1B",
                        "quantization_level": "Q4_K_M"},
        }

    # -- endpoints --------------------------------------------------------------------------

    def _route(self, record: dict[str, Any]) -> Reply:
        native = {
            ("GET", "/"): lambda r: Reply(content_type="text/plain; charset=utf-8",
                                          body=b"Ollama is running"),
            ("GET", "/api/version"): lambda r: replies.json_reply({"version": self.version}),
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/chat"): self._chat_native,
        }.get((record["method"], record["path"]))
        if record["path"] == "/" or record["path"].startswith("/api/"):
            body = record["json"] if isinstance(record["json"], dict) else {}
            model = body.get("model") or body.get("name")
            call = {"method": record["method"], "path": record["path"],
                    "model": model if isinstance(model, str) else None}
            if record["path"] == "/api/chat":
                options = body.get("options") if isinstance(body.get("options"), dict) else {}
                call.update(num_ctx=options.get("num_ctx"), keep_alive=body.get("keep_alive"),
                            think=body.get("think"))
            self.native_calls.append(call)
        if native is not None:
            try:
                return native(record)
            except BadRequest as exc:
                return replies.json_reply({"error": str(exc)}, exc.status)
        body = record["json"]
        if record["path"].startswith("/v1/") and isinstance(body, dict) \
                and body.get("model") in self.models:
            # A request loads its model, as in Ollama, and is answered once it is in.
            record["ready_at"] = self.load_model(body["model"])
        return super()._route(record)

    async def _deliver(self, stream: Any, conn: Any, fault: Any, reply: Reply,
                       record: dict[str, Any]) -> str:
        ready_at = record.get("ready_at", -math.inf)
        if ready_at > -math.inf:
            await trio.sleep_until(ready_at)
        return await super()._deliver(stream, conn, fault, reply, record)

    def _tags(self, record: dict[str, Any]) -> Reply:
        models = [{**self._entry(n), "modified_at": "2025-01-01T00:00:00Z"} for n in self.models]
        return replies.json_reply({"models": models})

    def _ps(self, record: dict[str, Any]) -> Reply:
        models = [{**self._entry(n), **self.running[n]} for n in self.loaded()]
        return replies.json_reply({"models": models})

    def _known(self, body: Any) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BadRequest("model is required")
        if body["model"] not in self.models:
            raise BadRequest(f"model '{body['model']}' not found", status=404)
        return body["model"]

    def _generate(self, record: dict[str, Any]) -> Reply:
        body = record["json"]
        model = self._known(body)
        prompt = body.get("prompt") or ""
        keep_alive = body.get("keep_alive", DEFAULT_KEEP_ALIVE)
        record["ready_at"] = self.load_model(model, keep_alive)
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        if model in self.running and isinstance(options.get("num_ctx"), int):
            self.running[model]["context_length"] = options["num_ctx"]
        if prompt:
            reason, text = "stop", f"echo: {prompt}"
        else:
            reason, text = ("unload" if parse_keep_alive(keep_alive) == 0 else "load"), ""
        answer = {"model": model, "created_at": "2025-01-01T00:00:00Z", "response": text,
                  "done": True, "done_reason": reason}
        if not prompt or body.get("stream") is False:
            return replies.json_reply(answer)
        return Reply(content_type="application/x-ndjson", events=[
            json.dumps({**answer, "done": False, "done_reason": None}).encode() + b"\n",
            json.dumps({**answer, "response": ""}).encode() + b"\n",
        ])

    def _chat_native(self, record: dict[str, Any]) -> Reply:
        body = record["json"]
        model = self._known(body)
        if not isinstance(body.get("messages"), list):
            raise BadRequest("messages must be a list")
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        num_ctx = options.get("num_ctx")
        state = self.running.get(model)
        if state is not None and num_ctx is not None and state["context_length"] != num_ctx:
            self.reloads += 1
            self._evict(model)
        record["ready_at"] = self.load_model(model, body.get("keep_alive", DEFAULT_KEEP_ALIVE))
        if num_ctx is not None:
            self.running[model]["context_length"] = num_ctx
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        asked = replies.message_text(users[-1].get("content")) if users else ""
        tools = [t["function"]["name"] for t in body.get("tools") or []
                 if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        called = next((name for name in tools if name in asked), None)
        text = "" if called else (self.reply if self.reply is not None else f"echo: {asked}")
        head = {"model": model, "created_at": "2025-01-01T00:00:00Z"}
        pieces: list[dict[str, Any]] = []
        if body.get("think") is True:
            pieces.append({"role": "assistant", "content": "",
                           "thinking": f"thinking about: {asked}"})
        pieces.extend({"role": "assistant", "content": p} for p in replies.word_pieces(text) if p)
        if called:
            pieces.append({"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": called, "arguments": {"request": asked}}}]})
        prompt = sum(replies.count_tokens(replies.message_text(m.get("content")))
                     for m in body["messages"] if isinstance(m, dict))
        done = {**head, "done": True, "done_reason": "stop", "prompt_eval_count": prompt,
                "eval_count": replies.count_tokens(text) + (3 if called else 0)}
        if body.get("stream") is False:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            for piece in pieces:
                for key in ("thinking", "tool_calls"):
                    if key in piece:
                        message[key] = piece[key]
            return replies.json_reply({**done, "message": message})
        lines = [{**head, "message": piece, "done": False} for piece in pieces]
        lines.append({**done, "message": {"role": "assistant", "content": ""}})
        return Reply(content_type="application/x-ndjson",
                     events=[json.dumps(line).encode() + b"\n" for line in lines])

    def _pull(self, record: dict[str, Any]) -> Reply:
        body = record["json"] if isinstance(record["json"], dict) else {}
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("model is required")
        self.add_model(name)
        if body.get("stream") is False:
            return replies.json_reply({"status": "success"})
        return Reply(content_type="application/x-ndjson", events=[
            b'{"status":"pulling manifest"}\n', b'{"status":"success"}\n',
        ])

    def _control(self, record: dict[str, Any]) -> Reply:
        route = (record["method"], record["path"])
        body = record["json"] if isinstance(record["json"], dict) else {}
        if route == ("GET", "/_fake/ollama/calls"):
            return replies.json_reply(self.native_calls)
        if route == ("POST", "/_fake/ollama/config"):
            return self._configure(body)
        if route != ("POST", "/_fake/ollama/models"):
            return super()._control(record)
        if not isinstance(body.get("name"), str):
            return replies.error_reply(400, "bad control request: 'name' is required")
        self.add_model(body["name"], family=body.get("family"), size=body.get("size"),
                       size_vram=body.get("size_vram"))
        return replies.json_reply({"ok": True, "models": self.models})

    def _configure(self, body: dict[str, Any]) -> Reply:
        unknown = sorted(set(body) - {"load_delay_s", "max_loaded"})
        delay, limit = body.get("load_delay_s"), body.get("max_loaded", "unchanged")
        if unknown:
            problem = f"unknown fields {unknown}"
        elif delay is not None and (not isinstance(delay, int | float) or delay < 0):
            problem = "'load_delay_s' must be a number >= 0"
        elif limit not in ("unchanged", None) and (not isinstance(limit, int) or limit < 1):
            problem = "'max_loaded' must be an integer >= 1 or null"
        else:
            self.configure(load_delay_s=delay, max_loaded=limit)
            return replies.json_reply({"ok": True, "load_delay_s": self.load_delay_s,
                                       "max_loaded": self.max_loaded})
        return replies.error_reply(400, f"bad control request: {problem}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.ollama",
                                     description="An Ollama emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--reply", default=None)
    parser.add_argument("--load-delay-s", type=float, default=0.0)
    parser.add_argument("--max-loaded", type=int, default=None)
    args = parser.parse_args(argv)
    fake = FakeOllama(args.models, reply=args.reply, load_delay_s=args.load_delay_s,
                      max_loaded=args.max_loaded)
    trio.run(serve_until_signalled, fake, args.host, args.port)


if __name__ == "__main__":
    main()
