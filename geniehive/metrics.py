"""Prometheus metrics (`GET /metrics`; the series are listed in docs/deployment.md, "Prometheus").

Rule: cardinality is bounded by what the registry knows. Request series are labelled by a
fixed endpoint name, the route type (`direct`, `role`, `fallback`, `none`), the service that
served (or `-` when nothing was routed) and the status; never by request id or by a model name
a client made up. Live state (in-flight, health, breaker, heartbeat age, failure counts) is
read from the gateway at scrape time by a collector, so it costs nothing per request.

Each gateway has its own `CollectorRegistry`, so several gateways in one process (tests) never
share series.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from geniehive import __version__, health, routing
from geniehive.capacity import CLASS_NAMES, slots_of
from geniehive.memory import gpu_memory, loaded_model_memory

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
HEALTH_STATES = ("healthy", "unknown", "down", "unhealthy", "stale", "unavailable")
BREAKER_STATES = ("closed", "open", "half_open")  # those of geniehive.health
MAX_CACHED_CHILDREN = 4096  # labelled metric children kept for observe_request

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "route_type"]


def route_type(route: str, routed: bool) -> str:
    """The bounded route label: `direct`, `role`, `fallback`, or `none` when unrouted."""
    if not routed:
        return "none"
    if ";fallback:" in route:
        return "fallback"
    return "role" if route.startswith("role:") else "direct"


class GatewayMetrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "geniehive_requests", "Client API requests answered",
            ["endpoint", "route_type", "service", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "geniehive_request_duration_seconds", "Time to answer a request, end to end",
            ["endpoint", "route_type"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.ttft = Histogram(
            "geniehive_time_to_first_token_seconds", "Time to the first streamed chunk",
            ["service"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "geniehive_tokens", "Tokens reported by upstreams in usage",
            ["service", "direction"], registry=self.registry,
        )
        self.attempts = Counter(
            "geniehive_upstream_attempts", "Upstream tries, failed ones included",
            ["service", "outcome"], registry=self.registry,
        )
        self.client_write_timeouts = Counter(
            "geniehive_client_write_timeouts",
            "Requests ended because the client accepted no bytes for server.write_timeout_s",
            ["endpoint"], registry=self.registry,
        )
        self.queue_wait = Histogram(
            "geniehive_queue_wait_seconds", "Waits for a slot in the admission queue",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        gateway.admission.observe_wait = self.queue_wait.observe
        self.affinity = Counter(
            "geniehive_affinity", "Requests that named a session, by where they went: "
            "hit (its last service), miss (none remembered), moved (another)",
            ["result"], registry=self.registry,
        )
        self.registry.register(_LiveCollector(gateway))
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, endpoint: str, outcome: Any, duration_s: float) -> None:
        """Record one answered request (called once per request, routed or not)."""
        service = outcome.service_id or "-"
        rtype = route_type(outcome.route, outcome.service_id is not None)
        # The labelled children are looked up once per label set (prometheus_client's
        # labels() validates and locks on every call); children are never removed.
        key = (endpoint, rtype, service, outcome.status)
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) >= MAX_CACHED_CHILDREN:
                self._request_children.clear()
            children = self._request_children[key] = (
                self.requests.labels(endpoint, rtype, service, str(outcome.status)),
                self.latency.labels(endpoint, rtype),
            )
        children[0].inc()
        children[1].observe(duration_s)
        if outcome.affinity is not None:
            self.affinity.labels(outcome.affinity).inc()
        if outcome.service_id is None:
            return
        if outcome.ttft_ms is not None:
            self.ttft.labels(service).observe(outcome.ttft_ms / 1000)
        if outcome.prompt_tokens:
            self.tokens.labels(service, "in").inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            self.tokens.labels(service, "out").inc(outcome.completion_tokens)
        failed = outcome.failures
        for service_id, _ in failed:
            self.attempts.labels(service_id, "failed").inc()
        if outcome.attempts > len(failed):
            self.attempts.labels(service, "answered").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read from the gateway's snapshot and live counters at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gw = self.gw
        snapshot = gw.snapshot
        ctx = gw.routing_context()
        in_flight = GaugeMetricFamily(
            "geniehive_in_flight", "Requests in flight per service (measured)", labels=["service"]
        )
        up = GaugeMetricFamily(
            "geniehive_service_health", "1 for the service's current health state",
            labels=["service", "state"],
        )
        breaker = GaugeMetricFamily(
            "geniehive_breaker_state", "1 for the breaker's current state",
            labels=["service", "state"],
        )
        for service_id, service in sorted(snapshot.services.items()):
            runtime = ctx.runtime.get(service_id) or routing.ServiceRuntime()
            in_flight.add_metric([service_id], runtime.in_flight)
            state = _health_state(snapshot, service, ctx, runtime)
            for name in HEALTH_STATES:
                up.add_metric([service_id, name], 1.0 if name == state else 0.0)
            for name in BREAKER_STATES:
                breaker.add_metric([service_id, name], 1.0 if runtime.breaker == name else 0.0)
        yield in_flight
        yield up
        yield breaker
        yield from self._capacity(snapshot)
        yield from self._hosts(snapshot)
        yield from self._memory(snapshot)
        yield from self._failures()
        info = InfoMetricFamily("geniehive_build", "GenieHive build information")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info

    def _capacity(self, snapshot: Any) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        admission = self.gw.admission
        slots = GaugeMetricFamily(
            "geniehive_slots", "Slots per service (known slots only)", labels=["service"]
        )
        queued = GaugeMetricFamily(
            "geniehive_queued", "Requests waiting that the service could serve",
            labels=["service"],
        )
        for service_id, service in sorted(snapshot.services.items()):
            total = slots_of(service)
            if total is not None:
                slots.add_metric([service_id], total)
            queued.add_metric([service_id], admission.queued.get(service_id, 0))
        depth = GaugeMetricFamily(
            "geniehive_queue_depth", "Requests waiting in the admission queue",
            labels=["priority"],
        )
        for name, count in zip(CLASS_NAMES, admission.waiting_by_class, strict=True):
            depth.add_metric([name], count)
        refusals = CounterMetricFamily(
            "geniehive_refusals", "Requests refused for capacity", labels=["code"]
        )
        counts = {"queue_full": 0, "queue_timeout": 0, **admission.refused}
        counts["rate_limited"] = self.gw.key_rates.refused
        for code, count in sorted(counts.items()):
            refusals.add_metric([code], count)
        yield slots
        yield queued
        yield depth
        yield refusals

    def _hosts(self, snapshot: Any) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "geniehive_host_heartbeat_age_seconds", "Seconds since the host's last heartbeat",
            labels=["host"],
        )
        stale = GaugeMetricFamily(
            "geniehive_host_stale", "1 when the host missed its heartbeats", labels=["host"]
        )
        now = time.time()
        stale_after = self.gw.config.nodes.stale_after_s
        for host_id, host in sorted(snapshot.hosts.items()):
            if host.is_local:
                continue
            if host.last_seen is not None:  # as /v1/cluster/hosts and staleness judge it
                age.add_metric([host_id], max(0.0, now - host.last_seen))
            stale.add_metric([host_id], 1.0 if routing.is_stale(host, now, stale_after) else 0.0)
        yield age
        yield stale

    def _memory(self, snapshot: Any) -> Iterator[Metric]:
        gpus = GaugeMetricFamily(
            "geniehive_gpu_memory_bytes", "GPU memory per host and GPU, total and used "
            "(nvidia-smi on the node, as last reported)", labels=["host", "gpu", "kind"],
        )
        for host_id, host in sorted(snapshot.hosts.items()):
            for gpu in gpu_memory(host):
                for kind in ("total", "used"):
                    value = gpu[f"{kind}_bytes"]
                    if value is not None:
                        gpus.add_metric([host_id, str(gpu["index"]), kind], value)
        models = GaugeMetricFamily(
            "geniehive_model_memory_bytes", "VRAM of each loaded model, per service offering it",
            labels=["service", "model"],
        )
        services = (service for _, service in sorted(snapshot.services.items()))
        for service_id, model, vram in loaded_model_memory(services):
            models.add_metric([service_id, model], vram)
        yield gpus
        yield models

    def _failures(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        families = {
            "discovery": CounterMetricFamily(
                "geniehive_discovery_failures", "Failed discovery passes", labels=["upstream"]
            ),
            "probe": CounterMetricFamily(
                "geniehive_probe_failures", "Failed health probes", labels=["service"]
            ),
        }
        for (kind, subject), count in sorted(self.gw.failure_counts.items()):
            family = families.get(kind)
            if family is not None:
                family.add_metric([subject], count)
        yield from families.values()


def _health_state(snapshot: Any, service: Any, ctx: Any, runtime: Any) -> str:
    """The status listing's word, or `unavailable` for a drained or refusing service."""
    gate = routing.exclusion_gate(snapshot, service, ctx)
    if gate is not None and gate.gate in ("availability", "not_accepting"):
        return "unavailable"
    return health.verdict(
        gate.gate if gate is not None else None, runtime.probe, service.state.health
    )
