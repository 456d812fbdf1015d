"""The operator's side of a VM whose location was in doubt: `nova vm recover`, and the
evidence check before `nova vm start`.

`recover(VM, on=HOST)` looks at the VM in the libvirt of every alive host,
lets `core.location.recovery` decide whether it may be done (no other host
runs it, every host answered, HOST holds its definition), removes every other
copy (a half of a broken post-copy, a definition left behind), then boots it
on HOST. It may run on any host of the mesh: the looks and actions go to each
host's libvirt, as a reconcile's do.

`start_refusal(VM)` is why `nova vm start` must not start a VM here: it is in
doubt here, or another host's record lists it active and that host's libvirt
confirms it (or cannot be reached to deny it). A claim that host's libvirt
denies is logged and ignored: a record may be stale, or lie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from novacron.protocol.messages import MemberState

from .core.migration.location import ACTIVE, Recovery, Where, others_claiming, recovery
from .core.migration.saga import ClusterView
from .core.refusals import RefusalKind, Refused
from .migrator import Migrator

log = logging.getLogger("novacron.recovery")


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `nova vm recover` did: the VM runs on `host`, every other copy removed."""

    vm: str
    host: str
    started: bool  # booted now (False: it already ran there)
    removed: Mapping[str, str]  # host -> what its copy's removal did
    was: str | None  # the doubt it settled (None if none was recorded)

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "host": self.host,
            "started": self.started,
            "removed": dict(self.removed),
            "was": self.was,
        }


class Recoveries:
    """`nova vm recover` and the check before `nova vm start` (see the module docstring)."""

    def __init__(self, node_id: str, mesh: Callable[[], ClusterView], migrator: Migrator) -> None:
        self.node_id = node_id
        self._mesh = mesh  # members and records, as this agent sees them
        self._migrator = migrator  # its core knows doubts and running sagas; its locator looks

    async def recover(self, vm: str, host: str) -> Recovered:
        """Run `vm` on `host`, after removing every other copy."""
        self._check_host(host)
        busy = self._migrator.core.busy(vm)
        if busy:
            raise Refused(
                RefusalKind.CONFLICT, f"VM {vm} is migrating: its migration decides where it runs"
            )
        seen = await self._migrator.locator.look(vm, self._alive())
        plan = recovery(seen, host, vm)
        if isinstance(plan, str):
            raise Refused(RefusalKind.CONFLICT, f"cannot recover {vm} on {host}: {plan}")
        removed = await self._remove(vm, plan)
        started = ""
        if plan.start:
            started = await self._migrator.locator.boot(vm, host)
            if started.startswith("failed"):
                raise Refused(RefusalKind.CONFLICT, f"cannot start {vm} on {host}: {started}")
        doubt = self._migrator.core.settle_doubt(vm)
        fields = {"vm": vm, "on": host, "removed": removed, "started": started or "already ran"}
        log.warning("VM recovered by the operator", extra={"fields": fields})
        return Recovered(vm, host, plan.start, removed, doubt.reason if doubt is not None else None)

    def _check_host(self, host: str) -> None:
        """Refuse a host this agent does not know, or does not see alive."""
        if host == self.node_id:
            return
        member = self._mesh().member(host)
        if member is None:
            raise Refused(
                RefusalKind.UNKNOWN,
                f"unknown host: {host} is not in {self.node_id}'s view of the mesh",
            )
        if member.state is not MemberState.ALIVE:
            raise Refused(RefusalKind.CONFLICT, f"host not alive: {host} is {member.state.value}")

    def _alive(self) -> list[str]:
        """Every host whose libvirt must be asked: this one and every alive member."""
        mesh = self._mesh()
        alive = [
            n for n in mesh.records() if (m := mesh.member(n)) and m.state is MemberState.ALIVE
        ]
        return sorted({self.node_id, *alive})

    async def _remove(self, vm: str, plan: Recovery) -> dict[str, str]:
        """Remove the other copies first: nothing is started while one may remain."""
        removed = {}
        for host in plan.remove:
            done = await self._migrator.locator.retire(vm, host, "", force=True)
            if done.startswith("failed"):
                raise Refused(
                    RefusalKind.CONFLICT,
                    f"cannot remove the copy of {vm} on {host}: {done}; nothing started",
                )
            removed[host] = done
        return removed

    async def start_refusal(self, vm: str) -> str | None:
        """Why `vm` must not be started on this host (None: nothing against it)."""
        doubt = self._migrator.core.doubt(vm)
        if doubt is not None:
            return f"VM {vm} is {doubt.reason}"
        others = others_claiming(self._mesh().records(), vm, self.node_id)
        if not others:
            return None
        seen = await self._migrator.locator.look(vm, others)
        for host, presence in sorted(seen.items()):
            if presence.where in ACTIVE:
                return (
                    f"VM {vm} runs on {host} ({presence.detail}): starting it here would run it "
                    "twice"
                )
            if presence.where is Where.UNKNOWN:
                return (
                    f"the mesh says VM {vm} runs on {host}, and {host}'s libvirt cannot be asked "
                    f"({presence.detail}): starting it here could run it twice"
                )
            fields = {"vm": vm, "host": host, "libvirt": presence.detail}
            log.warning(
                "a host's record claims a VM its libvirt does not run", extra={"fields": fields}
            )
        return None
