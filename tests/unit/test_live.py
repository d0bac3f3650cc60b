"""Live counters: percentiles, the reused runtime value and the health suspects."""

from __future__ import annotations

import random

from geniehive import health
from geniehive.live import WINDOW, LiveState
from geniehive.routing import NO_RUNTIME


def succeed(live: LiveState, service_id: str, latency_ms: float, now: float = 10.0) -> None:
    live.attempt_started(service_id, now)
    live.attempt_succeeded(service_id, now, latency_ms=latency_ms, ttft_ms=latency_ms / 10,
                           tokens_per_sec=latency_ms / 100)


def fail(live: LiveState, service_id: str, now: float = 10.0) -> None:
    live.attempt_started(service_id, now)
    live.attempt_failed(service_id, now)


def test_an_unknown_service_has_the_empty_runtime() -> None:
    assert LiveState().runtime("nope", 0.0) is NO_RUNTIME


def test_percentiles_follow_each_new_sample() -> None:
    live = LiveState()
    for latency in (100.0, 300.0, 200.0):
        succeed(live, "a", latency)
    first = live.runtime("a", 10.0)
    assert (first.samples, first.p50_latency_ms, first.ttft_ms, first.tokens_per_sec) == (
        3, 200.0, 20.0, 2.0
    )
    succeed(live, "a", 900.0)
    succeed(live, "a", 1000.0)
    later = live.runtime("a", 10.0)
    assert (later.samples, later.p50_latency_ms, later.ttft_ms) == (5, 300.0, 30.0)
    assert live.get("a").p95_latency_ms() == 1000.0
    fail(live, "a")
    assert live.runtime("a", 10.0).error_rate == 1 / 6


def test_percentiles_and_error_rate_cover_only_the_last_window_of_requests() -> None:
    live = LiveState()
    rng = random.Random(7)
    seen: list[tuple[float, bool]] = []
    for _ in range(3 * WINDOW + 17):
        if rng.random() < 0.2:
            fail(live, "a")
            seen.append((0.0, False))
        else:
            latency = float(rng.randrange(1, 60))  # ties, as real latencies have
            succeed(live, "a", latency)
            seen.append((latency, True))
        # what a client of the numbers expects: the window sorted afresh
        outcomes = [ok for _, ok in seen[-WINDOW:]]
        kept = sorted([lat for lat, ok in seen if ok][-WINDOW:])
        runtime = live.runtime("a", 10.0)
        assert runtime.samples == len(kept)
        assert runtime.p50_latency_ms == (kept[round(0.5 * (len(kept) - 1))] if kept else None)
        assert live.get("a").p95_latency_ms() == (
            kept[min(len(kept) - 1, round(0.95 * (len(kept) - 1)))] if kept else None)
        assert runtime.error_rate == outcomes.count(False) / len(outcomes)


def test_the_runtime_is_the_same_value_until_something_it_shows_changes() -> None:
    live = LiveState()
    succeed(live, "a", 100.0)
    first = live.runtime("a", 10.0)
    assert live.runtime("a", 11.0) is first
    live.attempt_started("a", 12.0)
    busy = live.runtime("a", 12.0)
    assert busy is not first and busy.in_flight == 1
    live.attempt_abandoned("a")
    assert live.runtime("a", 12.0).in_flight == 0
    live.get("a").probe = health.ProbeState("down", "refused", 12.0)
    assert live.runtime("a", 12.0).probe == "down"


def test_an_open_breaker_turns_half_open_after_open_s() -> None:
    live = LiveState(open_s=30.0, failures=1)
    fail(live, "a", now=100.0)
    assert live.runtime("a", 100.0).breaker == "open"
    assert live.runtime("a", 129.0).breaker == "open"
    assert live.runtime("a", 130.0).breaker == "half_open"
    assert live.runtime("a", 100.0).breaker == "open"


def test_health_suspects_name_down_probes_and_breakers_not_closed() -> None:
    live = LiveState(open_s=30.0, failures=1)
    succeed(live, "ok", 100.0)
    fail(live, "broken", now=100.0)
    live.get("probed").probe = health.ProbeState("down", "refused", 1.0)
    assert live.health_suspects == {"broken", "probed"}
    live.get("probed").probe = health.ProbeState("healthy", "ok", 2.0)
    live.attempt_started("broken", 200.0)  # the half-open trial
    live.attempt_succeeded("broken", 200.0, latency_ms=50.0)
    assert live.health_suspects == set()


def test_the_gateway_view_lets_routing_see_a_gated_service_fail_its_breaker_first() -> None:
    from geniehive.live import RuntimeView
    from geniehive.models import Asset, Host, Role, RoutingPolicy, Service, Snapshot
    from geniehive.routing import RoutingContext, resolve

    host = Host("h1", "10.0.0.1", labels={"trust_tier": "silver"}, last_heartbeat=100.0)
    services = {
        sid: Service(sid, "h1", "chat", "openai", "http://10.0.0.1:8000", assets=(Asset("m"),))
        for sid in ("a", "b")
    }
    gold = Role("gold", "chat", routing=RoutingPolicy(allowed_trust_tiers=("gold",)))
    snap = Snapshot(1, {"h1": host}, services, {"gold": gold})
    live = LiveState(open_s=30.0, failures=1)
    fail(live, "b", now=10.0)
    ctx = RoutingContext(now=100.0, runtime=RuntimeView(live, 10.0))
    gates = [(e.service_id, e.gate) for e in resolve(snap, "gold", "chat", ctx).excluded]
    assert gates == [("a", "trust_tier"), ("b", "breaker_open")]


def test_a_client_error_answer_closes_a_half_open_breaker_without_a_measurement() -> None:
    live = LiveState(open_s=10.0, failures=1)
    live.attempt_started("s", 0.0)
    live.attempt_failed("s", 0.0)
    assert live.get("s").breaker.state == "open"
    live.attempt_started("s", 10.0)  # the half-open trial
    live.attempt_refused("s", 10.5)  # the upstream answered 400: it is alive
    assert live.get("s").breaker == health.CLOSED
    assert live.get("s").in_flight == 0
    assert live.get("s").p50_latency_ms() is None


def test_a_services_models_reach_its_runtime_and_a_change_makes_a_new_one() -> None:
    live = LiveState()
    service = live.get("s")
    before = live.runtime("s", 0.0)
    assert before.models.busy == frozenset() and live.runtime("s", 0.0) is before
    service.model_started("a", 10.0)
    running = live.runtime("s", 0.0)
    assert running is not before  # a decision sees the change (memos compare by identity)
    assert running.models.busy == {"a"} and running.models.last_used == {"a": 10.0}
    service.loading("b", True)
    assert live.runtime("s", 0.0).models.loading == {"b"}
    service.loading("b", False, load_ms=1500.0)
    service.model_finished("a", 20.0)
    after = live.runtime("s", 0.0).models
    assert (after.busy, after.loading) == (frozenset(), frozenset())
    assert after.load_ms == {"b": 1500.0} and after.last_used == {"a": 20.0}
    # Changed services are in the journal decisions read.
    assert "s" in (live.changes.since(0) or [])
