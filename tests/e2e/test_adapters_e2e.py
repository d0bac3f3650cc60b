"""Each built-in adapter, and a plugin adapter, through a real `geniehive serve` process.

The upstreams are the emulator processes of tests/fakes (Ollama, vLLM, whisper.cpp, a plain
OpenAI fake standing in for llama-server, the plugin guide's Echo server). What is checked is
what a user of that upstream would notice: models appearing without a restart, load figures
steering traffic, thinking turned off in the upstream's own terms, whisper-server's dialect
translated both ways, and a dropped-in plugin serving requests.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import (
    REPO,
    Proc,
    spawn_fake,
    spawn_gateway,
    stop,
    upstream_toml,
    wait_ready,
    write_config,
)

pytestmark = pytest.mark.e2e

DISCOVERY_S = 0.5
# A pass starts at most one interval after a change; the slack covers the pass itself and
# the polling, on a loaded machine.
DISCOVERY_SLACK_S = 1.5
POLL_S = 0.05
DEADLINE_S = 30
HI = [{"role": "user", "content": "hi"}]


def discovery_every(interval_s: float = DISCOVERY_S) -> str:
    return f"\n[discovery]\ninterval_s = {interval_s}\n"


async def wait_for(check: Callable[[], Awaitable[Any]]) -> Any:
    """Poll `check` until it returns something truthy (the caller holds the deadline).

    The state lives in other processes, so there is no event to wait on: polling it is.
    """
    while True:
        found = await check()
        if found:
            return found
        await trio.sleep(POLL_S)


async def listed(client: httpx.AsyncClient, gateway: Proc) -> dict[str, dict[str, Any]]:
    response = await client.get(f"{gateway.url}/v1/models")
    assert response.status_code == 200, response.text
    return {entry["id"]: entry for entry in response.json()["data"]}


async def services(client: httpx.AsyncClient, gateway: Proc) -> dict[str, dict[str, Any]]:
    response = await client.get(f"{gateway.url}/v1/cluster/services")
    assert response.status_code == 200, response.text
    return {s["service_id"]: s for s in response.json()["data"]}


async def chat(client: httpx.AsyncClient, gateway: Proc, model: str,
               **extra: Any) -> httpx.Response:
    return await client.post(f"{gateway.url}/v1/chat/completions",
                             json={"model": model, "messages": HI, **extra})


async def control(client: httpx.AsyncClient, fake: Proc, path: str,
                  body: dict[str, Any]) -> None:
    response = await client.post(f"{fake.url}{path}", json=body)
    assert response.status_code == 200, response.text


async def recorded(client: httpx.AsyncClient, fake: Proc,
                   path: str | None = None) -> list[dict[str, Any]]:
    """The requests a fake received, optionally only those at `path`."""
    response = await client.get(f"{fake.url}/_fake/requests")
    assert response.status_code == 200, response.text
    return [r for r in response.json() if path is None or r["path"] == path]


async def last_body(client: httpx.AsyncClient, fake: Proc, path: str) -> dict[str, Any]:
    records = await recorded(client, fake, path)
    assert records, f"no request reached {path}"
    return records[-1]["json"]


async def start_gateway(nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient,
                        body: str) -> Proc:
    gateway = await spawn_gateway(nursery, write_config(tmp_path, body, roles=False))
    await wait_ready(client, gateway.url)
    return gateway


async def shut(gateway: Proc, *fakes: Proc) -> None:
    """SIGTERM everything; the gateway must exit 0.

    Call it after the test's client is closed: an idle keep-alive connection whose last
    request was a GET holds the gateway's shutdown for the whole grace period.
    """
    assert await stop(gateway) == 0, gateway.text()
    for fake in fakes:
        await stop(fake)


# -- Ollama -----------------------------------------------------------------------------------


async def test_ollama_pull_is_listed_within_one_discovery_interval_and_loaded_follows_ps(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(DEADLINE_S):
        async with httpx.AsyncClient(timeout=10) as client:
            ollama = await spawn_fake(nursery, "qwen3:8b", module="tests.fakes.ollama")
            gateway = await start_gateway(
                nursery, tmp_path, client,
                upstream_toml("ollama", ollama.port, ["chat"], adapter="ollama")
                + discovery_every(),
            )
            before = await listed(client, gateway)
            assert "qwen3:8b" in before
            assert "gemma3:1b" not in before
            # Pulled but never run: /api/ps is empty, so nothing is in memory.
            assert before["qwen3:8b"]["geniehive"]["loaded"] is False

            await control(client, ollama, "/_fake/ollama/models",
                          {"name": "gemma3:1b", "family": "gemma3"})
            pulled_at = trio.current_time()

            async def gemma_listed() -> dict[str, Any] | None:
                return (await listed(client, gateway)).get("gemma3:1b")

            entry = await wait_for(gemma_listed)
            assert trio.current_time() - pulled_at <= DISCOVERY_S + DISCOVERY_SLACK_S
            assert gateway.process.returncode is None  # the same process: no restart
            assert entry["geniehive"]["loaded"] is False
            assert entry["geniehive"]["services"] == ["ollama/chat"]

            # A request loads its model in Ollama; the next pass reads that from /api/ps.
            answer = await chat(client, gateway, "gemma3:1b")
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"
            assert answer.headers["x-geniehive-service"] == "ollama/chat"
            assert answer.headers["x-geniehive-model"] == "gemma3:1b"
            sent = await last_body(client, ollama, "/api/chat")  # Ollama's native chat
            assert sent["model"] == "gemma3:1b"

            async def gemma_loaded() -> bool:
                return (await listed(client, gateway))["gemma3:1b"]["geniehive"]["loaded"]

            await wait_for(gemma_loaded)

            # Evicted (keep_alive 0): gone from /api/ps, so no longer loaded.
            response = await client.post(f"{ollama.url}/api/generate",
                                         json={"model": "gemma3:1b", "keep_alive": 0})
            assert response.json()["done_reason"] == "unload"

            async def gemma_unloaded() -> bool:
                entries = await listed(client, gateway)
                return entries["gemma3:1b"]["geniehive"]["loaded"] is False

            await wait_for(gemma_unloaded)
            assert (await listed(client, gateway))["qwen3:8b"]["geniehive"]["loaded"] is False
        await shut(gateway, ollama)


# -- vLLM -------------------------------------------------------------------------------------


VLLM_MODEL = "Qwen/Qwen3-8B"


async def test_vllm_queue_depth_from_metrics_steers_least_loaded_traffic(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(DEADLINE_S):
        async with httpx.AsyncClient(timeout=10) as client:
            vllm_a = await spawn_fake(nursery, VLLM_MODEL, module="tests.fakes.vllm")
            vllm_b = await spawn_fake(nursery, VLLM_MODEL, module="tests.fakes.vllm")
            gateway = await start_gateway(
                nursery, tmp_path, client,
                '[routing]\nstrategy = "least_loaded"\n'
                + upstream_toml("vllm-a", vllm_a.port, ["chat"], adapter="vllm")
                + upstream_toml("vllm-b", vllm_b.port, ["chat"], adapter="vllm")
                + discovery_every(),
            )

            async def queues_read(a: int, b: int) -> bool:
                seen = await services(client, gateway)
                return (seen["vllm-a/chat"]["observed"]["queue_depth"],
                        seen["vllm-b/chat"]["observed"]["queue_depth"]) == (a, b)

            async def route_four() -> set[str]:
                chosen = set()
                for _ in range(4):
                    answer = await chat(client, gateway, VLLM_MODEL)
                    assert answer.status_code == 200, answer.text
                    assert answer.headers["x-geniehive-model"] == VLLM_MODEL
                    chosen.add(answer.headers["x-geniehive-service"])
                return chosen

            async def chats_received(fake: Proc) -> int:
                return len(await recorded(client, fake, "/v1/chat/completions"))

            await control(client, vllm_a, "/_fake/vllm/metrics", {"waiting": 7, "running": 2})
            await wait_for(lambda: queues_read(7, 0))
            seen = await services(client, gateway)
            assert seen["vllm-a/chat"]["observed"]["in_flight"] == 2  # vllm:num_requests_running
            assert await route_four() == {"vllm-b/chat"}
            assert (await chats_received(vllm_a), await chats_received(vllm_b)) == (0, 4)

            await control(client, vllm_a, "/_fake/vllm/metrics", {"waiting": 0, "running": 0})
            await control(client, vllm_b, "/_fake/vllm/metrics", {"waiting": 9})
            await wait_for(lambda: queues_read(0, 9))
            assert await route_four() == {"vllm-a/chat"}
            assert (await chats_received(vllm_a), await chats_received(vllm_b)) == (4, 4)
        await shut(gateway, vllm_a, vllm_b)


# -- thinking off -----------------------------------------------------------------------------


async def test_qwen3_thinking_is_off_in_each_upstreams_terms_unless_the_client_chose(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(DEADLINE_S):
        async with httpx.AsyncClient(timeout=10) as client:
            ollama = await spawn_fake(nursery, "qwen3:8b", "llama3.2:1b",
                                      module="tests.fakes.ollama")
            vllm = await spawn_fake(nursery, VLLM_MODEL, module="tests.fakes.vllm")
            # llama-server speaks OpenAI; the plain fake lacks /props and /slots, which the
            # llama.cpp adapter treats as optional.
            llama = await spawn_fake(nursery, "Qwen3-8B")
            gateway = await start_gateway(
                nursery, tmp_path, client,
                # Ollama's OpenAI path, whose terms differ from the others'; its native chat
                # (think: false) is tested in tests/app/test_ollama_chat_sdk.py.
                upstream_toml("ollama", ollama.port, ["chat"], adapter="ollama",
                              extra='dialect = "openai"\n')
                + upstream_toml("vllm", vllm.port, ["chat"], adapter="vllm")
                + upstream_toml("llama", llama.port, ["chat"], adapter="llamacpp"),
            )
            path = "/v1/chat/completions"

            async def sent(fake: Proc, model: str, **extra: Any) -> dict[str, Any]:
                answer = await chat(client, gateway, model, **extra)
                assert answer.status_code == 200, answer.text
                return await last_body(client, fake, path)

            # No choice from the client: off, as each upstream honours it.
            body = await sent(ollama, "qwen3:8b")
            assert body["reasoning_effort"] == "none"
            assert "chat_template_kwargs" not in body  # Ollama's /v1 ignores it
            for fake, model in ((vllm, VLLM_MODEL), (llama, "Qwen3-8B")):
                body = await sent(fake, model)
                assert body["chat_template_kwargs"] == {"enable_thinking": False}, model
                assert "reasoning_effort" not in body, model

            # Only the Qwen3 family is turned off by default.
            body = await sent(ollama, "llama3.2:1b")
            assert "reasoning_effort" not in body
            assert "chat_template_kwargs" not in body

            # The client's own choice is kept, in whichever form it came.
            body = await sent(ollama, "qwen3:8b", reasoning_effort="high")
            assert body["reasoning_effort"] == "high"
            body = await sent(ollama, "qwen3:8b",
                              chat_template_kwargs={"enable_thinking": True})
            assert "reasoning_effort" not in body
            assert body["chat_template_kwargs"] == {"enable_thinking": True}
            for fake, model in ((vllm, VLLM_MODEL), (llama, "Qwen3-8B")):
                body = await sent(fake, model, chat_template_kwargs={"enable_thinking": True})
                assert body["chat_template_kwargs"] == {"enable_thinking": True}, model
                body = await sent(fake, model, reasoning_effort="low")
                assert body["reasoning_effort"] == "low", model
                assert "chat_template_kwargs" not in body, model
        await shut(gateway, ollama, vllm, llama)


# -- whisper.cpp ------------------------------------------------------------------------------


WHISPER_ASSET = """
[[upstreams.assets]]
asset_id = "ggml-base.en"
family = "whisper"
"""
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt fake audio"


async def test_whispercpp_gets_its_inference_form_and_the_client_gets_openai_answers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(DEADLINE_S):
        async with httpx.AsyncClient(timeout=10) as client:
            whisper = await spawn_fake(nursery, module="tests.fakes.whispercpp",
                                       extra=["--transcript", "hello there"])
            gateway = await start_gateway(
                nursery, tmp_path, client,
                upstream_toml("whisper", whisper.port, ["transcription"],
                              adapter="whispercpp", extra=WHISPER_ASSET),
            )

            async def transcribe(kind: str, **fields: str) -> httpx.Response:
                return await client.post(
                    f"{gateway.url}/v1/audio/{kind}",
                    data={"model": "ggml-base.en", **fields},
                    files={"file": ("talk.wav", AUDIO, "audio/wav")},
                )

            answer = await transcribe("transcriptions", response_format="json", language="en",
                                      temperature="0.2")
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("application/json")
            # whisper-server's " hello there\n" comes back as OpenAI's single clean line.
            assert answer.json() == {"text": "hello there"}
            assert answer.headers["x-geniehive-service"] == "whisper/transcription"
            upstream = (await recorded(client, whisper))[-1]
            assert (upstream["method"], upstream["path"]) == ("POST", "/inference")
            assert upstream["form"] == {"response_format": "json", "language": "en",
                                        "temperature": "0.2"}
            assert upstream["files"]["file"]["filename"] == "talk.wav"

            answer = await transcribe("transcriptions", response_format="text")
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
            assert answer.text == "hello there\n"
            upstream = (await recorded(client, whisper))[-1]
            assert upstream["form"] == {"response_format": "text"}

            # A translation is the same endpoint with whisper-server's own switch.
            answer = await transcribe("translations")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"text": "hello there"}
            upstream = (await recorded(client, whisper))[-1]
            assert upstream["path"] == "/inference"
            assert upstream["form"] == {"response_format": "json", "translate": "true"}
            assert not [r for r in await recorded(client, whisper)
                        if r["path"].startswith("/v1/")]
        await shut(gateway, whisper)


# -- a plugin ---------------------------------------------------------------------------------


async def test_the_plugin_guides_echo_adapter_serves_requests_from_a_plugins_folder(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(DEADLINE_S):
        async with httpx.AsyncClient(timeout=10) as client:
            folder = tmp_path / "plugins"
            folder.mkdir()
            shutil.copy(REPO / "tests" / "fixtures" / "plugins" / "echo_adapter.py", folder)
            echo = await spawn_fake(nursery, "echo-7b", module="tests.fakes.echo")
            gateway = await start_gateway(
                nursery, tmp_path, client,
                f'[plugins]\npaths = ["{folder}"]\nentry_points = false\n'
                + upstream_toml("echo-1", echo.port, ["chat"], adapter="echo"),
            )

            entry = (await listed(client, gateway))["echo-7b"]["geniehive"]
            assert entry["services"] == ["echo-1/chat"]
            assert entry["context_length"] == 8192  # from the Echo server's own /models
            assert entry["health"] == "healthy"
            assert (await services(client, gateway))["echo-1/chat"]["adapter"] == "echo"

            answer = await chat(client, gateway, "echo-7b")
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"
            assert answer.headers["x-geniehive-service"] == "echo-1/chat"
            paths = {r["path"] for r in await recorded(client, echo)}
            # Discovery and probe used the plugin's endpoints, the request the OpenAI path.
            assert {"/models", "/ping", "/v1/chat/completions"} <= paths
            assert "/v1/models" not in paths

            # An Echo error body reaches the client through the plugin's parse_error.
            await control(client, echo, "/_fake/fault", {
                "mode": "status", "status": 400, "times": 1, "path": "/v1/",
                "body": '{"problem": "prompt too spicy"}'})
            answer = await chat(client, gateway, "echo-7b")
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["message"] == "prompt too spicy"
            assert error["code"] == "upstream_400"
        await shut(gateway, echo)
