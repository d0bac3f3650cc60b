"""Heartbeats of many nodes: what a hive of N hosts costs the gateway while they only report.

Rule: one real `geniehive serve` (pinned to the gateway CPU, its node port on 127.0.0.1, a
node key with the `node` scope, probes and discovery every hour so that nothing but the nodes'
reports runs) and one trio simulator in this process (on the load CPU) playing N node agents.
Each simulated node registers once, then heartbeats every INTERVAL_S (the agent's default
`heartbeat.interval_s`), the nodes' beats spread evenly over the period. The bodies are what
geniehive/node/agent.py sends, rendered by geniehive/nodewire.py: two services (a llama.cpp
chat server and an embeddings server, one asset each) and, in the metrics, one GPU whose
memory used and utilisation change a little on every beat. The agent sends its services on
every heartbeat; they change only when a discovery sees a change, so here each node's chat
load (slots busy) flips once every CHANGE_EVERY beats (once a minute), staggered over the
nodes, and is sent unchanged otherwise.

Connections: the agent's httpx client keeps its connection to the control plane past two
heartbeat intervals (geniehive/node/agent.py, `keepalive_expiry`), so a real agent sends
every heartbeat on one connection. The simulator does the same by default (one connection
per node, opened again if it broke); without `keep_alive` it opens one for each heartbeat
(connect, POST, read the whole answer, close), as agents did when httpx's 5 s default expired
the connection between two beats. The requests go through bench/streams.py's lean h11 client.

Measured per window of `window_s`: the gateway's CPU from /proc/<pid>/stat (utime + stime
over wall time) as % of one core, and per 100 nodes; the shares of the gateway's CPU taken by
interrupts, other processes and steal; the gateway's RSS; the heartbeat latency (client side,
from the connect or send to the whole answer) p50/p99/max; errors; how late the simulator
sent its beats (its lag behind the schedule), and the simulator's own CPU (getrusage of this
process), so that a reader can tell which side limits the rate. Flat: the last window's p99
and CPU at most FLAT_P99 and FLAT_CPU times the first window's.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import procs
from bench.procs import Proc
from bench.streams import CONNECT_ERRORS, Client, StreamError
from geniehive.models import Asset, Host, Observed, Service, ServiceState
from geniehive.node import gpu
from geniehive.nodewire import render_register, render_service

INTERVAL_S = 5.0  # the node agent's default heartbeat.interval_s
CHANGE_EVERY = 12  # beats between two changes of a node's services (once a minute)
KEY_ENV = "GENIEHIVE_BENCH_NODE_KEY"
DEFAULT_URL_ENV = "GENIEHIVE_BENCH_REGISTRY_URL"  # --hb-postgres without --hb-registry-url-env
REGISTER_CONCURRENCY = 32
EXCHANGE_TIMEOUT_S = 10.0
FIRST_PORT = 20000  # node i's services claim ports FIRST_PORT + 2i and + 2i + 1 (never opened)
MAX_NODES = (65535 - FIRST_PORT) // 2
TARGET_CPU_PER_100 = 5.0  # % of one core per 100 nodes (docs/performance.md)
FLAT_P99 = 1.5
FLAT_CPU = 1.25
MIB = 1024 * 1024
GIB = 1024 * MIB
REGISTER_PATH, HEARTBEAT_PATH = "/v1/nodes/register", "/v1/nodes/heartbeat"


@dataclass(frozen=True)
class Settings:
    nodes: int = 1000
    duration_s: float = 600.0
    window_s: float = 60.0
    registry_url_env: str | None = None  # the gateway's [registry] url_env instead of SQLite
    postgres: bool = False  # start a throwaway PostgreSQL (tests/pgserver.py) for url_env
    keep_alive: bool = True  # one connection per node (the agent's), else one per heartbeat

    def backend(self) -> str:
        if self.postgres:
            return "postgresql (throwaway, tests/pgserver.py)"
        return f"postgresql (url_env {self.registry_url_env})" if self.registry_url_env \
            else "sqlite"


# -- what a node sends (pure) -------------------------------------------------------------------


def host_id(index: int) -> str:
    return f"sim-{index:05d}"


def node_services(index: int, busy: int) -> list[Service]:
    """Node `index`'s two services, as the agent reports them; `busy` chat slots in use."""
    hid = host_id(index)
    port = FIRST_PORT + 2 * index
    chat = Asset(asset_id="qwen2.5-7b-instruct-q4_k_m", loaded=True, context_length=8192,
                 family="qwen2", size_bytes=4_683_073_504, vram_bytes=5_400_000_000,
                 capabilities=frozenset({"tools"}))
    embed = Asset(asset_id="nomic-embed-text-v1.5", loaded=True, context_length=2048,
                  family="nomic-bert", size_bytes=274_290_560, vram_bytes=600_000_000)
    return [
        Service(service_id=f"{hid}-llm/chat", host_id=hid, operation="chat", adapter="llamacpp",
                base_url=f"http://127.0.0.1:{port}", assets=(chat,),
                state=ServiceState(health="healthy"),
                observed=Observed(slots_total=4, slots_busy=busy, in_flight=busy, queue_depth=0,
                                  loaded_model_count=1)),
        Service(service_id=f"{hid}-embed/embeddings", host_id=hid, operation="embeddings",
                adapter="llamacpp", base_url=f"http://127.0.0.1:{port + 1}", assets=(embed,),
                state=ServiceState(health="healthy"),
                observed=Observed(slots_total=8, slots_busy=0, in_flight=0, queue_depth=0,
                                  loaded_model_count=1)),
    ]


def gpus(index: int, beat: int) -> list[dict[str, Any]]:
    """One 24 GiB GPU whose memory used and utilisation move a little on every beat."""
    return [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_bytes": 24 * GIB,
             "memory_used_bytes": 6 * GIB + (index % 512) * MIB + ((beat * 37 + index) % 64) * MIB,
             "utilization_pct": float((beat * 13 + index) % 100)}]


def register_payload(index: int) -> dict[str, Any]:
    """The register body of node `index` (geniehive/node/agent.py `host()` and services)."""
    found = gpus(index, 0)
    resources = {**{k: v for k, v in gpu.summarize(found).items()
                    if k not in ("vram_used_bytes", "gpu_utilization_pct")},
                 "gpus": [{k: g[k] for k in ("index", "name", "memory_total_bytes")}
                          for g in found]}
    capabilities = {"discovered_models": [], "adapters": ["llamacpp"],
                    "operations": ["chat", "embeddings"]}
    host = Host(host_id=host_id(index), address="127.0.0.1", display_name=f"sim node {index}",
                labels={"site": "bench", "rack": f"r{index % 20}"},
                capabilities=capabilities, resources=resources)
    return render_register(host, node_services(index, 0))


def services_busy(index: int, beat: int) -> int:
    """The chat slots busy at `beat`: 0 or 1, flipping every CHANGE_EVERY beats (staggered)."""
    return ((beat + index) // CHANGE_EVERY) % 2


@dataclass
class SimNode:
    """One simulated node: its id, and its two services' JSON, rendered once per variant."""

    index: int
    offset_s: float  # where in the period its beats fall
    services_json: tuple[str, str] = ("", "")
    client: Client | None = None  # keep-alive mode only

    @classmethod
    def make(cls, index: int, nodes: int) -> SimNode:
        rendered = tuple(json.dumps([render_service(s) for s in node_services(index, busy)])
                         for busy in (0, 1))
        return cls(index, INTERVAL_S * index / nodes, (rendered[0], rendered[1]))

    def heartbeat_body(self, beat: int) -> bytes:
        """The heartbeat body at `beat`: what `render_heartbeat` gives, encoded as the agent's
        httpx does (json.dumps); the unchanged services are encoded once, not per beat."""
        found = gpus(self.index, beat)
        metrics = json.dumps({**gpu.summarize(found), "gpus": found})
        services = self.services_json[services_busy(self.index, beat)]
        return (f'{{"host_id": "{host_id(self.index)}", "metrics": {metrics}, '
                f'"services": {services}}}').encode()


# -- measures (pure) ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0-100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(last: float | None, first: float | None) -> float | None:
    if last is None or first is None or first <= 0:
        return None
    return round(last / first, 3)


def summarize(windows: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """Flatness (last window / first) and the target: CPU per 100 nodes ≤ TARGET_CPU_PER_100
    in every window, and p99 and CPU flat. With one window flatness is not judged (None); a
    first or last window where no beat was answered is not flat."""
    if not windows:
        return {"windows": 0, "flat": None, "target_met": None}
    first, last = windows[0], windows[-1]
    two = len(windows) > 1
    p99_ratio = ratio(last["p99_ms"], first["p99_ms"]) if two else None
    cpu_ratio = ratio(last["gateway_cpu_pct"], first["gateway_cpu_pct"]) if two else None
    if not two:
        flat = None
    elif first["p99_ms"] is None or last["p99_ms"] is None or cpu_ratio is None:
        flat = False
    else:
        flat = p99_ratio is not None and p99_ratio <= FLAT_P99 and cpu_ratio <= FLAT_CPU
    worst = max(w["cpu_per_100_nodes_pct"] for w in windows)
    errors = sum(w["errors"] + w["skipped"] for w in windows)
    return {
        "windows": len(windows), "nodes": nodes,
        "cpu_per_100_nodes_worst_pct": worst,
        "p99_ratio": p99_ratio, "cpu_ratio": cpu_ratio, "flat": flat,
        "errors": errors,  # failed and skipped beats
        "target_met": None if flat is None else flat and worst <= TARGET_CPU_PER_100,
        "simulator_cpu_worst_pct": max(w["simulator_cpu_pct"] for w in windows),
        "lag_worst_ms": max(w["lag_max_ms"] for w in windows),
    }


@dataclass
class Tally:
    """What the node tasks report between two window boundaries."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    skipped: int = 0  # beats not sent: the node's previous one was still waiting
    lag_max_ms: float = 0.0
    connects: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.errors += 1
        self.problems[text] = self.problems.get(text, 0) + 1


def window_row(number: int, start_s: float, tally: Tally, gw: tuple[Any, Any],
               sim: tuple[float, float], rss_mib: float, nodes: int) -> dict[str, Any]:
    """One window's figures: `gw` the gateway's cpu_sample before and after, `sim` this
    process's CPU seconds before and after."""
    before, after = gw
    wall = max(after[0] - before[0], 1e-9)
    gateway_pct = 100 * (after[1] - before[1]) / procs.CLOCK_TICKS / wall
    shares = procs.cpu_shares(before, after)
    lat = tally.latencies_ms
    return {
        "window": number, "start_s": round(start_s, 1), "seconds": round(wall, 2),
        "beats": len(lat), "errors": tally.errors, "skipped": tally.skipped,
        "connects": tally.connects,
        "beats_per_s": round(len(lat) / wall, 1),
        "gateway_cpu_pct": round(gateway_pct, 2),
        "cpu_ms_per_beat": _round(10 * gateway_pct * wall / len(lat)) if lat else None,
        "cpu_per_100_nodes_pct": round(gateway_pct / (nodes / 100), 3),
        "irq_cpu_pct": shares["irq_cpu_pct"], "others_cpu_pct": shares["others_cpu_pct"],
        "steal_cpu_pct": shares["steal_cpu_pct"],
        "simulator_cpu_pct": round(100 * (sim[1] - sim[0]) / wall, 2),
        "p50_ms": _round(percentile(lat, 50)), "p99_ms": _round(percentile(lat, 99)),
        "max_ms": _round(max(lat) if lat else None),
        "lag_max_ms": round(tally.lag_max_ms, 2), "rss_mib": rss_mib,
        "problems": dict(tally.problems),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the simulator ------------------------------------------------------------------------------


class Exchange:
    """POSTs to the node port with the node key; one connection each, or kept per node."""

    def __init__(self, port: int, key: str, keep_alive: bool) -> None:
        self.port = port
        self.headers = (("x-geniehive-node-key", key),)
        self.keep_alive = keep_alive

    async def post(self, node: SimNode, path: str, body: bytes, tally: Tally) -> tuple[int, bytes]:
        """(status, answer body); raises StreamError or a connection error."""
        client = node.client if self.keep_alive else None
        if client is None:
            client = await Client.connect(self.port)
            tally.connects += 1
        try:
            status = await client.send_post(body, path, self.headers)
            answer = b"".join([chunk async for chunk in client.body_chunks()])
        except BaseException:
            node.client = None
            await client.aclose()
            raise
        if self.keep_alive:
            node.client = client
        else:
            await client.aclose()
        return status, answer


async def register_all(exchange: Exchange, nodes: list[SimNode]) -> dict[str, Any]:
    """Register every node, REGISTER_CONCURRENCY at once. Raises RuntimeError on a refusal."""
    limit = trio.CapacityLimiter(REGISTER_CONCURRENCY)
    tally = Tally()
    failures: list[str] = []
    started = time.perf_counter()

    async def one(node: SimNode) -> None:
        async with limit:
            body = json.dumps(register_payload(node.index)).encode()
            began = time.perf_counter()
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                status, answer = await exchange.post(node, REGISTER_PATH, body, tally)
            if status != 200:
                failures.append(f"{host_id(node.index)}: HTTP {status} {answer[:300]!r}")
            tally.latencies_ms.append((time.perf_counter() - began) * 1000)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    if failures:
        raise RuntimeError(f"{len(failures)} registrations refused; first: {failures[0]}")
    lat = tally.latencies_ms
    return {"nodes": len(nodes), "seconds": round(time.perf_counter() - started, 2),
            "p50_ms": _round(percentile(lat, 50)), "p99_ms": _round(percentile(lat, 99))}


async def beat_forever(exchange: Exchange, node: SimNode, t0: float, stop_at: float,
                       tallies: list[Tally]) -> None:
    """Node `node`'s heartbeats on schedule from `t0` until `stop_at` (trio clock); each
    result goes into the current window's tally (`tallies[-1]`)."""
    beat = 0
    while (due := t0 + node.offset_s + beat * INTERVAL_S) < stop_at:
        await trio.sleep_until(due)
        tally = tallies[-1]
        late_s = trio.current_time() - due
        if late_s >= INTERVAL_S:  # the previous beat overran whole periods: skip them
            missed = int(late_s // INTERVAL_S)
            tally.skipped += missed
            beat += missed
            continue
        tally.lag_max_ms = max(tally.lag_max_ms, late_s * 1000)
        body = node.heartbeat_body(beat)
        began = time.perf_counter()
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                status, answer = await exchange.post(node, HEARTBEAT_PATH, body, tally)
        except trio.TooSlowError:
            tallies[-1].problem("timeout")
        except (StreamError, *CONNECT_ERRORS) as exc:
            tallies[-1].problem(f"{type(exc).__name__}: {exc}"[:200])
        else:
            if status == 200:
                tallies[-1].latencies_ms.append((time.perf_counter() - began) * 1000)
            else:
                tallies[-1].problem(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
        beat += 1


async def simulate(gateway: Proc, node_port: int, key: str, settings: Settings,
                   gw_cpu: int) -> dict[str, Any]:
    """Register every node, then heartbeat for `duration_s`, one row per window."""
    exchange = Exchange(node_port, key, settings.keep_alive)
    nodes = [SimNode.make(i, settings.nodes) for i in range(settings.nodes)]
    registered = await register_all(exchange, nodes)
    print(f"  {settings.nodes} nodes registered in {registered['seconds']} s; heartbeating "
          f"for {settings.duration_s:g} s", file=sys.stderr)
    count = max(1, round(settings.duration_s / settings.window_s))
    window_s = settings.duration_s / count
    tallies = [Tally()]
    windows: list[dict[str, Any]] = []
    t0 = trio.current_time() + 0.2
    stop_at = t0 + count * window_s

    async def monitor() -> None:
        await trio.sleep_until(t0)
        gw_before, sim_before = procs.cpu_sample(gateway.pid, gw_cpu), own_cpu_s()
        tallies.append(Tally())
        for number in range(count):
            await trio.sleep_until(t0 + (number + 1) * window_s)
            gw_after, sim_after = procs.cpu_sample(gateway.pid, gw_cpu), own_cpu_s()
            tally = tallies[-1]
            tallies.append(Tally())
            rss = round(procs.rss_kib(gateway.pid)["VmRSS"] / 1024, 1)
            row = window_row(number + 1, number * window_s, tally, (gw_before, gw_after),
                             (sim_before, sim_after), rss, settings.nodes)
            windows.append(row)
            print(f"  window {row['window']}: {row['beats']} beats, gateway "
                  f"{row['gateway_cpu_pct']} % CPU ({row['cpu_per_100_nodes_pct']} % per 100 "
                  f"nodes), p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, errors "
                  f"{row['errors']}, simulator {row['simulator_cpu_pct']} %", file=sys.stderr)
            gw_before, sim_before = gw_after, sim_after

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        for node in nodes:
            nursery.start_soon(beat_forever, exchange, node, t0, stop_at, tallies)
    for node in nodes:
        if node.client is not None:
            await node.client.aclose()
    return {"register": registered, "windows": windows,
            "summary": summarize(windows, settings.nodes)}


# -- the gateway and its registry ---------------------------------------------------------------


def gateway_toml(work: Path, port: int, node_port: int, url_env: str | None) -> str:
    """The control file: no upstream of its own, a node port, one node key, probes and
    discovery hourly; the registry a SQLite file or the PostgreSQL URL in `url_env`."""
    registry = f'url_env = "{url_env}"' if url_env else None
    extra = (f'\n[nodes]\nbind = ["127.0.0.1:{node_port}"]\n\n'
             f'[[auth.keys]]\nname = "bench-nodes"\nkey_env = "{KEY_ENV}"\nscopes = ["node"]\n')
    return procs.gateway_config(work, port, {}, name="heartbeats", extra=extra,
                                registry=registry, quiet_s=3600)


@asynccontextmanager
async def registry_env(settings: Settings) -> AsyncIterator[dict[str, str]]:
    """The environment variables the gateway needs for its registry (a throwaway PostgreSQL
    server with --hb-postgres, stopped afterwards). Raises RuntimeError when url_env is unset."""
    if not settings.postgres:
        name = settings.registry_url_env
        if name and not os.environ.get(name):
            raise RuntimeError(f"--hb-registry-url-env {name}: the variable is not set")
        yield {}
        return
    from tests.pgserver import postgres_server  # only here: the bench needs no PostgreSQL

    folder = Path(tempfile.mkdtemp(prefix="geniehive-hb-pg-"))
    try:
        async with postgres_server(folder) as pg:
            yield {settings.registry_url_env or DEFAULT_URL_ENV: pg.url}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _measure(out: Path, settings: Settings, nofile: tuple[int, int] | None,
                   cpus: tuple[int, int]) -> dict[str, Any]:
    gw_cpu, _ = cpus
    work, logs = out / "work", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    fresh_registry(work / "state" / "heartbeats.sqlite3")
    async with registry_env(settings) as extra_env:
        url_env = next(iter(extra_env), None) or settings.registry_url_env
        port, node_port = procs.free_port(), procs.free_port()
        config = work / "heartbeats.toml"
        config.write_text(gateway_toml(work, port, node_port, url_env))
        key = secrets.token_urlsafe(24)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{KEY_ENV: key}, **extra_env)
        gateway = procs.spawn("heartbeats-gateway", [sys.executable, "-m", "geniehive", "serve",
                                                     "--config", str(config)],
                              gw_cpu, port, logs, env=env, nofile=nofile)
        try:
            procs.wait_ready(gateway, models=())
            procs.wait_port(procs.Proc(gateway.name, gateway.popen, node_port, gateway.log))
            result = await simulate(gateway, node_port, key, settings, gw_cpu)
        finally:
            procs.stop(gateway)
        text = gateway.log.read_text(errors="replace")
        result["gateway_log_problems"] = sum(
            1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)
    return result


def fresh_registry(path: Path) -> None:
    """Remove the SQLite registry an earlier run left, so every run starts with no host."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def measure(out: Path, settings: Settings, cpus: tuple[int, int],
            nofile: tuple[int, int] | None = None) -> dict[str, Any]:
    """The phase: the gateway pinned to `cpus[0]`, the simulator (this process, which the
    caller has pinned) on `cpus[1]`."""
    if not 1 <= settings.nodes <= MAX_NODES:
        raise RuntimeError(f"--hb-nodes must be 1 to {MAX_NODES}")
    result: dict[str, Any] = {
        "nodes": settings.nodes, "duration_s": settings.duration_s,
        "window_s": settings.window_s, "interval_s": INTERVAL_S,
        "change_every": CHANGE_EVERY, "backend": settings.backend(),
        "connections": "kept per node" if settings.keep_alive else "one per heartbeat",
        "cpus": {"gateway": cpus[0], "simulator": cpus[1]},
    }
    print(f"heartbeats of {settings.nodes} nodes for {settings.duration_s:g} s "
          f"({result['backend']})", file=sys.stderr)
    result.update(trio.run(_measure, out, settings, nofile, cpus))
    return result


# -- the report ---------------------------------------------------------------------------------


COLUMNS = (("window", "window"), ("start s", "start_s"), ("beats", "beats"),
           ("beats/s", "beats_per_s"), ("errors", "errors"),
           ("skipped", "skipped"), ("gateway CPU %", "gateway_cpu_pct"),
           ("per 100 nodes %", "cpu_per_100_nodes_pct"), ("CPU ms per beat", "cpu_ms_per_beat"),
           ("irq %", "irq_cpu_pct"), ("others %", "others_cpu_pct"), ("steal %", "steal_cpu_pct"),
           ("simulator CPU %", "simulator_cpu_pct"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
           ("max ms", "max_ms"), ("lag ms", "lag_max_ms"), ("RSS MiB", "rss_mib"))


def section(result: dict[str, Any] | None) -> list[str]:
    """The report's part: the setup, one table row per window, the verdict."""
    if not result:
        return []
    summary = result.get("summary") or {}
    reg = result.get("register") or {}
    out = [f"## Heartbeats of {result['nodes']:,} nodes (bench/heartbeats.py)", "",
           f"Registry: {result['backend']}. Each node registered once "
           f"({reg.get('nodes', 0):,} in {_fmt(reg.get('seconds'))} s, p50 "
           f"{_fmt(reg.get('p50_ms'))} ms, p99 {_fmt(reg.get('p99_ms'))} ms), then heartbeats "
           f"every {result['interval_s']:g} s, spread evenly over the period: two services "
           "(chat, embeddings; one asset each), GPU memory changing on every beat, the "
           f"services changing once every {result['change_every']} beats and sent unchanged "
           f"otherwise; connections: {result['connections']}. Gateway on CPU "
           f"{result['cpus']['gateway']}, the simulator on CPU {result['cpus']['simulator']}. "
           "CPU: % of one core; *per 100*: gateway CPU per 100 nodes; *CPU ms per beat*: the "
           "gateway's CPU time over the beats answered; *lag*: how late the "
           "simulator sent a beat (its own limit); latency: connect or send to the whole "
           "answer.", "",
           "| " + " | ".join(head for head, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for w in result.get("windows", []):
        out.append("| " + " | ".join(_fmt(w[key]) for _, key in COLUMNS) + " |")
    out.append("")
    verdict = {True: "holds", False: "MISSED", None: "not judged (one window)"}
    out += [f"Last window / first: p99 {_times(summary.get('p99_ratio'))}, gateway CPU "
            f"{_times(summary.get('cpu_ratio'))} (flat: ≤ {FLAT_P99:g}x and ≤ {FLAT_CPU:g}x); "
            f"worst CPU per 100 nodes {_fmt(summary.get('cpu_per_100_nodes_worst_pct'))} % "
            f"of a core (target ≤ {TARGET_CPU_PER_100:g} %). Target: "
            f"{verdict[summary.get('target_met')]}.", ""]
    problems: dict[str, int] = {}
    for w in result.get("windows", []):
        for text, count in w.get("problems", {}).items():
            problems[text] = problems.get(text, 0) + count
    if problems:
        out += ["Errors: " + "; ".join(f"{text} ({count}x)" for text, count in
                                       sorted(problems.items(), key=lambda kv: -kv[1])[:5]), ""]
    if result.get("gateway_log_problems"):
        out += [f"**Warning:** the gateway logged {result['gateway_log_problems']} error "
                "line(s); see logs/heartbeats-gateway.log.", ""]
    return out


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
