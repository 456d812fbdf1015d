"""Hosts, VMs and migrations in discrete time, with one balancing strategy per run.

The model (what is real and what is simplified):

- Time advances in 1 s steps. VM loads are resampled every
  `sample_interval` (10 s, the agent's inventory interval) by `workload`;
  a host's measured load is the sum of its VMs' demand, scaled down to its
  cores when the demand exceeds them (CPU time cannot exceed the cores).
- A migration is admitted by the migration core's own rules
  (`agent/core/placement/admission.py`), applied to the TRUE state: the source runs
  fewer than 2 outbound, the cluster fewer than max(2, ceil(25% of hosts))
  (the true count here; the agents estimate it from gossiped counters), and
  the target, from its current record and its reservations (a
  `ReservationBook` per host), is alive, not draining, receives fewer than 2,
  has no VM of the same anti-affinity group running or arriving, and holds
  the VM's memory and vCPUs (x `vcpu_overcommit`). A simulated target's
  libvirt shows an arriving VM as soon as its copy starts, so the
  one-unseen-migration-per-source rule never refuses here. The VMs of an
  affinity group that the planner moves together are admitted together
  (`start_group`: the same rules for all of them at once) or not at all.
- A migration lasts `expected_migration_seconds(memory, bandwidth, dirty rate,
  MigrationPolicy())` (`agent/core/migration/cost.py`); until it ends the
  VM's load counts on the source, then on the target. It ends at that exact
  time, between the 1 s steps when it falls there (as a real migration
  does), and the hotspot and drain are judged at that moment too.
- Strategy "mesh": every host runs the real `plan_round()` (through
  `planner.py`) when the agent's `RebalanceSchedule` says a round is due:
  every `plan_interval` seconds from its own phase (a timer is seen at the
  next whole second), and sooner, when one of its migrations ends (the
  migrator's change wakes the agent) or a new sample of its own load puts it
  above its shedding line (its record's republication wakes the agent); its
  next timed round is a whole interval after any round. It passes the
  planner the targets that would refuse its next proposal (they do not show
  its last one yet), as the agent does. It plans on its own view: the
  records of every host as they were `gossip_delay` seconds ago (the membership
  simulator measured a record update reaching every live node in 0.21 s at
  100 nodes and 0.41-0.89 s at 1,000 nodes (0-10% loss), BENCHMARKS.md), with
  its own record current. It replaces simulating the gossip itself. A
  drained host runs the agent's drain (`DrainCore`, once a second: VMs by
  name, 2 outbound at a time, each placed by `placement.choose_target` on its
  view; a VM with no target is retried after 10 s, or after 1 s when a target
  only waits to show this host's last migration).
- Strategy "greedy": a central controller on the true state, every
  `plan_interval`: first drains, then repeatedly the single move that most
  lowers the variance (so the standard deviation) of host utilization,
  counting migrations in flight as landed, while some host is above mean +
  trigger, within the same limits, constraints and VM cooldown.
- Strategy "solver": `solver.solve` on a snapshot (t = 0 in steady, the event
  otherwise), then its moves are started as the limits allow.
- Scenario "failure": the failed host's VMs vanish at the failure and are
  restarted elsewhere (in the placement rule's order: least utilized host
  that fits, then most free memory; new VMs too) once the failure is
  detected, 9.25 s later at 100 hosts and 13.6 s at 1,000 (the membership
  simulator's figures, BENCHMARKS.md). Restarts are not migrations.

Everything is deterministic for a seed: the workload's draws do not depend
on the strategy, and every other random choice has its own seeded RNG.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from novacron.agent.core.migration.policy import MigrationLimits, cluster_limit
from novacron.agent.core.migration.reservations import (
    Demand,
    Reservation,
    ReservationBook,
    ReservationConfig,
    free_capacity,
)
from novacron.agent.core.placement.admission import (
    Arrival,
    Refusal,
    closed_targets,
    cluster_refusal,
    outbound_refusal,
    target_refusal,
)
from novacron.agent.core.rebalancing.drain import DrainCore, Ended
from novacron.agent.core.rebalancing.schedule import RebalanceSchedule, seen
from novacron.protocol.messages import NodeRecord, Resources, VmSummary

from . import planner
from .workload import AFFINITY_LABEL, ANTI_AFFINITY_LABEL, Sample, VmSpec, Workload, WorkloadConfig

SCENARIOS = ("steady", "hotspot", "drain", "failure")
STRATEGIES = ("none", "greedy", "solver", "mesh")
OSCILLATION_WINDOW = 600.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run: the cluster, the scenario and the knobs shared by every strategy."""

    hosts: int = 100
    vms: int = 1000
    scenario: str = "steady"
    seed: int = 1
    duration: float = 0.0  # 0: the scenario's default
    event_at: float = 60.0  # when the hotspot / drain / failure happens
    cores: int = 16
    memory_gib: int = 64
    bandwidth_mib_s: float = 1024.0
    gossip_delay: float = 1.0
    plan_interval: float = 2.0
    detect_delay: float = 0.0  # 0: the membership simulator's figure for the size
    rebalance: planner.RebalanceConfig = field(default_factory=planner.RebalanceConfig)
    solver_budget: int = 0  # 0: derived (see `run_all`)
    solver_time_limit: float = 30.0
    hot_utilization: float = 0.9  # hotspot: share of its vCPUs each hot VM then uses

    def horizon(self) -> float:
        if self.duration > 0:
            return self.duration
        return 600.0 if self.scenario == "steady" else self.event_at + 300.0

    def detection(self) -> float:
        if self.detect_delay > 0:
            return self.detect_delay
        return 9.25 if self.hosts <= 300 else 13.6


@dataclass(slots=True)
class Host:
    name: str
    cores: int
    memory_mib: int
    vms: set[str] = field(default_factory=set)
    outbound: set[str] = field(default_factory=set)  # VMs migrating away
    book: ReservationBook = field(default_factory=ReservationBook)  # room held for arrivals
    draining: bool = False
    failed: bool = False
    version: int = 0

    @property
    def inbound(self) -> set[str]:
        """VMs migrating here (each holds a reservation)."""
        return {held.vm for held in self.book}


@dataclass(slots=True)
class Migration:
    migration_id: str
    vm: str
    source: str
    target: str
    start: float
    end: float
    vcpus: int
    memory_mib: int
    purpose: str
    admission: str = ""  # the proposal it was admitted with: an affinity group's is shared


@dataclass(slots=True)
class Stats:
    migrations: int = 0
    by_purpose: dict[str, int] = field(default_factory=dict)
    mib_moved: float = 0.0
    oscillations: int = 0
    oscillation_examples: list[str] = field(default_factory=list)
    violations: dict[str, int] = field(default_factory=dict)
    violation_examples: list[str] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    plan_calls: int = 0
    started: int = 0  # migrations started (their ids count them)
    max_concurrent: int = 0
    restarts: int = 0
    lost: int = 0


class Cluster:
    """The true state: where every VM is, what it loads, what is migrating."""

    def __init__(self, config: SimConfig, workload: Workload) -> None:
        self.config = config
        self.workload = workload
        self.limits = MigrationLimits()
        self.reservations = ReservationConfig(vcpu_overcommit=config.rebalance.vcpu_overcommit)
        self.hosts: dict[str, Host] = {
            f"h{i:04d}": Host(f"h{i:04d}", config.cores, config.memory_gib * 1024)
            for i in range(config.hosts)
        }
        self.where: dict[str, str] = {}
        self.samples: dict[str, Sample] = {}
        self.measured: dict[str, float] = {}
        self.migrations: dict[str, Migration] = {}  # by VM
        self.ended: dict[str, Ended] = {}  # by migration id: how each ended
        self.last_refusal = ""  # why the latest `start` was refused
        self.recent_moves: dict[str, float] = {}
        self.moves: dict[str, list[tuple[float, str, str]]] = {}
        self.stats = Stats()
        self._records: dict[str, NodeRecord] = {}
        self._dirty_hosts: set[str] = set(self.hosts)
        self.pending_restart: list[tuple[float, str]] = []
        self.freed: set[str] = set()  # hosts whose outbound migration ended this second
        self._broken: dict[str, set[tuple[str, str]]] = {}
        self.now = 0.0

    # -- state ---------------------------------------------------------------

    def spec(self, vm: str) -> VmSpec:
        return self.workload.vms[vm]

    def touch(self, host: str) -> None:
        self._dirty_hosts.add(host)

    def add_vm(self, vm: str, host: str) -> None:
        self.where[vm] = host
        self.hosts[host].vms.add(vm)
        self.touch(host)

    def remove_vm(self, vm: str) -> None:
        host = self.where.pop(vm, None)
        mig = self.migrations.pop(vm, None)
        if mig is not None:
            self.hosts[mig.source].outbound.discard(vm)
            self.hosts[mig.target].book.release(mig.migration_id)
            self.ended[mig.migration_id] = Ended(vm, "aborted", "a host of it failed")
            self.touch(mig.target)
            self.touch(mig.source)
        if host is not None:
            self.hosts[host].vms.discard(vm)
            self.touch(host)
        self.measured.pop(vm, None)

    def eligible(self) -> list[Host]:
        """Hosts that take VMs (the planner's pool): alive and not draining."""
        return [h for h in self.hosts.values() if not h.failed and not h.draining]

    def load(self, host: Host) -> float:
        return sum(self.measured.get(vm, 0.0) for vm in host.vms)

    def util(self, host: Host) -> float:
        return self.load(host) / host.cores

    def remeasure(self, hosts: list[Host] | None = None) -> None:
        """Measured loads: demand, scaled to the host's cores when it exceeds them."""
        for host in hosts if hosts is not None else list(self.hosts.values()):
            demand = sum(self.samples[vm].load for vm in host.vms if vm in self.samples)
            scale = host.cores / demand if demand > host.cores else 1.0
            for vm in host.vms:
                sample = self.samples.get(vm)
                self.measured[vm] = sample.load * scale if sample else 0.0
            self.touch(host.name)

    def free(self, host: Host) -> tuple[float, int]:
        """vCPUs and MiB the host can still promise: the target's own rule (`free_capacity`:
        its VMs and its pending reservations deducted)."""
        room = free_capacity(self.record(host.name), host.book, self.reservations.vcpu_overcommit)
        return room.vcpus, room.memory_mib

    def fits(self, vm: str, host: Host) -> bool:
        spec = self.spec(vm)
        vcpus, memory = self.free(host)
        return spec.memory_mib <= memory and spec.vcpus <= vcpus

    def anti_affine_clash(self, vm: str, host: Host) -> bool:
        group = self.spec(vm).labels.get(ANTI_AFFINITY_LABEL)
        if not group:
            return False
        return any(
            other != vm and self.spec(other).labels.get(ANTI_AFFINITY_LABEL) == group
            for other in host.vms | host.inbound
        )

    def held_by_affinity(self, vm: str) -> bool:
        """Part of an affinity group that shares its host (greedy and the solver leave those
        where they are; the mesh's planner moves such a group whole)."""
        group = self.spec(vm).labels.get(AFFINITY_LABEL)
        if not group:
            return False
        host = self.hosts[self.where[vm]]
        return any(o != vm and self.spec(o).labels.get(AFFINITY_LABEL) == group for o in host.vms)

    def record(self, name: str) -> NodeRecord:
        """The host's gossiped record as it would publish it now."""
        if name in self._dirty_hosts or name not in self._records:
            host = self.hosts[name]
            host.version += 1
            vms = tuple(
                VmSummary(
                    name=vm,
                    state="running",
                    vcpus=self.spec(vm).vcpus,
                    memory_mib=self.spec(vm).memory_mib,
                    cpu_load=self.measured.get(vm, 0.0),
                    dirty_rate_mib_s=self.samples[vm].dirty_rate_mib_s
                    if vm in self.samples
                    else 0.0,
                    labels=self.spec(vm).labels,
                )
                for vm in sorted(host.vms)
            )
            self._records[name] = NodeRecord(
                node_id=name,
                version=host.version,
                capacity=Resources(vcpus=float(host.cores), memory_mib=host.memory_mib),
                vms=vms,
                migrations_out=len(host.outbound),
                migrations_in=len(host.inbound),
                draining=host.draining,
            )
            self._dirty_hosts.discard(name)
        return self._records[name]

    def records(self) -> dict[str, NodeRecord]:
        return {name: self.record(name) for name in self.hosts}

    # -- migrations ----------------------------------------------------------

    def closed_targets(self, host: Host, view: Mapping[str, NodeRecord]) -> set[str]:
        """Targets that would refuse `host`'s next proposal, as its `view` tells (the
        migration core's `targets_full_from_here`)."""
        going = (self.migrations[vm] for vm in host.outbound)
        outbound = ((m.target, m.vm, m.admission or m.migration_id) for m in going)
        return closed_targets(outbound, view, self.reservations.per_source)

    def cluster_limit(self) -> int:
        alive = sum(1 for h in self.hosts.values() if not h.failed)
        return cluster_limit(self.limits, alive)

    def refuse(self, why: str) -> None:
        self.stats.refusals[why] = self.stats.refusals.get(why, 0) + 1

    def start(self, vm: str, target: str, purpose: str, admission: str = "") -> str | None:
        """Ask `target` to admit `vm` now and start the migration: its id, or None if refused
        (counted; `last_refusal` says why). The source's and the cluster's limits and the
        target's admission are the migration core's rules (`agent/core/placement/admission.py`), on
        the true state."""
        source = self.where.get(vm)
        if source is None:
            self._refuse("vm gone", f"{vm} no longer exists")
            return None
        if vm in self.migrations:
            self._refuse("vm already migrating", f"{vm} is already migrating")
            return None
        src, dst = self.hosts[source], self.hosts[target]
        if source == target:
            self._refuse("target is the source", f"{vm} already runs on {target}")
            return None
        if src.failed or dst.failed:
            self._refuse("host failed", f"{source} or {target} has failed")
            return None
        spec = self.spec(vm)
        group = spec.labels.get(ANTI_AFFINITY_LABEL, "")
        alive = sum(1 for h in self.hosts.values() if not h.failed)
        refusal = (
            outbound_refusal(source, len(src.outbound), self.limits)
            or cluster_refusal(len(self.migrations), alive, self.limits)
            or target_refusal(
                target,
                self.record(target),
                dst.book,
                [Arrival(vm, source, Demand(spec.vcpus, spec.memory_mib, 0.0, group))],
                draining=dst.draining,
                max_inbound=self.limits.max_inbound,
                config=self.reservations,
            )
        )
        if refusal is not None:
            self._refused(refusal)
            return None
        seconds = self.copy_seconds(vm)
        if math.isinf(seconds):
            self._refuse("would not converge", f"{vm} dirties memory faster than it copies")
            return None
        self.stats.started += 1
        mig = Migration(
            f"m{self.stats.started}",
            vm,
            source,
            target,
            self.now,
            self.now + seconds,
            spec.vcpus,
            spec.memory_mib,
            purpose,
            admission,
        )
        self.migrations[vm] = mig
        src.outbound.add(vm)
        # The simulated target's libvirt shows the arriving VM as soon as its copy starts,
        # and the simulated source never goes quiet: the lease neither lapses nor expires.
        dst.book.add(
            Reservation(
                migration_id=mig.migration_id,
                vm=vm,
                source=source,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                disk_gib=0.0,
                created=self.now,
                expires=math.inf,
                anti_affinity=group,
                purpose=purpose,
                seen=self.now,
            )
        )
        self.touch(source)
        self.touch(target)
        self.stats.max_concurrent = max(self.stats.max_concurrent, len(self.migrations))
        return mig.migration_id

    def _refused(self, refusal: Refusal) -> None:
        self._refuse(refusal.rule.value, refusal.reason)
        return None

    def _refuse(self, key: str, why: str) -> None:
        self.refuse(key)
        self.last_refusal = why

    def copy_seconds(self, vm: str) -> float:
        """How long `vm`'s migration takes now (inf: it would not converge)."""
        dirty = self.samples[vm].dirty_rate_mib_s if vm in self.samples else 0.0
        memory = self.spec(vm).memory_mib
        return planner.migration_seconds(memory, self.config.bandwidth_mib_s, dirty)

    # -- group admission: an affinity group arrives whole or not at all ----------

    def start_group(self, vms: tuple[str, ...], target: str, purpose: str) -> bool:
        """Admit every VM of an affinity group on `target` at once, or none (False, counted),
        by the migration core's rules applied to all of them together (`admission.py`);
        then start each (each start then holds)."""
        if len(vms) == 1:
            return self.start(vms[0], target, purpose) is not None
        sources = {self.where.get(vm) for vm in vms}
        source = sources.pop() if len(sources) == 1 else None
        if source is None:
            self._refuse("group not on one host", f"{'+'.join(vms)} are not on one host")
            return False
        if any(vm in self.migrations for vm in vms):
            self._refuse("vm already migrating", f"a VM of {'+'.join(vms)} is migrating")
            return False
        if any(math.isinf(self.copy_seconds(vm)) for vm in vms):
            self._refuse("would not converge", f"a VM of {'+'.join(vms)} would not converge")
            return False
        src, dst = self.hosts[source], self.hosts[target]
        alive = sum(1 for h in self.hosts.values() if not h.failed)
        refusal = (
            outbound_refusal(source, len(src.outbound), self.limits, len(vms))
            or cluster_refusal(len(self.migrations), alive, self.limits, len(vms))
            or target_refusal(
                target,
                self.record(target),
                dst.book,
                [Arrival(vm, source, self._demand(vm)) for vm in vms],
                draining=dst.draining,
                max_inbound=self.limits.max_inbound,
                config=self.reservations,
            )
        )
        if refusal is not None:
            self._refuse(f"group: {refusal.rule.value}", refusal.reason)
            return False
        admission = f"g{self.stats.started + 1}"
        return all([self.start(vm, target, purpose, admission) is not None for vm in vms])

    def _demand(self, vm: str) -> Demand:
        spec = self.spec(vm)
        return Demand(spec.vcpus, spec.memory_mib, 0.0, spec.labels.get(ANTI_AFFINITY_LABEL, ""))

    def finish_due(self) -> list[Migration]:
        done = sorted(
            (m for m in self.migrations.values() if m.end <= self.now), key=lambda m: (m.end, m.vm)
        )
        self.freed = {mig.source for mig in done}
        for mig in done:
            del self.migrations[mig.vm]
            src, dst = self.hosts[mig.source], self.hosts[mig.target]
            src.outbound.discard(mig.vm)
            dst.book.release(mig.migration_id)  # its record lists the VM from now on
            self.ended[mig.migration_id] = Ended(mig.vm, "committed")
            src.vms.discard(mig.vm)
            dst.vms.add(mig.vm)
            self.where[mig.vm] = mig.target
            self.recent_moves[mig.vm] = self.now
            self.stats.migrations += 1
            self.stats.by_purpose[mig.purpose] = self.stats.by_purpose.get(mig.purpose, 0) + 1
            self.stats.mib_moved += mig.memory_mib
            if dst.draining:
                self.violation("drained host received", f"{mig.vm} landed on draining {dst.name}")
            history = self.moves.setdefault(mig.vm, [])
            for when, a, b in history:
                if a == mig.target and b == mig.source and self.now - when <= OSCILLATION_WINDOW:
                    self.stats.oscillations += 1
                    if len(self.stats.oscillation_examples) < 5:
                        self.stats.oscillation_examples.append(
                            f"{mig.vm}: {a}->{b} at {when:.0f}s, back at {self.now:.0f}s"
                        )
                    break
            history.append((self.now, mig.source, mig.target))
            self.check_host(dst)
            self.remeasure([src, dst])
        return done

    # -- constraint checker --------------------------------------------------

    def violation(self, kind: str, detail: str) -> None:
        self.stats.violations[kind] = self.stats.violations.get(kind, 0) + 1
        if len(self.stats.violation_examples) < 10:
            self.stats.violation_examples.append(f"t={self.now:.0f}s {kind}: {detail}")

    def check_host(self, host: Host) -> None:
        """Count each rule `host` newly breaks (capacity, anti-affinity), once per episode."""
        now_broken = {
            (kind, detail.split(":")[0] if kind == "anti-affinity" else ""): detail
            for kind, detail in host_violations(self, host)
        }
        before = self._broken.get(host.name, set())
        for key, detail in now_broken.items():
            if key not in before:
                self.violation(key[0], detail)
        self._broken[host.name] = set(now_broken)

    def check_all(self) -> None:
        for host in self.hosts.values():
            if not host.failed:
                self.check_host(host)


def host_violations(cluster: Cluster, host: Host) -> list[tuple[str, str]]:
    """The rules `host` breaks: memory, vCPUs over the overcommit ratio, anti-affinity."""
    out: list[tuple[str, str]] = []
    memory = sum(cluster.spec(vm).memory_mib for vm in host.vms)
    vcpus = sum(cluster.spec(vm).vcpus for vm in host.vms)
    if memory > host.memory_mib:
        out.append(("memory capacity", f"{host.name} holds {memory} of {host.memory_mib} MiB"))
    limit = host.cores * cluster.config.rebalance.vcpu_overcommit
    if vcpus > limit:
        out.append(("vcpu capacity", f"{host.name} holds {vcpus} of {limit:g} vCPUs"))
    groups: dict[str, int] = {}
    for vm in host.vms:
        group = cluster.spec(vm).labels.get(ANTI_AFFINITY_LABEL)
        if group:
            groups[group] = groups.get(group, 0) + 1
    for group, count in sorted(groups.items()):
        if count > 1:
            out.append(("anti-affinity", f"group {group} on {host.name}: {count} VMs"))
    return out


# -- initial placement -------------------------------------------------------


def place_initial(cluster: Cluster, balanced: bool, rng: random.Random) -> None:
    """Put every VM on a host: random fit (steady), or least expected load first (others).

    Random fit is what a scheduler that ignores load produces; the balanced
    placement (largest expected load first onto the least loaded host that
    fits) gives the event scenarios a calm start, so what the strategies do
    afterwards is about the event.
    """
    specs = sorted(cluster.workload.vms.values(), key=lambda s: s.name)
    units: list[list[VmSpec]] = []
    by_group: dict[str, list[VmSpec]] = {}
    for spec in specs:
        group = spec.labels.get(AFFINITY_LABEL)
        if group:
            by_group.setdefault(group, []).append(spec)
            if len(by_group[group]) == 1:
                units.append(by_group[group])
        else:
            units.append([spec])
    if balanced:
        units.sort(key=lambda u: (-sum(s.base * s.vcpus for s in u), u[0].name))
    hosts = list(cluster.hosts.values())
    expected = {h.name: 0.0 for h in hosts}
    for unit in units:
        order = list(hosts)
        if balanced:
            order.sort(key=lambda h: (expected[h.name] / h.cores, h.name))
        else:
            rng.shuffle(order)
        for host in order:
            vcpus, memory = cluster.free(host)
            if (
                sum(s.memory_mib for s in unit) <= memory
                and sum(s.vcpus for s in unit) <= vcpus
                and not any(cluster.anti_affine_clash(s.name, host) for s in unit)
            ):
                for s in unit:
                    cluster.add_vm(s.name, host.name)
                    expected[host.name] += s.base * s.vcpus
                break


def typical_host(cluster: Cluster) -> str:
    """The scenario's host: as many VMs as the median host, then the lowest name."""
    counts = sorted(len(h.vms) for h in cluster.hosts.values())
    median = counts[len(counts) // 2]
    return min(cluster.hosts.values(), key=lambda h: (abs(len(h.vms) - median), h.name)).name


def place_new(cluster: Cluster, vm: str, exclude: str = "") -> str | None:
    """Where a new or restarted VM goes: the placement rule's order (`choose_target`: least
    utilized host that fits, then most free memory), on the true state."""
    best: tuple[float, int, str] | None = None
    for host in cluster.hosts.values():
        if host.failed or host.draining or host.name == exclude:
            continue
        if not cluster.fits(vm, host) or cluster.anti_affine_clash(vm, host):
            continue
        memory = cluster.free(host)[1]
        key = (cluster.util(host), -memory, host.name)
        if best is None or key < best:
            best = key
    return best[-1] if best else None


# -- strategies --------------------------------------------------------------


class Strategy:
    name = "none"

    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.cluster = cluster
        self.seed = seed
        self.info: dict[str, Any] = {}
        self.drains: dict[str, DrainCore] = {}  # the drain of every host that drains
        self._views: deque[tuple[float, dict[str, NodeRecord], frozenset[str]]] = deque()
        self.failed_at: dict[str, float] = {}

    def step(self, now: float) -> None:
        """Balancing for this second. The base strategy does nothing but run drains."""
        self.drain_loop(now)

    def on_event(self, now: float) -> None:
        """Called right after the scenario's event (and at t = 0)."""

    def substep(self, now: float) -> None:
        """Between whole seconds, right after migrations ended at `now`."""

    # Gossiped views: the true records as they were `gossip_delay` ago.
    def remember(self, now: float) -> None:
        c = self.cluster
        detection = c.config.detection()
        alive = frozenset(
            h.name
            for h in c.hosts.values()
            if not h.failed or now - self.failed_at.get(h.name, now) < detection
        )
        self._views.append((now, c.records(), alive))
        cutoff = now - c.config.gossip_delay
        while len(self._views) > 1 and self._views[1][0] <= cutoff + 1e-9:
            self._views.popleft()

    def view(self, now: float) -> tuple[dict[str, NodeRecord], frozenset[str]]:
        cutoff = now - self.cluster.config.gossip_delay
        chosen = self._views[0]
        for entry in self._views:
            if entry[0] <= cutoff + 1e-9:
                chosen = entry
            else:
                break
        return chosen[1], chosen[2]

    def drain_loop(self, now: float) -> None:
        """The agent's drain (`DrainCore`) on every draining host, once a second (its look
        interval), placing with the agent's `choose_target` on the host's view."""
        c = self.cluster
        draining = [h for h in c.hosts.values() if h.draining and not h.failed]
        if not draining:
            return
        if not self._views or self._views[-1][0] < now:
            self.remember(now)  # strategies other than the mesh keep no views of their own
        records, alive = self.view(now)
        for host in draining:
            core = self.drains.get(host.name)
            if core is None:
                core = self.drains[host.name] = DrainCore(c.limits.max_outbound)
            driven = DrainedSimHost(c, host)
            own = planner.Overlay(records, host.name, c.record(host.name))
            core.look(now, driven)
            while (move := core.next_move(now, driven)) is not None:
                closed = c.closed_targets(host, own)
                placement = planner.place_group(
                    own,
                    alive,
                    host.name,
                    [c._demand(vm) for vm in move],
                    c.limits,
                    c.config.rebalance.vcpu_overcommit,
                    closed,
                )
                if placement.target is None:
                    core.no_target(move, placement.reason, now, closed)
                elif not c.start_group(move, placement.target, "drain"):
                    core.refused(move, c.last_refusal, now)
                else:
                    core.started(move, [c.migrations[vm].migration_id for vm in move])


class DrainedSimHost:
    """A simulated host as the drain core reads it (its VMs all run; none is in doubt)."""

    def __init__(self, cluster: Cluster, host: Host) -> None:
        self._cluster = cluster
        self._host = host

    def vm_states(self) -> dict[str, str]:
        return dict.fromkeys(self._host.vms, "running")

    def busy(self, vm: str) -> bool:
        return vm in self._host.outbound

    def arriving(self, vm: str) -> bool:
        return vm in self._host.inbound

    def doubt(self, vm: str) -> str | None:
        return None

    def outbound(self) -> int:
        return len(self._host.outbound)

    def ended(self, migration_id: str) -> Ended | None:
        return self._cluster.ended.get(migration_id)

    def group_of(self, vm: str) -> str:
        return self._cluster.spec(vm).labels.get(AFFINITY_LABEL, "")


@dataclass(frozen=True, slots=True)
class MeshView:
    """What every host's view holds at one instant, with the utilizations of its pool."""

    records: Mapping[str, NodeRecord]  # the gossiped records
    alive: frozenset[str]  # hosts not (yet) seen failed
    pool: Mapping[str, float]  # utilization of each alive host that takes VMs
    total: float  # their sum

    @classmethod
    def of(cls, records: Mapping[str, NodeRecord], alive: frozenset[str]) -> MeshView:
        pool = {
            n: planner.utilization(r) for n, r in records.items() if n in alive and not r.draining
        }
        return cls(records, alive, pool, sum(pool.values()))

    def above(self, own: NodeRecord, cfg: planner.RebalanceConfig, busy: Collection[str]) -> bool:
        """Whether `own`'s host may be over its shedding line (`plan` would answer
        "balanced" otherwise: it counts no more load than this; a speed-up, not a rule)."""
        mine = planner.utilization(own)
        name = own.node_id
        others = self.total - self.pool.get(name, 0.0)
        count = len(self.pool) - (1 if name in self.pool else 0) + 1
        if count <= 1:
            return False
        mean = (others + mine) / count
        return mine >= mean + planner.shedding_line(cfg, busy) - 1e-9


class Mesh(Strategy):
    """Every host runs the agent's planner on its own (delayed) view, when the agent's
    `RebalanceSchedule` says a round is due."""

    name = "mesh"

    def __init__(self, cluster: Cluster, seed: int) -> None:
        super().__init__(cluster, seed)
        interval = cluster.config.plan_interval
        max_outbound = cluster.config.rebalance.max_outbound
        phase_rng = random.Random(seed * 31 + 5)
        self.schedules = {
            h: RebalanceSchedule(interval, max_outbound, phase_rng.uniform(0.0, interval))
            for h in cluster.hosts
        }
        self.rngs = {h: random.Random(f"{seed}:{h}") for h in cluster.hosts}
        self.log: list[dict[str, Any]] = []

    def substep(self, now: float) -> None:
        """Migrations ended at `now`: their sources' migrators changed, which wakes their
        rebalancers (records changed too: remember them)."""
        self.remember(now)
        self._wake(now, self._freed())

    def _freed(self) -> set[str]:
        """Hosts whose outbound migration just ended."""
        c = self.cluster
        freed, c.freed = c.freed, set()
        return freed

    def step(self, now: float) -> None:
        """A whole second: timed rounds fall due (a round's timer is seen at the next whole
        second), and at a sample every host's record is republished, which wakes it."""
        c = self.cluster
        freed = self._freed()
        self.remember(now)
        self.drain_loop(now)
        sampled = now % c.workload.config.sample_interval == 0
        self._wake(now, set(c.hosts) if sampled else freed, timed=True)

    def _wake(self, now: float, woken: Collection[str], timed: bool = False) -> None:
        """Every host whose timed round has come (if `timed`), and every host in `woken`
        whose schedule finds a round due now, plans a round on its view."""
        c = self.cluster
        view = MeshView.of(*self.view(now))
        due = {n for n, sched in self.schedules.items() if sched.timer_due(now)} if timed else set()
        for name in sorted({*due, *woken}):
            host = c.hosts[name]
            own = c.record(name)
            if name not in due:
                hot = partial(self._hot, host, own, view)
                if not self.schedules[name].due_now(len(host.outbound), own, hot):
                    continue
            before = seen(own, len(host.outbound))
            started = 0
            if self._takes_part(host) and view.above(own, c.config.rebalance, host.outbound):
                started = self._plan(now, name, own, view)
            self.schedules[name].planned(now, before, started)

    @staticmethod
    def _takes_part(host: Host) -> bool:
        """A failed host plans nothing, and a draining one leaves its VMs to the drain."""
        return not host.failed and not host.draining

    def _hot(self, host: Host, own: NodeRecord, view: MeshView) -> bool:
        """Whether `host` is above its shedding line on its view (`over_line`), after a
        cheap look at the mean that rules most hosts out."""
        cfg = self.cluster.config.rebalance
        if not self._takes_part(host) or not view.above(own, cfg, host.outbound):
            return False
        overlay = planner.Overlay(view.records, host.name, own)
        return planner.over_line(host.name, overlay, view.alive, host.outbound, cfg)

    def _plan(self, now: float, name: str, own: NodeRecord, view: MeshView) -> int:
        """`plan_round` on `name`'s view, its moves started: how many started."""
        c = self.cluster
        host = c.hosts[name]
        c.stats.plan_calls += 1
        overlay = planner.Overlay(view.records, name, own)
        moves, decision = planner.plan_round(
            name,
            overlay,
            view.alive,
            c.recent_moves,
            set(host.outbound),
            now,
            self.rngs[name],
            c.config.rebalance,
            c.closed_targets(host, overlay),
        )
        key = decision.reason.split(":")[0]
        c.stats.decisions[key] = c.stats.decisions.get(key, 0) + 1
        c.stats.decisions["move"] = c.stats.decisions.get("move", 0) + len(moves)
        started = 0
        for move in moves:
            admitted = c.start_group(move.vms, move.target, "rebalance")
            started += admitted
            if len(self.log) < 200:
                self.log.append(
                    {
                        "t": now,
                        "host": name,
                        "vm": "+".join(move.vms),
                        "target": move.target,
                        "admitted": admitted,
                        "reason": move.reason,
                    }
                )
        return started


class Greedy(Strategy):
    """Central controller: the single move that most lowers the utilization variance, repeated."""

    name = "greedy"
    candidates = 20
    min_drop = 1e-4  # its own threshold, fixed: the planner's `min_benefit` is not its business

    def step(self, now: float) -> None:
        c = self.cluster
        if now % c.config.plan_interval != 0:
            return
        cfg = c.config.rebalance
        proj = {h.name: c.load(h) for h in c.hosts.values()}
        for mig in c.migrations.values():
            x = c.measured.get(mig.vm, 0.0)
            proj[mig.source] -= x
            proj[mig.target] += x
        pool = c.eligible()
        if len(pool) < 2:
            return
        util = {h.name: proj[h.name] / h.cores for h in c.hosts.values()}
        self._drain(now, pool, util)
        while len(c.migrations) < c.cluster_limit():
            mean = sum(util[h.name] for h in pool) / len(pool)
            hot = [
                h
                for h in pool
                if util[h.name] > mean + cfg.trigger and len(h.outbound) < c.limits.max_outbound
            ]
            if not hot:
                return
            cold = sorted(
                (h for h in pool if len(h.inbound) < c.limits.max_inbound),
                key=lambda h: (util[h.name], h.name),
            )[: self.candidates]
            best: tuple[float, str, str] | None = None
            for src in hot:
                for vm in sorted(src.vms):
                    if not self._movable(vm, now):
                        continue
                    x = c.measured.get(vm, 0.0)
                    for dst in cold:
                        if dst is src or not c.fits(vm, dst) or c.anti_affine_clash(vm, dst):
                            continue
                        us, ut = util[src.name], util[dst.name]
                        us2, ut2 = us - x / src.cores, ut + x / dst.cores
                        drop = (
                            (us - mean) ** 2
                            + (ut - mean) ** 2
                            - (us2 - mean) ** 2
                            - (ut2 - mean) ** 2
                        )
                        if drop > self.min_drop and (best is None or drop > best[0]):
                            best = (drop, vm, dst.name)
            if best is None:
                return
            _, vm, target = best
            source = c.where[vm]
            if not c.start(vm, target, "rebalance"):
                return
            x = c.measured.get(vm, 0.0)
            util[source] -= x / c.hosts[source].cores
            util[target] += x / c.hosts[target].cores

    def _movable(self, vm: str, now: float) -> bool:
        c = self.cluster
        cooldown = c.config.rebalance.vm_cooldown
        return (
            vm not in c.migrations
            and now - c.recent_moves.get(vm, -math.inf) >= cooldown
            and not c.held_by_affinity(vm)
            and c.measured.get(vm, 0.0) > 0
        )

    def _drain(self, now: float, pool: list[Host], util: dict[str, float]) -> None:
        c = self.cluster
        for host in c.hosts.values():
            if not host.draining or host.failed:
                continue
            for vm in sorted(host.vms):
                if vm in c.migrations or len(host.outbound) >= c.limits.max_outbound:
                    continue
                x = c.measured.get(vm, 0.0)
                options = sorted(
                    (util[h.name] + x / h.cores, h.name)
                    for h in pool
                    if len(h.inbound) < c.limits.max_inbound
                    and c.fits(vm, h)
                    and not c.anti_affine_clash(vm, h)
                )
                if options and c.start(vm, options[0][1], "drain"):
                    util[options[0][1]] = options[0][0]


class Solver(Strategy):
    """A CP-SAT plan for one snapshot, carried out as the limits allow."""

    name = "solver"

    def __init__(self, cluster: Cluster, seed: int, budget: int, time_limit: float) -> None:
        super().__init__(cluster, seed)
        self.budget = budget
        self.time_limit = time_limit
        self.queue: list[tuple[str, str, str, float]] = []  # (vm, target, purpose, deadline)

    def on_event(self, now: float) -> None:
        from . import solver

        result = solver.solve(self.cluster, self.budget, self.time_limit, self.seed)
        self.info.setdefault("solves", []).append({"t": now, **result.summary()})
        self.queue = [(vm, target, purpose, now + 300.0) for vm, target, purpose in result.moves]

    def step(self, now: float) -> None:
        c = self.cluster
        keep: list[tuple[str, str, str, float]] = []
        for vm, target, purpose, deadline in self.queue:
            if vm not in c.where or now > deadline:
                continue
            if c.where[vm] == target:
                continue
            if not c.start(vm, target, purpose):
                keep.append((vm, target, purpose, deadline))
        self.queue = keep
        # A drained host's VMs the plan left behind (e.g. over budget) go by the drain loop.
        self.drain_loop(now)


# -- the run -----------------------------------------------------------------


@dataclass(slots=True)
class Result:
    strategy: str
    report: dict[str, Any]


def _imbalance(cluster: Cluster) -> tuple[float, float, float]:
    """(std dev, max/mean, mean) of utilization over hosts that take VMs."""
    utils = [cluster.util(h) for h in cluster.eligible()]
    if not utils:
        return 0.0, 0.0, 0.0
    mean = sum(utils) / len(utils)
    std = statistics.pstdev(utils)
    return std, (max(utils) / mean if mean > 0 else 0.0), mean


def simulate(
    config: SimConfig,
    strategy: str,
    solver_budget: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One strategy on the scenario; returns its report (JSON-ready)."""
    wall = time.perf_counter()
    workload = Workload(WorkloadConfig(seed=config.seed, vms=config.vms))
    cluster = Cluster(config, workload)
    place_initial(cluster, balanced=config.scenario != "steady", rng=random.Random(config.seed))
    unplaced = len(workload.vms) - len(cluster.where)
    strat: Strategy
    if strategy == "mesh":
        strat = Mesh(cluster, config.seed)
    elif strategy == "greedy":
        strat = Greedy(cluster, config.seed)
    elif strategy == "solver":
        budget = solver_budget or config.solver_budget or max(1, config.vms // 20)
        strat = Solver(cluster, config.seed, budget, config.solver_time_limit)
    elif strategy == "none":
        strat = Strategy(cluster, config.seed)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    horizon = config.horizon()
    interval = workload.config.sample_interval
    event_host = typical_host(cluster)
    series: list[list[float]] = []
    hotspot: dict[str, Any] = {}
    drain: dict[str, Any] = {}
    failure: dict[str, Any] = {}
    solve_at = 0.0 if config.scenario == "steady" else config.event_at
    if config.scenario == "failure":
        solve_at = float(math.ceil(config.event_at + config.detection()) + 1)
    steps = int(horizon)
    for step in range(steps + 1):
        now = float(step)
        cluster.now = now
        cluster.finish_due()
        # Scenario events.
        if config.scenario != "steady" and now == config.event_at:
            host = cluster.hosts[event_host]
            if config.scenario == "hotspot":
                hot = sorted(host.vms)
                workload.make_hot(hot, config.hot_utilization)
                hotspot = {"host": event_host, "vms": len(hot), "onset": now, "resolved_at": None}
            elif config.scenario == "drain":
                host.draining = True
                cluster.touch(event_host)
                drain = {"host": event_host, "vms": len(host.vms), "start": now, "done_at": None}
            elif config.scenario == "failure":
                host.failed = True
                strat.failed_at[event_host] = now
                lost = sorted(host.vms)
                for vm in lost:
                    cluster.remove_vm(vm)
                for mig in list(cluster.migrations.values()):
                    if event_host in (mig.source, mig.target):
                        cluster.remove_vm(mig.vm)
                        if mig.target == event_host:
                            cluster.add_vm(mig.vm, mig.source)
                cluster.pending_restart = [(now + config.detection(), vm) for vm in lost]
                failure = {"host": event_host, "vms": len(lost), "at": now}
        for due, vm in list(cluster.pending_restart):
            if due <= now:
                cluster.pending_restart.remove((due, vm))
                if vm not in workload.vms:
                    continue
                target = place_new(cluster, vm, exclude=event_host)
                if target is None:
                    cluster.stats.lost += 1
                else:
                    cluster.add_vm(vm, target)
                    cluster.stats.restarts += 1
                    cluster.check_host(cluster.hosts[target])
        # Workload sample and churn.
        if step % int(interval) == 0:
            if step > 0:
                arriving, leaving = workload.churn(now - interval, now)
                for vm in leaving:
                    cluster.remove_vm(vm)
                for spec in arriving:
                    target = place_new(cluster, spec.name)
                    if target is not None:
                        cluster.add_vm(spec.name, target)
            cluster.samples = workload.sample(now)
            cluster.remeasure()
            cluster.check_all()
        if now == solve_at:
            strat.on_event(now)
        strat.step(now)
        std, maxmean, mean = _imbalance(cluster)
        if step % int(interval) == 0 or step == steps:
            series.append([now, round(std, 5), round(maxmean, 4), round(mean, 4)])
        _watch_events(cluster, event_host, hotspot, drain, now, mean)
        _between_seconds(cluster, strat, event_host, hotspot, drain, now)
        if progress and step % 100 == 0:
            progress(f"{strategy} t={now:.0f} std={std:.4f} migrations={cluster.stats.migrations}")
    if hotspot:
        hotspot["final_util"] = round(cluster.util(cluster.hosts[event_host]), 4)
        hotspot["vms_left"] = len(cluster.hosts[event_host].vms)
    if drain:
        drain["left"] = len(cluster.hosts[event_host].vms)
    tail = [row[1] for row in series if row[0] >= horizon - 60.0]
    tail_mm = [row[2] for row in series if row[0] >= horizon - 60.0]
    stats = cluster.stats
    report: dict[str, Any] = {
        "strategy": strategy,
        "final": {
            "std": series[-1][1],
            "max_over_mean": series[-1][2],
            "std_last_60s": round(sum(tail) / len(tail), 5),
            "max_over_mean_last_60s": round(sum(tail_mm) / len(tail_mm), 4),
        },
        "initial": {"std": series[0][1], "max_over_mean": series[0][2]},
        "migrations": stats.migrations,
        "migrations_by_purpose": dict(sorted(stats.by_purpose.items())),
        "gib_moved": round(stats.mib_moved / 1024.0, 2),
        "still_migrating": len(cluster.migrations),
        "max_concurrent_migrations": stats.max_concurrent,
        "cluster_limit": cluster.cluster_limit(),
        "oscillations": stats.oscillations,
        "oscillation_examples": stats.oscillation_examples,
        "violations": dict(sorted(stats.violations.items())),
        "violation_examples": stats.violation_examples,
        "refusals": dict(sorted(stats.refusals.items())),
        "unplaced_at_start": unplaced,
        "series": series,
    }
    if strategy == "mesh":
        report["plan_calls"] = stats.plan_calls
        report["decisions"] = dict(sorted(stats.decisions.items()))
        assert isinstance(strat, Mesh)
        report["decision_log_head"] = strat.log[:20]
    if hotspot:
        report["hotspot"] = hotspot
    if drain:
        report["drain"] = drain
    if failure:
        failure["restarted"] = stats.restarts
        failure["not_restarted"] = stats.lost
        report["failure"] = failure
    if strategy == "solver":
        report["solver"] = strat.info.get("solves", [])
    report["wall_seconds"] = round(time.perf_counter() - wall, 2)
    return report


def _between_seconds(
    cluster: Cluster,
    strat: Strategy,
    event_host: str,
    hotspot: dict[str, Any],
    drain: dict[str, Any],
    now: float,
) -> None:
    """Migrations that end between `now` and the next second end then, as real ones do:
    the VM lands, the source's slot frees and its agent may plan again at once."""
    before = now + 1.0
    while True:
        ends = [m.end for m in cluster.migrations.values() if m.end < before]
        if not ends:
            return
        t = max(min(ends), now)
        cluster.now = t
        ended = cluster.finish_due()
        strat.substep(t)
        if ended:
            _watch_events(cluster, event_host, hotspot, drain, t, _imbalance(cluster)[2])


def _watch_events(
    cluster: Cluster,
    event_host: str,
    hotspot: dict[str, Any],
    drain: dict[str, Any],
    now: float,
    mean: float,
) -> None:
    """Note when the hotspot is resolved or the drained host empty (at `now`, exactly)."""
    if hotspot and hotspot["resolved_at"] is None and now >= hotspot["onset"]:
        hot_host = cluster.hosts[event_host]
        # A host left with one VM that alone is over the line cannot get cooler: any
        # host holding that VM would be as hot. That hotspot is as resolved as it gets.
        alone = len(hot_host.vms) == 1
        hot_util = cluster.util(hot_host)
        line = mean + cluster.config.rebalance.trigger
        within = hot_util <= line
        if within or alone:
            hotspot["resolved_at"] = round(now, 3)
            hotspot["seconds"] = round(now - hotspot["onset"], 3)
            hotspot["by"] = "within the trigger" if within else "single VM over the line left"
            hotspot["util_at_resolution"] = round(hot_util, 4)
            hotspot["line_at_resolution"] = round(line, 4)
    if drain and drain["done_at"] is None and not cluster.hosts[event_host].vms:
        drain["done_at"] = round(now, 3)
        drain["seconds"] = round(now - drain["start"], 3)
