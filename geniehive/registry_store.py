"""Where the registry keeps its rows: a SQLite file (the default) or a PostgreSQL database.

Rule: with registry.py and registry_responses.py, the only code that imports sqlite3 or
psycopg. Both stores hand the registry's worker functions one connection object with the same
small surface (`execute(sql, params)` returning a cursor to iterate or `fetchone()`, and
`rowcount`), so the statements are written once, in SQLite's spelling (`?` marks,
`BEGIN IMMEDIATE`); the PostgreSQL connection translates them. Every call runs off the event
loop, one at a time per store (a `CapacityLimiter(1)`). Migrations are the registry's list,
applied in order; on PostgreSQL under a transaction-scoped advisory lock, so replicas starting
together migrate once.

A lost PostgreSQL connection is reopened on the next call; until then every call fails with
StoreError (the registry refuses writes; readers keep the last snapshot).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")
Statement = tuple[str, tuple[Any, ...]]

# Advisory lock keys (any 64-bit numbers, fixed for the hive): migration, leadership.
MIGRATION_LOCK = 0x6765_6E69_6501
LEADER_LOCK = 0x6765_6E69_6502
CHANNEL = "geniehive_registry"  # NOTIFY channel of committed writes (registry_follow.py)


class StoreError(Exception):
    """The storage failed (the database is unreachable, or refused a statement)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Store(Protocol):
    dialect: str  # "sqlite" or "postgresql"
    description: str  # for messages: the file, or the database (without password)

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def aclose(self) -> None: ...


# --- SQLite ----------------------------------------------------------------------------------


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)
        self._limiter = trio.CapacityLimiter(1)
        self._db: sqlite3.Connection | None = None

    async def open(self, migrations: Sequence[Sequence[str]]) -> None:
        try:
            self._db = await trio.to_thread.run_sync(
                _open_sqlite, self.path, migrations, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open registry {self.path}: {exc}") from exc

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, self._db, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"registry storage failed: {exc}") from exc

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close, limiter=self._limiter)


def _open_sqlite(path: Path, migrations: Sequence[Sequence[str]]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; the limiter stands in for the
    # thread check. A generous busy timeout: the processes of `[server] workers` share it.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate_sqlite(db, migrations)
        return db
    except BaseException:
        db.close()
        raise


def _migrate_sqlite(db: sqlite3.Connection, migrations: Sequence[Sequence[str]]) -> None:
    db.execute("BEGIN IMMEDIATE")  # processes starting together migrate one after the other
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        check_version(version, len(migrations))
        for number in range(version + 1, len(migrations) + 1):
            for sql in migrations[number - 1]:
                db.execute(sql)
            db.execute(f"PRAGMA user_version={number}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def data_version(db: sqlite3.Connection) -> int:
    """Changes whenever another connection (another process) commits to the file."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def check_version(version: int, known: int) -> None:
    if version > known:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this geniehive knows ({known})"
        )


@contextmanager
def transaction(db: Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def write(db: Connection, statements: Sequence[Statement]) -> None:
    with transaction(db):
        for sql, params in statements:
            db.execute(sql, params)


# --- PostgreSQL ------------------------------------------------------------------------------

_MARK = re.compile(r"\?")
_REAL = re.compile(r"\bREAL\b")


def postgres_ddl(sql: str) -> str:
    """A migration statement in PostgreSQL's spelling: SQLite's REAL is 8 bytes, PostgreSQL's
    4 (too coarse for a timestamp)."""
    return _REAL.sub("DOUBLE PRECISION", sql)


class PgConnection:
    """A psycopg connection (autocommit, so BEGIN/COMMIT are ours) speaking SQLite's dialect."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if sql == "BEGIN IMMEDIATE":
            sql = "BEGIN"
        elif params:
            sql = _MARK.sub("%s", sql.replace("%", "%%"))
            # Booleans live in INTEGER columns (SQLite has no other kind).
            params = tuple(int(p) if isinstance(p, bool) else p for p in params)
        cursor: Cursor = self.conn.execute(sql, params or None)
        return cursor


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # the optional extra is not installed
        raise StoreError(
            "the PostgreSQL registry needs psycopg: pip install 'geniehive[postgresql]'"
        ) from exc
    return psycopg


def connect_postgres(url: str) -> Any:
    """A new autocommit connection; raises StoreError."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5,
                               application_name="geniehive")
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach the PostgreSQL registry: {_first_line(exc)}") from exc


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.description = redact(url)
        self._limiter = trio.CapacityLimiter(1)
        self._conn: PgConnection | None = None

    async def open(self, migrations: Sequence[Sequence[str]]) -> None:
        await trio.to_thread.run_sync(self._open_and_migrate, migrations, limiter=self._limiter)

    def _open_and_migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        conn = self._connection()
        try:
            with transaction(conn):
                conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS geniehive_schema "
                             "(version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM geniehive_schema").fetchone()
                version = 0 if row is None else int(row[0])
                if row is None:
                    conn.execute("INSERT INTO geniehive_schema (version) VALUES (0)")
                check_version(version, len(migrations))
                for number in range(version + 1, len(migrations) + 1):
                    for sql in migrations[number - 1]:
                        conn.execute(postgres_ddl(sql))
                    conn.execute("UPDATE geniehive_schema SET version=?", (number,))
        except sqlite3.DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        except _psycopg().Error as exc:
            self._drop()
            raise StoreError(f"cannot migrate the PostgreSQL registry: {_first_line(exc)}") \
                from exc

    def _connection(self) -> PgConnection:
        if self._conn is None or self._conn.conn.closed:
            self._conn = PgConnection(connect_postgres(self.url))
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing a broken one may fail; it is gone
                conn.conn.close()

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        psycopg = _psycopg()
        conn = self._connection()
        try:
            return fn(conn, *args)
        except psycopg.OperationalError as exc:
            self._drop()  # reconnect on the next call
            raise StoreError(f"registry storage failed: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            if conn.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._drop()
            raise StoreError(f"registry storage failed: {_first_line(exc)}") from exc

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._call, fn, *args, limiter=self._limiter)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._drop, limiter=self._limiter)
