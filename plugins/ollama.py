"""The Ollama adapter: native `/api/*` for models and load, OpenAI-compatible `/v1/*` for work.

Discovery joins `/api/tags` (what is pulled: name, family, size, digest) with `/api/ps` (what
is in memory: VRAM, expiry, allocated context), and asks `/api/show` once per model digest
for its capabilities (`tools`, `vision`, `thinking`, `embedding`, `completion`) and its
maximum context (`model_info["<arch>.context_length"]`); a model whose `/api/show` fails
keeps both unknown, and is asked again on the next pass. Ollama has no `/health`, so the probe asks
`/api/version`, which answers without touching a model. Loading and unloading are
`/api/generate` calls without a prompt, which only change `keep_alive`: loading sends the
upstream's configured `keep_alive` (default "30m"), unloading sends 0. Discovery, observation
and the probe only read (`/api/tags`, `/api/ps`, `/api/show`, `/api/version`): they never generate, so they
never load a model nor extend how long one stays.

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, NamedTuple

import httpx

from geniehive.adapters import (
    CAPABILITIES,
    AdapterSpec,
    Asset,
    Observed,
    OpenAICompatibleAdapter,
    ProbeResult,
    UpstreamContext,
    UpstreamError,
)

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


class ShowInfo(NamedTuple):
    """What `/api/show` tells about one model (None for what it does not say)."""

    capabilities: frozenset[str] | None
    max_context: int | None


UNKNOWN = ShowInfo(None, None)


def parse_ollama_show(payload: Any) -> ShowInfo:
    """Capabilities and maximum context from `/api/show`; names outside CAPABILITIES dropped.

    The maximum context is `model_info["<general.architecture>.context_length"]`, else the
    only `*.context_length` key there is. Never raises: a foreign shape says nothing.
    """
    if not isinstance(payload, dict):
        return UNKNOWN
    names = payload.get("capabilities")
    capabilities = None
    if isinstance(names, list):
        capabilities = frozenset(n for n in names if isinstance(n, str) and n in CAPABILITIES)
    info = payload.get("model_info")
    context = None
    if isinstance(info, dict):
        arch = info.get("general.architecture")
        context = _int(info.get(f"{arch}.context_length")) if isinstance(arch, str) else None
        if context is None:
            found = [_int(v) for k, v in info.items() if k.endswith(".context_length")]
            context = found[0] if len(found) == 1 else None
    return ShowInfo(capabilities, context if context is None or context > 0 else None)


def tag_digests(payload: Any) -> dict[str, str]:
    """Model name -> digest from `/api/tags` (models without a digest left out)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    return {
        m["name"]: m["digest"]
        for m in models or ()
        if isinstance(m, dict) and isinstance(m.get("name"), str)
        and isinstance(m.get("digest"), str)
    }


def apply_show(asset: Asset, info: ShowInfo) -> Asset:
    if info is UNKNOWN:
        return asset
    return replace(asset, capabilities=info.capabilities, max_context=info.max_context)


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
        # model name -> (digest, what /api/show said): asked again only when the digest moves
        self._shown: dict[str, tuple[str | None, ShowInfo]] = {}

    async def discover(self) -> list[Asset]:
        running = parse_ollama_ps(await self.get_json("/api/ps"))
        tags = await self.get_json("/api/tags")
        assets = parse_ollama_tags(tags, running)
        digests = tag_digests(tags)
        shown = {}
        for asset in assets:
            digest = digests.get(asset.asset_id)
            cached = self._shown.get(asset.asset_id)
            if cached is not None and cached[0] == digest:
                shown[asset.asset_id] = cached
                continue
            info = await self._show(asset.asset_id)
            if info is not UNKNOWN:
                shown[asset.asset_id] = (digest, info)
        self._shown = shown  # forgets removed models
        return [apply_show(a, shown[a.asset_id][1]) if a.asset_id in shown else a
                for a in assets]

    async def _show(self, model: str) -> ShowInfo:
        """What `/api/show` says of `model`; UNKNOWN when it fails (never raises)."""
        try:
            response = await self.client.post(
                self.url("/api/show"), json={"model": model},
                headers=self.ctx.auth_headers, timeout=self.ctx.timeout_s,
            )
            if response.status_code != 200:
                return UNKNOWN
            return parse_ollama_show(response.json())
        except (httpx.HTTPError, ValueError):
            return UNKNOWN

    async def probe(self) -> ProbeResult:
        return await self.probe_get("/api/version", parse_ollama_version)

    async def observe(self) -> Observed | None:
        # Load figures are advisory: a failed reading must not fail the discovery pass.
        try:
            return observed_from_ps(parse_ollama_ps(await self.get_json("/api/ps")))
        except (httpx.HTTPError, UpstreamError):
            return None

    def thinking_off(self, body: dict[str, Any]) -> dict[str, Any]:
        # Ollama's /v1 endpoints ignore `think` and `chat_template_kwargs`; they honour this.
        return {**body, "reasoning_effort": "none"}

    async def load(self, model: str) -> None:
        """Load `model` into memory for the upstream's `keep_alive` (default 30 minutes).

        Raises UpstreamError or httpx.HTTPError.
        """
        keep_alive = self.ctx.keep_alive if self.ctx.keep_alive is not None else LOAD_KEEP_ALIVE
        await self._keep_alive(model, keep_alive)

    async def unload(self, model: str) -> None:
        """Evict `model` from memory now. Raises UpstreamError or httpx.HTTPError."""
        await self._keep_alive(model, 0)

    async def _keep_alive(self, model: str, keep_alive: str | int) -> None:
        # Without a prompt /api/generate only loads the model (or unloads it at keep_alive 0).
        response = await self.client.post(
            self.url("/api/generate"),
            json={"model": model, "keep_alive": keep_alive},
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
    description="Ollama: models from /api/tags and /api/ps, requests through its /v1 API",
)
