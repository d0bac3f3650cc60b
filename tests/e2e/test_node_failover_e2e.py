"""A real `geniehive node` with two control plane URLs (`[control] urls`) and two real
`geniehive serve` replicas: it reports to the first only, and when that one stops, its
heartbeats reach the second, which learns the host and routes to it within a few intervals."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import spawn_fake, spawn_gateway, spawn_node, stop, write_config

pytestmark = pytest.mark.e2e

INTERVAL_S = 0.2
CHAT = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}


def node_config(tmp_path: Path, urls: list[str], upstream_port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(f"""
        [node]
        host_id = "gpu-f"
        address = "127.0.0.1"
        labels = {{ trust_tier = "trusted" }}

        [control]
        urls = [{", ".join(f'"{u}"' for u in urls)}]

        [heartbeat]
        interval_s = {INTERVAL_S}

        [[upstreams]]
        id = "gpu-f-up"
        adapter = "openai"
        base_url = "http://127.0.0.1:{upstream_port}"
        operations = ["chat"]
        timeout_s = 1
        """))
    return path


async def routable(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/models/shared")
    if response.status_code != 200:
        return []
    return response.json()["geniehive"]["healthy_services"]


async def wait_routable(client: httpx.AsyncClient) -> None:
    """Poll until the node's service is the one routable service (the caller's deadline)."""
    while True:
        if await routable(client) == ["gpu-f-up/chat"]:
            return
        await trio.sleep(0.05)


async def hosts(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/cluster/hosts")
    return [h["host_id"] for h in response.json()["data"]]


async def test_a_node_moves_to_the_second_control_plane_when_the_first_stops(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        fake = await spawn_fake(nursery, "shared")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = await spawn_gateway(nursery, write_config(tmp_path / "a", ""))
        second = await spawn_gateway(nursery, write_config(tmp_path / "b", ""))
        node = await spawn_node(nursery, node_config(tmp_path, [first.url, second.url],
                                                     fake.port))
        assert f"registered with {first.url} as gpu-f" in node.text()
        async with httpx.AsyncClient(base_url=first.url, timeout=5) as a, \
                httpx.AsyncClient(base_url=second.url, timeout=5) as b:
            await wait_routable(a)
            await trio.sleep(3 * INTERVAL_S)
            assert "gpu-f" not in await hosts(b)  # one control plane at a time: the first

            stopped = trio.current_time()
            assert await stop(first) == 0
            with trio.fail_after(5):
                await wait_routable(b)
            moved_after = trio.current_time() - stopped
            print(f"first control plane stopped to routable on the second: {moved_after:.2f} s")
            assert moved_after < 3.0  # a few intervals, with a margin for a loaded machine
            response = await b.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200, response.text
            assert response.headers["x-geniehive-service"] == "gpu-f-up/chat"
        text = node.text()
        assert text.count("moving to") == 1, text
        assert f"control plane {first.url} unreachable" in text
        assert f"moving to {second.url}" in text
        assert f"registered with {second.url} as gpu-f" in text
        assert await stop(node) == 0
        assert await stop(second) == 0
