"""How the registry's state maps onto rows, and the statements that turn one state into the next.

Rule: each state dict is one table, its values stored through their `wire` JSON form. A write
stores only what changed: a new entry is an upsert of its whole row, a changed entry an UPDATE
of just the columns that differ (a heartbeat rewrites `last_heartbeat` and `metrics`, not the
host's labels and resources), and a removed entry a DELETE. `diff` also names the keys it
touched, per table, which is what other replicas are told to re-read (registry_follow.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from geniehive import wire
from geniehive.registry_store import Connection, Statement


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


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _encode_key(key: StoredKey) -> dict[str, Any]:
    return {f.name: getattr(key, f.name) for f in fields(key)}


def _decode_key(data: Mapping[str, Any]) -> StoredKey:
    return StoredKey(**{**data, "scopes": tuple(data["scopes"]), "models": tuple(data["models"])})


@dataclass(frozen=True)
class Table:
    """How one state dict maps to one table: through the value's `wire` JSON form."""

    name: str
    columns: tuple[str, ...]  # the primary key first
    json_columns: frozenset[str]
    bool_columns: frozenset[str]
    encode: Callable[[Any], Mapping[str, Any]]
    decode: Callable[[Mapping[str, Any]], Any]

    def row(self, value: Any) -> tuple[Any, ...]:
        encoded = self.encode(value)
        return tuple(
            _json(encoded[c]) if c in self.json_columns else encoded[c] for c in self.columns
        )

    def upsert(self, row: tuple[Any, ...]) -> Statement:
        # An upsert, never INSERT OR REPLACE: REPLACE deletes the old row first, and deleting
        # a host row would cascade to its services.
        names = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        updates = ", ".join(f"{c}=excluded.{c}" for c in self.columns[1:])
        sql = (
            f"INSERT INTO {self.name} ({names}) VALUES ({marks}) "
            f"ON CONFLICT({self.columns[0]}) DO UPDATE SET {updates}"
        )
        return sql, row

    def update(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> Statement | None:
        """An UPDATE of the columns that differ between two rows of one key; None if none."""
        changed = [i for i in range(1, len(self.columns)) if old[i] != new[i]]
        if not changed:
            return None
        sets = ", ".join(f"{self.columns[i]}=?" for i in changed)
        sql = f"UPDATE {self.name} SET {sets} WHERE {self.columns[0]}=?"
        return sql, (*(new[i] for i in changed), new[0])

    def delete(self, key: str) -> Statement:
        return f"DELETE FROM {self.name} WHERE {self.columns[0]}=?", (key,)

    def decode_row(self, row: tuple[Any, ...]) -> Any:
        data = dict(zip(self.columns, row, strict=True))
        for column in self.json_columns:
            value = data[column]
            data[column] = None if value is None else json.loads(value)
        for column in self.bool_columns:
            data[column] = bool(data[column])
        return self.decode(data)

    def load(self, db: Connection, keys: list[str] | None = None) -> dict[str, Any]:
        """Every row, or (PostgreSQL) the rows of `keys` that exist."""
        sql = f"SELECT {', '.join(self.columns)} FROM {self.name}"
        if keys is None:
            rows = db.execute(sql)
        else:
            rows = db.execute(f"{sql} WHERE {self.columns[0]} = ANY(?)", (keys,))
        return {row[0]: self.decode_row(tuple(row)) for row in rows}


HOSTS = Table(
    "hosts",
    ("host_id", "address", "display_name", "labels", "capabilities", "resources", "metrics",
     "last_heartbeat", "registered_at", "is_local"),
    frozenset({"labels", "capabilities", "resources", "metrics"}),
    frozenset({"is_local"}),
    wire.encode_host,
    wire.decode_host,
)  # fmt: skip
SERVICES = Table(
    "services",
    # No api_key column: a secret of the config, re-applied at start. The rest is stored so
    # that a replica routes a node's services as the one that heard the node would.
    ("service_id", "host_id", "operation", "adapter", "base_url", "upstream_id", "timeout_s",
     "assets", "state", "observed", "keep_alive", "dialect", "managed"),
    frozenset({"assets", "state", "observed", "keep_alive"}),
    frozenset(),
    wire.encode_service,
    wire.decode_service,
)  # fmt: skip
ROLES = Table(
    "roles",
    ("role_id", "definition"),
    frozenset({"definition"}),
    frozenset(),
    lambda role: {"role_id": role.role_id, "definition": wire.encode_role(role)},
    lambda data: wire.decode_role(data["definition"]),
)
SAMPLES = Table(
    "benchmark_samples",
    ("benchmark_id", "service_id", "asset_id", "workload", "observed_at", "results"),
    frozenset({"results"}),
    frozenset(),
    wire.encode_sample,
    wire.decode_sample,
)
KEYS = Table(
    "api_keys",
    ("key_id", "name", "salt", "hash", "scopes", "models", "disabled", "created_at", "host",
     "max_in_flight", "requests_per_minute", "priority", "weight"),
    frozenset({"scopes", "models"}),
    frozenset({"disabled"}),
    _encode_key,
    _decode_key,
)
# State field -> table, in an order where a row is written after the row it references.
TABLES = (("hosts", HOSTS), ("services", SERVICES), ("roles", ROLES),
          ("samples", SAMPLES), ("keys", KEYS))


class Tracked(dict[str, Any]):
    """A dict that remembers the keys written or removed since it was made (`changed`), so a
    write's difference is found by looking at those alone, whatever the registry's size."""

    __slots__ = ("changed",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        self.changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed.add(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.changed.add(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        self.changed.update(self)
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self.changed.add(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def diff(old: Any, new: Any) -> tuple[list[Statement], dict[str, list[str]]]:
    """The statements that turn the stored `old` state into `new`, and the keys they touch
    per state field (the services of a forgotten host included). Only the keys a Tracked
    dict of `new` names are looked at; a plain dict is compared whole."""
    out: list[Statement] = []
    touched: dict[str, list[str]] = {}
    fields = new.changed_fields() if hasattr(new, "changed_fields") else None
    for attr, table in TABLES:
        if fields is not None and attr not in fields:
            continue  # a draft's field never used is unchanged
        before, after = getattr(old, attr), getattr(new, attr)
        if isinstance(after, Tracked):
            candidates = after.changed
            before_view = {k: before[k] for k in candidates if k in before}
            after_view = {k: after[k] for k in candidates if k in after}
            before, after = before_view, after_view
        keys: list[str] = []
        for key in sorted(before.keys() - after.keys()):
            keys.append(key)
            # The services of a forgotten host go with it by ON DELETE CASCADE.
            if attr != "services" or before[key].host_id in new.hosts:
                out.append(table.delete(key))
        for key, value in after.items():
            # The identity test first: most entries are the very objects of the last state.
            previous = before.get(key)
            if previous is value or previous == value:
                continue
            keys.append(key)
            row = table.row(value)
            if previous is None:
                out.append(table.upsert(row))
            elif (update := table.update(table.row(previous), row)) is not None:
                out.append(update)
        if keys:
            touched[attr] = keys
    return out, touched
