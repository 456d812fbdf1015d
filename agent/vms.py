"""VM lifecycle on this host for the local API: create, start, stop, delete.

The hypervisor adapter does the work; this module takes a request the API has
checked (`api_requests`: a `VmSpec`, a timeout), checks what the adapter cannot
know (this host is draining, the VM is migrating, the host has no room) and
turns every failure into a `Refused` of a kind (`RefusalKind`) with a sentence
for the operator. Nothing changes when a request is refused. The inventory sees
the result through libvirt's events, so the mesh learns of a new or stopped VM
within moments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .core.refusals import RefusalKind, Refused
from .hypervisor import Hypervisor, LibvirtUnreachable, UnknownVm, VmExists
from .vmspec import BadSpec, HypervisorError, VmSpec

# What each control answers: the API sends it as JSON (its fields, in this order), the
# site link reads it for the coordinator's outcome.


@dataclass(frozen=True, slots=True)
class VmCreated:
    name: str
    uuid: str  # libvirt's
    started: bool  # asked to start, and it did
    host: str  # this host's id


@dataclass(frozen=True, slots=True)
class VmStarted:
    name: str
    started: bool  # False: it was running already
    host: str


@dataclass(frozen=True, slots=True)
class VmStopped:
    name: str
    stopped: str  # how: graceful, forced, or not running (`hypervisor.StopOutcome`)
    host: str


@dataclass(frozen=True, slots=True)
class VmDeleted:
    name: str
    deleted: bool
    removed: list[str]  # the disk files removed with it


class VmControl:
    """Implements `api.VmLifecycle` over a `Hypervisor` on this host's libvirtd."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        node_id: str,
        *,
        draining: Callable[[], bool],
        migrating: Callable[[str], bool],
        free_memory_mib: Callable[[], int | None],
        start_refusal: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.node_id = node_id
        self._draining = draining  # this host takes no new VMs while draining
        self._migrating = migrating  # a VM with a running migration is left alone
        self._free_memory_mib = free_memory_mib  # None until the first inventory
        self._start_refusal = start_refusal  # why a VM must not start here (runs elsewhere)

    async def create(self, spec: VmSpec, start: bool = False) -> VmCreated:
        if self._draining():
            raise Refused(RefusalKind.CONFLICT, f"host draining: {self.node_id} takes no new VMs")
        free = self._free_memory_mib()
        if free is not None and spec.memory_mib > free:
            raise Refused(
                RefusalKind.CONFLICT,
                f"no capacity: {self.node_id} has {max(free, 0)} MiB free, "
                f"{spec.memory_mib} MiB needed",
            )
        info = await self._run(self.hypervisor.create(spec))
        started = start and await self._run(self.hypervisor.start(spec.name))
        return VmCreated(info.name, info.uuid, started, self.node_id)

    async def start(self, name: str) -> VmStarted:
        why = await self._start_refusal(name) if self._start_refusal is not None else None
        if why:
            raise Refused(RefusalKind.CONFLICT, why)
        started = await self._run(self.hypervisor.start(name))
        return VmStarted(name, started, self.node_id)

    async def stop(self, name: str, timeout: float) -> VmStopped:
        """Power `name` off, destroying it if the guest has not after `timeout` seconds."""
        self._not_migrating(name, "stop")
        how = await self._run(self.hypervisor.stop(name, timeout))
        return VmStopped(name, how, self.node_id)

    async def delete(self, name: str, force: bool = False) -> VmDeleted:
        """Remove `name` and its disks; a running VM only with `force`."""
        self._not_migrating(name, "delete")
        if not force:
            vms = await self._run(self.hypervisor.list())
            if any(vm.name == name and vm.state == "running" for vm in vms):
                raise Refused(
                    RefusalKind.CONFLICT,
                    f"VM {name} is running: stop it first, "
                    "or delete it with --force (?force=1 over HTTP)",
                )
        removed = await self._run(self.hypervisor.delete(name))
        return VmDeleted(name, True, [str(p) for p in removed])

    def _not_migrating(self, name: str, what: str) -> None:
        if self._migrating(name):
            raise Refused(
                RefusalKind.CONFLICT, f"VM {name} is migrating: cancel the migration before {what}"
            )

    async def _run(self, call: Any) -> Any:
        """Await an adapter call, its errors turned into refusals of their kind."""
        try:
            return await call
        except BadSpec as exc:
            raise Refused(RefusalKind.INVALID, str(exc)) from None
        except UnknownVm as exc:
            raise Refused(RefusalKind.UNKNOWN, f"unknown VM: {exc}") from None
        except VmExists as exc:
            raise Refused(RefusalKind.CONFLICT, str(exc)) from None
        except LibvirtUnreachable as exc:
            raise Refused(RefusalKind.UNAVAILABLE, str(exc)) from None
        except HypervisorError as exc:
            raise Refused(RefusalKind.CONFLICT, str(exc)) from None
