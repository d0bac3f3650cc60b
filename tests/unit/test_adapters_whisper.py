"""The adapter for OpenAI-style whisper servers (faster-whisper-server), on recorded payloads.

Claims: the configured assets are what it serves, loaded; the probe is `/health`; text, srt
and vtt are asked as verbose_json and rendered here as OpenAI answers them (text/plain);
json and verbose_json pass through untouched; FastAPI error details become one message.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, ProbeResult, UpstreamRequest
from plugins.whisper import (
    ADAPTER,
    WhisperAdapter,
    parse_whisper_error,
    render_srt,
    render_text,
    render_timestamp,
    render_vtt,
)
from tests.fakes.transport import connect_refused, open_adapter, routes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.")
SRT = (
    "1\n00:00:00,000 --> 00:00:04,200\nAnd so, my fellow Americans,\n\n"
    "2\n00:00:04,200 --> 00:00:10,980\n"
    "ask not what your country can do for you, ask what you can do for your country.\n\n"
)
VTT = (
    "WEBVTT\n\n"
    "00:00:00.000 --> 00:00:04.200\nAnd so, my fellow Americans,\n\n"
    "00:00:04.200 --> 00:00:10.980\n"
    "ask not what your country can do for you, ask what you can do for your country.\n\n"
)
FORM = (("model", "whisper-1"), ("language", "en"), ("response_format", "srt"))


def verbose() -> bytes:
    return (FIXTURES / "whisper_verbose.json").read_bytes()


# --- pure renderers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "separator", "expected"),
    [(0.0, ",", "00:00:00,000"), (10.98, ",", "00:00:10,980"), (3725.5, ".", "01:02:05.500"),
     (0.0004, ".", "00:00:00.000"), (-1.0, ",", "00:00:00,000")],
)
def test_timestamps(seconds, separator, expected):
    assert render_timestamp(seconds, separator) == expected


def test_renderers_on_the_recorded_verbose_json():
    data = json.loads(verbose())
    assert render_srt(data) == SRT
    assert render_vtt(data) == VTT
    assert render_text(data) == TEXT + "\n"


def test_text_falls_back_to_the_segments():
    data = {"segments": [{"start": 0, "end": 1, "text": " a"}, {"start": 1, "end": 2,
                                                                  "text": " b "}]}
    assert render_text(data) == "a b\n"
    assert render_srt({"segments": []}) == ""
    assert render_vtt({}) == "WEBVTT\n\n"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (422, (FIXTURES / "faster_whisper_error.json").read_bytes(),
         "response_format: Input should be 'json' or 'verbose_json'"),
        (422, b'{"detail": [{"loc": ["body"], "msg": "Field required"}]}', "Field required"),
        (400, b'{"detail": "Unsupported audio format"}', "Unsupported audio format"),
        (500, b"Internal Server Error", "Internal Server Error"),
    ],
)
def test_error_messages(status, body, message):
    assert parse_whisper_error(status, body) == message


def test_spec():
    assert (ADAPTER.kind, ADAPTER.operations) == ("whisper", frozenset({"transcription"}))


# --- through the adapter --------------------------------------------------------------------


async def test_discover_returns_the_configured_assets_loaded():
    configured = (Asset(asset_id="Systran/faster-whisper-small", aliases=("stt",)),)
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter, assets=configured) as adapter:
            assets = await adapter.discover()
    assert assets == [Asset(asset_id="Systran/faster-whisper-small", aliases=("stt",),
                            loaded=True)]


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (routes({("GET", "/health"): httpx.Response(200, text="OK")}, []),
         ProbeResult(True, "HTTP 200")),
        (routes({("GET", "/health"): httpx.Response(503)}, []), ProbeResult(False, "HTTP 503")),
        (connect_refused, ProbeResult(False, "unreachable: ConnectError")),
    ],
)
async def test_probe(handler, expected):
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter, handler) as adapter:
            assert await adapter.probe() == expected


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
async def test_rendered_formats_are_asked_as_verbose_json(fmt):
    fields = (("model", "stt"), ("response_format", fmt), ("language", "en"))
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter) as adapter:
            request = adapter.build_request("transcription", "small", fields=fields)
    assert request == UpstreamRequest(
        "POST", "/v1/audio/transcriptions",
        fields=(("model", "small"), ("response_format", "verbose_json"), ("language", "en")),
        notes={"response_format": fmt},
    )


@pytest.mark.parametrize("fields", [(("response_format", "verbose_json"),), ()])
async def test_json_formats_pass_through(fields):
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter) as adapter:
            request = adapter.build_request("translation", "small", fields=fields)
            answer = adapter.translate_response(
                "translation", 200, "application/json", verbose(), request
            )
    assert request == UpstreamRequest(
        "POST", "/v1/audio/translations", fields=(("model", "small"), *fields)
    )
    assert answer == (200, "application/json", verbose())


@pytest.mark.parametrize(("fmt", "expected"), [("text", TEXT + "\n"), ("srt", SRT), ("vtt", VTT)])
async def test_translate_response_renders_the_asked_format_as_text_plain(fmt, expected):
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter) as adapter:
            request = adapter.build_request(
                "transcription", "small", fields=(("response_format", fmt),)
            )
            answer = adapter.translate_response(
                "transcription", 200, "application/json", verbose(), request
            )
    assert answer == (200, "text/plain; charset=utf-8", expected.encode())


async def test_an_unreadable_verbose_json_becomes_a_502_openai_error():
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter) as adapter:
            request = adapter.build_request("transcription", "s", fields=FORM)
            status, content_type, body = adapter.translate_response(
                "transcription", 200, "application/json", b"<html>", request
            )
    assert (status, content_type) == (502, "application/json")
    assert json.loads(body) == {"error": {
        "message": "the whisper server answered verbose_json that is not JSON",
        "type": "server_error", "param": None, "code": "upstream_bad_answer",
    }}


async def test_parse_error_through_the_adapter():
    body = (FIXTURES / "faster_whisper_error.json").read_bytes()
    with trio.fail_after(5):
        async with open_adapter(WhisperAdapter) as adapter:
            assert adapter.parse_error(422, body) == (
                "response_format: Input should be 'json' or 'verbose_json'"
            )
