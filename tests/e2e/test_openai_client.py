"""`geniehive serve` and a fake upstream as real processes, driven by the real `openai` client."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.harness import (
    Proc,
    closing,
    spawn_fake,
    spawn_gateway,
    stop,
    upstream_toml,
    write_config,
)

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "hello from the sdk"}]


async def start(nursery: trio.Nursery, tmp_path: Path, extra: str = "") -> tuple[Proc, Proc]:
    fake = await spawn_fake(nursery, "m1", "m2")
    config = write_config(
        tmp_path,
        extra + upstream_toml("fake", fake.port, ["chat", "completion", "embeddings",
                                                   "transcription"]),
    )
    gateway = await spawn_gateway(nursery, config)
    return fake, gateway




def sdk(gateway: Proc) -> openai.OpenAI:
    return closing(openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0,
                                   timeout=20))



async def fake_control(fake: Proc, path: str, body: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        if body is None:
            return await client.get(path)
        return await client.post(path, json=body)


async def test_sdk_round_trip(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)
        client = sdk(gateway)

        def run() -> dict:
            out: dict = {}
            out["models"] = {m.id for m in client.models.list()}
            chat = client.chat.completions.create(model="m1", messages=CHAT)
            out["chat"] = chat.choices[0].message.content
            stream = client.chat.completions.create(model="m1", messages=CHAT, stream=True)
            out["stream"] = "".join(c.choices[0].delta.content or "" for c in stream
                                    if c.choices)
            comp = client.completions.create(model="m1", prompt="say hi")
            out["completion"] = comp.choices[0].text
            out["emb_default"] = client.embeddings.create(model="m1", input="abc")
            out["emb_float"] = client.embeddings.create(model="m1", input="abc",
                                                         encoding_format="float")
            out["transcript"] = client.audio.transcriptions.create(
                model="m1", file=("hello.wav", b"RIFF....WAVEfmt ", "audio/wav")
            )
            return out

        out = await trio.to_thread.run_sync(run)
        assert {"m1", "m2", "general_assistant"} <= out["models"]
        assert out["chat"] == "echo: hello from the sdk"
        assert out["stream"] == "echo: hello from the sdk"
        assert out["completion"]
        assert out["emb_default"].data[0].embedding == out["emb_float"].data[0].embedding
        assert len(out["emb_float"].data[0].embedding) == 8
        assert out["transcript"].text
        recorded = (await fake_control(fake, "/_fake/requests")).json()
        embeddings = [r for r in recorded if r["path"] == "/v1/embeddings"]
        # The SDK asks for base64 by default; the gateway encodes it itself.
        assert all("encoding_format" not in (r.get("json") or {}) or
                   r["json"]["encoding_format"] == "float" for r in embeddings)
        assert await stop(gateway) == 0
        await stop(fake)


async def test_first_chunk_reaches_the_sdk_while_upstream_holds(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)
        await fake_control(fake, "/_fake/fault",
                           {"mode": "hold_stream", "after_chunks": 1, "times": 1,
                            "path": "/v1/chat/completions"})
        client = sdk(gateway)
        first_seen = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def run() -> str:
            stream = client.chat.completions.create(model="m1", messages=CHAT, stream=True)
            parts = []
            for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")
                if len(parts) == 1:
                    trio.from_thread.run_sync(first_seen.set, trio_token=token)
            return "".join(parts)

        async with trio.open_nursery() as inner:
            result: list[str] = []

            async def consume() -> None:
                result.append(await trio.to_thread.run_sync(run))

            inner.start_soon(consume)
            await first_seen.wait()  # the upstream still holds the rest
            await fake_control(fake, "/_fake/release", {})
        assert result == ["echo: hello from the sdk"]
        await stop(gateway)
        await stop(fake)


async def test_sigterm_lets_a_stream_finish_then_exits_zero(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)
        await fake_control(fake, "/_fake/fault",
                           {"mode": "hold_stream", "after_chunks": 1, "times": 1,
                            "path": "/v1/chat/completions"})
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            body = {"model": "m1", "messages": CHAT, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                gateway.process.send_signal(signal.SIGTERM)
                # The gateway is draining while the upstream still holds the rest.
                await gateway.wait_for_text("shutting down gracefully")
                await fake_control(fake, "/_fake/release", {})
                rest = b"".join([c async for c in chunks])
        assert first.startswith(b"data: ")
        assert rest.endswith(b"data: [DONE]\n\n")
        assert await gateway.process.wait() == 0
        await stop(fake)


async def test_client_disconnect_cancels_upstream_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)
        await fake_control(fake, "/_fake/fault",
                           {"mode": "hold_stream", "after_chunks": 1, "times": 1,
                            "path": "/v1/chat/completions"})
        body = {"model": "m1", "messages": CHAT, "stream": True}
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            first = trio.Event()
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async with trio.open_nursery() as inner:

                    async def read() -> None:
                        async for _ in response.aiter_raw():
                            first.set()

                    inner.start_soon(read)
                    await first.wait()
                    inner.cancel_scope.cancel()
            gone = trio.current_time()
        while True:
            records = (await fake_control(fake, "/_fake/requests")).json()
            chats = [r for r in records if r["path"] == "/v1/chat/completions"]
            if chats and chats[-1]["cancelled"]:
                break
            await trio.sleep(0.005)
        # Within milliseconds when idle; the bound leaves room for a busy machine (without the
        # cancellation the upstream would hold until the test's deadline).
        assert trio.current_time() - gone < 0.5
        await stop(gateway)
        await stop(fake)


async def test_non_loopback_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    text = config.read_text().replace('bind = ["127.0.0.1:0"]', 'bind = ["0.0.0.0:0"]')
    config.write_text(text)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 2
    assert b"refusing to start in open mode" in result.stderr


async def test_a_registry_from_a_newer_geniehive_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import sqlite3

    config = write_config(tmp_path, "")
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "geniehive.sqlite3") as db:
        db.execute("PRAGMA user_version = 999")
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 1
    assert b"newer than this geniehive knows" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_json_logs_carry_request_and_entity_ids(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import json as jsonlib

    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path, '[logging]\nformat = "json"\n')
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "m1", "messages": CHAT},
                headers={"X-Request-Id": "trace-me-7", "Authorization": "Bearer sk-secret-9"},
            )
            assert response.status_code == 200
        assert await stop(gateway) == 0
        lines = [jsonlib.loads(line) for line in gateway.text().splitlines()
                 if line.startswith("{")]
        requests = [r for r in lines if r["logger"] == "geniehive.request"]
        assert any("id=trace-me-7" in r["message"] and "service=fake/chat" in r["message"]
                   for r in requests)
        assert any(r["message"].startswith("plugin loaded kind=openai") for r in lines)
        assert "sk-secret-9" not in gateway.text()
        assert "hello from the sdk" not in gateway.text()  # never prompt text
        await stop(fake)


async def test_sigterm_does_not_wait_for_idle_keep_alive_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)  # shutdown_grace_s = 5
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            # The connection stays open and idle after answers from both halves of the app.
            assert (await client.get("/v1/models")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            began = trio.current_time()
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.process.wait() == 0
            assert trio.current_time() - began < 2
        await stop(fake)


async def test_ready_only_after_discovery_and_new_models_appear_without_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, gateway = await start(nursery, tmp_path)  # discovery every 0.2 s
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            # The gateway listens only once every task started: ready at first sight, with
            # what the upstream serves already discovered.
            assert (await client.get("/readyz")).status_code == 200
            ids = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
            assert {"m1", "m2"} <= ids
            await fake_control(fake, "/_fake/models", {"id": "pulled-later"})
            began = trio.current_time()
            while "pulled-later" not in ids:
                await trio.sleep(0.05)
                ids = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
            assert trio.current_time() - began < 1.0
        assert await stop(gateway) == 0
        await stop(fake)
