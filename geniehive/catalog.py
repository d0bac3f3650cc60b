"""The `/v1/models` listing: one entry per asset id, alias and role, sorted.

Rule: pure over a snapshot, live numbers and a routing context; listing resolves roles with
`routing.resolve`, which never advances a round-robin counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from geniehive import routing
from geniehive.models import Policy, Service, Snapshot
from geniehive.policy import thaw


def offload_hint(loaded: bool, p50_ms: float | None) -> str:
    """How a client may use a model: cold, fast enough for small tasks, background, slow.

    A loaded model with no latency measured yet counts as usable for background tasks.
    """
    if not loaded:
        return "cold_only"
    if p50_ms is None:
        return "usable_for_background_tasks"
    if p50_ms <= 1500:
        return "good_for_low_complexity"
    if p50_ms <= 4000:
        return "usable_for_background_tasks"
    return "available_but_slow"


STATES = ("loaded", "loading", "cold")  # best first: a name's state is its best service's


def asset_state(loaded: bool | None, loading: bool, asleep: bool) -> str:
    """`loaded`, `loading` or `cold`: a model loading now is `loading`; one on a managed
    server not running, or that its server reports not loaded, is `cold`; otherwise (loaded,
    or an engine that does not say) `loaded`."""
    if loading:
        return "loading"
    if asleep or loaded is False:
        return "cold"
    return "loaded"


def policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        "system_prompt": policy.system_prompt,
        "system_prompt_position": policy.system_prompt_position,
        "body_defaults": thaw(policy.body_defaults),
        "body_overrides": thaw(policy.body_overrides),
        "strip_reasoning": policy.strip_reasoning is not False,
    }


def _best(values: list[float | None], pick: Callable[..., float]) -> float | None:
    known = [v for v in values if v is not None]
    return pick(known) if known else None


def _service_numbers(
    service: Service, rt: routing.ServiceRuntime
) -> dict[str, float | int | None]:
    latency, tokens_per_sec = routing.measures(service, rt, stream=False)  # as routing sees it
    return {
        "p50_latency_ms": latency,
        "ttft_ms": rt.ttft_ms,
        "tokens_per_sec": tokens_per_sec,
        "in_flight": rt.in_flight,
    }


def describe_services(
    snapshot: Snapshot, service_ids: list[str], ctx: routing.RoutingContext, name: str | None
) -> dict[str, Any]:
    """The aggregated `geniehive` metadata of the services behind one name."""
    services = [snapshot.services[s] for s in service_ids if s in snapshot.services]
    numbers = [_service_numbers(s, ctx.runtime_of(s.service_id)) for s in services]
    loaded = False
    states: set[str] = set()
    contexts: list[float | None] = []
    maxima: list[float | None] = []
    capabilities: set[str] | None = None
    for service in services:
        models = ctx.runtime_of(service.service_id).models
        for asset in service.assets:
            if name is None or name == asset.asset_id or name in asset.aliases:
                state = asset_state(asset.loaded, asset.asset_id in models.loading, models.asleep)
                states.add(state)
                loaded |= state == "loaded" and asset.loaded is True
                contexts.append(asset.context_length)
                maxima.append(asset.max_context)
                if asset.capabilities is not None:
                    capabilities = (capabilities or set()) | asset.capabilities
    healthy = [
        s.service_id for s in services
        if routing.exclusion_gate(snapshot, s, ctx) is None
    ]
    p50 = _best([n["p50_latency_ms"] for n in numbers], min)
    meta: dict[str, Any] = {
        "operations": sorted({s.operation for s in services}),
        "services": [s.service_id for s in services],
        "hosts": sorted({s.host_id for s in services}),
        "loaded": loaded,
        "state": next((st for st in STATES if st in states), "cold"),
        "health": "healthy" if healthy else "unavailable",
        "healthy_services": healthy,
        "p50_latency_ms": p50,
        "ttft_ms": _best([n["ttft_ms"] for n in numbers], min),
        "tokens_per_sec": _best([n["tokens_per_sec"] for n in numbers], max),
        "in_flight": sum(int(n["in_flight"] or 0) for n in numbers),
        "context_length": _best(contexts, max),
        "offload_hint": offload_hint(loaded and bool(healthy), p50),
    }
    # Shown when known: what some model behind the name can do, and its largest context.
    if capabilities is not None:
        meta["capabilities"] = sorted(capabilities)
    max_context = _best(maxima, max)
    if max_context is not None:
        meta["max_context"] = max_context
    return meta


def model_entries(
    snapshot: Snapshot, ctx: routing.RoutingContext, created: int
) -> dict[str, dict[str, Any]]:
    """Every listed id with its entry, keyed by id."""
    names: dict[str, set[str]] = {}
    for service in snapshot.services.values():
        for asset in service.assets:
            for key in (asset.asset_id, *asset.aliases):
                names.setdefault(key, set()).add(service.service_id)
    entries = {
        name: _entry(name, "asset", created, describe_services(snapshot, sorted(ids), ctx, name))
        for name, ids in names.items()
    }
    for role_id in snapshot.roles:
        if role_id in entries:
            continue  # the asset keeps the bare id; the role stays reachable as role/<id>
        entries[role_id] = role_entry(snapshot, role_id, ctx, created)
    return dict(sorted(entries.items()))


def role_entry(
    snapshot: Snapshot, role_id: str, ctx: routing.RoutingContext, created: int
) -> dict[str, Any]:
    role = snapshot.roles[role_id]
    decision = routing.resolve(snapshot, f"role/{role_id}", role.operation, ctx)
    chosen = [c.service_id for c in decision.candidates]
    meta = describe_services(snapshot, chosen, ctx, None)
    meta["operations"] = [role.operation]
    meta["display_name"] = role.display_name
    meta["description"] = role.description
    meta["healthy_target_count"] = len(chosen)
    meta["loaded_target_count"] = sum(
        1 for sid in chosen
        if any(a.loaded for a in snapshot.services[sid].assets)
    )
    meta["fallback_used"] = decision.fallback_role_id
    meta["effective_policy"] = policy_dict(role.policy)
    meta["routing"] = {
        "strategy": role.routing.strategy or ctx.default_strategy,
        "preferred_families": list(role.routing.preferred_families),
        "fallback_roles": list(role.routing.fallback_roles),
    }
    return _entry(role_id, "role", created, meta)


def _entry(name: str, route_type: str, created: int, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "geniehive",
        "geniehive": {"route_type": route_type, **meta},
    }
