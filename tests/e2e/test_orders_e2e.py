"""A real `geniehive serve` orders a real `geniehive node` to start and stop an on_demand
upstream (the fake upstream server), through the node's long poll."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import (
    REPO,
    Proc,
    free_port,
    spawn_gateway,
    spawn_node,
    stop,
    write_config,
)

pytestmark = pytest.mark.e2e

SERVICE = "gpu-l-lazy/chat"


def node_config(tmp_path: Path, control_url: str, port: int, *,
                command: list[str] | None = None, interval_s: float = 60) -> Path:
    command = command or [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port),
                          "--model", "lazy-model"]
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(f"""
        [node]
        host_id = "gpu-l"
        address = "127.0.0.1"

        [control]
        url = "{control_url}"

        # Slow on purpose: a report within seconds of an order is the one sent right after it.
        [heartbeat]
        interval_s = {interval_s}

        [[upstreams]]
        id = "gpu-l-lazy"
        adapter = "openai"
        base_url = "http://127.0.0.1:{port}"
        timeout_s = 1
        launch = {{ command = {command!r}, cwd = "{REPO}", on_demand = true, idle_ttl_s = 3600 }}

        [[upstreams.assets]]
        asset_id = "lazy-model"
        """).replace("'", '"'))
    return path


async def service(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/cluster/services")
    return next(s for s in response.json()["data"] if s["service_id"] == SERVICE)


async def wait_managed(client: httpx.AsyncClient, state: str) -> dict[str, Any]:
    while (found := await service(client))["managed"] != state:
        await trio.sleep(0.05)
    return found


async def answers(port: int) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.ConnectError:
            return False


async def start_hive(nursery: trio.Nursery, tmp_path: Path, port: int,
                     **node: Any) -> tuple[Proc, Proc]:
    """A real `geniehive serve` and a real `geniehive node` registered with it."""
    control = await spawn_gateway(nursery, write_config(tmp_path, ""))
    return control, await spawn_node(nursery, node_config(tmp_path, control.url, port, **node))


async def test_an_order_starts_a_cold_upstream_on_a_node_and_another_stops_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = free_port()
    with trio.fail_after(60):
        control, node = await start_hive(nursery, tmp_path, port)
        async with httpx.AsyncClient(base_url=control.url, timeout=10) as client:
            cold = await service(client)
            assert cold["managed"] == "cold"
            assert cold["node_health"] == "unknown"  # not asked, yet still routable
            assert [(a["asset_id"], a["loaded"]) for a in cold["assets"]] == [
                ("lazy-model", False)]
            assert not await answers(port)

            response = await client.post("/v1/admin/nodes/gpu-l/orders",
                                         json={"action": "start", "upstream_id": "gpu-l-lazy"})
            assert response.status_code == 202, response.text
            assert response.json()["action"] == "start"
            with trio.fail_after(15):  # far below the 60 s heartbeat interval
                running = await wait_managed(client, "running")
            assert [(a["asset_id"], a["loaded"]) for a in running["assets"]] == [
                ("lazy-model", True)]
            assert running["node_health"] == "healthy"
            assert await answers(port)

            response = await client.post("/v1/admin/nodes/gpu-l/orders",
                                         json={"action": "stop", "upstream_id": "gpu-l-lazy"})
            assert response.status_code == 202
            with trio.fail_after(15):
                await wait_managed(client, "cold")
            assert not await answers(port)

            response = await client.post("/v1/admin/nodes/gpu-l/orders",
                                         json={"action": "start", "upstream_id": "nope"})
            assert response.status_code == 404
            assert "reports no managed upstream 'nope'" in response.text
        assert await stop(node) == 0
        assert await stop(control) == 0


async def test_a_request_for_a_cold_node_model_starts_its_upstream_through_the_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = free_port()
    with trio.fail_after(60):
        control, node = await start_hive(nursery, tmp_path, port)
        async with httpx.AsyncClient(base_url=control.url, timeout=30) as client:
            await wait_managed(client, "cold")
            listed = (await client.get("/v1/models/lazy-model")).json()["geniehive"]
            answer = await client.post("/v1/chat/completions", json={
                "model": "lazy-model", "messages": [{"role": "user", "content": "hi"}]})
            running = await service(client)
            warm = await client.post("/v1/chat/completions", json={
                "model": "lazy-model", "messages": [{"role": "user", "content": "hi"}]})
        assert await stop(node) == 0
        assert await stop(control) == 0
    assert listed["state"] == "cold"
    # No admin order: the request itself had the node start it, and waited for it.
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-geniehive-load"] == "cold"
    assert answer.headers["x-geniehive-service"] == SERVICE
    assert running["managed"] == "running"
    assert warm.status_code == 200 and warm.headers["x-geniehive-load"] == "warm"


async def test_a_request_for_a_node_model_whose_start_fails_is_503_soon_not_at_the_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = free_port()
    broken = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with trio.fail_after(60):
        control, node = await start_hive(nursery, tmp_path, port, command=broken, interval_s=1)
        async with httpx.AsyncClient(base_url=control.url, timeout=60) as client:
            await wait_managed(client, "cold")
            began = trio.current_time()
            failed = await client.post("/v1/chat/completions", json={
                "model": "lazy-model", "messages": [{"role": "user", "content": "hi"}]})
            took = trio.current_time() - began
        assert await stop(node) == 0
        assert await stop(control) == 0
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "gpu-l-lazy on host gpu-l: the node could not start it" in error["message"]
    # Known from the node's next reports, not after capacity.load_timeout_s (300 s).
    assert took < 15
