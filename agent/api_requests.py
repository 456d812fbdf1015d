"""The local API's request bodies, checked and turned into typed requests.

A body is JSON from `nova`, a script or the coordinator's site link: every
field is checked here, before any control sees it, and a body that is wrong
is refused (`RefusalKind.INVALID`) with a sentence naming what is wrong. The
controls (`Migrator`, `Recoveries`) take the typed requests and check only
what depends on the state of things: the VM, the hosts, the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .core.refusals import RefusalKind, Refused

OVERRIDES = (  # policy settings a migrate request may override (`MigrationPolicy` fields)
    "bandwidth_mib_s",
    "max_downtime_ms",
    "post_copy",
    "auto_converge",
    "completion_timeout_min",
    "completion_timeout_per_gib",
)


@dataclass(frozen=True, slots=True)
class MigrateRequest:
    """Move a VM: to the host named, or to the best host now (`target` None: 'auto')."""

    target: str | None  # the host named by 'to'; None: the best one, chosen when asked
    # Policy settings given for this move (values the migration core checks: `with_overrides`)
    overrides: Mapping[str, Any] = field(default_factory=dict)


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
    overrides = {k: body[k] for k in OVERRIDES if body.get(k) is not None}
    if auto:
        return MigrateRequest(None, overrides)
    if not target or not isinstance(target, str):
        raise Refused(
            RefusalKind.INVALID, "no target host given: say where to move the VM ('to' or 'auto')"
        )
    return MigrateRequest(target, overrides)


def recover_request(body: Mapping[str, Any]) -> str:
    """The host `nova vm recover` names to run the VM on ('on')."""
    unknown = sorted(set(body) - {"on"})
    if unknown:
        raise Refused(RefusalKind.INVALID, f"unknown setting(s): {', '.join(unknown)}")
    host = body.get("on")
    if not isinstance(host, str) or not host:
        raise Refused(RefusalKind.INVALID, "say where the VM is to run ('on': a host id)")
    return host
