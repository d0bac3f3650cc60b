"""Discovery and probes survive upstreams that answer slowly or strangely."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from geniehive.adapters.prometheus import metric_sum, parse_prometheus
from tests.fakes.vllm import FakeVllm
from tests.harness import gateway_in_process, upstream_toml, write_config


def test_finite_metrics_that_sum_past_float_range_read_as_unknown() -> None:
    page = 'vllm:num_requests_running{e="0"} 1e308\nvllm:num_requests_running{e="1"} 1e308\n'
    assert metric_sum(parse_prometheus(page), "vllm:num_requests_running") is None


async def test_absurd_metrics_neither_stop_start_up_nor_hide_the_models(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        vllm = FakeVllm(["Qwen/Qwen3-8B"])
        port = await nursery.start(vllm.serve)
        page = 'vllm:num_requests_running{e="0"} 1e308\nvllm:num_requests_running{e="1"} 1e308\n'
        vllm.set_fault("status", status=200, body=page, content_type="text/plain",
                       path="/metrics")
        running = await gateway_in_process(
            nursery, write_config(tmp_path, upstream_toml("v", port, ["chat"], adapter="vllm"))
        )
        async with httpx.AsyncClient(base_url=running.url) as client:
            entry = (await client.get("/v1/models/Qwen/Qwen3-8B")).json()
        assert entry["geniehive"]["loaded"] is True
        await running.stop()
