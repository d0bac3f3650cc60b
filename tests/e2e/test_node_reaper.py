"""A node never reaps an on_demand upstream the control plane says it is using.

The node agent runs a real managed process (`sleep`) on trio's fake clock; the control plane
and the upstream's HTTP API are in-memory transports, so only the process is real.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import trio

from geniehive.adapters.loader import load_adapters
from geniehive.config import ControlLink, LoggingConfig, NodeConfig, NodeSection
from geniehive.node.agent import NodeAgent
from tests.harness import managed_upstream

HEARTBEAT_S = 5.0
IDLE_TTL_S = 60.0
# Once the reaper has begun stopping the process, its exit takes real time: the fake clock
# then jumps only after this long in real time with nothing happening.
REAL_WAIT_S = 5.0


def upstream_api(request: httpx.Request) -> httpx.Response:
    """The upstream's OpenAI API: one model, always up."""
    return httpx.Response(200, json={"object": "list", "data": [{"id": "lazy-model"}]})


class ControlPlane:
    """Answers every register and heartbeat with `answer` plus the host, and counts them."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"active_upstreams": []}
        self.reports = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.reports += 1
        host_id = json.loads(request.content)["host_id"]
        return httpx.Response(200, json={"status": "ok", "host": {"host_id": host_id},
                                         **self.answer})


async def heartbeat_for(agent: NodeAgent, seconds: float) -> None:
    """Send a report every HEARTBEAT_S for `seconds`."""
    with trio.move_on_after(seconds):
        while True:
            await agent.step()
            await trio.sleep(HEARTBEAT_S)


async def test_an_upstream_listed_as_active_is_not_reaped_until_it_stops_being_listed(
    autojump_clock: Any,
) -> None:
    lazy = managed_upstream("lazy", ["sleep", "300"], on_demand=True, idle_ttl_s=IDLE_TTL_S,
                            stop_grace_s=1)
    config = NodeConfig(
        node=NodeSection("gpu-01", "127.0.0.1"), control=ControlLink("http://control:8800"),
        heartbeat_interval_s=HEARTBEAT_S, model_roots=(), upstreams=(lazy,),
        logging=LoggingConfig(), source=Path("node.toml"),
    )
    control = ControlPlane()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream_api)) as upstreams, \
            httpx.AsyncClient(transport=httpx.MockTransport(control)) as link:
        agent = NodeAgent(config, load_adapters(), upstreams, link, random.Random(1))
        agent.nvidia_smi = None  # no GPU reading: only the managed process is real
        launcher = agent.launcher
        with trio.fail_after(10_000):
            async with trio.open_nursery() as nursery:
                await nursery.start(launcher.run)
                await agent.step()  # registers while the upstream is cold
                await launcher.ensure_running("lazy")
                # In use as far as the control plane knows: every answer lists it.
                control.answer = {"active_upstreams": ["lazy", "not-managed-here"]}
                await heartbeat_for(agent, IDLE_TTL_S * 10)
                assert launcher.state("lazy") == "running"
                # No longer in use: it is idle from the last answer that listed it.
                control.answer = {"active_upstreams": ["not-managed-here"]}
                await heartbeat_for(agent, IDLE_TTL_S - 2 * HEARTBEAT_S)
                assert launcher.state("lazy") == "running"
                await heartbeat_for(agent, 3 * HEARTBEAT_S)
                assert launcher.state("lazy") in ("stopping", "cold")
                autojump_clock.autojump_threshold = REAL_WAIT_S
                await launcher.stop("lazy")
                assert launcher.state("lazy") == "cold"
                nursery.cancel_scope.cancel()
    assert control.reports > IDLE_TTL_S * 10 / HEARTBEAT_S
