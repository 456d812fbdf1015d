"""The database under the store: SQLite (embedded, WAL) or PostgreSQL, one interface.

Statements are written once with `?` placeholders; the PostgreSQL backend
numbers them (`$1`, `$2`, ...). Rows come back as dicts. `transaction()`
gives a connection whose statements commit together or not at all; only
one transaction runs at a time per coordinator (only the leader writes, so
the database's own locking never has to arbitrate between our writers).

SQLite runs in the coordinator's process: its calls take microseconds on
indexed tables, so they run on the event loop; a lock keeps a transaction's
statements from interleaving with another coroutine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from .schema import LATEST, MIGRATIONS, render

Row = dict[str, Any]


def placeholders(count: int) -> str:
    """`count` `?` placeholders, comma-separated: an IN list or one row of VALUES."""
    return ", ".join("?" * count)


class DatabaseError(Exception):
    """The database cannot be used (unreachable, newer schema, ...); the message says why."""


class Connection(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def execute(self, sql: str, *args: Any) -> int: ...


class Database(Connection, Protocol):
    dialect: str

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...


async def open_database(url: str, data_dir: Path) -> Database:
    """The database `url` names: "" or sqlite:///PATH (default: data_dir/coordinator.db),
    or postgresql://... ; migrated to the latest schema."""
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresDatabase

        db: Database = await PostgresDatabase.connect(url)
    elif url == "" or url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")) if url else data_dir / "coordinator.db"
        db = SqliteDatabase(path)
    else:
        raise DatabaseError(
            f"unknown database URL {url!r}: give postgresql://... or sqlite:///PATH"
        )
    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def migrate(db: Database) -> list[int]:
    """Apply the migrations this database lacks; the versions applied."""
    async with db.transaction() as tx:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at "
            + ("REAL" if db.dialect == "sqlite" else "DOUBLE PRECISION")
            + " NOT NULL)"
        )
        if db.dialect == "postgresql":  # two coordinators starting at once migrate one at a time
            await tx.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
        rows = await tx.fetch("SELECT version FROM schema_migrations")
        have = {int(r["version"]) for r in rows}
        if have and max(have) > LATEST:
            raise DatabaseError(
                f"the database has schema version {max(have)}; this coordinator knows up to "
                f"{LATEST}: upgrade the coordinator"
            )
        applied = []
        for migration in MIGRATIONS:
            if migration.version in have:
                continue
            for statement in migration.statements:
                await tx.execute(render(statement, db.dialect))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                migration.version,
                migration.name,
                time.time(),
            )
            applied.append(migration.version)
    return applied


class SqliteDatabase:
    """SQLite in WAL mode, in the coordinator's process."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return _rows(self._conn.execute(sql, args))

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        async with self._lock:
            return _first(self._conn.execute(sql, args))

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return self._conn.execute(sql, args).rowcount

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    async def close(self) -> None:
        self._conn.close()


class _SqliteTx:
    """Statements inside a transaction (the database's lock is held)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return _rows(self._conn.execute(sql, args))

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return _first(self._conn.execute(sql, args))

    async def execute(self, sql: str, *args: Any) -> int:
        return self._conn.execute(sql, args).rowcount


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    """The cursor's rows as dicts, the column names read once (not once per row: a page
    of VMs or a site's hosts is hundreds of rows, on the event loop's thread)."""
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _first(cursor: sqlite3.Cursor) -> Row | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (our SQL has no `?` in literals)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
