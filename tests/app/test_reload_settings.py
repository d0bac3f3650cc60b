"""A reload hands the new limits to the owners that copied them at start: the breaker, the
admission queue, session affinity, stored responses and the relay's timeouts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from geniehive.reload import ReloadRejected
from tests.harness import gateway_in_process, write_config

KEY = """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "admin"]
"""
ENV = {"OPS_KEY": "ops-secret-1"}
LIMITS = """
[routing]
max_attempts = 1
first_token_timeout_s = 7
affinity_ttl_s = 5
affinity_max_sessions = 3

[capacity]
max_queue = 4
queue_timeout_s = 2
aging_s = 3

[breaker]
failures = 8
open_s = 9

[responses]
retention_s = 11
"""


async def test_reloaded_limits_reach_their_owners(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(15):
        path = write_config(tmp_path, KEY, roles=False)
        running = await gateway_in_process(nursery, path, ENV)
        gw = running.gateway
        gw.reloader.environ = ENV
        path.write_text(path.read_text() + LIMITS)
        async with httpx.AsyncClient(base_url=running.url, timeout=5) as client:
            answer = await client.post("/v1/admin/reload",
                                       headers={"Authorization": "Bearer ops-secret-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] == ["routing", "capacity", "breaker", "responses"]
        assert (gw.live.failures, gw.live.open_s) == (8, 9.0)
        admission = gw.admission
        assert (admission.max_queue, admission.queue_timeout_s, admission.aging_s) == (4, 2, 3)
        assert (gw.affinity.ttl_s, gw.affinity.max_sessions) == (5.0, 3)
        assert gw.responses.retention_s == 11.0
        assert gw.config.routing.first_token_timeout_s == 7.0
        await running.stop()


async def test_a_reload_that_breaks_the_file_leaves_every_limit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        path = write_config(tmp_path, KEY, roles=False)
        running = await gateway_in_process(nursery, path, ENV)
        gw = running.gateway
        gw.reloader.environ = ENV
        before = gw.config
        path.write_text(path.read_text() + LIMITS + "\n[breaker.extra]\n")
        with pytest.raises(ReloadRejected) as refused:
            await gw.reloader.reload()
        problems = refused.value.problems
        assert gw.config is before
        assert gw.live.failures == before.breaker.failures
        assert gw.admission.max_queue == before.capacity.max_queue
        assert problems and all(p.startswith("breaker") for p in problems), problems
        await running.stop()
