"""Several control plane URLs on a node: the file's `[control] urls`, which URL the agent
uses, and how an exchange moves to the next one when the one in use is unreachable."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.config import (
    ConfigError,
    ControlLink,
    LoggingConfig,
    NodeConfig,
    NodeSection,
    load_node,
)
from geniehive.models import Host
from geniehive.node.agent import NodeAgent
from geniehive.node.failover import ControlUrls
from geniehive.node.orders import poll_once

A, B, C = "http://a:8801", "http://b:8801", "http://c:8801"
HEAD = '[node]\nhost_id = "gpu-01"\naddress = "10.0.0.5"\n[control]\n'


def load(tmp_path: Path, control: str) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(HEAD + control, encoding="utf-8")
    return load_node(path, {})


def problems(tmp_path: Path, control: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, control)
    return caught.value.problems


# --- the file --------------------------------------------------------------------------------


def test_control_urls_are_read_in_order_and_the_first_is_the_url(tmp_path: Path) -> None:
    config = load(tmp_path, f'urls = ["{A}/", "{B}"]\n')
    assert config.control.urls == (A, B)
    assert config.control.url == A


def test_a_single_url_is_a_list_of_one(tmp_path: Path) -> None:
    config = load(tmp_path, f'url = "{A}"\n')
    assert config.control == ControlLink(A)
    assert config.control.urls == (A,)


@pytest.mark.parametrize(
    ("control", "problem"),
    [
        (f'url = "{A}"\nurls = ["{B}"]\n',
         "control.urls: set either control.url or control.urls, not both"),
        ("", "control.url: required key missing (or set control.urls)"),
        ("urls = []\n", "control.urls: expected at least one item"),
        (f'urls = ["{A}", "ftp://b"]\n', "control.urls[1]: expected an http(s) URL"),
        (f'urls = ["{A}", "{A}/"]\n', f"control.urls[1]: duplicate {A!r}"),
        ("urls = \"http://a\"\n", "control.urls: expected a list"),
    ],
)
def test_bad_control_urls_are_reported_with_their_dotted_path(
    tmp_path: Path, control: str, problem: str
) -> None:
    assert problems(tmp_path, control) == [problem]


# --- the choice of URL -----------------------------------------------------------------------


def test_the_first_url_is_used_and_a_failure_moves_round_the_list() -> None:
    links = ControlUrls((A, B, C))
    assert links.current == A
    assert links.move_from(A) == B
    assert links.move_from(B) == C
    assert links.move_from(C) == A


def test_a_failure_seen_twice_moves_once() -> None:
    links = ControlUrls((A, B))
    assert links.move_from(A) == B
    assert links.move_from(A) is None  # the other task saw the same failure: stay on B
    assert links.current == B


def test_a_single_url_never_moves() -> None:
    links = ControlUrls((A,))
    assert links.move_from(A) is None
    assert links.current == A


# --- the agent against fake control planes -----------------------------------------------------


def agent_for(urls: tuple[str, ...], handler: object) -> NodeAgent:
    config = NodeConfig(
        node=NodeSection("gpu-01", "10.0.0.5"), control=ControlLink(urls[0], urls=urls),
        heartbeat_interval_s=5, model_roots=(), upstreams=(), logging=LoggingConfig(),
        source=Path("node.toml"),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    agent = NodeAgent(config, {}, None, client, random.Random(3))  # type: ignore[arg-type]
    agent.nvidia_smi = None  # no GPUs read: no subprocess

    async def host(_: object) -> Host:  # no model scan in a thread (the clock may jump)
        return Host("gpu-01", "10.0.0.5")

    agent.host = host  # type: ignore[method-assign]
    return agent


class Planes:
    """Fake control planes by URL: `down` ones refuse connections; `known` says which
    have this host registered (one not knowing it answers a heartbeat 404 unknown_host)."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.known: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        root = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.calls.append((root, request.url.path))
        if root in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v1/nodes/register":
            self.known.add(root)
        elif root not in self.known:
            return httpx.Response(404, json={"error": {"code": "unknown_host",
                                                       "message": "unknown host"}})
        return httpx.Response(200, json={"active_upstreams": []})


async def test_a_heartbeat_the_first_url_refuses_registers_with_the_next_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geniehive.node")
    planes = Planes(down=set())
    agent = agent_for((A, B), planes)
    with trio.fail_after(5):
        assert await agent.step() == 5  # registered with A
        assert planes.known == {A}
        planes.down.add(A)
        assert await agent.step() == 5  # the heartbeat interval, no backoff
    assert agent.links.current == B
    assert planes.known == {A, B}
    assert planes.calls[1:] == [
        (A, "/v1/nodes/heartbeat"),
        (B, "/v1/nodes/heartbeat"), (B, "/v1/nodes/register"), (B, "/v1/nodes/heartbeat"),
    ]
    moves = [r.getMessage() for r in caplog.records if "moving to" in r.getMessage()]
    assert len(moves) == 1
    assert moves[0].startswith(f"control plane {A} unreachable (") and B in moves[0]


async def test_when_every_url_fails_the_agent_backs_off_and_logs_the_moves_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geniehive.node")
    planes = Planes(down={A, B})
    agent = agent_for((A, B), planes)
    with trio.fail_after(5):
        delays = [await agent.step() for _ in range(4)]
    assert delays[0] <= 1 and 4 <= delays[-1] <= 8  # backoff: up to 1, 2, 4, 8 s (jittered)
    assert len(planes.calls) == 8  # each step tries each URL once, never more
    assert caplog.text.count("moving to") == 2  # the first round only; later ones at debug
    assert caplog.text.count("retrying with backoff") == 1
    assert f"control plane {A}, {B} unreachable" in caplog.text
    planes.down.clear()
    with trio.fail_after(5):
        assert await agent.step() == 5
    assert agent.links.current == A
    assert caplog.text.count(f"control plane {A} reachable") == 1


async def test_an_orders_poll_the_url_in_use_fails_moves_the_agent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(503, json={"error": {"message": "shutting down"}})
        return httpx.Response(200, json={"orders": []})

    agent = agent_for((A, B), handler)
    with trio.fail_after(5):
        assert await poll_once(agent) is None
        assert agent.links.current == B
        assert await poll_once(agent) == []
    assert agent.links.current == B


async def test_a_move_by_the_heartbeats_cancels_an_orders_poll_held_by_the_old_url(
    autojump_clock: object,
) -> None:
    from geniehive.node.orders import run_orders

    polled: list[str] = []
    planes = Planes(down=set())

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/nodes/orders":
            polled.append(request.url.host)
            await trio.sleep(25)  # a long poll with no order: held up to 25 s
            return httpx.Response(200, json={"orders": []})
        return planes(request)

    agent = agent_for((A, B), handler)
    with trio.fail_after(60):
        assert await agent.step() == 5
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_orders, agent)
            await trio.sleep(1)
            assert polled == ["a"]
            planes.down.add(A)
            assert await agent.step() == 5  # moved to B
            await trio.sleep(2)  # well before A's poll would have answered
            assert polled == ["a", "b"]
            nursery.cancel_scope.cancel()
