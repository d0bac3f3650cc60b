"""Models on demand through a real gateway over real sockets: an Ollama emulator's models
loaded by requests (warm first, one load for a crowd, eviction of idle models only, never
a generation from probes or discovery), and a local on_demand upstream (the fake upstream
server as a real process) started by its first request and stopped when idle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.ollama import FakeOllama
from tests.harness import (
    REPO,
    alive,
    free_port,
    gateway_in_process,
    upstream_toml,
    write_config,
)

LOAD_DELAY_S = 0.4
READS = {("GET", "/api/version"), ("GET", "/api/tags"), ("GET", "/api/ps"),
         ("POST", "/api/show")}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def loads(fake: FakeOllama) -> list[tuple[str, Any]]:
    """(model, keep_alive) of every load or unload the gateway sent, in order."""
    return [(r["json"]["model"], r["json"].get("keep_alive")) for r in fake.requests
            if r["path"] == "/api/generate"]


def fake_url(fake: FakeOllama) -> str:
    return f"http://127.0.0.1:{fake.port}"


async def wait_for(predicate: Any) -> None:
    # The registry and the fake publish no event a test could wait on; poll (under a deadline).
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def ollama_gateway(nursery: trio.Nursery, tmp_path: Path, fake: FakeOllama,
                         extra: str = "") -> Any:
    port = await nursery.start(fake.serve)
    config = write_config(tmp_path, upstream_toml("ol", port, ["chat"], "ollama", extra))
    running = await gateway_in_process(nursery, config)
    # Discovery has seen what is pulled and what is in memory.
    await wait_for(lambda: "ol/chat" in running.gateway.snapshot.services
                   and running.gateway.snapshot.services["ol/chat"].asset("small") is not None)
    return running


async def test_a_cold_model_is_loaded_once_for_a_crowd_and_then_answers_warm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["small", "large"], load_delay_s=LOAD_DELAY_S)
        running = await ollama_gateway(nursery, tmp_path, fake, 'keep_alive = "45m"\n')
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            listed = {m["id"]: m["geniehive"]["state"]
                      for m in (await client.get("/v1/models")).json()["data"]}
            answers: list[httpx.Response] = []

            async def ask() -> None:
                answers.append(await client.post("/v1/chat/completions", json=chat("small")))

            async with trio.open_nursery() as crowd:
                for _ in range(5):
                    crowd.start_soon(ask)
            warm = await client.post("/v1/chat/completions", json=chat("small"))
            after = {m["id"]: m["geniehive"]["state"]
                     for m in (await client.get("/v1/models")).json()["data"]}
        await running.stop()
    assert listed["small"] == "cold" and listed["large"] == "cold"
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-geniehive-load"] for a in answers} == {"cold"}
    # Each waited for the one load: the first for the whole of the emulator's load delay,
    # any that arrived while it ran (a busy machine staggers the crowd) for what was left.
    waits = [int(a.headers["x-geniehive-load-ms"]) for a in answers]
    assert max(waits) >= LOAD_DELAY_S * 1000 * 0.9
    assert loads(fake) == [("small", "45m")]
    assert warm.status_code == 200 and warm.headers["x-geniehive-load"] == "warm"
    assert "x-geniehive-load-ms" not in warm.headers
    assert after["small"] == "loaded" and after["large"] == "cold"
    # Nothing but the reads, that one load and the six chats: probes and discovery never
    # generate.
    native = {(c["method"], c["path"]) for c in fake.native_calls}
    assert native - READS == {("POST", "/api/generate"), ("POST", "/api/chat")}
    assert len([c for c in fake.native_calls if c["path"] == "/api/chat"]) == 6


async def test_a_model_in_use_is_unloaded_only_after_its_request_ends(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["small", "large"], load_delay_s=0.05)
        running = await ollama_gateway(nursery, tmp_path, fake, "max_loaded_models = 1\n")
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            first = await client.post("/v1/chat/completions", json=chat("small"))
            fake.set_fault("hold_stream", after_chunks=1, times=1, path="/api/chat")
            events: list[str] = []
            swap: list[httpx.Response] = []

            async def swap_in() -> None:
                swap.append(await client.post("/v1/chat/completions", json=chat("large")))
                events.append("large answered")

            async with client.stream("POST", "/v1/chat/completions",
                                     json=chat("small", stream=True)) as held:
                chunks = held.aiter_bytes()
                await chunks.__anext__()  # "small" is in use now
                async with trio.open_nursery() as inner:
                    inner.start_soon(swap_in)
                    # The load of "large" has begun and waits for "small" to be idle
                    # (the demand's wait for a request to end), so nothing is unloaded yet.
                    demand = running.gateway.demand
                    await wait_for(lambda: ("local", fake_url(fake), "large") in demand._work
                                   and demand._moved is not None)
                    waiting = loads(fake)
                    events.append("released")
                    fake.release()
                    async for _ in chunks:
                        pass
        await running.stop()
    assert first.headers["x-geniehive-load"] == "cold"
    assert waiting == [("small", "30m")]
    assert events == ["released", "large answered"]
    assert swap[0].status_code == 200 and swap[0].headers["x-geniehive-load"] == "cold"
    # Least recently used idle model out, then the new one in.
    assert loads(fake) == [("small", "30m"), ("small", 0), ("large", "30m")]
    assert fake.loaded() == ["large"]


async def test_a_warm_model_is_not_held_behind_another_models_load(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["small", "large"], load_delay_s=0.05)
        running = await ollama_gateway(nursery, tmp_path, fake, "max_loaded_models = 2\n")
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            await client.post("/v1/chat/completions", json=chat("small"))
            await wait_for(lambda: running.gateway.snapshot.services["ol/chat"]
                           .asset("small").loaded is True)
            fake.configure(load_delay_s=1.5)
            order: list[str] = []

            async def ask(model: str) -> None:
                response = await client.post("/v1/chat/completions", json=chat(model))
                assert response.status_code == 200
                order.append(f"{model} {response.headers['x-geniehive-load']}")

            async with trio.open_nursery() as both:
                both.start_soon(ask, "large")
                await fake.wait_for_request(lambda r: r["path"] == "/api/generate"
                                            and r["json"]["model"] == "large")
                both.start_soon(ask, "small")
        await running.stop()
    assert order == ["small warm", "large cold"]


async def test_a_model_that_cannot_be_loaded_is_503_model_load_failed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["small"])
        running = await ollama_gateway(nursery, tmp_path, fake)
        fake.set_fault("status", status=500, times=1, path="/api/generate")
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            failed = await client.post("/v1/chat/completions", json=chat("small"))
            again = await client.post("/v1/chat/completions", json=chat("small"))
        await running.stop()
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "ol" in error["message"] and "small" in error["message"]
    assert again.status_code == 200 and again.headers["x-geniehive-load"] == "cold"


def on_demand_toml(port: int, idle_ttl_s: float) -> str:
    command = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port),
               "--model", "lazy-model"]
    launch = (f"{{ command = {command!r}, cwd = '{REPO}', on_demand = true, "
              f"idle_ttl_s = {idle_ttl_s}, ready_timeout_s = 20 }}").replace("'", '"')
    return upstream_toml("lazy", port, ["chat"], "openai",
                         f'launch = {launch}\n\n[[upstreams.assets]]\nasset_id = "lazy-model"\n')


@pytest.mark.e2e
async def test_an_on_demand_upstream_starts_for_its_first_request_and_stops_when_idle(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        port = free_port()
        config = write_config(tmp_path, on_demand_toml(port, idle_ttl_s=1.0))
        running = await gateway_in_process(nursery, config)
        gateway = running.gateway
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            before = (await client.get("/v1/models/lazy-model")).json()["geniehive"]
            explained = (await client.get("/v1/cluster/routes/resolve", params={
                "model": "lazy-model", "kind": "chat"})).json()
            first = await client.post("/v1/chat/completions", json=chat("lazy-model"))
            pid = gateway.launcher.states["lazy"].pid
            second = await client.post("/v1/chat/completions", json=chat("lazy-model"))
            await wait_for(lambda: gateway.launcher.state("lazy") == "cold")
            stopped = not alive(pid)
            cold = (await client.get("/v1/models/lazy-model")).json()["geniehive"]
            again = await client.post("/v1/chat/completions", json=chat("lazy-model"))
        await running.stop()
    assert before["state"] == "cold"
    assert explained["candidates"][0]["placement"]["class"] == "cold_fits"
    assert first.status_code == 200 and first.headers["x-geniehive-load"] == "cold"
    assert int(first.headers["x-geniehive-load-ms"]) > 0
    assert second.headers["x-geniehive-load"] == "warm"
    assert stopped and cold["state"] == "cold"
    assert again.status_code == 200 and again.headers["x-geniehive-load"] == "cold"


@pytest.mark.e2e
async def test_an_on_demand_upstream_serving_a_long_request_is_not_stopped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        port = free_port()
        config = write_config(tmp_path, on_demand_toml(port, idle_ttl_s=0.5))
        running = await gateway_in_process(nursery, config)
        launcher = running.gateway.launcher
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            await client.post("/v1/chat/completions", json=chat("lazy-model"))
            await client.post(f"http://127.0.0.1:{port}/_fake/fault", json={
                "mode": "hold_stream", "after_chunks": 1, "times": 1})
            async with client.stream("POST", "/v1/chat/completions",
                                     json=chat("lazy-model", stream=True)) as held:
                chunks = held.aiter_bytes()
                await chunks.__anext__()
                # Three idle TTLs with the stream open (a real process: real time passes).
                await trio.sleep(1.5)
                during = launcher.state("lazy")
                await client.post(f"http://127.0.0.1:{port}/_fake/release")
                body = b"".join([chunk async for chunk in chunks])
            await wait_for(lambda: launcher.state("lazy") == "cold")
        await running.stop()
    assert during == "running"
    assert b"[DONE]" in body


async def test_a_measured_load_time_says_how_long_a_request_arriving_during_it_waits(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["small", "large"], load_delay_s=1.2)
        running = await ollama_gateway(nursery, tmp_path, fake, "max_loaded_models = 1\n")
        gateway = running.gateway
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            await client.post("/v1/chat/completions", json=chat("small"))
            await client.post("/v1/chat/completions", json=chat("large"))  # "small" goes
            measured = gateway.live.runtime("ol/chat", trio.current_time()).models.load_ms
            async def ask_small() -> None:
                await client.post("/v1/chat/completions", json=chat("small"))

            async with trio.open_nursery() as during:
                during.start_soon(ask_small)
                # Its load has gone out (the second of "small").
                await wait_for(lambda: loads(fake).count(("small", "30m")) == 2)
                left = gateway.demand.loading_s("ol/chat")
                retry = gateway.admission.retry_after_s(["ol/chat"], trio.current_time())
                explained = (await client.get("/v1/cluster/routes/resolve", params={
                    "model": "small"})).json()["candidates"][0]["placement"]
        await running.stop()
    assert measured["small"] >= 1200 and measured["large"] >= 1200
    assert 0 < left <= measured["small"] / 1000
    assert retry >= 1 and retry == max(1, -(-left // 1))
    # Joining the load in progress is the best placement there is.
    assert explained["class"] == "warm_free"
