"""A hive of real processes: one control plane, two node agents, fake upstreams behind them.

Covers forwarding, nodes, discovery, health and persistence: hosts appear, a dead agent's
services leave routing within `stale_after_s` while requests keep succeeding on the other
host, a control-plane restart on the same SQLite file loses nothing, a dead upstream is failed
over, its breaker opens, the prober marks it down and it returns after a restart, and a stream
whose upstream dies ends with one SSE error event.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import (
    free_port,
    spawn_fake,
    spawn_gateway,
    spawn_node,
    stop,
    write_config,
)

pytestmark = pytest.mark.e2e

STALE_S = 1.5
CHAT = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}


def control_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            [nodes]
            stale_after_s = {STALE_S}
            forget_after_s = 3600

            [breaker]
            failures = 2
            open_s = 1

            [prober]
            interval_s = 0.3
            timeout_s = 1
            down_after = 2
            up_after = 1
            """
        ) + extra,
    )


def node_config(tmp_path: Path, host_id: str, control_url: str, upstream_port: int) -> Path:
    path = tmp_path / f"{host_id}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            host_id = "{host_id}"
            address = "127.0.0.1"
            labels = {{ trust_tier = "trusted" }}

            [control]
            url = "{control_url}"

            [heartbeat]
            interval_s = 0.3

            [[upstreams]]
            id = "{host_id}-up"
            adapter = "openai"
            base_url = "http://127.0.0.1:{upstream_port}"
            operations = ["chat"]
            timeout_s = 1
            """
        )
    )
    return path


async def wait_for(predicate, client: httpx.AsyncClient, step: float = 0.05):
    while True:
        value = await predicate(client)
        if value:
            return value
        await trio.sleep(step)


async def hosts(client: httpx.AsyncClient) -> dict:
    response = await client.get("/v1/cluster/hosts")
    return {h["host_id"]: h for h in response.json()["data"]}


async def routable(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/models/shared")
    if response.status_code != 200:
        return []
    return response.json()["geniehive"]["healthy_services"]


async def test_hive_heals_around_dead_agents_and_restarts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        fake_a = await spawn_fake(nursery, "shared")
        fake_b = await spawn_fake(nursery, "shared")
        config = control_config(tmp_path)
        # A fixed port, so that the agents find the control plane again after its restart.
        config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{free_port()}"))
        control = await spawn_gateway(nursery, config)
        node_a = await spawn_node(nursery, node_config(tmp_path, "gpu-a", control.url,
                                                       fake_a.port))
        node_b = await spawn_node(nursery, node_config(tmp_path, "gpu-b", control.url,
                                                       fake_b.port))
        async with httpx.AsyncClient(base_url=control.url, timeout=10) as client:
            both = {"gpu-a-up/chat", "gpu-b-up/chat"}
            await wait_for(lambda c: _has(routable(c), both), client)
            listed = await hosts(client)
            assert {"gpu-a", "gpu-b"} <= set(listed)

            # Kill agent A: its services leave routing within stale_after_s.
            node_a.process.kill()
            killed = trio.current_time()
            await node_a.process.wait()
            await wait_for(lambda c: _equals(routable(c), {"gpu-b-up/chat"}), client, 0.02)
            left_after = trio.current_time() - killed
            # Within stale_after_s of the last heartbeat (one interval before the kill), plus
            # the polling step and a margin for a loaded machine.
            assert left_after < STALE_S + 1.5
            print(f"agent death to leaving routing: {left_after:.2f} s")
            for _ in range(5):
                response = await client.post("/v1/chat/completions", json=CHAT)
                assert response.status_code == 200
                assert response.headers["x-geniehive-service"] == "gpu-b-up/chat"
            assert (await hosts(client))["gpu-a"]["state"] == "stale"

        # Restart the control plane on the same SQLite file: nothing is lost, and the
        # running agent re-registers on its own.
        assert await stop(control) == 0
        control = await spawn_gateway(nursery, config)
        async with httpx.AsyncClient(base_url=control.url, timeout=10) as client:
            listed = await hosts(client)
            assert {"gpu-a", "gpu-b"} <= set(listed)  # kept in the registry
            response = await client.get("/v1/cluster/services")
            ids = {s["service_id"] for s in response.json()["data"]}
            assert {"gpu-a-up/chat", "gpu-b-up/chat"} <= ids
            # Agent B, never restarted, heartbeats into the new process and is routable.
            await wait_for(lambda c: _equals(routable(c), {"gpu-b-up/chat"}), client)
            response = await client.post("/v1/chat/completions", json=CHAT)
            assert response.headers["x-geniehive-service"] == "gpu-b-up/chat"
        assert await stop(node_b) == 0
        await stop(control)
        for fake in (fake_a, fake_b):
            await stop(fake)


async def test_dead_upstream_fails_over_opens_breaker_and_returns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        fake_a = await spawn_fake(nursery, "shared")
        fake_b = await spawn_fake(nursery, "shared")
        extra = textwrap.dedent(
            f"""
            [routing]
            strategy = "round_robin"

            [[upstreams]]
            id = "a"
            adapter = "openai"
            base_url = "{fake_a.url}"
            operations = ["chat"]
            timeout_s = 1

            [[upstreams]]
            id = "b"
            adapter = "openai"
            base_url = "{fake_b.url}"
            operations = ["chat"]
            timeout_s = 1
            """
        )
        control = await spawn_gateway(nursery, control_config(tmp_path, extra))
        async with httpx.AsyncClient(base_url=control.url, timeout=10) as client:
            await wait_for(lambda c: _has(routable(c), {"a/chat", "b/chat"}), client)
            port_a = fake_a.port
            await stop(fake_a, signal.SIGKILL)
            attempts = []
            for _ in range(4):
                response = await client.post("/v1/chat/completions", json=CHAT)
                assert response.status_code == 200
                assert response.headers["x-geniehive-service"] == "b/chat"
                attempts.append(response.headers["x-geniehive-attempts"])
            assert "2" in attempts
            services = await _services(client)
            assert services["a/chat"]["breaker"] in ("open", "half_open")
            await wait_for(lambda c: _probe_is(c, "a/chat", "down"), client)

            fake_a = await spawn_fake(nursery, "shared", port=port_a)
            await wait_for(lambda c: _has(routable(c), {"a/chat", "b/chat"}), client)
            served = set()
            for _ in range(6):
                response = await client.post("/v1/chat/completions", json=CHAT)
                served.add(response.headers["x-geniehive-service"])
            assert served == {"a/chat", "b/chat"}

            # A stream whose upstream dies mid-stream ends with one SSE error event.
            async with httpx.AsyncClient(base_url=fake_a.url) as fc:
                await fc.post("/_fake/fault", json={"mode": "reset_mid_stream",
                                                     "after_chunks": 1})
            async with httpx.AsyncClient(base_url=fake_b.url) as fc:
                await fc.post("/_fake/fault", json={"mode": "reset_mid_stream",
                                                     "after_chunks": 1})
            response = await client.post("/v1/chat/completions",
                                         json={**CHAT, "stream": True})
            events = [e[6:] for e in response.text.split("\n\n") if e.startswith("data: ")]
            assert "[DONE]" not in events
            assert [("error" in json.loads(e)) for e in events] == [False, True]
        await stop(control)
        await stop(fake_a)
        await stop(fake_b)


async def _services(client: httpx.AsyncClient) -> dict:
    response = await client.get("/v1/cluster/services")
    return {s["service_id"]: s for s in response.json()["data"]}


async def _probe_is(client: httpx.AsyncClient, service_id: str, verdict: str) -> bool:
    return (await _services(client))[service_id]["probe"] == verdict


async def _has(coro, wanted: set[str]) -> bool:
    return wanted <= set(await coro)


async def _equals(coro, wanted: set[str]) -> bool:
    return set(await coro) == wanted

