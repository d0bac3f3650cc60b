"""The llama.cpp (`llama-server`) adapter: OpenAI-compatible, with slots and a loading state.

Discovery reads `/v1/models` (ids, `aliases` when the server lists them, `meta.n_ctx_train`,
and in router mode `status.value`) and `/props` (`default_generation_settings.n_ctx`, the
context a request really gets, which wins over the trained one). Load comes from `/slots`
(busy = `is_processing`); a server started with `--no-slots` answers 501 there, so `/metrics`
(`--metrics`) is the fallback. `/health` answers 503 "Loading model" until the weights are in.

Errors are OpenAI-shaped (`{"error": {"code", "message", "type"}}`), so the inherited
`parse_error` already yields their message, including the 501 of `/v1/embeddings` on a server
started without `--embeddings`.

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, NamedTuple

import httpx

from geniehive.adapters import (
    AdapterSpec,
    Asset,
    Observed,
    OpenAICompatibleAdapter,
    ProbeResult,
    UpstreamError,
)
from geniehive.adapters.prometheus import metric_sum, parse_prometheus


class Props(NamedTuple):
    """What `/props` tells about capacity."""

    total_slots: int | None
    n_ctx: int | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_asset(item: dict[str, Any]) -> Asset:
    meta = item.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    aliases = item.get("aliases")
    names = tuple(a for a in aliases if isinstance(a, str) and a != item["id"]) if isinstance(
        aliases, list
    ) else ()
    # Router mode lists models it has not started; a single-model server has no status.
    status = item.get("status")
    loaded = status.get("value") == "loaded" if isinstance(status, dict) else True
    return Asset(
        asset_id=item["id"],
        loaded=loaded,
        aliases=tuple(dict.fromkeys(names)),
        context_length=_int(meta.get("n_ctx_train")),
        size_bytes=_int(meta.get("size")),
    )


def parse_llamacpp_models(payload: Any) -> list[Asset]:
    """Assets from llama-server's `/v1/models`. Raises UpstreamError on a foreign shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise UpstreamError("expected an OpenAI model list with a 'data' array")
    return [
        _model_asset(item)
        for item in payload["data"]
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
    ]


def parse_llamacpp_props(payload: Any) -> Props:
    """Slot count and per-slot context from `/props` (None for what is missing)."""
    if not isinstance(payload, dict):
        return Props(None, None)
    settings = payload.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return Props(_int(payload.get("total_slots")), _int(n_ctx) or _int(payload.get("n_ctx")))


def apply_props(assets: list[Asset], props: Props) -> list[Asset]:
    """The served context replaces the trained one, for the single model a server holds."""
    if props.n_ctx is None or len(assets) != 1:
        return assets
    return [replace(assets[0], context_length=props.n_ctx)]


def parse_llamacpp_slots(payload: Any) -> Observed:
    """Slots in total and busy from `/slots`. Raises UpstreamError on a foreign shape."""
    if not isinstance(payload, list) or not all(isinstance(s, dict) for s in payload):
        raise UpstreamError("expected a list of slots from /slots")
    busy = sum(1 for slot in payload if slot.get("is_processing") is True)
    return Observed(slots_total=len(payload), slots_busy=busy)


def parse_llamacpp_metrics(text: str, props: Props | None = None) -> Observed:
    """Busy slots and deferred requests from `/metrics`; the slot count comes from `/props`."""
    samples = parse_prometheus(text)
    processing = metric_sum(samples, "llamacpp:requests_processing")
    deferred = metric_sum(samples, "llamacpp:requests_deferred")
    return Observed(
        slots_total=props.total_slots if props else None,
        slots_busy=None if processing is None else round(processing),
        queue_depth=None if deferred is None else round(deferred),
    )


def parse_llamacpp_health(status: int, body: bytes) -> ProbeResult:
    """The probe verdict from `/health`; 503 "Loading model" means not ready yet."""
    if status == 200:
        return ProbeResult(True, "HTTP 200")
    if status == 503:
        try:
            error = json.loads(body).get("error") or {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
        except (ValueError, AttributeError):
            message = ""
        if "loading" in message.lower():
            return ProbeResult(False, "loading")
    return ProbeResult(False, f"HTTP {status}")


class LlamaCppAdapter(OpenAICompatibleAdapter):
    """llama.cpp's llama-server."""

    kind = "llamacpp"
    # llama-server answers the Anthropic Messages API (/v1/messages) and the OpenAI
    # Responses API (/v1/responses) itself.
    native_dialects = frozenset({"messages", "responses"})

    async def discover(self) -> list[Asset]:
        assets = parse_llamacpp_models(await self.get_json("/v1/models"))
        return apply_props(assets, await self._props())

    async def _props(self) -> Props:
        # /props is a refinement: without it the trained context still stands.
        try:
            return parse_llamacpp_props(await self.get_json("/props"))
        except (httpx.HTTPError, UpstreamError):
            return Props(None, None)

    async def probe(self) -> ProbeResult:
        return await self.probe_get("/health", parse_llamacpp_health)

    async def observe(self) -> Observed | None:
        # Load figures are advisory: a failed reading must not fail the discovery pass.
        try:
            return parse_llamacpp_slots(await self.get_json("/slots"))
        except (httpx.HTTPError, UpstreamError):
            pass  # --no-slots answers 501: try /metrics
        text = await self.get_text("/metrics")
        return None if text is None else parse_llamacpp_metrics(text, await self._props())

    async def tokenize(self, model: str, text: str) -> int | None:
        """`POST /tokenize {"content": text}`: the length of its `tokens` list."""
        try:
            response = await self.client.post(
                self.url("/tokenize"), json={"content": text}, headers=self.ctx.auth_headers,
                timeout=self.ctx.timeout_s,
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return parse_llamacpp_tokens(response.json())
        except ValueError:
            return None


def parse_llamacpp_tokens(payload: Any) -> int | None:
    """The token count of a `/tokenize` answer (`{"tokens": [...]}`), None for another shape."""
    tokens = payload.get("tokens") if isinstance(payload, dict) else None
    return len(tokens) if isinstance(tokens, list) else None


ADAPTER = AdapterSpec(
    kind="llamacpp",
    api_version=1,
    factory=LlamaCppAdapter,
    operations=frozenset({"chat", "completion", "embeddings"}),
    default_port=8080,
    description="llama.cpp llama-server: /v1/models and /props, load from /slots or /metrics",
)
