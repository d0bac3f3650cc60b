"""The registry: schema migrations, durability, snapshot publication and its write rules.

Each test opens a real SQLite file under `tmp_path`; the database is inspected with a separate
plain connection after the registry is closed, so the claims are about what is on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from geniehive import registry as registry_module
from geniehive import wire
from geniehive.errors import RegistryUnavailable
from geniehive.models import (
    LOCAL_HOST_ID,
    Asset,
    BenchmarkSample,
    Host,
    Observed,
    Policy,
    Role,
    RoutingPolicy,
    Service,
    ServiceState,
)
from geniehive.registry import (
    SCHEMA_VERSION,
    Registry,
    RegistryError,
    ServiceConflict,
    StoredKey,
    UnknownHost,
    UnknownKey,
    UnknownService,
    open_registry,
)

DEADLINE_S = 10
# Samples are kept for `benchmark_retention_days` (30 by default) of wall-clock time.
RECENT = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "registry.db"


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Registry]:
    with trio.fail_after(DEADLINE_S):
        async with open_registry(path) as registry:
            yield registry


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def dump(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def host(host_id: str, *, beat: float = 100.0, **changes: Any) -> Host:
    return Host(
        host_id=host_id, address=f"{host_id}.lan", last_heartbeat=beat, registered_at=beat,
        **changes,
    )  # fmt: skip


def service(host_id: str, name: str, operation: str = "chat", **changes: Any) -> Service:
    return Service(
        service_id=f"{name}/{operation}", host_id=host_id, operation=operation,
        adapter="ollama", base_url=f"http://{host_id}.lan:11434", upstream_id=name, **changes,
    )  # fmt: skip


RICH_ASSET = Asset(
    asset_id="qwen3:8b",
    loaded=True,
    context_length=32768,
    family="qwen3",
    aliases=("qwen", "small-chat"),
    size_bytes=5_000_000_000,
    policy=Policy(
        system_prompt="Be brief.",
        system_prompt_position="append",
        body_defaults={"temperature": 0.2, "options": {"num_ctx": 8192}},
        body_overrides={"think": False},
        strip_reasoning=True,
    ),
)
ROLE = Role(
    role_id="coder",
    operation="chat",
    display_name="Coder",
    policy=Policy(system_prompt="You write code."),
    routing=RoutingPolicy(
        strategy="scored",
        preferred_families=("qwen3",),
        min_context=8192,
        fallback_roles=("general",),
    ),
    benchmark_workloads=("chat.short_reasoning",),
)
SAMPLE = BenchmarkSample(
    benchmark_id="b1", service_id="gpu1/chat", asset_id="qwen3:8b",
    workload="chat.short_reasoning", observed_at=RECENT,
    results={"pass_rate": 1.0, "p50_latency_ms": 120.5},
)  # fmt: skip
KEY = StoredKey(
    key_id="k1", name="laptop", salt="00ff", hash="abcd", scopes=("inference", "read"),
    models=("qwen*",), created_at=1700000000.0,
)  # fmt: skip


# --- schema --------------------------------------------------------------------------------


async def test_a_fresh_file_is_created_migrated_and_in_wal_mode(db_path: Path) -> None:
    async with opened(db_path):
        pass
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in raw(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"hosts", "services", "roles", "benchmark_samples", "api_keys", "responses"}


async def test_reopening_applies_only_migrations_not_yet_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "gpu1")])
    async with opened(db_path):  # no migration left: reopening must not fail or change data
        pass
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # A further migration is an appended entry; only it runs on the next open.
    extra = ("CREATE TABLE notes (note TEXT)", "INSERT INTO notes VALUES ('from next')")
    monkeypatch.setattr(registry_module, "MIGRATIONS", (*registry_module.MIGRATIONS, extra))
    monkeypatch.setattr(registry_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    async with opened(db_path) as registry:
        assert list(registry.snapshot.services) == ["gpu1/chat"]
    async with opened(db_path):
        pass
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert raw(db_path, "SELECT note FROM notes") == [("from next",)]


async def test_keys_stored_before_host_binding_load_with_no_host(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    for sql in registry_module.MIGRATIONS[0]:
        db.execute(sql)
    db.execute("INSERT INTO api_keys VALUES ('k1', 'gpu-01', '00', 'ab', ?, '[]', 0, 1.0)",
               ('["node"]',))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    async with opened(db_path) as registry:
        [key] = await registry.list_api_keys()
        await registry.put_api_key(replace(KEY, key_id="k2", scopes=("node",), host="gpu-02"))
    async with opened(db_path) as registry:
        keys = {k.key_id: k for k in await registry.list_api_keys()}
    assert (key.name, key.scopes, key.host) == ("gpu-01", ("node",), None)
    assert keys["k2"].host == "gpu-02" and keys["k1"].host is None


async def test_keys_stored_before_key_limits_keep_working_with_no_limits(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    for migration in registry_module.MIGRATIONS[:2]:
        for sql in migration:
            db.execute(sql)
    db.execute("INSERT INTO api_keys VALUES ('k1', 'app', '00', 'ab', ?, '[]', 0, 1.0, NULL)",
               ('["inference"]',))
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    limited = replace(KEY, key_id="k2", max_in_flight=2, requests_per_minute=60, priority="high",
                      weight=2.5)
    async with opened(db_path) as registry:
        [old] = await registry.list_api_keys()
        await registry.put_api_key(limited)
    async with opened(db_path) as registry:
        keys = {k.key_id: k for k in await registry.list_api_keys()}
    assert (old.name, old.scopes, old.salt, old.hash) == ("app", ("inference",), "00", "ab")
    assert (old.max_in_flight, old.requests_per_minute, old.priority, old.weight) == (
        None, None, None, 1.0)
    assert keys == {"k1": old, "k2": limited}


async def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    async with opened(db_path):
        pass
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RegistryError, match="schema version 99 is newer"):
        async with opened(db_path):
            pass


# --- durability ----------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    gpu1 = host("gpu1", labels={"trust": "home"}, resources={"vram_gb": 24}, metrics={"gpu": 3})
    chat = service(
        "gpu1", "gpu1", assets=(RICH_ASSET,), api_key="secret",
        state=ServiceState(health="healthy"), observed=Observed(queue_depth=2, in_flight=1),
    )  # fmt: skip
    async with opened(db_path) as registry:
        await registry.register_host(gpu1, [chat, service("gpu1", "gpu1", "embeddings")])
        await registry.replace_roles({"coder": ROLE})
        await registry.upsert_samples([SAMPLE])
        await registry.put_api_key(KEY)
        before = registry.snapshot
    async with opened(db_path) as registry:
        after = registry.snapshot
        assert await registry.list_api_keys() == [KEY]
    assert after.hosts == before.hosts
    # The api key is a config secret: it is never written, so it comes back empty.
    assert after.services == {
        "gpu1/chat": replace(chat, api_key=None),
        "gpu1/embeddings": service("gpu1", "gpu1", "embeddings"),
    }
    assert after.roles == {"coder": ROLE}
    assert after.benchmarks == (SAMPLE,)
    assert "secret" not in dump(db_path)


async def test_a_failed_write_rolls_back_and_publishes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_then_fail(db: sqlite3.Connection, statements: Any) -> None:
        with registry_module._transaction(db):
            for sql, params in statements:
                db.execute(sql, params)
            raise sqlite3.OperationalError("disk I/O error")

    async with opened(db_path) as registry:
        before = registry.snapshot
        monkeypatch.setattr(registry_module, "_write", write_then_fail)
        with pytest.raises(RegistryUnavailable, match="disk I/O error"):
            await registry.register_host(host("gpu1"), [service("gpu1", "gpu1")])
        assert registry.snapshot is before
    assert raw(db_path, "SELECT count(*) FROM hosts") == [(0,)]
    assert raw(db_path, "SELECT count(*) FROM services") == [(0,)]


# --- publication ---------------------------------------------------------------------------


async def test_writes_run_off_the_event_loop_and_publish_after_commit(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []  # (thread, version during write, rows visible)
    real_write = registry_module._write

    def recording_write(db: sqlite3.Connection, statements: Any) -> None:
        real_write(db, statements)
        committed = raw(db_path, "SELECT count(*) FROM hosts")[0][0]
        seen.append((threading.get_ident(), registry.snapshot.version, committed))

    monkeypatch.setattr(registry_module, "_write", recording_write)
    async with opened(db_path) as registry:
        start = registry.snapshot.version
        await registry.register_host(host("gpu1"), [])
        assert registry.snapshot.version == start + 1
        assert "gpu1" in registry.snapshot.hosts
    [(thread, version_during, committed)] = seen
    assert thread != threading.get_ident()
    # Another connection already saw the row while the old snapshot was still published.
    assert (version_during, committed) == (start, 1)


async def test_the_version_moves_once_per_write_that_changes_something(db_path: Path) -> None:
    async with opened(db_path) as registry:
        versions = [registry.snapshot.version]

        async def step(write: Any) -> None:
            await write
            versions.append(registry.snapshot.version)

        await step(registry.register_host(host("gpu1"), [service("gpu1", "gpu1")]))
        await step(registry.set_service_assets("gpu1/chat", [RICH_ASSET]))
        await step(registry.set_service_assets("gpu1/chat", [RICH_ASSET]))  # unchanged
        await step(registry.set_availability("gpu1/chat", "draining"))
        await step(registry.set_availability("gpu1/chat", "draining"))  # unchanged
        await step(registry.heartbeat("gpu1", 200.0, {"load": 1}, None))
        await step(registry.replace_roles({"coder": ROLE}))
        await step(registry.replace_roles({"coder": ROLE}))  # unchanged
        await step(registry.forget_stale(50.0))  # nobody stale
    first = versions[0]
    offsets = [version - first for version in versions]
    assert offsets == [0, 1, 2, 2, 3, 3, 4, 5, 5, 5]


# --- write rules ---------------------------------------------------------------------------


async def test_a_conflicting_register_writes_nothing(db_path: Path) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "shared")])
        before = registry.snapshot
        taken = replace(service("gpu1", "shared"), host_id="gpu2")
        with pytest.raises(ServiceConflict) as caught:
            await registry.register_host(host("gpu2"), [service("gpu2", "mine"), taken])
        assert (caught.value.service_id, caught.value.owner_host_id) == ("shared/chat", "gpu1")
        assert registry.snapshot is before
    assert raw(db_path, "SELECT host_id FROM hosts") == [("gpu1",)]


async def test_heartbeat_needs_a_known_host_and_replaces_services_only_when_given(
    db_path: Path,
) -> None:
    async with opened(db_path) as registry:
        with pytest.raises(UnknownHost) as caught:
            await registry.heartbeat("ghost", 1.0, {}, [])
        assert caught.value.host_id == "ghost"
        await registry.register_host(host("gpu1"), [service("gpu1", "a"), service("gpu1", "b")])
        await registry.heartbeat("gpu1", 300.0, {"gpu_util": 0.5}, None)
        assert sorted(registry.snapshot.services) == ["a/chat", "b/chat"]
        await registry.heartbeat("gpu1", 310.0, {}, [service("gpu1", "c")])
        snapshot = registry.snapshot
    assert sorted(snapshot.services) == ["c/chat"]
    assert snapshot.hosts["gpu1"].last_heartbeat == 310.0
    assert snapshot.hosts["gpu1"].registered_at == 100.0
    assert raw(db_path, "SELECT service_id FROM services") == [("c/chat",)]


async def test_a_drain_outlives_heartbeats_and_restarts(db_path: Path) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "a")])
        await registry.set_availability("a/chat", "draining")
        await registry.heartbeat("gpu1", 200.0, {}, [service("gpu1", "a"), service("gpu1", "b")])
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "a"), service("gpu1", "b")])
        states = {sid: s.state.availability for sid, s in registry.snapshot.services.items()}
    assert states == {"a/chat": "draining", "b/chat": "available"}


async def test_availability_rejects_unknown_services_and_values(db_path: Path) -> None:
    async with opened(db_path) as registry:
        with pytest.raises(UnknownService) as caught:
            await registry.set_availability("nope/chat", "draining")
        assert caught.value.service_id == "nope/chat"
        with pytest.raises(UnknownService):
            await registry.set_service_assets("nope/chat", [])
        await registry.register_host(host("gpu1"), [service("gpu1", "a")])
        with pytest.raises(ValueError, match="availability must be one of"):
            await registry.set_availability("a/chat", "sleeping")


async def test_forgetting_a_host_cascades_to_its_services(db_path: Path) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "a"), service("gpu1", "b")])
        await registry.register_host(host("gpu2"), [service("gpu2", "c")])
        await registry.forget_host("gpu1")
        assert sorted(registry.snapshot.services) == ["c/chat"]
        with pytest.raises(UnknownHost):
            await registry.forget_host("gpu1")
    assert raw(db_path, "SELECT service_id, host_id FROM services") == [("c/chat", "gpu2")]


async def test_forget_stale_spares_the_local_host(db_path: Path) -> None:
    local = host(LOCAL_HOST_ID, beat=0.0)
    async with opened(db_path) as registry:
        await registry.sync_local(local, [service(LOCAL_HOST_ID, "box")])
        await registry.register_host(host("old2", beat=10.0), [service("old2", "x")])
        await registry.register_host(host("old1", beat=20.0), [])
        await registry.register_host(host("fresh", beat=500.0), [])
        assert await registry.forget_stale(100.0) == ["old1", "old2"]
        snapshot = registry.snapshot
    assert sorted(snapshot.hosts) == ["fresh", LOCAL_HOST_ID]
    assert snapshot.hosts[LOCAL_HOST_ID].is_local is True
    assert sorted(snapshot.services) == ["box/chat"]


async def test_sync_local_replaces_the_local_services_exactly(db_path: Path) -> None:
    local = host(LOCAL_HOST_ID)
    async with opened(db_path) as registry:
        await registry.sync_local(local, [service(LOCAL_HOST_ID, "a"), service(LOCAL_HOST_ID, "b")])
    async with opened(db_path) as registry:
        await registry.sync_local(local, [service(LOCAL_HOST_ID, "b", api_key="k")])
        snapshot = registry.snapshot
    assert list(snapshot.services) == ["b/chat"]
    assert snapshot.services["b/chat"].api_key == "k"
    assert snapshot.hosts[LOCAL_HOST_ID].is_local is True


async def test_the_snapshot_finds_services_by_id_asset_and_alias(db_path: Path) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "gpu1")])
        await registry.set_service_assets("gpu1/chat", [RICH_ASSET])
        by_name = registry.snapshot.by_name
    for name in ("gpu1/chat", "qwen3:8b", "qwen", "small-chat"):
        assert by_name[("chat", name)] == ("gpu1/chat",)
    assert ("embeddings", "qwen") not in by_name


async def test_api_keys_are_stored_disabled_and_deleted(db_path: Path) -> None:
    other = replace(KEY, key_id="k0", name="ci", scopes=("admin",), models=())
    async with opened(db_path) as registry:
        await registry.put_api_key(KEY)
        await registry.put_api_key(other)
        await registry.set_api_key_disabled("k1", True)
        await registry.delete_api_key("k0")
        with pytest.raises(UnknownKey) as caught:
            await registry.delete_api_key("k0")
        assert caught.value.key_id == "k0"
        with pytest.raises(UnknownKey):
            await registry.set_api_key_disabled("k0", False)
    async with opened(db_path) as registry:
        assert await registry.list_api_keys() == [replace(KEY, disabled=True)]
        assert dict(registry.api_keys) == {"k1": replace(KEY, disabled=True)}


def test_encoded_services_never_carry_the_api_key() -> None:
    chat = service("gpu1", "gpu1", assets=(RICH_ASSET,), api_key="secret")
    encoded = wire.encode_service(chat)
    assert "api_key" not in encoded
    assert wire.decode_service(encoded) == replace(chat, api_key=None)
    assert wire.decode_role(wire.encode_role(ROLE)) == ROLE


async def test_roles_are_replaced_as_a_whole_and_must_be_filed_under_their_id(
    db_path: Path,
) -> None:
    general = Role(role_id="general", operation="chat")
    async with opened(db_path) as registry:
        await registry.replace_roles({"coder": ROLE, "general": general})
        await registry.replace_roles({"general": general})
        with pytest.raises(ValueError, match="role 'coder' is filed under 'writer'"):
            await registry.replace_roles({"writer": ROLE})
    async with opened(db_path) as registry:
        assert registry.snapshot.roles == {"general": general}


async def test_an_unopenable_path_is_a_registry_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RegistryError, match="cannot open registry"):
        async with opened(blocker / "registry.db"):
            pass


# --- what a write costs, and processes sharing one file -------------------------------------


async def test_a_heartbeat_rewrites_only_what_changed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[list[tuple[str, tuple[Any, ...]]]] = []
    real_write = registry_module._write

    def recording_write(db: Any, statements: Any) -> None:
        written.append(list(statements))
        real_write(db, statements)

    monkeypatch.setattr(registry_module, "_write", recording_write)
    gpu1 = host("gpu1", labels={"zone": "a"}, resources={"vram_gb": 24})
    services = [service("gpu1", "gpu1"), service("gpu1", "gpu1", "embeddings")]
    async with opened(db_path) as registry:
        await registry.register_host(gpu1, services)
        written.clear()
        await registry.heartbeat("gpu1", 105.0, {"gpu_mem_used": 7}, services)
        await registry.heartbeat("gpu1", 110.0, {"gpu_mem_used": 7}, services)
    # The labels, resources and the unchanged services are not written again.
    assert written == [
        [("UPDATE hosts SET metrics=?, last_heartbeat=? WHERE host_id=?",
          ('{"gpu_mem_used":7}', 105.0, "gpu1"))],
        [("UPDATE hosts SET last_heartbeat=? WHERE host_id=?", (110.0, "gpu1"))],
    ]
    assert raw(db_path, "SELECT last_heartbeat, labels FROM hosts") == [(110.0, '{"zone":"a"}')]


async def test_old_benchmark_samples_are_not_kept(db_path: Path) -> None:
    old = (datetime.now(UTC) - timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with opened(db_path) as registry:
        await registry.upsert_samples([SAMPLE, replace(SAMPLE, benchmark_id="b0",
                                                       observed_at=old)])
        assert registry.snapshot.benchmarks == (SAMPLE,)
    assert raw(db_path, "SELECT benchmark_id FROM benchmark_samples") == [("b1",)]


async def test_processes_sharing_the_file_follow_each_others_writes_and_one_leads(
    db_path: Path,
) -> None:
    from geniehive.registry_follow import Leadership, run_follower

    with trio.fail_after(DEADLINE_S):
        async with opened(db_path) as a, opened(db_path) as b, trio.open_nursery() as nursery:
            lead_a, lead_b = Leadership(held=False), Leadership(held=False)
            await nursery.start(run_follower, a, lead_a)
            await nursery.start(run_follower, b, lead_b)
            assert (lead_a.held, lead_b.held) == (True, False)
            await a.register_host(host("gpu1"), [service("gpu1", "gpu1")])
            await b.put_api_key(KEY)
            # Another connection's commit shows in data_version, polled twice a second.
            while "gpu1/chat" not in b.snapshot.services or "k1" not in a.api_keys:  # noqa: ASYNC110
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_a_process_starting_keeps_what_discovery_stored_for_the_same_upstream(
    db_path: Path,
) -> None:
    local = Host(host_id=LOCAL_HOST_ID, address="127.0.0.1", is_local=True)
    configured = service(LOCAL_HOST_ID, "up", assets=(Asset(asset_id="m", aliases=("fast",)),))
    discovered = (Asset(asset_id="m", loaded=True), Asset(asset_id="other", loaded=False))
    async with opened(db_path) as first:
        await first.sync_local(local, [configured])
        await first.set_service_assets("up/chat", discovered, Observed(queue_depth=3))
        await first.set_service_health("up/chat", "healthy")
    # Another worker (or a restart) syncs the same control file: the discovered models, load
    # and health stay, under the configured aliases; a moved upstream starts afresh.
    async with opened(db_path) as second:
        await second.sync_local(local, [configured])
        kept = second.snapshot.services["up/chat"]
        await second.sync_local(local, [replace(configured, base_url="http://elsewhere:1")])
        moved = second.snapshot.services["up/chat"]
    assert [(a.asset_id, a.loaded, a.aliases) for a in kept.assets] == [
        ("m", True, ("fast",)), ("other", False, ())]
    assert kept.observed.queue_depth == 3 and kept.state.health == "healthy"
    assert moved.assets == configured.assets and moved.state.health == "unknown"


async def test_a_heartbeat_that_moves_only_load_keeps_the_name_indexes(db_path: Path) -> None:
    chat = service("gpu1", "gpu1", assets=(Asset(asset_id="m1"),))
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [chat])
        before = registry.snapshot
        busier = replace(chat, observed=Observed(in_flight=1))
        await registry.heartbeat("gpu1", 105.0, {}, [busier])
        after_load = registry.snapshot
        await registry.heartbeat("gpu1", 110.0, {}, [replace(busier, assets=(
            Asset(asset_id="m1"), Asset(asset_id="m2", aliases=("big",))))])
        after_model = registry.snapshot
    assert after_load.services["gpu1/chat"].observed.in_flight == 1
    assert after_load.by_name is before.by_name  # not rebuilt for a load figure
    assert after_model.by_name[("chat", "big")] == ("gpu1/chat",)
    assert ("chat", "big") not in before.by_name


# --- heartbeats committed in groups ----------------------------------------------------------


def recording(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, tuple[Any, ...]]]]:
    """The statements of each transaction the registry writes from now on."""
    written: list[list[tuple[str, tuple[Any, ...]]]] = []
    real_write = registry_module._write

    def recording_write(db: Any, statements: Any) -> None:
        written.append(list(statements))
        real_write(db, statements)

    monkeypatch.setattr(registry_module, "_write", recording_write)
    return written


async def beat_together(registry: Registry, *beats: tuple[Any, ...]) -> list[Any]:
    """Send heartbeats in this order within one group's gathering; what each returned or
    raised, in order."""
    results: list[Any] = [None] * len(beats)

    async def one(index: int, args: tuple[Any, ...]) -> None:
        try:
            await registry.heartbeat(*args)
        except Exception as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index, args in enumerate(beats):
            nursery.start_soon(one, index, args)
            await trio.testing.wait_all_tasks_blocked()  # sent: the next comes after it
    return results


async def test_heartbeats_arriving_together_are_one_transaction_and_one_snapshot(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = recording(monkeypatch)
    async with opened(db_path) as registry:
        for n in range(5):
            await registry.register_host(host(f"gpu{n}"), [service(f"gpu{n}", f"gpu{n}")])
        written.clear()
        version = registry.snapshot.version
        results = await beat_together(
            registry, *((f"gpu{n}", 200.0 + n, {"load": n}, None) for n in range(5)))
        assert results == [None] * 5
        assert registry.snapshot.version == version + 1
        assert [registry.snapshot.hosts[f"gpu{n}"].last_heartbeat for n in range(5)] == [
            200.0, 201.0, 202.0, 203.0, 204.0]
    [group] = written
    assert sorted(params[-1] for _, params in group) == [f"gpu{n}" for n in range(5)]
    assert raw(db_path, "SELECT last_heartbeat FROM hosts ORDER BY host_id") == [
        (200.0,), (201.0,), (202.0,), (203.0,), (204.0,)]


async def test_a_refused_heartbeat_fails_alone_and_writes_nothing_of_its_own(
    db_path: Path,
) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "a")])
        await registry.register_host(host("gpu2"), [service("gpu2", "b")])
        stolen = replace(service("gpu2", "a"), host_id="gpu2")  # gpu1's service id
        results = await beat_together(
            registry,
            ("ghost", 300.0, {}, []),
            ("gpu2", 300.0, {"x": 1}, [stolen]),
            ("gpu1", 301.0, {}, [service("gpu1", "a"), service("gpu1", "c")]),
        )
        snapshot = registry.snapshot
    assert isinstance(results[0], UnknownHost)
    assert isinstance(results[1], ServiceConflict)
    assert results[2] is None
    assert snapshot.hosts["gpu2"].last_heartbeat == 100.0  # the refused beat left no trace
    assert dict(snapshot.hosts["gpu2"].metrics) == {}
    assert sorted(snapshot.services) == ["a/chat", "b/chat", "c/chat"]
    assert snapshot.services["a/chat"].host_id == "gpu1"
    async with opened(db_path) as reopened:
        assert reopened.snapshot.hosts == snapshot.hosts
        assert reopened.snapshot.services == snapshot.services


async def test_two_heartbeats_of_one_host_in_a_group_end_as_the_later_says(
    db_path: Path,
) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [service("gpu1", "a")])
        results = await beat_together(
            registry,
            ("gpu1", 200.0, {}, [service("gpu1", "a"), service("gpu1", "c")]),
            ("gpu1", 201.0, {}, [service("gpu1", "d")]),
        )
        snapshot = registry.snapshot
    assert results == [None, None]
    assert sorted(snapshot.services) == ["d/chat"]
    assert snapshot.services_by_host["gpu1"] == ("d/chat",)
    assert snapshot.hosts["gpu1"].last_heartbeat == 201.0
    async with opened(db_path) as reopened:
        assert sorted(reopened.snapshot.services) == ["d/chat"]


async def test_a_failed_group_write_fails_every_heartbeat_of_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write(db: Any, statements: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [])
        await registry.register_host(host("gpu2"), [])
        before = registry.snapshot
        monkeypatch.setattr(registry_module, "_write", failing_write)
        results = await beat_together(registry, ("gpu1", 200.0, {}, None),
                                      ("gpu2", 200.0, {}, None))
        assert registry.snapshot is before
        monkeypatch.undo()
        await registry.heartbeat("gpu1", 210.0, {}, None)  # the next group writes again
        assert registry.snapshot.hosts["gpu1"].last_heartbeat == 210.0
    assert [type(r) for r in results] == [RegistryUnavailable, RegistryUnavailable]
    assert all("disk I/O error" in str(r) for r in results)


async def test_a_heartbeat_whose_caller_gives_up_still_writes_its_group(db_path: Path) -> None:
    async with opened(db_path) as registry:
        await registry.register_host(host("gpu1"), [])
        await registry.register_host(host("gpu2"), [])
        gone = trio.CancelScope()

        async def hanging_up() -> None:
            with gone:
                await registry.heartbeat("gpu2", 205.0, {}, None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hanging_up)
            await trio.testing.wait_all_tasks_blocked()  # its group is gathering
            gone.cancel()
            await registry.heartbeat("gpu1", 206.0, {}, None)  # joins that group
        hosts = registry.snapshot.hosts
    assert (hosts["gpu1"].last_heartbeat, hosts["gpu2"].last_heartbeat) == (206.0, 205.0)
