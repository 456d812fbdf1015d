"""Where a VM runs, decided from the hypervisors' evidence: a pure function, sans-IO.

After a fault the saga's last word proves nothing (a failed job may have
moved the VM; a libvirtd killed mid-migration leaves a definition behind).
The driver looks at the domain on each host concerned and reports one
`Presence` per host; `locate` turns those into a `Verdict`:

- `On(host, stale)`: the guest runs on `host`; `stale` are hosts holding a copy
  that must never run again (a definition left behind, a paused source).
- `Wait(why)`: a migration still holds the domain or a libvirtd did not
  answer: look again soon (the saga bounds how long).
- `Doubt(why, candidates)`: no host can be shown to run it, or two do; only an
  operator can settle it (`nova vm recover VM --on HOST`, one of `candidates`).

The post-copy rule: once the target runs the guest with every page (libvirt
reports it running, not "running (post-copy)"), the target is authoritative
and whatever is left on the source is stale, whatever state it is in; while
the target still pulls pages, both halves are needed and nothing is touched.

`claimants` finds VMs that several hosts' gossiped records claim, so a claim
is checked against libvirt rather than believed (a record may be stale, or
lie).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from novacron.protocol.messages import NodeRecord


class Where(StrEnum):
    """What one host's libvirt says about a domain."""

    RUNNING = "running"  # active, no migration holds it: the guest runs here
    PAUSED = "paused"  # active, paused for another reason than a migration: its state is here
    MIGRATING = "migrating"  # a migration holds it (job, switchover pause, post-copy either side)
    STOPPED = "stopped"  # defined, not active
    ABSENT = "absent"  # not defined here
    UNKNOWN = "unknown"  # libvirt did not answer


ACTIVE = frozenset({Where.RUNNING, Where.PAUSED, Where.MIGRATING})
"""States in which a QEMU process holds the guest (or half of it)."""


@dataclass(frozen=True, slots=True)
class Presence:
    """One host's evidence about one domain."""

    where: Where  # what the evidence says
    detail: str = ""  # libvirt's own words ("paused (post-copy)", the error), for people
    uuid: str = ""  # the domain's UUID ("" if absent or unknown)
    leftover: bool = False  # shut off by a migration ("shut off (migrated)"): never to run again
    persistent: bool = False  # defined (it can be started again), not only a running process
    split: bool = False  # one half of a post-copy (paused for it, or failed): useless alone


@dataclass(frozen=True, slots=True)
class On:
    """The guest runs on `host`; `stale` hosts hold copies that must go."""

    host: str
    stale: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Wait:
    """Not decidable yet: look again."""

    why: str


@dataclass(frozen=True, slots=True)
class Doubt:
    """Not decidable from the evidence; an operator settles it on one of `candidates`."""

    why: str
    candidates: tuple[str, ...] = field(default=())


Verdict = On | Wait | Doubt


def locate(seen: Mapping[str, Presence]) -> Verdict:
    """Where the VM runs, from each host's `Presence` (see the module docstring)."""
    running = sorted(h for h, p in seen.items() if p.where is Where.RUNNING)
    if len(running) > 1:
        return Doubt(f"runs on {_and(running)} at once", tuple(running))
    if running:
        host = running[0]
        stale = [h for h, p in seen.items() if h != host and _copy(p)]
        return On(host, tuple(sorted(stale)))
    waiting = sorted(h for h, p in seen.items() if p.where in (Where.MIGRATING, Where.UNKNOWN))
    if waiting and not _broken_postcopy(seen):
        return Wait("; ".join(f"{h}: {_said(seen[h])}" for h in waiting))
    if waiting:
        (half,) = waiting
        why = f"lost half of its post-copy: only {half} holds a part ({_said(seen[half])})"
        return Doubt(why, tuple(sorted(h for h, p in seen.items() if p.persistent)))
    paused = sorted(h for h, p in seen.items() if p.where is Where.PAUSED)
    if len(paused) == 1:
        host = paused[0]
        return On(host, tuple(sorted(h for h, p in seen.items() if h != host and _copy(p))))
    if paused:
        return Doubt(f"is paused on {_and(paused)} at once", tuple(paused))
    defined = tuple(sorted(h for h, p in seen.items() if p.where is Where.STOPPED))
    return Doubt("runs on no host", defined)


def undecided(seen: Mapping[str, Presence], waited: str) -> Doubt:
    """The `Doubt` for a look that stayed `Wait` too long (`waited`: for how long)."""
    verdict = locate(seen)
    why = verdict.why if isinstance(verdict, Wait | Doubt) else ""
    copies = tuple(sorted(h for h, p in seen.items() if _copy(p)))
    return Doubt(f"could not be located within {waited} ({why})", copies)


def _broken_postcopy(seen: Mapping[str, Presence]) -> bool:
    """One host holds half of a post-copy and no other host holds anything active: the
    other half is gone, so waiting cannot make it whole."""
    waiting = [p for p in seen.values() if p.where in (Where.MIGRATING, Where.UNKNOWN)]
    return len(waiting) == 1 and waiting[0].split


def _copy(presence: Presence) -> bool:
    """Whether a host holds some copy of the domain (anything but "absent")."""
    return presence.where not in (Where.ABSENT, Where.UNKNOWN)


def _said(presence: Presence) -> str:
    return presence.detail or presence.where.value


def _and(hosts: list[str]) -> str:
    return ", ".join(hosts[:-1]) + f" and {hosts[-1]}" if len(hosts) > 1 else "".join(hosts)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `nova vm recover VM --on HOST` does: remove the copies on `remove`, then start the
    VM on `host` (destroying first whatever half-copy holds it there) unless it runs there."""

    host: str  # where it will run
    remove: tuple[str, ...]  # hosts whose copies go (destroyed if active, undefined)
    start: bool  # False: it already runs on `host`, only stale copies go


def recovery(seen: Mapping[str, Presence], host: str, vm: str) -> Recovery | str:
    """The recovery of `vm` on `host` from each host's evidence, or why it must not be done."""
    unknown = sorted(h for h, p in seen.items() if p.where is Where.UNKNOWN)
    if unknown:
        said = "; ".join(f"{h}: {_said(seen[h])}" for h in unknown)
        return f"cannot tell whether {vm} runs elsewhere ({said}): recover once every host answers"
    live = sorted(h for h, p in seen.items() if p.where in (Where.RUNNING, Where.PAUSED))
    if [h for h in live if h != host] and host not in live:
        where = ", ".join(f"{h} ({_said(seen[h])})" for h in live)
        return f"{vm} runs on {where}: nothing to recover (or recover it --on one of those)"
    moving = sorted(h for h, p in seen.items() if p.where is Where.MIGRATING)
    if len(moving) > 1:
        return f"a migration between {_and(moving)} still holds {vm}: wait for it to end"
    here = seen.get(host, Presence(Where.ABSENT))
    if host not in live and not here.persistent:
        holders = sorted(h for h, p in seen.items() if p.persistent)
        where = f": {_and(holders)} hold(s) one" if holders else ""
        return f"{host} holds no definition of {vm}{where}"
    remove = tuple(sorted(h for h, p in seen.items() if h != host and _copy(p)))
    return Recovery(host, remove, start=host not in live)


def claimants(records: Mapping[str, NodeRecord]) -> dict[str, tuple[str, ...]]:
    """VM name -> the hosts whose records list it, for every VM listed by more than one."""
    hosts: dict[str, list[str]] = {}
    for node_id, record in sorted(records.items()):
        for vm in record.vms:
            hosts.setdefault(vm.name, []).append(node_id)
    return {vm: tuple(found) for vm, found in hosts.items() if len(found) > 1}


def others_claiming(records: Mapping[str, NodeRecord], vm: str, me: str) -> tuple[str, ...]:
    """Hosts other than `me` whose records list `vm` active (running, paused, migrating)."""
    return tuple(
        sorted(
            node_id
            for node_id, record in records.items()
            if node_id != me
            and any(v.name == vm and v.state not in ("shutoff", "crashed") for v in record.vms)
        )
    )
