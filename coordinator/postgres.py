"""PostgreSQL under the store (asyncpg): for several coordinators on one database.

Statements use the store's `?` placeholders, numbered here. Transactions take
turns within the process (see `_writes`). A transaction on
a coordinator that writes as the leader first checks that the `leader` row
still names it (`fence`): a leader that lost its lock (its lock connection
died, another took over) can no longer commit anything, even if it has not
noticed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from .db import Connection, DatabaseError, Row, numbered

# Connections, all opened at the start and never closed for being idle: a burst after a
# quiet spell does not wait for new backends to start.
POOL_SIZE = 8


class NotLeader(DatabaseError):
    """A write from a coordinator that no longer leads."""


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.fence: str | None = None  # the node id writes must lead as (None: not checked)
        # Every write stamps the one global index row, so writes are serial anyway: taking
        # turns here keeps waiting writers from holding pool connections that reads need.
        self._writes = asyncio.Lock()

    @classmethod
    async def connect(cls, url: str) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                max_inactive_connection_lifetime=0,
                reset=_keep_session,
                timeout=10,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from None
        assert pool is not None
        return cls(pool)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows = await self._pool.fetch(numbered(sql), *args)
        return [dict(r) for r in rows]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self._pool.fetchrow(numbered(sql), *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._pool.execute(numbered(sql), *args)
        return _count(status)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._writes, self._pool.acquire() as conn, conn.transaction():
            tx = _PostgresTx(conn)
            if self.fence is not None:
                row = await tx.fetchone("SELECT holder FROM leader WHERE id = 1 FOR SHARE")
                if row is None or row["holder"] != self.fence:
                    raise NotLeader("this coordinator no longer leads; its write was refused")
            yield tx

    async def close(self) -> None:
        await self._pool.close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes through on its way back to the pool, after asyncpg's own
    rollback of a transaction left open: nothing. The coordinator sets no session state on
    its pooled connections (no SET, LISTEN, cursors or advisory locks: the leader's lock has
    a connection of its own), and asyncpg's default reset (RESET ALL, UNLISTEN *, ...) is a
    round trip after every statement outside a transaction, doubling each read's."""


class _PostgresTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(numbered(sql), *args)]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(numbered(sql), *args)
        return dict(row) if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return _count(await self._conn.execute(numbered(sql), *args))


def _count(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
