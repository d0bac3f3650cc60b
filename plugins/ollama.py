"""The Ollama adapter: native `/api/*` for models, load and chat, `/v1/*` for the rest.

Discovery joins `/api/tags` (what is pulled: name, family, size) with `/api/ps` (what is in
memory: VRAM, expiry, allocated context). Ollama has no `/health`, so the probe asks
`/api/version`, which answers without touching a model. Loading and unloading are
`/api/generate` calls without a prompt, which generate nothing: loading sends the
upstream's configured `keep_alive` (default "30m") and, natively, the `num_ctx` chat will
send (so the first chat does not reload it), unloading sends 0. Discovery, observation
and the probe only read (`/api/tags`, `/api/ps`, `/api/version`): they never generate, so they
never load a model nor extend how long one stays.

Chat goes to Ollama's native `POST /api/chat` (the upstream's `dialect = "native"`, the
default), translated to and from the OpenAI API by geniehive/adapters/ollama_chat.py: its `/v1`
ignores `num_ctx`, `keep_alive` and `think`. The adapter remembers the largest `num_ctx` it
sent per model and never sends less, so Ollama does not reload a model's runner between
requests. With `dialect = "openai"`, and for embeddings and completions always, requests go
through `/v1` as they came.

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from geniehive.adapters import (
    AdapterSpec,
    Asset,
    Observed,
    OpenAICompatibleAdapter,
    ProbeResult,
    StreamTranslator,
    UpstreamContext,
    UpstreamError,
    UpstreamRequest,
)
from geniehive.adapters import ollama_chat

LOAD_KEEP_ALIVE = "30m"
# Loading reads gigabytes from disk into VRAM; the probe timeout would cut it short.
LOAD_TIMEOUT_S = 300.0


def _details(item: dict[str, Any]) -> dict[str, Any]:
    details = item.get("details")
    return details if isinstance(details, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _models(payload: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("models"), list):
        raise UpstreamError(f"expected an Ollama {path} answer with a 'models' array")
    return [m for m in payload["models"] if isinstance(m, dict) and isinstance(m.get("name"), str)]


def parse_ollama_ps(payload: Any) -> dict[str, Asset]:
    """The models in memory by name, from `/api/ps`. Raises UpstreamError on a foreign shape."""
    loaded = {}
    for item in _models(payload, "/api/ps"):
        expires = item.get("expires_at")
        loaded[item["name"]] = Asset(
            asset_id=item["name"],
            loaded=True,
            context_length=_int(item.get("context_length")),
            family=_details(item).get("family") or None,
            size_bytes=_int(item.get("size")),
            vram_bytes=_int(item.get("size_vram")),
            expires_at=expires if isinstance(expires, str) else None,
        )
    return loaded


def parse_ollama_tags(payload: Any, running: dict[str, Asset] | None = None) -> list[Asset]:
    """Assets from `/api/tags`, marked loaded (with VRAM, expiry, context) when in `running`.

    A running model missing from the tags (a pull racing the listing) is kept as well.
    Raises UpstreamError on a foreign shape.
    """
    running = running or {}
    assets = []
    for item in _models(payload, "/api/tags"):
        name = item["name"]
        state = running.get(name)
        assets.append(
            Asset(
                asset_id=name,
                loaded=state is not None,
                context_length=state.context_length if state else None,
                family=_details(item).get("family") or None,
                size_bytes=_int(item.get("size")),
                vram_bytes=state.vram_bytes if state else None,
                expires_at=state.expires_at if state else None,
            )
        )
    listed = {a.asset_id for a in assets}
    assets.extend(a for name, a in running.items() if name not in listed)
    return assets


def parse_ollama_version(status: int, body: bytes) -> ProbeResult:
    """The probe verdict from `/api/version`: alive when it answers 200 with a version."""
    if status != 200:
        return ProbeResult(False, f"HTTP {status}")
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str):
        return ProbeResult(False, "no version in /api/version answer")
    return ProbeResult(True, f"ollama {version}")


def observed_from_ps(running: dict[str, Asset]) -> Observed:
    return Observed(
        loaded_model_count=len(running),
        vram_used_bytes=sum(a.vram_bytes or 0 for a in running.values()),
    )


class OllamaAdapter(OpenAICompatibleAdapter):
    """Ollama: native model listing and load control, OpenAI-compatible requests."""

    kind = "ollama"
    loads_models = True

    def __init__(self, ctx: UpstreamContext) -> None:
        super().__init__(ctx)
        # Per model: the largest num_ctx sent, and the context length discovery last read.
        self.num_ctx_sent: dict[str, int] = {}
        self._context: dict[str, int] = {}

    @property
    def native(self) -> bool:
        return self.ctx.dialect != "openai"

    async def discover(self) -> list[Asset]:
        running = parse_ollama_ps(await self.get_json("/api/ps"))
        assets = parse_ollama_tags(await self.get_json("/api/tags"), running)
        self._context.update(
            {a.asset_id: a.context_length for a in assets if a.context_length}
        )
        return assets

    def context_length(self, model: str) -> int | None:
        """The model's context length: configured, else as discovery last read it."""
        for asset in self.ctx.configured_assets:
            if asset.asset_id == model and asset.context_length:
                return asset.context_length
        return self._context.get(model)

    def num_ctx(self, model: str, body: Mapping[str, Any]) -> int:
        """The `num_ctx` for this request, remembered as the model's floor from now on."""
        chosen = ollama_chat.choose_num_ctx(
            self.context_length(model), ollama_chat.num_ctx_needed(body),
            self.num_ctx_sent.get(model),
        )
        self.num_ctx_sent[model] = chosen
        return chosen

    def build_request(
        self,
        operation: str,
        model: str,
        body: Mapping[str, Any] | None = None,
        fields: Sequence[tuple[str, str]] = (),
    ) -> UpstreamRequest:
        """Chat to `/api/chat` in the native dialect; everything else through `/v1`.

        Raises InvalidRequest (a 400) for a chat Ollama cannot take (an image by URL).
        """
        if operation != "chat" or body is None or not self.native:
            return super().build_request(operation, model, body=body, fields=fields)
        native = ollama_chat.chat_request(
            body, model, num_ctx=self.num_ctx(model, body), keep_alive=self.ctx.keep_alive
        )
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        notes = {"dialect": "native", "model": model, "include_usage": str(include_usage)}
        return UpstreamRequest(
            "POST", "/api/chat", body=native, headers=self.ctx.auth_headers, notes=notes
        )

    def translate_response(
        self, operation: str, status: int, content_type: str, body: bytes, request: UpstreamRequest
    ) -> tuple[int, str, bytes]:
        """A native chat answer as an OpenAI `chat.completion` (other answers as they are)."""
        if request.notes.get("dialect") != "native" or status != 200:
            return status, content_type, body
        try:
            answer = ollama_chat.chat_completion(json.loads(body), request.notes["model"])
        except ValueError:
            return status, content_type, body  # the relay reports a body it cannot read
        return status, "application/json", json.dumps(answer).encode()

    def stream_translator(self, request: UpstreamRequest) -> StreamTranslator | None:
        """Native chat streams NDJSON: translated into OpenAI SSE chunks."""
        if request.notes.get("dialect") != "native":
            return None
        return ollama_chat.ChatStream(
            request.notes["model"], include_usage=request.notes.get("include_usage") == "True"
        )

    async def probe(self) -> ProbeResult:
        return await self.probe_get("/api/version", parse_ollama_version)

    async def observe(self) -> Observed | None:
        # Load figures are advisory: a failed reading must not fail the discovery pass.
        try:
            return observed_from_ps(parse_ollama_ps(await self.get_json("/api/ps")))
        except (httpx.HTTPError, UpstreamError):
            return None

    def thinking_off(self, body: dict[str, Any]) -> dict[str, Any]:
        # A chat in the native dialect says `think: false`; Ollama's /v1 endpoints ignore
        # `think` and `chat_template_kwargs`, but honour `reasoning_effort`.
        if self.native and "messages" in body:
            return {**body, "think": False}
        return {**body, "reasoning_effort": "none"}

    async def load(self, model: str) -> None:
        """Load `model` into memory for the upstream's `keep_alive` (default 30 minutes).

        Raises UpstreamError or httpx.HTTPError.
        """
        keep_alive = self.ctx.keep_alive if self.ctx.keep_alive is not None else LOAD_KEEP_ALIVE
        # Natively, with the num_ctx chat will send: Ollama reloads a model asked for another.
        options = {"num_ctx": self.num_ctx(model, {})} if self.native else None
        await self._keep_alive(model, keep_alive, options)

    async def unload(self, model: str) -> None:
        """Evict `model` from memory now. Raises UpstreamError or httpx.HTTPError."""
        await self._keep_alive(model, 0)

    async def _keep_alive(self, model: str, keep_alive: str | int,
                          options: dict[str, Any] | None = None) -> None:
        # Without a prompt /api/generate only loads the model (or unloads it at keep_alive 0).
        body: dict[str, Any] = {"model": model, "keep_alive": keep_alive}
        if options:
            body["options"] = options
        response = await self.client.post(
            self.url("/api/generate"),
            json=body,
            headers=self.ctx.auth_headers,
            timeout=LOAD_TIMEOUT_S,
        )
        if response.status_code != 200:
            message = self.parse_error(response.status_code, response.content)
            raise UpstreamError(f"POST /api/generate answered HTTP {response.status_code}: "
                                f"{message}")


ADAPTER = AdapterSpec(
    kind="ollama",
    api_version=1,
    factory=OllamaAdapter,
    operations=frozenset({"chat", "completion", "embeddings"}),
    default_port=11434,
    description="Ollama: models from /api/tags and /api/ps, chat through /api/chat (or /v1), "
    "the rest through /v1",
)
