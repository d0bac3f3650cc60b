"""The whisper.cpp adapter: OpenAI audio forms re-expressed for `POST /inference` and back.

Claims: the form goes to `/inference` without `model`, with the response format kept (json
when unknown) and `translate=true` for translations; answers come back in OpenAI's shape
(`{"text"}` on one line, text/srt/vtt as text/plain); whisper-server's HTTP-200 errors become
400 OpenAI errors; the configured assets are what it serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import Asset, ProbeResult, UpstreamRequest
from plugins.whispercpp import (
    ADAPTER,
    WhisperCppAdapter,
    inference_fields,
    join_segment_lines,
    translate_inference,
)
from tests.fakes.transport import open_adapter, read_timeout, routes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"
TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.")
PLAIN = "text/plain; charset=utf-8"


def inference() -> bytes:
    return (FIXTURES / "whispercpp_inference.json").read_bytes()


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- pure parts -----------------------------------------------------------------------------


def test_segment_lines_join_into_one_line():
    assert join_segment_lines(json.loads(inference())["text"]) == TEXT
    assert join_segment_lines("") == ""


@pytest.mark.parametrize(
    ("operation", "fields", "expected"),
    [
        ("transcription",
         [("model", "whisper-1"), ("language", "en"), ("response_format", "srt"),
          ("temperature", "0.2")],
         ((("language", "en"), ("temperature", "0.2"), ("response_format", "srt")), "srt")),
        ("transcription", [("model", "whisper-1")], ((("response_format", "json"),), "json")),
        ("translation", [("prompt", "names: Ann"), ("response_format", "verbose_json")],
         ((("prompt", "names: Ann"), ("response_format", "verbose_json"),
           ("translate", "true")), "verbose_json")),
        ("transcription", [("response_format", "diarized_json"), ("translate", "true")],
         ((("response_format", "json"),), "json")),
    ],
)
def test_inference_fields(operation, fields, expected):
    assert inference_fields(operation, fields) == expected


def test_json_answer_becomes_openais_single_text():
    status, content_type, body = translate_inference("json", "application/json", inference())
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"text": TEXT})


def test_verbose_json_keeps_the_segments_and_trims_the_text():
    upstream = {"task": "translate", "language": "german", "duration": 2.0, "text": " Hi.\n",
                "segments": [{"id": 0, "text": " Hi.", "start": 0.0, "end": 2.0}]}
    status, content_type, body = translate_inference(
        "verbose_json", "application/json", json.dumps(upstream).encode()
    )
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {**upstream, "text": "Hi."}


def test_text_is_relabelled_and_joined():
    raw = b" And so, my fellow Americans,\n ask not.\n"
    assert translate_inference("text", "text/html; charset=utf-8", raw) == (
        200, PLAIN, b"And so, my fellow Americans, ask not.\n"
    )


@pytest.mark.parametrize(
    ("fmt", "content_type", "raw"),
    [("srt", "application/x-subrip", b"1\n00:00:00,000 --> 00:00:01,000\n Hi.\n\n"),
     ("vtt", "text/vtt", b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n Hi.\n\n")],
)
def test_subtitles_pass_as_text_plain(fmt, content_type, raw):
    assert translate_inference(fmt, content_type, raw) == (200, PLAIN, raw)


@pytest.mark.parametrize("fmt", ["json", "srt", "text"])
def test_its_http_200_errors_become_400(fmt):
    status, content_type, body = translate_inference(
        fmt, "application/json", b'{"error":"failed to read audio data"}'
    )
    assert (status, content_type) == (400, "application/json")
    assert json.loads(body) == error_body("failed to read audio data", "upstream_error")


def test_a_json_answer_without_text_is_a_502():
    status, _, body = translate_inference("json", "application/json", b"[1]")
    assert status == 502
    assert json.loads(body) == error_body(
        "whisper-server answered no JSON transcript", "upstream_bad_answer", "server_error"
    )


def test_spec():
    assert (ADAPTER.kind, ADAPTER.default_port) == ("whispercpp", 8080)
    assert ADAPTER.operations == frozenset({"transcription"})


# --- through the adapter --------------------------------------------------------------------


async def test_build_request_targets_inference_without_model():
    fields = (("model", "whisper-1"), ("response_format", "text"))
    with trio.fail_after(5):
        async with open_adapter(WhisperCppAdapter, api_key="k") as adapter:
            request = adapter.build_request("transcription", "ggml-base.en", fields=fields)
    assert request == UpstreamRequest(
        "POST", "/inference", fields=(("response_format", "text"),),
        headers={"authorization": "Bearer k"}, notes={"response_format": "text"},
    )


async def test_translate_response_uses_the_format_build_request_noted():
    with trio.fail_after(5):
        async with open_adapter(WhisperCppAdapter) as adapter:
            request = adapter.build_request("transcription", "m", fields=())
            answer = adapter.translate_response(
                "transcription", 200, "application/json", inference(), request
            )
            passed = adapter.translate_response("transcription", 204, "", b"", request)
    assert answer == (200, "application/json", json.dumps({"text": TEXT}).encode())
    assert passed == (204, "", b"")


async def test_discover_and_probe():
    seen: list[httpx.Request] = []
    handler = routes({("GET", "/health"): httpx.Response(200, json={"status": "ok"})}, seen)
    configured = (Asset(asset_id="ggml-base.en"),)
    with trio.fail_after(5):
        async with open_adapter(WhisperCppAdapter, handler, assets=configured) as adapter:
            assert await adapter.discover() == [Asset(asset_id="ggml-base.en", loaded=True)]
            assert await adapter.probe() == ProbeResult(True, "HTTP 200")
    assert [r.url.path for r in seen] == ["/health"]


async def test_probe_timeout():
    with trio.fail_after(5):
        async with open_adapter(WhisperCppAdapter, read_timeout) as adapter:
            assert await adapter.probe() == ProbeResult(False, "timed out")
