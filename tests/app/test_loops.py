"""Request loops end at once: every upstream request carries the hop header, and a request
that names this gateway is refused with 508 (docs/architecture.md, "Loops")."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected

from geniehive import ws
from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, free_port, gateway_in_process, upstream_toml, write_config
from tests.hive import CHAT, assert_openai_error
from tests.wsclient import connect, receive, request

# Neither probes nor discovery after their first pass: the loop must be stopped by the hop
# header alone, not by a probe verdict that takes the looping service out of routing.
QUIET = "\n[prober]\ninterval_s = 60\n\n[discovery]\ninterval_s = 60\n"
ASSET = '\n[[upstreams.assets]]\nasset_id = "m1"\n'


@pytest.fixture(autouse=True)
def no_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws, "PING_INTERVAL_S", None)  # as in test_ws: shutdown stays quick


def config_at(folder: Path, port: int, upstream_port: int) -> Path:
    folder.mkdir()
    config = write_config(folder, upstream_toml("next", upstream_port, ["chat"], extra=ASSET)
                          + QUIET)
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    return config


async def gateway_at(nursery: trio.Nursery, folder: Path, port: int,
                     upstream_port: int) -> InProcess:
    """A gateway bound to `port` whose one chat upstream is `upstream_port` on loopback."""
    return await gateway_in_process(nursery, config_at(folder, port, upstream_port))


def request_lines(caplog: pytest.LogCaptureFixture, request_id: str = "") -> list[str]:
    """The request log lines (of one request id: nested requests keep the client's)."""
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(f"request id={request_id}")]


async def test_an_upstream_pointing_at_the_gateway_itself_ends_with_508_after_one_hop(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.request")
    port = free_port()
    with trio.fail_after(20):
        running = await gateway_at(nursery, tmp_path / "self", port, port)
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=CHAT)
        await running.stop()
    error = assert_openai_error(response, 508, "loop_detected")
    assert error["type"] == "server_error" and "next/chat" in error["message"]
    assert response.headers["x-geniehive-attempts"] == "1"
    # The client's request and the one it looped into: nothing more.
    lines = request_lines(caplog)
    assert len(lines) == 2, lines
    assert all("status=508" in line for line in lines)


async def test_websocket_chat_through_a_looping_upstream_gets_a_loop_error(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.request")
    port = free_port()
    with trio.fail_after(20):
        running = await gateway_at(nursery, tmp_path / "self", port, port)
        async with connect(running.url) as sock:
            await sock.send_message(request("r1", "hello"))
            answer = await receive(sock)
        await running.stop()
    assert (answer["type"], answer["id"]) == ("error", "r1")
    assert answer["error"]["code"] == "loop_detected"
    assert len(request_lines(caplog)) == 2


async def test_a_websocket_handshake_that_names_the_gateway_is_refused_508(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeUpstream(["m1"])
    with trio.fail_after(20):
        running = await gateway_at(nursery, tmp_path / "g", free_port(),
                                   await nursery.start(fake.serve))
        own = running.gateway.hops.instance_id
        # The rejection surfaces from the client's reader task, inside its nurseries.
        with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as caught:
            async with connect(running.url, [("X-GenieHive-Hops", f"other,{own}")]):
                pass
        await running.stop()
    [rejected] = caught.value.exceptions
    assert rejected.status_code == 508
    assert json.loads(rejected.body)["error"]["code"] == "loop_detected"


async def test_probes_and_listings_that_come_back_are_refused_before_any_key_check(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeUpstream(["m1"])
    with trio.fail_after(20):
        running = await gateway_at(nursery, tmp_path / "g", free_port(),
                                   await nursery.start(fake.serve))
        looped = {"X-GenieHive-Hops": running.gateway.hops.instance_id}
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            listing = await client.get("/v1/models", headers=looped)
            chat = await client.post("/v1/chat/completions", json=CHAT, headers=looped)
            fine = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={"X-GenieHive-Hops": "someone-else"})
        await running.stop()
    assert_openai_error(listing, 508, "loop_detected")
    assert_openai_error(chat, 508, "loop_detected")
    assert fine.status_code == 200
    # Only the one request that had not passed here before reached the upstream.
    calls = [r for r in fake.requests if r["path"] == "/v1/chat/completions"]
    assert len(calls) == 1
    assert calls[0]["headers"]["x-geniehive-hops"] == (
        f"someone-else,{running.gateway.hops.instance_id}"
    )


async def test_chained_gateways_pass_and_a_loop_through_two_ends_at_the_first_repeat(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.request")
    fake = FakeUpstream(["m1"])
    with trio.fail_after(30):
        fake_port = await nursery.start(fake.serve)
        port_a, port_b, port_c, port_d = (free_port() for _ in range(4))
        # a -> b -> the fake: a chain of distinct gateways works.
        a = await gateway_at(nursery, tmp_path / "a", port_a, port_b)
        b = await gateway_at(nursery, tmp_path / "b", port_b, fake_port)
        # c -> d -> c: a loop through two gateways.
        c = await gateway_at(nursery, tmp_path / "c", port_c, port_d)
        d = await gateway_at(nursery, tmp_path / "d", port_d, port_c)
        async with httpx.AsyncClient(timeout=10) as client:
            chained = await client.post(f"{a.url}/v1/chat/completions", json=CHAT)
            looped = await client.post(f"{c.url}/v1/chat/completions", json=CHAT)
        for running in (a, b, c, d):
            await running.stop()
    assert chained.status_code == 200, chained.text
    [call] = [r for r in fake.requests if r["path"] == "/v1/chat/completions"]
    assert call["headers"]["x-geniehive-hops"] == (
        f"{a.gateway.hops.instance_id},{b.gateway.hops.instance_id}"
    )
    assert_openai_error(looped, 508, "loop_detected")
    # c, d, then c again, which refused it
    assert len(request_lines(caplog, looped.headers["x-request-id"])) == 3
