"""The registry: hosts, services, roles, benchmark samples and API keys, kept in a database.

Rule: the database is a store (registry_store.py: a SQLite file, or PostgreSQL shared by
several control replicas); every call to it runs off the event loop. Writes are serialised by
a lock: each computes the next state in memory, writes the difference in one transaction
(registry_rows.py: only what changed), and only after COMMIT publishes a new immutable
`Snapshot` (version + 1). So when a write returns, `registry.snapshot` shows it; a write that
changes nothing publishes nothing. Readers only read `registry.snapshot`; the request path never
waits on the database. At open the database is the truth: it is migrated forward and loaded
whole into memory. Writes by other replicas or processes arrive through `refresh`
(registry_follow.py calls it), which re-reads what they touched and publishes likewise.

Exceptions:
    RegistryError            the database cannot be opened, or is newer (stops the daemon)
    errors.RegistryUnavailable   a write the database did not take (answered 503)
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
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from geniehive.assets import merge_assets
from geniehive.config import RegistryConfig
from geniehive.errors import RegistryUnavailable, StartupError
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
from geniehive.registry_rows import TABLES, StoredKey, diff
from geniehive.registry_state import (
    State,
    _drop_old_samples,
    _same_services,
    _snapshot,
)
from geniehive.registry_store import (
    CHANNEL,
    PostgresStore,
    SqliteStore,
    Store,
    StoreError,
    transaction,
    write,
)

T = TypeVar("T")
__all__ = ["StoredKey"]
_write = write  # the registry's one write (tests replace it to inject failures)
_transaction = transaction

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
    # 5: what a node says of a service besides its assets, so every replica routes it alike.
    (
        "ALTER TABLE services ADD COLUMN keep_alive TEXT",
        "ALTER TABLE services ADD COLUMN dialect TEXT NOT NULL DEFAULT 'native'",
        "ALTER TABLE services ADD COLUMN managed TEXT",
    ),
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


BEAT_BATCH_S = 0.02  # how long the first heartbeat of a group waits for others


class _Beat:
    """A heartbeat waiting for its group's commit, and then what became of it."""

    __slots__ = ("done", "error", "host_id", "metrics", "now", "services")

    def __init__(self, host_id: str, now: float, metrics: Mapping[str, Any],
                 services: Sequence[Service] | None) -> None:
        self.host_id, self.now, self.metrics, self.services = host_id, now, metrics, services
        self.done = trio.Event()
        self.error: BaseException | None = None


class Registry:
    """The live registry. Build it with `open_registry`."""

    def __init__(self, store: Store, state: State, *, retention_s: float = 30 * 86400,
                 origin: str = "") -> None:
        self.store = store
        self._lock = trio.Lock()
        self._beats: list[_Beat] = []  # the heartbeats of the group being gathered
        self.beat_batch_s = BEAT_BATCH_S
        self._state = state
        self._snapshot = _snapshot(1, state)
        self.published = trio.Event()  # set (then replaced) when a new snapshot is published
        self.retention_s = retention_s  # benchmark samples older than this are deleted
        self.origin = origin  # this process, as its NOTIFY payloads name it
        # Called after a refresh took in the named keys of another process's write.
        self.on_keys_refreshed: Callable[[], None] | None = None

    @property
    def shared(self) -> bool:
        """Whether other processes may write the same database (PostgreSQL replicas)."""
        return self.store.dialect == "postgresql"

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def api_keys(self) -> Mapping[str, StoredKey]:
        """The stored keys by key id, read from memory (safe on the request path)."""
        return MappingProxyType(self._state.keys)

    async def sync_local(self, host: Host, services: Sequence[Service]) -> None:
        """Make `host` the one local host with exactly `services`. Raises ServiceConflict
        if a service id belongs to a node.

        A service that is still the same server keeps what discovery and the prober last
        stored (the configured assets merged over the discovered ones, the load, the
        health): a replica or worker starting must not undo what the one doing the discovery
        found (its next pass replaces them all).
        """
        async with self._lock:
            state = self._state.edit()
            for other in [h for h in state.hosts.values() if h.is_local]:
                if other.host_id != host.host_id:
                    _drop_host(state, other.host_id)
            _put_host(state, replace(host, is_local=True))
            services = [_keep_discovered(state.services.get(s.service_id), s)
                        for s in services]
            _replace_services(state, host.host_id, services)
            await self._commit(state)

    async def register_host(self, host: Host, services: Sequence[Service]) -> None:
        """Upsert `host` and replace its services. Raises ServiceConflict (nothing written)."""
        async with self._lock:
            state = self._state.edit()
            _put_host(state, host)
            _replace_services(state, host.host_id, services,
                              self._snapshot.services_by_host.get(host.host_id, ()))
            await self._commit(state)

    async def heartbeat(
        self,
        host_id: str,
        now: float,
        metrics: Mapping[str, Any],
        services: Sequence[Service] | None = None,
    ) -> None:
        """Record a heartbeat; with `services`, replace the host's services.

        Raises UnknownHost, ServiceConflict (nothing of this heartbeat written). Heartbeats
        are committed in groups: the first to arrive waits `beat_batch_s` for others, then
        writes them all in one transaction and publishes one snapshot; each returns once its
        group is committed (or raises what refused it, or the write's RegistryUnavailable).
        """
        beat = _Beat(host_id, now, metrics, services)
        self._beats.append(beat)
        if len(self._beats) == 1:  # no group is gathering: this one gathers and writes it
            with trio.CancelScope(shield=True):  # the others of its group wait on it
                await self._write_beats()
        else:
            await beat.done.wait()
        if beat.error is not None:
            raise beat.error

    async def _write_beats(self) -> None:
        group: list[_Beat] = []
        try:
            await trio.sleep(self.beat_batch_s)
            async with self._lock:
                group, self._beats = self._beats, []
                state = self._state.edit()
                for beat in group:
                    try:
                        self._apply_beat(state, beat)
                    except (RegistryRefusal, ValueError) as exc:
                        beat.error = exc
                await self._commit(state)
        except BaseException as exc:
            if not group:  # failed before taking its group: nobody else would release it
                group, self._beats = self._beats, []
            for beat in group:
                if beat.error is None:
                    beat.error = (RegistryUnavailable(str(exc))
                                  if isinstance(exc, RegistryUnavailable) else
                                  RuntimeError("the heartbeat's write failed"))
            raise
        finally:
            for beat in group:
                beat.done.set()

    def _apply_beat(self, state: State, beat: _Beat) -> None:
        """One heartbeat's edit of the group's draft; raises before touching it."""
        host = state.hosts.get(beat.host_id)
        if host is None:
            raise UnknownHost(beat.host_id)
        if "services" in (state.changed_fields() or ()):  # an earlier beat of the group wrote some
            held: Sequence[str] | None = None
            same = beat.services is None or _same_services(
                state, [sid for sid, s in state.services.items()
                        if s.host_id == beat.host_id], beat.services)
        else:
            held = self._snapshot.services_by_host.get(beat.host_id, ())
            same = beat.services is None or _same_services(self._state, held, beat.services)
        if not same:
            assert beat.services is not None
            _check_services(state, beat.host_id, beat.services)
        state.hosts[beat.host_id] = replace(
            host, last_heartbeat=beat.now, metrics=MappingProxyType(dict(beat.metrics)))
        if not same:
            assert beat.services is not None
            _replace_services(state, beat.host_id, beat.services, held)

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

    async def set_service_health(self, service_id: str, health: str) -> None:
        """Store the prober's verdict on a control-file service, for the other replicas
        (routing reads it as a node's own report). Raises UnknownService."""
        async with self._lock:
            state = self._state.edit()
            service = _service(state, service_id)
            if service.state.health != health:
                state.services[service_id] = replace(
                    service, state=replace(service.state, health=health))
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
        """Add benchmark samples, replacing any with the same benchmark id; samples older
        than the retention go in the same write (and are not added)."""
        async with self._lock:
            state = self._state.edit()
            for sample in samples:
                state.samples[sample.benchmark_id] = sample
            _drop_old_samples(state, self.retention_s, time.time())
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

    async def refresh(self, touched: Mapping[str, Sequence[str]] | None) -> bool:
        """Take in what another process committed: re-read the keys it `touched` (state field
        -> keys), or everything (None). Entries equal to what is held stay the same objects.
        Publishes a snapshot when anything changed; returns whether it did."""
        async with self._lock:
            fresh = await self._run(_read, None if touched is None else dict(touched))
            state = self._state.edit()
            changed = False
            for attr, _table in TABLES:
                if touched is not None and attr not in touched:
                    continue
                held: dict[str, Any] = getattr(state, attr)
                rows: dict[str, Any] = getattr(fresh, attr)
                keys = held.keys() | rows.keys() if touched is None else touched.get(attr, ())
                for key in keys:
                    row = rows.get(key)
                    mine = held.get(key)
                    if row is None:
                        changed |= held.pop(key, None) is not None
                        continue
                    if attr == "services" and mine is not None and mine.api_key:
                        row = replace(row, api_key=mine.api_key)  # never stored
                    if mine != row:
                        held[key] = row
                        changed = True
            if changed:
                self._publish(state, touched)
                if (touched is None or "keys" in touched) and self.on_keys_refreshed:
                    self.on_keys_refreshed()
            return changed

    async def _commit(self, state: State) -> None:
        """Write what changed in one transaction, then publish. Caller holds the lock."""
        statements, touched = diff(self._state, state)
        if not statements:
            return
        if self.shared:  # tell the other replicas what to re-read (registry_follow.py)
            statements.append(("SELECT pg_notify(?, ?)", (CHANNEL, _payload(self.origin,
                                                                             touched))))
        await self._run(_write, statements)
        # No checkpoint from here on: a cancelled caller cannot leave the two apart.
        self._publish(state, touched)

    def _publish(self, state: State, changed: Mapping[str, Collection[str]] | None) -> None:
        """Publish `state`; `changed`: the keys that changed per state field (None: any)."""
        previous = self._snapshot
        state = self._state = state.committed()
        self._snapshot = (_snapshot(previous.version + 1, state) if changed is None else
                          _snapshot(previous.version + 1, state, previous, changed))
        published, self.published = self.published, trio.Event()
        published.set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self.store.run(fn, *args)
        except StoreError as exc:
            raise RegistryUnavailable(str(exc)) from exc


@asynccontextmanager
async def open_registry(where: Path | RegistryConfig, *, origin: str = ""
                        ) -> AsyncIterator[Registry]:
    """Open (creating and migrating as needed) the registry: a SQLite file at a path, or the
    database a RegistryConfig names. `origin` names this process to the other replicas.

    Raises RegistryError if the database cannot be opened or its schema is newer than this
    code.
    """
    config = where if isinstance(where, RegistryConfig) else RegistryConfig(where)
    store: SqliteStore | PostgresStore = (
        PostgresStore(config.url) if config.url is not None else SqliteStore(config.path))
    try:
        try:
            await store.open(MIGRATIONS)
            state = await store.run(_read, None)
        except StoreError as exc:
            raise RegistryError(str(exc)) from exc
        registry = Registry(store, state, retention_s=config.benchmark_retention_days * 86400,
                            origin=origin)
        if _drop_old_samples(edited := state.edit(), registry.retention_s, time.time()):
            async with registry._lock:
                await registry._commit(edited)
        yield registry
    finally:
        await store.aclose()


def _read(db: Any, touched: dict[str, Sequence[str]] | None) -> State:
    """The stored state, whole (touched None) or the rows of the touched keys."""
    if touched is None:
        return State(**{attr: table.load(db) for attr, table in TABLES})
    return State(**{attr: table.load(db, list(touched[attr])) if touched.get(attr) else {}
                     for attr, table in TABLES})


def _payload(origin: str, touched: Mapping[str, Sequence[str]]) -> str:
    """What a NOTIFY says: who wrote and the keys touched; past PostgreSQL's 8,000-byte
    limit, just "re-read everything"."""
    text = json.dumps({"origin": origin, "touched": touched}, separators=(",", ":"))
    if len(text) > 7000:
        return json.dumps({"origin": origin, "touched": None})
    return text


# --- state edits (pure, on the event loop) -------------------------------------------------


def _put_host(state: State, host: Host) -> None:
    """Upsert a host, keeping the time it first registered."""
    old = state.hosts.get(host.host_id)
    if old is not None and old.registered_at is not None:
        host = replace(host, registered_at=old.registered_at)
    state.hosts[host.host_id] = host


def _drop_host(state: State, host_id: str) -> None:
    del state.hosts[host_id]
    for service_id in [s.service_id for s in state.services.values() if s.host_id == host_id]:
        del state.services[service_id]


def _check_services(state: State, host_id: str, services: Sequence[Service]) -> None:
    """Raise ServiceConflict or ValueError if `host_id` may not have exactly `services`."""
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


def _replace_services(state: State, host_id: str, services: Sequence[Service],
                      old_ids: Sequence[str] | None = None) -> None:
    """Give `host_id` exactly `services` (`old_ids`: the ones it has now, when known from
    the snapshot's index). Raises ServiceConflict, ValueError (nothing changed)."""
    _check_services(state, host_id, services)
    if old_ids is None:
        old_ids = [sid for sid, s in state.services.items() if s.host_id == host_id]
    old = {sid: state.services[sid] for sid in old_ids if sid in state.services}
    for service_id in old:
        del state.services[service_id]
    for service in services:
        previous = old.get(service.service_id)
        if previous is not None and previous.state.availability != service.state.availability:
            kept = replace(service.state, availability=previous.state.availability)
            service = replace(service, state=kept)
        state.services[service.service_id] = service


def _service(state: State, service_id: str) -> Service:
    service = state.services.get(service_id)
    if service is None:
        raise UnknownService(service_id)
    return service


def _last_seen(host: Host) -> float:
    seen = host.last_seen
    return seen if seen is not None else float("-inf")


def _keep_discovered(stored: Service | None, configured: Service) -> Service:
    """`configured`, keeping the assets, load and health stored for the same server."""
    if stored is None or (stored.adapter, stored.base_url, stored.operation) != (
            configured.adapter, configured.base_url, configured.operation):
        return configured
    return replace(configured, assets=merge_assets(configured.assets, stored.assets),
                   observed=stored.observed,
                   state=replace(configured.state, health=stored.state.health))
