"""The node agent's connection to the control plane: kept from one heartbeat to the next, and
a kept connection closed under a request sent once more instead of counted as unreachable."""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpcore
import pytest
import trio

from geniehive.config import ControlLink, LoggingConfig, NodeConfig, NodeSection
from geniehive.node.agent import OK, NodeAgent, control_client

ANSWER = json.dumps({"status": "ok", "active_upstreams": []}).encode()


class ControlPlane:
    """A bare HTTP/1.1 server counting its connections; `drop` names the request numbers
    (counted over all connections, from 1) it reads and then answers by closing."""

    def __init__(self, drop: tuple[int, ...] = ()) -> None:
        self.connections = 0
        self.requests = 0
        self.drop = drop

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                self.requests += 1
                if self.requests in self.drop:
                    await stream.aclose()
                    return
                head = h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(ANSWER)))])
                await stream.send_all(conn.send(head) + conn.send(h11.Data(data=ANSWER))
                                      + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


class Clock:
    """httpcore's view of time (it reads time.monotonic for keep-alive expiry)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(httpcore._async.http11, "time", fake)
    return fake


async def agent_against(nursery: trio.Nursery, plane: ControlPlane) -> NodeAgent:
    [listener] = await nursery.start(partial(trio.serve_tcp, plane.serve, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
    other = "http://127.0.0.1:9"  # where a move would go
    link = ControlLink(url, urls=(url, other))
    config = NodeConfig(
        node=NodeSection("gpu-01", "10.0.0.5"), control=link, heartbeat_interval_s=5,
        model_roots=(), upstreams=(), logging=LoggingConfig(), source=Path("node.toml"),
    )
    client = control_client(link, config.heartbeat_interval_s)
    nursery.start_soon(_closing, client)
    return NodeAgent(config, {}, None, client, random.Random(3))  # type: ignore[arg-type]


async def _closing(client: Any) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


async def test_heartbeats_one_interval_apart_share_one_connection(
    nursery: trio.Nursery, clock: Clock
) -> None:
    plane = ControlPlane()
    with trio.fail_after(10):
        agent = await agent_against(nursery, plane)
        outcomes = []
        for _ in range(3):
            outcomes.append(await agent.post("/v1/nodes/heartbeat", {"host_id": "gpu-01"}))
            clock.now += 5.5  # the heartbeat interval and the agent's look at its upstreams
    assert [outcome for outcome, _ in outcomes] == [OK, OK, OK]
    assert (plane.requests, plane.connections) == (3, 1)
    nursery.cancel_scope.cancel()


async def test_a_kept_connection_closed_under_a_heartbeat_is_retried_not_left(
    nursery: trio.Nursery, clock: Clock
) -> None:
    plane = ControlPlane(drop=(2,))
    with trio.fail_after(10):
        agent = await agent_against(nursery, plane)
        first = await agent.post("/v1/nodes/heartbeat", {"host_id": "gpu-01"})
        second = await agent.post("/v1/nodes/heartbeat", {"host_id": "gpu-01"})
    assert (first[0], second[0]) == (OK, OK)
    assert agent.links.index == 0  # still on the first URL: the plane was never unreachable
    assert (plane.requests, plane.connections) == (3, 2)
    nursery.cancel_scope.cancel()
