"""Explanations: a decision as JSON, and the messages that say why a name has no route.

Rule: pure. What a user reads about a decision is written here: `explain` for
`routes/resolve` and `geniehive route`, the close matches of an unknown name, and the
"no routable service" message listing each service's failing gate.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from geniehive.routing.values import Exclusion, RouteDecision

__all__ = ["close_matches", "explain", "not_found", "unroutable_message"]


def not_found(name: str, operation: str, known: Iterable[str], probe: str) -> RouteDecision:
    near = close_matches(probe, known)
    message = f"model '{name}' not found"
    if near:
        message += f"; close matches: {', '.join(near)}"
    return RouteDecision(
        name, operation, "unknown", error="model_not_found", message=message, close_matches=near
    )


def unroutable_message(
    what: str,
    operation: str,
    excluded: Sequence[Exclusion],
    tried: Sequence[str],
    *,
    name: str = "",
    needs: frozenset[str] = frozenset(),
    also: Sequence[Exclusion] = (),
) -> str:
    """Why nothing routes: each service's failing gate; when the capability gate excluded
    every service (`excluded` and the fallbacks' `also`), "no service for 'x' supports tools"."""
    every = (*excluded, *also)
    if needs and every and all(e.gate == "capability" for e in every):
        message = f"no service for '{name}' supports {' and '.join(sorted(needs))}"
        if tried:
            message += f"; fallback roles tried: {', '.join(tried)}"
        return message
    if excluded:
        reasons = ", ".join(f"{e.service_id} ({e.gate})" for e in excluded)
    else:
        reasons = f"no {operation} services registered"
    message = f"no routable service for {what}: {reasons}"
    if tried:
        message += f"; fallback roles tried: {', '.join(tried)}"
    return message


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
        "needs": sorted(decision.needs),
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
                "full": c.full,
                "load": c.load,
                "placement": {
                    "class": c.placement.klass,
                    "evict": list(c.placement.evict),
                    "waits": c.placement.waits,
                    "wait_ms": c.placement.wait_ms,
                    "load_ms": c.placement.load_ms,
                },
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
