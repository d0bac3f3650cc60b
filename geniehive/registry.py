"""The registry: hosts, services, roles, benchmark samples and API keys, kept in SQLite.

Rule: the registry modules (this one, registry_responses.py) alone import sqlite3. Every SQLite
call runs off the event loop on one worker at a time (a `CapacityLimiter(1)`; a connection is
bound to no thread, so `check_same_thread=False` is safe behind that limiter). Writes are
serialised by a lock: each computes the next state in memory, writes the difference in one
transaction, and only after COMMIT publishes a new immutable `Snapshot` (version + 1). So when a
write returns, `registry.snapshot` shows it; a write that changes nothing publishes nothing.
Readers only read `registry.snapshot`; the request path never waits on SQLite. At open the
database is the truth: it is migrated forward and loaded whole into memory.

Exceptions:
    RegistryError            storage failed, or the database is newer (stops the daemon)
    RegistryRefusal          a write refused because of what the registry holds
    +-- UnknownHost          .host_id
    +-- UnknownService       .service_id
    +-- UnknownKey           .key_id
    +-- ServiceConflict      .service_id, .owner_host_id (another host owns the service id)

Availability (drain, pause, resume) is operator state: replacing a host's services keeps the
availability of each service id that already existed, so a drain outlives heartbeats and
restarts; a new service id starts with the availability it was given.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from geniehive import wire
from geniehive.errors import StartupError
from geniehive.models import (
    AVAILABILITIES,
    Asset,
    BenchmarkSample,
    Host,
    Observed,
    Role,
    Service,
    Snapshot,
)
from geniehive.registry_responses import RESPONSES_MIGRATION

T = TypeVar("T")
Statement = tuple[str, tuple[Any, ...]]

# Forward migrations, applied in order at open; migration N sets user_version to N.
# Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE hosts (
            host_id TEXT PRIMARY KEY, address TEXT NOT NULL, display_name TEXT,
            labels TEXT NOT NULL, capabilities TEXT NOT NULL, resources TEXT NOT NULL,
            metrics TEXT NOT NULL, last_heartbeat REAL, registered_at REAL,
            is_local INTEGER NOT NULL)""",
        """CREATE TABLE services (
            service_id TEXT PRIMARY KEY,
            host_id TEXT NOT NULL REFERENCES hosts(host_id) ON DELETE CASCADE,
            operation TEXT NOT NULL, adapter TEXT NOT NULL, base_url TEXT NOT NULL,
            upstream_id TEXT, timeout_s REAL NOT NULL, assets TEXT NOT NULL,
            state TEXT NOT NULL, observed TEXT NOT NULL)""",
        "CREATE INDEX services_by_host ON services(host_id)",
        "CREATE TABLE roles (role_id TEXT PRIMARY KEY, definition TEXT NOT NULL)",
        """CREATE TABLE benchmark_samples (
            benchmark_id TEXT PRIMARY KEY, service_id TEXT NOT NULL, asset_id TEXT,
            workload TEXT NOT NULL, observed_at TEXT NOT NULL, results TEXT NOT NULL)""",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY, name TEXT NOT NULL, salt TEXT NOT NULL,
            hash TEXT NOT NULL, scopes TEXT NOT NULL, models TEXT NOT NULL,
            disabled INTEGER NOT NULL, created_at REAL NOT NULL)""",
    ),
    # 2: a named node key speaks for one host id (NULL: the key's name, see auth.py).
    ("ALTER TABLE api_keys ADD COLUMN host TEXT",),
    # 3: a named key's limits (auth.KeyLimits; NULL: no limit, and a weight of 1).
    (
        "ALTER TABLE api_keys ADD COLUMN max_in_flight INTEGER",
        "ALTER TABLE api_keys ADD COLUMN requests_per_minute INTEGER",
        "ALTER TABLE api_keys ADD COLUMN priority TEXT",
        "ALTER TABLE api_keys ADD COLUMN weight REAL NOT NULL DEFAULT 1",
    ),
    # 4: stored answers of the Responses API, read by id only (geniehive/registry_responses.py).
    RESPONSES_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)


class RegistryError(StartupError):
    """The registry's storage failed (at start: unreadable, or written by a newer geniehive,
    which stops the daemon with exit status 1)."""


class RegistryRefusal(Exception):
    """A write the registry refused because of what it holds: the caller answers it."""


class UnknownHost(RegistryRefusal):
    def __init__(self, host_id: str) -> None:
        super().__init__(f"unknown host {host_id!r}")
        self.host_id = host_id


class UnknownService(RegistryRefusal):
    def __init__(self, service_id: str) -> None:
        super().__init__(f"unknown service {service_id!r}")
        self.service_id = service_id


class UnknownKey(RegistryRefusal):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"unknown API key {key_id!r}")
        self.key_id = key_id


class ServiceConflict(RegistryRefusal):
    def __init__(self, service_id: str, owner_host_id: str) -> None:
        super().__init__(f"service {service_id!r} belongs to host {owner_host_id!r}")
        self.service_id = service_id
        self.owner_host_id = owner_host_id


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A named API key as stored: only its salted hash, never the secret."""

    key_id: str
    name: str
    salt: str
    hash: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] = ()
    disabled: bool = False
    created_at: float = 0.0
    host: str | None = None  # the host id a node key speaks for (None: its name)
    # Its limits, as auth.KeyLimits holds them (None: no limit).
    max_in_flight: int | None = None
    requests_per_minute: int | None = None
    priority: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class _State:
    """What the snapshot is built from. Once committed it is never changed again (the
    snapshot shares its dicts): a write edits a copy from `edit()`."""

    hosts: dict[str, Host]
    services: dict[str, Service]
    roles: dict[str, Role]
    samples: dict[str, BenchmarkSample]
    keys: dict[str, StoredKey]

    def edit(self) -> _State:
        """A copy with fresh dicts the caller may change before committing it."""
        return _State(dict(self.hosts), dict(self.services), dict(self.roles),
                      dict(self.samples), dict(self.keys))


def _snapshot(version: int, state: _State) -> Snapshot:
    samples = sorted(state.samples.values(), key=lambda s: (s.observed_at, s.benchmark_id))
    return Snapshot(
        version=version,
        hosts=MappingProxyType(state.hosts),
        services=MappingProxyType(state.services),
        roles=MappingProxyType(state.roles),
        benchmarks=tuple(samples),
    )


class Registry:
    """The live registry. Build it with `open_registry`."""

    def __init__(self, db: sqlite3.Connection, limiter: trio.CapacityLimiter, state: _State):
        self._db = db
        self._limiter = limiter
        self._lock = trio.Lock()
        self._state = state
        self._snapshot = _snapshot(1, state)
        self.published = trio.Event()  # set (then replaced) when a new snapshot is published

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def api_keys(self) -> Mapping[str, StoredKey]:
        """The stored keys by key id, read from memory (safe on the request path)."""
        return MappingProxyType(self._state.keys)

    async def sync_local(self, host: Host, services: Sequence[Service]) -> None:
        """Make `host` the one local host with exactly `services`. Raises ServiceConflict
        if a service id belongs to a node."""
        async with self._lock:
            state = self._state.edit()
            for other in [h for h in state.hosts.values() if h.is_local]:
                if other.host_id != host.host_id:
                    _drop_host(state, other.host_id)
            _put_host(state, replace(host, is_local=True))
            _replace_services(state, host.host_id, services)
            await self._commit(state)

    async def register_host(self, host: Host, services: Sequence[Service]) -> None:
        """Upsert `host` and replace its services. Raises ServiceConflict (nothing written)."""
        async with self._lock:
            state = self._state.edit()
            _put_host(state, host)
            _replace_services(state, host.host_id, services)
            await self._commit(state)

    async def heartbeat(
        self,
        host_id: str,
        now: float,
        metrics: Mapping[str, Any],
        services: Sequence[Service] | None = None,
    ) -> None:
        """Record a heartbeat; with `services`, replace the host's services.

        Raises UnknownHost, ServiceConflict (nothing written).
        """
        async with self._lock:
            state = self._state.edit()
            host = state.hosts.get(host_id)
            if host is None:
                raise UnknownHost(host_id)
            state.hosts[host_id] = replace(
                host, last_heartbeat=now, metrics=MappingProxyType(dict(metrics))
            )
            if services is not None:
                _replace_services(state, host_id, services)
            await self._commit(state)

    async def set_service_assets(
        self, service_id: str, assets: Sequence[Asset], observed: Observed | None = None
    ) -> None:
        """Store discovery results (and load, if given). Raises UnknownService."""
        async with self._lock:
            state = self._state.edit()
            service = _service(state, service_id)
            changes: dict[str, Any] = {"assets": tuple(assets)}
            if observed is not None:
                changes["observed"] = observed
            state.services[service_id] = replace(service, **changes)
            await self._commit(state)

    async def set_availability(self, service_id: str, availability: str) -> None:
        """Drain, pause or resume a service. Raises UnknownService, ValueError."""
        if availability not in AVAILABILITIES:
            raise ValueError(f"availability must be one of {', '.join(AVAILABILITIES)}")
        async with self._lock:
            state = self._state.edit()
            service = _service(state, service_id)
            new_state = replace(service.state, availability=availability)
            state.services[service_id] = replace(service, state=new_state)
            await self._commit(state)

    async def forget_host(self, host_id: str) -> None:
        """Forget a host and its services. Raises UnknownHost."""
        async with self._lock:
            state = self._state.edit()
            if host_id not in state.hosts:
                raise UnknownHost(host_id)
            _drop_host(state, host_id)
            await self._commit(state)

    async def forget_stale(self, cutoff: float) -> list[str]:
        """Forget every node host not heard from since `cutoff`; return their ids, sorted."""
        async with self._lock:
            state = self._state.edit()
            stale = sorted(
                host.host_id
                for host in state.hosts.values()
                if not host.is_local and _last_seen(host) < cutoff
            )
            for host_id in stale:
                _drop_host(state, host_id)
            await self._commit(state)
            return stale

    async def replace_roles(self, roles: Mapping[str, Role]) -> None:
        """Make `roles` (role id -> role) the complete role set. Raises ValueError."""
        for role_id, role in roles.items():
            if role_id != role.role_id:
                raise ValueError(f"role {role.role_id!r} is filed under {role_id!r}")
        async with self._lock:
            state = self._state.edit()
            state.roles.clear()
            state.roles.update(roles)
            await self._commit(state)

    async def upsert_samples(self, samples: Sequence[BenchmarkSample]) -> None:
        """Add benchmark samples, replacing any with the same benchmark id."""
        async with self._lock:
            state = self._state.edit()
            for sample in samples:
                state.samples[sample.benchmark_id] = sample
            await self._commit(state)

    async def put_api_key(self, key: StoredKey) -> None:
        """Store a key, replacing any with the same key id."""
        async with self._lock:
            state = self._state.edit()
            state.keys[key.key_id] = key
            await self._commit(state)

    async def list_api_keys(self) -> list[StoredKey]:
        """Every stored key, by key id."""
        return [self._state.keys[key_id] for key_id in sorted(self._state.keys)]

    async def set_api_key_disabled(self, key_id: str, disabled: bool) -> None:
        """Disable or enable a key. Raises UnknownKey."""
        async with self._lock:
            state = self._state.edit()
            key = state.keys.get(key_id)
            if key is None:
                raise UnknownKey(key_id)
            state.keys[key_id] = replace(key, disabled=disabled)
            await self._commit(state)

    async def delete_api_key(self, key_id: str) -> None:
        """Delete a key. Raises UnknownKey."""
        async with self._lock:
            state = self._state.edit()
            if key_id not in state.keys:
                raise UnknownKey(key_id)
            del state.keys[key_id]
            await self._commit(state)

    async def _commit(self, state: _State) -> None:
        """Write what changed in one transaction, then publish. Caller holds the lock."""
        statements = _diff(self._state, state)
        if not statements:
            return
        await self._run(_write, self._db, statements)
        # No checkpoint from here on: a cancelled caller cannot leave the two apart.
        self._state = state
        self._snapshot = _snapshot(self._snapshot.version + 1, state)
        published, self.published = self.published, trio.Event()
        published.set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise RegistryError(f"registry storage failed: {exc}") from exc


@asynccontextmanager
async def open_registry(path: Path) -> AsyncIterator[Registry]:
    """Open (creating and migrating as needed) the registry database at `path`.

    Raises RegistryError if the file cannot be opened or its schema is newer than this code.
    """
    limiter = trio.CapacityLimiter(1)
    try:
        db, state = await trio.to_thread.run_sync(_open, path, limiter=limiter)
    except (sqlite3.Error, OSError) as exc:
        raise RegistryError(f"cannot open registry {path}: {exc}") from exc
    try:
        yield Registry(db, limiter, state)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.close, limiter=limiter)


# --- state edits (pure, on the event loop) -------------------------------------------------


def _put_host(state: _State, host: Host) -> None:
    """Upsert a host, keeping the time it first registered."""
    old = state.hosts.get(host.host_id)
    if old is not None and old.registered_at is not None:
        host = replace(host, registered_at=old.registered_at)
    state.hosts[host.host_id] = host


def _drop_host(state: _State, host_id: str) -> None:
    del state.hosts[host_id]
    for service_id in [s.service_id for s in state.services.values() if s.host_id == host_id]:
        del state.services[service_id]


def _replace_services(state: _State, host_id: str, services: Sequence[Service]) -> None:
    """Give `host_id` exactly `services`. Raises ServiceConflict, ValueError."""
    seen: set[str] = set()
    for service in services:
        if service.host_id != host_id:
            raise ValueError(f"service {service.service_id!r} names host {service.host_id!r}")
        if service.service_id in seen:
            raise ValueError(f"service {service.service_id!r} listed twice")
        seen.add(service.service_id)
        owner = state.services.get(service.service_id)
        if owner is not None and owner.host_id != host_id:
            raise ServiceConflict(service.service_id, owner.host_id)
    old = {sid: s for sid, s in state.services.items() if s.host_id == host_id}
    for service_id in old:
        del state.services[service_id]
    for service in services:
        previous = old.get(service.service_id)
        if previous is not None and previous.state.availability != service.state.availability:
            kept = replace(service.state, availability=previous.state.availability)
            service = replace(service, state=kept)
        state.services[service.service_id] = service


def _service(state: _State, service_id: str) -> Service:
    service = state.services.get(service_id)
    if service is None:
        raise UnknownService(service_id)
    return service


def _last_seen(host: Host) -> float:
    seen = host.last_seen
    return seen if seen is not None else float("-inf")


# --- rows ----------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _encode_key(key: StoredKey) -> dict[str, Any]:
    return {f.name: getattr(key, f.name) for f in fields(key)}


def _decode_key(data: Mapping[str, Any]) -> StoredKey:
    return StoredKey(**{**data, "scopes": tuple(data["scopes"]), "models": tuple(data["models"])})


@dataclass(frozen=True)
class _Table:
    """How one state dict maps to one table: through the value's `wire` JSON form."""

    name: str
    columns: tuple[str, ...]  # the primary key first
    json_columns: frozenset[str]
    bool_columns: frozenset[str]
    encode: Callable[[Any], Mapping[str, Any]]
    decode: Callable[[Mapping[str, Any]], Any]

    def upsert(self, value: Any) -> Statement:
        # An upsert, never INSERT OR REPLACE: REPLACE deletes the old row first, and deleting
        # a host row would cascade to its services.
        names = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        updates = ", ".join(f"{c}=excluded.{c}" for c in self.columns[1:])
        sql = (
            f"INSERT INTO {self.name} ({names}) VALUES ({marks}) "
            f"ON CONFLICT({self.columns[0]}) DO UPDATE SET {updates}"
        )
        encoded = self.encode(value)
        return sql, tuple(
            _json(encoded[c]) if c in self.json_columns else encoded[c] for c in self.columns
        )

    def delete(self, key: str) -> Statement:
        return f"DELETE FROM {self.name} WHERE {self.columns[0]}=?", (key,)

    def load(self, db: sqlite3.Connection) -> dict[str, Any]:
        loaded: dict[str, Any] = {}
        for row in db.execute(f"SELECT {', '.join(self.columns)} FROM {self.name}"):
            data = dict(zip(self.columns, row, strict=True))
            for column in self.json_columns:
                data[column] = json.loads(data[column])
            for column in self.bool_columns:
                data[column] = bool(data[column])
            loaded[row[0]] = self.decode(data)
        return loaded


_HOSTS = _Table(
    "hosts",
    ("host_id", "address", "display_name", "labels", "capabilities", "resources", "metrics",
     "last_heartbeat", "registered_at", "is_local"),
    frozenset({"labels", "capabilities", "resources", "metrics"}),
    frozenset({"is_local"}),
    wire.encode_host,
    wire.decode_host,
)  # fmt: skip
_SERVICES = _Table(
    "services",
    # No api_key (a secret) or keep_alive column: config, re-applied at start or heartbeat.
    ("service_id", "host_id", "operation", "adapter", "base_url", "upstream_id", "timeout_s",
     "assets", "state", "observed"),
    frozenset({"assets", "state", "observed"}),
    frozenset(),
    wire.encode_service,
    wire.decode_service,
)  # fmt: skip
_ROLES = _Table(
    "roles",
    ("role_id", "definition"),
    frozenset({"definition"}),
    frozenset(),
    lambda role: {"role_id": role.role_id, "definition": wire.encode_role(role)},
    lambda data: wire.decode_role(data["definition"]),
)
_SAMPLES = _Table(
    "benchmark_samples",
    ("benchmark_id", "service_id", "asset_id", "workload", "observed_at", "results"),
    frozenset({"results"}),
    frozenset(),
    wire.encode_sample,
    wire.decode_sample,
)
_KEYS = _Table(
    "api_keys",
    ("key_id", "name", "salt", "hash", "scopes", "models", "disabled", "created_at", "host",
     "max_in_flight", "requests_per_minute", "priority", "weight"),
    frozenset({"scopes", "models"}),
    frozenset({"disabled"}),
    _encode_key,
    _decode_key,
)
# State field -> table, in an order where a row is written after the row it references.
_TABLES = (("hosts", _HOSTS), ("services", _SERVICES), ("roles", _ROLES),
           ("samples", _SAMPLES), ("keys", _KEYS))


def _diff(old: _State, new: _State) -> list[Statement]:
    """The statements that turn the stored `old` state into `new`."""
    out: list[Statement] = []
    for attr, table in _TABLES:
        before, after = getattr(old, attr), getattr(new, attr)
        for key in sorted(before.keys() - after.keys()):
            # The services of a forgotten host go with it by ON DELETE CASCADE.
            if attr != "services" or before[key].host_id in new.hosts:
                out.append(table.delete(key))
        for key, value in after.items():
            # The identity test first: most entries are the very objects of the last state.
            previous = before.get(key)
            if previous is not value and previous != value:
                out.append(table.upsert(value))
    return out


# --- the worker side (runs in the SQLite thread) -------------------------------------------


def _write(db: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    with _transaction(db):
        for sql, params in statements:
            db.execute(sql, params)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _open(path: Path) -> tuple[sqlite3.Connection, _State]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; the limiter stands in for the
    # thread check.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db)
        return db, _load(db)
    except BaseException:
        db.close()
        raise


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this geniehive knows ({SCHEMA_VERSION})"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        with _transaction(db):
            for sql in MIGRATIONS[number - 1]:
                db.execute(sql)
            db.execute(f"PRAGMA user_version={number}")


def _load(db: sqlite3.Connection) -> _State:
    tables = {attr: table.load(db) for attr, table in _TABLES}
    return _State(**tables)
