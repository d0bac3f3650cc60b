"""Per-snapshot plans: what the snapshot alone settles about a direct name or a role.

Rule: pure. A decision splits into what the snapshot alone settles and what the context settles.
The snapshot settles, per service of a direct name or a role: the first static gate it fails
(node health, availability, accepting, then the role's label and asset gates), the asset it
would be sent and its tier. That is a `Plan`, built once per snapshot and name or role, and per
request needs (`capability`: a request with tools or images; the plain request's plan is the one
without needs). The context settles staleness at `now`, probe and breaker, and the runtime
score; that part is `geniehive.routing.memo`. Plans are keyed by snapshot identity, hold no
reference to their snapshot and die with it; they never change a decision.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import TYPE_CHECKING

from geniehive.models import LOCAL_HOST_ID, NO_RUNTIME, Asset, Host, Role, Service, Snapshot
from geniehive.routing.gates import (
    capability_gate,
    direct_asset,
    family_rank,
    health_gate,
    pick_asset,
    static_role_gates,
)
from geniehive.routing.values import Exclusion, RoutingContext

if TYPE_CHECKING:
    from geniehive.routing.memo import Memo

__all__ = ["Plan", "direct_plan", "role_plan", "snapshot_index"]


class _Entry:
    __slots__ = ("asset", "excluded", "host", "host_key", "position", "service", "tier")

    def __init__(
        self,
        position: int,
        service: Service,
        asset: Asset | None,
        tier: tuple[int, int],
        excluded: Exclusion | None,
        host: Host | None = None,
    ) -> None:
        self.position = position  # in the name's or operation's service order
        self.service = service
        self.host_key = service.host_id
        self.host = host  # its memory decides placement
        self.asset = asset
        self.tier = tier  # (not loaded when prefer_loaded, family rank)
        self.excluded = excluded  # the first static gate failed, or None


class Plan:
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
        self.memos: dict[tuple[str, bool], Memo] = {}


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
        self.plans: dict[object, Plan] = {}

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


def snapshot_index(snapshot: Snapshot) -> _Index:
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


def direct_plan(
    snapshot: Snapshot, name: str, operation: str, ids: tuple[str, ...],
    needs: frozenset[str] = frozenset(),
) -> Plan:
    index = snapshot_index(snapshot)
    key: tuple[object, ...] = ("direct", operation, name)
    if needs:
        key = (*key, needs)
    plan = index.plans.get(key)
    if plan is not None and plan.key is ids:
        return plan
    entries = []
    for position, service_id in enumerate(ids):
        service = snapshot.services[service_id]
        asset = direct_asset(service, name, needs)
        excluded = health_gate(service, False, NO_RUNTIME, 0.0)
        if excluded is None:
            excluded = capability_gate(service, asset, needs)
        entries.append(_Entry(position, service, asset, (0, 0), excluded,
                              snapshot.hosts.get(service.host_id)))
    plan = index.plans[key] = Plan(ids, None, entries, snapshot)
    return plan


def role_plan(snapshot: Snapshot, role: Role, needs: frozenset[str] = frozenset()) -> Plan:
    index = snapshot_index(snapshot)
    key: tuple[object, ...] = ("role", role.role_id)
    if needs:
        key = (*key, needs)
    plan = index.plans.get(key)
    if plan is not None and plan.key is role:
        return plan
    policy = role.routing
    families = policy.preferred_families
    entries = []
    for position, service_id in enumerate(snapshot.by_operation.get(role.operation, ())):
        service = snapshot.services[service_id]
        excluded = health_gate(service, False, NO_RUNTIME, 0.0)
        asset = None
        if excluded is None:
            excluded, assets = static_role_gates(snapshot, service, policy, needs)
            asset = pick_asset(assets, families) if excluded is None else None
        cold = 1 if policy.prefer_loaded and not (asset is not None and asset.loaded is True) else 0
        tier = (cold, family_rank(asset, families))
        entries.append(_Entry(position, service, asset, tier, excluded,
                              snapshot.hosts.get(service.host_id)))
    plan = index.plans[key] = Plan(role, role, entries, snapshot)
    return plan
