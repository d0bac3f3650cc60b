"""What placement adds to a route decision at 1,000 services: warm, busy, cold, full hosts.

Rule: in-process and pure, like bench/routes.py (whose `time_call` it uses): a synthetic
`Snapshot` of 100 hosts x 10 chat services, every one of them serving the model `on-demand`
(so a decision for that name has 1,000 candidates, one placement each), with host GPU memory
in `Host.metrics`, assets with sizes, loaded or not, and runtimes whose `ModelsLive` says
which models are busy and how long a load took. Per host kind (host index mod 4):

  roomy    24 GiB, 4 GiB used: an unloaded model fits (cold_fits);
  crowded  24 GiB, 22 GiB used by an 8 GiB idle model of the service: it must go first
           (cold_evicts);
  capped   roomy, but `max_loaded_models = 1` and one other model loaded (cold_evicts);
  small    2 GiB of GPU memory for a 4 GiB model (does_not_fit: excluded from the decision).

Services 0-2 of each host have the model loaded; service 2 has every slot taken (warm_busy),
so 30 % of the services are warm. Timed, median µs per decision:

  mixed        `routing.resolve` for the model over that mix, the runtimes unchanged between
               decisions (the candidates are reused);
  warm         the same snapshot with every asset's `loaded` None (the gateway cannot tell:
               placement is warm, busy services still warm_busy);
  *_churn      one service's runtime replaced between decisions (as a request starting or
               finishing does), so its candidate and placement are rebuilt and the pool
               re-sorted.

And `place()` alone, median ns per call over the 1,000 candidates, overall and per class.
`check(row)` is the bench's own sanity check: every class occurred.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
import sys
import time
import timeit
from collections import Counter
from typing import Any

from bench.routes import time_call
from geniehive import routing
from geniehive.models import (
    Asset,
    Host,
    ModelsLive,
    Observed,
    Service,
    ServiceRuntime,
    ServiceState,
    Snapshot,
)
from geniehive.routing.placement import DOES_NOT_FIT, RANKS, place

MODEL = "on-demand"
HOSTS = 100
SERVICES_PER_HOST = 10
GIB = 2**30
KINDS = ("roomy", "crowded", "capped", "small")
MEMORY = {  # host kind -> (vram_total_bytes, vram_used_bytes)
    "roomy": (24 * GIB, 4 * GIB),
    "crowded": (24 * GIB, 22 * GIB),
    "capped": (24 * GIB, 4 * GIB),
    "small": (2 * GIB, 0),
}
SLOTS = 2
CLASSES = tuple(RANKS)
VARIANTS = ("mixed", "warm")
COLUMNS = (*VARIANTS, *(f"{v}_churn" for v in VARIANTS))


def host_kind(host_index: int) -> str:
    return KINDS[host_index % len(KINDS)]


def build_snapshot(hosts: int, now: float, *, known: bool = True) -> Snapshot:
    """`hosts` hosts x 10 chat services, each serving MODEL (see the module docstring);
    `known` False: every asset's loaded state is None, as from an engine that does not say."""
    host_map: dict[str, Host] = {}
    services: dict[str, Service] = {}
    for h in range(hosts):
        kind = host_kind(h)
        total, used = MEMORY[kind]
        host_id = f"host-{h:03d}"
        host_map[host_id] = Host(host_id, f"10.1.{h // 250}.{h % 250}", last_heartbeat=now,
                                 metrics={"vram_total_bytes": total, "vram_used_bytes": used})
        for s in range(SERVICES_PER_HOST):
            index = h * SERVICES_PER_HOST + s
            warm = s < 3
            own = Asset(f"own-{index:04d}", loaded=True if known else None, size_bytes=8 * GIB,
                        vram_bytes=8 * GIB, context_length=8192)
            shared = Asset(MODEL, loaded=bool(warm) if known else None,
                           size_bytes=4 * GIB, context_length=8192)
            assets = (shared, own) if kind in ("crowded", "capped") or warm else (shared,)
            service_id = f"svc-{index:04d}/chat"
            services[service_id] = Service(
                service_id, host_id, "chat", "openai", f"http://10.1.0.{h % 250}:{8000 + s}",
                assets=assets, state=ServiceState(health="healthy"),
                observed=Observed(slots_total=SLOTS, p50_latency_ms=900.0, tokens_per_sec=35.0,
                                  max_loaded_models=1 if kind == "capped" else None),
            )
    return Snapshot(version=1, hosts=host_map, services=services, roles={})


def runtimes(snapshot: Snapshot) -> dict[str, ServiceRuntime]:
    """Gateway measurements per service: service 2 of each host full, the others with one
    request; the own model busy on odd services; a measured load time on every third."""
    found = {}
    for index, service_id in enumerate(snapshot.services):
        s = index % SERVICES_PER_HOST
        own = f"own-{index:04d}"
        models = ModelsLive(
            busy=frozenset({own}) if index % 2 else frozenset(),
            last_used={own: 1000.0 + index},
            load_ms={MODEL: 1500.0 + index % 7} if index % 3 == 0 else {},
        )
        found[service_id] = ServiceRuntime(
            probe="healthy", in_flight=SLOTS if s == 2 else 1, samples=20,
            p50_latency_ms=850.0, tokens_per_sec=40.0, models=models)
    return found


def place_calls(snapshot: Snapshot, runtime: dict[str, ServiceRuntime]
                ) -> list[tuple[Any, ...]]:
    """The arguments of `place` for every service, as a decision builds them."""
    calls = []
    for service in snapshot.services.values():
        rt = runtime[service.service_id]
        asset = next(a for a in service.assets if a.asset_id == MODEL)
        full = rt.in_flight >= SLOTS
        calls.append((service, asset, rt, snapshot.hosts[service.host_id], full,
                      rt.p50_latency_ms))
    return calls


def classes_of(decision: routing.RouteDecision) -> Counter[str]:
    """The placement classes of a decision: its candidates' and its does_not_fit exclusions."""
    found = Counter(c.placement.klass for c in decision.candidates)
    found[DOES_NOT_FIT] += sum(1 for e in decision.excluded if e.gate == DOES_NOT_FIT)
    return found


def churn_call(snapshot: Snapshot, ctx: routing.RoutingContext,
               runtime: dict[str, ServiceRuntime]) -> Any:
    """A decision after one service's runtime was replaced by a new, equal one, in turn
    over all of them: its candidate is rebuilt (placement included) and the pool re-sorted."""
    turn = itertools.cycle(list(runtime))

    def call() -> routing.RouteDecision:
        sid = next(turn)
        runtime[sid] = dataclasses.replace(runtime[sid])
        return routing.resolve(snapshot, MODEL, "chat", ctx)

    return call


def time_place(calls: list[tuple[Any, ...]], repeat: int) -> dict[str, float]:
    """Median ns per `place` call over all of `calls`, and over each class's calls."""
    groups: dict[str, list[tuple[Any, ...]]] = {"all": calls}
    for args in calls:
        groups.setdefault(place(*args).klass, []).append(args)
    found = {}
    for name, group in groups.items():
        def run(group: list[tuple[Any, ...]] = group) -> None:
            for args in group:
                place(*args)
        loops = max(1, 2000 // len(group))
        per_call = statistics.median(timeit.repeat(run, repeat=repeat, number=loops))
        found[name] = round(per_call / (loops * len(group)) * 1e9, 1)
    return found


def measure(hosts: int = HOSTS, repeat: int = 5, loops: int | None = None) -> dict[str, Any]:
    now = time.time()
    row: dict[str, Any] = {"hosts": hosts, "services": hosts * SERVICES_PER_HOST}
    for variant in VARIANTS:
        snapshot = build_snapshot(hosts, now, known=variant == "mixed")
        runtime = runtimes(snapshot)
        ctx = routing.RoutingContext(now=now, runtime=runtime)
        decision = routing.resolve(snapshot, MODEL, "chat", ctx)
        found = classes_of(decision)
        if variant == "mixed":
            assert Counter(place(*args).klass for args in place_calls(snapshot, runtime)) \
                == found, "a decision's placements differ from place() on the same inputs"
            row["place_ns"] = time_place(place_calls(snapshot, runtime), repeat)
        row[f"{variant}_candidates"] = len(decision.candidates)
        row[f"{variant}_classes"] = {k: found.get(k, 0) for k in CLASSES}
        call = functools.partial(routing.resolve, snapshot, MODEL, "chat", ctx)
        row[f"{variant}_us"] = round(time_call(call, repeat, loops), 2)
        row[f"{variant}_churn_us"] = round(
            time_call(churn_call(snapshot, ctx, runtime), repeat, loops), 2)
    for column in ("", "_churn"):
        row[f"added{column}_us"] = round(row[f"mixed{column}_us"] - row[f"warm{column}_us"], 2)
        row[f"ratio{column}"] = round(row[f"mixed{column}_us"] / max(row[f"warm{column}_us"],
                                                                      1e-9), 2)
    problems = check(row)
    if problems:
        raise RuntimeError("placement bench: " + "; ".join(problems))
    return row


def check(row: dict[str, Any]) -> list[str]:
    """What is wrong with a measured row (empty: nothing): every placement class must occur
    in the mixed snapshot, and only warm ones in the all-unknown one."""
    problems = [f"no {k} candidate in the mixed snapshot" for k in CLASSES
                if not row["mixed_classes"].get(k)]
    cold = {k: n for k, n in row["warm_classes"].items()
            if n and k not in ("warm_free", "warm_busy")}
    if cold:
        problems.append(f"the all-unknown snapshot has cold or unfit candidates: {cold}")
    return problems


if __name__ == "__main__":
    import json

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else HOSTS), indent=2))
