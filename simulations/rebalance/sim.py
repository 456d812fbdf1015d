"""Hosts, VMs and migrations in discrete time, with one balancing strategy per run.

The model (what is real and what is simplified):

- Time advances in 1 s steps. VM loads are resampled every
  `sample_interval` (10 s, the agent's inventory interval) by `workload`;
  a host's measured load is the sum of its VMs' demand, scaled down to its
  cores when the demand exceeds them (CPU time cannot exceed the cores).
- Every migration runs through the agent's own `MigrationCore`
  (`agent/core/migration/saga.py`), one per host, on the true records: the
  source checks its own limits and what the target's record shows (fewer
  than 2 outbound, the cluster fewer than max(2, ceil(25% of hosts)) by the
  published counters, the target alive, not draining, receiving fewer than
  2, holding the VMs) and proposes; the target admits on its own record and
  reservations (`agent/core/placement/admission.py`: at most one admission per
  source not yet shown in its libvirt, anti-affinity, room for the VM, or an
  affinity group's VMs all at once) or refuses; the source starts the libvirt
  job, forwards its progress (which renews the target's lease) and commits
  or aborts. The cores run on the discrete-event engine
  (`simulations/engine.py`): their messages take `message_latency` (1 ms),
  their timers fire on time. Refusals, leases, limits and the sagas'
  outcomes are the core's, not a copy of its rules.
- The libvirt side is `simulations.migrations.Hypervisor` (the fake
  hypervisor the migration tests use): the target lists the incoming domain,
  paused, while its job runs (so its reservation is seen); the job lasts
  `expected_migration_seconds(memory, bandwidth, dirty rate, MigrationPolicy())`
  (`agent/core/migration/cost.py`) and ends at that exact time, between the 1 s
  steps when it falls there (as a real migration does), when the VM lands and
  its load moves; the hotspot and drain are judged at that moment too. The
  driver's job samples are taken at every whole second. A VM that would not
  converge is not proposed.
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
  restarted elsewhere (where the agent puts a new VM, `new_vm_target`, on
  the true records: new VMs from churn too) once the failure is detected,
  9.25 s later at 100 hosts and 13.6 s at 1,000 (the membership simulator's
  figures, BENCHMARKS.md). Restarts are not migrations. Its agent
  and libvirtd go with it: a job to it fails at the next sample and its source's
  saga finds the VM still at home (reconcile), a proposal to it goes unanswered.

Everything is deterministic for a seed: the workload's draws do not depend
on the strategy, and every other random choice has its own seeded RNG.
"""

from __future__ import annotations

import math
import random
import re
import statistics
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from novacron.agent.core.events import (
    MigrationCompleted,
    MigrationFailed,
    MigrationOutput,
    MigrationProposed,
    MigrationRefused,
    MigrationUndecided,
    Output,
    ReconcileVm,
    ReservationMade,
    ReservationRefused,
    ReservationReleased,
)
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.policy import MigrationLimits, cluster_limit
from novacron.agent.core.migration.reservations import Demand, ReservationConfig, free_capacity
from novacron.agent.core.migration.saga import MigrationConfig, MigrationCore
from novacron.agent.core.placement.admission import Rule, closed_targets
from novacron.agent.core.placement.targets import new_vm_target, sending_load
from novacron.agent.core.rebalancing.drain import DrainCore, Ended
from novacron.agent.core.rebalancing.schedule import RebalanceSchedule, seen
from novacron.protocol.messages import MemberState, Message, NodeRecord, Resources, VmSummary

from ..engine import Engine
from ..metrics import ByteMeter
from ..migrations import Hypervisor, Report
from ..network import LinkModel, Network, NetworkConfig
from . import planner
from .workload import AFFINITY_LABEL, ANTI_AFFINITY_LABEL, Sample, VmSpec, Workload, WorkloadConfig

SCENARIOS = ("steady", "hotspot", "drain", "failure")
STRATEGIES = ("none", "greedy", "solver", "mesh")
OSCILLATION_WINDOW = 600.0

# Post-copy never begins here: a migration whose pre-copy would not converge within the
# completion timeout is not started (`copy_seconds` is inf), so no job reaches it.
POSTCOPY_SECONDS = 1.0

# The migration core's refusal sentences, by the admission rule (or check) they come
# from: the counters of the report keep the rules' names.
REFUSAL_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"^too many migrations from .*(not started yet|does not show)", Rule.SOURCE_UNSEEN),
        (r"^host draining", Rule.DRAINING),
        (r"^libvirt unreachable", Rule.LIBVIRT_DOWN),
        (r"already runs on", Rule.PRESENT),
        (r"already arriving on", Rule.ARRIVING),
        (r"receives \d+ inbound|limit \d+ inbound", Rule.INBOUND),
        (r"^anti-affinity", Rule.ANTI_AFFINITY),
        (r"^no capacity", Rule.CAPACITY),
        (r"runs \d+ outbound", Rule.OUTBOUND),
        (r"running in the cluster", Rule.CLUSTER),
        (r"is already migrating", "vm already migrating"),
        (r"^host \S+ is (dead|left|suspect)", "host failed"),
        (r"^refused for .* never showed", "source penalized"),
    )
)


def refusal_key(reason: str) -> str:
    """The counter a refusal counts under: its rule, or the reason's first words."""
    for pattern, key in REFUSAL_RULES:
        if pattern.search(reason):
            return str(key)
    return reason.split(":")[0]


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
    message_latency: float = 0.001  # one way, between two hosts' migration cores
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
    vms: set[str] = field(default_factory=set)  # VMs running here
    outbound: set[str] = field(default_factory=set)  # VMs its migration core is sending
    arriving: set[str] = field(default_factory=set)  # incoming domains of running jobs
    core: MigrationCore | None = None  # its agent's migration core (None once failed)
    draining: bool = False
    failed: bool = False
    version: int = 0

    @property
    def inbound(self) -> set[str]:
        """VMs migrating here: each holds a reservation in the core, until it lands."""
        if self.core is None:
            return set()
        return {held.vm for held in self.core.reservations() if not held.landed}


@dataclass(slots=True)
class Migration:
    migration_id: str
    vm: str
    source: str
    target: str
    start: float  # when the source proposed it
    end: float  # when its libvirt job ends (inf until the target accepted and it began)
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
    outcomes: dict[str, int] = field(default_factory=dict)  # how the sagas ended


class Records(Mapping[str, NodeRecord]):
    """Every host's record as it would publish it now, built when asked for."""

    __slots__ = ("_cluster",)

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def __getitem__(self, key: str) -> NodeRecord:
        if key not in self._cluster.hosts:
            raise KeyError(key)
        return self._cluster.record(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._cluster.hosts)

    def __len__(self) -> int:
        return len(self._cluster.hosts)


class SimView:
    """The mesh as each host's migration core sees it: every record as published now, and
    every host alive until it fails. The cores' checks run on the true state, as the
    simulator's earlier model of them did; the planners keep their delayed views."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._records = Records(cluster)
        self._alive = {n: MemberInfo(n, "", 1, MemberState.ALIVE, 0.0, 0.0) for n in cluster.hosts}
        self._dead = {n: MemberInfo(n, "", 1, MemberState.DEAD, 0.0, 0.0) for n in cluster.hosts}

    def member(self, node_id: str) -> MemberInfo | None:
        host = self._cluster.hosts.get(node_id)
        if host is None:
            return None
        return self._dead[node_id] if host.failed else self._alive[node_id]

    def records(self) -> Mapping[str, NodeRecord]:
        return self._records


class CoreNode:
    """A host's migration core as the discrete-event engine drives it: what the core
    decides goes to the cluster (actions to the hypervisor, events to its bookkeeping),
    and its messages to the engine's network."""

    __slots__ = ("_cluster", "_name", "core")

    def __init__(self, cluster: Cluster, name: str, core: MigrationCore) -> None:
        self._cluster = cluster
        self._name = name
        self.core = core

    def receive(self, sender: str, message: Message, now: float) -> Output:
        return self._cluster.handle(self._name, self.core.receive(sender, message, now))

    def tick(self, now: float) -> Output:
        return self._cluster.handle(self._name, self.core.tick(now))

    def next_deadline(self) -> float:
        return self.core.next_deadline()


class Cluster:
    """The true state: where every VM is, what it loads, what is migrating; each host's
    migration core, the network between them and their hypervisors."""

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
        self.landed = False  # a VM landed since the flag was last cleared
        self._broken: dict[str, set[tuple[str, str]]] = {}
        # Each host's migration core, on the true records, driven by the discrete-event
        # engine (its messages take `message_latency`, its timers fire on time); libvirt
        # jobs and the drivers' reports on the same clock; one hypervisor for all, which
        # moves the VMs.
        link = LinkModel(base_latency=config.message_latency, jitter="none", link_spread=0.0)
        network = Network(NetworkConfig(link=link), random.Random(config.seed))
        self.engine = Engine(network, ByteMeter())
        self.migration_config = MigrationConfig(limits=self.limits, reservations=self.reservations)
        self.view = SimView(self)
        self.cores: dict[str, MigrationCore] = {}
        for name, host in self.hosts.items():
            rng = random.Random(f"{config.seed}:{name}:migration")
            host.core = self.cores[name] = MigrationCore(
                name,
                view=self.view,
                rng=rng,
                config=self.migration_config,
                migration_uri=f"tcp://{name}",
            )
            self.engine.add(name, CoreNode(self, name, host.core))
        self.hypervisor = Hypervisor(
            self, self.where, duration=self.copy_seconds, postcopy_seconds=POSTCOPY_SECONDS
        )

    # -- state ---------------------------------------------------------------

    @property
    def now(self) -> float:
        """Simulated time: the engine's clock."""
        return self.engine.now

    @now.setter
    def now(self, value: float) -> None:
        self.engine.clock.now = value

    def spec(self, vm: str) -> VmSpec:
        return self.workload.vms[vm]

    def demand(self, vm: str) -> Demand:
        """What `vm` asks of a target, as the agent's `MigrationCore` reads it from a record."""
        spec = self.spec(vm)
        return Demand(spec.vcpus, spec.memory_mib, 0.0, spec.labels.get(ANTI_AFFINITY_LABEL, ""))

    def touch(self, host: str) -> None:
        self._dirty_hosts.add(host)

    def add_vm(self, vm: str, host: str) -> None:
        self.where[vm] = host
        self.hosts[host].vms.add(vm)
        self.touch(host)

    def remove_vm(self, vm: str) -> None:
        """`vm` is gone (deleted, or lost with its failed host). A migration of it goes on
        as the agent's would: its libvirt job fails, its saga finds the VM nowhere and
        ends in doubt; one whose source failed ends with its core."""
        host = self.where.pop(vm, None)
        job = next((j for j in self.hypervisor.jobs.values() if j.vm == vm), None)
        if job is not None:
            self._report(self.hypervisor.end_job(job, moved=False, ok=False, why="domain gone"))
        mig = self.migrations.get(vm)
        if mig is not None and self.hosts[mig.source].failed:
            self._ended(mig.source, mig.migration_id, Ended(vm, "aborted", "its host failed"))
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
        held = host.core.reservations() if host.core is not None else ()
        room = free_capacity(self.record(host.name), held, self.reservations.vcpu_overcommit)
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
            # An incoming domain shows in the target's libvirt, paused, while its job runs.
            incoming = tuple(
                VmSummary(
                    name=vm,
                    state="paused",
                    vcpus=self.spec(vm).vcpus,
                    memory_mib=self.spec(vm).memory_mib,
                    labels=self.spec(vm).labels,
                )
                for vm in sorted(host.arriving)
            )
            core = host.core
            self._records[name] = NodeRecord(
                node_id=name,
                version=host.version,
                capacity=Resources(vcpus=float(host.cores), memory_mib=host.memory_mib),
                vms=vms + incoming,
                migrations_out=core.outbound() if core is not None else 0,
                migrations_in=core.inbound() if core is not None else 0,
                draining=host.draining,
            )
            self._dirty_hosts.discard(name)
        return self._records[name]

    def records(self) -> dict[str, NodeRecord]:
        return {name: self.record(name) for name in self.hosts}

    # -- migrations: each host's migration core, its messages, the hypervisor ----------

    def closed_targets(self, host: Host, view: Mapping[str, NodeRecord]) -> set[str]:
        """Targets that would refuse `host`'s next proposal, as its `view` tells (the
        migration core's `targets_full_from_here`, on the planner's view)."""
        outbound = ((m.target, m.vm, m.admission or m.migration_id) for m in self.outbound_of(host))
        return closed_targets(outbound, view, self.reservations.per_source)

    def outbound_of(self, host: Host) -> list[Migration]:
        """The migrations `host` sends now."""
        return [self.migrations[vm] for vm in host.outbound if vm in self.migrations]

    def cluster_limit(self) -> int:
        alive = sum(1 for h in self.hosts.values() if not h.failed)
        return cluster_limit(self.limits, alive)

    def refuse(self, why: str) -> None:
        self.stats.refusals[why] = self.stats.refusals.get(why, 0) + 1

    def start(self, vm: str, target: str, purpose: str) -> str | None:
        """Ask `vm`'s host's migration core to move it to `target`: the migration's id once
        proposed, or None if the source refused at once (counted; `last_refusal` says
        why). The target answers through the network: a refusal of it ends the
        migration then (counted too; `ended` tells how each ended)."""
        ids = self._request((vm,), target, purpose)
        return ids[0] if ids else None

    def start_group(self, vms: tuple[str, ...], target: str, purpose: str) -> bool:
        """Ask to move an affinity group's VMs to `target` together: one proposal, which
        the target admits whole (a reservation for each) or refuses (False if the source
        refused at once; counted under "group: ...")."""
        if len({self.where.get(vm) for vm in vms}) > 1:
            self._refuse("group not on one host", f"{'+'.join(vms)} are not on one host")
            return False
        return self._request(vms, target, purpose) is not None

    def _request(self, vms: Sequence[str], target: str, purpose: str) -> list[str] | None:
        prefix = "group: " if len(vms) > 1 else ""
        source = self.where.get(vms[0])
        if source is None:
            self._refuse("vm gone", f"{vms[0]} no longer exists")
            return None
        core = self.hosts[source].core
        if core is None:
            self._refuse("host failed", f"{source} has failed")
            return None
        if any(math.isinf(self.copy_seconds(vm)) for vm in vms):
            self._refuse(
                prefix + "would not converge",
                f"{'+'.join(vms)} dirties memory faster than it copies",
            )
            return None
        out = core.request_group_migration(vms, target, None, self.now, purpose=purpose)
        proposed = [e for e in out.events if isinstance(e, MigrationProposed)]
        if not proposed:
            refused = next(e for e in out.events if isinstance(e, MigrationRefused))
            self._refuse(prefix + refusal_key(refused.reason), refused.reason)
            return None
        admission = proposed[0].migration_id if len(vms) > 1 else ""
        for event in proposed:
            spec = self.spec(event.vm)
            self.migrations[event.vm] = Migration(
                event.migration_id,
                event.vm,
                source,
                target,
                self.now,
                math.inf,
                spec.vcpus,
                spec.memory_mib,
                purpose,
                admission,
            )
            self.hosts[source].outbound.add(event.vm)
            self.stats.started += 1
        self.stats.max_concurrent = max(self.stats.max_concurrent, len(self.migrations))
        self.touch(source)
        self.engine.feed(source, self.handle(source, out))
        return [event.migration_id for event in proposed]

    def _refuse(self, key: str, why: str) -> None:
        self.refuse(key)
        self.last_refusal = why

    def copy_seconds(self, vm: str) -> float:
        """How long `vm`'s migration takes now (inf: it would not converge)."""
        dirty = self.samples[vm].dirty_rate_mib_s if vm in self.samples else 0.0
        memory = self.spec(vm).memory_mib
        return planner.migration_seconds(memory, self.config.bandwidth_mib_s, dirty)

    def fail_host(self, name: str) -> list[str]:
        """`name` fails: its agent and libvirtd are gone, its VMs lost (returned). Jobs to
        it fail at the next sample (libvirt loses the connection); proposals to it go
        unanswered; its core's own migrations end with it."""
        host = self.hosts[name]
        host.failed = True
        host.core = None
        self.cores.pop(name, None)
        self.engine.crash(name)
        self.hypervisor.libvirtd_down.add(name)
        for vm in list(host.outbound):
            mig = self.migrations.get(vm)
            if mig is not None:
                self._ended(name, mig.migration_id, Ended(vm, "aborted", "its host failed"))
        lost = sorted(host.vms)
        for vm in lost:
            self.remove_vm(vm)
        self.touch(name)
        return lost

    # What the cores decide: messages to the engine, actions to the hypervisor.

    def handle(self, node: str, out: MigrationOutput) -> Output:
        """Take a core's output: its actions go to the hypervisor (a driver's report comes
        back on the clock), its events to the cluster's bookkeeping; its messages are
        returned for the engine to send."""
        for action in out.actions:
            if isinstance(action, ReconcileVm):
                report: Report | None = self.hypervisor.presence(node, action)
            else:
                report = self.hypervisor.perform(node, action, self.now)
                self._job_started(action.migration_id)
            if report is not None:
                self.engine.at(self.now, partial(self._report, report))
        for event in out.events:
            self._on_event(node, event)
        return Output(sends=out.sends)

    def _job_started(self, migration_id: str) -> None:
        """A libvirt job began (or switched to post-copy): its end goes on the clock."""
        job = self.hypervisor.jobs.get(migration_id)
        if job is None:
            return
        mig = self.migrations.get(job.vm)
        if job.switched_at is not None:
            end = job.switched_at + self.hypervisor.postcopy_seconds
        else:
            end = job.started + job.duration
        if mig is not None and mig.migration_id == migration_id:
            mig.end = end
        self.engine.at(end, self._end_jobs)

    def _on_event(self, node: str, event: object) -> None:
        if isinstance(event, MigrationCompleted):
            self._ended(node, event.migration_id, Ended(event.vm, "committed"))
        elif isinstance(event, MigrationFailed):
            self._ended(node, event.migration_id, Ended(event.vm, "aborted", event.reason))
        elif isinstance(event, MigrationRefused) and event.migration_id:
            mig = self.migrations.get(event.vm)
            if mig is not None and mig.admission in ("", mig.migration_id):
                prefix = "group: " if mig.admission else ""
                self.refuse(prefix + refusal_key(event.reason))
            self._ended(node, event.migration_id, Ended(event.vm, "refused", event.reason))
        elif isinstance(event, MigrationUndecided):
            self._ended(node, event.migration_id, Ended(event.vm, "in-doubt", event.reason))
            core = self.cores.get(node)
            if event.vm not in self.where and core is not None:
                core.settle_doubt(event.vm)  # deleted: nobody will run it again
        elif isinstance(event, ReservationMade | ReservationRefused | ReservationReleased):
            self.touch(node)  # its inbound count changed

    def _ended(self, source: str, migration_id: str, end: Ended) -> None:
        """A migration's saga ended on its source: its slot frees, which wakes the agent."""
        self.ended[migration_id] = end
        self.stats.outcomes[end.outcome] = self.stats.outcomes.get(end.outcome, 0) + 1
        mig = self.migrations.get(end.vm)
        if mig is not None and mig.migration_id == migration_id:
            del self.migrations[end.vm]
        self.hosts[source].outbound.discard(end.vm)
        self.freed.add(source)
        self.touch(source)

    def _report(self, report: Report) -> None:
        """A driver's report (a job's progress or end, where a VM runs) to its core."""
        node, method, args = report
        core = self.cores.get(node)
        if core is not None:  # a failed host's driver reports to no one
            self.engine.feed(node, self.handle(node, getattr(core, method)(*args, self.now)))

    def _end_jobs(self) -> None:
        """Jobs due now end (the VM lands, or it stays if the job failed)."""
        for report in self.hypervisor.advance(self.now, sample=False):
            self._report(report)

    def run_until(self, until: float) -> None:
        """Everything on the engine's clock up to `until` (included), in time order."""
        self.engine.run(until)

    def next_time(self) -> float:
        """When the next thing on the clock happens (inf: nothing is due)."""
        return self.engine.clock.peek_time()

    def sample_jobs(self) -> None:
        """Each running job's statistics, to its source's core (the driver polls them; its
        forwards renew the target's lease). Jobs whose link failed end here."""
        for report in self.hypervisor.advance(self.now):
            self._report(report)

    # -- the hypervisor's side: what the hosts' inventories show -----------------------

    def arriving(self, name: str, source: str, target: str) -> None:
        self.hosts[target].arriving.add(name)
        self.touch(target)

    def gone(self, name: str, node_id: str) -> None:
        self.hosts[node_id].arriving.discard(name)
        self.touch(node_id)

    def move_vm(self, name: str, source: str, target: str) -> None:
        """The job moved `name` (the hypervisor's `where` says so already): it lands, its
        load goes with it, and the checks look at its new host."""
        src, dst = self.hosts[source], self.hosts[target]
        dst.arriving.discard(name)
        src.vms.discard(name)
        dst.vms.add(name)
        self.landed = True
        mig = self.migrations.get(name)
        purpose = mig.purpose if mig is not None else "adopted"
        self.recent_moves[name] = self.now
        self.stats.migrations += 1
        self.stats.by_purpose[purpose] = self.stats.by_purpose.get(purpose, 0) + 1
        self.stats.mib_moved += self.spec(name).memory_mib
        if dst.draining:
            self.violation("drained host received", f"{name} landed on draining {dst.name}")
        history = self.moves.setdefault(name, [])
        for when, a, b in history:
            if a == target and b == source and self.now - when <= OSCILLATION_WINDOW:
                self.stats.oscillations += 1
                if len(self.stats.oscillation_examples) < 5:
                    self.stats.oscillation_examples.append(
                        f"{name}: {a}->{b} at {when:.0f}s, back at {self.now:.0f}s"
                    )
                break
        history.append((self.now, source, target))
        self.check_host(dst)
        self.remeasure([src, dst])

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


def place_new(cluster: Cluster, vm: str) -> str | None:
    """Where a new or restarted VM goes: the agent's own rule (`new_vm_target`), on the true
    records (a draining host's says so) and membership (a failed host is dead), or None."""
    spec = cluster.spec(vm)
    view = cluster.view
    overcommit = cluster.reservations.vcpu_overcommit
    placement = new_vm_target(
        view.records(),
        view.member,
        spec.vcpus,
        spec.memory_mib,
        spec.labels,
        cluster.limits,
        overcommit,
    )
    return placement.target


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
        self.cluster.freed = set()

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
                going = ((m.target, m.vm) for m in c.outbound_of(host))
                sending = sending_load(own[host.name], going, own)
                placement = planner.place_group(
                    own,
                    alive,
                    host.name,
                    [c.demand(vm) for vm in move],
                    c.limits,
                    c.config.rebalance.vcpu_overcommit,
                    closed,
                    sending,
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

    def load(self, vm: str) -> float:
        return self._cluster.measured.get(vm, 0.0)


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
        self.started: dict[str, str] = {}  # VM -> id of the migration started for its move

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
            # A move stays queued until its migration commits: the target may refuse it
            # when the proposal arrives, after `start` returned (it is tried again then).
            migration_id = self.started.get(vm)
            ended = c.ended.get(migration_id) if migration_id is not None else None
            if migration_id is not None and ended is None:
                keep.append((vm, target, purpose, deadline))  # under way
                continue
            if ended is not None and ended.outcome == "committed":
                continue  # it moved (and was moved on since)
            started = c.start(vm, target, purpose)
            if started is not None:
                self.started[vm] = started
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
        cluster.run_until(now)
        cluster.sample_jobs()
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
                strat.failed_at[event_host] = now
                lost = cluster.fail_host(event_host)
                cluster.pending_restart = [(now + config.detection(), vm) for vm in lost]
                failure = {"host": event_host, "vms": len(lost), "at": now}
        for due, vm in list(cluster.pending_restart):
            if due <= now:
                cluster.pending_restart.remove((due, vm))
                if vm not in workload.vms:
                    continue
                target = place_new(cluster, vm)
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
        "migration_outcomes": dict(sorted(stats.outcomes.items())),
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
    """Everything between `now` and the next second happens at its own time, as it does
    for real: messages arrive, the cores' timers fire, jobs end (the VM lands, the
    source's slot frees and its agent may plan again at once)."""
    before = now + 1.0
    while (t := cluster.next_time()) < before:
        cluster.landed = False
        cluster.run_until(t)
        if cluster.freed:
            strat.substep(t)
        if cluster.landed:
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
