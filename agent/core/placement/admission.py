"""Whether a migration may start: the target's admission and the source's limits, sans-IO.

The target decides from what it holds: its own latest record (what its
hypervisor runs), its reservations (`reservations.py`) and whether it drains.
It refuses, in this order, a source with `per_source` reservations here that
its libvirt does not show yet, any VM while it drains or cannot count its
VMs, a VM that already runs or is arriving here, any VM beyond
`max_inbound` arrivals, a VM of an anti-affinity group that runs or arrives
here, and a VM its free capacity does not hold. The source refuses to run
more than `max_outbound` migrations, and to start one while the cluster runs
its ceiling (`cluster_limit`) already.

`MigrationCore` applies these on every proposal and request; the rebalancing
simulator runs a `MigrationCore` on every simulated host, so a simulated
migration is admitted exactly when an agent would admit it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from novacron.protocol.messages import NodeRecord

from ..migration.policy import MigrationLimits, cluster_limit
from ..migration.reservations import Demand, ReservationBook, ReservationConfig, combined
from .targets import anti_affinity_clash, libvirt_down


class Rule(StrEnum):
    """Which rule refused a migration (counted by the simulator, shown in the reason)."""

    SOURCE_UNSEEN = "source reservations not started"
    DRAINING = "target draining"
    LIBVIRT_DOWN = "target libvirt unreachable"
    PRESENT = "vm already on the target"
    ARRIVING = "vm already arriving"
    INBOUND = "target inbound limit"
    ANTI_AFFINITY = "target anti-affinity"
    CAPACITY = "target capacity"
    OUTBOUND = "source outbound limit"
    CLUSTER = "cluster limit"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A migration refused: the rule that refused it and the sentence for people."""

    rule: Rule
    reason: str


@dataclass(frozen=True, slots=True)
class Arrival:
    """A VM proposed to this host."""

    vm: str  # its name
    source: str  # the host it comes from
    demand: Demand  # what it needs here (and its anti-affinity group)


def target_refusal(
    node_id: str,
    record: NodeRecord | None,
    book: ReservationBook,
    arrivals: Sequence[Arrival],
    *,
    draining: bool,
    max_inbound: int,
    config: ReservationConfig,
) -> Refusal | None:
    """Why `node_id` will not reserve room for `arrivals` now: one VM, or an affinity
    group's VMs all at once (None: it will, for all of them). A landed reservation of an
    arriving VM is dropped: the VM has left again, the hold only kept room until this
    host's record caught up."""
    source, count = arrivals[0].source, len(arrivals)
    unseen = book.unseen_from(source)
    if unseen >= config.per_source:
        return Refusal(
            Rule.SOURCE_UNSEEN,
            f"too many migrations from {source}: {unseen} reserved here not started yet",
        )
    if draining or (record is not None and record.draining):
        return Refusal(Rule.DRAINING, f"host draining: {node_id} takes no new VMs")
    down = libvirt_down(record) if record is not None else None
    if down is not None:
        return Refusal(
            Rule.LIBVIRT_DOWN,
            f"libvirt unreachable on {node_id} since {down}: it cannot count its memory",
        )
    if count > max_inbound:  # never admissible: refused before any per-VM work
        return Refusal(
            Rule.INBOUND,
            f"too many migrations: an affinity group of {count}, limit {max_inbound} inbound",
        )
    for arrival in arrivals:
        here = _present_or_arriving(node_id, record, book, arrival.vm)
        if here is not None:
            return here
    inbound = book.inbound()
    if inbound + count > max_inbound:
        whole = f"; its affinity group needs {count} at once" if count > 1 else ""
        return Refusal(
            Rule.INBOUND,
            f"too many migrations: {node_id} already receives {inbound} inbound{whole}",
        )
    for arrival in arrivals:
        clash = group_refusal(node_id, record, book, arrival.demand.anti_affinity)
        if clash is not None:
            return Refusal(Rule.ANTI_AFFINITY, clash)
    demand = combined(a.demand for a in arrivals) if count > 1 else arrivals[0].demand
    short = book.admit(node_id, record, demand, config)
    return Refusal(Rule.CAPACITY, short) if short is not None else None


def _present_or_arriving(
    node_id: str, record: NodeRecord | None, book: ReservationBook, vm: str
) -> Refusal | None:
    if record is not None and any(summary.name == vm for summary in record.vms):
        return Refusal(Rule.PRESENT, f"VM {vm} already runs on {node_id}")
    held = book.for_vm(vm)
    if held is not None and held.landed:
        book.release(held.migration_id)
    elif held is not None:
        return Refusal(Rule.ARRIVING, f"VM {vm} is already arriving on {node_id}")
    return None


def group_refusal(
    node_id: str, record: NodeRecord | None, book: ReservationBook, group: str
) -> str | None:
    """Why a VM of anti-affinity `group` may not arrive here: one of its group runs here
    or is arriving (the sources' own checks cannot see each other's moves)."""
    if not group:
        return None
    if record is not None and anti_affinity_clash(record, group):
        return f"anti-affinity: a VM of group {group} runs on {node_id}"
    other = book.arriving_group(group)
    if other is not None:
        return f"anti-affinity: {other.vm} of group {group} is already arriving here"
    return None


def outbound_refusal(
    node_id: str, outbound: int, limits: MigrationLimits, count: int = 1
) -> Refusal | None:
    """Why `node_id`, running `outbound` migrations, may not start `count` more (an
    affinity group's, all at once) (None: it may)."""
    if outbound + count > limits.max_outbound:
        return Refusal(
            Rule.OUTBOUND,
            f"too many migrations: {node_id} already runs {outbound} outbound{_whole(count)}",
        )
    return None


def cluster_refusal(
    running: int, alive: int, limits: MigrationLimits, count: int = 1
) -> Refusal | None:
    """Why `count` migrations may not start while `running` run among `alive` hosts
    (None: they may)."""
    ceiling = cluster_limit(limits, alive)
    if running + count > ceiling:
        return Refusal(
            Rule.CLUSTER,
            f"too many migrations: {running} running in the cluster, limit {ceiling}"
            + _whole(count),
        )
    return None


def _whole(count: int) -> str:
    return f"; the affinity group needs {count} at once" if count > 1 else ""


def closed_targets(
    outbound: Iterable[tuple[str, str, str]], records: Mapping[str, NodeRecord], per_source: int
) -> set[str]:
    """Targets that would refuse another proposal from this source now: each admits at
    most `per_source` admissions from one source that its libvirt does not show yet, and
    its record (`records`, as this source sees it) does not list that many of ours yet.
    `outbound`: (target, VM, admission) of every migration this source runs, where the
    admission names the proposal it was admitted with: an affinity group's VMs were
    admitted in one step and count once."""
    unseen: dict[str, set[str]] = {}
    for target, vm, admission in outbound:
        record = records.get(target)
        if record is None or all(summary.name != vm for summary in record.vms):
            unseen.setdefault(target, set()).add(admission)
    return {target for target, admitted in unseen.items() if len(admitted) >= per_source}
