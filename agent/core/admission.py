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
simulator applies the same functions to its model of the cluster, so a
simulated migration is admitted exactly when an agent would admit it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from novacron.protocol.messages import NodeRecord

from .migration_policy import MigrationLimits, cluster_limit
from .placement import anti_affinity_clash, libvirt_down
from .reservations import Demand, ReservationBook, ReservationConfig


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
    arrival: Arrival,
    *,
    draining: bool,
    max_inbound: int,
    config: ReservationConfig,
) -> Refusal | None:
    """Why `node_id` will not reserve room for `arrival` now (None: it will). A landed
    reservation of the same VM is dropped: the VM has left again, the hold only kept room
    until this host's record caught up."""
    source, vm = arrival.source, arrival.vm
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
    if record is not None and any(summary.name == vm for summary in record.vms):
        return Refusal(Rule.PRESENT, f"VM {vm} already runs on {node_id}")
    held = book.for_vm(vm)
    if held is not None and held.landed:
        book.release(held.migration_id)
    elif held is not None:
        return Refusal(Rule.ARRIVING, f"VM {vm} is already arriving on {node_id}")
    inbound = book.inbound()
    if inbound >= max_inbound:
        return Refusal(
            Rule.INBOUND, f"too many migrations: {node_id} already receives {inbound} inbound"
        )
    clash = group_refusal(node_id, record, book, arrival.demand.anti_affinity)
    if clash is not None:
        return Refusal(Rule.ANTI_AFFINITY, clash)
    short = book.admit(node_id, record, arrival.demand, config)
    return Refusal(Rule.CAPACITY, short) if short is not None else None


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


def outbound_refusal(node_id: str, outbound: int, limits: MigrationLimits) -> Refusal | None:
    """Why `node_id`, running `outbound` migrations, may not start another (None: it may)."""
    if outbound >= limits.max_outbound:
        return Refusal(
            Rule.OUTBOUND, f"too many migrations: {node_id} already runs {outbound} outbound"
        )
    return None


def cluster_refusal(running: int, alive: int, limits: MigrationLimits) -> Refusal | None:
    """Why no migration may start while `running` run among `alive` hosts (None: one may)."""
    ceiling = cluster_limit(limits, alive)
    if running >= ceiling:
        return Refusal(
            Rule.CLUSTER,
            f"too many migrations: {running} running in the cluster, limit {ceiling}",
        )
    return None


def closed_targets(
    outbound: Iterable[tuple[str, str]], records: Mapping[str, NodeRecord], per_source: int
) -> set[str]:
    """Targets that would refuse another proposal from this source now: each admits at
    most `per_source` migrations from one source that its libvirt does not show yet, and
    its record (`records`, as this source sees it) does not list that many of ours yet.
    `outbound`: (target, VM) of every migration this source runs."""
    unseen: dict[str, int] = {}
    for target, vm in outbound:
        record = records.get(target)
        if record is None or all(summary.name != vm for summary in record.vms):
            unseen[target] = unseen.get(target, 0) + 1
    return {target for target, count in unseen.items() if count >= per_source}
