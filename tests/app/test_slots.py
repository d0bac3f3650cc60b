"""A service's slots: an upstream's configured `max_in_flight` wins over the `total_slots`
llama.cpp reports, on the control file's own upstreams and on a node's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from geniehive.config import load_node
from geniehive.node import run_node
from tests.fakes.llamacpp import FakeLlamaCpp
from tests.harness import gateway_in_process, node_file, upstream_toml, write_config
from tests.nodeapi import start

NODE_KEYS = """
[[auth.keys]]
name = "node"
key_env = "NODE_KEY"
scopes = ["node"]
"""
ENV = {"NODE_KEY": "node-secret"}


async def wait_for(predicate: Any) -> None:
    # The registry publishes snapshots without an event to wait on; poll (under a deadline).
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


@pytest.mark.parametrize(("extra", "slots"), [("max_in_flight = 3\n", 3), ("", 8)])
async def test_a_control_file_upstream_has_its_configured_slots_else_the_reported_ones(
    nursery: trio.Nursery, tmp_path: Path, extra: str, slots: int
) -> None:
    with trio.fail_after(15):
        fake = FakeLlamaCpp(["smollm2"], total_slots=8, n_ctx=2048)
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("llama", port, ["chat"], "llamacpp",
                                                      extra))
        running = await gateway_in_process(nursery, config)
        gateway = running.gateway
        # Discovery has read the server (its served context is in) before the check.
        await wait_for(lambda: gateway.snapshot.services["llama/chat"].asset("smollm2")
                       .context_length == 2048)
        assert any(r["path"] == "/slots" for r in fake.requests)
        observed = gateway.snapshot.services["llama/chat"].observed
        await running.stop()
    assert (observed.slots_total, observed.slots_busy) == (slots, 0)




@pytest.mark.parametrize(("extra", "slots"), [("max_in_flight = 2\n", 2), ("", 8)])
async def test_a_node_reports_its_configured_slots_in_registration_and_heartbeats(
    nursery: trio.Nursery, tmp_path: Path, extra: str, slots: int
) -> None:
    with trio.fail_after(20):
        fake = FakeLlamaCpp(["smollm2"], total_slots=8)
        port = await nursery.start(fake.serve)
        running, client = await start(nursery, tmp_path, NODE_KEYS, ENV)
        await client.aclose()
        upstream = upstream_toml("gpu-t-llama", port, ["chat"], "llamacpp", extra)
        config = load_node(node_file(tmp_path, running.url, upstream), ENV)
        agent = trio.CancelScope()

        async def run_agent(*, task_status: Any) -> None:
            with agent:
                await run_node(config, task_status=task_status)

        await nursery.start(run_agent)
        gateway = running.gateway
        await wait_for(lambda: "gpu-t-llama/chat" in gateway.snapshot.services)
        registered = gateway.snapshot.services["gpu-t-llama/chat"].observed
        first = gateway.snapshot.hosts["gpu-t"].last_heartbeat or 0.0
        await wait_for(lambda: (gateway.snapshot.hosts["gpu-t"].last_heartbeat or 0.0) > first)
        beaten = gateway.snapshot.services["gpu-t-llama/chat"].observed
        agent.cancel()
        await running.stop()
    assert registered.slots_total == beaten.slots_total == slots
    assert beaten.slots_busy == 0
