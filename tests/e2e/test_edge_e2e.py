"""The connection bound of a real `geniehive serve`: descriptors stop at max_connections."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import spawn_gateway, stop, wait_ready, write_config

pytestmark = pytest.mark.e2e


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_forty_idle_connections_cost_no_more_descriptors_than_max_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "")
    text = config.read_text().replace(
        "shutdown_grace_s = 5", "shutdown_grace_s = 5\nmax_connections = 5\nheader_timeout_s = 30"
    )
    config.write_text(text)
    with trio.fail_after(30):
        gateway = await spawn_gateway(nursery, config)
        async with httpx.AsyncClient(timeout=10) as client:
            await wait_ready(client, gateway.url)
        await trio.sleep(0.3)  # the readiness connection has closed on the gateway's side
        before = open_descriptors(gateway.process.pid)
        idle = [await trio.open_tcp_stream("127.0.0.1", gateway.port) for _ in range(40)]
        await trio.sleep(0.5)
        during = open_descriptors(gateway.process.pid)
        for stream in idle:
            await stream.aclose()
        async with httpx.AsyncClient(timeout=10) as client:
            after = await client.get(f"{gateway.url}/healthz")
        assert await stop(gateway) == 0
    assert during - before <= 5
    assert after.status_code == 200
