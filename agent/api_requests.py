"""The local API's request bodies, checked and turned into typed requests.

A body is JSON from `nova`, a script or the coordinator's site link: every
field is checked here, before any control sees it, and a body that is wrong
is refused (`RefusalKind.INVALID`) with a sentence naming what is wrong. The
controls (`VmControl`, `Migrator`, `Recoveries`) take the typed requests and
check only what depends on the state of things: the VM, the host, the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.migration.policy import PolicyOverrides
from .core.refusals import RefusalKind, Refused
from .core.templates import parse_ref
from .vmspec import DiskSpec, VmSpec

# --- migrations and recoveries -------------------------------------------------------

# Policy settings a migrate request may override (`PolicyOverrides` fields), each with the
# JSON types it takes: a bool is no number here, and a downtime is a whole number of ms.
OVERRIDES: Mapping[str, tuple[type, ...]] = {
    "bandwidth_mib_s": (int, float),
    "max_downtime_ms": (int,),
    "post_copy": (bool,),
    "auto_converge": (bool,),
    "completion_timeout_min": (int, float),
    "completion_timeout_per_gib": (int, float),
}


@dataclass(frozen=True, slots=True)
class MigrateRequest:
    """Move a VM: to the host named, or to the best host now (`target` None: 'auto')."""

    target: str | None  # the host named by 'to'; None: the best one, chosen when asked
    overrides: PolicyOverrides = field(default_factory=PolicyOverrides)  # settings for this move
    traceparent: str = ""  # the request's W3C trace context header, if it had one


def migrate_request(body: Mapping[str, Any]) -> MigrateRequest:
    """The move `body` asks for: exactly one of 'to' (a host) and 'auto', and overrides."""
    unknown = sorted(set(body) - {"to", "auto", *OVERRIDES})
    if unknown:
        raise Refused(RefusalKind.INVALID, f"unknown setting(s): {', '.join(unknown)}")
    target, auto = body.get("to"), body.get("auto")
    if auto is not None and not isinstance(auto, bool):
        raise Refused(RefusalKind.INVALID, f"'auto' must be true or false, got {auto!r}")
    if target is not None and auto:
        raise Refused(RefusalKind.INVALID, "give a target host ('to') or 'auto', not both")
    overrides = _overrides(body)
    if auto:
        return MigrateRequest(None, overrides)
    if not target or not isinstance(target, str):
        raise Refused(
            RefusalKind.INVALID, "no target host given: say where to move the VM ('to' or 'auto')"
        )
    return MigrateRequest(target, overrides)


def _overrides(body: Mapping[str, Any]) -> PolicyOverrides:
    """The policy settings `body` gives, their types checked (their ranges are the policy's)."""
    given = {name: body[name] for name in OVERRIDES if body.get(name) is not None}
    for name, value in given.items():
        kinds = OVERRIDES[name]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise Refused(
                RefusalKind.INVALID,
                f"bad policy: policy setting {name!r} has the wrong type: {value!r}",
            )
    return PolicyOverrides(**given)


def recover_request(body: Mapping[str, Any]) -> str:
    """The host `nova vm recover` names to run the VM on ('on')."""
    unknown = sorted(set(body) - {"on"})
    if unknown:
        raise Refused(RefusalKind.INVALID, f"unknown setting(s): {', '.join(unknown)}")
    host = body.get("on")
    if not isinstance(host, str) or not host:
        raise Refused(RefusalKind.INVALID, "say where the VM is to run ('on': a host id)")
    return host


def template_request(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """The template `nova template pull` asks for ('template': NAME or NAME:VERSION)."""
    unknown = sorted(set(body) - {"template"})
    if unknown:
        raise Refused(RefusalKind.INVALID, f"unknown setting(s): {', '.join(unknown)}")
    ref = body.get("template")
    if not isinstance(ref, str) or not ref:
        raise Refused(RefusalKind.INVALID, "say which template ('template': NAME[:VERSION])")
    try:
        return parse_ref(ref)
    except ValueError as exc:
        raise Refused(RefusalKind.INVALID, str(exc)) from None


# --- VMs on this host -----------------------------------------------------------------

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


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Define a VM on this host, and boot it at once if `start`."""

    spec: VmSpec
    start: bool = False


def create_request(body: Mapping[str, Any]) -> CreateRequest:
    """The VM a create request describes, and whether to start it."""
    return CreateRequest(spec_from_body(body), bool(body.get("start")))


def stop_timeout(body: Mapping[str, Any]) -> float:
    """Seconds a stop request gives the guest to power off (`STOP_TIMEOUT` if not said)."""
    timeout = body.get("timeout", STOP_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise Refused(
            RefusalKind.INVALID, f"timeout must be a number of seconds >= 0, got {timeout!r}"
        )
    return float(timeout)


def spec_from_body(body: Mapping[str, Any]) -> VmSpec:
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
