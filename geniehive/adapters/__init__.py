"""The public plugin API: everything an upstream adapter may import.

An adapter teaches GenieHive one kind of upstream server. A plugin module exposes
`ADAPTER = AdapterSpec(kind=..., api_version=1, factory=..., operations={...})`; the factory
is called once per upstream with an `UpstreamContext` (which carries the injected
`httpx.AsyncClient`; adapters never make their own) and returns an `Adapter`.

Rule: adapters read upstream payloads through pure `parse_*` functions so that every dialect
is testable on recorded fixtures without a network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx

from geniehive.models import OPERATIONS, Asset, Observed

API_VERSION = 1

__all__ = [
    "API_VERSION",
    "OPERATIONS",
    "Adapter",
    "AdapterSpec",
    "Asset",
    "Observed",
    "OpenAICompatibleAdapter",
    "ProbeResult",
    "StreamTranslator",
    "UpstreamContext",
    "UpstreamError",
    "UpstreamRequest",
    "openai_error_message",
]

# The OpenAI path of each operation (transcription also serves translations).
OPENAI_PATHS: Mapping[str, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "transcription": "/v1/audio/transcriptions",
    "translation": "/v1/audio/translations",
    "speech": "/v1/audio/speech",
    "image": "/v1/images/generations",
}


class UpstreamError(Exception):
    """An upstream answered something an adapter could not use (bad status, bad payload)."""


@dataclass(frozen=True, slots=True)
class UpstreamContext:
    """What an adapter factory receives for one upstream."""

    upstream_id: str
    base_url: str
    client: httpx.AsyncClient
    timeout_s: float = 5.0
    configured_assets: tuple[Asset, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    # How long `load` keeps a model in memory (the upstream's `keep_alive`); None: the
    # adapter's own default.
    keep_alive: str | int | None = None
    # How chat is sent, for adapters of servers with two APIs (Ollama: "native" `/api/chat`
    # or "openai" `/v1`), from the upstream's `dialect`.
    dialect: str = "native"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict. `ok` False with a short `reason` ("connect refused", "HTTP 503")."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """How to send one client request upstream.

    For JSON operations `body` is the JSON object to send. For multipart operations
    (transcription, translation) `fields` are the form fields to send before the file part,
    and `file_field` is the name under which the uploaded file is sent. `notes` are private
    to the adapter: never sent, they carry what `build_request` decided (say, the format the
    client asked for) to `translate_response`, since one adapter serves concurrent requests.
    """

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    fields: tuple[tuple[str, str], ...] = ()
    file_field: str = "file"
    headers: Mapping[str, str] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)


class StreamTranslator(Protocol):
    """Turns a streamed upstream answer in another framing into OpenAI SSE, as it comes.

    `feed` takes the upstream bytes as read (a line or an event may be split across reads)
    and returns the SSE bytes complete so far (`data: {...}\n\n` ... `data: [DONE]\n\n`);
    `flush` returns the rest at the end of the answer. `failed` turns True once the answer
    proved broken (the translator then ended the stream with one SSE error event): the
    relay counts the stream as failed.
    """

    failed: bool

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


def openai_error_message(status: int, body: bytes) -> str:
    """The message of an error body in the OpenAI shape (or a few common variants)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return text[:500] if text else f"upstream answered HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(data.get("message"), str):
            return data["message"]
    return f"upstream answered HTTP {status}"


class Adapter:
    """Base adapter. Subclasses override what their upstream does differently."""

    kind: ClassVar[str] = ""
    # Whether `load` and `unload` work: the gateway then loads a cold model before sending
    # to it, and unloads idle ones to make room (geniehive/demand.py).
    loads_models: ClassVar[bool] = False
    # The client dialects (geniehive/dialects/: "messages", "responses") the upstream speaks
    # itself: such requests are passed through instead of translated onto chat.
    native_dialects: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: UpstreamContext) -> None:
        self.ctx = ctx
        self.client = ctx.client

    def url(self, path: str) -> str:
        return self.ctx.base_url.rstrip("/") + path

    async def get_json(self, path: str) -> Any:
        """GET `path` with the key and timeout; its JSON. Raises UpstreamError on a non-200 or
        non-JSON answer, httpx.HTTPError when the upstream cannot be reached."""
        response = await self.client.get(
            self.url(path), headers=self.ctx.auth_headers, timeout=self.ctx.timeout_s
        )
        if response.status_code != 200:
            raise UpstreamError(f"GET {path} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"GET {path} answered a body that is not JSON") from exc

    async def get_text(self, path: str) -> str | None:
        """GET `path` with the key and timeout; its text on a 200, else None (never raising):
        for advisory readings such as a `/metrics` page."""
        try:
            response = await self.client.get(
                self.url(path), headers=self.ctx.auth_headers, timeout=self.ctx.timeout_s
            )
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    async def discover(self) -> list[Asset]:
        """The models the upstream serves now. Raises UpstreamError or httpx.HTTPError."""
        return list(self.ctx.configured_assets)

    async def probe(self) -> ProbeResult:
        """A liveness check that spends no tokens."""
        raise NotImplementedError

    async def probe_get(
        self, path: str, verdict: Callable[[int, bytes], ProbeResult] | None = None
    ) -> ProbeResult:
        """GET `path` on the upstream and judge the answer: the usual body of `probe()`.

        `verdict(status, body)` judges an answer (by default: healthy on 200). A timeout or a
        connection failure is unhealthy with a short reason; nothing is raised.
        """
        try:
            response = await self.client.get(
                self.url(path), headers=self.ctx.auth_headers, timeout=self.ctx.timeout_s
            )
        except httpx.TimeoutException:
            return ProbeResult(False, "timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(False, f"unreachable: {type(exc).__name__}")
        if verdict is None:
            return ProbeResult(response.status_code == 200, f"HTTP {response.status_code}")
        return verdict(response.status_code, response.content)

    async def observe(self) -> Observed | None:
        """Load metrics (optional)."""
        return None

    def build_request(
        self,
        operation: str,
        model: str,
        body: Mapping[str, Any] | None = None,
        fields: Sequence[tuple[str, str]] = (),
    ) -> UpstreamRequest:
        """How to send a request: OpenAI passthrough with `model` rewritten by default."""
        path = OPENAI_PATHS[operation]
        if body is not None:
            if body.get("model") != model:
                body = {**body, "model": model}
            return UpstreamRequest("POST", path, body=body, headers=self.ctx.auth_headers)
        rewritten = tuple((k, model if k == "model" else v) for k, v in fields)
        if not any(k == "model" for k, _ in fields):
            rewritten = (("model", model), *rewritten)
        return UpstreamRequest("POST", path, fields=rewritten, headers=self.ctx.auth_headers)

    def thinking_off(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the body with model "thinking" turned off in this upstream's terms.

        Called only when the client expressed no choice. Default: the
        `chat_template_kwargs.enable_thinking = false` form llama.cpp and vLLM honour.
        """
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs.setdefault("enable_thinking", False)
        return {**body, "chat_template_kwargs": kwargs}

    def parse_error(self, status: int, body: bytes) -> str:
        """The human message of an upstream error answer."""
        return openai_error_message(status, body)

    def translate_response(
        self, operation: str, status: int, content_type: str, body: bytes, request: UpstreamRequest
    ) -> tuple[int, str, bytes]:
        """Turn a non-streamed upstream answer into the OpenAI answer (default: as is)."""
        return status, content_type, body

    def stream_translator(self, request: UpstreamRequest) -> StreamTranslator | None:
        """The translator of a streamed answer to `request` into OpenAI SSE, for upstreams
        that do not stream SSE themselves; None (the default): relayed as SSE, as is."""
        return None

    async def load(self, model: str) -> None:
        raise NotImplementedError(f"{self.kind} adapter cannot load models")

    async def unload(self, model: str) -> None:
        raise NotImplementedError(f"{self.kind} adapter cannot unload models")

    async def tokenize(self, model: str, text: str) -> int | None:
        """How many tokens `text` is for `model`, by the upstream's own tokenizer; None when
        the upstream has no tokenizer endpoint or could not answer (never raises)."""
        return None


def parse_openai_models(payload: Any) -> list[Asset]:
    """Assets from an OpenAI `/v1/models` list. Raises UpstreamError on a foreign shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise UpstreamError("expected an OpenAI model list with a 'data' array")
    assets = []
    for item in payload["data"]:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            context = item.get("max_model_len") or item.get("context_length")
            assets.append(
                Asset(
                    asset_id=item["id"],
                    loaded=True,
                    context_length=context if isinstance(context, int) else None,
                )
            )
    return assets


class OpenAICompatibleAdapter(Adapter):
    """Any OpenAI-compatible server: `/v1/models` lists what it serves and probes it."""

    kind = "openai"
    models_path = "/v1/models"

    async def discover(self) -> list[Asset]:
        return parse_openai_models(await self.get_json(self.models_path))

    async def probe(self) -> ProbeResult:
        return await self.probe_get(self.models_path, _below_500)


def _below_500(status: int, body: bytes) -> ProbeResult:
    # Any answer short of a server error means the server is up (a 401 from a server that
    # wants a key still proves it is alive).
    return ProbeResult(status < 500, f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """What a plugin module exposes as `ADAPTER`."""

    kind: str
    api_version: int
    factory: Callable[[UpstreamContext], Adapter]
    operations: frozenset[str] | set[str] | tuple[str, ...] = frozenset()
    default_port: int | None = None
    description: str = ""
