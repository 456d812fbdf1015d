"""Which of several coordinators on one PostgreSQL database leads: an advisory lock.

The leader holds `pg_advisory_lock(LOCK_KEY)` on a connection of its own and
writes itself into the `leader` row (so followers can redirect to it, and
the fence in `postgres.py` refuses writes from anyone else). PostgreSQL
releases the lock when that connection ends, which it does at once when the
leader's process dies (the kernel closes its socket); a follower trying every
`RETRY` seconds then takes over. A leader that finds its lock connection
broken steps down at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg

from novacron.agent.tasks import cancel_and_wait

log = logging.getLogger("novacron.coordinator.leader")

LOCK_KEY = 0x4E4F5641  # "NOVA": one lock per database
RETRY = 1.0  # seconds between a follower's attempts, and between a leader's checks


class Leadership:
    def __init__(self, url: str, node: str, advertise: str) -> None:
        self._url = url
        self.node = node
        self.advertise = advertise  # this coordinator's URL, for followers' redirects
        self._conn: asyncpg.Connection | None = None
        self._leading = False
        self._leader_url = ""
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[bool], None] = lambda leading: None

    def is_leader(self) -> bool:
        return self._leading

    def leader_url(self) -> str:
        return self._leader_url

    async def start(self) -> None:
        await self._step()
        self._task = asyncio.create_task(self._loop(), name="leadership")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY)
            await self._step()

    async def _step(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, timeout=5)
            if self._leading:
                await self._conn.fetchval("SELECT 1", timeout=5)
                return
            got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
            if got:
                await self._conn.execute(
                    "INSERT INTO leader (id, holder, url, since) VALUES (1, $1, $2, $3) "
                    "ON CONFLICT (id) DO UPDATE SET holder = $1, url = $2, since = $3",
                    self.node,
                    self.advertise,
                    time.time(),
                )
                self._set(True)
            else:
                row = await self._conn.fetchrow("SELECT url FROM leader WHERE id = 1")
                self._leader_url = row["url"] if row is not None else ""
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("leadership check failed", extra={"fields": {"why": str(exc)}})
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.terminate()
            self._conn = None
            self._set(False)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            if leading:
                self._leader_url = ""
            log.info(
                "leadership " + ("taken" if leading else "lost"),
                extra={"fields": {"node": self.node}},
            )
            self.on_change(leading)
