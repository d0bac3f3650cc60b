"""Stored responses of the Responses API (`store: true`), kept in the registry's database.

Rule: a registry module. These rows are per-request data read by id: they are never loaded
into the snapshot, and every call runs on the registry store's worker, off the event loop
(SQLite or PostgreSQL: the statements are SQLite's spelling, registry_store.py translates).
A row lives `responses.retention_s` seconds of wall-clock time; an expired row is never
returned, and expired rows are deleted by the next write (a cheap indexed DELETE), so no task
is needed.
A retention of 0 stores nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geniehive.registry import Registry
    from geniehive.registry_store import Connection

# Registry migration 4 (registry.MIGRATIONS lists it): the table and its expiry index.
RESPONSES_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE responses (
        response_id TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL,
        input TEXT NOT NULL, response TEXT NOT NULL)""",
    "CREATE INDEX responses_by_expiry ON responses(expires_at)",
)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored answer: the Responses object and the whole input it answered (the input
    items of its chain included, so a follow-up rebuilds the conversation from one row)."""

    response_id: str
    input: list[Any]
    response: dict[str, Any]


class ResponseStore:
    """The stored responses; `clock` is the wall clock (seconds), injectable for tests."""

    def __init__(
        self, registry: Registry, retention_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry
        self.retention_s = retention_s
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    async def put(self, response_id: str, items: list[Any], response: dict[str, Any]) -> None:
        """Store (or replace) a response; expired rows go in the same call. Nothing is
        stored when retention is 0."""
        if not self.enabled:
            return
        now = self.clock()
        row = (response_id, now, now + self.retention_s, _json(items), _json(response))
        await self._run(_put, row, now)

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None when it is unknown or expired."""
        if not self.enabled:
            return None
        return await self._run(_get, response_id, self.clock())

    async def delete(self, response_id: str) -> bool:
        """Delete a response; False when there was none (or it had expired)."""
        return await self._run(_delete, response_id, self.clock())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.registry._run(fn, *args)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- the worker side (runs in the SQLite thread) -------------------------------------------


def _put(db: Connection, row: tuple[Any, ...], now: float) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
        db.execute(
            "INSERT INTO responses (response_id, created_at, expires_at, input, response) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(response_id) DO UPDATE SET "
            "created_at=excluded.created_at, expires_at=excluded.expires_at, "
            "input=excluded.input, response=excluded.response",
            row,
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _get(db: Connection, response_id: str, now: float) -> StoredResponse | None:
    found = db.execute(
        "SELECT input, response FROM responses WHERE response_id=? AND expires_at > ?",
        (response_id, now),
    ).fetchone()
    if found is None:
        return None
    return StoredResponse(response_id, json.loads(found[0]), json.loads(found[1]))


def _delete(db: Connection, response_id: str, now: float) -> bool:
    cursor = db.execute(
        "DELETE FROM responses WHERE response_id=? AND expires_at > ?", (response_id, now)
    )
    return cursor.rowcount > 0
