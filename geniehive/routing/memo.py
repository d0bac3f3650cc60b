"""The context's part of a decision, kept per plan and re-checked only where runtimes changed.

Rule: pure; a memo is a cache that never changes a decision. A decision checks staleness at
`now`, probe and breaker, and the runtime score for the services passing a plan's static
gates, and for the others only when they may change the recorded gate (a stale host, or a
runtime the context names as a health suspect; without such a list every runtime is looked
at, in bulk). Health gates come first, so a statically excluded service keeps its static
exclusion unless one of them fails. Candidates are reused while their runtime is the same
object, so an unchanged service costs a lookup; an `IncrementalRuntimes` mapping (the
gateway's journal of changed services) lets a decision look up only the changed ones.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import cast

from geniehive.models import NO_RUNTIME, ServiceRuntime, Snapshot
from geniehive.routing.gates import health_gate
from geniehive.routing.placement import DOES_NOT_FIT, arrange
from geniehive.routing.plan import Plan, snapshot_index
from geniehive.routing.scores import build_candidate
from geniehive.routing.values import (
    INCREMENTAL,
    READINGS,
    Candidate,
    Exclusion,
    HealthSuspects,
    IncrementalRuntimes,
    RoutingContext,
    reading_of,
)

__all__ = ["Memo", "decide"]

_PROBE = attrgetter("probe")
_BREAKER = attrgetter("breaker")
_SCORE = attrgetter("score")
_CLOSED_ONLY = frozenset({"closed"})
_NONE: frozenset[str] = frozenset()


def decide(
    snapshot: Snapshot,
    plan: Plan,
    name: str,
    ctx: RoutingContext,
    stream: bool,
    strategy: str,
    rr_counter: int,
) -> tuple[tuple[Candidate, ...], tuple[Exclusion, ...]]:
    """The ordered candidates and the exclusions of one plan in `ctx`."""
    stale_hosts = snapshot_index(snapshot).stale_hosts(ctx)
    memo = plan.memos.get((name, stream))
    if memo is None or memo.stale != stale_hosts or memo.limit != ctx.stale_after_s:
        memo = plan.memos[(name, stream)] = Memo(plan, stale_hosts, ctx.stale_after_s)
    view = ctx.runtime
    reading = READINGS.get(type(view), -1)  # inline: this runs once per decision
    if reading < 0:
        reading = reading_of(type(view))
    journal = cast(IncrementalRuntimes, view) if reading == INCREMENTAL else None
    suspects = journal if journal is not None else cast(HealthSuspects, view) if reading else None
    candidates, dynamic = memo.update(plan, name, view, journal, stream, strategy, rr_counter)
    overrides = _closed_overrides(plan, ctx, suspects, stale_hosts)
    excluded = plan.closed_excluded
    if overrides or dynamic:
        merged = list(excluded)
        for i, exclusion in overrides.items():
            merged[i] = exclusion
        for position, exclusion in reversed(dynamic):
            merged.insert(bisect_left(plan.closed_positions, position), exclusion)
        excluded = tuple(merged)
    return candidates, excluded


class Memo:
    """A plan's last decision for one (name, stream), updated where runtimes changed.

    Per tier: the runtime each service had (by identity), its candidate or None when a health
    gate excluded it, and the tier's order. A decision looks up the runtimes that may have
    changed (every runtime, unless the mapping is `IncrementalRuntimes`), then rebuilds only the
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

    def __init__(self, plan: Plan, stale: frozenset[str] | set[str], limit: float) -> None:
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
        self.token: object = None  # the `IncrementalRuntimes.changes_since` token, if any

    def update(
        self,
        plan: Plan,
        name: str,
        runtimes: Mapping[str, ServiceRuntime],
        journal: IncrementalRuntimes | None,
        stream: bool,
        strategy: str,
        rr_counter: int,
    ) -> tuple[tuple[Candidate, ...], list[tuple[int, Exclusion]]]:
        """The candidates and health exclusions now; `journal` is `runtimes` when it is
        `IncrementalRuntimes`, else None (every runtime is looked up)."""
        get = runtimes.get
        changed_any = False
        ids = None
        suspects: frozenset[str] = _NONE
        if journal is not None:
            self.token, ids = journal.changes_since(self.token)
            if ids is not None:
                suspects = journal.health_suspects()
        else:
            self.token = None  # read without the journal: its old position says nothing now
        if ids is not None:
            where = plan.where
            for sid in suspects.union(ids):
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
                new: list[ServiceRuntime | None]
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
                for i, known in enumerate(self.runtimes[t]):
                    if self.status[t][i] is not None:
                        self.status[t][i] = self._build(plan, name, stream, t, i, known, first)
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
        self, plan: Plan, name: str, stream: bool, t: int, i: int, runtime: ServiceRuntime | None
    ) -> None:
        """Re-check one service's health gates and rebuild its candidate."""
        assert runtime is not None
        entry = plan.tiers[t][i]
        stale = entry.host_key in self.stale
        if stale or runtime.probe == "down" or runtime.breaker != "closed":
            exclusion = health_gate(entry.service, stale, runtime, self.limit)
            if exclusion is not None:
                self.excluded[t][i] = exclusion
                self.status[t][i] = None
                return
        built = self._build(plan, name, stream, t, i, runtime, self.first)
        if built.placement.klass == DOES_NOT_FIT:
            self.excluded[t][i] = Exclusion(
                entry.service.service_id, DOES_NOT_FIT, built.placement.detail
            )
            self.status[t][i] = None
            return
        self.excluded[t].pop(i, None)
        self.status[t][i] = built

    @staticmethod
    def _build(
        plan: Plan,
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
        return build_candidate(
            service, entry.asset, name, plan.role, samples, runtime, stream, t == first,
            entry.host,
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
            if strategy != "round_robin":
                arrange(kept)  # warm and free first, then busy, then cold (placement.py)
            cached = self.orders[t] = (strategy, kept)
        kept = cached[1]
        if strategy == "round_robin" and kept:
            shift = rr_counter % len(kept)
            return kept[shift:] + kept[:shift]
        return kept


def _closed_overrides(
    plan: Plan,
    ctx: RoutingContext,
    suspects: HealthSuspects | None,
    stale_hosts: frozenset[str] | set[str],
) -> dict[int, Exclusion]:
    """The statically excluded services whose health gate fails first now, by index.

    `suspects` is the context's runtime mapping when it is `HealthSuspects`, else None (every
    statically excluded service's runtime is looked at).
    """
    touched: set[int] = set()
    for host_key in stale_hosts:
        touched.update(plan.closed_by_host.get(host_key, ()))
    if suspects is not None:
        closed_ids = plan.closed_ids
        touched.update(
            i for sid in suspects.health_suspects() if (i := closed_ids.get(sid)) is not None
        )
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
        exclusion = health_gate(entry.service, stale, runtime, ctx.stale_after_s)
        if exclusion is not None:
            overrides[i] = exclusion
    return overrides
