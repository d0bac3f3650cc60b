"""A real llama.cpp server with one slot behind a real `geniehive serve`: the gateway reads
the slot count from `/props` and never sends it two requests at once; the rest wait in the
gateway and are answered in turn.

Proof from the server's own side: its `/metrics` gauge `llamacpp:requests_deferred` counts
requests llama.cpp had to queue itself because its slot was busy. Without the gateway's
queue, four concurrent requests leave three deferred for most of the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import in_thread, llamacpp_toml, sdk, stop_all, wait_routable

pytestmark = pytest.mark.realmodel

QUESTION = [{"role": "user", "content": "Name a colour."}]


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\s+([0-9.eE+-]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from llama.cpp's /metrics"
    return float(match.group(1))


async def wait_slots(client: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    with trio.fail_after(30):  # discovery reads /props within its first pass
        while True:
            services = (await client.get("/v1/cluster/services")).json()["data"]
            found = next((s for s in services if s["service_id"] == service_id), None)
            if found is not None and found["slots_total"] is not None:
                return found
            await trio.sleep(0.1)


async def burst(
    client: openai.OpenAI, server: httpx.AsyncClient, ops: httpx.AsyncClient | None
) -> tuple[list[Any], dict[str, float]]:
    """Four concurrent questions through `client`, watching the server's own gauges (and,
    given `ops`, the gateway's view of the service) until all are answered."""
    seen = {"deferred": 0.0, "processing": 0.0, "in_flight": 0, "queued": 0}
    answers: list[Any] = []

    def ask() -> Any:
        return client.chat.completions.with_raw_response.create(
            model="smollm2", messages=QUESTION, max_tokens=48, temperature=0
        )

    async def one() -> None:
        answers.append(await in_thread(ask))

    async def watch() -> None:
        while True:
            metrics = (await server.get("/metrics")).text
            seen["deferred"] = max(seen["deferred"], gauge(metrics, "llamacpp:requests_deferred"))
            seen["processing"] = max(
                seen["processing"], gauge(metrics, "llamacpp:requests_processing"))
            if ops is not None:
                view = (await ops.get("/v1/cluster/services")).json()["data"][0]
                seen["in_flight"] = max(seen["in_flight"], view["in_flight"])
                seen["queued"] = max(seen["queued"], view["queued"])
            await trio.sleep(0.02)

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        async with trio.open_nursery() as requests:
            for _ in range(4):
                requests.start_soon(one)
        inner.cancel_scope.cancel()
    assert len(answers) == 4
    for raw in answers:
        assert raw.status_code == 200
        assert raw.parse().choices[0].message.content.strip()
    return answers, seen


async def test_a_one_slot_llamacpp_server_never_runs_two_requests_at_once(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    port = free_port()
    config = write_config(tmp_path, llamacpp_toml("smollm2", port))
    with trio.fail_after(240):
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        await wait_routable(gateway.url, "smollm2")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as ops, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as server:
            service = await wait_slots(ops, "smollm2/chat")
            assert service["slots_total"] == 1  # read from /props: nothing configured it
            with sdk(gateway, timeout=120) as client:
                answers, seen = await burst(client, server, ops)
            # The control: the same burst straight at the server, which queues it itself.
            direct = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                   max_retries=0, timeout=120)
            with direct:
                _, unguarded = await burst(direct, server, None)
        await stop_all(gateway)

    # Through the gateway the server never had to queue: the gateway held the others.
    assert seen["deferred"] == 0, seen
    assert seen["processing"] <= 1, seen
    assert seen["in_flight"] <= 1, seen
    assert seen["queued"] >= 1, seen
    waited = [raw for raw in answers if "x-geniehive-queued-ms" in raw.headers]
    assert len(waited) >= 2, "the requests after the first waited for the slot"
    assert all(int(raw.headers["x-geniehive-queued-ms"]) >= 0 for raw in waited)
    # Without it, the server's own gauge shows the requests it had to defer.
    assert unguarded["deferred"] >= 1, unguarded
