"""Route resolution: which services may serve a request, in which order, and why.

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
     capability, min_context, require_loaded. Direct pools pass the health gates and
     capability only. `capability` is the request's own gate: `resolve(..., needs=...)`
     (tools, vision) keeps the assets whose capabilities include the needs or are unknown;
     plans are kept per needs, so a request without needs is planned as before.
  4. fallbacks: when a role keeps no candidate, its `fallback_roles` are tried depth-first
     (`fallback_order`), each once, same operation only. The decision keeps `role_id` = the
     requested role (its prompt policy applies) and names the one used in `fallback_role_id`.
  5. narrowing into tiers: key (not loaded when `prefer_loaded`, family rank). The best tier is
     the pool (`Candidate.pool`); the other tiers follow it as failover, best first.
  6. strategy orders each tier: scored, round_robin (pool rotated by the counter) or
     least_loaded; scored and least_loaded put a candidate whose slots are all taken
     (`Candidate.full`) after those with a free slot.

Fallbacks at request time: a decision carries `fallbacks`, the fallback roles it has not
tried, in depth-first order. When every candidate of a decision fails, the relay calls
`next_fallback(snapshot, decision, ctx)`, which returns the decision of the next fallback role
with candidates (its own `fallbacks` are the rest) or None when they are exhausted;
`fallback_decisions` yields those decisions one by one, each computed only when asked.

Choices the rules above leave open (documented here, tested in tests/unit/test_routing.py):
  - a service is judged on the asset it would be sent (`Candidate.upstream_model`): that
    asset's `loaded` and family rank place it in a tier and feed its score;
  - role asset gates narrow the usable assets: host `allowed_model_families` keeps assets whose
    family or id contains one of them (a service with none left, or with no assets, fails);
    `min_context` keeps assets whose maximum context (`max_context`, else `context_length`)
    is unknown or large enough (a service with no assets passes); `require_loaded` keeps
    loaded ones. The upstream model is picked among the rest;
  - unknown latency or tokens/s earn no points; a sample's unknown TTFT earns no band;
  - the benchmark blend of `scored` averages the quality of the service's samples for the
    role's `benchmark_workloads` (samples of another asset than the one sent are ignored);
  - scores are rounded to 6 places so equal inputs tie exactly; an unknown strategy is scored;
  - a host missing from the snapshot is stale unless it is the local host.
Speed: what the snapshot alone settles (static gates, assets, tiers) is planned once per
snapshot and name or role (`plan`); a decision then checks only the context's part (`memo`).
Those caches are keyed by snapshot identity and never change a decision.
Route matching (POST /v1/cluster/routes/match) lives in `geniehive.matching`.

The modules, each importing only those above it:
  values    RoutingContext, Candidate, Exclusion, RouteDecision; the runtime protocols
  gates     the health, label and asset gates; the asset a service would be sent
  scores    the runtime score, benchmark quality, and the candidate built on them
  explain   the decision as JSON; not-found and no-route messages, close matches
  plan      per-snapshot plans: static gates, assets and tiers, built once
  memo      per-plan memos: the context's part, re-checked where runtimes changed
  decision  resolve, the fallback walk and the strategy choice
Everything importers use is re-exported here.
"""

from __future__ import annotations

from geniehive.models import NO_RUNTIME, ServiceRuntime
from geniehive.routing.decision import (
    ROLE_PREFIX,
    fallback_decisions,
    fallback_order,
    next_fallback,
    resolve,
)
from geniehive.routing.explain import close_matches, explain
from geniehive.routing.gates import (
    BLOCKED_AVAILABILITY,
    exclusion_gate,
    family_matches,
    family_rank,
    is_stale,
    label_strings,
)
from geniehive.routing.scores import (
    MEASURED_MIN_SAMPLES,
    benchmark_quality,
    measures,
    role_benchmark,
    runtime_score,
)
from geniehive.routing.values import (
    Candidate,
    Exclusion,
    HealthSuspects,
    IncrementalRuntimes,
    RouteDecision,
    RoutingContext,
)

__all__ = [
    "BLOCKED_AVAILABILITY",
    "MEASURED_MIN_SAMPLES",
    "NO_RUNTIME",
    "ROLE_PREFIX",
    "Candidate",
    "Exclusion",
    "HealthSuspects",
    "IncrementalRuntimes",
    "RouteDecision",
    "RoutingContext",
    "ServiceRuntime",
    "benchmark_quality",
    "close_matches",
    "exclusion_gate",
    "explain",
    "fallback_decisions",
    "fallback_order",
    "family_matches",
    "family_rank",
    "is_stale",
    "label_strings",
    "measures",
    "next_fallback",
    "resolve",
    "role_benchmark",
    "runtime_score",
]
