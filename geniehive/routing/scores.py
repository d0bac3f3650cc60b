"""Scores: the `scored` runtime score, benchmark quality, and the candidate built on them.

Rule: pure. Points come from whether the sent asset is loaded, latency (TTFT for streams) and
tokens/s bands, queue and error penalties; a candidate is `full` when the gateway holds every
one of its service's slots, and has a placement (geniehive/routing/placement.py); the
gateway's measurements replace the node's once it has `MEASURED_MIN_SAMPLES` of them. A
role's benchmark samples blend in at 40 % (a sample's speed counts only as far as its answers
were right: see benchmark_quality). Unknown numbers earn no points; scores are
rounded to 6 places so equal inputs tie exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from geniehive.models import Asset, BenchmarkSample, Host, Role, Service, ServiceRuntime
from geniehive.routing.gates import family_rank
from geniehive.routing.placement import place
from geniehive.routing.values import Candidate

__all__ = [
    "MEASURED_MIN_SAMPLES",
    "benchmark_quality",
    "build_candidate",
    "measures",
    "role_benchmark",
    "runtime_score",
]

MEASURED_MIN_SAMPLES = 5  # gateway measurements replace the node's from this many requests on


def runtime_score(
    service: Service, runtime: ServiceRuntime, *, stream: bool = False, loaded: bool | None = None
) -> tuple[float, dict[str, float]]:
    """The `scored` runtime score in [0, 1] and its parts.

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
    """A sample's quality in [0, 1]: correctness * (0.65 + 0.35 speed), or speed alone.

    Correctness is the best of the rate fields (`quality_score`, `pass_rate`,
    `completion_rate`, `tool_success_rate`). Speed is weighted by it: fast wrong answers earn
    nothing, so a sample with a 0 % pass rate has quality 0 and, blended in, never raises a
    score. A sample without any rate field is judged on speed alone; speed never adds on top
    of a full score.
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
    quality = max(rates) * (0.65 + 0.35 * speed) if rates else speed
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


def build_candidate(
    service: Service,
    asset: Asset | None,
    name: str,
    role: Role | None,
    samples: Sequence[BenchmarkSample],
    runtime: ServiceRuntime,
    stream: bool,
    pool: bool,
    host: Host | None = None,
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
    full = _full(service, runtime)
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
        full,
        place(service, asset, runtime, host, full, latency),
    )


def _full(service: Service, runtime: ServiceRuntime) -> bool:
    """Whether the gateway holds every slot of the service (unknown slots: never full)."""
    slots = service.observed.slots_total
    return slots is not None and slots > 0 and runtime.in_flight >= slots
