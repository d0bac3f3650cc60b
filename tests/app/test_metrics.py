"""`GET /metrics`: Prometheus text whose values move with traffic."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import CHAT, Hive, assert_openai_error


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return None


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_metrics_move_with_traffic(hive: Hive) -> None:
    with trio.fail_after(10):
        before = await scrape(hive.client)
        assert sample(before, "geniehive_requests_total", endpoint="chat") is None
        for _ in range(3):
            assert (await hive.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        await hive.client.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                               "stream_options": {
                                                                   "include_usage": True}})
        await hive.client.post("/v1/chat/completions", json={**CHAT, "model": "made-up"})
        after = await scrape(hive.client)
    ok = sample(after, "geniehive_requests_total", endpoint="chat", route_type="direct",
                service="fake/chat", status="200")
    assert ok == 4
    # A name nobody serves is counted without its name: bounded cardinality.
    assert sample(after, "geniehive_requests_total", route_type="none", service="-",
                  status="404") == 1
    assert "made-up" not in after
    assert sample(after, "geniehive_tokens_total", service="fake/chat", direction="out") == 12
    assert sample(after, "geniehive_time_to_first_token_seconds_count",
                  service="fake/chat") == 1
    assert sample(after, "geniehive_in_flight", service="fake/chat") == 0
    assert sample(after, "geniehive_service_health", service="fake/chat", state="healthy") == 1
    assert sample(after, "geniehive_breaker_state", service="fake/chat", state="closed") == 1
    assert sample(after, "geniehive_build_info") == 1
    assert sample(after, "geniehive_request_duration_seconds_count", endpoint="chat",
                  route_type="direct") == 4


async def test_breaker_and_failures_show_up(hive: Hive) -> None:
    hive.fake.set_fault("status", status=503, message="down", path="/v1/chat")
    with trio.fail_after(10):
        for _ in range(3):
            await hive.client.post("/v1/chat/completions", json=CHAT)
        text = await scrape(hive.client)
    assert sample(text, "geniehive_breaker_state", service="fake/chat", state="open") == 1
    assert sample(text, "geniehive_upstream_attempts_total", service="fake/chat",
                  outcome="failed") == 3
    assert sample(text, "geniehive_requests_total", service="fake/chat", status="502") == 3


async def test_metrics_need_the_read_scope(nursery: trio.Nursery, tmp_path: Path) -> None:
    keys = """
[[auth.keys]]
name = "apps"
key_env = "APPS_KEY"
scopes = ["inference"]

[[auth.keys]]
name = "prom"
key_env = "PROM_KEY"
scopes = ["read"]
"""
    env = {"APPS_KEY": "k-apps", "PROM_KEY": "k-prom"}
    with trio.fail_after(10):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        running = await gateway_in_process(
            nursery, write_config(tmp_path, keys + upstream_toml("f", port, ["chat"])), env
        )
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert_openai_error(await client.get("/metrics"), 401, "invalid_api_key")
            denied = await client.get("/metrics", headers={"X-Api-Key": "k-apps"})
            assert_openai_error(denied, 403, "insufficient_scope")
            allowed = await client.get("/metrics", headers={"Authorization": "Bearer k-prom"})
            assert allowed.status_code == 200
        await running.stop()


def test_failed_attempts_are_counted_under_service_ids_that_contain_colons(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from geniehive.config import load_control
    from geniehive.exchange import Outcome
    from geniehive.gateway import Gateway
    from geniehive.models import Snapshot

    config = load_control(write_config(tmp_path, ""), {})
    registry = SimpleNamespace(snapshot=Snapshot(version=1, hosts={}, services={}, roles={}))
    gateway = Gateway(config, registry, {}, None, monotonic=lambda: 0.0)  # type: ignore[arg-type]
    outcome = Outcome(status=200, service_id="node-1:b/chat", attempts=2,
                      failures=[("node-1:a/chat", "HTTP 503: busy")])
    gateway.metrics.observe_request("chat", outcome, 0.1)
    text = gateway.metrics.render().decode()
    assert sample(text, "geniehive_upstream_attempts_total",
                  service="node-1:a/chat", outcome="failed") == 1
    assert sample(text, "geniehive_upstream_attempts_total",
                  service="node-1:b/chat", outcome="answered") == 1


def test_gpu_and_loaded_model_memory_are_exported(tmp_path: Path) -> None:
    from types import MappingProxyType, SimpleNamespace

    from geniehive.config import load_control
    from geniehive.gateway import Gateway
    from geniehive.models import Asset, Host, Service, Snapshot

    gpus = [{"index": 0, "name": "RTX 4090", "memory_total_bytes": 25_769_803_776,
             "memory_used_bytes": 3_221_225_472},
            {"index": 1, "name": "RTX 4090", "memory_total_bytes": 100, "memory_used_bytes": None}]
    host = Host("gpu-01", "127.0.0.1", metrics=MappingProxyType({"gpus": gpus}))
    assets = (Asset("qwen3:8b", loaded=True, size_bytes=5, vram_bytes=6_654_289_920),
              Asset("llama3.2:3b", loaded=False, size_bytes=2))
    service = Service("ol/chat", "gpu-01", "chat", "ollama", "http://127.0.0.1:9", assets=assets)
    snapshot = Snapshot(version=1, hosts={"gpu-01": host}, services={"ol/chat": service},
                        roles={})
    config = load_control(write_config(tmp_path, ""), {})
    registry = SimpleNamespace(snapshot=snapshot)
    gateway = Gateway(config, registry, {}, None, monotonic=lambda: 0.0)  # type: ignore[arg-type]
    text = gateway.metrics.render().decode()
    assert sample(text, "geniehive_gpu_memory_bytes", host="gpu-01", gpu="0",
                  kind="total") == 25_769_803_776
    assert sample(text, "geniehive_gpu_memory_bytes", host="gpu-01", gpu="0",
                  kind="used") == 3_221_225_472
    assert sample(text, "geniehive_gpu_memory_bytes", host="gpu-01", gpu="1", kind="total") == 100
    assert sample(text, "geniehive_gpu_memory_bytes", host="gpu-01", gpu="1", kind="used") is None
    assert sample(text, "geniehive_model_memory_bytes", service="ol/chat",
                  model="qwen3:8b") == 6_654_289_920
    assert sample(text, "geniehive_model_memory_bytes", model="llama3.2:3b") is None
