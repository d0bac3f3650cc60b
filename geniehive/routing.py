"""Route resolution: which services may serve a request, in which order, and why (SPEC §5).

Rule: pure. Every function reads an immutable `Snapshot` plus a `RoutingContext` (the time,
probe verdicts, breakers, gateway measurements and round-robin counters) and returns values.
Nothing here advances a counter: the relay increments `rr_counters[decision.rr_key]` once per
routed request, so listing, resolving and explaining may call `resolve` as often as they like.

Resolution of a requested name for an operation:
  1. direct: a service id, asset id or alias of a service of that operation; every such
     service is in the pool. `role/<id>` always names the role.
  2. role: a bare role id that is not a direct name. A role (or a direct name) of another
     operation is `wrong_operation`; a name never seen is `model_not_found`.
  3. gates: each service is checked in a fixed order and the first failing gate is recorded:
     host_stale, probe_down, node_unhealthy, breaker_open (health.routable), availability,
     not_accepting; for roles also trust_tier, device_class, workload_class, model_family,
     min_context, require_loaded. Direct pools pass the health gates only.
  4. fallbacks: when a role keeps no candidate, its `fallback_roles` are tried depth-first
     (`fallback_order`), each once, same operation only. The decision keeps `role_id` = the
     requested role (its prompt policy applies) and names the one used in `fallback_role_id`.
  5. narrowing into tiers: key (not loaded when `prefer_loaded`, family rank). The best tier is
     the pool (`Candidate.pool`); the other tiers follow it as failover, best first.
  6. strategy orders each tier: scored, round_robin (pool rotated by the counter) or
     least_loaded.

Fallbacks at request time: a decision carries `fallbacks`, the fallback roles it has not
tried, in depth-first order. When every candidate of a decision fails, the relay calls
`next_fallback(snapshot, decision, ctx)`, which returns the decision of the next fallback role
with candidates (its own `fallbacks` are the rest) or None when they are exhausted;
`fallback_decisions` yields those decisions one by one, each computed only when asked.

Choices the spec leaves open (documented here, tested in tests/unit/test_routing.py):
  - a service is judged on the asset it would be sent (`Candidate.upstream_model`): that
    asset's `loaded` and family rank place it in a tier and feed its score;
  - role asset gates narrow the usable assets: host `allowed_model_families` keeps assets whose
    family or id contains one of them (a service with none left, or with no assets, fails);
    `min_context` keeps assets with unknown or large enough context (a service with no assets
    passes); `require_loaded` keeps loaded ones. The upstream model is picked among the rest;
  - unknown latency or tokens/s earn no points; a sample's unknown TTFT earns no band;
  - the benchmark blend of `scored` averages the quality of the service's samples for the
    role's `benchmark_workloads` (samples of another asset than the one sent are ignored);
  - scores are rounded to 6 places so equal inputs tie exactly; an unknown strategy is scored;
  - a host missing from the snapshot is stale unless it is the local host.
Speed: what the snapshot alone settles (static gates, assets, tiers) is planned once per
snapshot and name or role; a decision then checks only the context's part (see "per-snapshot
plans"). Those caches are keyed by snapshot identity and never change a decision.
Route matching (POST /v1/cluster/routes/match) lives in `geniehive.matching`.
"""

from __future__ import annotations

import difflib
import math
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import Any

from geniehive.health import routable
from geniehive.models import (
    LOCAL_HOST_ID,
    NO_RUNTIME,
    OPERATIONS,
    STRATEGIES,
    Asset,
    BenchmarkSample,
    Host,
    Role,
    RoutingPolicy,
    Service,
    ServiceRuntime,
    Snapshot,
)

ROLE_PREFIX = "role/"
BLOCKED_AVAILABILITY = frozenset({"draining", "paused", "offline", "quarantined"})
MEASURED_MIN_SAMPLES = 5  # gateway measurements replace the node's from this many requests on


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """What a decision reads besides the snapshot.

    `runtime` maps service ids to their `ServiceRuntime` (missing: `NO_RUNTIME`). It may also
    have a `health_suspects()` method returning the ids whose probe is down or breaker is not
    closed; every other id then passes the health gates on its runtime, and a decision skips
    looking up the services a role's static gates exclude. Decisions reuse candidates while a
    service's runtime is the same object, so a mapping should hand out one value per state.
    A mapping with both `health_suspects()` and `changes_since(token)` (returning a new token
    and the ids whose runtime may have changed since `token`, or None when it cannot tell) is
    read incrementally: a decision looks up only those ids and the suspects.
    """

    now: float  # wall-clock seconds, for host staleness
    stale_after_s: float = 15.0
    default_strategy: str = "scored"
    runtime: Mapping[str, ServiceRuntime] = field(default_factory=dict)
    rr_counters: Mapping[str, int] = field(default_factory=dict)

    def runtime_of(self, service_id: str) -> ServiceRuntime:
        return self.runtime.get(service_id, NO_RUNTIME)


@dataclass(frozen=True, slots=True)
class Candidate:
    service_id: str
    host_id: str
    upstream_model: str
    score: float | None
    breakdown: Mapping[str, float]
    family_rank: int = 0  # index in the role's preferred_families; len() when none matches
    loaded: bool = False  # the asset sent is loaded
    load: int = 0  # gateway in-flight + reported queue depth
    latency_ms: float | None = None  # the latency the score used
    pool: bool = True  # False: a lower tier, kept only as failover


@dataclass(frozen=True, slots=True)
class Exclusion:
    service_id: str
    gate: str
    detail: str


@dataclass(frozen=True, slots=True)
class RouteDecision:
    name: str
    operation: str
    match: str  # direct | role | none (known, wrong operation) | unknown
    role_id: str | None = None
    fallback_role_id: str | None = None
    route_label: str = ""  # direct | role:<id> | role:<id>;fallback:<id> ("" on a 404/400)
    candidates: tuple[Candidate, ...] = ()  # ordered; the first is tried first
    excluded: tuple[Exclusion, ...] = ()
    strategy: str = ""
    rr_key: str | None = None
    error: str | None = None  # model_not_found | wrong_operation | no_healthy_upstream
    message: str = ""
    close_matches: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()  # fallback roles not tried yet, depth-first
    earlier: tuple[RouteDecision, ...] = ()  # fallback-walk decisions that kept no candidate

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


# ---------------------------------------------------------------- resolution


def resolve(
    snapshot: Snapshot, name: str, operation: str, ctx: RoutingContext, *, stream: bool = False
) -> RouteDecision:
    """The route decision for `name` and `operation` now. Never raises for a bad name."""
    if name.startswith(ROLE_PREFIX):
        role = snapshot.roles.get(name[len(ROLE_PREFIX) :])
        if role is None:
            return _not_found(name, operation, snapshot.roles, name[len(ROLE_PREFIX) :])
        return _resolve_role(snapshot, name, role, operation, ctx, stream)
    ids = snapshot.by_name.get((operation, name))
    if ids:
        return _resolve_direct(snapshot, name, operation, ids, ctx, stream)
    role = snapshot.roles.get(name)
    if role is not None:
        return _resolve_role(snapshot, name, role, operation, ctx, stream)
    others = [op for op in OPERATIONS if (op, name) in snapshot.by_name]
    if others:
        message = f"model '{name}' serves {', '.join(others)}, not {operation}"
        return RouteDecision(name, operation, "none", error="wrong_operation", message=message)
    return _not_found(name, operation, snapshot.known_names, name)


def next_fallback(
    snapshot: Snapshot, decision: RouteDecision, ctx: RoutingContext, *, stream: bool = False
) -> RouteDecision | None:
    """The decision of the next fallback role with candidates, or None when none is left.

    For the relay, once every candidate of `decision` failed at request time.
    """
    original = snapshot.roles.get(decision.role_id or "")
    if original is None or not decision.fallbacks:
        return None
    found, _ = _walk(snapshot, decision.name, original, decision.fallbacks, ctx, stream)
    return found


def fallback_decisions(
    snapshot: Snapshot, decision: RouteDecision, ctx: RoutingContext, *, stream: bool = False
) -> Iterator[RouteDecision]:
    """Each further fallback decision with candidates, in order, computed only when asked."""
    current = next_fallback(snapshot, decision, ctx, stream=stream)
    while current is not None:
        yield current
        current = next_fallback(snapshot, current, ctx, stream=stream)


def fallback_order(snapshot: Snapshot, role_id: str) -> tuple[str, ...]:
    """The fallback roles of `role_id`, depth-first, each once, same operation only.

    A fallback of another operation is skipped with its own fallbacks; unknown ids are skipped.
    """
    root = snapshot.roles.get(role_id)
    if root is None:
        return ()
    seen = {role_id}
    order: list[str] = []

    def visit(role: Role) -> None:
        for fallback_id in role.routing.fallback_roles:
            if fallback_id in seen:
                continue
            seen.add(fallback_id)
            fallback = snapshot.roles.get(fallback_id)
            if fallback is None or fallback.operation != root.operation:
                continue
            order.append(fallback_id)
            visit(fallback)

    visit(root)
    return tuple(order)


def _not_found(name: str, operation: str, known: Iterable[str], probe: str) -> RouteDecision:
    near = close_matches(probe, known)
    message = f"model '{name}' not found"
    if near:
        message += f"; close matches: {', '.join(near)}"
    return RouteDecision(
        name, operation, "unknown", error="model_not_found", message=message, close_matches=near
    )


def _resolve_direct(
    snapshot: Snapshot,
    name: str,
    operation: str,
    ids: Sequence[str],
    ctx: RoutingContext,
    stream: bool,
) -> RouteDecision:
    strategy = _strategy(None, ctx)
    rr_key = f"model:{name}"
    plan = _direct_plan(snapshot, name, operation, tuple(ids))
    ordered, excluded = _decide(
        snapshot, plan, name, ctx, stream, strategy, ctx.rr_counters.get(rr_key, 0)
    )
    decision = RouteDecision(
        name,
        operation,
        "direct",
        route_label="direct",
        candidates=ordered,
        excluded=excluded,
        strategy=strategy,
        rr_key=rr_key,
    )
    if ordered:
        return decision
    message = _unroutable_message(f"model '{name}'", operation, decision.excluded, ())
    return replace(decision, error="no_healthy_upstream", message=message)


def _resolve_role(
    snapshot: Snapshot, name: str, role: Role, operation: str, ctx: RoutingContext, stream: bool
) -> RouteDecision:
    if role.operation != operation:
        message = f"role '{role.role_id}' is a {role.operation} role, not {operation}"
        return RouteDecision(
            name,
            operation,
            "none",
            role_id=role.role_id,
            error="wrong_operation",
            message=message,
        )
    order = fallback_order(snapshot, role.role_id)
    first = _role_decision(snapshot, name, role, role, ctx, stream, order)
    if first.candidates:
        return first
    found, empty = _walk(snapshot, name, role, order, ctx, stream)
    if found is not None:
        return replace(found, earlier=(first, *found.earlier))
    tried = tuple(d.fallback_role_id or "" for d in empty)
    message = _unroutable_message(f"role '{role.role_id}'", operation, first.excluded, tried)
    return replace(first, error="no_healthy_upstream", message=message, fallbacks=(), earlier=empty)


def _walk(
    snapshot: Snapshot,
    name: str,
    original: Role,
    order: tuple[str, ...],
    ctx: RoutingContext,
    stream: bool,
) -> tuple[RouteDecision | None, tuple[RouteDecision, ...]]:
    """The first fallback in `order` with candidates, and the decisions of those without."""
    empty: list[RouteDecision] = []
    for index, fallback_id in enumerate(order):
        fallback = snapshot.roles.get(fallback_id)
        if fallback is None or fallback.operation != original.operation:
            continue  # the snapshot changed since the order was computed
        rest = order[index + 1 :]
        decision = _role_decision(snapshot, name, original, fallback, ctx, stream, rest)
        if decision.candidates:
            return replace(decision, earlier=tuple(empty)), tuple(empty)
        empty.append(decision)
    return None, tuple(empty)


def _role_decision(
    snapshot: Snapshot,
    name: str,
    original: Role,
    role: Role,
    ctx: RoutingContext,
    stream: bool,
    fallbacks: tuple[str, ...],
) -> RouteDecision:
    """The decision of one role's own gates, narrowing and strategy (no fallback walk)."""
    strategy = _strategy(role, ctx)
    rr_key = f"role:{role.role_id}"
    plan = _role_plan(snapshot, role)
    ordered, excluded = _decide(
        snapshot, plan, name, ctx, stream, strategy, ctx.rr_counters.get(rr_key, 0)
    )
    fallback_id = None if role is original else role.role_id
    label = f"role:{original.role_id}" + (f";fallback:{fallback_id}" if fallback_id else "")
    return RouteDecision(
        name,
        role.operation,
        "role",
        original.role_id,
        fallback_id,
        label,
        ordered,
        excluded,
        strategy,
        rr_key,
        fallbacks=fallbacks,
    )


def _strategy(role: Role | None, ctx: RoutingContext) -> str:
    strategy = (role.routing.strategy if role else None) or ctx.default_strategy
    return strategy if strategy in STRATEGIES else "scored"


def _unroutable_message(
    what: str, operation: str, excluded: Sequence[Exclusion], tried: Sequence[str]
) -> str:
    if excluded:
        reasons = ", ".join(f"{e.service_id} ({e.gate})" for e in excluded)
    else:
        reasons = f"no {operation} services registered"
    message = f"no routable service for {what}: {reasons}"
    if tried:
        message += f"; fallback roles tried: {', '.join(tried)}"
    return message


# ---------------------------------------------------------------- gates


def is_stale(host: Host, now: float, stale_after_s: float) -> bool:
    """Whether a host missed its heartbeats at `now`; the local host is never stale."""
    if host.is_local or host.host_id == LOCAL_HOST_ID:
        return False
    seen = host.last_seen
    return seen is None or now - seen > stale_after_s


def exclusion_gate(snapshot: Snapshot, service: Service, ctx: RoutingContext) -> Exclusion | None:
    """The first health or availability gate `service` fails now, or None.

    Every candidate passes these, direct or role; listings use them to count routable services.
    """
    host = snapshot.hosts.get(service.host_id)
    if host is None:
        stale = service.host_id != LOCAL_HOST_ID
    else:
        stale = is_stale(host, ctx.now, ctx.stale_after_s)
    return _health_gate(service, stale, ctx.runtime_of(service.service_id), ctx.stale_after_s)


def _health_gate(
    service: Service, stale: bool, runtime: ServiceRuntime, stale_after_s: float
) -> Exclusion | None:
    """`exclusion_gate` once the host's staleness and the runtime are known."""
    ok, gate = routable(
        runtime.probe, service.state.health, stale, runtime.breaker, runtime.trial_taken
    )
    if not ok:
        if gate == "host_stale":
            detail = f"no heartbeat from host '{service.host_id}' for over {stale_after_s:g}s"
        elif gate == "probe_down":
            detail = "the health probe fails"
        elif gate == "node_unhealthy":
            detail = f"the node reports it {service.state.health}"
        elif gate == "breaker_open":
            detail = f"circuit breaker {runtime.breaker}"
        else:
            detail = gate
        return Exclusion(service.service_id, gate, detail)
    if service.state.availability in BLOCKED_AVAILABILITY:
        return Exclusion(service.service_id, "availability", service.state.availability)
    if not service.state.accept_requests:
        return Exclusion(service.service_id, "not_accepting", "the service accepts no requests")
    return None


def _static_role_gates(
    snapshot: Snapshot, service: Service, routing: RoutingPolicy
) -> tuple[Exclusion | None, tuple[Asset, ...]]:
    """The role gates after the health gates: host labels, then the asset gates."""
    host = snapshot.hosts.get(service.host_id)
    labels: Mapping[str, Any] = host.labels if host else {}
    label_gates = (
        ("trust_tier", "trust_tier", routing.allowed_trust_tiers, routing.denied_trust_tiers),
        (
            "device_class",
            "device_class",
            routing.allowed_device_classes,
            routing.denied_device_classes,
        ),
        (
            "workload_class",
            "workload_classes",
            routing.allowed_workload_classes,
            routing.denied_workload_classes,
        ),
    )
    for gate, key, allowed, denied in label_gates:
        detail = _label_gate(key, labels.get(key), allowed, denied)
        if detail is not None:
            return Exclusion(service.service_id, gate, detail), ()
    return _asset_gates(service, routing, label_strings(labels.get("allowed_model_families")))


def _label_gate(
    key: str, value: object, allowed: Sequence[str], denied: Sequence[str]
) -> str | None:
    """Why a host label fails an allow or deny list; a list label passes when any item does."""
    values = label_strings(value)
    shown = ", ".join(values) or "unset"
    if allowed and not any(v in allowed for v in values):
        return f"{key} {shown} not in {', '.join(allowed)}"
    for v in values:
        if v in denied:
            return f"{key} {v} is denied"
    return None


def _asset_gates(
    service: Service, routing: RoutingPolicy, host_families: Sequence[str]
) -> tuple[Exclusion | None, tuple[Asset, ...]]:
    service_id = service.service_id
    assets = service.assets
    if host_families:
        assets = tuple(a for a in assets if any(family_matches(a, f) for f in host_families))
        if not assets:
            detail = f"host serves only {', '.join(host_families)}"
            return Exclusion(service_id, "model_family", detail), ()
    minimum = routing.min_context
    if minimum is not None and assets:
        assets = tuple(a for a in assets if a.context_length is None or a.context_length >= minimum)
        if not assets:
            return Exclusion(service_id, "min_context", f"no asset with {minimum} context"), ()
    if routing.require_loaded:
        assets = tuple(a for a in assets if a.loaded is True)
        if not assets:
            return Exclusion(service_id, "require_loaded", "no loaded asset"), ()
    return None, assets


def label_strings(value: object) -> tuple[str, ...]:
    """A host label as a tuple of strings (labels hold a string or a list of them)."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def family_matches(asset: Asset, family: str) -> bool:
    """A family matches an asset when it is a substring of the asset's family or id."""
    needle = family.lower()
    return needle in (asset.family or "").lower() or needle in asset.asset_id.lower()


def family_rank(asset: Asset | None, families: Sequence[str]) -> int:
    """The index of the first preferred family `asset` matches; len(families) when none."""
    if asset is not None:
        for index, family in enumerate(families):
            if family_matches(asset, family):
                return index
    return len(families)


# ---------------------------------------------------------------- candidates


def _direct_asset(service: Service, name: str) -> Asset | None:
    asset = service.asset(name)
    if asset is not None:
        return asset
    for asset in service.assets:
        if name in asset.aliases:
            return asset
    return _pick_asset(service.assets, ())


def _pick_asset(assets: Sequence[Asset], families: Sequence[str]) -> Asset | None:
    """The loaded asset of the best family, else the first loaded, else the first asset."""
    loaded = [a for a in assets if a.loaded is True]
    if loaded and families:
        best = min(loaded, key=lambda a: family_rank(a, families))
        if family_rank(best, families) < len(families):
            return best
    if loaded:
        return loaded[0]
    return assets[0] if assets else None


def _build_candidate(
    service: Service,
    asset: Asset | None,
    name: str,
    role: Role | None,
    samples: Sequence[BenchmarkSample],
    runtime: ServiceRuntime,
    stream: bool,
    pool: bool,
) -> Candidate:
    loaded = asset is not None and asset.loaded is True
    score, parts = runtime_score(service, runtime, stream=stream, loaded=loaded)
    upstream = asset.asset_id if asset is not None else name
    families: tuple[str, ...] = ()
    if role is not None:
        families = role.routing.preferred_families
        bench = role_benchmark(samples, role.benchmark_workloads, upstream)
        if bench is not None:
            score = round(0.6 * score + 0.4 * bench, 6)
            parts = {**parts, "benchmark": bench}
    latency, _ = measures(service, runtime, stream)
    return Candidate(
        service.service_id,
        service.host_id,
        upstream,
        score,
        {**parts, "score": score},
        family_rank(asset, families),
        loaded,
        _load(service, runtime),
        latency,
        pool,
    )


# ---------------------------------------------------------------- per-snapshot plans
# A decision splits into what the snapshot alone settles and what the context settles. The
# snapshot settles, per service of a direct name or a role: the first static gate it fails
# (node health, availability, accepting, then the role's label and asset gates), the asset it
# would be sent and its tier. That is a `_Plan`, built once per snapshot and name or role. The
# context settles staleness at `now`, probe and breaker, and the runtime score: a decision
# checks those for the services passing the static gates, and for the others only when they
# may change the recorded gate (a stale host, or a runtime the context names as a health
# suspect; without such a list every runtime is looked at, in bulk). Health gates come first,
# so a statically excluded service keeps its static exclusion unless one of them fails.
# Candidates are reused while their runtime is the same object, so an unchanged service costs
# a lookup. Plans hold no reference to their snapshot and die with it.


class _Entry:
    __slots__ = ("asset", "excluded", "host_key", "position", "service", "tier")

    def __init__(
        self,
        position: int,
        service: Service,
        asset: Asset | None,
        tier: tuple[int, int],
        excluded: Exclusion | None,
    ) -> None:
        self.position = position  # in the name's or operation's service order
        self.service = service
        self.host_key = service.host_id
        self.asset = asset
        self.tier = tier  # (not loaded when prefer_loaded, family rank)
        self.excluded = excluded  # the first static gate failed, or None


class _Plan:
    __slots__ = (
        "closed",
        "closed_by_host",
        "closed_excluded",
        "closed_ids",
        "closed_positions",
        "closed_sids",
        "key",
        "memos",
        "role",
        "samples",
        "tier_sids",
        "tiers",
        "where",
    )

    def __init__(
        self, key: object, role: Role | None, entries: list[_Entry], snapshot: Snapshot
    ) -> None:
        self.key = key  # the ids tuple of a direct name, or the role: checked by identity
        self.role = role
        tiers: dict[tuple[int, int], list[_Entry]] = {}
        closed = [e for e in entries if e.excluded is not None]
        for entry in entries:
            if entry.excluded is None:
                tiers.setdefault(entry.tier, []).append(entry)
        # Within a tier by service id: the strategies' last tie-breaker, kept by stable sorts.
        self.tiers = [
            sorted(tiers[key], key=lambda e: e.service.service_id) for key in sorted(tiers)
        ]
        self.closed = closed
        self.closed_sids = [e.service.service_id for e in closed]
        self.closed_ids = {sid: i for i, sid in enumerate(self.closed_sids)}
        self.closed_positions = [e.position for e in closed]
        self.closed_excluded = tuple(e.excluded for e in closed if e.excluded is not None)
        self.closed_by_host: dict[str, list[int]] = {}
        for i, entry in enumerate(closed):
            self.closed_by_host.setdefault(entry.host_key, []).append(i)
        self.samples = {
            e.service.service_id: snapshot.samples_by_service.get(e.service.service_id, ())
            for entries_ in self.tiers
            for e in entries_
        }
        self.tier_sids = [[e.service.service_id for e in tier] for tier in self.tiers]
        self.where = {  # service id -> (tier, index) of the services that may be candidates
            sid: (t, i) for t, sids in enumerate(self.tier_sids) for i, sid in enumerate(sids)
        }
        self.memos: dict[tuple[str, bool], _Memo] = {}


class _Index:
    """Per snapshot: host staleness thresholds and the plans built so far."""

    __slots__ = ("always_stale", "plans", "timed")

    def __init__(self, snapshot: Snapshot) -> None:
        always: set[str] = set()
        timed: list[tuple[float, str]] = []
        for key, host in snapshot.hosts.items():
            if host.is_local or host.host_id == LOCAL_HOST_ID:
                continue
            seen = host.last_seen
            if seen is None:
                always.add(key)
            elif seen == seen:  # NaN is never stale: `now - nan > s` is false
                timed.append((seen, key))
        for service in snapshot.services.values():
            if service.host_id not in snapshot.hosts and service.host_id != LOCAL_HOST_ID:
                always.add(service.host_id)
        self.always_stale = frozenset(always)
        self.timed = sorted(timed)  # oldest first: the stale hosts are a prefix at any `now`
        self.plans: dict[object, _Plan] = {}

    def stale_hosts(self, ctx: RoutingContext) -> frozenset[str] | set[str]:
        """The keys of the hosts `is_stale` at `ctx.now` (missing hosts included)."""
        now, limit = ctx.now, ctx.stale_after_s
        timed = self.timed
        if not timed or not now - timed[0][0] > limit:
            return self.always_stale
        stale = set(self.always_stale)
        for seen, key in timed:
            if not now - seen > limit:
                break
            stale.add(key)
        return stale


_INDEXES: dict[int, tuple[weakref.ref[Snapshot], _Index]] = {}


def _index(snapshot: Snapshot) -> _Index:
    """The snapshot's index, built on first use and dropped when the snapshot is collected."""
    key = id(snapshot)
    found = _INDEXES.get(key)
    if found is not None and found[0]() is snapshot:
        return found[1]
    index = _Index(snapshot)
    _INDEXES[key] = (weakref.ref(snapshot, partial(_forget_index, key)), index)
    return index


def _forget_index(key: int, ref: weakref.ref[Snapshot]) -> None:
    found = _INDEXES.get(key)
    if found is not None and found[0] is ref:
        del _INDEXES[key]


def _direct_plan(snapshot: Snapshot, name: str, operation: str, ids: tuple[str, ...]) -> _Plan:
    index = _index(snapshot)
    key = ("direct", operation, name)
    plan = index.plans.get(key)
    if plan is not None and plan.key is ids:
        return plan
    entries = []
    for position, service_id in enumerate(ids):
        service = snapshot.services[service_id]
        excluded = _health_gate(service, False, NO_RUNTIME, 0.0)
        entries.append(_Entry(position, service, _direct_asset(service, name), (0, 0), excluded))
    plan = index.plans[key] = _Plan(ids, None, entries, snapshot)
    return plan


def _role_plan(snapshot: Snapshot, role: Role) -> _Plan:
    index = _index(snapshot)
    key = ("role", role.role_id)
    plan = index.plans.get(key)
    if plan is not None and plan.key is role:
        return plan
    policy = role.routing
    families = policy.preferred_families
    entries = []
    for position, service_id in enumerate(snapshot.by_operation.get(role.operation, ())):
        service = snapshot.services[service_id]
        excluded = _health_gate(service, False, NO_RUNTIME, 0.0)
        asset = None
        if excluded is None:
            excluded, assets = _static_role_gates(snapshot, service, policy)
            asset = _pick_asset(assets, families) if excluded is None else None
        cold = 1 if policy.prefer_loaded and not (asset is not None and asset.loaded is True) else 0
        tier = (cold, family_rank(asset, families))
        entries.append(_Entry(position, service, asset, tier, excluded))
    plan = index.plans[key] = _Plan(role, role, entries, snapshot)
    return plan


_PROBE = attrgetter("probe")
_BREAKER = attrgetter("breaker")
_SCORE = attrgetter("score")
_CLOSED_ONLY = frozenset({"closed"})


def _decide(
    snapshot: Snapshot,
    plan: _Plan,
    name: str,
    ctx: RoutingContext,
    stream: bool,
    strategy: str,
    rr_counter: int,
) -> tuple[tuple[Candidate, ...], tuple[Exclusion, ...]]:
    """The ordered candidates and the exclusions of one plan in `ctx`."""
    stale_hosts = _index(snapshot).stale_hosts(ctx)
    memo = plan.memos.get((name, stream))
    if memo is None or memo.stale != stale_hosts or memo.limit != ctx.stale_after_s:
        memo = plan.memos[(name, stream)] = _Memo(plan, stale_hosts, ctx.stale_after_s)
    candidates, dynamic = memo.update(plan, name, ctx.runtime, stream, strategy, rr_counter)
    overrides = _closed_overrides(plan, ctx, stale_hosts)
    excluded = plan.closed_excluded
    if overrides or dynamic:
        merged = list(excluded)
        for i, exclusion in overrides.items():
            merged[i] = exclusion
        for position, exclusion in reversed(dynamic):
            merged.insert(bisect_left(plan.closed_positions, position), exclusion)
        excluded = tuple(merged)
    return candidates, excluded


class _Memo:
    """A plan's last decision for one (name, stream), updated where runtimes changed.

    Per tier: the runtime each service had (by identity), its candidate or None when a health
    gate excluded it, and the tier's order. A decision looks up the runtimes that may have
    changed (every runtime, unless the mapping can say which changed), then rebuilds only the
    changed services and re-sorts only the tiers holding them.
    """

    __slots__ = (
        "excluded",
        "first",
        "limit",
        "orders",
        "result",
        "runtimes",
        "stale",
        "status",
        "token",
    )

    def __init__(self, plan: _Plan, stale: frozenset[str] | set[str], limit: float) -> None:
        self.stale = stale
        self.limit = limit
        count = len(plan.tiers)
        self.runtimes: list[list[ServiceRuntime | None]] = [[None] * len(t) for t in plan.tiers]
        self.status: list[list[Candidate | None]] = [[None] * len(t) for t in plan.tiers]
        self.excluded: list[dict[int, Exclusion]] = [{} for _ in range(count)]
        self.first = -1  # the first tier with a candidate: the pool
        self.orders: list[tuple[str, list[Candidate]] | None] = [None] * count
        # ((strategy, round-robin counter), candidates, health exclusions by position)
        self.result: tuple[tuple[str, int], tuple[Candidate, ...], list[tuple[int, Exclusion]]]
        self.result = None  # type: ignore[assignment]
        self.token: object = None  # the runtime mapping's `changes_since` token, if it has one

    def update(
        self,
        plan: _Plan,
        name: str,
        runtimes: Mapping[str, ServiceRuntime],
        stream: bool,
        strategy: str,
        rr_counter: int,
    ) -> tuple[tuple[Candidate, ...], list[tuple[int, Exclusion]]]:
        get = runtimes.get
        changed_any = False
        changes_since = getattr(runtimes, "changes_since", None)
        suspects = getattr(runtimes, "health_suspects", None)
        ids = None
        if changes_since is not None and suspects is not None:
            self.token, ids = changes_since(self.token)
        else:
            self.token = None  # read without the journal: its old position says nothing now
        if ids is not None:
            where = plan.where
            for sid in suspects().union(ids):
                found = where.get(sid)
                if found is None:
                    continue
                t, i = found
                runtime = get(sid, NO_RUNTIME)
                if runtime is self.runtimes[t][i]:
                    continue
                self.runtimes[t][i] = runtime
                self.orders[t] = None
                changed_any = True
                self._judge(plan, name, stream, t, i, runtime)
        else:
            for t, tier in enumerate(plan.tiers):
                new = list(map(get, plan.tier_sids[t], repeat(NO_RUNTIME, len(tier))))
                changed = list(compress(range(len(new)), map(is_not, new, self.runtimes[t])))
                if not changed:
                    continue
                self.runtimes[t] = new
                self.orders[t] = None
                changed_any = True
                for i in changed:
                    self._judge(plan, name, stream, t, i, new[i])
        first = next((t for t, status in enumerate(self.status) if any(status)), -1)
        if first != self.first:
            for t in {first, self.first} - {-1}:  # the pool moved: rebuild both tiers' flags
                self.orders[t] = None
                for i, runtime in enumerate(self.runtimes[t]):
                    if self.status[t][i] is not None:
                        self.status[t][i] = self._build(plan, name, stream, t, i, runtime, first)
            self.first = first
            changed_any = True
        key = (strategy, rr_counter if strategy == "round_robin" else 0)
        if self.result is None or self.result[0] != key or changed_any:
            ordered: list[Candidate] = []
            for t in range(len(plan.tiers)):
                ordered += self._order(t, strategy, rr_counter if t == first else 0)
            dynamic = sorted(
                (plan.tiers[t][i].position, exclusion)
                for t, found in enumerate(self.excluded)
                for i, exclusion in found.items()
            )
            self.result = (key, tuple(ordered), dynamic)
        return self.result[1], self.result[2]

    def _judge(
        self, plan: _Plan, name: str, stream: bool, t: int, i: int, runtime: ServiceRuntime | None
    ) -> None:
        """Re-check one service's health gates and rebuild its candidate."""
        assert runtime is not None
        entry = plan.tiers[t][i]
        stale = entry.host_key in self.stale
        if stale or runtime.probe == "down" or runtime.breaker != "closed":
            exclusion = _health_gate(entry.service, stale, runtime, self.limit)
            if exclusion is not None:
                self.excluded[t][i] = exclusion
                self.status[t][i] = None
                return
        self.excluded[t].pop(i, None)
        self.status[t][i] = self._build(plan, name, stream, t, i, runtime, self.first)

    @staticmethod
    def _build(
        plan: _Plan,
        name: str,
        stream: bool,
        t: int,
        i: int,
        runtime: ServiceRuntime | None,
        first: int,
    ) -> Candidate:
        assert runtime is not None
        entry = plan.tiers[t][i]
        service = entry.service
        samples = plan.samples[service.service_id]
        return _build_candidate(
            service, entry.asset, name, plan.role, samples, runtime, stream, t == first
        )

    def _order(self, t: int, strategy: str, rr_counter: int) -> list[Candidate]:
        cached = self.orders[t]
        if cached is None or cached[0] != strategy:
            kept = [c for c in self.status[t] if c is not None]  # id order
            if strategy == "least_loaded":
                kept.sort(
                    key=lambda c: (c.load, math.inf if c.latency_ms is None else c.latency_ms)
                )
            elif strategy != "round_robin":  # scored: floats here; stable, so ties keep ids
                kept.sort(key=_SCORE, reverse=True)
            cached = self.orders[t] = (strategy, kept)
        kept = cached[1]
        if strategy == "round_robin" and kept:
            shift = rr_counter % len(kept)
            return kept[shift:] + kept[:shift]
        return kept


def _closed_overrides(
    plan: _Plan, ctx: RoutingContext, stale_hosts: frozenset[str] | set[str]
) -> dict[int, Exclusion]:
    """The statically excluded services whose health gate fails first now, by index."""
    touched: set[int] = set()
    for host_key in stale_hosts:
        touched.update(plan.closed_by_host.get(host_key, ()))
    suspects = getattr(ctx.runtime, "health_suspects", None)
    if suspects is not None:
        closed_ids = plan.closed_ids
        touched.update(i for sid in suspects() if (i := closed_ids.get(sid)) is not None)
    elif plan.closed:
        ids = plan.closed_sids
        runtimes = list(map(ctx.runtime.get, ids, repeat(NO_RUNTIME, len(ids))))
        if "down" in set(map(_PROBE, runtimes)) or not set(map(_BREAKER, runtimes)) <= _CLOSED_ONLY:
            touched.update(
                i for i, rt in enumerate(runtimes) if rt.probe == "down" or rt.breaker != "closed"
            )
    overrides = {}
    for i in touched:
        entry = plan.closed[i]
        runtime = ctx.runtime_of(entry.service.service_id)
        stale = entry.host_key in stale_hosts
        exclusion = _health_gate(entry.service, stale, runtime, ctx.stale_after_s)
        if exclusion is not None:
            overrides[i] = exclusion
    return overrides


# ---------------------------------------------------------------- scores


def runtime_score(
    service: Service, runtime: ServiceRuntime, *, stream: bool = False, loaded: bool | None = None
) -> tuple[float, dict[str, float]]:
    """The `scored` runtime score in [0, 1] and its parts (SPEC §5).

    `loaded` is the sent asset's state; None means "any asset of the service is loaded".
    """
    if loaded is None:
        loaded = any(a.loaded is True for a in service.assets)
    latency, tokens_per_sec = measures(service, runtime, stream)
    parts = {
        "loaded": 0.35 if loaded else 0.0,
        "latency": _latency_points(latency),
        "throughput": _throughput_points(tokens_per_sec),
        # 0.0 - x keeps a zero penalty at 0.0 rather than -0.0 in the breakdown
        "queue": 0.0 - min(0.15, 0.03 * _load(service, runtime)),
        "errors": 0.0 - 0.3 * min(1.0, max(0.0, runtime.error_rate)),
    }
    score = round(min(1.0, max(0.0, sum(parts.values()))), 6)
    return score, {**parts, "runtime": score}


def measures(
    service: Service, runtime: ServiceRuntime, stream: bool
) -> tuple[float | None, float | None]:
    """Latency (TTFT for streams) and tokens/s: the gateway's once it has enough samples."""
    latency: float | None = None
    tokens_per_sec: float | None = None
    if runtime.samples >= MEASURED_MIN_SAMPLES:
        latency = runtime.ttft_ms if stream and runtime.ttft_ms is not None else None
        latency = runtime.p50_latency_ms if latency is None else latency
        tokens_per_sec = runtime.tokens_per_sec
    if latency is None:
        latency = service.observed.p50_latency_ms
    if tokens_per_sec is None:
        tokens_per_sec = service.observed.tokens_per_sec
    return latency, tokens_per_sec


def _load(service: Service, runtime: ServiceRuntime) -> int:
    return max(0, runtime.in_flight) + max(0, service.observed.queue_depth or 0)


def _latency_points(latency_ms: float | None) -> float:
    if latency_ms is None:
        return 0.0
    if latency_ms <= 1500:
        return 0.30
    return 0.18 if latency_ms <= 4000 else 0.05


def _throughput_points(tokens_per_sec: float | None) -> float:
    if tokens_per_sec is None:
        return 0.0
    if tokens_per_sec >= 20:
        return 0.20
    return 0.10 if tokens_per_sec >= 8 else 0.0


def benchmark_quality(results: Mapping[str, Any]) -> float:
    """A sample's quality in [0, 1]: 0.65 correctness + 0.35 speed, or speed alone.

    Correctness is the best of the rate fields; speed never adds on top of a full score.
    """
    rates = [
        min(1.0, max(0.0, value))
        for key in ("quality_score", "pass_rate", "completion_rate", "tool_success_rate")
        if (value := _number(results.get(key))) is not None
    ]
    tokens_per_sec = _number(results.get("tokens_per_sec"))
    ttft = _number(results.get("ttft_ms"))
    speed = min(0.5, max(0.0, tokens_per_sec) / 80) if tokens_per_sec is not None else 0.0
    if ttft is not None:
        speed += 0.5 if ttft <= 500 else 0.4 if ttft <= 1000 else 0.25 if ttft <= 2500 else 0.1
    speed = min(1.0, speed)
    quality = 0.65 * max(rates) + 0.35 * speed if rates else speed
    return round(min(1.0, max(0.0, quality)), 6)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def role_benchmark(
    samples: Sequence[BenchmarkSample], workloads: Sequence[str], asset_id: str | None
) -> float | None:
    """Mean quality of the samples of `workloads` for `asset_id`; None without any."""
    qualities = [
        benchmark_quality(s.results)
        for s in samples
        if s.workload in workloads and (s.asset_id is None or s.asset_id == asset_id)
    ]
    return round(sum(qualities) / len(qualities), 6) if qualities else None


def close_matches(name: str, known_names: Iterable[str], *, limit: int = 5) -> tuple[str, ...]:
    """Known names that look like `name`: those containing it first, then similar ones."""
    lowered: dict[str, str] = {}
    for known in sorted(known_names):
        lowered.setdefault(known.lower(), known)
    needle = name.lower()
    hits = [k for k in lowered if len(needle) >= 3 and needle in k and k != needle]
    hits += difflib.get_close_matches(needle, list(lowered), n=limit, cutoff=0.6)
    return tuple(lowered[k] for k in dict.fromkeys(hits))[:limit]


def explain(decision: RouteDecision) -> dict[str, Any]:
    """The decision as JSON for `routes/resolve` and `geniehive route`."""
    return {
        "model": decision.name,
        "operation": decision.operation,
        "match": decision.match,
        "role": decision.role_id,
        "fallback_role": decision.fallback_role_id,
        "route": decision.route_label,
        "strategy": decision.strategy or None,
        "error": decision.error,
        "message": decision.message,
        "close_matches": list(decision.close_matches),
        "candidates": [
            {
                "service_id": c.service_id,
                "host_id": c.host_id,
                "upstream_model": c.upstream_model,
                "score": c.score,
                "breakdown": dict(c.breakdown),
                "family_rank": c.family_rank,
                "loaded": c.loaded,
                "pool": c.pool,
            }
            for c in decision.candidates
        ],
        "excluded": [
            {"service_id": e.service_id, "gate": e.gate, "detail": e.detail}
            for e in decision.excluded
        ],
        "fallbacks_remaining": list(decision.fallbacks),
        "fallbacks_without_candidates": [
            {"role": d.fallback_role_id, "excluded": [[e.service_id, e.gate] for e in d.excluded]}
            for d in decision.earlier
            if d.fallback_role_id is not None
        ],
    }
