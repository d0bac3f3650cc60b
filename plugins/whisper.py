"""The adapter for OpenAI-style whisper servers (faster-whisper-server and the like).

These servers take `/v1/audio/transcriptions` and `/v1/audio/translations` as OpenAI does, but
list no models (the configured assets are what they serve, always loaded), ignore the `model`
form field, and answer only `json` and `verbose_json`. For `text`, `srt` and `vtt` this
adapter asks for `verbose_json` and renders the format from its segments, answering
`text/plain; charset=utf-8` for all three as OpenAI does. Errors come as FastAPI's
`{"detail": ...}` (a string, or a list of validation problems).

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from geniehive.adapters import (
    Adapter,
    AdapterSpec,
    Asset,
    ProbeResult,
    UpstreamRequest,
    openai_error_message,
)

TEXT_TYPE = "text/plain; charset=utf-8"


def render_timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS<sep>mmm`: SRT separates milliseconds with ',', WebVTT with '.'."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _segments(data: Mapping[str, Any]) -> list[tuple[float, float, str]]:
    found = []
    for segment in data.get("segments") or []:
        if isinstance(segment, dict) and isinstance(segment.get("text"), str):
            start, end = segment.get("start", 0.0), segment.get("end", 0.0)
            found.append((float(start), float(end), segment["text"].strip()))
    return found


def render_srt(data: Mapping[str, Any]) -> str:
    """SubRip subtitles from a verbose_json transcript."""
    cues = [
        f"{index}\n{render_timestamp(start, ',')} --> {render_timestamp(end, ',')}\n{text}\n\n"
        for index, (start, end, text) in enumerate(_segments(data), 1)
    ]
    return "".join(cues)


def render_vtt(data: Mapping[str, Any]) -> str:
    """WebVTT subtitles from a verbose_json transcript."""
    cues = [
        f"{render_timestamp(start, '.')} --> {render_timestamp(end, '.')}\n{text}\n\n"
        for start, end, text in _segments(data)
    ]
    return "WEBVTT\n\n" + "".join(cues)


def render_text(data: Mapping[str, Any]) -> str:
    """The plain transcript, one trailing newline."""
    text = data.get("text")
    if not isinstance(text, str):
        text = " ".join(t for _, _, t in _segments(data))
    return text.strip() + "\n"


RENDERERS = {"text": render_text, "srt": render_srt, "vtt": render_vtt}


def parse_whisper_error(status: int, body: bytes) -> str:
    """The message of an error answer, FastAPI validation lists included."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and detail:
        problems = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                where = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
                problems.append(f"{where}: {item['msg']}" if where else item["msg"])
        if problems:
            return "; ".join(problems)
    return openai_error_message(status, body)


def bad_answer(message: str) -> tuple[int, str, bytes]:
    """A 502 in the OpenAI error shape, for an upstream answer that cannot be translated."""
    error = {"message": message, "type": "server_error", "param": None,
             "code": "upstream_bad_answer"}
    return 502, "application/json", json.dumps({"error": error}).encode()


class WhisperAdapter(Adapter):
    """An OpenAI-style whisper server without a model list."""

    kind = "whisper"

    async def discover(self) -> list[Asset]:
        # The server lists nothing; what it was configured with is what it serves.
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
        request = super().build_request(operation, model, body=body, fields=fields)
        wanted = dict(fields).get("response_format", "json")
        if wanted not in RENDERERS:  # formats rendered here from verbose_json
            return request
        asked = tuple(
            (k, "verbose_json" if k == "response_format" else v) for k, v in request.fields
        )
        return replace(request, fields=asked, notes={"response_format": wanted})

    def parse_error(self, status: int, body: bytes) -> str:
        return parse_whisper_error(status, body)

    def translate_response(
        self, operation: str, status: int, content_type: str, body: bytes, request: UpstreamRequest
    ) -> tuple[int, str, bytes]:
        wanted = request.notes.get("response_format")
        if wanted not in RENDERERS or status != 200:
            return status, content_type, body
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return bad_answer("the whisper server answered verbose_json that is not JSON")
        if not isinstance(data, dict):
            return bad_answer("the whisper server answered verbose_json that is not an object")
        return 200, TEXT_TYPE, RENDERERS[wanted](data).encode()


ADAPTER = AdapterSpec(
    kind="whisper",
    api_version=1,
    factory=WhisperAdapter,
    operations=frozenset({"transcription"}),
    default_port=8000,
    description="OpenAI-style whisper servers: configured models, text/srt/vtt rendered here",
)
