"""Where a VM may go: target selection for `nova vm migrate --auto` and for drains, sans-IO.

A host qualifies when it is alive, not draining, not the source, receives
fewer migrations than the per-host limit (as its record publishes), and its
free capacity (capacity minus its VMs, vCPUs overcommitted by the configured
ratio) holds the VM. Of those, the least utilized (CPU in use over cores)
wins: a drained host's VMs then land where they lower the imbalance instead
of piling onto whichever host has room (memory says nothing about load).
Ties go to the most free memory, then the fewest inbound migrations, then
the node id, so every agent given the same view picks the same host and the
choice is reproducible.
A host already running a VM of the same anti-affinity group never qualifies.

A host whose record says it holds the VMs' templates whole counts as
`HOLDER_LEAD` less utilized than it is: among the hosts that qualify, it wins
over one that would first have to fetch the image, unless it is much busier.
When no VM comes from a template, or no qualifying host holds it, the order
is the one above.

A new VM (created through a site's link, or restarted after its host failed)
goes where the same order puts it with no source (`new_vm_target`): its
anti-affinity group and template are read from its labels.

When nothing qualifies, the answer says why for each host, so an operator
sees "h2: host draining; h3: no capacity ..." rather than a bare "no target".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from novacron.protocol.certificates import format_time
from novacron.protocol.messages import MemberState, NodeRecord

from ..membership.members import MemberInfo
from ..migration.policy import MigrationLimits
from ..migration.reservations import Demand, capacity_refusal, combined, free_capacity
from ..refusals import RefusalKind
from ..templates import template_of

ANTI_AFFINITY_LABEL = "novacron/anti-affinity"
"""VM label: VMs with the same value never share a host."""

AFFINITY_LABEL = "novacron/affinity"
"""VM label: VMs with the same value stay on one host (the rebalancer moves them together)."""

GOSSIPED_VM_LABELS = (AFFINITY_LABEL, ANTI_AFFINITY_LABEL)
"""The VM labels placement reads from host records: each host gossips these of its VMs."""


def gossiped_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Of a VM's `labels`, those its host's record carries (the rest stay in libvirt)."""
    return {key: labels[key] for key in GOSSIPED_VM_LABELS if labels.get(key)}


HOLDER_LEAD = 0.25
"""How much busier (CPU in use over cores) a host holding the VMs' templates may be than
the best host lacking them and still be chosen. Holding them saves a fetch of the image
before the VM can move or start there; a lead without bound would send every VM of one
template (a drain's, say) to the same holder until it is full."""


def libvirt_down(record: NodeRecord) -> str | None:
    """Since when `record`'s host cannot reach its libvirt, ISO 8601 UTC (None: it can).

    While it cannot, the record's VMs are the last ones listed, state unknown,
    and the host takes no VM until it can count them again."""
    since = record.libvirt_unreachable_since
    return format_time(since) if since > 0 else None


@dataclass(frozen=True, slots=True)
class Placement:
    """The chosen host, or None with the reason every candidate was turned down."""

    target: str | None
    reason: str = ""  # why there is no target ("" when there is one)
    kind: RefusalKind = RefusalKind.CONFLICT  # of the refusal when there is no target


def choose_target(
    records: Mapping[str, NodeRecord],
    member: Callable[[str], MemberInfo | None],
    source: str,
    demand: Demand,
    limits: MigrationLimits,
    overcommit: float,
    anti_affinity: str = "",
    closed: Collection[str] = (),
) -> Placement:
    """The best host for a VM needing `demand` that now runs on `source` (and belongs to
    anti-affinity group `anti_affinity`, if not ""); `closed` hosts would refuse a
    proposal from `source` now (they do not show its last one yet)."""
    one = dataclasses.replace(demand, anti_affinity=anti_affinity)
    return choose_group_target(records, member, source, (one,), limits, overcommit, closed)


def new_vm_target(
    records: Mapping[str, NodeRecord],
    member: Callable[[str], MemberInfo | None],
    vcpus: int,
    memory_mib: int,
    labels: Mapping[str, str],
    limits: MigrationLimits,
    overcommit: float,
) -> Placement:
    """The host a new VM of `vcpus` and `memory_mib` with `labels` goes to: `choose_target`
    with no source (every host is a candidate), its anti-affinity group and its template
    as its labels name them."""
    group = labels.get(ANTI_AFFINITY_LABEL, "")
    demand = Demand(vcpus, memory_mib, anti_affinity=group, template=template_of(labels))
    return choose_target(records, member, "", demand, limits, overcommit, group)


def choose_group_target(
    records: Mapping[str, NodeRecord],
    member: Callable[[str], MemberInfo | None],
    source: str,
    demands: Sequence[Demand],
    limits: MigrationLimits,
    overcommit: float,
    closed: Collection[str] = (),
    sending: Mapping[str, float] | None = None,
) -> Placement:
    """The best host for VMs that must arrive together (an affinity group; one VM is a
    group of one), each `Demand` with its own anti-affinity group: a slot for each and
    room for all of them at once, as `choose_target` judges one. `sending`: the load
    (cores) `source` is moving to each host now (`sending_load`), counted as that host's."""
    candidates: list[tuple[float, float, int, str]] = []
    refusals: list[str] = []
    for node_id, record in sorted(records.items()):
        if node_id == source:
            continue
        why = _unfit(record, member(node_id), demands, limits, overcommit)
        if why is None and node_id in closed:
            why = f"does not show {source}'s last migration there yet"
        if why is not None:
            refusals.append(f"{node_id}: {why}")
            continue
        free = free_capacity(record, [], overcommit).memory_mib
        load = utilization(record, (sending or {}).get(node_id, 0.0))
        lead = HOLDER_LEAD if holds_templates(record, demands) else 0.0
        candidates.append((load - lead, -free, record.migrations_in, node_id))
    if candidates:
        return Placement(min(candidates)[3])
    if not refusals:
        return Placement(None, "no other host in the mesh")
    return Placement(None, "no host can take it: " + "; ".join(refusals))


def holds_templates(record: NodeRecord, demands: Sequence[Demand]) -> bool:
    """Whether `record`'s host holds whole every template the VMs come from (False when none
    comes from a template: there is nothing to save)."""
    wanted = {demand.template for demand in demands if demand.template}
    return bool(wanted) and wanted.issubset(record.templates)


def utilization(record: NodeRecord, arriving: float = 0.0) -> float:
    """CPU in use over cores (0 for a host that reports no cores); `arriving`: load on its
    way there that the record does not show yet."""
    cores = record.capacity.vcpus
    return (sum(vm.cpu_load for vm in record.vms) + arriving) / cores if cores > 0 else 0.0


def sending_load(
    own: NodeRecord | None,
    outbound: Iterable[tuple[str, str]],
    records: Mapping[str, NodeRecord],
) -> dict[str, float]:
    """The load (cores) a host is moving to each target now: every VM of `outbound`
    ((target, VM) of its running migrations), at its load in the host's own record,
    until the target's record shows it running there (its load is then in that record).

    A draining host choosing the least utilized target would otherwise see the same
    cool host, still cool, for every VM it sends before the first arrives there."""
    loads = {vm.name: vm.cpu_load for vm in own.vms} if own is not None else {}
    sending: dict[str, float] = {}
    for target, vm in outbound:
        record = records.get(target)
        landed = record is not None and any(
            s.name == vm and s.state == "running" for s in record.vms
        )
        if not landed:
            sending[target] = sending.get(target, 0.0) + loads.get(vm, 0.0)
    return sending


def _unfit(
    record: NodeRecord,
    member: MemberInfo | None,
    demands: Sequence[Demand],
    limits: MigrationLimits,
    overcommit: float,
) -> str | None:
    """Why `record`'s host cannot take the VMs now (None if it can)."""
    if member is None or member.state is not MemberState.ALIVE:
        return "not alive" if member is None else member.state.value
    if record.draining:
        return "host draining"
    if record.migrations_in + len(demands) > limits.max_inbound:
        whole = f"; the affinity group needs {len(demands)} at once" if len(demands) > 1 else ""
        return f"too many migrations ({record.migrations_in} inbound{whole})"
    return group_room_refusal(record, demands, overcommit)


def room_refusal(
    record: NodeRecord, demand: Demand, overcommit: float, anti_affinity: str = ""
) -> str | None:
    """Why the VM does not fit on `record`'s host: it cannot count its VMs (libvirt
    unreachable), a VM of its anti-affinity group runs there, or memory or vCPUs are short
    (None: it fits). Shared with the rebalancer."""
    one = dataclasses.replace(demand, anti_affinity=anti_affinity)
    return group_room_refusal(record, (one,), overcommit)


def group_room_refusal(
    record: NodeRecord, demands: Sequence[Demand], overcommit: float
) -> str | None:
    """Why VMs that must share a host (an affinity group) do not fit on `record`'s host
    together: as `room_refusal`, for each VM's anti-affinity group and for the room of
    all of them at once (None: they all fit)."""
    down = libvirt_down(record)
    if down is not None:
        return f"libvirt unreachable on {record.node_id} since {down}: its VMs cannot be counted"
    for demand in demands:
        group = demand.anti_affinity
        if group and anti_affinity_clash(record, group):
            return f"anti-affinity: a VM of group {group} runs there"
    free = free_capacity(record, [], overcommit)
    return capacity_refusal(record.node_id, free, combined(demands), check_disk=False)


def anti_affinity_clash(record: NodeRecord, group: str) -> bool:
    """Whether a VM of anti-affinity group `group` runs on `record`'s host."""
    return any(vm.labels.get(ANTI_AFFINITY_LABEL) == group for vm in record.vms)
