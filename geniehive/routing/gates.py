"""The gates a service passes to be a candidate, and the asset it would be sent.

Rule: pure. Health gates come first and apply to every pool, direct or role: host_stale,
probe_down, node_unhealthy, breaker_open (`health.routable`), availability, not_accepting. A
role then checks the host labels (trust_tier, device_class, workload_class) and narrows the
service's assets (model_family, capability, min_context, require_loaded); the first failing
gate is the service's `Exclusion`. A direct pool checks only `capability` after the health
gates, on the asset the name sends.

`capability` is the request's gate: its `needs` (tools, vision) keep the assets whose
capabilities include them or are unknown. `min_context` keeps the assets whose maximum context
(`max_context`, else `context_length`) is unknown or large enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from geniehive.health import routable
from geniehive.models import (
    LOCAL_HOST_ID,
    Asset,
    Host,
    RoutingPolicy,
    Service,
    ServiceRuntime,
    Snapshot,
)
from geniehive.routing.values import Exclusion, RoutingContext

__all__ = [
    "BLOCKED_AVAILABILITY",
    "capability_gate",
    "capable",
    "direct_asset",
    "exclusion_gate",
    "family_matches",
    "family_rank",
    "fits_context",
    "health_gate",
    "is_stale",
    "label_strings",
    "needs_text",
    "pick_asset",
    "static_role_gates",
]

BLOCKED_AVAILABILITY = frozenset({"draining", "paused", "offline", "quarantined"})


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
    return health_gate(service, stale, ctx.runtime_of(service.service_id), ctx.stale_after_s)


def health_gate(
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


def capable(asset: Asset, needs: frozenset[str]) -> bool:
    """Whether `asset` may serve a request needing `needs`: unknown capabilities pass."""
    return asset.capabilities is None or needs <= asset.capabilities


def needs_text(needs: frozenset[str]) -> str:
    """`tools`, `tools and vision`: the needs as a message names them."""
    return " and ".join(sorted(needs))


def capability_gate(
    service: Service, asset: Asset | None, needs: frozenset[str]
) -> Exclusion | None:
    """The `capability` exclusion of a direct pool's service whose sent asset lacks `needs`."""
    if not needs or asset is None or capable(asset, needs):
        return None
    missing = needs - (asset.capabilities or frozenset())
    return Exclusion(service.service_id, "capability", f"no {needs_text(missing)} support")


def static_role_gates(
    snapshot: Snapshot, service: Service, routing: RoutingPolicy,
    needs: frozenset[str] = frozenset(),
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
    return _asset_gates(
        service, routing, label_strings(labels.get("allowed_model_families")), needs
    )


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
    service: Service, routing: RoutingPolicy, host_families: Sequence[str],
    needs: frozenset[str],
) -> tuple[Exclusion | None, tuple[Asset, ...]]:
    service_id = service.service_id
    assets = service.assets
    if host_families:
        assets = tuple(a for a in assets if any(family_matches(a, f) for f in host_families))
        if not assets:
            detail = f"host serves only {', '.join(host_families)}"
            return Exclusion(service_id, "model_family", detail), ()
    if needs and assets:
        kept = tuple(a for a in assets if capable(a, needs))
        if not kept:
            missing = frozenset().union(*(needs - (a.capabilities or frozenset())
                                          for a in assets))
            return Exclusion(service_id, "capability", f"no {needs_text(missing)} support"), ()
        assets = kept
    minimum = routing.min_context
    if minimum is not None and assets:
        assets = tuple(a for a in assets if fits_context(a, minimum))
        if not assets:
            return Exclusion(service_id, "min_context", f"no asset with {minimum} context"), ()
    if routing.require_loaded:
        assets = tuple(a for a in assets if a.loaded is True)
        if not assets:
            return Exclusion(service_id, "require_loaded", "no loaded asset"), ()
    return None, assets


def fits_context(asset: Asset, minimum: int) -> bool:
    """Whether `asset` can take `minimum` tokens of context: its maximum context where known
    (`max_context`), else its `context_length`; unknown passes."""
    size = asset.max_context if asset.max_context is not None else asset.context_length
    return size is None or size >= minimum


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


# ---------------------------------------------------------------- the asset sent


def direct_asset(service: Service, name: str, needs: frozenset[str] = frozenset()) -> Asset | None:
    """The asset `name` names on `service`; for a service id, the asset `pick_asset` picks
    (among those capable of `needs` when any is)."""
    asset = service.asset(name)
    if asset is not None:
        return asset
    for asset in service.assets:
        if name in asset.aliases:
            return asset
    if needs:
        kept = [a for a in service.assets if capable(a, needs)]
        if kept:
            return pick_asset(kept, ())
    return pick_asset(service.assets, ())


def pick_asset(assets: Sequence[Asset], families: Sequence[str]) -> Asset | None:
    """The loaded asset of the best family, else the first loaded, else the first asset."""
    loaded = [a for a in assets if a.loaded is True]
    if loaded and families:
        best = min(loaded, key=lambda a: family_rank(a, families))
        if family_rank(best, families) < len(families):
            return best
    if loaded:
        return loaded[0]
    return assets[0] if assets else None
