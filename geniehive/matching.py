"""Route matching (`POST /v1/cluster/routes/match`): advisory, scored suggestions.

Rule: pure, like routing. Roles are scored on the service they resolve to now, services on
their own numbers, with the formulas below; every score lies in [0, 1].

Choices the spec leaves open: text overlap uses the task texts only (workload names feed the
benchmark overlap with them); a service's text takes its host's label values, not the keys;
only services passing `exclusion_gate` are suggested; `kind` wins over `modality`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geniehive.models import OPERATIONS, Role, Service, Snapshot
from geniehive.routing import (
    ROLE_PREFIX,
    RoutingContext,
    benchmark_quality,
    exclusion_gate,
    family_matches,
    label_strings,
    resolve,
    runtime_score,
)

TOKEN_RE = re.compile(r"[a-z0-9]+")
MODALITIES: Mapping[str, tuple[str, ...]] = {
    "text": ("chat", "completion"),
    "embedding": ("embeddings",),
    "embeddings": ("embeddings",),
    "audio": ("transcription", "speech"),
    "image": ("image",),
}


def tokens(text: str) -> frozenset[str]:
    """Lower-cased runs of [a-z0-9]."""
    return frozenset(TOKEN_RE.findall(text.lower()))


def text_overlap(query: frozenset[str], candidate: frozenset[str]) -> float:
    """The share of the query's tokens found in the candidate's (0 if either is empty)."""
    if not query or not candidate:
        return 0.0
    return len(query & candidate) / len(query)


@dataclass(frozen=True, slots=True)
class MatchQuery:
    tasks: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()
    kind: str | None = None
    modality: str | None = None
    include_direct_services: bool = True
    limit: int = 10

    @property
    def operations(self) -> tuple[str, ...]:
        if self.kind is not None:
            return (self.kind,)
        if self.modality is not None:
            return MODALITIES[self.modality]
        return OPERATIONS


def parse_match_query(body: Mapping[str, Any]) -> MatchQuery:
    """The routes/match body as a query. Raises ValueError naming the bad field."""

    def texts(one: str, many: str) -> tuple[str, ...]:
        single, several = body.get(one), body.get(many, [])
        if single is not None and not isinstance(single, str):
            raise ValueError(f"{one}: expected a string")
        if not isinstance(several, list) or not all(isinstance(s, str) for s in several):
            raise ValueError(f"{many}: expected a list of strings")
        return tuple(dict.fromkeys(([single] if single else []) + several))

    unknown = set(body) - {
        "task",
        "tasks",
        "workload",
        "workloads",
        "kind",
        "modality",
        "include_direct_services",
        "limit",
    }
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field")
    kind, modality = body.get("kind"), body.get("modality")
    if kind is not None and kind not in OPERATIONS:
        raise ValueError(f"kind: expected one of {', '.join(OPERATIONS)}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality: expected one of {', '.join(MODALITIES)}")
    include = body.get("include_direct_services", True)
    if not isinstance(include, bool):
        raise ValueError("include_direct_services: expected a boolean")
    limit = body.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError("limit: expected a non-negative integer")
    return MatchQuery(
        texts("task", "tasks"), texts("workload", "workloads"), kind, modality, include, limit
    )


def match(
    snapshot: Snapshot, query: MatchQuery | Mapping[str, Any], ctx: RoutingContext
) -> dict[str, Any]:
    """The routes/match answer: roles and services scored for the query, best first.

    Raises ValueError (naming the field) for a malformed query mapping.
    """
    q = query if isinstance(query, MatchQuery) else parse_match_query(query)
    task_tokens = tokens(" ".join(q.tasks))
    work_tokens = tokens(" ".join(q.tasks + q.workloads))
    scored: list[tuple[float, int, str, dict[str, Any]]] = []
    for role_id in sorted(snapshot.roles):
        role = snapshot.roles[role_id]
        if role.operation in q.operations:
            entry = _match_role(snapshot, role, q, task_tokens, work_tokens, ctx)
            scored.append((entry["score"], 0, role_id, entry))
    if q.include_direct_services:
        for service_id in sorted(snapshot.services):
            service = snapshot.services[service_id]
            if service.operation in q.operations and not exclusion_gate(snapshot, service, ctx):
                entry = _match_service(snapshot, service, q, task_tokens, work_tokens, ctx)
                scored.append((entry["score"], 1, service_id, entry))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    return {
        "tasks": list(q.tasks),
        "workloads": list(q.workloads),
        "kind": q.kind,
        "candidates": [entry for *_, entry in scored[: q.limit]],
    }


def _match_role(
    snapshot: Snapshot,
    role: Role,
    q: MatchQuery,
    task_tokens: frozenset[str],
    work_tokens: frozenset[str],
    ctx: RoutingContext,
) -> dict[str, Any]:
    role_text = [
        role.role_id,
        role.display_name or "",
        role.description or "",
        role.policy.system_prompt or "",
        *role.routing.preferred_families,
    ]
    text = text_overlap(task_tokens, tokens(" ".join(role_text)))
    decision = resolve(snapshot, ROLE_PREFIX + role.role_id, role.operation, ctx)
    chosen = decision.chosen
    family = runtime = bench = 0.0
    reasons = _term_reasons(task_tokens, tokens(" ".join(role_text)))
    if chosen is None:
        reasons.append("no routable service now")
    else:
        service = snapshot.services[chosen.service_id]
        reasons.append(f"resolves to {chosen.service_id}")
        families = role.routing.preferred_families
        if any(family_matches(a, f) for a in service.assets for f in families):
            family = 1.0
            reasons.append("serves a preferred family")
        runtime = chosen.breakdown["runtime"]
        bench = _match_benchmark(snapshot, service, q, work_tokens, reasons)
    score = 0.25 * text + 0.12 * family + 0.13 * 0.0 + 0.25 * runtime + 0.25 * bench
    signals = {
        "text": text,
        "family": family,
        "guardrail": 0.0,
        "runtime": runtime,
        "benchmark": bench,
    }
    return _match_entry("role", role.role_id, role.operation, score, reasons, signals)


def _match_service(
    snapshot: Snapshot,
    service: Service,
    q: MatchQuery,
    task_tokens: frozenset[str],
    work_tokens: frozenset[str],
    ctx: RoutingContext,
) -> dict[str, Any]:
    host = snapshot.hosts.get(service.host_id)
    labels = host.labels.values() if host else ()
    words = [service.service_id, service.host_id, service.adapter]
    words += [text for value in labels for text in label_strings(value)]  # label values, not keys
    words += [a.asset_id for a in service.assets]
    service_text = tokens(" ".join(words))
    text = text_overlap(task_tokens, service_text)
    reasons = _term_reasons(task_tokens, service_text)
    loaded = [a.asset_id for a in service.assets if a.loaded is True]
    if loaded:
        reasons.append(f"loaded: {', '.join(loaded)}")
    runtime, _ = runtime_score(service, ctx.runtime_of(service.service_id))
    bench = _match_benchmark(snapshot, service, q, work_tokens, reasons)
    score = 0.20 * text + 0.45 * runtime + 0.35 * bench
    signals = {"text": text, "runtime": runtime, "benchmark": bench}
    return _match_entry("service", service.service_id, service.operation, score, reasons, signals)


def _match_benchmark(
    snapshot: Snapshot,
    service: Service,
    q: MatchQuery,
    work_tokens: frozenset[str],
    reasons: list[str],
) -> float:
    """0.55 best workload overlap + 0.45 best quality among the overlapping samples.

    A sample of quality 0 (a 0 % pass rate, see benchmark_quality) is no evidence of fit: it
    adds no overlap either, so it never raises a score.
    """
    best_overlap = best_quality = 0.0
    best_workload = None
    for sample in snapshot.samples_by_service.get(service.service_id, ()):
        quality = benchmark_quality(sample.results)
        if quality <= 0:
            continue
        overlap = (
            1.0
            if sample.workload in q.workloads
            else text_overlap(work_tokens, tokens(sample.workload))
        )
        best_overlap = max(best_overlap, overlap)
        relevant = overlap > 0 or not work_tokens
        if relevant and (best_workload is None or quality > best_quality):
            best_quality, best_workload = quality, sample.workload
    if best_workload is not None:
        reasons.append(f"benchmark {best_workload} quality {round(best_quality, 4)}")
    return 0.55 * best_overlap + 0.45 * best_quality


def _term_reasons(query: frozenset[str], candidate: frozenset[str]) -> list[str]:
    shared = sorted(query & candidate)
    return [f"matches task terms: {', '.join(shared)}"] if shared else []


def _match_entry(
    kind: str,
    candidate_id: str,
    operation: str,
    score: float,
    reasons: list[str],
    signals: Mapping[str, float],
) -> dict[str, Any]:
    return {
        "candidate_type": kind,
        "candidate_id": candidate_id,
        "operation": operation,
        "score": round(score, 4),
        "reasons": reasons,
        "signals": {key: round(value, 4) for key, value in signals.items()},
    }
