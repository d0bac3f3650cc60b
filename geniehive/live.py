"""Live counters the gateway keeps per service while it forwards (SPEC §7, §10).

Rule: owned by the event loop thread, never persisted. Routing reads them through
`runtime()`, which returns immutable `ServiceRuntime` values; the relay, the prober and the
breaker update them. Round-robin counters live here too and advance only through
`advance_round_robin`, called once per routed request.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from geniehive import health
from geniehive.routing import ServiceRuntime

log = logging.getLogger("geniehive.breaker")

WINDOW = 100  # measured requests kept per service for percentiles and the error rate


def _percentile(values: Iterable[float], fraction: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


@dataclass(slots=True)
class ServiceLive:
    in_flight: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    ttfts_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens_per_sec: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    requests: int = 0
    failures: int = 0
    probe: health.ProbeState = field(default_factory=health.ProbeState)
    breaker: health.BreakerState = health.CLOSED

    def p50_latency_ms(self) -> float | None:
        return _percentile(self.latencies_ms, 0.5)

    def p95_latency_ms(self) -> float | None:
        return _percentile(self.latencies_ms, 0.95)

    def ttft_ms(self) -> float | None:
        return _percentile(self.ttfts_ms, 0.5)

    def tok_s(self) -> float | None:
        return _percentile(self.tokens_per_sec, 0.5)

    def error_rate(self) -> float:
        if not self.outcomes:
            return 0.0
        return sum(1 for ok in self.outcomes if not ok) / len(self.outcomes)


class LiveState:
    """Per-service live numbers plus round-robin counters."""

    def __init__(self, *, open_s: float = 30.0, failures: int = 3) -> None:
        self.services: dict[str, ServiceLive] = {}
        self.rr_counters: dict[str, int] = {}
        self.open_s = open_s
        self.failures = failures

    def get(self, service_id: str) -> ServiceLive:
        live = self.services.get(service_id)
        if live is None:
            live = self.services[service_id] = ServiceLive()
        return live

    def runtime(self, service_id: str, now: float) -> ServiceRuntime:
        live = self.services.get(service_id)
        if live is None:
            return ServiceRuntime()
        return ServiceRuntime(
            probe=live.probe.verdict,
            breaker=health.breaker_view(live.breaker, now, self.open_s),
            trial_taken=live.breaker.trial_in_flight,
            in_flight=live.in_flight,
            samples=len(live.latencies_ms),
            p50_latency_ms=live.p50_latency_ms(),
            ttft_ms=live.ttft_ms(),
            tokens_per_sec=live.tok_s(),
            error_rate=live.error_rate(),
        )

    def runtimes(self, service_ids: Iterable[str], now: float) -> dict[str, ServiceRuntime]:
        return {sid: self.runtime(sid, now) for sid in service_ids if sid in self.services}

    def advance_round_robin(self, key: str | None) -> None:
        if key is not None:
            self.rr_counters[key] = self.rr_counters.get(key, 0) + 1

    # -- request lifecycle -------------------------------------------------------------
    def attempt_started(self, service_id: str, now: float) -> None:
        live = self.get(service_id)
        live.in_flight += 1
        live.breaker = health.next_breaker_on_attempt(live.breaker, now, self.open_s)

    def attempt_failed(self, service_id: str, now: float) -> None:
        live = self.get(service_id)
        live.in_flight -= 1
        live.requests += 1
        live.failures += 1
        live.outcomes.append(False)
        self._set_breaker(
            service_id, live,
            health.next_breaker_on_result(live.breaker, False, now, failures=self.failures),
        )

    @staticmethod
    def _set_breaker(service_id: str, live: ServiceLive, new: health.BreakerState) -> None:
        if new.state != live.breaker.state:
            log.info("breaker service=%s %s -> %s (consecutive failures %d)",
                     service_id, live.breaker.state, new.state, new.failures)
        live.breaker = new

    def attempt_succeeded(
        self,
        service_id: str,
        now: float,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        tokens_per_sec: float | None = None,
    ) -> None:
        live = self.get(service_id)
        live.in_flight -= 1
        live.requests += 1
        live.outcomes.append(True)
        live.latencies_ms.append(latency_ms)
        if ttft_ms is not None:
            live.ttfts_ms.append(ttft_ms)
        if tokens_per_sec is not None:
            live.tokens_per_sec.append(tokens_per_sec)
        self._set_breaker(
            service_id, live,
            health.next_breaker_on_result(live.breaker, True, now, failures=self.failures),
        )

    def attempt_abandoned(self, service_id: str) -> None:
        """The client went away: neither a success nor an upstream failure."""
        live = self.get(service_id)
        live.in_flight -= 1
        if live.breaker.trial_in_flight:
            live.breaker = health.BreakerState(
                "half_open", live.breaker.failures, live.breaker.opened_at
            )
