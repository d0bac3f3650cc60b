"""Route-decision time against synthetic snapshots of 10 to 10,000 services.

Rule: in-process and pure, like the router itself: build a `Snapshot`, then time
`routing.resolve` with `timeit` (median of repeats, in microseconds per decision). Three
shapes per size:
  direct10    a model name served by 10 services (the direct index finds them);
  role_gated  a role whose trust-tier gate leaves 10 candidates (every service is checked);
  role_all    a role every service passes (all of them are scored and ranked).
Each is timed with precomputed `ServiceRuntime` values (a plain dict, the router alone: every
runtime is looked up per decision) and, as `*_live`, through the gateway's `RuntimeView` over
a `LiveState` with a full window of measurements per service (a decision looks up only the
runtimes that changed since the previous one). `role_all_live_churn` is `role_all_live` with
one request started and one finished between decisions, as under traffic; its time includes
those two updates of the live counters.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
import timeit
from typing import Any

from geniehive import routing
from geniehive.live import WINDOW, LiveState, RuntimeView
from geniehive.models import (
    Asset,
    Host,
    Observed,
    Role,
    RoutingPolicy,
    Service,
    ServiceState,
    Snapshot,
)

SERVICES_PER_HOST = 10
SHAPES = {
    "direct10": "shared-model",
    "role_gated": "gold_only",
    "role_all": "anyone",
}
# every timed column: the shapes with each runtime source, and the churn case
COLUMNS = (*SHAPES, *(f"{shape}_live" for shape in SHAPES), "role_all_live_churn")


def build_snapshot(size: int, now: float) -> Snapshot:
    """`size` healthy chat services, 10 per host; host 0 is the only `gold` trust tier."""
    hosts = {}
    services = {}
    for index in range(size):
        host_id = f"host-{index // SERVICES_PER_HOST:05d}"
        if host_id not in hosts:
            tier = "gold" if index == 0 else "silver"
            hosts[host_id] = Host(host_id, f"10.0.{index // 2560}.{index % 256}",
                                  labels={"trust_tier": tier}, last_heartbeat=now)
        assets = [Asset(f"model-{index:05d}", loaded=True, context_length=32768,
                        family="qwen3" if index % 2 else "llama")]
        if index < SERVICES_PER_HOST:
            assets.append(Asset("shared-model", loaded=True, context_length=32768))
        service_id = f"svc-{index:05d}/chat"
        services[service_id] = Service(
            service_id, host_id, "chat", "openai", f"http://{hosts[host_id].address}:8000",
            assets=tuple(assets), state=ServiceState(health="healthy"),
            observed=Observed(p50_latency_ms=900.0, tokens_per_sec=35.0, queue_depth=index % 3),
        )
    roles = {
        "gold_only": Role("gold_only", "chat", routing=RoutingPolicy(
            allowed_trust_tiers=("gold",), preferred_families=("qwen3",))),
        "anyone": Role("anyone", "chat", routing=RoutingPolicy(preferred_families=("qwen3",))),
    }
    return Snapshot(version=1, hosts=hosts, services=services, roles=roles)


def routing_context(snapshot: Snapshot, now: float) -> routing.RoutingContext:
    """A context with gateway measurements for every service, as after some traffic."""
    runtime = {
        service_id: routing.ServiceRuntime(probe="healthy", in_flight=1, samples=20,
                                           p50_latency_ms=850.0, tokens_per_sec=40.0)
        for service_id in snapshot.services
    }
    return routing.RoutingContext(now=now, runtime=runtime)


def live_context(snapshot: Snapshot, now: float) -> routing.RoutingContext:
    """A context over `LiveState` holding a full window of successes per service, read
    through the gateway's own view of it."""
    live = LiveState()
    clock = 1000.0
    for number, service_id in enumerate(snapshot.services):
        for sample in range(WINDOW):
            live.attempt_started(service_id, clock)
            live.attempt_succeeded(service_id, clock, latency_ms=800.0 + (sample * 7 + number) % 90,
                                   ttft_ms=120.0 + sample % 13, tokens_per_sec=30.0 + sample % 9)
    return routing.RoutingContext(now=now, runtime=RuntimeView(live, clock))


def time_call(call: Any, repeat: int, loops: int | None = None) -> float:
    """Median microseconds per call over `repeat` timings of `loops` calls (by default as
    many as take at least 0.2 s)."""
    timer = timeit.Timer(call)
    if loops is None:
        loops, _ = timer.autorange()
    return statistics.median(t / loops for t in timer.repeat(repeat, loops)) * 1e6


def measure(sizes: tuple[int, ...], repeat: int = 5, loops: int | None = None
            ) -> list[dict[str, Any]]:
    rows = []
    now = time.time()
    for size in sizes:
        started = time.perf_counter()
        snapshot = build_snapshot(size, now)
        build_ms = (time.perf_counter() - started) * 1000
        contexts = {"": routing_context(snapshot, now), "_live": live_context(snapshot, now)}
        row: dict[str, Any] = {"services": size, "snapshot_build_ms": round(build_ms, 2)}
        for suffix, ctx in contexts.items():
            for shape, name in SHAPES.items():
                decision = routing.resolve(snapshot, name, "chat", ctx)
                row[f"{shape}{suffix}_candidates"] = len(decision.candidates)
                call = functools.partial(routing.resolve, snapshot, name, "chat", ctx)
                row[f"{shape}{suffix}_us"] = round(time_call(call, repeat, loops), 2)
        churn = churn_call(snapshot, contexts["_live"])
        row["role_all_live_churn_candidates"] = len(churn().candidates)
        row["role_all_live_churn_us"] = round(time_call(churn, repeat, loops), 2)
        rows.append(row)
    return rows


def churn_call(snapshot: Snapshot, ctx: routing.RoutingContext) -> Any:
    """A decision for the every-service role after one request finished on one service and
    another started on the next, in turn over all of them."""
    view = ctx.runtime
    assert isinstance(view, RuntimeView)
    live, clock = view.live, view.now
    turn = itertools.cycle(snapshot.services)
    running = next(turn)
    live.attempt_started(running, clock)

    def call() -> routing.RouteDecision:
        nonlocal running
        live.attempt_succeeded(running, clock, latency_ms=850.0)
        running = next(turn)
        live.attempt_started(running, clock)
        return routing.resolve(snapshot, SHAPES["role_all"], "chat", ctx)

    return call


def growth(rows: list[dict[str, Any]], shape: str) -> float | None:
    """The worst time ratio per 10x services over consecutive sizes (10 means linear)."""
    ratios = []
    for small, large in itertools.pairwise(rows):
        factor = large["services"] / small["services"]
        ratio = large[f"{shape}_us"] / max(small[f"{shape}_us"], 1e-9)
        ratios.append(ratio ** (1 / math.log10(factor)))
    return round(max(ratios), 2) if ratios else None
