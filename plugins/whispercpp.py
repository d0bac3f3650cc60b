"""The whisper.cpp (`whisper-server`) adapter: OpenAI audio requests re-expressed for `/inference`.

whisper-server serves one model, lists none, and takes every request at `POST /inference`
as multipart: `file`, `response_format` (json, text, srt, vtt, verbose_json), `temperature`,
`language`, `prompt` and its own knobs; a translation is `translate=true`. It has no `model`
field, so the client's is dropped. Its answers are translated back to OpenAI's: `json` keeps
only `{"text"}` with the per-segment line breaks joined, and text, srt and vtt are labelled
`text/plain; charset=utf-8` (it says text/html, application/x-subrip, text/vtt). It reports
bad input (no file, unreadable audio) as HTTP 200 with `{"error": "..."}`, which becomes a 400.
`GET /health` answers `{"status": "ok"}`.

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from geniehive.adapters import Adapter, AdapterSpec, Asset, ProbeResult, UpstreamRequest

INFERENCE_PATH = "/inference"
FORMATS = frozenset({"json", "text", "srt", "vtt", "verbose_json"})
TEXT_TYPE = "text/plain; charset=utf-8"


def join_segment_lines(text: str) -> str:
    """whisper.cpp's transcript (one ` segment` per line) as OpenAI's single line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _error(status: int, message: str, code: str) -> tuple[int, str, bytes]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return status, "application/json", json.dumps({"error": error}).encode()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def translate_inference(wanted: str, content_type: str, body: bytes) -> tuple[int, str, bytes]:
    """An `/inference` answer (HTTP 200) in the OpenAI shape of the `wanted` format."""
    data = _json_object(body) if "json" in content_type.lower() else None
    if data is not None and isinstance(data.get("error"), str) and "text" not in data:
        return _error(400, data["error"], "upstream_error")  # its input errors come as 200
    if wanted in ("srt", "vtt"):
        return 200, TEXT_TYPE, body
    if wanted == "text":
        text = join_segment_lines(body.decode("utf-8", "replace"))
        return 200, TEXT_TYPE, (text + "\n").encode()
    if data is None or not isinstance(data.get("text"), str):
        return _error(502, "whisper-server answered no JSON transcript", "upstream_bad_answer")
    if wanted == "verbose_json":
        return 200, "application/json", json.dumps({**data, "text": data["text"].strip()}).encode()
    return 200, "application/json", json.dumps({"text": join_segment_lines(data["text"])}).encode()


def inference_fields(
    operation: str, fields: Sequence[tuple[str, str]]
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The `/inference` form fields for an OpenAI audio form, and the format the client wants."""
    wanted = dict(fields).get("response_format", "json")
    if wanted not in FORMATS:
        wanted = "json"  # whisper-server answers {"text"} for a format it does not know
    kept = [(k, v) for k, v in fields if k not in ("model", "response_format", "translate")]
    kept.append(("response_format", wanted))
    if operation == "translation":
        kept.append(("translate", "true"))
    return tuple(kept), wanted


class WhisperCppAdapter(Adapter):
    """whisper.cpp's whisper-server."""

    kind = "whispercpp"

    async def discover(self) -> list[Asset]:
        # One model, loaded at start, never listed: the configured asset names it.
        return [replace(asset, loaded=True) for asset in self.ctx.configured_assets]

    async def probe(self) -> ProbeResult:
        return await self.probe_get("/health")

    def build_request(
        self,
        operation: str,
        model: str,
        body: Mapping[str, Any] | None = None,
        fields: Sequence[tuple[str, str]] = (),
    ) -> UpstreamRequest:
        form, wanted = inference_fields(operation, fields)
        return UpstreamRequest(
            "POST", INFERENCE_PATH, fields=form, headers=self.ctx.auth_headers,
            notes={"response_format": wanted},
        )

    def translate_response(
        self, operation: str, status: int, content_type: str, body: bytes, request: UpstreamRequest
    ) -> tuple[int, str, bytes]:
        if status != 200:
            return status, content_type, body
        return translate_inference(request.notes.get("response_format", "json"), content_type, body)


ADAPTER = AdapterSpec(
    kind="whispercpp",
    api_version=1,
    factory=WhisperCppAdapter,
    operations=frozenset({"transcription"}),
    default_port=8080,
    description="whisper.cpp whisper-server: OpenAI audio requests sent to /inference",
)
