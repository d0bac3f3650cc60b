"""Route resolution: direct pools, roles, every gate, fallbacks, narrowing, strategies, scores."""

from __future__ import annotations

import pytest

from geniehive.errors import ModelNotFound, NoHealthyUpstream, WrongOperation, raise_for_decision
from geniehive.models import (
    Asset,
    BenchmarkSample,
    Host,
    Observed,
    Role,
    RoutingPolicy,
    Service,
    ServiceState,
    Snapshot,
)
from geniehive.routing import (
    Candidate,
    Exclusion,
    RouteDecision,
    RoutingContext,
    ServiceRuntime,
    benchmark_quality,
    close_matches,
    explain,
    fallback_decisions,
    fallback_order,
    is_stale,
    next_fallback,
    resolve,
    runtime_score,
)
from geniehive.routing import plan as routing_plan
from tests.routing_reference import rank_candidates, reference_direct, reference_role

NOW = 1000.0


def asset(asset_id: str, loaded: bool | None = True, **fields: object) -> Asset:
    return Asset(asset_id, loaded=loaded, **fields)  # type: ignore[arg-type]


def service(
    service_id: str, *assets: Asset, host: str = "h1", op: str = "chat", **fields: object
) -> Service:
    return Service(service_id, host, op, "openai", "http://10.0.0.1:8000", assets=assets, **fields)  # type: ignore[arg-type]


def role(role_id: str, op: str = "chat", **routing_fields: object) -> Role:
    workloads = routing_fields.pop("benchmark_workloads", ())
    return Role(
        role_id,
        op,
        routing=RoutingPolicy(**routing_fields),  # type: ignore[arg-type]
        benchmark_workloads=workloads,
    )  # type: ignore[arg-type]


def snapshot(
    services: list[Service],
    roles: list[Role] = (),
    hosts: list[Host] = (),
    benchmarks: tuple[BenchmarkSample, ...] = (),
) -> Snapshot:
    by_id = {h.host_id: h for h in hosts}
    for s in services:
        by_id.setdefault(s.host_id, Host(s.host_id, "10.0.0.1", last_heartbeat=NOW - 1))
    return Snapshot(
        1, by_id, {s.service_id: s for s in services}, {r.role_id: r for r in roles}, benchmarks
    )


def ctx(**fields: object) -> RoutingContext:
    fields.setdefault("stale_after_s", 15.0)
    return RoutingContext(now=NOW, **fields)  # type: ignore[arg-type]


def order(decision: RouteDecision) -> list[str]:
    return [c.service_id for c in decision.candidates]


def pool(decision: RouteDecision) -> list[bool]:
    return [c.pool for c in decision.candidates]


# ---------------------------------------------------------------- direct names


def test_direct_asset_pool_holds_every_service_serving_it() -> None:
    snap = snapshot(
        [
            service("a", asset("qwen3:8b")),
            service("b", asset("qwen3:8b")),
            service("c", asset("llama3")),
        ]
    )
    decision = resolve(snap, "qwen3:8b", "chat", ctx())
    assert (decision.match, decision.route_label, decision.error) == ("direct", "direct", None)
    assert order(decision) == ["a", "b"]
    assert [c.upstream_model for c in decision.candidates] == ["qwen3:8b", "qwen3:8b"]
    assert (decision.strategy, decision.rr_key) == ("scored", "model:qwen3:8b")


def test_direct_alias_sends_the_aliased_asset() -> None:
    snap = snapshot([service("a", asset("llama3"), asset("qwen3:8b", aliases=("qwen",)))])
    assert resolve(snap, "qwen", "chat", ctx()).chosen.upstream_model == "qwen3:8b"


def test_direct_service_id_sends_its_first_loaded_asset() -> None:
    snap = snapshot([service("a", asset("cold", loaded=False), asset("warm"), asset("warm2"))])
    assert resolve(snap, "a", "chat", ctx()).chosen.upstream_model == "warm"


def test_direct_candidates_pass_the_health_gates_and_list_the_excluded() -> None:
    snap = snapshot([service("a", asset("m")), service("b", asset("m"))])
    decision = resolve(snap, "m", "chat", ctx(runtime={"a": ServiceRuntime(probe="down")}))
    assert order(decision) == ["b"]
    assert decision.excluded == (Exclusion("a", "probe_down", "the health probe fails"),)


def test_direct_pool_with_every_service_excluded_is_no_healthy_upstream() -> None:
    draining = ServiceState(availability="draining")
    snap = snapshot(
        [
            service("a", asset("m"), state=draining),
            service("b", asset("m"), state=ServiceState(accept_requests=False)),
        ]
    )
    decision = resolve(snap, "m", "chat", ctx())
    assert decision.error == "no_healthy_upstream"
    assert decision.message == (
        "no routable service for model 'm': a (availability), b (not_accepting)"
    )


def test_role_prefix_always_means_the_role_even_when_an_asset_shares_its_name() -> None:
    snap = snapshot(
        [service("a", asset("writer")), service("b", asset("other"))],
        [role("writer", preferred_families=("other",))],
    )
    assert resolve(snap, "writer", "chat", ctx()).match == "direct"
    decision = resolve(snap, "role/writer", "chat", ctx())
    assert (decision.match, decision.role_id, decision.route_label) == (
        "role",
        "writer",
        "role:writer",
    )
    assert decision.chosen.service_id == "b"


def test_bare_role_id_resolves_to_the_role() -> None:
    snap = snapshot([service("a", asset("m"))], [role("helper")])
    decision = resolve(snap, "helper", "chat", ctx())
    assert (decision.match, decision.role_id, decision.rr_key) == ("role", "helper", "role:helper")
    assert order(decision) == ["a"]


def test_role_of_another_operation_is_wrong_operation() -> None:
    snap = snapshot(
        [service("e", asset("nomic"), op="embeddings")], [role("embedder", "embeddings")]
    )
    decision = resolve(snap, "embedder", "chat", ctx())
    assert (decision.match, decision.error, decision.role_id) == (
        "none",
        "wrong_operation",
        "embedder",
    )
    assert decision.message == "role 'embedder' is a embeddings role, not chat"


def test_direct_name_of_another_operation_is_wrong_operation() -> None:
    snap = snapshot([service("e", asset("nomic"), op="embeddings")])
    decision = resolve(snap, "nomic", "chat", ctx())
    assert (decision.error, decision.message) == (
        "wrong_operation",
        "model 'nomic' serves embeddings, not chat",
    )


def test_unknown_name_is_model_not_found_with_close_matches() -> None:
    snap = snapshot([service("svc-a", asset("qwen3:8b", aliases=("qwen3",)))], [role("general")])
    decision = resolve(snap, "qwen3:8", "chat", ctx())
    assert decision.error == "model_not_found"
    assert decision.match == "unknown"
    assert decision.close_matches == ("qwen3:8b", "qwen3")
    assert decision.message == "model 'qwen3:8' not found; close matches: qwen3:8b, qwen3"
    assert resolve(snap, "role/generl", "chat", ctx()).close_matches == ("general",)
    assert resolve(snap, "zzz", "chat", ctx()).message == "model 'zzz' not found"


def test_a_decision_error_raises_the_client_error_the_gateway_answers() -> None:
    snap = snapshot([service("e", asset("nomic"), op="embeddings"),
                     service("d", asset("m"), state=ServiceState(availability="draining"))])
    raise_for_decision(resolve(snap, "nomic", "embeddings", ctx()))  # routable: no error
    cases = [("zzz", ModelNotFound, "model"), ("nomic", WrongOperation, "model"),
             ("m", NoHealthyUpstream, None)]
    for name, error, param in cases:
        with pytest.raises(error) as raised:
            raise_for_decision(resolve(snap, name, "chat", ctx()))
        assert (raised.value.param, raised.value.message) == (
            param, resolve(snap, name, "chat", ctx()).message)
    assert (ModelNotFound.status, WrongOperation.status, NoHealthyUpstream.status) == (
        404, 400, 503)


def test_close_matches_ignore_case_and_keep_known_spelling() -> None:
    assert close_matches("QWEN3", {"Qwen3-8B", "llama"}) == ("Qwen3-8B",)


# ---------------------------------------------------------------- gates, one each


GATE_CASES = {
    "host_stale": (
        {},
        {"last_heartbeat": NOW - 16},
        {},
        {},
        Exclusion("s", "host_stale", "no heartbeat from host 'h1' for over 15s"),
    ),
    "probe_down": (
        {},
        {},
        {},
        {"probe": "down"},
        Exclusion("s", "probe_down", "the health probe fails"),
    ),
    "node_unhealthy": (
        {},
        {},
        {"state": ServiceState(health="unhealthy")},
        {},
        Exclusion("s", "node_unhealthy", "the node reports it unhealthy"),
    ),
    "breaker_open": (
        {},
        {},
        {},
        {"breaker": "open"},
        Exclusion("s", "breaker_open", "circuit breaker open"),
    ),
    "breaker_half_open_trial_taken": (
        {},
        {},
        {},
        {"breaker": "half_open", "trial_taken": True},
        Exclusion("s", "breaker_open", "circuit breaker half_open"),
    ),
    "availability": (
        {},
        {},
        {"state": ServiceState(availability="quarantined")},
        {},
        Exclusion("s", "availability", "quarantined"),
    ),
    "not_accepting": (
        {},
        {},
        {"state": ServiceState(accept_requests=False)},
        {},
        Exclusion("s", "not_accepting", "the service accepts no requests"),
    ),
    "trust_tier_allow_without_label": (
        {"allowed_trust_tiers": ("trusted",)},
        {},
        {},
        {},
        Exclusion("s", "trust_tier", "trust_tier unset not in trusted"),
    ),
    "trust_tier_deny": (
        {"denied_trust_tiers": ("public",)},
        {"labels": {"trust_tier": "public"}},
        {},
        {},
        Exclusion("s", "trust_tier", "trust_tier public is denied"),
    ),
    "device_class_allow": (
        {"allowed_device_classes": ("gpu_server",)},
        {"labels": {"device_class": "laptop"}},
        {},
        {},
        Exclusion("s", "device_class", "device_class laptop not in gpu_server"),
    ),
    "workload_class_allow_needs_one_match": (
        {"allowed_workload_classes": ("interactive",)},
        {"labels": {"workload_classes": ["batch", "bulk"]}},
        {},
        {},
        Exclusion("s", "workload_class", "workload_classes batch, bulk not in interactive"),
    ),
    "workload_class_deny_on_any_match": (
        {"denied_workload_classes": ("bulk",)},
        {"labels": {"workload_classes": ["interactive", "bulk"]}},
        {},
        {},
        Exclusion("s", "workload_class", "workload_classes bulk is denied"),
    ),
    "model_family": (
        {},
        {"labels": {"allowed_model_families": ["llama"]}},
        {},
        {},
        Exclusion("s", "model_family", "host serves only llama"),
    ),
    "min_context": (
        {"min_context": 8192},
        {},
        {},
        {},
        Exclusion("s", "min_context", "no asset with 8192 context"),
    ),
    "require_loaded": (
        {"require_loaded": True},
        {},
        {"loaded": False},
        {},
        Exclusion("s", "require_loaded", "no loaded asset"),
    ),
}


@pytest.mark.parametrize("case", GATE_CASES, ids=list(GATE_CASES))
def test_each_gate_excludes_a_role_candidate(case: str) -> None:
    routing_fields, host_fields, service_fields, runtime_fields, expected = GATE_CASES[case]
    service_fields = dict(service_fields)
    loaded = service_fields.pop("loaded", True)
    host_fields = {"last_heartbeat": NOW - 1, **host_fields}
    snap = snapshot(
        [service("s", asset("qwen3:8b", loaded=loaded, context_length=4096), **service_fields)],
        [role("r", **routing_fields)],
        [Host("h1", "10.0.0.1", **host_fields)],
    )
    decision = resolve(snap, "r", "chat", ctx(runtime={"s": ServiceRuntime(**runtime_fields)}))
    assert decision.candidates == ()
    assert decision.excluded == (expected,)
    assert decision.error == "no_healthy_upstream"


@pytest.mark.parametrize(
    ("routing_fields", "labels", "breaker"),
    [
        ({"allowed_trust_tiers": ("trusted",)}, {"trust_tier": "trusted"}, "closed"),
        (
            {"allowed_workload_classes": ("batch",)},
            {"workload_classes": ["bulk", "batch"]},
            "closed",
        ),
        ({"denied_device_classes": ("laptop",)}, {}, "closed"),
        ({}, {"allowed_model_families": ["QWEN"]}, "closed"),
        ({"min_context": 8192}, {}, "closed"),  # unknown context passes
        ({}, {}, "half_open"),  # a half-open breaker with its trial free admits one
    ],
)
def test_gates_let_matching_services_through(
    routing_fields: dict, labels: dict, breaker: str
) -> None:
    snap = snapshot(
        [service("s", asset("qwen3:8b"))],
        [role("r", **routing_fields)],
        [Host("h1", "10.0.0.1", labels=labels, last_heartbeat=NOW - 1)],
    )
    decision = resolve(snap, "r", "chat", ctx(runtime={"s": ServiceRuntime(breaker=breaker)}))
    assert (order(decision), decision.excluded) == (["s"], ())


def test_only_the_first_failing_gate_is_recorded() -> None:
    snap = snapshot(
        [service("s", asset("m"), state=ServiceState(availability="draining"))],
        [role("r", allowed_trust_tiers=("trusted",))],
        [Host("h1", "10.0.0.1", last_heartbeat=NOW - 100)],
    )
    decision = resolve(snap, "r", "chat", ctx())
    assert [(e.service_id, e.gate) for e in decision.excluded] == [("s", "host_stale")]


def test_asset_gates_narrow_the_asset_that_is_sent() -> None:
    snap = snapshot(
        [
            service(
                "s",
                asset("tiny", context_length=2048),
                asset("big", loaded=False, context_length=32768),
                asset("huge", context_length=131072),
            )
        ],
        [role("r", min_context=8192)],
        [
            Host(
                "h1", "10.0.0.1", labels={"allowed_model_families": ["big"]}, last_heartbeat=NOW - 1
            )
        ],
    )
    assert resolve(snap, "r", "chat", ctx()).chosen.upstream_model == "big"


def test_staleness_is_judged_from_ctx_now() -> None:
    host = Host("h1", "10.0.0.1", last_heartbeat=985.0)
    assert is_stale(host, 1000.0, 15.0) is False
    assert is_stale(host, 1000.5, 15.0) is True
    assert is_stale(Host("local", "127.0.0.1", is_local=True), 1e9, 15.0) is False
    assert is_stale(Host("h2", "10.0.0.2"), 1000.0, 15.0) is True  # never heard from
    snap = snapshot([service("s", asset("m"))], hosts=[host])
    assert order(resolve(snap, "m", "chat", RoutingContext(now=1000.0, stale_after_s=15))) == ["s"]
    late = resolve(snap, "m", "chat", RoutingContext(now=1000.5, stale_after_s=15))
    assert [e.gate for e in late.excluded] == ["host_stale"]


def test_no_healthy_upstream_message_names_each_service_and_gate() -> None:
    snap = snapshot(
        [service("svc-a", asset("m")), service("svc-b", asset("m"), host="h2")],
        [role("x")],
        [Host("h1", "10.0.0.1", last_heartbeat=NOW), Host("h2", "10.0.0.2", last_heartbeat=0)],
    )
    decision = resolve(snap, "x", "chat", ctx(runtime={"svc-a": ServiceRuntime(probe="down")}))
    assert decision.error == "no_healthy_upstream"
    assert decision.message == (
        "no routable service for role 'x': svc-a (probe_down), svc-b (host_stale)"
    )
    empty = resolve(snapshot([], [role("y", "speech")]), "y", "speech", ctx())
    assert empty.message == "no routable service for role 'y': no speech services registered"


# ---------------------------------------------------------------- fallbacks


def fallback_snapshot() -> Snapshot:
    """Roles a -> [b, c], b -> [d, a]; only d and c have candidates (by device class)."""
    return snapshot(
        [service("s-gpu", asset("m")), service("s-cpu", asset("m"), host="h2")],
        [
            role("a", allowed_trust_tiers=("secret",), fallback_roles=("b", "c")),
            role("b", allowed_device_classes=("tpu",), fallback_roles=("d", "a")),
            role("c", allowed_device_classes=("cpu",)),
            role("d", allowed_device_classes=("gpu",), strategy="least_loaded"),
        ],
        [
            Host("h1", "10.0.0.1", labels={"device_class": "gpu"}, last_heartbeat=NOW),
            Host("h2", "10.0.0.2", labels={"device_class": "cpu"}, last_heartbeat=NOW),
        ],
    )


def test_fallback_roles_are_walked_depth_first_each_once() -> None:
    snap = fallback_snapshot()
    assert fallback_order(snap, "a") == ("b", "d", "c")
    decision = resolve(snap, "a", "chat", ctx())
    assert (decision.role_id, decision.fallback_role_id) == ("a", "d")
    assert decision.route_label == "role:a;fallback:d"
    assert (order(decision), decision.strategy, decision.rr_key) == (
        ["s-gpu"],
        "least_loaded",
        "role:d",
    )
    assert decision.fallbacks == ("c",)
    assert [(d.role_id, d.fallback_role_id) for d in decision.earlier] == [("a", None), ("a", "b")]
    assert [e.gate for e in decision.earlier[0].excluded] == ["trust_tier", "trust_tier"]


def test_next_fallback_continues_after_request_time_failure() -> None:
    snap = fallback_snapshot()
    first = resolve(snap, "a", "chat", ctx())
    second = next_fallback(snap, first, ctx())
    assert (second.fallback_role_id, order(second), second.fallbacks) == ("c", ["s-cpu"], ())
    assert second.route_label == "role:a;fallback:c"
    assert next_fallback(snap, second, ctx()) is None
    chain = fallback_decisions(snap, first, ctx())
    assert [d.fallback_role_id for d in chain] == ["c"]


def test_a_role_with_candidates_keeps_its_fallbacks_for_request_time() -> None:
    snap = snapshot([service("s", asset("m"))], [role("a", fallback_roles=("b",)), role("b")])
    decision = resolve(snap, "a", "chat", ctx())
    assert (decision.fallback_role_id, decision.fallbacks) == (None, ("b",))
    assert next_fallback(snap, decision, ctx()).route_label == "role:a;fallback:b"


def test_fallback_cycle_without_candidates_terminates_visiting_each_once() -> None:
    snap = snapshot(
        [service("s", asset("m"))],
        [
            role("a", allowed_trust_tiers=("x",), fallback_roles=("b",)),
            role("b", allowed_trust_tiers=("y",), fallback_roles=("a",)),
        ],
    )
    assert fallback_order(snap, "a") == ("b",)
    decision = resolve(snap, "a", "chat", ctx())
    assert decision.error == "no_healthy_upstream"
    assert (decision.role_id, decision.fallback_role_id, decision.fallbacks) == ("a", None, ())
    assert [d.fallback_role_id for d in decision.earlier] == ["b"]
    assert decision.message == (
        "no routable service for role 'a': s (trust_tier); fallback roles tried: b"
    )


def test_fallbacks_of_another_operation_are_skipped() -> None:
    snap = snapshot(
        [service("s", asset("m")), service("e", asset("emb"), op="embeddings")],
        [
            role("a", allowed_trust_tiers=("x",), fallback_roles=("emb", "c")),
            role("emb", "embeddings", fallback_roles=("c2",)),
            role("c"),
            role("c2"),
        ],
    )
    assert fallback_order(snap, "a") == ("c",)
    assert resolve(snap, "a", "chat", ctx()).route_label == "role:a;fallback:c"


# ---------------------------------------------------------------- narrowing


def test_preferred_families_keep_lower_families_out_of_the_pool_as_failover() -> None:
    snap = snapshot(
        [
            service("s-llama", asset("llama3.1:8b")),
            service("s-mistral", asset("mistral:7b")),
            service("s-qwen-b", asset("x", family="Qwen3")),
            service("s-qwen-a", asset("qwen3:8b")),
        ],
        [role("r", preferred_families=("qwen3", "llama"), strategy="round_robin")],
    )
    decision = resolve(snap, "r", "chat", ctx(rr_counters={"role:r": 1}))
    assert order(decision) == ["s-qwen-b", "s-qwen-a", "s-llama", "s-mistral"]
    assert pool(decision) == [True, True, False, False]
    assert [c.family_rank for c in decision.candidates] == [0, 0, 1, 2]


def test_prefer_loaded_keeps_cold_services_as_failover_only() -> None:
    services = [service("cold", asset("m", loaded=False)), service("warm", asset("m"))]
    snap = snapshot(services, [role("r", strategy="round_robin")])
    decision = resolve(snap, "r", "chat", ctx())
    assert (order(decision), pool(decision)) == (["warm", "cold"], [True, False])
    relaxed = snapshot(services, [role("r", strategy="round_robin", prefer_loaded=False)])
    decision = resolve(relaxed, "r", "chat", ctx())
    assert (order(decision), pool(decision)) == (["cold", "warm"], [True, True])


def test_require_loaded_excludes_cold_services() -> None:
    snap = snapshot(
        [service("cold", asset("m", loaded=False)), service("warm", asset("m"))],
        [role("r", require_loaded=True)],
    )
    decision = resolve(snap, "r", "chat", ctx())
    assert order(decision) == ["warm"]
    assert decision.excluded == (Exclusion("cold", "require_loaded", "no loaded asset"),)


def test_prefer_loaded_ranks_before_families() -> None:
    snap = snapshot(
        [service("cold-qwen", asset("qwen3", loaded=False)), service("warm-llama", asset("llama"))],
        [role("r", preferred_families=("qwen3", "llama"))],
    )
    decision = resolve(snap, "r", "chat", ctx())
    assert order(decision) == ["warm-llama", "cold-qwen"]


# ---------------------------------------------------------------- upstream model id


def test_upstream_model_is_the_loaded_asset_of_the_best_family() -> None:
    snap = snapshot(
        [service("s", asset("llama3"), asset("qwen3:4b", loaded=False), asset("qwen3:8b"))],
        [role("r", preferred_families=("qwen3", "llama"))],
    )
    assert resolve(snap, "r", "chat", ctx()).chosen.upstream_model == "qwen3:8b"


@pytest.mark.parametrize(
    ("assets", "expected"),
    [
        ((asset("a", loaded=False), asset("b"), asset("c")), "b"),  # first loaded
        ((asset("a", loaded=False), asset("b", loaded=None)), "a"),  # first asset
        ((), "r"),  # no asset: the requested name
    ],
)
def test_upstream_model_falls_back_to_first_loaded_then_first_asset(
    assets: tuple[Asset, ...], expected: str
) -> None:
    snap = snapshot([service("s", *assets)], [role("r", preferred_families=("qwen3",))])
    assert resolve(snap, "r", "chat", ctx()).chosen.upstream_model == expected


# ---------------------------------------------------------------- strategies and scores


def test_runtime_score_parts_follow_the_formula() -> None:
    svc = service(
        "s", asset("m"), observed=Observed(queue_depth=2, p50_latency_ms=1500, tokens_per_sec=22)
    )
    score, parts = runtime_score(svc, ServiceRuntime(in_flight=1, error_rate=0.1))
    assert parts == {
        "loaded": 0.35,
        "latency": 0.30,
        "throughput": 0.20,
        "queue": -0.09,
        "errors": -0.03,
        "runtime": 0.73,
    }
    assert score == 0.73


@pytest.mark.parametrize(
    ("p50", "tps", "expected"),
    [(1500, 20, 0.85), (1501, 19.9, 0.63), (4000, 8, 0.63), (4001, 7.9, 0.4), (None, None, 0.35)],
)
def test_runtime_score_bands(p50: float | None, tps: float | None, expected: float) -> None:
    svc = service("s", asset("m"), observed=Observed(p50_latency_ms=p50, tokens_per_sec=tps))
    assert runtime_score(svc, ServiceRuntime())[0] == expected


def test_runtime_score_caps_the_queue_penalty_and_clamps_at_zero() -> None:
    svc = service("s", asset("m", loaded=False), observed=Observed(queue_depth=50))
    score, parts = runtime_score(svc, ServiceRuntime(error_rate=1.0))
    assert (parts["queue"], parts["errors"], score) == (-0.15, -0.3, 0.0)


def test_gateway_measurements_replace_the_nodes_from_five_samples() -> None:
    svc = service("s", asset("m"), observed=Observed(p50_latency_ms=5000, tokens_per_sec=5))
    measured = ServiceRuntime(samples=5, p50_latency_ms=3000, ttft_ms=400, tokens_per_sec=30)
    assert runtime_score(svc, measured)[1]["latency"] == 0.18
    assert runtime_score(svc, measured, stream=True)[1]["latency"] == 0.30
    assert runtime_score(svc, measured)[1]["throughput"] == 0.20
    few = ServiceRuntime(samples=4, p50_latency_ms=300, ttft_ms=100, tokens_per_sec=30)
    assert runtime_score(svc, few, stream=True)[0] == 0.4  # 0.35 + 0.05 + 0


def test_scored_orders_by_score_then_service_id() -> None:
    fast = Observed(p50_latency_ms=800, tokens_per_sec=40)
    snap = snapshot(
        [
            service("b", asset("m"), observed=fast),
            service("a", asset("m"), observed=fast),
            service("c", asset("m"), observed=Observed(p50_latency_ms=3000)),
        ],
        [role("r")],
    )
    decision = resolve(snap, "r", "chat", ctx())
    assert order(decision) == ["a", "b", "c"]
    assert [c.score for c in decision.candidates] == [0.85, 0.85, 0.53]


def test_scored_blends_the_benchmark_of_the_roles_workloads() -> None:
    samples = (
        BenchmarkSample("1", "b", "m", "chat.short_reasoning", "t", {"pass_rate": 1.0}),
        BenchmarkSample("2", "b", "other", "chat.short_reasoning", "t", {"pass_rate": 0.0}),
        BenchmarkSample("3", "b", "m", "chat.concise_support", "t", {"pass_rate": 0.0}),
    )
    snap = snapshot(
        [service("a", asset("m")), service("b", asset("m"))],
        [role("r", benchmark_workloads=("chat.short_reasoning",))],
        benchmarks=samples,
    )
    decision = resolve(snap, "r", "chat", ctx())
    assert order(decision) == ["b", "a"]
    assert decision.chosen.breakdown["benchmark"] == 0.65
    assert decision.chosen.score == 0.47  # 0.6 * 0.35 + 0.4 * 0.65
    assert decision.candidates[1].score == 0.35


def test_a_sample_that_passed_nothing_never_raises_a_score_however_fast() -> None:
    fast_and_wrong = {"pass_rate": 0.0, "tokens_per_sec": 500, "ttft_ms": 10}
    assert benchmark_quality(fast_and_wrong) == 0.0
    cold = [service("a", asset("m", loaded=False))]
    roles = [role("r", benchmark_workloads=("chat.short_reasoning",))]
    sample = BenchmarkSample("1", "a", "m", "chat.short_reasoning", "t", fast_and_wrong)
    before = resolve(snapshot(cold, roles), "r", "chat", ctx()).chosen
    after = resolve(snapshot(cold, roles, benchmarks=(sample,)), "r", "chat", ctx()).chosen
    assert after.breakdown["benchmark"] == 0.0
    assert after.score <= before.score


def test_least_loaded_orders_by_load_then_latency_then_id() -> None:
    snap = snapshot(
        [
            service("a", asset("m"), observed=Observed(queue_depth=1, p50_latency_ms=100)),
            service("b", asset("m"), observed=Observed(p50_latency_ms=900)),
            service("c", asset("m"), observed=Observed(p50_latency_ms=200)),
            service("d", asset("m"), observed=Observed(p50_latency_ms=200)),
        ],
        [role("r", strategy="least_loaded")],
    )
    decision = resolve(snap, "r", "chat", ctx(runtime={"c": ServiceRuntime(in_flight=1)}))
    assert order(decision) == ["d", "b", "a", "c"]
    assert [c.load for c in decision.candidates] == [0, 0, 1, 1]


@pytest.mark.parametrize("strategy", ["scored", "least_loaded"])
def test_a_candidate_at_its_slots_is_full_and_goes_after_those_with_a_free_slot(
    strategy: str,
) -> None:
    fast = Observed(p50_latency_ms=100, tokens_per_sec=40, slots_total=2)
    snap = snapshot(
        [
            service("a", asset("m"), observed=fast),
            service("b", asset("m"), observed=Observed(p50_latency_ms=3000, slots_total=1)),
            service("c", asset("m"), observed=Observed(p50_latency_ms=3000)),  # unknown slots
        ],
        [role("r", strategy=strategy)],
    )
    idle = resolve(snap, "r", "chat", ctx())
    assert order(idle)[0] == "a" and not any(c.full for c in idle.candidates)
    # a holds both its slots: it is full and ranks after b and c (c is never full).
    busy = {"a": ServiceRuntime(in_flight=2), "c": ServiceRuntime(in_flight=50)}
    decision = resolve(snap, "r", "chat", ctx(runtime=busy))
    assert order(decision)[-1] == "a"
    assert [c.full for c in decision.candidates] == [False, False, True]
    assert explain(decision)["candidates"][-1]["full"] is True


def test_round_robin_keeps_its_rotation_whatever_the_slots() -> None:
    snap = snapshot(
        [service(s, asset("m"), observed=Observed(slots_total=1)) for s in ("s1", "s2")],
        [role("r", strategy="round_robin")],
    )
    decision = resolve(snap, "r", "chat", ctx(runtime={"s1": ServiceRuntime(in_flight=1)}))
    assert order(decision) == ["s1", "s2"]  # the relay still takes the free one first


def test_role_strategy_overrides_the_default_and_unknown_means_scored() -> None:
    snap = snapshot([service("a", asset("m"))], [role("r", strategy="round_robin"), role("q")])
    least = ctx(default_strategy="least_loaded")
    assert resolve(snap, "r", "chat", least).strategy == "round_robin"
    assert resolve(snap, "q", "chat", least).strategy == "least_loaded"
    assert resolve(snap, "q", "chat", ctx(default_strategy="loaded_first")).strategy == "scored"


def test_round_robin_advances_once_per_routed_request() -> None:
    snap = snapshot(
        [service(s, asset("m")) for s in ("s3", "s1", "s4", "s2")],
        [role("r", strategy="round_robin")],
    )
    counters: dict[str, int] = {}
    extra_calls = [0, 2, 1, 0, 2, 2, 1, 0]
    chosen = []
    for extra in extra_calls:
        for _ in range(extra):  # listing and explaining resolve too, and must not advance
            resolve(snap, "r", "chat", ctx(rr_counters=dict(counters)))
        decision = resolve(snap, "r", "chat", ctx(rr_counters=dict(counters)))
        chosen.append(decision.chosen.service_id)
        counters[decision.rr_key] = counters.get(decision.rr_key, 0) + 1
    assert chosen == ["s1", "s2", "s3", "s4", "s1", "s2", "s3", "s4"]
    assert counters == {"role:r": 8}


def test_round_robin_failover_order_follows_the_rotation() -> None:
    snap = snapshot([service(s, asset("m")) for s in ("a", "b", "c")])
    decision = resolve(
        snap, "m", "chat", ctx(default_strategy="round_robin", rr_counters={"model:m": 5})
    )
    assert order(decision) == ["c", "a", "b"]


def test_rank_candidates_puts_the_pool_first() -> None:
    def cand(sid: str, loaded: bool, rank: int, score: float) -> Candidate:
        return Candidate(sid, "h", "m", score, {}, family_rank=rank, loaded=loaded)

    ranked = rank_candidates(
        [cand("x", False, 0, 0.9), cand("y", True, 1, 0.5), cand("z", True, 0, 0.1)],
        "scored",
        prefer_loaded=True,
    )
    assert [(c.service_id, c.pool) for c in ranked] == [("z", True), ("y", False), ("x", False)]


# ---------------------------------------------------------------- benchmark quality


def test_benchmark_quality_weighs_correctness_and_speed() -> None:
    # correctness 0.9; speed 30/80 + 0.4 (TTFT <= 1000 ms) = 0.775; 0.9 * (0.65 + 0.35 * 0.775)
    sample = {"quality_score": 0.9, "tokens_per_sec": 30, "ttft_ms": 900}
    assert benchmark_quality(sample) == 0.829125
    assert benchmark_quality({"tokens_per_sec": 80, "ttft_ms": 3000}) == 0.6  # speed alone
    assert benchmark_quality({"pass_rate": 0.5, "completion_rate": 0.8}) == 0.52
    assert benchmark_quality({}) == 0.0


def test_benchmark_quality_is_never_above_one() -> None:
    # The original summed pass_rate and speed bonuses and reached 1.6 before clamping.
    best = {"pass_rate": 1.0, "quality_score": 1.7, "tokens_per_sec": 500, "ttft_ms": 10}
    assert benchmark_quality(best) == 1.0
    slow = {"pass_rate": 1.0, "tokens_per_sec": 8, "ttft_ms": 5000}
    assert benchmark_quality(slow) == 0.72  # 0.65 + 0.35 * (0.1 + 0.1): speed still counts
    assert benchmark_quality({"pass_rate": True, "tokens_per_sec": "fast"}) == 0.0


def test_a_service_whose_host_is_missing_is_stale_unless_local() -> None:
    services = [
        service("ghost-svc", asset("m"), host="ghost"),
        service("own", asset("m"), host="local"),
    ]
    snap = Snapshot(1, {}, {s.service_id: s for s in services}, {})
    decision = resolve(snap, "m", "chat", ctx())
    assert order(decision) == ["own"]
    assert [(e.service_id, e.gate) for e in decision.excluded] == [("ghost-svc", "host_stale")]


# ---------------------------------------------------------------- per-snapshot plans and reuse
# `resolve` keeps per-snapshot plans and reuses candidates while their runtime is unchanged;
# these claims pin that it decides exactly as the gate-by-gate definition does
# (tests/routing_reference.py).


def busy_cluster(seed: int) -> tuple[Snapshot, list[Role]]:
    import random

    rng = random.Random(seed)
    hosts = [
        Host(
            f"h{n}",
            "10.0.0.1",
            labels={
                "trust_tier": rng.choice(["gold", "silver"]),
                "device_class": rng.choice(["gpu", "cpu"]),
                **({"allowed_model_families": ["qwen"]} if n == 3 else {}),
            },
            last_heartbeat=NOW - rng.choice([1, 1, 1, 20]),
        )
        for n in range(6)
    ]
    services = []
    for n in range(40):
        assets = [
            asset(
                f"m{n}",
                loaded=rng.choice([True, False, None]),
                family=rng.choice(["qwen", "llama"]),
                context_length=rng.choice([None, 4096, 32768]),
            ),
            asset("shared", loaded=rng.choice([True, False])),
        ]
        services.append(service(
            f"s{n:02d}", *assets[: rng.choice([1, 2, 2])], host=f"h{n % 7}",
            state=ServiceState(
                health=rng.choice(["healthy", "healthy", "unhealthy"]),
                availability=rng.choice(["available", "available", "draining"]),
                accept_requests=rng.random() > 0.1,
            ),
            observed=Observed(
                p50_latency_ms=rng.choice([None, 900.0, 3000.0]), queue_depth=n % 3,
                slots_total=rng.choice([None, 1, 2, 8]),
            ),
        ))
    roles = [
        role("any", preferred_families=("qwen", "llama")),
        role("gold", allowed_trust_tiers=("gold",), strategy="least_loaded"),
        role("gpu", allowed_device_classes=("gpu",), prefer_loaded=True, strategy="round_robin"),
        role("long", min_context=8192, require_loaded=True, preferred_families=("llama",)),
    ]
    return snapshot(services, roles, hosts), roles


def shuffled_runtimes(seed: int, snap: Snapshot) -> dict[str, ServiceRuntime]:
    import random

    rng = random.Random(seed)
    runtimes = {}
    for service_id in snap.services:
        if rng.random() < 0.5:
            continue
        runtimes[service_id] = ServiceRuntime(
            probe=rng.choice(["healthy", "healthy", "down", "unknown"]),
            breaker=rng.choice(["closed", "closed", "open", "half_open"]),
            trial_taken=rng.random() < 0.5,
            in_flight=rng.randrange(4),
            samples=rng.choice([0, 10]),
            p50_latency_ms=rng.choice([500.0, 2000.0]),
            error_rate=rng.choice([0.0, 0.5]),
        )
    return runtimes


class SuspectView(dict):  # type: ignore[type-arg]
    """Runtimes that also name their health suspects, as the gateway's view does."""

    def health_suspects(self) -> frozenset[str]:
        return frozenset(
            sid for sid, rt in self.items() if rt.probe == "down" or rt.breaker != "closed"
        )


@pytest.mark.parametrize("view", [dict, SuspectView])
def test_decisions_match_the_gate_by_gate_definition_as_runtimes_change(view: type) -> None:
    snap, roles = busy_cluster(7)
    runtimes = view()
    counters: dict[str, int] = {}
    for step in range(12):  # one context whose runtimes and counters change between decisions
        runtimes.clear()
        runtimes.update(shuffled_runtimes(step, snap))
        counters["role:gpu"] = step
        # hosts go stale too as `now` moves on
        c = RoutingContext(NOW + step, 15.0, runtime=runtimes, rr_counters=counters)
        for r in roles:
            decision = resolve(snap, r.role_id, "chat", c)
            candidates, excluded = reference_role(snap, r.role_id, r, c)
            assert (decision.candidates, decision.excluded) == (candidates, excluded)
        direct = resolve(snap, "shared", "chat", c)
        assert (direct.candidates, direct.excluded) == reference_direct(snap, "shared", c)


def test_an_unchanged_decision_is_reused_and_a_changed_runtime_is_not() -> None:
    snap = snapshot(
        [service("a", asset("m")), service("b", asset("m"))],
        [role("r", strategy="least_loaded")],
    )
    runtimes = {"a": ServiceRuntime(in_flight=0), "b": ServiceRuntime(in_flight=1)}
    c = ctx(runtime=runtimes)
    first = resolve(snap, "r", "chat", c)
    assert order(first) == ["a", "b"]
    assert resolve(snap, "r", "chat", c).candidates is first.candidates
    runtimes["a"] = ServiceRuntime(in_flight=2)
    assert order(resolve(snap, "r", "chat", c)) == ["b", "a"]
    runtimes["b"] = ServiceRuntime(probe="down")
    late = resolve(snap, "r", "chat", c)
    assert order(late) == ["a"]
    assert late.excluded == (Exclusion("b", "probe_down", "the health probe fails"),)


def test_a_new_snapshot_is_decided_on_its_own_services() -> None:
    gold = Host("h1", "10.0.0.1", labels={"trust_tier": "gold"}, last_heartbeat=NOW)
    silver = Host("h1", "10.0.0.1", labels={"trust_tier": "silver"}, last_heartbeat=NOW)
    roles = [role("r", allowed_trust_tiers=("gold",))]
    before = snapshot([service("a", asset("m")), service("b", asset("m"))], roles, [gold])
    assert order(resolve(before, "r", "chat", ctx())) == ["a", "b"]
    drained = service("a", asset("m"), state=ServiceState(availability="draining"))
    after = snapshot([drained, service("b", asset("m"))], roles, [gold])
    decision = resolve(after, "r", "chat", ctx())
    assert order(decision) == ["b"]
    assert [(e.service_id, e.gate) for e in decision.excluded] == [("a", "availability")]
    relabeled = snapshot([service("a", asset("m")), service("b", asset("m"))], roles, [silver])
    assert [e.gate for e in resolve(relabeled, "r", "chat", ctx()).excluded] == ["trust_tier"] * 2
    assert order(resolve(before, "r", "chat", ctx())) == ["a", "b"]  # the old one is intact


def test_a_statically_excluded_service_records_its_failing_health_gate_first() -> None:
    hosts = [Host("h1", "10.0.0.1", labels={"trust_tier": "silver"}, last_heartbeat=NOW)]
    snap = snapshot([service("a", asset("m"))], [role("r", allowed_trust_tiers=("gold",))], hosts)
    for view in (dict, SuspectView):
        runtimes = view()
        c = ctx(runtime=runtimes)
        assert [e.gate for e in resolve(snap, "r", "chat", c).excluded] == ["trust_tier"]
        runtimes["a"] = ServiceRuntime(breaker="open")
        assert [e.gate for e in resolve(snap, "r", "chat", c).excluded] == ["breaker_open"]
        late = RoutingContext(NOW + 60, 15.0, runtime=runtimes)
        assert [e.gate for e in resolve(snap, "r", "chat", late).excluded] == ["host_stale"]
        runtimes.clear()
        assert [e.gate for e in resolve(snap, "r", "chat", c).excluded] == ["trust_tier"]


def test_plans_are_dropped_with_their_snapshot() -> None:
    import gc

    snap = snapshot([service("a", asset("m"))], [role("r")])
    resolve(snap, "r", "chat", ctx())
    key = id(snap)
    assert key in routing_plan._INDEXES
    del snap
    gc.collect()
    assert key not in routing_plan._INDEXES


@pytest.mark.parametrize("journal_limit", [65536, 6])
def test_decisions_read_incrementally_from_live_counters_match_the_definition(
    journal_limit: int,
) -> None:
    # The gateway's view names the services whose runtime changed since a decision; reading
    # only those (and the suspects, whose open breakers move with the clock) must decide as
    # reading everything does, including after the journal dropped entries a memo needed.
    import random

    from geniehive import health
    from geniehive.live import LiveState, RuntimeView

    snap, roles = busy_cluster(11)
    live = LiveState(open_s=1.0, failures=2, journal_limit=journal_limit)
    rng = random.Random(5)
    ids = sorted(snap.services)
    clock = 100.0
    for step in range(60):
        for _ in range(rng.choice([0, 1, 1, 3, 12])):
            sid = rng.choice(ids)
            counters = live.get(sid)
            action = rng.random()
            if action < 0.35:
                live.attempt_started(sid, clock)
            elif counters.in_flight > 0 and action < 0.55:
                live.attempt_succeeded(sid, clock, latency_ms=rng.choice([300.0, 2500.0]))
            elif counters.in_flight > 0 and action < 0.75:
                live.attempt_failed(sid, clock)
            elif counters.in_flight > 0 and action < 0.8:
                live.attempt_refused(sid, clock)
            elif counters.in_flight > 0 and action < 0.85:
                live.attempt_abandoned(sid)
            elif action < 0.9:
                verdict = rng.choice(["healthy", "down", "unknown"])
                counters.probe = health.ProbeState(verdict, "test", clock)
            elif action < 0.95:  # set directly, as an operator's reset would
                counters.breaker = rng.choice(
                    [health.CLOSED, health.BreakerState("open", 3, clock)]
                )
            else:  # a measurement alone, without an attempt around it
                counters.record(rng.random() < 0.5, rng.choice([300.0, 2500.0]))
        clock += rng.choice([0.0, 0.4, 1.5])  # open breakers go half-open with time alone
        view = RuntimeView(live, clock)
        frozen = {sid: view.get(sid) for sid in ids}
        rr = {"role:gpu": step, "model:shared": step}
        c = RoutingContext(NOW + step / 4, 15.0, runtime=view, rr_counters=rr)
        reference = RoutingContext(NOW + step / 4, 15.0, runtime=frozen, rr_counters=rr)
        for r in roles:
            decision = resolve(snap, r.role_id, "chat", c)
            assert (decision.candidates, decision.excluded) == reference_role(
                snap, r.role_id, r, reference
            ), (step, r.role_id)
        direct = resolve(snap, "shared", "chat", c)
        assert (direct.candidates, direct.excluded) == reference_direct(snap, "shared", reference)
    # the small journal dropped entries, so some decisions read everything again
    assert (live.changes.base > 0) == (journal_limit < len(ids))


def test_the_journal_says_what_changed_and_when_it_no_longer_knows() -> None:
    from geniehive import health
    from geniehive.live import Journal, LiveState, RuntimeView

    live = LiveState()
    view = RuntimeView(live, 0.0)
    token, ids = view.changes_since(None)
    assert ids is None  # a first reader reads everything
    live.attempt_started("a", 0.0)
    token, ids = view.changes_since(token)
    assert set(ids) == {"a"}
    token, ids = view.changes_since(token)
    assert list(ids) == []
    live.get("b").probe = health.ProbeState("down", "refused", 1.0)
    token, ids = view.changes_since(token)
    assert set(ids) == {"b"}
    live.get("b").probe = health.ProbeState("down", "still refused", 2.0)
    token, ids = view.changes_since(token)
    assert list(ids) == []  # same verdict: routing reads nothing new
    other = RuntimeView(LiveState(), 0.0)
    assert other.changes_since(token)[1] is None  # another live state's token
    small = Journal(limit=4)
    position = small.position
    for n in range(5):
        small.add(f"s{n}")
    assert small.since(position) is None  # dropped: the reader must read everything
    assert small.since(small.position - 1) == ["s4"]


def test_a_breaker_reset_by_hand_is_seen_by_the_next_incremental_decision() -> None:
    from geniehive import health
    from geniehive.live import LiveState, RuntimeView

    snap = snapshot([service("a", asset("m")), service("b", asset("m"))], [role("r")])
    live = LiveState()

    def c() -> RoutingContext:  # a fresh view per decision, as the gateway makes one
        return ctx(runtime=RuntimeView(live, 50.0))

    assert order(resolve(snap, "r", "chat", c())) == ["a", "b"]
    live.get("a").breaker = health.BreakerState("open", 3, 50.0)
    assert order(resolve(snap, "r", "chat", c())) == ["b"]
    live.get("a").breaker = health.CLOSED  # no longer a suspect: only the journal tells
    assert order(resolve(snap, "r", "chat", c())) == ["a", "b"]


def test_a_decision_from_a_plain_mapping_does_not_leave_the_journal_position_behind() -> None:
    from geniehive.live import LiveState, RuntimeView

    snap = snapshot([service("a", asset("m")), service("b", asset("m"))],
                    [role("r", strategy="least_loaded")])
    live = LiveState()
    live.attempt_started("b", 1.0)  # b busy, a idle
    assert order(resolve(snap, "r", "chat", ctx(runtime=RuntimeView(live, 1.0)))) == ["a", "b"]
    other = {"a": ServiceRuntime(in_flight=5)}  # somebody else's numbers
    assert order(resolve(snap, "r", "chat", ctx(runtime=other))) == ["b", "a"]
    # back on the live view, with nothing journaled since: its numbers again, not the dict's
    assert order(resolve(snap, "r", "chat", ctx(runtime=RuntimeView(live, 1.0)))) == ["a", "b"]


def test_an_incremental_decision_looks_up_only_what_changed() -> None:
    from geniehive.live import LiveState, RuntimeView

    lookups: list[str] = []

    class Counting(RuntimeView):
        def get(self, service_id: str, default: object = None) -> ServiceRuntime:
            lookups.append(service_id)
            return super().get(service_id, default)

    names = [f"s{n:02d}" for n in range(20)]
    snap = snapshot([service(n, asset("m")) for n in names], [role("r")])
    live = LiveState()
    for n in names:
        live.attempt_started(n, 1.0)
    resolve(snap, "r", "chat", ctx(runtime=Counting(live, 1.0)))
    assert sorted(lookups) == names  # the first decision reads everything
    for _ in range(3):  # then only the changed services, decision after decision
        lookups.clear()
        live.attempt_succeeded("s07", 1.0, latency_ms=10.0)
        live.attempt_started("s07", 1.0)
        resolve(snap, "r", "chat", ctx(runtime=Counting(live, 1.0)))
        assert lookups == ["s07"]


def test_any_mapping_declaring_incremental_runtimes_is_read_incrementally() -> None:
    # The protocol is the contract, not the gateway's view: a mapping that says what changed
    # is asked only for that; a plain mapping of the same numbers is read whole every time.
    from collections.abc import Iterator, Mapping

    from geniehive.live import LiveState, RuntimeView
    from geniehive.routing import HealthSuspects, IncrementalRuntimes

    class Recorded(Mapping[str, ServiceRuntime]):
        def __init__(self, runtimes: dict[str, ServiceRuntime]) -> None:
            self.runtimes, self.lookups = runtimes, []

        def __getitem__(self, service_id: str) -> ServiceRuntime:
            self.lookups.append(service_id)
            return self.runtimes[service_id]

        def __iter__(self) -> Iterator[str]:
            return iter(self.runtimes)

        def __len__(self) -> int:
            return len(self.runtimes)

    class Journaled(Recorded, IncrementalRuntimes):
        changed: list[str] | None = None

        def health_suspects(self) -> frozenset[str]:
            return frozenset()

        def changes_since(self, token: object) -> tuple[object, list[str] | None]:
            return "now", None if token is None else self.changed

    assert isinstance(RuntimeView(LiveState(), 0.0), IncrementalRuntimes)
    assert not isinstance({}, HealthSuspects)
    names = ["a", "b", "c", "d"]
    snap = snapshot([service(n, asset("m")) for n in names], [role("r", strategy="least_loaded")])
    for view, second_lookups in ((Recorded, names), (Journaled, ["c"])):
        runtimes = view({n: ServiceRuntime(in_flight=i) for i, n in enumerate(names)})
        assert order(resolve(snap, "r", "chat", ctx(runtime=runtimes))) == names
        assert sorted(runtimes.lookups) == names  # a first decision reads everything
        runtimes.lookups.clear()
        runtimes.runtimes["c"] = ServiceRuntime(in_flight=9)
        runtimes.changed = ["c"]
        assert order(resolve(snap, "r", "chat", ctx(runtime=runtimes))) == ["a", "b", "d", "c"]
        assert sorted(runtimes.lookups) == second_lookups, view.__name__
