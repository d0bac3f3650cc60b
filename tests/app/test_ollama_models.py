"""An Ollama upstream's models in memory, seen by the gateway over real sockets: discovery and
probes only read (`/api/version`, `/api/tags`, `/api/ps`), never generate and never extend a
model's `keep_alive`; `load` sends the upstream's configured `keep_alive` and `unload` 0; the
configured `max_loaded_models` reaches the services' observed state, from the control file and
from a node file through a real node agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from geniehive.config import load_node
from geniehive.models import Service
from geniehive.node import run_node
from tests.fakes.ollama import FakeOllama
from tests.harness import gateway_in_process, node_file, upstream_toml, write_config
from tests.nodeapi import start

READS = {("GET", "/api/version"), ("GET", "/api/tags"), ("GET", "/api/ps"),
         ("POST", "/api/show")}
NODE_KEYS = """
[[auth.keys]]
name = "node"
key_env = "NODE_KEY"
scopes = ["node"]
"""
ENV = {"NODE_KEY": "node-secret"}
LOAD_DELAY_S = 0.3


async def wait_for(predicate: Any) -> None:
    # The registry publishes snapshots without an event to wait on; poll (under a deadline).
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


def calls(fake: FakeOllama, path: str) -> int:
    return sum(1 for c in fake.native_calls if c["path"] == path)


def loaded(service: Service | None, model: str) -> bool | None:
    asset = service.asset(model) if service is not None else None
    return asset.loaded if asset is not None else None


def keep_alives(fake: FakeOllama) -> list[Any]:
    return [r["json"]["keep_alive"] for r in fake.requests if r["path"] == "/api/generate"]


async def load_and_unload(gateway: Any, fake: FakeOllama, service_id: str) -> float:
    """Load then unload qwen3:8b through the gateway's adapter of `service_id`, waiting for the
    snapshot to show each; the seconds the load took."""
    adapter = gateway.adapter_for(gateway.snapshot.services[service_id])
    started = trio.current_time()
    async with trio.open_nursery() as loading:
        loading.start_soon(adapter.load, "qwen3:8b")
        await fake.wait_for_request(lambda r: r["path"] == "/api/generate")
        assert fake.loaded() == []  # still loading: /api/ps does not list it yet
    took = trio.current_time() - started
    assert fake.loaded() == ["qwen3:8b"]
    await wait_for(lambda: loaded(gateway.snapshot.services.get(service_id), "qwen3:8b"))
    vram = gateway.snapshot.services[service_id].asset("qwen3:8b").vram_bytes
    assert vram == 1_000_000_000
    await adapter.unload("qwen3:8b")
    assert fake.loaded() == []
    await wait_for(lambda: loaded(gateway.snapshot.services.get(service_id), "qwen3:8b")
                   is False)
    return took


@pytest.mark.parametrize(
    ("extra", "keep_alive", "max_loaded"),
    [('keep_alive = "1h30m"\nmax_loaded_models = 2\n', "1h30m", 2), ("", "30m", None)],
)
async def test_a_control_file_ollama_is_only_read_until_loaded_with_its_keep_alive(
    nursery: trio.Nursery, tmp_path: Path, extra: str, keep_alive: str, max_loaded: int | None
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["qwen3:8b", "llama3.2:3b"], load_delay_s=LOAD_DELAY_S)
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("ol", port, ["chat", "embeddings"],
                                                      "ollama", extra))
        running = await gateway_in_process(nursery, config)
        gateway = running.gateway
        # Several discovery passes (0.2 s apart) and probes have run.
        await wait_for(lambda: calls(fake, "/api/ps") >= 3 and calls(fake, "/api/version") >= 2)
        passive = {(c["method"], c["path"]) for c in fake.native_calls}
        observed = [gateway.snapshot.services[s].observed for s in ("ol/chat", "ol/embeddings")]
        took = await load_and_unload(gateway, fake, "ol/chat")
        await running.stop()
    assert passive == READS
    assert [o.max_loaded_models for o in observed] == [max_loaded, max_loaded]
    assert keep_alives(fake) == [keep_alive, 0]
    assert took >= LOAD_DELAY_S
    assert {(c["method"], c["path"]) for c in fake.native_calls} - READS == {
        ("POST", "/api/generate")}
    assert not [r for r in fake.requests if r["path"].startswith("/v1/")]




@pytest.mark.parametrize(
    ("extra", "keep_alive", "max_loaded"),
    [("keep_alive = 600\nmax_loaded_models = 3\n", 600, 3), ("", None, None)],
)
async def test_a_node_reports_max_loaded_models_and_keep_alive_and_only_reads_its_ollama(
    nursery: trio.Nursery, tmp_path: Path, extra: str, keep_alive: int | None,
    max_loaded: int | None,
) -> None:
    with trio.fail_after(20):
        fake = FakeOllama(["qwen3:8b"], load_delay_s=LOAD_DELAY_S)
        port = await nursery.start(fake.serve)
        running, client = await start(nursery, tmp_path, NODE_KEYS, ENV)
        await client.aclose()
        upstream = upstream_toml("gpu-t-ol", port, ["chat"], "ollama", extra)
        config = load_node(node_file(tmp_path, running.url, upstream), ENV)
        agent = trio.CancelScope()

        async def run_agent(*, task_status: Any) -> None:
            with agent:
                await run_node(config, task_status=task_status)

        await nursery.start(run_agent)
        gateway = running.gateway
        await wait_for(lambda: "gpu-t-ol/chat" in gateway.snapshot.services)
        registered = gateway.snapshot.services["gpu-t-ol/chat"]
        first = gateway.snapshot.hosts["gpu-t"].last_heartbeat or 0.0
        await wait_for(lambda: (gateway.snapshot.hosts["gpu-t"].last_heartbeat or 0.0) > first
                       and calls(fake, "/api/ps") >= 3)
        beaten = gateway.snapshot.services["gpu-t-ol/chat"]
        passive = {(c["method"], c["path"]) for c in fake.native_calls}
        # The gateway loads on the node's upstream with the node's keep_alive; the node's
        # next heartbeat reports the model in memory, then out of it.
        took = await load_and_unload(gateway, fake, "gpu-t-ol/chat")
        agent.cancel()
        await running.stop()
    assert registered.observed.max_loaded_models == beaten.observed.max_loaded_models \
        == max_loaded
    assert registered.keep_alive == beaten.keep_alive == keep_alive
    assert passive == READS
    assert keep_alives(fake) == [keep_alive if keep_alive is not None else "30m", 0]
    assert took >= LOAD_DELAY_S
