"""The admission queue's cost, in-process, and a burst of ten times the slots, end to end.

Rule: the decision figures time the gateway's own code (geniehive/capacity.py) the way the
relay calls it, in one process with nothing else running; the burst runs real processes
(two bench/upstream.py servers and `geniehive serve`) and checks from outside what a user
would: no upstream ever over its slots, every request answered, none lost.

  idle       a request's whole way through the queue when nothing waits: its place from
             key and headers (`place`), its ticket, the slot counts of its candidates, a
             slot taken on the first one, given back, and the key's unit freed; for 1, 3
             and 50 candidates, with and without a per-key rate limit;
  admit      1,000 requests waiting over 50 full services (each wants 3 of them; 20 keys
             in three priority classes, with weights): one `release()` that admits the best
             waiting request, timed one by one (median and p99); the admitted request at
             once waits again, so every release finds 1,000 waiting;
  burst      10x the hive's slots sent at once, with a queue that holds them all and with
             one too short to (the rest is refused 429 with Retry-After).
"""

from __future__ import annotations

import functools
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from bench import procs
from bench.procs import Proc
from bench.routes import time_call
from geniehive.auth import KeyLimits, Principal
from geniehive.capacity import Admission, KeyRates, Ticket, place, slots_of
from geniehive.exchange import Inbound
from geniehive.models import Observed, Service, ServiceState

CANDIDATES = (1, 3, 50)
WAITING = 1000
SERVICES = 50
PER_TICKET = 3  # services each waiting request may use
KEYS = 20
BURST_SLOTS = 4  # per upstream; two upstreams
BURST_FACTOR = 10
SLOW_MS = 40  # how long the burst's upstream takes per answer


def services(count: int, slots: int | None) -> list[Service]:
    return [
        Service(f"svc-{i:03d}/chat", f"host-{i:03d}", "chat", "openai",
                f"http://10.0.0.{i % 250}:8000", state=ServiceState(health="healthy"),
                observed=Observed(slots_total=slots))
        for i in range(count)
    ]


def idle_call(count: int, rate_limited: bool) -> Any:
    """One request through the queue with nothing waiting, as relay.forward makes it."""
    admission = Admission(clock=time.monotonic)
    rates = KeyRates()
    pool = services(count, 4)
    # A key with limits, as a named key would carry; the rate is far above what one timing
    # loop sends per minute, so it never refuses.
    limits = KeyLimits(max_in_flight=8, requests_per_minute=10**9 if rate_limited else None,
                       priority="normal", weight=2.0)
    principal = Principal("bench-key", frozenset({"inference"}), limits=limits)
    headers = {"x-geniehive-priority": "low"}
    clock = time.monotonic

    def call() -> None:
        inbound = Inbound("chat", "chat", "m")
        place(inbound, principal, headers, open_mode=False, rates=rates, now=clock())
        ticket = Ticket(inbound.key, klass=inbound.priority, weight=inbound.weight,
                        key_limit=inbound.key_limit)
        ids = [s.service_id for s in pool]
        sid = admission.take(ticket, ids, [slots_of(s) for s in pool])
        assert sid is not None
        admission.release(sid)
        admission.finish(ticket)

    return call


def measure_idle(repeat: int, loops: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for count in CANDIDATES:
        for limited in (False, True):
            name = f"{count}{'_rpm' if limited else ''}"
            row[f"idle_{name}_us"] = round(time_call(idle_call(count, limited), repeat, loops), 2)
    return row


async def _admit_one_of_many(releases: int, seed: int) -> dict[str, Any]:
    admission = Admission(max_queue=WAITING * 2, queue_timeout_s=3600, aging_s=30.0,
                          clock=time.monotonic)
    ids = [s.service_id for s in services(SERVICES, 2)]
    slots = [2] * SERVICES
    rng = random.Random(seed)
    for sid in ids:  # every slot taken: whatever comes now waits
        for _ in range(2):
            assert admission.take(Ticket("filler"), [sid], [2]) == sid
    admitted: list[str] = []

    async def waiter(number: int) -> None:
        first = rng.randrange(SERVICES)
        mine = [ids[(first + k) % SERVICES] for k in range(PER_TICKET)]
        key = f"key-{number % KEYS}"
        klass = (0, 1, 1, 2)[number % 4]
        weight = 1.0 + number % 3
        while True:
            ticket = Ticket(key, klass=klass, weight=weight)
            if admission.take(ticket, mine, slots[:PER_TICKET]) is None:
                sid = await admission.wait(ticket, mine, 3600, "bench")
                admitted.append(sid)
            admission.finish(ticket)  # it keeps the slot: the next release frees one again

    times: list[float] = []
    async with trio.open_nursery() as nursery:
        for number in range(WAITING):
            nursery.start_soon(waiter, number)
        await trio.testing.wait_all_tasks_blocked()
        perf = time.perf_counter
        for turn in range(releases):
            assert admission.waiting == WAITING, admission.waiting
            sid = ids[turn % SERVICES]
            started = perf()
            admission.release(sid)
            times.append(perf() - started)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    times.sort()
    return {
        "waiting": WAITING, "services": SERVICES, "keys": KEYS, "releases": len(times),
        "admitted": len(admitted),
        "admit_median_us": round(statistics.median(times) * 1e6, 2),
        "admit_p99_us": round(times[int(len(times) * 0.99) - 1] * 1e6, 2),
        "admit_max_us": round(times[-1] * 1e6, 2),
    }


def measure_admit(releases: int) -> dict[str, Any]:
    return trio.run(functools.partial(_admit_one_of_many, releases, 7))


def measure(repeat: int, loops: int | None, releases: int) -> dict[str, Any]:
    return {**measure_idle(repeat, loops), **measure_admit(releases)}


# -- the burst, with real processes ---------------------------------------------------------
def burst_config(work: Path, port: int, upstream_ports: list[int], max_queue: int) -> str:
    return procs.gateway_config(
        work, port, {f"slow-{i}": p for i, p in enumerate(upstream_ports)}, name="burst",
        timeout_s=30, upstream_extra=f"max_in_flight = {BURST_SLOTS}\n",
        extra=f"\n[capacity]\nmax_queue = {max_queue}\nqueue_timeout_s = 30\n",
    )


async def _burst(gateway: int, upstreams: list[int], count: int) -> dict[str, Any]:
    body = {"model": "bench-slow", "messages": [{"role": "user", "content": "hi"}]}
    base = f"http://127.0.0.1:{gateway}"
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for port in upstreams:  # the counts start from this burst
            (await client.post(f"http://127.0.0.1:{port}/_load/reset")).raise_for_status()
        answers: list[httpx.Response] = []
        failures: list[str] = []

        async def one() -> None:
            try:
                answers.append(await client.post(f"{base}/v1/chat/completions", json=body))
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

        started = time.perf_counter()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
        seconds = time.perf_counter() - started
        loads = [(await client.get(f"http://127.0.0.1:{port}/_load")).json() for port in upstreams]
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    queued = sorted(float(r.headers["x-geniehive-queued-ms"]) for r in ok
                    if "x-geniehive-queued-ms" in r.headers)
    return {
        "sent": count,
        "answered": len(answers),
        "lost": count - len(answers),
        "client_errors": failures[:3],
        "ok": len(ok),
        "refused_429": len(refused),
        "refused_with_retry_after": sum(1 for r in refused if r.headers.get("retry-after")),
        "other_status": sorted({r.status_code for r in answers} - {200, 429}),
        "slots_per_upstream": BURST_SLOTS,
        "max_active": [load["max_active"] for load in loads],
        "upstream_answered": sum(load["answered"] for load in loads),
        "seconds": round(seconds, 3),
        "queued_median_ms": round(statistics.median(queued), 1) if queued else None,
        "queued_max_ms": round(queued[-1], 1) if queued else None,
    }


def measure_burst(out: Path, nofile: tuple[int, int]) -> list[dict[str, Any]]:
    """The burst twice against one gateway per queue size: a queue that holds it all, and
    one that holds a quarter (the rest must be 429 with Retry-After)."""
    gw_cpu, load_cpu = procs.cpu_plan()
    work, logs = out / "work", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    count = BURST_FACTOR * 2 * BURST_SLOTS
    rows = []
    for label, max_queue in (("roomy queue", count * 2), ("short queue", count // 4)):
        started: list[Proc] = []
        try:
            ports = [procs.free_port() for _ in range(2)]
            for index, port in enumerate(ports):
                proc = procs.spawn(
                    f"burst-upstream-{index}",
                    [sys.executable, "-m", "bench.upstream", "--port", str(port),
                     "--slow-ms", str(SLOW_MS)],
                    load_cpu, port, logs,
                )
                started.append(proc)
                procs.wait_port(proc)
            gw_port = procs.free_port()
            config = work / "burst.toml"
            config.write_text(burst_config(work, gw_port, ports, max_queue))
            gateway = procs.spawn(
                "burst-gateway",
                [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
                gw_cpu, gw_port, logs, nofile=nofile,
            )
            started.append(gateway)
            procs.wait_ready(gateway, models=(("bench-slow", False),))
            row = {"queue": label, "max_queue": max_queue,
                   **trio.run(_burst, gw_port, ports, count)}
            row["problems"] = burst_problems(row)
            rows.append(row)
        finally:
            for proc in reversed(started):
                procs.stop(proc)
    return rows


def burst_problems(row: dict[str, Any]) -> list[str]:
    """What went wrong in one burst, as a user would see it (empty: nothing)."""
    problems = []
    if row["lost"] or row["client_errors"]:
        problems.append(f"{row['lost']} request(s) lost: {row['client_errors']}")
    if row["other_status"]:
        problems.append(f"answers other than 200 or 429: {row['other_status']}")
    if row["refused_with_retry_after"] != row["refused_429"]:
        problems.append("a 429 without Retry-After")
    if max(row["max_active"]) > row["slots_per_upstream"]:
        problems.append(f"an upstream ran {max(row['max_active'])} at once")
    if row["upstream_answered"] != row["ok"]:
        problems.append(f"upstreams answered {row['upstream_answered']}, clients got "
                        f"{row['ok']} 200s")
    return problems
