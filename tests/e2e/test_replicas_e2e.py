"""Three real `geniehive serve` replicas on one real PostgreSQL server (tests/pgserver.py),
real node agents and a fake upstream: what is registered, created or drained through one
replica is seen by the others, and a replica killed with SIGKILL under load costs the clients
of the others nothing, while the nodes keep heartbeating and stale hosts are still forgotten.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import (
    Proc,
    node_file,
    spawn_fake,
    spawn_gateway,
    spawn_node,
    stop,
    upstream_toml,
    write_config,
)
from tests.pgserver import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e

OPS_KEY = "ops-replica-key-123"
NODE_KEY = "node-replica-key-456"
AUTH = {"Authorization": f"Bearer {OPS_KEY}"}
CHAT = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
KEYS = """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "read", "operate", "admin"]

[[auth.keys]]
name = "node"
key_env = "NODE_KEY"
scopes = ["node"]
"""
LEADS = "this replica now leads"


async def replicas(nursery: trio.Nursery, tmp_path: Path, pg: PostgresServer, count: int,
                   extra: str = "") -> list[Proc]:
    env = {"OPS_KEY": OPS_KEY, "NODE_KEY": NODE_KEY, "GENIEHIVE_REGISTRY_URL": pg.url}
    started = []
    for index in range(count):
        folder = tmp_path / f"r{index}"
        folder.mkdir()
        config = write_config(folder, KEYS + extra)
        text = config.read_text().replace('path = "state/geniehive.sqlite3"',
                                          'url_env = "GENIEHIVE_REGISTRY_URL"')
        config.write_text(text)
        started.append(await spawn_gateway(nursery, config, env))
    return started


def node_config(tmp_path: Path, name: str, urls: list[str], upstream_port: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = node_file(folder, urls[0], upstream_toml(f"{name}-up", upstream_port, ["chat"]),
                     host_id=name)
    listed = ", ".join(f'"{u}"' for u in urls)
    path.write_text(path.read_text().replace(f'url = "{urls[0]}"', f"urls = [{listed}]"))
    return path


async def eventually(check: Any) -> Any:
    """Poll `check()` until it returns something truthy (the caller holds the deadline)."""
    while not (result := await check()):  # noqa: ASYNC110 - other processes: poll
        await trio.sleep(0.05)
    return result


async def served_by(client: httpx.AsyncClient, service_id: str) -> bool:
    response = await client.get("/v1/models/shared", headers=AUTH)
    return (response.status_code == 200
            and response.json()["geniehive"]["healthy_services"] == [service_id])


async def host_states(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.get("/v1/cluster/hosts", headers=AUTH)
    # The nodes' hosts (the control plane's own upstreams are the host `local`).
    return {h["host_id"]: h["state"] for h in response.json()["data"]
            if h["host_id"] != "local"}


@pytest.fixture
async def pg(tmp_path: Path) -> Any:
    with trio.fail_after(60):
        async with postgres_server(tmp_path) as server:
            yield server


async def test_what_one_replica_is_told_the_others_know(
    nursery: trio.Nursery, tmp_path: Path, pg: PostgresServer
) -> None:
    with trio.fail_after(60):
        fake = await spawn_fake(nursery, "shared")
        r0, r1, r2 = await replicas(nursery, tmp_path, pg, 3)
        node = await spawn_node(nursery, node_config(tmp_path, "gpu-a", [r0.url], fake.port),
                                {"NODE_KEY": NODE_KEY})
        clients = [httpx.AsyncClient(base_url=r.url, timeout=5) for r in (r0, r1, r2)]
        c0, c1, c2 = clients
        try:
            # Registered through r0 only; routed to by the other two.
            with trio.fail_after(5):
                for client in (c1, c2):
                    await eventually(lambda c=client: served_by(c, "gpu-a-up/chat"))
            answer = await c2.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-geniehive-service"] == "gpu-a-up/chat"
            assert await host_states(c2) == {"gpu-a": "online"}

            # A key made on r0 works on r1; disabled on r1, it is refused by r0 and r2.
            made = await c0.post("/v1/admin/keys", headers=AUTH,
                                 json={"name": "app", "scopes": ["inference"]})
            assert made.status_code in (200, 201), made.text
            secret, key_id = made.json()["key"], made.json()["key_id"]
            app = {"Authorization": f"Bearer {secret}"}

            async def accepted(client: httpx.AsyncClient) -> bool:
                response = await client.post("/v1/chat/completions", json=CHAT, headers=app)
                return response.status_code == 200

            async def refused(client: httpx.AsyncClient) -> bool:
                response = await client.post("/v1/chat/completions", json=CHAT, headers=app)
                return response.status_code == 401

            with trio.fail_after(2):
                await eventually(lambda: accepted(c1))
            disabled = await c1.post(f"/v1/admin/keys/{key_id}/disable", headers=AUTH)
            assert disabled.status_code == 200, disabled.text
            with trio.fail_after(2):
                await eventually(lambda: refused(c0))
                await eventually(lambda: refused(c2))

            # A drain through r2 is a drain everywhere.
            drained = await c2.post("/v1/cluster/services/gpu-a-up/chat/drain", headers=AUTH)
            assert drained.status_code == 200, drained.text

            async def draining(client: httpx.AsyncClient) -> bool:
                response = await client.get("/v1/cluster/services", headers=AUTH)
                [view] = [s for s in response.json()["data"]
                          if s["service_id"] == "gpu-a-up/chat"]
                return bool(view["availability"] == "draining")

            with trio.fail_after(2):
                await eventually(lambda: draining(c0))
                await eventually(lambda: draining(c1))
            refused_now = await c0.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert refused_now.status_code == 503, refused_now.text
        finally:
            for client in clients:
                await client.aclose()
        # Exactly one of the three led the hive's once-only work.
        assert sum(LEADS in r.text() for r in (r0, r1, r2)) == 1
        assert await stop(node) == 0
        for r in (r0, r1, r2):
            assert await stop(r) == 0


async def test_a_replica_killed_under_load_costs_the_others_clients_nothing(
    nursery: trio.Nursery, tmp_path: Path, pg: PostgresServer
) -> None:
    with trio.fail_after(90):
        fake = await spawn_fake(nursery, "shared")
        gateways = await replicas(nursery, tmp_path, pg, 3,
                                  "\n[nodes]\nstale_after_s = 1.5\nforget_after_s = 3\n")
        with trio.fail_after(5):
            leader = await eventually(
                lambda: _first([r for r in gateways if LEADS in r.text()]))
        others = [r for r in gateways if r is not leader]
        env = {"NODE_KEY": NODE_KEY}
        # One node reports to the leader first, the others after it; one only to the leader
        # (stopped below, so that somebody must forget it).
        moving = await spawn_node(nursery, node_config(
            tmp_path, "gpu-a", [leader.url, *(r.url for r in others)], fake.port), env)
        leaving = await spawn_node(nursery, node_config(
            tmp_path, "gpu-b", [leader.url], fake.port), env)
        clients = [httpx.AsyncClient(base_url=r.url, timeout=5) for r in others]
        try:
            with trio.fail_after(5):
                for client in clients:
                    await eventually(lambda c=client: _hosts_are(c, {"gpu-a", "gpu-b"}))
            results: list[int] = []
            killed = trio.Event()

            async def load(client: httpx.AsyncClient) -> None:
                # Requests keep starting until a while after the kill.
                while not killed.is_set() or len(results) < 400:
                    response = await client.post("/v1/chat/completions", json=CHAT,
                                                 headers=AUTH)
                    results.append(response.status_code)

            async with trio.open_nursery() as crowd:
                for client in clients:
                    for _ in range(4):
                        crowd.start_soon(load, client)
                await eventually(lambda: _is(len(results) >= 100))
                leader.process.send_signal(signal.SIGKILL)
                await leader.process.wait()
                killed.set()
                assert await stop(leaving) == 0
            assert results and set(results) == {200}, sorted(set(results))

            # The lead moved: gpu-b, silent now, is forgotten by the survivors...
            with trio.fail_after(15):
                for client in clients:
                    await eventually(lambda c=client: _hosts_are(c, {"gpu-a"}))
            # ...while gpu-a, which moved to another replica, stays online.
            for client in clients:
                assert (await host_states(client)) == {"gpu-a": "online"}
        finally:
            for client in clients:
                await client.aclose()
        assert sum(LEADS in r.text() for r in others) == 1
        assert "moving to" in moving.text()
        assert await stop(moving) == 0
        for r in others:
            assert await stop(r) == 0


async def _hosts_are(client: httpx.AsyncClient, wanted: set[str]) -> bool:
    states = await host_states(client)
    return set(states) == wanted and all(s == "online" for s in states.values())


async def _first(items: list[Proc]) -> Proc | None:
    return items[0] if items else None


async def _is(value: bool) -> bool:
    return value
