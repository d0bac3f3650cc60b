"""A node speaks only for its own host, and only about upstreams the gateway may call:
node keys bound to hosts, base URLs off the gateway's own listeners and at the node's
address or in `nodes.allowed_upstream_networks` (docs/deployment.md)."""

from __future__ import annotations

import argparse
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive.commands import cmd_keys
from tests.harness import InProcess
from tests.nodeapi import assert_error, heartbeat, payload, start

ADMIN = {"Authorization": "Bearer admin-secret"}
KEYS = textwrap.dedent(
    """
    [[auth.keys]]
    name = "admin"
    key_env = "ADMIN_KEY"
    scopes = ["admin", "read"]

    [[auth.keys]]
    name = "shared-nodes"
    key_env = "SHARED_KEY"
    scopes = ["node"]

    [[auth.keys]]
    name = "rack-1"
    key_env = "RACK_KEY"
    scopes = ["node"]
    hosts = ["gpu-01"]
    """
)
ENV = {"ADMIN_KEY": "admin-secret", "SHARED_KEY": "shared-secret", "RACK_KEY": "rack-secret"}


def node_key(key: str) -> dict[str, str]:
    return {"X-GenieHive-Node-Key": key}


def with_url(body: dict[str, Any], url: str) -> dict[str, Any]:
    body["services"][0]["base_url"] = url
    return body


async def create_key(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/v1/admin/keys", headers=ADMIN, json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


async def keyed(nursery: trio.Nursery, tmp_path: Path,
                extra: str = "") -> tuple[InProcess, httpx.AsyncClient]:
    make_folder(tmp_path)
    return await start(nursery, tmp_path, KEYS + extra, ENV)


def make_folder(path: Path) -> None:
    path.mkdir(exist_ok=True)


# --- node keys speak for their own host ---------------------------------------------------------


async def test_a_named_node_key_cannot_register_or_heartbeat_another_host(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        running, client = await keyed(nursery, tmp_path)
        async with client:
            key_a = await create_key(client, name="gpu-01", scopes=["node"])
            key_b = await create_key(client, name="gpu-02", scopes=["node"])
            own = await client.post("/v1/nodes/register", headers=node_key(key_b),
                                    json=payload("gpu-02", "gpu-02/chat"))
            assert own.status_code == 200, own.text
            hijack = with_url(payload("gpu-02", "gpu-02/chat"), "http://127.0.0.1:6666")
            registered = await client.post("/v1/nodes/register", headers=node_key(key_a),
                                           json=hijack)
            beat = await client.post("/v1/nodes/heartbeat", headers=node_key(key_a),
                                     json=heartbeat("gpu-02", hijack["services"]))
            mine = await client.post("/v1/nodes/register", headers=node_key(key_a),
                                     json=payload("gpu-01", "gpu-01/chat"))
        snapshot = running.gateway.snapshot
        await running.stop()
    for refused in (registered, beat):
        error = assert_error(refused, 403, "insufficient_scope")
        assert "gpu-02" in error["message"] and error["param"] == "host_id"
    assert mine.status_code == 200
    assert snapshot.services["gpu-02/chat"].base_url == "http://127.0.0.1:9"
    assert snapshot.services["gpu-01/chat"].host_id == "gpu-01"


async def test_static_node_keys_without_hosts_speak_for_any_host_with_hosts_only_those(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        running, client = await keyed(nursery, tmp_path)
        async with client:
            shared = [
                (await client.post("/v1/nodes/register", headers=node_key("shared-secret"),
                                   json=payload(h, f"{h}/chat"))).status_code
                for h in ("gpu-01", "gpu-02", "gpu-03")
            ]
            listed = await client.post("/v1/nodes/heartbeat", headers=node_key("rack-secret"),
                                       json=heartbeat("gpu-01"))
            other = await client.post("/v1/nodes/heartbeat", headers=node_key("rack-secret"),
                                      json=heartbeat("gpu-02"))
        snapshot = running.gateway.snapshot
        await running.stop()
    assert shared == [200, 200, 200]
    assert listed.status_code == 200
    assert "gpu-02" in assert_error(other, 403, "insufficient_scope")["message"]
    assert "gpu-02/chat" in snapshot.services  # the refused heartbeat replaced nothing


async def test_keys_create_with_host_is_stored_listed_and_enforced_after_a_restart(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def keys(url: str, action: str, **extra: Any) -> int:
        args = argparse.Namespace(url=url, api_key="admin-secret", keys_action=action, **extra)
        return cmd_keys(args)

    with trio.fail_after(20):
        first, client = await keyed(nursery, tmp_path)
        await client.aclose()
        created = await trio.to_thread.run_sync(lambda: keys(
            first.url, "create", name="rack-3-box", scope=["node"], model=None, host="gpu-07"))
        created_out = capsys.readouterr().out
        await first.stop()
        # The binding lives in the registry file: a new process enforces and lists it.
        second, client = await keyed(nursery, tmp_path)
        async with client:
            key = created_out.split("key: ", 1)[1].split()[0]
            refused = await client.post("/v1/nodes/register", headers=node_key(key),
                                        json=payload("rack-3-box", "box/chat"))
            allowed = await client.post("/v1/nodes/register", headers=node_key(key),
                                        json=payload("gpu-07", "gpu-07/chat"))
            listed = await trio.to_thread.run_sync(lambda: keys(second.url, "list"))
            list_out = capsys.readouterr().out
        await second.stop()
    assert (created, listed) == (0, 0)
    assert "host gpu-07" in created_out
    assert (tmp_path / "state" / "geniehive.sqlite3").exists()
    assert_error(refused, 403, "insufficient_scope")
    assert allowed.status_code == 200
    header, row = list_out.splitlines()[0], next(
        line for line in list_out.splitlines() if "rack-3-box" in line)
    assert header.split()[2:8] == ["NAME", "SCOPES", "MODELS", "STATE", "HOST", "CREATED"]
    assert row.split()[1:6] == ["rack-3-box", "node", "*", "enabled", "gpu-07"]


# --- base URLs the gateway may call ---------------------------------------------------------


async def test_a_service_at_the_gateways_own_port_is_400_naming_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        running, client = await keyed(nursery, tmp_path)
        port = running.url.rsplit(":", 1)[1]
        body = payload("gpu-01", "gpu-01/chat")
        body["services"].append({**body["services"][0], "service_id": "gpu-01/loop",
                                 "base_url": f"http://localhost:{port}/v1"})
        async with client:
            response = await client.post("/v1/nodes/register",
                                         headers=node_key("shared-secret"), json=body)
        hosts = running.gateway.snapshot.hosts
        await running.stop()
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "services[1].base_url"
    assert "gpu-01/loop" in error["message"] and f":{port}" in error["message"]
    assert "gpu-01" not in hosts


async def test_with_a_node_port_neither_port_may_be_registered(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.nodes")
    with trio.fail_after(15):
        running, client = await keyed(nursery, tmp_path, '[nodes]\nbind = ["127.0.0.1:0"]\n')
        await client.aclose()
        node_url = re.search(r"node endpoints listening on (\S+)", caplog.text).group(1)
        async with httpx.AsyncClient(base_url=node_url, timeout=5,
                                     headers=node_key("shared-secret")) as node:
            answers = [
                await node.post("/v1/nodes/register", json=with_url(payload(), url))
                for url in (node_url, running.url)
            ]
        await running.stop()
    for answer in answers:
        assert assert_error(answer, 400, "invalid_request")["param"] == "services[0].base_url"


async def test_an_upstream_off_the_nodes_address_needs_an_allowed_network(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    elsewhere = "http://127.0.0.2:9"
    with trio.fail_after(20):
        running, client = await keyed(nursery, tmp_path / "default")
        async with client:
            key = node_key("shared-secret")
            refused = await client.post("/v1/nodes/register", headers=key,
                                        json=with_url(payload(), elsewhere))
            await client.post("/v1/nodes/register", headers=key, json=payload())
            beat = await client.post("/v1/nodes/heartbeat", headers=key,
                                     json=heartbeat("gpu-01", with_url(payload(), elsewhere)
                                                    ["services"]))
        kept = running.gateway.snapshot.services["gpu-01-vllm/chat"].base_url
        await running.stop()
        allowing, client = await keyed(nursery, tmp_path / "allowing",
                                       '[nodes]\nallowed_upstream_networks = ["127.0.0.0/8"]\n')
        async with client:
            allowed = await client.post("/v1/nodes/register", headers=node_key("shared-secret"),
                                        json=with_url(payload(), elsewhere))
        stored = allowing.gateway.snapshot.services["gpu-01-vllm/chat"].base_url
        await allowing.stop()
    for answer in (refused, beat):
        error = assert_error(answer, 400, "invalid_request")
        assert error["param"] == "services[0].base_url"
        assert "'127.0.0.2'" in error["message"] and "allowed_upstream_networks" in error["message"]
    assert kept == "http://127.0.0.1:9"
    assert allowed.status_code == 200 and stored == elsewhere
