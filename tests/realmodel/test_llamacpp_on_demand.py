"""A real llama.cpp server (SmolLM2-135M) as an `on_demand` upstream of a real `geniehive
serve`: not running at boot, listed cold, started by the first request (which it answers),
stopped after its short idle TTL, and started again by the next request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import in_thread, llamacpp_toml, sdk, stop_all

pytestmark = pytest.mark.realmodel

IDLE_TTL_S = 2


def on_demand_upstream(uid: str, port: int) -> str:
    return llamacpp_toml(uid, port, f"on_demand = true, idle_ttl_s = {IDLE_TTL_S}") + (
        f'\n[[upstreams.assets]]\nasset_id = "{uid}"\n'
    )


async def server_answers(port: int) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.TransportError:
            return False


async def managed(ops: httpx.AsyncClient) -> str:
    services = (await ops.get("/v1/cluster/services")).json()["data"]
    return str(next(s for s in services if s["service_id"] == "smollm2/chat")["managed"])


async def state(ops: httpx.AsyncClient) -> str:
    return str((await ops.get("/v1/models/smollm2")).json()["geniehive"]["state"])


async def test_an_on_demand_llamacpp_server_starts_for_a_request_and_stops_when_idle(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    port = free_port()
    config = write_config(tmp_path, on_demand_upstream("smollm2", port))

    def ask(client: Any) -> Any:
        return client.chat.completions.with_raw_response.create(
            model="smollm2", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Name a colour."}],
        )

    with trio.fail_after(240):
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as ops:
            at_boot = (await server_answers(port), await managed(ops), await state(ops))
            with sdk(gateway, timeout=120) as client:
                first = await in_thread(ask, client)
                running = (await server_answers(port), await managed(ops), await state(ops))
                warm = await in_thread(ask, client)
                # Idle now: the reaper stops it after IDLE_TTL_S.
                while await managed(ops) != "cold":  # noqa: ASYNC110 (another process: polled)
                    await trio.sleep(0.2)
                stopped = (await server_answers(port), await state(ops))
                again = await in_thread(ask, client)
        await stop_all(gateway)

    assert at_boot == (False, "cold", "cold")
    assert first.status_code == 200 and first.parse().choices[0].message.content.strip()
    assert first.headers["x-geniehive-load"] == "cold"
    assert int(first.headers["x-geniehive-load-ms"]) > 0
    assert running == (True, "running", "loaded")
    assert warm.headers["x-geniehive-load"] == "warm"
    assert stopped == (False, "cold")
    assert again.status_code == 200 and again.headers["x-geniehive-load"] == "cold"
