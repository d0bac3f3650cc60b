"""The values of routing: what a decision reads besides the snapshot, and what it returns.

Rule: pure value types. `RoutingContext` carries the time, the runtime mapping and the round-robin
counters; `RouteDecision` holds the ordered `Candidate`s and the `Exclusion`s. A runtime mapping
may say more than a `Mapping` does: `HealthSuspects` and `IncrementalRuntimes` are the two
protocols a decision reads faster through (the gateway's `live.RuntimeView` implements both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from geniehive.models import NO_RUNTIME, ServiceRuntime
from geniehive.routing.placement import WARM_FREE_PLACEMENT, Placement

__all__ = [
    "INCREMENTAL",
    "PLAIN",
    "READINGS",
    "SUSPECTS",
    "Candidate",
    "Exclusion",
    "HealthSuspects",
    "IncrementalRuntimes",
    "RouteDecision",
    "RoutingContext",
    "reading_of",
]


@runtime_checkable
class HealthSuspects(Protocol):
    """A runtime mapping that names the services which may fail a health gate on their runtime.

    `health_suspects()` returns the ids whose probe is down or breaker is not closed; every
    other id then passes the health gates on its runtime, so a decision skips looking up the
    services a role's static gates exclude.
    """

    def health_suspects(self) -> frozenset[str]: ...


@runtime_checkable
class IncrementalRuntimes(HealthSuspects, Protocol):
    """A runtime mapping that also says which runtimes changed since an earlier decision.

    `changes_since(token)` returns a new token and the ids whose runtime may have changed since
    `token` was handed out, or None when it cannot tell (a first reader, a dropped journal): a
    decision then looks up only those ids and the suspects, or everything on None.
    """

    def changes_since(self, token: object) -> tuple[object, Iterable[str] | None]: ...


PLAIN, SUSPECTS, INCREMENTAL = 0, 1, 2  # how a decision reads a runtime mapping
# by class: a runtime-checkable protocol's `isinstance` costs microseconds per call, and a
# decision asks once per plan
READINGS: dict[type, int] = {}


def reading_of(cls: type) -> int:
    """How a decision reads a runtime mapping of class `cls`: INCREMENTAL when it is
    `IncrementalRuntimes`, SUSPECTS when only `HealthSuspects`, else PLAIN (read whole)."""
    reading = READINGS.get(cls)
    if reading is None:
        incremental = issubclass(cls, IncrementalRuntimes)
        reading = (
            INCREMENTAL if incremental else SUSPECTS if issubclass(cls, HealthSuspects) else PLAIN
        )
        READINGS[cls] = reading
    return reading


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """What a decision reads besides the snapshot.

    `runtime` maps service ids to their `ServiceRuntime` (missing: `NO_RUNTIME`). Decisions
    reuse candidates while a service's runtime is the same object, so a mapping should hand
    out one value per state. A mapping that is also `HealthSuspects` spares a decision the
    lookups of the services a role's static gates exclude; one that is `IncrementalRuntimes`
    is read incrementally: a decision looks up only the changed ids and the suspects. A plain
    mapping is read whole, every decision.
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
    full: bool = False  # every slot of the service is taken (geniehive/capacity.py)
    placement: Placement = WARM_FREE_PLACEMENT  # warm or cold, and what a load would evict


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
    needs: frozenset[str] = frozenset()  # the capabilities the request needs (tools, vision)

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None
