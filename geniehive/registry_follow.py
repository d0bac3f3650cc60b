"""Following the registry writes of other processes, and choosing the one that leads.

Rule: a registry shared by several processes (PostgreSQL replicas, or the `[server] workers`
of one host on one SQLite file) is the truth; each process's snapshot follows it:
- PostgreSQL: every write ends with a NOTIFY naming the keys it touched (registry.py); each
  replica LISTENs on a connection of its own and re-reads those rows, so a write reaches every
  snapshot within a second. A full re-read every `REREAD_S` (and after every reconnect) is the
  safety net for a notification missed while the connection was down.
- SQLite: `PRAGMA data_version` moves when another process commits (and only then); checked
  every `POLL_S`, a move means a full re-read.

The leader does the work that must happen once per hive (expiring hosts, probing and
discovering the control file's upstreams): on PostgreSQL whoever holds a session advisory lock
on its listening connection (freed by PostgreSQL when that process dies or its connection
drops, then taken by another replica within a second); on SQLite whoever holds an exclusive
`flock` on `<registry file>.leader` (freed by the kernel when the process dies). A process
alone is always the leader. Losing the database loses the lead at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import trio

from geniehive.errors import RegistryUnavailable
from geniehive.registry import Registry
from geniehive.registry_store import (
    CHANNEL,
    LEADER_LOCK,
    PostgresStore,
    SqliteStore,
    StoreError,
    connect_postgres,
    data_version,
)

log = logging.getLogger("geniehive.registry")

REREAD_S = 30.0  # the safety net: a full re-read this often
POLL_S = 0.5  # SQLite: how often data_version is looked at
WAIT_S = 0.5  # PostgreSQL: the longest one wait for notifications lasts
RETRY_S = 1.0  # after losing the database, before reconnecting


class Leadership:
    """Whether this process does the hive's once-only work now (`held`)."""

    def __init__(self, held: bool = True) -> None:
        self.held = held

    def set(self, held: bool, why: str = "") -> None:
        if held != self.held:
            self.held = held
            if held:
                log.info("this replica now leads: it expires hosts and probes and discovers "
                         "the control file's upstreams")
            else:
                log.warning("this replica no longer leads%s", f" ({why})" if why else "")


async def run_follower(
    registry: Registry, leadership: Leadership, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Follow the registry; reports started once leadership was first tried."""
    store = registry.store
    leadership.held = False  # until taken: the first take is logged (PostgreSQL)
    if isinstance(store, PostgresStore):
        await _follow_postgres(registry, store, leadership, task_status)
    elif isinstance(store, SqliteStore):
        await _follow_sqlite(registry, store, leadership, task_status)
    else:  # a store of a test's making: alone, and leading
        task_status.started()


# --- PostgreSQL ------------------------------------------------------------------------------


def touched_by_others(payloads: Sequence[str], origin: str
                      ) -> tuple[bool, dict[str, list[str]] | None]:
    """(anything to re-read, what): the union of the keys the other processes' payloads name;
    None when one of them asks for a full re-read (or cannot be read)."""
    merged: dict[str, set[str]] = {}
    anything = False
    for payload in payloads:
        try:
            data = json.loads(payload)
            if data.get("origin") == origin:
                continue
            anything = True
            touched = data["touched"]
            if touched is None:
                return True, None
            for attr, keys in touched.items():
                merged.setdefault(str(attr), set()).update(str(k) for k in keys)
        except (ValueError, KeyError, TypeError, AttributeError):
            return True, None
    return anything, {attr: sorted(keys) for attr, keys in merged.items()}


def _listen(url: str) -> Any:
    conn = connect_postgres(url)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def _wait(conn: Any, holding: bool) -> tuple[bool, list[str]]:
    """(holding the lead, payloads): take the lead if free, then wait up to WAIT_S for the
    first notification and collect any that came with it."""
    if not holding:
        holding = bool(conn.execute("SELECT pg_try_advisory_lock(%s)",
                                    (LEADER_LOCK,)).fetchone()[0])
    payloads = [n.payload for n in conn.notifies(timeout=WAIT_S, stop_after=1)]
    if payloads:
        payloads += [n.payload for n in conn.notifies(timeout=0.01)]
    return holding, payloads


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # it is being dropped because it broke
        conn.close()


async def _follow_postgres(registry: Registry, store: PostgresStore, leadership: Leadership,
                           task_status: Any) -> None:
    import psycopg

    started = False
    while True:
        conn = None
        try:
            conn = await trio.to_thread.run_sync(_listen, store.url)
            await registry.refresh(None)  # whatever was missed while not listening
            next_reread = trio.current_time() + REREAD_S
            while True:
                holding, payloads = await trio.to_thread.run_sync(
                    _wait, conn, leadership.held, abandon_on_cancel=True)
                leadership.set(holding)
                if not started:
                    started = True
                    task_status.started()
                anything, touched = touched_by_others(payloads, registry.origin)
                if trio.current_time() >= next_reread:
                    anything, touched = True, None
                    next_reread = trio.current_time() + REREAD_S
                if anything:
                    await registry.refresh(touched)
        except (StoreError, RegistryUnavailable, psycopg.Error) as exc:
            leadership.set(False, f"registry unreachable: {exc}")
            log.warning("registry follower: %s; retrying in %.0f s", exc, RETRY_S)
        finally:
            if conn is not None:
                leadership.held = False  # the lock goes with the connection
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close, conn)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(RETRY_S)


# --- SQLite ----------------------------------------------------------------------------------


class FileLock:
    """An exclusive, non-blocking flock on a file beside the registry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_take(self) -> bool:
        if self._file is not None:
            return True
        handle = open(self.path, "ab")  # noqa: SIM115 - held open as long as the lead is
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


async def _follow_sqlite(registry: Registry, store: SqliteStore, leadership: Leadership,
                         task_status: Any) -> None:
    lock = FileLock(Path(os.fspath(store.path) + ".leader"))
    leadership.held = lock.try_take()  # a process alone leads from the start, quietly
    # The counter first, then what others wrote since this process loaded the file: no
    # commit falls between the two.
    seen = await store.run(data_version)
    await registry.refresh(None)
    task_status.started()
    try:
        while True:
            await trio.sleep(POLL_S)
            if not leadership.held:
                leadership.set(lock.try_take())
            try:
                now = await store.run(data_version)
                if now != seen:
                    seen = now
                    await registry.refresh(None)
            except (StoreError, RegistryUnavailable) as exc:
                log.warning("registry follower: %s", exc)
    finally:
        lock.release()
