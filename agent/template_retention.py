"""Removing the templates no VM on this host has used for a grace period.

The rule is the core's (`core.images.retention`); this shell looks at what
the store holds and what uses it, now and then, and removes what the rule
names through the store's own `remove`, which refuses a template whose file
is the base of a disk (so a VM created a moment ago keeps its base). Nothing
is decided while libvirt is unreachable or before the first inventory: a VM
this host cannot list may well use a template.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from novacron.protocol.messages import NodeRecord

from .core.images.retention import Retention, used_refs
from .core.templates import parse_ref
from .template_store import InUse, StoreError, TemplateStore, disk_bases

log = logging.getLogger(__name__)

LOOK_EVERY_MAX = 600.0  # seconds between looks at most (a grace of days needs no more)


class TemplateRetention:
    """Looks at the store every so often and removes what has been unused for `grace`."""

    def __init__(
        self,
        store: TemplateStore,
        disk_dir: Path,
        grace: float,
        own_record: Callable[[], NodeRecord | None],
        on_removed: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.disk_dir = disk_dir
        self.retention = Retention(grace)
        self._own_record = own_record
        self._on_removed = on_removed  # republish the record: it lists fewer templates
        self._clock = clock
        self.removed: list[str] = []  # every template this agent removed, oldest first

    @property
    def interval(self) -> float:
        """Seconds between looks: a quarter of the grace, within [1 s, 10 min]."""
        return min(max(self.retention.grace / 4, 1.0), LOOK_EVERY_MAX)

    async def run(self) -> None:
        if self.retention.grace <= 0:
            return  # configured to keep every template
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("cannot look for unused templates: %s", exc)

    async def sweep(self) -> list[str]:
        """One look; the templates removed by it."""
        record = self._own_record()
        if record is None or record.libvirt_unreachable_since:
            return []  # which VMs use what is not known now
        manifests = await asyncio.to_thread(self.store.held)
        bases = await asyncio.to_thread(disk_bases, self.disk_dir)
        in_disks = await asyncio.to_thread(self.store.based_on, manifests, bases)
        used = used_refs((vm.labels for vm in record.vms), in_disks)
        held = {s.manifest.ref for s in manifests}
        removed = []
        for ref in self.retention.look(held, used, self._clock()):
            if await asyncio.to_thread(self._remove, ref):
                removed.append(ref)
        if removed:
            self.removed.extend(removed)
            await self._on_removed()
        return removed

    def _remove(self, ref: str) -> bool:
        name, version = parse_ref(ref)
        if version is None:
            return False  # a held template always has one; without it all would go
        try:
            _, deleted = self.store.remove(name, version, self.disk_dir)
        except InUse as exc:
            log.info("template %s kept: %s", ref, exc)
            return False
        except StoreError as exc:  # removed by hand meanwhile
            log.info("template %s not removed: %s", ref, exc)
            return False
        log.info(
            "template %s removed: no VM on this host used it for %.0f s (%d files deleted)",
            ref,
            self.retention.grace,
            len(deleted),
        )
        return True
