"""A whisper.cpp `whisper-server` emulator over the recording fake upstream.

`FakeWhisperCpp` is a `FakeUpstream` (same recording of multipart fields and file digests,
same fault modes) that speaks whisper-server's dialect instead of OpenAI's:

- ``POST /inference`` (multipart: ``file``, ``response_format``, ``translate``, ``language``,
  ...) answers ``json`` ``{"text": " ...\\n"}`` (segment lines, leading spaces), ``text`` as
  text/html, ``srt`` as application/x-subrip, ``vtt`` as text/vtt, ``verbose_json`` with
  segments; an unknown format answers as ``json``; no ``file`` answers HTTP 200
  ``{"error": "no 'file' field in the request"}``, as whisper-server does;
- ``GET /health`` ``{"status":"ok"}``, ``GET /`` an HTML page, ``POST /load`` plain text;
- anything else 404 ``File Not Found (<path>)`` as text/plain. There is no ``/v1/*``.

Run alone: ``python -m tests.fakes.whispercpp --port 0 --transcript "hello"``.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from tests.fakes import replies
from tests.fakes.process import serve_until_signalled
from tests.fakes.replies import Reply
from tests.fakes.upstream import FakeUpstream

TRUE_WORDS = ("true", "1", "yes", "y")


def render_inference(fields: dict[str, str], text: str) -> Reply:
    """whisper-server's answer to one inference, as one segment of one second."""
    fmt = fields.get("response_format", "json")
    line = " " + text
    if fmt == "text":
        return Reply(content_type="text/html; charset=utf-8", body=f"{line}\n".encode())
    if fmt == "srt":
        body = f"1\n00:00:00,000 --> 00:00:01,000\n{line}\n\n"
        return Reply(content_type="application/x-subrip", body=body.encode())
    if fmt == "vtt":
        body = f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{line}\n\n"
        return Reply(content_type="text/vtt", body=body.encode())
    if fmt == "verbose_json":
        task = "translate" if fields.get("translate", "") in TRUE_WORDS else "transcribe"
        segment = {"id": 0, "text": line, "start": 0.0, "end": 1.0, "tokens": [50364],
                   "temperature": 0.0, "avg_logprob": -0.25, "no_speech_prob": 0.01}
        return replies.json_reply({
            "task": task, "language": "english", "duration": 1.0, "text": f"{line}\n",
            "segments": [segment], "detected_language": "english",
            "detected_language_probability": 0.97, "language_probabilities": {"en": 0.97},
        })
    return replies.json_reply({"text": f"{line}\n"})


class FakeWhisperCpp(FakeUpstream):
    """whisper-server: one model, `/inference`, `/health`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "whispercpp")
        super().__init__(["ggml-base.en"], **kwargs)

    def _route(self, record: dict[str, Any]) -> Reply:
        key = (record["method"], record["path"])
        if key == ("POST", "/inference"):
            return self._inference(record)
        if key == ("GET", "/health"):
            return replies.json_reply({"status": "ok"})
        if key == ("GET", "/"):
            return Reply(content_type="text/html", body=b"<html><h1>Whisper.cpp Server</h1>")
        if key == ("POST", "/load"):
            return Reply(content_type="application/text", body=b"Load was successful!")
        return Reply(status=404, content_type="text/plain",
                     body=f"File Not Found ({record['path']})".encode())

    def _inference(self, record: dict[str, Any]) -> Reply:
        if "form_error" in record:
            return Reply(status=400, content_type="text/plain", body=b"Invalid request")
        upload = record["files"].get("file")
        if upload is None:
            return replies.json_reply({"error": "no 'file' field in the request"})
        fields = record["form"]
        task = "translation" if fields.get("translate", "") in TRUE_WORDS else "transcription"
        text = self.transcript or f"fake {task} of {upload['filename']}"
        return render_inference(fields, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.whispercpp",
                                     description="A whisper.cpp whisper-server emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--transcript", default=None)
    args = parser.parse_args(argv)
    fake = FakeWhisperCpp(transcript=args.transcript)
    trio.run(serve_until_signalled, fake, args.host, args.port)


if __name__ == "__main__":
    main()
