"""Orders for nodes: the admin route queues one, the node's long poll takes it, with the same
key rules as heartbeats."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.nodeapi import assert_error, payload, start

ADMIN = {"Authorization": "Bearer admin-secret"}
KEYS = textwrap.dedent(
    """
    [[auth.keys]]
    name = "admin"
    key_env = "ADMIN_KEY"
    scopes = ["admin", "read"]

    [[auth.keys]]
    name = "rack-1"
    key_env = "RACK_KEY"
    scopes = ["node"]
    hosts = ["gpu-01"]
    """
)
ENV = {"ADMIN_KEY": "admin-secret", "RACK_KEY": "rack-secret"}
RACK = {"X-GenieHive-Node-Key": "rack-secret"}


def managed_payload(host_id: str = "gpu-01") -> Any:
    body = payload(host_id, service=f"{host_id}-lazy/chat")
    body["services"][0]["managed"] = "cold"
    return body


async def poll(client: httpx.AsyncClient, host_id: str = "gpu-01",
               headers: dict[str, str] = RACK) -> httpx.Response:
    return await client.post("/v1/nodes/orders", json={"host_id": host_id}, headers=headers)


async def test_a_queued_order_answers_the_waiting_poll_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            reg = await client.post("/v1/nodes/register", json=managed_payload(), headers=RACK)
            assert reg.status_code == 200, reg.text
            answered: list[httpx.Response] = []

            async def waiting_poll() -> None:
                answered.append(await poll(client))

            async with trio.open_nursery() as polls:
                polls.start_soon(waiting_poll)
                while not running.gateway.node_orders._wakers:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # the poll is parked on the control plane
                response = await client.post(
                    "/v1/admin/nodes/gpu-01/orders", headers=ADMIN,
                    json={"action": "start", "upstream_id": "gpu-01-lazy"},
                )
                assert response.status_code == 202, response.text
                queued = response.json()
            assert answered[0].status_code == 200
            assert answered[0].json() == {"orders": [
                {"id": queued["id"], "action": "start", "upstream_id": "gpu-01-lazy"}]}
            # Taken once: the queue is empty now.
            assert running.gateway.node_orders.pending("gpu-01") == []
        await running.stop()


async def test_the_poll_takes_the_node_key_of_that_host(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            assert_error(await poll(client, headers={}), 401, "invalid_api_key")
            assert_error(await poll(client, headers=ADMIN), 403, "insufficient_scope")
            error = assert_error(await poll(client, "gpu-02"), 403, "insufficient_scope")
            assert "gpu-02" in error["message"]
            assert_error(await poll(client), 404, "unknown_host")
            response = await client.post("/v1/nodes/orders", json={"host": "gpu-01"},
                                         headers=RACK)
            assert_error(response, 400, "invalid_request")
        await running.stop()


async def test_an_order_must_name_a_managed_upstream_of_a_known_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            await client.post("/v1/nodes/register", json=managed_payload(), headers=RACK)
            url = "/v1/admin/nodes/gpu-01/orders"
            order = {"action": "start", "upstream_id": "gpu-01-lazy"}
            bearer = {"Authorization": "Bearer rack-secret"}
            rack = await client.post(url, json=order, headers=bearer)
            assert_error(rack, 403, "insufficient_scope")
            unknown = await client.post("/v1/admin/nodes/gpu-09/orders", json=order,
                                        headers=ADMIN)
            assert_error(unknown, 404, "unknown_host")
            local = await client.post("/v1/admin/nodes/local/orders", json=order,
                                      headers=ADMIN)
            assert_error(local, 404, "unknown_host")
            other = await client.post(url, json={**order, "upstream_id": "gpu-01-vllm"},
                                      headers=ADMIN)
            assert_error(other, 404, "not_found")
            bad = await client.post(url, json={**order, "action": "restart"}, headers=ADMIN)
            assert assert_error(bad, 400, "invalid_request")["param"] == "action"
            assert running.gateway.node_orders.pending("gpu-01") == []
        await running.stop()


async def test_shutting_down_answers_a_parked_poll_with_no_orders(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            await client.post("/v1/nodes/register", json=managed_payload(), headers=RACK)
            answered: list[httpx.Response] = []

            async def waiting_poll() -> None:
                answered.append(await poll(client))

            async with trio.open_nursery() as polls:
                polls.start_soon(waiting_poll)
                while not running.gateway.node_orders._wakers:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                began = trio.current_time()
                await running.stop()
            assert trio.current_time() - began < 4  # not the 25 s of the poll
            assert answered[0].json() == {"orders": []}
