"""Draining a host: no new VMs, then every running VM moved away live.

`nova host drain` sets the flag; the host's record carries `draining`, so
every other agent stops proposing VMs to it and this agent refuses creates
and inbound migrations. A loop then starts a migration for each running VM
(target chosen by `MigrationCore.place`, purpose "drain") as long as the
per-host outbound limit allows, and retries VMs that found no target or whose
migration failed, after `RETRY_AFTER` seconds. The flag is kept in a file
under the data directory, so a drain survives an agent restart; `undrain`
clears it (migrations already running finish).

Stopped VMs are not moved (they have no memory to move live); the status
lists them, so the operator knows what is left on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .api import Refusal
from .migrator import Migrator

log = logging.getLogger("novacron.drain")

INTERVAL = 1.0  # seconds between looks at what is left to move
RETRY_AFTER = 10.0  # seconds before a VM that could not be moved is tried again


class Drain:
    """One host's drain: the persisted flag and the loop that empties the host."""

    def __init__(
        self,
        migrator: Migrator,
        state_file: Path,
        *,
        publish: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self._migrator = migrator
        self._state_file = state_file  # exists while the host is draining
        self._publish = publish  # republishes this host's record (with the flag)
        self._clock = clock
        self.draining = state_file.exists()
        self._task: asyncio.Task[None] | None = None
        self._moves: dict[str, str] = {}  # VM -> id of the drain migration moving it
        self._blocked: dict[str, tuple[str, float]] = {}  # VM -> (why, when to retry)

    async def start(self) -> None:
        """Resume a drain that was under way when the agent stopped."""
        if self.draining:
            log.info("resuming drain", extra={"fields": {"node": self._migrator.node_id}})
            self._spawn()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain(self) -> dict[str, Any]:
        if not self.draining:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_file.write_text("draining\n")
            self.draining = True
            self._moves.clear()
            self._blocked.clear()
            await self._publish()
            log.info("drain started", extra={"fields": {"node": self._migrator.node_id}})
        if self._task is None or self._task.done():
            self._spawn()
        return self.status()

    async def undrain(self) -> dict[str, Any]:
        if self.draining:
            self._state_file.unlink(missing_ok=True)
            self.draining = False
            await self.close()
            self._task = None
            await self._publish()
            log.info("drain ended", extra={"fields": {"node": self._migrator.node_id}})
        return self.status()

    def status(self) -> dict[str, Any]:
        """What a drain has done and what is left, for `nova host drain`."""
        vms = self._migrator.local_vms()
        running = sorted(name for name, state in vms.items() if state == "running")
        migrations = {m["migration_id"]: m for m in self._migrator.migrations()}
        moving = [
            {"vm": vm, **_brief(migrations[mid])}
            for vm, mid in sorted(self._moves.items())
            if mid in migrations and not migrations[mid]["outcome"]
        ]
        moved = sorted(
            vm
            for vm, mid in self._moves.items()
            if mid in migrations and migrations[mid]["outcome"] == "committed"
        )
        return {
            "node_id": self._migrator.node_id,
            "draining": self.draining,
            "done": self.draining and not running,
            "running": running,
            "moving": moving,
            "moved": moved,
            "blocked": {vm: why for vm, (why, _) in sorted(self._blocked.items())},
            "not_moved": {n: s for n, s in sorted(vms.items()) if s != "running"},
        }

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="drain")

    async def _loop(self) -> None:
        while self.draining:
            await self._step()
            await asyncio.sleep(INTERVAL)

    async def _step(self) -> None:
        """Start what the outbound limit allows; note why the rest must wait."""
        now = self._clock()
        core = self._migrator.core
        self._note_failures(now)
        for vm, state in sorted(self._migrator.local_vms().items()):
            if state != "running" or core.busy(vm):
                continue
            if vm in self._blocked and now < self._blocked[vm][1]:
                continue
            if core.outbound() >= core.config.limits.max_outbound:
                return
            await self._move(vm, now)

    def _note_failures(self, now: float) -> None:
        """A drain migration that failed: say why, and wait before trying that VM again."""
        for vm, mid in list(self._moves.items()):
            row = self._migrator.migration(mid)
            if row is not None and row["outcome"] and row["outcome"] != "committed":
                why = f"migration {mid} {row['outcome']}: {row['reason'] or 'no reason given'}"
                self._blocked[vm] = (why, now + RETRY_AFTER)
                del self._moves[vm]

    async def _move(self, vm: str, now: float) -> None:
        placement = self._migrator.core.place(vm)
        if placement.target is None:
            self._blocked[vm] = (placement.reason, now + RETRY_AFTER)
            return
        try:
            mid = await self._migrator.start_migration(vm, placement.target, {}, purpose="drain")
        except Refusal as exc:
            self._blocked[vm] = (str(exc), now + RETRY_AFTER)
            return
        self._blocked.pop(vm, None)
        self._moves[vm] = mid


def _brief(migration: dict[str, Any]) -> dict[str, Any]:
    return {
        "migration_id": migration["migration_id"],
        "target": migration["target"],
        "phase": migration["phase"],
        "percent": migration["percent"],
    }
