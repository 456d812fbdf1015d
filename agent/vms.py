"""VM lifecycle on this host for the local API: create, start, stop, delete.

The hypervisor adapter does the work; this module turns an API request into a
`VmSpec`, checks what the adapter cannot know (this host is draining, the VM is
migrating, the host has no room) and turns every failure into a `Refused`
of a kind (`RefusalKind`) with a sentence for the operator. Nothing changes when a
request is refused. The inventory sees the result through libvirt's events,
so the mesh learns of a new or stopped VM within moments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .core.refusals import RefusalKind, Refused
from .hypervisor import Hypervisor, LibvirtUnreachable, UnknownVm, VmExists
from .vmspec import BadSpec, DiskSpec, HypervisorError, VmSpec

CREATE_FIELDS = {
    "name": str,
    "vcpus": int,
    "memory_mib": int,
    "kernel": str,
    "initrd": str,
    "cmdline": str,
    "disks": list,
    "labels": dict,
    "start": bool,
}
REQUIRED = ("name", "vcpus", "memory_mib")
STOP_TIMEOUT = 30.0  # seconds a guest gets to power off before it is destroyed


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

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = spec_from_body(body)
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
        started = bool(body.get("start")) and await self._run(self.hypervisor.start(spec.name))
        return {"name": info.name, "uuid": info.uuid, "started": started, "host": self.node_id}

    async def start(self, name: str) -> dict[str, Any]:
        why = await self._start_refusal(name) if self._start_refusal is not None else None
        if why:
            raise Refused(RefusalKind.CONFLICT, why)
        started = await self._run(self.hypervisor.start(name))
        return {"name": name, "started": started, "host": self.node_id}

    async def stop(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        timeout = body.get("timeout", STOP_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise Refused(
                RefusalKind.INVALID, f"timeout must be a number of seconds >= 0, got {timeout!r}"
            )
        self._not_migrating(name, "stop")
        how = await self._run(self.hypervisor.stop(name, float(timeout)))
        return {"name": name, "stopped": how, "host": self.node_id}

    async def delete(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._not_migrating(name, "delete")
        if not body.get("force"):
            vms = await self._run(self.hypervisor.list())
            if any(vm.name == name and vm.state == "running" for vm in vms):
                raise Refused(
                    RefusalKind.CONFLICT,
                    f"VM {name} is running: stop it first, "
                    "or delete it with --force (?force=1 over HTTP)",
                )
        removed = await self._run(self.hypervisor.delete(name))
        return {"name": name, "deleted": True, "removed": [str(p) for p in removed]}

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


def spec_from_body(body: dict[str, Any]) -> VmSpec:
    """The `VmSpec` a create request describes, or `Refused` (invalid) naming what is wrong."""
    unknown = sorted(set(body) - set(CREATE_FIELDS))
    if unknown:
        raise Refused(RefusalKind.INVALID, f"unknown field(s): {', '.join(unknown)}")
    missing = [name for name in REQUIRED if name not in body]
    if missing:
        raise Refused(RefusalKind.INVALID, f"missing field(s): {', '.join(missing)}")
    for name, kind in CREATE_FIELDS.items():
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind)
        ):
            raise Refused(
                RefusalKind.INVALID, f"field {name!r} must be {kind.__name__}, got {value!r}"
            )
    spec = VmSpec(
        name=body["name"],
        vcpus=body["vcpus"],
        memory_mib=body["memory_mib"],
        kernel=_path(body.get("kernel")),
        initrd=_path(body.get("initrd")),
        cmdline=body.get("cmdline") or "",
        disks=tuple(_disk(d) for d in body.get("disks") or []),
        labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
    )
    problems = spec.problems()
    if problems:
        raise Refused(RefusalKind.INVALID, f"bad spec for VM {spec.name!r}: " + "; ".join(problems))
    return spec


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _disk(item: Any) -> DiskSpec:
    if not isinstance(item, dict) or not isinstance(item.get("base"), str):
        raise Refused(
            RefusalKind.INVALID, f"each disk must be {{'base': PATH, 'size_mib': N}}, got {item!r}"
        )
    size = item.get("size_mib")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise Refused(
            RefusalKind.INVALID, f"disk size_mib must be a whole number of MiB, got {size!r}"
        )
    return DiskSpec(Path(item["base"]), size)
