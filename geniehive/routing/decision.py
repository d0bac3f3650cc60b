"""The decision: a requested name resolved to a direct pool or a role, and the fallback walk.

Rule: pure, and nothing here advances a counter (see the package docstring for the order of
resolution and the fallbacks at request time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from geniehive.models import OPERATIONS, STRATEGIES, Role, Snapshot
from geniehive.routing.explain import not_found, unroutable_message
from geniehive.routing.memo import decide
from geniehive.routing.plan import direct_plan, role_plan
from geniehive.routing.values import RouteDecision, RoutingContext

__all__ = [
    "ROLE_PREFIX",
    "choose_strategy",
    "fallback_decisions",
    "fallback_order",
    "next_fallback",
    "resolve",
]

ROLE_PREFIX = "role/"


def resolve(
    snapshot: Snapshot,
    name: str,
    operation: str,
    ctx: RoutingContext,
    *,
    stream: bool = False,
    needs: frozenset[str] = frozenset(),
) -> RouteDecision:
    """The route decision for `name` and `operation` now. Never raises for a bad name.

    `needs` are the capabilities the request needs (`tools`, `vision`): candidates keep only
    services whose asset has them or does not say (the `capability` gate).
    """
    if name.startswith(ROLE_PREFIX):
        role = snapshot.roles.get(name[len(ROLE_PREFIX) :])
        if role is None:
            return not_found(name, operation, snapshot.roles, name[len(ROLE_PREFIX) :])
        return _resolve_role(snapshot, name, role, operation, ctx, stream, needs)
    ids = snapshot.by_name.get((operation, name))
    if ids:
        return _resolve_direct(snapshot, name, operation, ids, ctx, stream, needs)
    role = snapshot.roles.get(name)
    if role is not None:
        return _resolve_role(snapshot, name, role, operation, ctx, stream, needs)
    others = [op for op in OPERATIONS if (op, name) in snapshot.by_name]
    if others:
        message = f"model '{name}' serves {', '.join(others)}, not {operation}"
        return RouteDecision(name, operation, "none", error="wrong_operation", message=message)
    return not_found(name, operation, snapshot.known_names, name)


def next_fallback(
    snapshot: Snapshot, decision: RouteDecision, ctx: RoutingContext, *, stream: bool = False
) -> RouteDecision | None:
    """The decision of the next fallback role with candidates, or None when none is left.

    For the relay, once every candidate of `decision` failed at request time.
    """
    original = snapshot.roles.get(decision.role_id or "")
    if original is None or not decision.fallbacks:
        return None
    found, _ = _walk(
        snapshot, decision.name, original, decision.fallbacks, ctx, stream, decision.needs
    )
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


def _resolve_direct(
    snapshot: Snapshot,
    name: str,
    operation: str,
    ids: Sequence[str],
    ctx: RoutingContext,
    stream: bool,
    needs: frozenset[str],
) -> RouteDecision:
    strategy = choose_strategy(None, ctx)
    rr_key = f"model:{name}"
    plan = direct_plan(snapshot, name, operation, tuple(ids), needs)
    ordered, excluded = decide(
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
        needs=needs,
    )
    if ordered:
        return decision
    message = unroutable_message(
        f"model '{name}'", operation, decision.excluded, (), name=name, needs=needs
    )
    return replace(decision, error="no_healthy_upstream", message=message)


def _resolve_role(
    snapshot: Snapshot,
    name: str,
    role: Role,
    operation: str,
    ctx: RoutingContext,
    stream: bool,
    needs: frozenset[str],
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
    first = _role_decision(snapshot, name, role, role, ctx, stream, order, needs)
    if first.candidates:
        return first
    found, empty = _walk(snapshot, name, role, order, ctx, stream, needs)
    if found is not None:
        return replace(found, earlier=(first, *found.earlier))
    tried = tuple(d.fallback_role_id or "" for d in empty)
    others = tuple(e for d in empty for e in d.excluded)
    message = unroutable_message(
        f"role '{role.role_id}'", operation, first.excluded, tried, name=name, needs=needs,
        also=others,
    )
    return replace(first, error="no_healthy_upstream", message=message, fallbacks=(), earlier=empty)


def _walk(
    snapshot: Snapshot,
    name: str,
    original: Role,
    order: tuple[str, ...],
    ctx: RoutingContext,
    stream: bool,
    needs: frozenset[str],
) -> tuple[RouteDecision | None, tuple[RouteDecision, ...]]:
    """The first fallback in `order` with candidates, and the decisions of those without."""
    empty: list[RouteDecision] = []
    for index, fallback_id in enumerate(order):
        fallback = snapshot.roles.get(fallback_id)
        if fallback is None or fallback.operation != original.operation:
            continue  # the snapshot changed since the order was computed
        rest = order[index + 1 :]
        decision = _role_decision(snapshot, name, original, fallback, ctx, stream, rest, needs)
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
    needs: frozenset[str],
) -> RouteDecision:
    """The decision of one role's own gates, narrowing and strategy (no fallback walk)."""
    strategy = choose_strategy(role, ctx)
    rr_key = f"role:{role.role_id}"
    plan = role_plan(snapshot, role, needs)
    ordered, excluded = decide(
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
        needs=needs,
    )


def choose_strategy(role: Role | None, ctx: RoutingContext) -> str:
    strategy = (role.routing.strategy if role else None) or ctx.default_strategy
    return strategy if strategy in STRATEGIES else "scored"
