"""Capacity through a real gateway and real sockets: slots, the admission queue's order,
its refusals, per-key limits, and leaving the queue.

The slot holder is a streamed request the fake upstream holds open after its first chunk
(`hold_stream`); the requests behind it wait in the gateway, and the order in which the
fake then receives them is the order they were admitted in.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config
from tests.hive import assert_openai_error, calls
from tests.wsclient import connect, receive

ENV = {"A_KEY": "sk-a-1", "B_KEY": "sk-b-2", "OPS_KEY": "sk-ops-3", "VIP_KEY": "sk-vip-4",
       "ONE_KEY": "sk-one-5", "SLOW_KEY": "sk-slow-6"}
KEYS = """
[[auth.keys]]
name = "a"
key_env = "A_KEY"
scopes = ["inference"]

[[auth.keys]]
name = "b"
key_env = "B_KEY"
scopes = ["inference"]

[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["read", "operate"]
"""


def chat(text: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": "m1", "stream": stream, "messages": [{"role": "user", "content": text}]}


def auth(key: str, **headers: str) -> dict[str, str]:
    """The headers of a request made with the key named `key` (its secret is ENV's)."""
    return {"authorization": f"Bearer {ENV[key.upper() + '_KEY']}", **headers}


class Gate:
    """A gateway with keys in front of one fake upstream of `slots` slots."""

    def __init__(self, running: InProcess, fake: FakeUpstream) -> None:
        self.running = running
        self.fake = fake
        self.gateway = running.gateway
        self.client = httpx.AsyncClient(base_url=running.url, timeout=30)

    @property
    def admission(self) -> Any:
        return self.gateway.admission

    async def until_waiting(self, count: int) -> None:
        """Until `count` requests wait in the queue (the caller holds the deadline)."""
        while self.admission.waiting != count:
            await trio.sleep(0.005)

    async def until_received(self, count: int) -> None:
        while len(calls(self.fake)) < count:
            await trio.sleep(0.005)

    def order(self) -> list[str]:
        """The prompts in the order the upstream received them."""
        return [r["json"]["messages"][0]["content"] for r in calls(self.fake)]

    async def hold_the_slot(self, nursery: trio.Nursery, key: str = "a") -> list[httpx.Response]:
        """Take the only slot with a streamed request the upstream holds open."""
        self.fake.set_fault("hold_stream", after_chunks=1)
        done: list[httpx.Response] = []
        nursery.start_soon(self.post, chat("holder", stream=True), key, done)
        await self.until_received(1)
        return done

    async def post(
        self, body: dict[str, Any], key: str, into: list[httpx.Response], **headers: str
    ) -> None:
        response = await self.client.post("/v1/chat/completions", json=body,
                                          headers=auth(key, **headers))
        into.append(response)

    def release_all(self) -> None:
        self.fake.set_fault("ok")
        self.fake.release()


async def start(
    nursery: trio.Nursery, tmp_path: Path, *, slots: int | None = 1, extra: str = "",
    more: str = "", grace: float | None = None,
) -> Gate:
    fake = FakeUpstream(["m1"])
    port = await nursery.start(fake.serve)
    upstream_extra = f"max_in_flight = {slots}\n" if slots is not None else ""
    config = write_config(
        tmp_path,
        KEYS + extra + upstream_toml("fake", port, ["chat"], extra=upstream_extra) + more,
    )
    if grace is not None:
        text = config.read_text().replace("shutdown_grace_s = 5", f"shutdown_grace_s = {grace}")
        config.write_text(text)
    running = await gateway_in_process(nursery, config, ENV)
    gate = Gate(running, fake)
    nursery.start_soon(close_at_end, gate.client)
    return gate


async def close_at_end(client: httpx.AsyncClient) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


async def test_a_service_gets_no_more_requests_than_its_slots_and_the_rest_wait(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, slots=1)
        holder = await gate.hold_the_slot(nursery)
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            for i in range(3):
                waiting.start_soon(gate.post, chat(f"w{i}"), "a", done)
            await gate.until_waiting(3)
            assert len(calls(gate.fake)) == 1  # nothing sent past the one slot
            services = (await gate.client.get("/v1/cluster/services",
                                              headers=auth("ops"))).json()["data"]
            assert (services[0]["slots_total"], services[0]["in_flight"],
                    services[0]["queued"]) == (1, 1, 3)
            gate.release_all()
        await gate.until_received(4)
        while not holder:
            await trio.sleep(0.005)
    assert [r.status_code for r in done] == [200, 200, 200]
    assert all(int(r.headers["x-geniehive-queued-ms"]) >= 0 for r in done)
    assert "x-geniehive-queued-ms" not in holder[0].headers  # it never waited
    assert gate.admission.waiting == 0


async def test_a_full_queue_is_429_queue_full_with_retry_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, extra="[capacity]\nmax_queue = 1\n")
        await gate.hold_the_slot(nursery)
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            waiting.start_soon(gate.post, chat("waits"), "a", done)
            await gate.until_waiting(1)
            refused = await gate.client.post("/v1/chat/completions", json=chat("refused"),
                                             headers=auth("b"))
            gate.release_all()
    error = assert_openai_error(refused, 429, "queue_full")
    assert error["type"] == "rate_limit_error"
    assert "1 requests waiting" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200]
    assert "refused" not in gate.order()


async def test_a_request_waits_at_most_its_max_wait_then_429_queue_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path)
        await gate.hold_the_slot(nursery)
        started = trio.current_time()
        refused = await gate.client.post(
            "/v1/chat/completions", json=chat("late"),
            headers=auth("a", **{"x-geniehive-max-wait-ms": "200"}),
        )
        waited = trio.current_time() - started
        bad = await gate.client.post(
            "/v1/chat/completions", json=chat("bad"),
            headers=auth("a", **{"x-geniehive-max-wait-ms": "soon"}),
        )
        gate.release_all()
    error = assert_openai_error(refused, 429, "queue_timeout")
    assert "model 'm1'" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert 0.2 <= waited < 5
    assert assert_openai_error(bad, 400, "invalid_request")["param"] == "X-GenieHive-Max-Wait-Ms"
    assert gate.order() == ["holder"]
    assert gate.admission.waiting == 0


async def test_a_client_that_disconnects_while_waiting_leaves_the_queue_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path)
        await gate.hold_the_slot(nursery)
        async with trio.open_nursery() as waiting:
            waiting.start_soon(gate.post, chat("gone"), "a", [])
            await gate.until_waiting(1)
            waiting.cancel_scope.cancel()  # closes the client's connection
        while gate.admission.waiting:
            await trio.sleep(0.005)
        done: list[httpx.Response] = []
        gate.release_all()
        await gate.post(chat("next"), "a", done)
    assert gate.order() == ["holder", "next"]  # the one that left was never sent
    assert done[0].status_code == 200


async def test_two_keys_share_a_full_service_in_turn(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path)
        await gate.hold_the_slot(nursery)
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            for i in range(4):
                waiting.start_soon(gate.post, chat(f"a{i}"), "a", done)
                await gate.until_waiting(i + 1)
            for i in range(2):
                waiting.start_soon(gate.post, chat(f"b{i}"), "b", done)
                await gate.until_waiting(5 + i)
            gate.release_all()
    assert len(done) == 6 and all(r.status_code == 200 for r in done)
    # Arrival alone would send a0..a3 before b0: fair share alternates the two keys.
    assert gate.order() == ["holder", "a0", "b0", "a1", "b1", "a2", "a3"]


async def test_higher_priority_goes_first_and_a_key_cannot_raise_its_own(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    keys = """
[[auth.keys]]
name = "vip"
key_env = "VIP_KEY"
scopes = ["inference"]
priority = "high"
"""
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, extra=keys)
        await gate.hold_the_slot(nursery)
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            asks = [("low", "a", "low"), ("asks-high", "b", "high"), ("normal", "a", None),
                    ("vip", "vip", None)]
            for count, (text, key, priority) in enumerate(asks, 1):
                headers = {"x-geniehive-priority": priority} if priority else {}
                waiting.start_soon(partial(gate.post, chat(text), key, done, **headers))
                await gate.until_waiting(count)
            bad = await gate.client.post("/v1/chat/completions", json=chat("x"),
                                         headers=auth("a", **{"x-geniehive-priority": "now"}))
            gate.release_all()
    # vip (its key's high) first; b asked for high but its key is normal: served as normal,
    # in arrival order with a's normal; low last.
    assert gate.order() == ["holder", "vip", "asks-high", "normal", "low"]
    assert assert_openai_error(bad, 400, "invalid_request")["param"] == "X-GenieHive-Priority"


async def test_a_key_at_its_max_in_flight_waits_while_another_key_goes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    keys = """
[[auth.keys]]
name = "one"
key_env = "ONE_KEY"
scopes = ["inference"]
max_in_flight = 1
"""
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, slots=None, extra=keys)  # unlimited slots
        await gate.hold_the_slot(nursery, key="one")
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            waiting.start_soon(gate.post, chat("one-second"), "one", done)
            await gate.until_waiting(1)
            gate.fake.set_fault("ok")
            other: list[httpx.Response] = []
            await gate.post(chat("other-key"), "a", other)  # not held up
            assert gate.order() == ["holder", "other-key"]
            gate.release_all()
    assert gate.order() == ["holder", "other-key", "one-second"]
    assert other[0].status_code == 200 and done[0].status_code == 200


async def test_requests_per_minute_answers_the_excess_429_rate_limited(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    keys = """
[[auth.keys]]
name = "slow"
key_env = "SLOW_KEY"
scopes = ["inference"]
requests_per_minute = 2
"""
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, slots=None, extra=keys)
        answers = [
            await gate.client.post("/v1/chat/completions", json=chat(f"r{i}"),
                                   headers=auth("slow"))
            for i in range(3)
        ]
        other = await gate.client.post("/v1/chat/completions", json=chat("o"), headers=auth("a"))
        capacity = (await gate.client.get("/v1/cluster/capacity", headers=auth("ops"))).json()
        metrics = (await gate.client.get("/metrics", headers=auth("ops"))).text
    assert [r.status_code for r in answers[:2]] == [200, 200]
    error = assert_openai_error(answers[2], 429, "rate_limited")
    assert "2 requests per minute" in error["message"]
    assert 1 <= int(answers[2].headers["retry-after"]) <= 30
    assert other.status_code == 200
    assert gate.order() == ["r0", "r1", "o"]
    assert capacity["rate_limited"] == 1
    assert 'geniehive_refusals_total{code="rate_limited"} 1.0' in metrics


async def test_the_route_explanation_says_full_and_a_free_service_is_preferred(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    other = FakeUpstream(["m1"])
    other_port = await nursery.start(other.serve)
    second = upstream_toml("other", other_port, ["chat"], extra="max_in_flight = 1\n")
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, more=second)
        fakes = (gate.fake, other)
        for fake in fakes:
            fake.set_fault("hold_stream", after_chunks=1)
        async with trio.open_nursery() as held:
            held.start_soon(gate.post, chat("first", stream=True), "a", [])
            while sum(len(calls(f)) for f in fakes) < 1:
                await trio.sleep(0.005)
            explained = (await gate.client.get(
                "/v1/cluster/routes/resolve", params={"model": "m1"}, headers=auth("ops"),
            )).json()
            # The next request goes to the free one, not behind the full one.
            held.start_soon(gate.post, chat("second", stream=True), "a", [])
            while sum(len(calls(f)) for f in fakes) < 2:
                await trio.sleep(0.005)
            assert gate.admission.waiting == 0
            for fake in fakes:
                fake.set_fault("ok")
                fake.release()
    full = [c for c in explained["candidates"] if c["full"]]
    free = [c for c in explained["candidates"] if not c["full"]]
    assert len(full) == 1 and len(free) == 1
    assert explained["candidates"][0] == free[0]  # the free slot ranks first
    assert [len(calls(f)) for f in fakes] == [1, 1]


async def test_a_websocket_chat_waits_in_the_same_queue(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path)
        await gate.hold_the_slot(nursery)
        headers = [("authorization", f"Bearer {ENV['A_KEY']}")]
        async with connect(gate.running.url, headers) as sock:
            await sock.send_message(json.dumps(
                {"type": "chat.request", "id": "r1", "body": chat("over-ws")}
            ))
            await gate.until_waiting(1)
            assert gate.order() == ["holder"]
            gate.release_all()
            messages = [await receive(sock)]
            while messages[-1]["type"] == "chat.chunk":
                messages.append(await receive(sock))
    assert gate.order() == ["holder", "over-ws"]
    assert messages[-1]["type"] == "chat.done", messages


@pytest.mark.parametrize("grace", [0.2])
async def test_shutdown_answers_those_still_waiting_503_at_the_end_of_the_grace(
    nursery: trio.Nursery, tmp_path: Path, grace: float
) -> None:
    with trio.fail_after(20):
        gate = await start(nursery, tmp_path, grace=grace)
        await gate.hold_the_slot(nursery)
        done: list[httpx.Response] = []
        async with trio.open_nursery() as waiting:
            waiting.start_soon(gate.post, chat("never"), "a", done)
            await gate.until_waiting(1)
            gate.running.shutdown.set()
        await gate.running.done.wait()
    assert_openai_error(done[0], 503, "shutting_down")
    assert gate.order() == ["holder"]
