"""The route decision defined gate by gate: the oracle the router's incremental plans match.

`geniehive.routing` plans what a snapshot settles once and re-checks only what a context
changes (`geniehive.routing.plan` and `.memo`). These functions decide the same thing the slow,
obvious way — every service, every gate, every candidate rebuilt, every tier sorted — so the
randomized tests in tests/unit/test_routing.py can compare the two on changing runtimes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from geniehive.models import Asset, Role, RoutingPolicy, Service, Snapshot
from geniehive.routing import Candidate, Exclusion, RoutingContext, exclusion_gate
from geniehive.routing.decision import choose_strategy
from geniehive.routing.gates import direct_asset, pick_asset, static_role_gates
from geniehive.routing.placement import DOES_NOT_FIT, arrange
from geniehive.routing.scores import build_candidate


def role_gates(
    snapshot: Snapshot, service: Service, policy: RoutingPolicy, ctx: RoutingContext
) -> tuple[Exclusion | None, tuple[Asset, ...]]:
    """The first gate `service` fails for a role, or None and the assets it may serve."""
    exclusion = exclusion_gate(snapshot, service, ctx)
    if exclusion is not None:
        return exclusion, ()
    return static_role_gates(snapshot, service, policy)


def candidate(
    snapshot: Snapshot,
    service: Service,
    asset: Asset | None,
    name: str,
    role: Role | None,
    ctx: RoutingContext,
) -> Candidate:
    """The service's candidate for a non-streamed request, built from scratch."""
    samples = snapshot.samples_by_service.get(service.service_id, ())
    runtime = ctx.runtime_of(service.service_id)
    host = snapshot.hosts.get(service.host_id)
    return build_candidate(service, asset, name, role, samples, runtime, False, True, host)


def placement_gate(found: Candidate) -> Exclusion | None:
    """A candidate whose model cannot fit there is an exclusion instead."""
    if found.placement.klass == DOES_NOT_FIT:
        return Exclusion(found.service_id, DOES_NOT_FIT, found.placement.detail)
    return None


def rank_candidates(
    candidates: Sequence[Candidate], strategy: str, *, prefer_loaded: bool, rr_counter: int = 0
) -> tuple[Candidate, ...]:
    """Candidates in trial order: the pool (best tier) by strategy, then the lower tiers.

    A tier is (not loaded when `prefer_loaded`, family rank); lower tiers stay as failover.
    Round robin rotates the pool by `rr_counter`; lower tiers keep id order.
    """
    tiers: dict[tuple[int, int], list[Candidate]] = {}
    for found in candidates:
        cold = 1 if prefer_loaded and not found.loaded else 0
        tiers.setdefault((cold, found.family_rank), []).append(found)
    ordered: list[Candidate] = []
    for index, key in enumerate(sorted(tiers)):
        tier = order_tier(tiers[key], strategy, rr_counter if index == 0 else 0)
        ordered.extend(replace(c, pool=index == 0) for c in tier)
    return tuple(ordered)


def order_tier(tier: list[Candidate], strategy: str, rr_counter: int) -> list[Candidate]:
    """One tier by strategy, ties broken by service id, then (scored and least_loaded) by
    placement: warm and free first. Round robin keeps its rotation."""
    if strategy == "round_robin":
        by_id = sorted(tier, key=lambda c: c.service_id)
        shift = rr_counter % len(by_id)
        return by_id[shift:] + by_id[:shift]
    if strategy == "least_loaded":
        ordered = sorted(
            tier,
            key=lambda c: (
                c.load,
                math.inf if c.latency_ms is None else c.latency_ms,
                c.service_id,
            ),
        )
    else:
        ordered = sorted(tier, key=lambda c: (-(c.score or 0.0), c.family_rank, c.service_id))
    arrange(ordered)
    return ordered


def reference_role(
    snap: Snapshot, name: str, role: Role, ctx: RoutingContext
) -> tuple[tuple[Candidate, ...], tuple[Exclusion, ...]]:
    """The role's candidates and exclusions, service by service, gate by gate."""
    found, excluded = [], []
    for service_id in snap.by_operation.get(role.operation, ()):
        svc = snap.services[service_id]
        exclusion, assets = role_gates(snap, svc, role.routing, ctx)
        if exclusion is not None:
            excluded.append(exclusion)
            continue
        chosen = pick_asset(assets, role.routing.preferred_families)
        built = candidate(snap, svc, chosen, name, role, ctx)
        if (misfit := placement_gate(built)) is not None:
            excluded.append(misfit)
            continue
        found.append(built)
    ranked = rank_candidates(
        found,
        choose_strategy(role, ctx),
        prefer_loaded=role.routing.prefer_loaded,
        rr_counter=ctx.rr_counters.get(f"role:{role.role_id}", 0),
    )
    return ranked, tuple(excluded)


def reference_direct(
    snap: Snapshot, name: str, ctx: RoutingContext
) -> tuple[tuple[Candidate, ...], tuple[Exclusion, ...]]:
    """A chat model name's candidates and exclusions, service by service."""
    found, excluded = [], []
    for service_id in snap.by_name[("chat", name)]:
        svc = snap.services[service_id]
        exclusion = exclusion_gate(snap, svc, ctx)
        if exclusion is not None:
            excluded.append(exclusion)
            continue
        chosen = direct_asset(svc, name)
        built = candidate(snap, svc, chosen, name, None, ctx)
        if (misfit := placement_gate(built)) is not None:
            excluded.append(misfit)
            continue
        found.append(built)
    ranked = rank_candidates(
        found,
        choose_strategy(None, ctx),
        prefer_loaded=False,
        rr_counter=ctx.rr_counters.get(f"model:{name}", 0),
    )
    return ranked, tuple(excluded)
