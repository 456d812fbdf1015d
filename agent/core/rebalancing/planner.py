"""The rebalancing planner: what one host should move, decided from its own view, sans-IO.

Every agent runs `plan` on the records it holds; there is no leader. A host
acts only on itself: when its utilization (CPU in use over its cores) is
above the cluster mean by more than `trigger`, it looks for the one move with
the best benefit for its cost.

- Benefit: how much the move lowers the cluster's imbalance, measured as the
  sum of squared deviations of host utilization from the mean (the variance
  that the pre-vSphere-7 DRS metric takes the root of).
- Cost: `migration_cost` (MiB on the wire, growing with memory and dirty rate,
  doubled per recent move of the VM). Moves are ranked by benefit / (1 +
  cost / `cost_scale`): a 4 GiB copy halves a move's appeal, but a move that
  fixes much more still wins over a cheap one that fixes little (a hot host
  must shed its big VMs too, not only its small ones). A saturated host (its
  VMs use all its cores, so their loads understate what they want) ranks by
  benefit alone: the VMs that free most leave first, long copies included.
- Load already leaving (this host's outbound migrations) does not count in
  its utilization, unless the host is saturated.
- Hysteresis: a host starts shedding above mean + trigger and, while its
  moves are under way, goes on down to mean + trigger - target. A receiving
  host should end at least `target` below the trigger line (mean + trigger -
  target), so the host that received a VM has no reason to send it on or
  back. A VM too big for that band may still go
  where the pair's peak drops by `target` or more; the variance still falls
  with every move and the cooldown keeps the VM there, so nothing cycles.
- Cooldown: a VM that moved is not moved again within `vm_cooldown` seconds
  (at least the 10 minutes an oscillation is counted over).
- Spreading: each decision samples `sample` cold hosts at random (power of
  d choices), so many hot hosts deciding at once do not all pick the same
  coldest host, and among cold hosts that receive nothing yet when there are
  enough; the target's reservation is the final arbiter.
- Constraints: draining, dead and busy (inbound limit) hosts take nothing;
  memory is never overcommitted, vCPUs by `vcpu_overcommit`; two VMs of one
  anti-affinity group never share a host.
- Affinity: the VMs of an affinity group on this host are one unit. They move
  together, to one target that holds all of them at once (capacity, each
  one's anti-affinity, inbound room for every one), counting their whole
  load, or not at all; the unit needs a free outbound slot per VM. The
  planner never splits a group. A group split by a failed migration (one
  member committed, another did not) is brought together again by the next
  round: the host holding fewer of its members (on a tie, the busier host,
  then the larger node id, so two hosts never swap) moves them to the host
  holding most, before any balancing, when they fit there.

`plan` is a pure function of its arguments (the RNG is injected), so the
simulator runs it unchanged at thousands of hosts and `nova rebalance plan`
shows exactly what the agent would do.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from novacron.protocol.messages import NodeRecord, VmSummary

from ..migration.cost import migration_cost
from ..migration.reservations import Demand
from ..placement.targets import AFFINITY_LABEL, ANTI_AFFINITY_LABEL, group_room_refusal, utilization

__all__ = [
    "AFFINITY_LABEL",
    "ANTI_AFFINITY_LABEL",
    "Decision",
    "Move",
    "RebalanceConfig",
    "over_line",
    "plan",
    "plan_round",
    "shedding_line",
    "utilization",
]


@dataclass(frozen=True, slots=True)
class RebalanceConfig:
    """When a host acts and how far it goes (defaults for small edge fleets)."""

    trigger: float = 0.15  # act when own utilization > cluster mean + trigger
    target: float = 0.05  # hysteresis: a target must end at least this far below the trigger
    vm_cooldown: float = 600.0  # seconds before a VM that moved may move again
    # Cold hosts sampled per decision: 4 finds colder targets than 2 (steady imbalance
    # 6% lower in the simulator); 16 starts to pile hot hosts onto the same few.
    sample: int = 4
    # Smaller drops are not worth a migration: 5e-3 is about 1.2% of a host's cores moved
    # from a host at the trigger to one 0.05 below the mean. At 1e-4 a host left holding
    # only small VMs moved them one by one at 0.01-0.05 cores each, a live migration
    # apiece for nothing measurable; 2e-3 still let a host made hot by two arrivals (now
    # in cooldown) ship its crumbs of 0.003-0.02 of its cores (1,000-host steady: 14%
    # fewer migrations at 5e-3, std within 1%).
    min_benefit: float = 5e-3
    vcpu_overcommit: float = 4.0  # vCPUs promised per core (memory is never overcommitted)
    bandwidth_mib_s: float = 1024.0  # link speed assumed for the cost estimate
    cost_scale: float = 4096.0  # MiB of copying that halves a move's score
    max_outbound: int = 2  # moves this host may run at once
    max_inbound: int = 2  # moves a target may receive at once

    def __post_init__(self) -> None:
        if not 0 <= self.target < self.trigger:
            raise ValueError("need 0 <= target < trigger (hysteresis)")
        if self.sample < 1 or self.max_outbound < 1 or self.max_inbound < 1:
            raise ValueError("sample and migration limits must be at least 1")
        if self.vm_cooldown < 0 or not self.bandwidth_mib_s > 0 or not self.cost_scale > 0:
            raise ValueError("vm_cooldown must be >= 0, bandwidth and cost_scale positive")


@dataclass(frozen=True, slots=True)
class Move:
    """One migration the planner wants (or one per VM of an affinity group, all to the
    same target), with the numbers that justify it."""

    vm: str
    source: str
    target: str
    benefit: float  # drop in the sum of squared utilization deviations
    cost: float  # `migration_cost`, MiB-equivalents (every VM of the unit)
    reason: str  # for `nova rebalance status`
    group: tuple[str, ...] = ()  # the other VMs of `vm`'s affinity group, moving with it
    rejoin: bool = False  # brings a split affinity group together (not balancing)

    @property
    def vms(self) -> tuple[str, ...]:
        """Every VM this move takes to `target`."""
        return (self.vm, *self.group)


Unit = tuple[VmSummary, ...]
"""VMs that move as one: a VM alone, or the VMs of one affinity group on this host."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What `plan` decided: a move, or why none (and the numbers it looked at)."""

    move: Move | None
    reason: str
    utilization: float  # this host's
    mean: float  # the cluster's, over alive hosts that take VMs


def plan(
    node_id: str,
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    recent_moves: Mapping[str, float],
    busy: Collection[str],
    now: float,
    rng: random.Random,
    config: RebalanceConfig | None = None,
    only: Collection[str] | None = None,
    closed: Collection[str] = (),
) -> Decision:
    """The move this host should start now (of the VMs in `only`, if given), or why none.
    `closed`: hosts that would refuse a proposal from this one now (they still count in
    the mean)."""
    config = config or RebalanceConfig()
    own = records.get(node_id)
    if own is None:
        return Decision(None, "no record of this host yet", 0.0, 0.0)
    mine = _committed(own, busy)
    if own.draining:
        return Decision(None, "draining: the drain moves this host's VMs", mine, mine)
    pool, util, mean = _others(node_id, own, records, alive)

    def none(why: str) -> Decision:
        return Decision(None, why, mine, mean)

    if not pool:
        return none("no other host can take VMs")
    units = _movable(own, recent_moves, busy, now, config)
    if only is not None:
        units = [unit for unit in units if any(vm.name in only for vm in unit)]
    shut = set(closed)
    rejoin = _rejoin(node_id, own, mean, pool, util, units, shut, config)
    if rejoin is not None:
        return Decision(rejoin, rejoin.reason, mine, mean)
    line = shedding_line(config, busy)
    if mine <= mean + line:
        return none(f"balanced: {mine:.2f} <= mean {mean:.2f} + {line:g}")
    if len(busy) >= config.max_outbound:
        return none(f"already moving {len(busy)} VMs (limit {config.max_outbound})")
    if not units:
        return none(
            f"hot ({mine:.2f}), but no VM may move (cooldown, migrating, or an affinity "
            "group with a member that may not, or more members than free slots)"
        )
    open_util = {h: u for h, u in util.items() if h not in shut}
    targets = _sample_targets(pool, open_util, mean, units, config, rng)
    if not targets:
        return none(
            f"hot ({mine:.2f}), but no host below mean {mean:.2f} has inbound room"
            + _groups_note(units)
        )
    best = _best_move(node_id, own, mine, mean, units, targets, pool, util, config, line)
    if best is None:
        return none(
            f"hot ({mine:.2f}), but no move fits capacity, affinity and hysteresis "
            "and is worth a migration" + _groups_note(units)
        )
    return Decision(best, best.reason, mine, mean)


def _groups_note(units: list[Unit]) -> str:
    """What the reason adds when an affinity group was among the candidates: it needed
    a target with room for all of its VMs at once."""
    groups = [unit for unit in units if len(unit) > 1]
    if not groups:
        return ""
    shown = ", ".join(
        f"{_group_of(unit)} ({len(unit)} VMs, {sum(vm.memory_mib for vm in unit)} MiB)"
        for unit in groups
    )
    return f" (affinity groups move whole, all to one target: {shown})"


def _group_of(unit: Unit) -> str:
    return unit[0].labels.get(AFFINITY_LABEL, "")


def over_line(
    node_id: str,
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    busy: Collection[str],
    config: RebalanceConfig | None = None,
) -> bool:
    """Whether this host is above its shedding line (the first thing `plan` checks): the
    agent plans at once when a new record of its own says so, not at its next round."""
    found = standing(node_id, records, alive, busy, config)
    return found is not None and found.over


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a host stands against the mesh, as `plan` sees it (shown as metrics)."""

    utilization: float  # this host's, once the VMs already leaving it have gone
    mean: float  # the mesh's, over alive hosts that take VMs
    line: float  # the utilization above which this host sheds VMs

    @property
    def over(self) -> bool:
        return self.utilization > self.line


def standing(
    node_id: str,
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    busy: Collection[str],
    config: RebalanceConfig | None = None,
) -> Standing | None:
    """This host's standing, or None where balancing does not apply to it (no record of
    it yet, draining, or no other host that could take its VMs)."""
    config = config or RebalanceConfig()
    own = records.get(node_id)
    if own is None or own.draining:
        return None
    pool, _, mean = _others(node_id, own, records, alive)
    if not pool:
        return None
    return Standing(_committed(own, busy), mean, mean + shedding_line(config, busy))


def _others(
    node_id: str, own: NodeRecord, records: Mapping[str, NodeRecord], alive: Collection[str]
) -> tuple[dict[str, NodeRecord], dict[str, float], float]:
    """The other hosts that may take VMs, their utilization, and the cluster mean."""
    pool = {h: r for h, r in records.items() if h in alive and not r.draining and h != node_id}
    util = {h: utilization(r) for h, r in pool.items()}
    # The VMs leaving still count in the mean: their load goes elsewhere, not away.
    mean = (sum(util.values()) + utilization(own)) / (len(util) + 1)
    return pool, util, mean


# A host at this utilization is saturated: its VMs' loads are capped at its cores, so
# they understate what the VMs want and a VM leaving frees less than it shows.
SATURATED = 0.98


def _committed(own: NodeRecord, busy: Collection[str]) -> float:
    """This host's utilization once the VMs already leaving it have gone.

    Without this, a host whose first move ended planned again while its second VM
    was still on its way out and still counted here, and shed a third for load that
    was already leaving (the simulator: 31% of steady migrations at 1,000 hosts).
    A saturated host keeps counting them: its measured loads understate demand, and
    it must not stop shedding because a big VM is on its way (the hotspot case).
    """
    util = utilization(own)
    if util >= SATURATED or own.capacity.vcpus <= 0:
        return util
    leaving = sum(vm.cpu_load for vm in own.vms if vm.name in busy)
    return util - leaving / own.capacity.vcpus


def shedding_line(config: RebalanceConfig, busy: Collection[str]) -> float:
    """How far above the mean this host may stay: `trigger` to start shedding, and
    `trigger - target` while its own moves are under way (hysteresis on the source's
    side too). Stopping right at the trigger, once the load already leaving no longer
    counted, left hosts just under it and the cluster 4-5% less balanced (steady, 100
    and 1,000 hosts); going on to the band a target must stay in costs a few moves."""
    return config.trigger - config.target if busy else config.trigger


def _movable(
    own: NodeRecord,
    recent_moves: Mapping[str, float],
    busy: Collection[str],
    now: float,
    config: RebalanceConfig,
) -> list[Unit]:
    """The units this host may move (in the order of their first VM in its record): each
    VM running, not migrating and out of cooldown, the unit loading the host, and a free
    outbound slot for each of its VMs (a group that cannot all go now waits, whole)."""
    units: dict[str, list[VmSummary]] = {}
    for vm in own.vms:
        group = vm.labels.get(AFFINITY_LABEL, "")
        units.setdefault(f"group:{group}" if group else f"vm:{vm.name}", []).append(vm)
    free = config.max_outbound - len(busy)

    def may_move(vm: VmSummary) -> bool:
        return (
            vm.state == "running"
            and vm.name not in busy
            and now - recent_moves.get(vm.name, -config.vm_cooldown - 1) >= config.vm_cooldown
        )

    return [
        tuple(unit)
        for unit in units.values()
        if len(unit) <= free and all(may_move(vm) for vm in unit) and _load(unit) > 0
    ]


def _load(unit: Sequence[VmSummary]) -> float:
    return sum(vm.cpu_load for vm in unit)


def _rejoin(
    source: str,
    own: NodeRecord,
    mean: float,
    pool: Mapping[str, NodeRecord],
    util: Mapping[str, float],
    units: list[Unit],
    closed: Collection[str],
    config: RebalanceConfig,
) -> Move | None:
    """The move that brings a split affinity group together, if this host is the one to
    send its members and they fit where most of the group runs (None otherwise).

    Only one side of a split moves: the host with fewer of the group's members, on a tie
    the busier one, then the larger node id. Every host decides the same from the same
    view, so two hosts never send their halves to each other."""
    for unit in units:
        group = _group_of(unit)
        if not group:
            continue
        here = sum(1 for vm in own.vms if vm.labels.get(AFFINITY_LABEL) == group)
        there = {
            h: n
            for h, r in pool.items()
            if (n := sum(1 for vm in r.vms if vm.labels.get(AFFINITY_LABEL) == group))
        }
        if not there:
            continue
        # The side that stays: most members, then the least utilized, then the smallest
        # id; utilization as the records say (the other host sees this one's so).
        home = min(there, key=lambda h: (-there[h], util[h], h))
        mine = utilization(own)
        if (-there[home], util[home], home) > (-here, mine, source):
            continue  # this host is the side that stays: the others come here
        target = pool[home]
        if home in closed or not _has_inbound_room(target, unit, config):
            continue
        if _fits(unit, target, config) is not None:
            continue
        names = ", ".join(vm.name for vm in unit)
        theirs = util[home]
        src_after = mine - _load(unit) / own.capacity.vcpus
        benefit = _drop(mine, theirs, src_after, theirs + _share(unit, target), mean)
        return Move(
            vm=unit[0].name,
            source=source,
            target=home,
            benefit=benefit,
            cost=_cost(unit, config),
            reason=(
                f"affinity group {group} split: {names} join its other "
                f"{there[home]} VM(s) on {home}"
            ),
            group=tuple(vm.name for vm in unit[1:]),
            rejoin=True,
        )
    return None


def _share(unit: Unit, target: NodeRecord) -> float:
    """The utilization `unit` adds to `target`."""
    return _load(unit) / target.capacity.vcpus if target.capacity.vcpus > 0 else 0.0


def _cost(unit: Unit, config: RebalanceConfig) -> float:
    """MiB-equivalents on the wire for every VM of `unit`."""
    return sum(
        migration_cost(vm.memory_mib, vm.dirty_rate_mib_s, config.bandwidth_mib_s) for vm in unit
    )


def _has_inbound_room(target: NodeRecord, unit: Unit, config: RebalanceConfig) -> bool:
    """The target receives every VM of `unit` at once within its inbound limit."""
    return target.migrations_in + len(unit) <= config.max_inbound


def _sample_targets(
    pool: Mapping[str, NodeRecord],
    util: Mapping[str, float],
    mean: float,
    units: list[Unit],
    config: RebalanceConfig,
    rng: random.Random,
) -> list[str]:
    """Up to `sample` random hosts below the mean with inbound room that can hold at least
    one of `units` (sorted for determinism): a sample of hosts that fit nothing wastes a
    round."""
    cold = sorted(
        h
        for h, u in util.items()
        if u < mean
        and any(
            _has_inbound_room(pool[h], unit, config) and _fits(unit, pool[h], config) is None
            for unit in units
        )
    )
    # A host already receiving may be receiving from a host whose move this view does not
    # show yet; two big VMs landing at once make it the next hot host (1,000 hosts: most
    # hosts left hot in steady had two VMs arrive in the same second).
    idle = [h for h in cold if pool[h].migrations_in == 0]
    if len(idle) >= config.sample:
        cold = idle
    if len(cold) <= config.sample:
        return cold
    return sorted(rng.sample(cold, config.sample))


def _best_move(
    source: str,
    own: NodeRecord,
    mine: float,
    mean: float,
    units: list[Unit],
    targets: list[str],
    pool: Mapping[str, NodeRecord],
    util: Mapping[str, float],
    config: RebalanceConfig,
    line: float,
) -> Move | None:
    """The (unit, target) pair with the best benefit per cost that keeps every rule
    (`line`: how far above the mean this host may stay, for the reason)."""
    best: float | None = None
    found: Move | None = None
    # A saturated host's VMs are starved for CPU: the loads that free most go first and
    # the copy cost does not hold them back (its long copies then start early, alongside
    # the short ones, instead of last).
    saturated = mine >= SATURATED
    for unit in units:
        cost = _cost(unit, config)
        for target in targets:
            judged = _benefit(unit, own, pool[target], mine, util[target], mean, config)
            if judged is None or judged[0] < config.min_benefit:
                continue
            if not _has_inbound_room(pool[target], unit, config):
                continue
            if _fits(unit, pool[target], config) is not None:
                continue
            benefit, in_band = judged
            key = benefit if saturated else benefit / (1.0 + cost / config.cost_scale)
            if best is None or key > best:
                best = key
                found = Move(
                    vm=unit[0].name,
                    source=source,
                    target=target,
                    benefit=benefit,
                    cost=cost,
                    reason=(
                        f"{source} at {mine:.2f} > mean {mean:.2f} + {line:g}: "
                        f"{_describe(unit)} to {target} at {util[target]:.2f}"
                        + ("" if in_band else " (too big for the band: the pair's peak drops)")
                    ),
                    group=tuple(vm.name for vm in unit[1:]),
                )
    return found


def _describe(unit: Unit) -> str:
    """A unit as the reason names it."""
    load, memory = _load(unit), sum(vm.memory_mib for vm in unit)
    if len(unit) == 1:
        return f"{unit[0].name} ({load:.2f} cores, {memory} MiB)"
    names = " + ".join(vm.name for vm in unit)
    return f"affinity group {_group_of(unit)}: {names} ({load:.2f} cores, {memory} MiB)"


def _benefit(
    unit: Unit,
    own: NodeRecord,
    target: NodeRecord,
    mine: float,
    theirs: float,
    mean: float,
    config: RebalanceConfig,
) -> tuple[float, bool] | None:
    """Drop in squared deviation from moving `unit`, and whether the target stays in the band.

    In the band, the target ends at least `target` below the trigger line. A VM
    too big for that may still go where the pair's peak drops by `target` or
    more (the target ends clearly cooler than the source is now); anything
    else would only swap which host is hot. None: the move is not allowed.
    """
    src_after = mine - _load(unit) / own.capacity.vcpus
    dst_after = theirs + _share(unit, target)
    in_band = dst_after <= mean + config.trigger - config.target
    if not in_band and dst_after > mine - config.target:
        return None
    return _drop(mine, theirs, src_after, dst_after, mean), in_band


def _drop(mine: float, theirs: float, src_after: float, dst_after: float, mean: float) -> float:
    """How much a move lowers the source's and target's squared deviation from the mean."""
    before = (mine - mean) ** 2 + (theirs - mean) ** 2
    after = (src_after - mean) ** 2 + (dst_after - mean) ** 2
    return before - after


def _fits(unit: Unit, target: NodeRecord, config: RebalanceConfig) -> str | None:
    """Why `unit` does not fit on the target, all its VMs at once (None: it fits): capacity
    and anti-affinity, the same rule as drain placement and the target's admission."""
    demands = [
        Demand(vm.vcpus, vm.memory_mib, anti_affinity=vm.labels.get(ANTI_AFFINITY_LABEL, ""))
        for vm in unit
    ]
    return group_room_refusal(target, demands, config.vcpu_overcommit)


def plan_round(
    node_id: str,
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    recent_moves: Mapping[str, float],
    busy: Collection[str],
    now: float,
    rng: random.Random,
    config: RebalanceConfig | None = None,
    closed: Collection[str] = (),
) -> tuple[list[Move], Decision]:
    """Every move this host should start now (up to its free outbound slots), and the
    decision that ended the round (why it stopped: balanced, no slot, nothing fits),
    with this host's utilization and the mean as they are now, before any of the moves.

    The round first plans the whole shedding, as if every slot were free (each move on
    the view with the earlier ones applied), and then starts the longest copies of it
    first: a host that must shed several VMs through two slots is done when its last
    copy ends, and starting a short copy first can leave one slot with the long tail
    (the 100-host hotspot: 20/18 GiB on the two slots instead of 19/19). Each started
    move is planned again on the view as it is with the moves before it started, so its
    target and reason are those of the moment it starts.
    """
    config = config or RebalanceConfig()

    def ask(
        view: Mapping[str, NodeRecord],
        moving: Collection[str],
        limits: RebalanceConfig = config,
        only: Collection[str] | None = None,
        shut: Collection[str] = closed,
    ) -> Decision:
        return plan(node_id, view, alive, recent_moves, moving, now, rng, limits, only, shut)

    first = ask(records, busy)
    free = config.max_outbound - len(busy)
    if first.move is None or free <= 0:
        return [], first  # balanced, no free slot, or nothing fits: nothing to order
    if first.move.rejoin:  # affinity before balance: this round only brings the group together
        why = f"{first.reason}; balancing waits for the next round"
        return [first.move], dataclasses.replace(first, move=None, reason=why)
    unlimited = dataclasses.replace(config, max_outbound=len(busy) + MAX_PLANNED)
    needed, more = _sequence(partial(ask, limits=unlimited), records, busy, config.trigger, free)
    view = dict(records)
    moving = set(busy)
    # One proposal per target and round: a target admits one migration from a source that
    # its libvirt does not show yet (`reservations.per_source`), and a second proposal
    # sent in the same instant would be refused.
    shut = set(closed)
    moves: list[Move] = []
    queue = sorted(needed, key=lambda m: -m.cost) + more  # stable: plan order on ties
    while queue and len(moving) < config.max_outbound:
        wanted = queue.pop(0)
        room = config.max_outbound - len(moving)
        if len(wanted.vms) > room:
            # An affinity group needs a slot per VM at once and waits for a later round;
            # the look-ahead is planned again without the groups that cannot start now, so
            # the VMs that must go in its stead (long copies first) are the ones that start.
            narrow = _narrow(records[node_id], room)
            ahead = partial(ask, limits=unlimited, only=narrow)
            needed, more = _sequence(ahead, view, moving, config.trigger, room)
            queue = sorted(needed, key=lambda m: -m.cost) + more
            continue
        decision = ask(view, moving, only=set(wanted.vms), shut=shut)
        if decision.move is not None:
            moves.append(decision.move)
            moving.update(decision.move.vms)
            shut.add(decision.move.target)
            view = _moved(view, decision.move)
    while True:  # what is left: a slot the look-ahead's moves did not fill, or why it stops
        last = ask(view, moving, shut=shut)
        if last.move is None:
            return moves, dataclasses.replace(last, utilization=first.utilization, mean=first.mean)
        moves.append(last.move)
        moving.update(last.move.vms)
        shut.add(last.move.target)
        view = _moved(view, last.move)


MAX_PLANNED = 16  # moves a round looks ahead when it orders the shedding


def _narrow(own: NodeRecord, room: int) -> set[str]:
    """This host's VMs whose unit (the VM alone, or its affinity group here) has at most
    `room` VMs: what can start in `room` free slots."""
    sizes: dict[str, int] = {}
    for vm in own.vms:
        group = vm.labels.get(AFFINITY_LABEL, "")
        sizes[group] = sizes.get(group, 0) + 1
    return {
        vm.name
        for vm in own.vms
        if not vm.labels.get(AFFINITY_LABEL) or sizes[vm.labels[AFFINITY_LABEL]] <= room
    }


def _sequence(
    ask: Callable[[Mapping[str, NodeRecord], Collection[str]], Decision],
    records: Mapping[str, NodeRecord],
    busy: Collection[str],
    trigger: float,
    slots: int,
) -> tuple[list[Move], list[Move]]:
    """The moves `ask` (this host's `plan`, slots no limit) gives one after another: those
    that bring this host down to the trigger line, and those that go on into the band
    below it (hysteresis; not worth starting a long copy first for), at most `slots` of
    those (an affinity group's move takes a slot per VM)."""
    view = dict(records)
    moving = set(busy)
    needed: list[Move] = []
    more: list[Move] = []
    while len(needed) + len(more) < MAX_PLANNED and sum(len(m.vms) for m in more) < slots:
        decision = ask(view, moving)
        if decision.move is None:
            break
        above = decision.utilization > decision.mean + trigger
        (needed if above else more).append(decision.move)
        moving.update(decision.move.vms)
        view = _moved(view, decision.move)
    return needed, more


def _moved(records: Mapping[str, NodeRecord], move: Move) -> dict[str, NodeRecord]:
    """`records` as they will be once `move` is done (the target also counts its VMs as
    inbound)."""
    source, target = records[move.source], records[move.target]
    going = set(move.vms)
    return {
        **records,
        move.source: dataclasses.replace(
            source, vms=tuple(v for v in source.vms if v.name not in going)
        ),
        move.target: dataclasses.replace(
            target,
            vms=(*target.vms, *(v for v in source.vms if v.name in going)),
            migrations_in=target.migrations_in + len(going),
        ),
    }
