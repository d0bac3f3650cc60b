"""Placement: warm before cold, what a load would evict, and what can never fit."""

from __future__ import annotations

from dataclasses import replace

from geniehive.models import (
    Asset,
    Host,
    ModelsLive,
    Observed,
    Role,
    RoutingPolicy,
    Service,
    ServiceRuntime,
    ServiceState,
    Snapshot,
)
from geniehive.routing import RoutingContext, resolve
from geniehive.routing.placement import Placement, arrange, place

GIB = 2**30


def ollama(sid: str, *assets: Asset, limit: int | None = None, host: str = "h1",
           slots: int | None = None) -> Service:
    return Service(sid, host, "chat", "ollama", f"http://10.0.0.1:{len(sid)}", assets=assets,
                   state=ServiceState(health="healthy"),
                   observed=Observed(max_loaded_models=limit, slots_total=slots))


def gpu_host(host_id: str, total_gib: float | None, used_gib: float | None) -> Host:
    metrics = {}
    if total_gib is not None and used_gib is not None:
        metrics = {"vram_total_bytes": int(total_gib * GIB), "vram_used_bytes": int(used_gib * GIB)}
    return Host(host_id, "10.0.0.1", metrics=metrics, last_heartbeat=1000.0)


def warm(name: str, vram_gib: float = 4) -> Asset:
    return Asset(name, loaded=True, vram_bytes=int(vram_gib * GIB), size_bytes=int(vram_gib * GIB))


def cold(name: str, size_gib: float = 4) -> Asset:
    return Asset(name, loaded=False, size_bytes=int(size_gib * GIB))


def runtime(*, busy: tuple[str, ...] = (), used: dict[str, float] | None = None,
            loading: tuple[str, ...] = (), load_ms: dict[str, float] | None = None,
            in_flight: int = 0) -> ServiceRuntime:
    return ServiceRuntime(probe="healthy", in_flight=in_flight, models=ModelsLive(
        loading=frozenset(loading), busy=frozenset(busy), last_used=used or {},
        load_ms=load_ms or {},
    ))


def test_a_loaded_model_is_warm_and_free_or_busy_by_its_slots() -> None:
    service = ollama("s", warm("a"), slots=2)
    assert place(service, service.assets[0], runtime(), None, False).klass == "warm_free"
    busy = place(service, service.assets[0], runtime(in_flight=3), None, True, latency_ms=1000)
    # Two slots, three running: this request is second in line once both free.
    assert (busy.klass, busy.wait_ms) == ("warm_busy", 1000.0)
    # Unknown loaded state (an engine that does not say) counts as warm: nothing to load.
    unknown = replace(service, assets=(Asset("x"),))
    assert place(unknown, unknown.assets[0], runtime(), None, False).klass == "warm_free"
    # A model loading now is joined, not loaded twice.
    loading = ollama("s", cold("b"))
    assert place(loading, loading.assets[0], runtime(loading=("b",)), None, False).klass == \
        "warm_free"


def test_cold_fits_under_the_model_limit_and_in_free_memory() -> None:
    service = ollama("s", warm("a"), cold("b"), limit=2)
    assert place(service, service.assets[1], runtime(), None, False).klass == "cold_fits"
    roomy = gpu_host("h1", 24, 8)
    assert place(service, service.assets[1], runtime(), roomy, False).klass == "cold_fits"


def test_cold_evicts_the_least_recently_used_idle_models_first() -> None:
    service = ollama("s", warm("a"), warm("b"), warm("c"), cold("d"), limit=3)
    found = place(service, service.assets[3], runtime(used={"a": 30.0, "b": 10.0, "c": 20.0}),
                  None, False)
    assert found == Placement("cold_evicts", ("b",))
    # Memory: 24 GiB with 20 used; d needs 10: two idle models of 4 GiB must go.
    tight = ollama("s", warm("a"), warm("b"), warm("c"), cold("d", 10))
    found = place(tight, tight.assets[3], runtime(used={"a": 3.0, "b": 1.0, "c": 2.0}),
                  gpu_host("h1", 24, 20), False)
    assert found == Placement("cold_evicts", ("b", "c"))


def test_a_model_in_use_is_unloaded_only_after_it_is_idle_and_goes_last() -> None:
    service = ollama("s", warm("a"), cold("b"), limit=1)
    found = place(service, service.assets[1], runtime(busy=("a",)), None, False)
    assert (found.klass, found.evict, found.waits) == ("cold_evicts", ("a",), True)
    idle = place(service, service.assets[1], runtime(), None, False)
    assert (idle.klass, idle.waits) == ("cold_evicts", False)


def test_what_cannot_fit_on_an_empty_server_is_excluded_with_the_reason() -> None:
    big = ollama("big", cold("huge", 80), host="h1")
    small = ollama("small", warm("x"), host="h2")
    snap = Snapshot(
        version=1,
        hosts={"h1": gpu_host("h1", 24, 2), "h2": gpu_host("h2", None, None)},
        services={s.service_id: s for s in (big, small)},
        roles={"r": Role("r", "chat", routing=RoutingPolicy(prefer_loaded=False))},
    )
    decision = resolve(snap, "huge", "chat", RoutingContext(now=1000.0))
    assert decision.candidates == ()
    assert [(e.service_id, e.gate) for e in decision.excluded] == [("big", "does_not_fit")]
    assert "80.0 GiB" in decision.excluded[0].detail and "24.0 GiB" in decision.excluded[0].detail


def test_warm_candidates_come_before_cold_ones_when_scored_or_least_loaded() -> None:
    services = [ollama("a-cold", cold("m")), ollama("b-warm", warm("m")),
                ollama("c-evicts", warm("z"), cold("m"), limit=1)]
    snap = Snapshot(
        version=1, hosts={"h1": gpu_host("h1", None, None)},
        services={s.service_id: s for s in services}, roles={},
    )
    for strategy in ("scored", "least_loaded"):
        ctx = RoutingContext(now=1000.0, default_strategy=strategy)
        found = [c.service_id for c in resolve(snap, "m", "chat", ctx).candidates]
        assert found == ["b-warm", "a-cold", "c-evicts"], strategy
    # Round robin keeps its rotation, as it does for full services.
    for counter, first in ((0, "a-cold"), (1, "b-warm"), (2, "c-evicts")):
        ctx = RoutingContext(now=1000.0, default_strategy="round_robin",
                             rr_counters={"model:m": counter})
        assert resolve(snap, "m", "chat", ctx).candidates[0].service_id == first


class _C:
    def __init__(self, name: str, placement: Placement) -> None:
        self.upstream_model = "m"
        self.name = name
        self.placement = placement


def test_a_full_server_with_a_longer_wait_than_a_load_goes_after_the_cold_one() -> None:
    slow = [_C("busy", Placement("warm_busy", wait_ms=9000.0)),
            _C("cold", Placement("cold_fits", load_ms=2000.0))]
    arrange(slow)
    assert [c.name for c in slow] == ["cold", "busy"]
    quick = [_C("busy", Placement("warm_busy", wait_ms=500.0)),
             _C("cold", Placement("cold_fits", load_ms=2000.0))]
    arrange(quick)
    assert [c.name for c in quick] == ["busy", "cold"]
