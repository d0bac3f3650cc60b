"""The control plane's discovery of its own upstreams, on a gateway stand-in."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import trio

from geniehive.config import LaunchConfig, UpstreamConfig
from geniehive.discovery import discover_upstream, local_services
from geniehive.launcher import Launcher
from geniehive.models import Asset, Observed, Snapshot


class Adapter:
    def __init__(self, assets: list[Asset] | None, observed: Observed | None) -> None:
        self.assets, self.observed = assets, observed

    async def discover(self) -> list[Asset]:
        if self.assets is None:
            raise httpx.ConnectError("refused")
        return self.assets

    async def observe(self) -> Observed | None:
        return self.observed


class Gateway:
    """What discovery touches: the snapshot, the adapter, the registry and failure counts."""

    def __init__(self, upstream: UpstreamConfig, adapter: Adapter) -> None:
        services = {s.service_id: s for s in local_services([upstream])}
        self.snapshot = Snapshot(version=1, hosts={}, services=services, roles={})
        self.adapter = adapter
        self.written: list[tuple[str, tuple[Asset, ...], Observed | None]] = []
        self.failures: list[tuple[str, str]] = []
        self.registry = self
        self.launcher = Launcher([upstream], probe_for=None)  # type: ignore[arg-type]
        self.demand = self
        self.marked_at: float | None = None  # when a load last changed the server

    def marked_since(self, host_id: str, base_url: str, since: float) -> bool:
        return self.marked_at is not None and self.marked_at >= since

    def adapter_for(self, service: Any) -> Adapter:
        return self.adapter

    def count_failure(self, kind: str, key: str) -> None:
        self.failures.append((kind, key))

    async def set_service_assets(self, service_id: str, assets: Any, observed: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.written.append((service_id, tuple(assets), observed))


UPSTREAM = UpstreamConfig("gpu", "openai", "http://127.0.0.1:9", ("chat",), timeout_s=5,
                          assets=(Asset("m", family="qwen"),))


async def test_a_failed_discovery_forgets_what_was_loaded_and_the_old_load() -> None:
    gateway = Gateway(UPSTREAM, Adapter(None, Observed(queue_depth=9)))
    with trio.fail_after(5):
        await discover_upstream(gateway, UPSTREAM)
    [(service_id, assets, observed)] = gateway.written
    assert service_id == "gpu/chat"
    assert [(a.asset_id, a.loaded, a.family) for a in assets] == [("m", False, "qwen")]
    # written as "nothing known", so a queue depth read earlier stops steering routing
    assert observed == Observed()
    assert gateway.failures == [("discovery", "gpu")]


async def test_a_discovery_without_a_load_reading_counts_the_loaded_models() -> None:
    gateway = Gateway(UPSTREAM, Adapter([Asset("m", loaded=True), Asset("n", loaded=False)],
                                        None))
    with trio.fail_after(5):
        await discover_upstream(gateway, UPSTREAM)
    [(_, assets, observed)] = gateway.written
    assert [(a.asset_id, a.loaded) for a in assets] == [("m", True), ("n", False)]
    assert observed == Observed(loaded_model_count=1)
    assert gateway.failures == []


async def test_configured_slots_are_there_from_registration_and_win_over_discovery() -> None:
    upstream = replace(UPSTREAM, max_in_flight=3)
    [registered] = local_services([upstream])
    assert registered.observed == Observed(slots_total=3)
    for reading in (Observed(slots_total=8, slots_busy=5), None):
        gateway = Gateway(upstream, Adapter([Asset("m", loaded=True)], reading))
        with trio.fail_after(5):
            await discover_upstream(gateway, upstream)
        [(_, _, observed)] = gateway.written
        assert observed is not None and observed.slots_total == 3
    assert observed == Observed(slots_total=3, loaded_model_count=1)


async def test_without_configured_slots_the_reported_count_stands() -> None:
    [registered] = local_services([UPSTREAM])
    assert registered.observed.slots_total is None
    gateway = Gateway(UPSTREAM, Adapter([Asset("m", loaded=True)], Observed(slots_total=8)))
    with trio.fail_after(5):
        await discover_upstream(gateway, UPSTREAM)
    [(_, _, observed)] = gateway.written
    assert observed == Observed(slots_total=8, loaded_model_count=1)


async def test_an_on_demand_upstream_not_started_is_not_asked_and_keeps_its_assets() -> None:
    upstream = replace(UPSTREAM, launch=LaunchConfig(("llama-server",), on_demand=True))
    gateway = Gateway(upstream, Adapter(None, None))
    with trio.fail_after(5):
        await discover_upstream(gateway, upstream)  # type: ignore[arg-type]
    # Asking a stopped server would only fail and mark its assets forgotten.
    assert gateway.written == [] and gateway.failures == []


async def test_a_reading_taken_before_a_load_changed_the_server_is_not_written() -> None:
    gateway = Gateway(UPSTREAM, Adapter([Asset("m", loaded=False)], Observed()))

    class LoadDuringTheRead(Adapter):
        async def discover(self) -> list[Asset]:
            found = await super().discover()
            await trio.lowlevel.checkpoint()
            if gateway.marked_at is None:  # the gateway loads "m" during the first read
                gateway.marked_at = trio.current_time()
            return found

    gateway.adapter = LoadDuringTheRead([Asset("m", loaded=False)], Observed())
    with trio.fail_after(5):
        await discover_upstream(gateway, UPSTREAM)  # type: ignore[arg-type]
        stale = list(gateway.written)
        await discover_upstream(gateway, UPSTREAM)  # type: ignore[arg-type]
    assert stale == []
    assert [w[0] for w in gateway.written] == ["gpu/chat"]
