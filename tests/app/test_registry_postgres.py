"""The registry on a real PostgreSQL server (tests/pgserver.py starts one per test): the same
state as on SQLite, migrations once for replicas starting together, a write by one replica in
every other's snapshot within a second, one leader at a time, and a database that goes away
refusing writes while the last snapshot keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from geniehive.config import RegistryConfig
from geniehive.errors import RegistryUnavailable
from geniehive.models import Asset, BenchmarkSample, Host, Observed, Service, ServiceState
from geniehive.registry import SCHEMA_VERSION, Registry, StoredKey, open_registry
from geniehive.registry_follow import Leadership, run_follower
from tests.pgserver import PostgresServer, postgres_server

RECENT = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
OLD = (datetime.now(UTC) - timedelta(days=45)).strftime("%Y-%m-%dT%H:%M:%SZ")
KEY = StoredKey(key_id="k1", name="app", salt="00", hash="ab", scopes=("inference",))


def host(host_id: str, beat: float = 100.0) -> Host:
    return Host(host_id=host_id, address="127.0.0.1", last_heartbeat=beat, registered_at=beat,
                labels={"zone": "a"}, metrics={"gpu_mem_used": 1})


def service(host_id: str, name: str, **changes: Any) -> Service:
    return Service(service_id=f"{name}/chat", host_id=host_id, operation="chat",
                   adapter="ollama", base_url="http://127.0.0.1:11434", upstream_id=name,
                   **changes)


def sample(benchmark_id: str, observed_at: str) -> BenchmarkSample:
    return BenchmarkSample(benchmark_id=benchmark_id, service_id="gpu1/chat", asset_id="m",
                           workload="chat.short", observed_at=observed_at,
                           results={"pass_rate": 1.0})


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[PostgresServer]:
    with trio.fail_after(60):
        async with postgres_server(tmp_path) as server:
            yield server


@asynccontextmanager
async def replica(url: str, origin: str) -> AsyncIterator[Registry]:
    async with open_registry(RegistryConfig(Path("unused"), url=url), origin=origin) as r:
        yield r


@asynccontextmanager
async def following(url: str, origin: str) -> AsyncIterator[tuple[Registry, Leadership]]:
    """A registry with its follower running, as `geniehive serve` has it."""
    async with replica(url, origin) as registry, trio.open_nursery() as nursery:
        leadership = Leadership(held=False)
        await nursery.start(run_follower, registry, leadership)
        yield registry, leadership
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Any) -> None:
    # Another process's commit announces itself to the follower, not to the test: poll.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_the_whole_state_survives_close_and_reopen(pg: PostgresServer) -> None:
    chat = service("gpu1", "gpu1", assets=(Asset(asset_id="qwen3:8b", loaded=True),),
                   state=ServiceState(health="healthy"), observed=Observed(queue_depth=2),
                   keep_alive="30m", dialect="openai", managed="running", api_key="secret")
    with trio.fail_after(20):
        async with replica(pg.url, "a") as registry:
            await registry.register_host(host("gpu1"), [chat])
            await registry.upsert_samples([sample("b1", RECENT)])
            await registry.put_api_key(KEY)
            before = registry.snapshot
        async with replica(pg.url, "b") as registry:
            after = registry.snapshot
            assert await registry.list_api_keys() == [KEY]
    assert after.hosts == before.hosts
    assert after.services == {"gpu1/chat": replace(chat, api_key=None)}  # never stored
    assert after.benchmarks == (sample("b1", RECENT),)
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT version FROM geniehive_schema").fetchall() == [
            (SCHEMA_VERSION,)]
        # Timestamps keep their precision (SQLite's REAL is 8 bytes; so is what it became).
        assert conn.execute("SELECT last_heartbeat FROM hosts").fetchone() == (100.0,)


async def test_replicas_starting_together_migrate_once(pg: PostgresServer) -> None:
    url = await pg.create_database("together")
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            opened: list[Registry] = []

            async def open_one(name: str) -> None:
                opened.append(await stack.enter_async_context(replica(url, name)))

            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(open_one, name)
            assert len(opened) == 3
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM geniehive_schema").fetchall() == [
            (SCHEMA_VERSION,)]


async def test_a_write_on_one_replica_reaches_the_others_within_a_second(
    pg: PostgresServer,
) -> None:
    with trio.fail_after(30):
        async with following(pg.url, "a") as (a, _), following(pg.url, "b") as (b, _), \
                following(pg.url, "c") as (c, _):
            await a.register_host(host("gpu1"), [service("gpu1", "gpu1")])
            began = trio.current_time()
            with trio.fail_after(2):
                await wait_until(lambda: "gpu1/chat" in b.snapshot.services
                                 and "gpu1/chat" in c.snapshot.services)
            arrived = trio.current_time() - began
            print(f"a write reached two other replicas in {arrived * 1000:.0f} ms")
            assert arrived < 1.0

            await b.set_availability("gpu1/chat", "draining")
            await b.put_api_key(KEY)
            with trio.fail_after(2):
                await wait_until(lambda: a.snapshot.services["gpu1/chat"].state.availability
                                 == "draining" and "k1" in c.api_keys)
            await c.set_api_key_disabled("k1", True)
            with trio.fail_after(2):
                await wait_until(lambda: a.api_keys["k1"].disabled and b.api_keys["k1"].disabled)
            # Untouched entries stay the same objects: routing's caches keep working.
            kept = a.snapshot.hosts["gpu1"]
            await b.forget_host("gpu1")
            with trio.fail_after(2):
                await wait_until(lambda: "gpu1" not in a.snapshot.hosts
                                 and "gpu1/chat" not in c.snapshot.services)
    assert kept.host_id == "gpu1"


async def test_one_replica_leads_at_a_time(pg: PostgresServer) -> None:
    with trio.fail_after(30):
        async with following(pg.url, "a") as (_, lead_a), following(pg.url, "b") as (_, lead_b):
            with trio.fail_after(3):
                await wait_until(lambda: lead_a.held or lead_b.held)
            await trio.sleep(1.0)  # both have tried again since: still only the first leads
            assert [lead_a.held, lead_b.held] == [True, False]
            async with following(pg.url, "c") as (_, lead_c):
                assert not lead_c.held


async def test_the_lead_moves_when_the_leader_stops(pg: PostgresServer) -> None:
    with trio.fail_after(30):
        async with replica(pg.url, "a") as a, replica(pg.url, "b") as b, \
                trio.open_nursery() as nursery:
            lead_a, lead_b = Leadership(held=False), Leadership(held=False)
            first = trio.CancelScope()

            async def follow_a() -> None:
                with first:
                    await run_follower(a, lead_a)

            nursery.start_soon(follow_a)
            await wait_until(lambda: lead_a.held)
            await nursery.start(run_follower, b, lead_b)
            assert not lead_b.held
            first.cancel()  # the leader's follower stops: its connection, and lock, go
            began = trio.current_time()
            with trio.fail_after(3):
                await wait_until(lambda: lead_b.held)
            print(f"the lead moved in {(trio.current_time() - began) * 1000:.0f} ms")
            nursery.cancel_scope.cancel()


async def test_without_the_database_writes_are_refused_and_the_snapshot_serves(
    pg: PostgresServer,
) -> None:
    with trio.fail_after(60):
        async with following(pg.url, "a") as (a, leadership):
            await a.register_host(host("gpu1"), [service("gpu1", "gpu1")])
            await pg.stop()
            with pytest.raises(RegistryUnavailable, match="registry storage failed"):
                await a.heartbeat("gpu1", 200.0, {})
            assert a.snapshot.hosts["gpu1"].last_heartbeat == 100.0  # nothing half-applied
            assert "gpu1/chat" in a.snapshot.services  # routing goes on from it
            await wait_until(lambda: not leadership.held)
            await pg.start()
            with trio.fail_after(10):
                while True:
                    try:
                        await a.heartbeat("gpu1", 300.0, {})
                        break
                    except RegistryUnavailable:
                        await trio.sleep(0.1)
                await wait_until(lambda: leadership.held)
    assert a.snapshot.hosts["gpu1"].last_heartbeat == 300.0


async def test_old_benchmark_samples_are_dropped_on_write_and_at_open(
    pg: PostgresServer,
) -> None:
    with trio.fail_after(20):
        async with replica(pg.url, "a") as registry:
            await registry.upsert_samples([sample("new", RECENT), sample("old", OLD)])
            assert [s.benchmark_id for s in registry.snapshot.benchmarks] == ["new"]
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SELECT benchmark_id FROM benchmark_samples").fetchall() == [
                ("new",)]
            # As an older version (or a longer retention) would have left it.
            conn.execute("INSERT INTO benchmark_samples VALUES "
                         "('older', 'gpu1/chat', 'm', 'chat.short', %s, '{}')", (OLD,))
        async with replica(pg.url, "b") as registry:
            assert [s.benchmark_id for s in registry.snapshot.benchmarks] == ["new"]
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT benchmark_id FROM benchmark_samples").fetchall() == [
            ("new",)]
