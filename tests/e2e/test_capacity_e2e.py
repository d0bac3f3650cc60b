"""A burst of ten times a hive's slots through a real `geniehive serve` and two real fake
upstream processes: no upstream ever holds more requests than its slots, and every request
is answered, 200 or 429 with `Retry-After`, none lost.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import spawn_fake, spawn_gateway, stop, upstream_toml, wait_ready, write_config

pytestmark = pytest.mark.e2e

SLOTS = 2
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(("max_queue", "refused"), [(1000, False), (12, True)])
async def test_a_burst_of_ten_times_the_slots_keeps_every_upstream_within_them(
    nursery: trio.Nursery, tmp_path: Path, max_queue: int, refused: bool
) -> None:
    burst = 10 * 2 * SLOTS
    with trio.fail_after(60):
        fakes = [await spawn_fake(nursery, "m1") for _ in range(2)]
        upstreams = "".join(
            upstream_toml(f"f{i}", fake.port, ["chat"], extra=f"max_in_flight = {SLOTS}\n")
            for i, fake in enumerate(fakes)
        )
        config = write_config(tmp_path, f"[capacity]\nmax_queue = {max_queue}\n" + upstreams)
        gateway = await spawn_gateway(nursery, config)
        limits = httpx.Limits(max_connections=burst + 4)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await wait_ready(client, gateway.url)
            for fake in fakes:  # each answer takes a little while: the burst piles up
                await client.post(f"{fake.url}/_fake/fault",
                                  json={"mode": "delay_chunks", "delay_s": 0.1})
            answers: list[httpx.Response] = []

            async def one() -> None:
                answers.append(await client.post(f"{gateway.url}/v1/chat/completions", json=CHAT))

            async with trio.open_nursery() as requests:
                for _ in range(burst):
                    requests.start_soon(one)
            loads = [(await client.get(f"{fake.url}/_fake/load")).json() for fake in fakes]
            received = [
                [r for r in (await client.get(f"{fake.url}/_fake/requests")).json()
                 if r["path"] == "/v1/chat/completions"]
                for fake in fakes
            ]
            capacity = (await client.get(f"{gateway.url}/v1/cluster/capacity")).json()
        await stop(gateway)
        for fake in fakes:
            await stop(fake)

    statuses = sorted(r.status_code for r in answers)
    assert len(answers) == burst  # every request was answered
    assert set(statuses) <= {200, 429}, statuses
    ok = [r for r in answers if r.status_code == 200]
    too_many = [r for r in answers if r.status_code == 429]
    for response in too_many:
        assert response.json()["error"]["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
    assert bool(too_many) is refused
    # Each fake answered exactly the 200s it was sent, and never more than its slots at once.
    assert sum(len(r) for r in received) == len(ok)
    assert [load["max_active"] for load in loads] == [SLOTS, SLOTS]
    assert all(load["active"] == 0 for load in loads)
    assert capacity["waiting"] == 0
    assert capacity["refused"].get("queue_full", 0) == len(too_many)
    waited = [r for r in ok if "x-geniehive-queued-ms" in r.headers]
    assert len(waited) >= len(ok) - 2 * SLOTS
