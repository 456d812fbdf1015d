"""Migration cores on a virtual network, with a fake hypervisor: for tests and simulators.

`Mesh` holds one `MigrationCore` per host over a shared cluster view and
delivers their messages (optionally lossy, duplicating and reordering, from a
seeded RNG); tests drive the libvirt side by hand. `Hypervisor` is every
host's libvirt as far as the saga cares: one active domain per VM, a job that
moves it only on success, post-copy that cannot be aborted, a domain with a
running job that refuses a second one, and faults (libvirtd killed, link
cut); it answers the cores' actions with their drivers' reports. `Lab` is a
`Mesh` whose actions run on a `Hypervisor` (agents killed too); the
rebalancing simulator runs the same `Hypervisor` under its own cores. The
hypervisor is the truth the tests check the sagas against. No sockets, no
sleeping: a virtual clock (the simulators' `VirtualClock` holds the messages
in flight).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from novacron.agent.core.events import (
    AbortLibvirtMigration,
    MigrationAction,
    MigrationCompleted,
    MigrationEvent,
    MigrationFailed,
    MigrationOutput,
    MigrationRefused,
    ReconcileVm,
    StartLibvirtMigration,
    SwitchToPostCopy,
)
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.location import Presence, Where
from novacron.agent.core.migration.policy import PolicyOverrides
from novacron.agent.core.migration.saga import MigrationConfig, MigrationCore
from novacron.protocol.messages import (
    JobPhase,
    MemberState,
    Message,
    MigrationProgress,
    NodeRecord,
    Resources,
    VmSummary,
)

from .clock import VirtualClock

E = TypeVar("E")
DELIVER = 0  # the only kind of entry on the agenda: a=source, b=destination, c=message
INF = float("inf")


def vm(name: str, memory_mib: int = 1024, vcpus: int = 1, state: str = "running") -> VmSummary:
    """A VM as an inventory reports it."""
    return VmSummary(name=name, state=state, vcpus=vcpus, memory_mib=memory_mib)


def host(
    node_id: str,
    *vms: VmSummary,
    memory_mib: int = 8192,
    vcpus: float = 4.0,
    draining: bool = False,
    labels: Mapping[str, str] | None = None,
    outbound: int = 0,
    inbound: int = 0,
    libvirt_down_since: float = 0.0,
) -> NodeRecord:
    """A host's record with its VMs and the migration counters it publishes."""
    return NodeRecord(
        node_id=node_id,
        version=1,
        capacity=Resources(vcpus=vcpus, memory_mib=memory_mib),
        vms=tuple(vms),
        libvirt_uri=f"qemu+tcp://{node_id}/system",
        draining=draining,
        labels=dict(labels or {}),
        migrations_out=outbound,
        migrations_in=inbound,
        libvirt_unreachable_since=libvirt_down_since,
    )


def seen(
    where: str | None, hosts: Iterable[str] = ("h1", "h2"), **others: Presence
) -> dict[str, Presence]:
    """What the hypervisors of `hosts` say: the VM runs on `where` (None: nowhere), is absent
    from the others; `others` overrides a host's answer."""
    found = {
        h: Presence(Where.RUNNING, "running", "u1") if h == where else Presence(Where.ABSENT)
        for h in hosts
    }
    return found | others


class View:
    """A cluster view shared by every host of a test (they all agree, which is the easy case)."""

    def __init__(self, records: Iterable[NodeRecord]) -> None:
        self.states: dict[str, MemberState] = {}  # node id -> membership state
        self.recs: dict[str, NodeRecord] = {}  # node id -> latest record
        for record in records:
            self.put(record)

    def put(self, record: NodeRecord, state: MemberState = MemberState.ALIVE) -> None:
        self.recs[record.node_id] = record
        self.states.setdefault(record.node_id, state)

    def member(self, node_id: str) -> MemberInfo | None:
        state = self.states.get(node_id)
        if state is None:
            return None
        return MemberInfo(node_id, f"198.18.0.{len(node_id)}", 1, state, 0.0, 0.0)

    def records(self) -> Mapping[str, NodeRecord]:
        return self.recs

    def move_vm(self, name: str, source: str, target: str) -> None:
        """What the inventories of both hosts report after the domain moved."""
        moving = next(v for v in self.recs[source].vms if v.name == name)
        self.update(source, vms=tuple(v for v in self.recs[source].vms if v.name != name))
        self.update(target, vms=(*self._without(target, name), moving))

    def arriving(self, name: str, source: str, target: str) -> None:
        """The target's inventory lists the incoming domain (paused) while a job runs."""
        moving = next(v for v in self.recs[source].vms if v.name == name)
        incoming = dataclasses.replace(moving, state="paused")
        self.update(target, vms=(*self._without(target, name), incoming))

    def gone(self, name: str, node_id: str) -> None:
        """The incoming domain of a failed job is gone from `node_id`."""
        self.update(node_id, vms=self._without(node_id, name))

    def _without(self, node_id: str, name: str) -> tuple[VmSummary, ...]:
        return tuple(v for v in self.recs[node_id].vms if v.name != name)

    def update(self, node_id: str, **changes: Any) -> None:
        record = self.recs[node_id]
        self.recs[node_id] = dataclasses.replace(record, version=record.version + 1, **changes)

    def owners(self, name: str) -> list[str]:
        """Hosts whose record lists VM `name`."""
        return [n for n, r in self.recs.items() if any(v.name == name for v in r.vms)]


class Mesh:
    """Migration cores on a virtual network; drive time with `run`, messages with `flush`."""

    def __init__(
        self,
        records: Iterable[NodeRecord],
        *,
        config: MigrationConfig | None = None,
        seed: int = 1,
        loss: float = 0.0,
        duplicate: float = 0.0,
        max_delay: float = 0.0,
    ) -> None:
        self.view = View(records)
        self.config = config or MigrationConfig()
        self.net_rng = random.Random(seed)  # loss, duplication, delay
        self.loss, self.duplicate, self.max_delay = loss, duplicate, max_delay
        self.now = 0.0
        self.cores: dict[str, MigrationCore | None] = {}
        self.lives: dict[str, int] = {}  # restarts per host, to seed each life differently
        for node_id in self.view.recs:
            self.start_agent(node_id)
        self.cut: set[frozenset[str]] = set()  # links that drop everything
        self._inflight = VirtualClock()  # messages in flight, by arrival
        self.events: list[tuple[str, MigrationEvent]] = []  # (host, event) in order
        self.actions: list[tuple[str, MigrationAction]] = []  # (host, action) in order
        self.sent: list[tuple[str, str, Message]] = []  # (from, to, message) as sent

    def core(self, node_id: str) -> MigrationCore:
        core = self.cores[node_id]
        assert core is not None, f"agent {node_id} is down"
        return core

    def start_agent(self, node_id: str) -> None:
        life = self.lives.get(node_id, 0)
        self.lives[node_id] = life + 1
        rng = random.Random(f"{node_id}/{life}")
        uri = f"tcp://{node_id}"
        self.cores[node_id] = MigrationCore(
            node_id, view=self.view, rng=rng, config=self.config, migration_uri=uri
        )

    def kill_agent(self, node_id: str) -> None:
        self.cores[node_id] = None

    def absorb(self, node_id: str, out: MigrationOutput) -> MigrationOutput:
        """Take a core's output: queue its sends, log its events, hand actions to `on_action`."""
        for destination, message in out.sends:
            self.sent.append((node_id, destination, message))
            self._send(node_id, destination, message)
        self.events.extend((node_id, event) for event in out.events)
        for action in out.actions:
            self.actions.append((node_id, action))
            self.on_action(node_id, action)
        return out

    def on_action(self, node_id: str, action: MigrationAction) -> None:
        """Mesh: tests perform actions by hand. `Lab` overrides this."""

    def _send(self, source: str, destination: str, message: Message) -> None:
        copies = 1
        if self.net_rng.random() < self.loss:
            copies = 0
        elif self.net_rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            delay = self.net_rng.uniform(0.0, self.max_delay) if self.max_delay else 0.0
            self._inflight.push(self.now + delay, DELIVER, source, destination, message)

    def flush(self) -> None:
        """Deliver everything due by now, including replies (a tiny event loop)."""
        while self._inflight.peek_time() <= self.now:
            _, _, _, source, destination, message = self._inflight.pop()
            core = self.cores.get(destination)
            if core is None or frozenset((source, destination)) in self.cut:
                continue
            self.absorb(destination, core.receive(source, message, self.now))

    def request(
        self, source: str, name: str, target: str, overrides: PolicyOverrides | None = None
    ) -> MigrationOutput:
        out = self.absorb(
            source, self.core(source).request_migration(name, target, overrides, self.now)
        )
        self.flush()
        return out

    def call(self, node_id: str, method: str, *args: Any) -> MigrationOutput:
        """Call a driver-facing method (`migration_finished`, `cancel`, ...) at `now`."""
        out = self.absorb(node_id, getattr(self.core(node_id), method)(*args, self.now))
        self.flush()
        return out

    def step(self) -> None:
        """One slice of time: deliveries, then every live core's tick."""
        self.flush()
        for node_id, core in list(self.cores.items()):
            if core is not None:
                self.absorb(node_id, core.tick(self.now))
        self.flush()

    def run(self, until: float, step: float = 0.5) -> None:
        while self.now + step <= until + 1e-9:
            self.now += step
            self.before_step()
            self.step()

    def before_step(self) -> None:
        """Hook for `Lab`: the hypervisor moves before the agents look."""

    def of(self, node_id: str, kind: type[E]) -> list[E]:
        """Events or actions of one type that `node_id` emitted."""
        emitted: list[tuple[str, object]] = [*self.events, *self.actions]
        return [x for n, x in emitted if n == node_id and isinstance(x, kind)]

    def sent_of(self, kind: type[E], source: str | None = None) -> list[E]:
        return [m for s, _, m in self.sent if isinstance(m, kind) and source in (None, s)]


@dataclass
class Job:
    """A libvirt migration job in the fake hypervisor."""

    migration_id: str  # the saga that asked for it
    vm: str  # domain
    source: str  # where it ran
    target: str  # where it goes
    started: float  # when it began
    duration: float  # pre-copy time to converge (inf: never)
    post_copy_allowed: bool  # the policy enabled post-copy
    switched_at: float | None = None  # when post-copy began
    abort_requested: bool = False  # virDomainAbortJob was called


class Inventory(Protocol):
    """What the hosts' inventories report as the hypervisor moves domains."""

    def arriving(self, name: str, source: str, target: str) -> None:
        """The target lists the incoming domain (paused) while a job runs."""

    def move_vm(self, name: str, source: str, target: str) -> None:
        """The domain moved: the source no longer lists it, the target runs it."""

    def gone(self, name: str, node_id: str) -> None:
        """The incoming domain of a failed job is gone from `node_id`."""


Report = tuple[str, str, tuple[Any, ...]]
"""(host, core method, arguments): what a host's driver tells its core (`now` appended)."""


class Hypervisor:
    """Every host's libvirt, as far as the saga cares: one active domain per VM, a job
    that moves it only on success, post-copy that cannot be aborted, a domain with a
    running job that refuses a second one, libvirtds that die and links that are cut.

    It performs the cores' actions and answers with the reports their drivers would
    make (`Report`); when they are delivered is the caller's business (the tests'
    `Lab` at its next step, the rebalancing simulator on its own clock).
    """

    def __init__(
        self,
        inventory: Inventory,
        location: dict[str, str],
        *,
        duration: Callable[[str], float],
        postcopy_seconds: float,
        linked: Callable[[str, str], bool] = lambda a, b: True,
    ) -> None:
        self.inventory = inventory  # whose records list what the hypervisors run
        self.location = location  # VM -> host running it (the truth)
        self.duration = duration  # VM -> pre-copy seconds of a job starting now (inf: never)
        self.postcopy_seconds = postcopy_seconds  # time to finish once in post-copy
        self.linked = linked  # whether the network joins two hosts
        self.jobs: dict[str, Job] = {}  # running jobs by migration id
        self.moved: dict[str, bool] = {}  # ended job -> whether the VM moved
        self.libvirtd_down: set[str] = set()  # hosts whose libvirtd is dead
        self.violations: list[str] = []  # broken libvirt rules

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.libvirtd_down and b not in self.libvirtd_down and self.linked(a, b)

    def perform(self, node_id: str, action: MigrationAction, now: float) -> Report | None:
        """Carry out a core's libvirt action; a job that cannot start is reported at once.
        `ReconcileVm` is answered by `presence`, when the caller chooses."""
        if isinstance(action, StartLibvirtMigration):
            return self._start(node_id, action, now)
        if isinstance(action, SwitchToPostCopy):
            job = self.jobs.get(action.migration_id)
            if job is not None and job.post_copy_allowed and job.switched_at is None:
                job.switched_at = now
        elif isinstance(action, AbortLibvirtMigration):
            job = self.jobs.get(action.migration_id)
            if job is not None:
                if job.switched_at is not None:
                    self.violations.append(f"abort requested in post-copy: {job}")
                else:
                    job.abort_requested = True
        return None

    def _start(self, node_id: str, action: StartLibvirtMigration, now: float) -> Report | None:
        busy = any(j.vm == action.vm for j in self.jobs.values())
        reachable = self.reachable(node_id, action.target)
        if busy or self.location.get(action.vm) != node_id or not reachable:
            why = "domain has a job" if busy else "cannot start"
            self.moved[action.migration_id] = False
            return (node_id, "migration_finished", (action.migration_id, False, why))
        self.inventory.arriving(action.vm, node_id, action.target)
        self.jobs[action.migration_id] = Job(
            action.migration_id,
            action.vm,
            node_id,
            action.target,
            now,
            self.duration(action.vm),
            action.policy.post_copy,
        )
        return None

    def presence(self, asking: str, action: ReconcileVm) -> Report:
        """The asking host's driver's answer to `ReconcileVm`: what it finds in each host's
        libvirt (its own, the peers' it can reach): the VM running where it is, a job
        holding it, or nothing."""
        found = {}
        for h in action.hosts:
            if h in self.libvirtd_down or (h != asking and not self.reachable(asking, h)):
                found[h] = Presence(Where.UNKNOWN, "unreachable")
            elif any(j.vm == action.vm and h in (j.source, j.target) for j in self.jobs.values()):
                found[h] = Presence(Where.MIGRATING, "a job holds it", "u1")
            elif self.location.get(action.vm) == h:
                found[h] = Presence(Where.RUNNING, "running", "u1")
            else:
                found[h] = Presence(Where.ABSENT)
        return (asking, "vm_presence", (action.vm, found))

    def next_end(self) -> float:
        """When the next job would end by itself (inf: none will)."""
        ends = (
            j.switched_at + self.postcopy_seconds if j.switched_at is not None
            else j.started + j.duration
            for j in self.jobs.values()
        )  # fmt: skip
        return min(ends, default=INF)

    def advance(self, now: float, sample: bool = True) -> list[Report]:
        """Run every job to `now`: end those that are done, failed or aborted; report the
        others' progress if `sample` (the driver's job-stats poll)."""
        reports: list[Report] = []
        for job in list(self.jobs.values()):
            report = self._run_job(job, now, sample)
            if report is not None:
                reports.append(report)
        return reports

    def _run_job(self, job: Job, now: float, sample: bool) -> Report | None:
        if job.switched_at is not None:
            done = now >= job.switched_at + self.postcopy_seconds
        else:
            done = now >= job.started + job.duration
        if not self.reachable(job.source, job.target):
            # Pre-copy: the guest never left. Post-copy: it already runs on the target,
            # yet libvirt reports the job as failed.
            return self.end_job(
                job, moved=job.switched_at is not None, ok=False, why="connection lost"
            )
        if job.abort_requested:
            return self.end_job(job, moved=False, ok=False, why="operation aborted")
        if done:
            return self.end_job(job, moved=True, ok=True, why="")
        if not sample:
            return None
        elapsed = now - job.started
        percent = min(99.0, 100.0 * elapsed / job.duration) if job.duration < INF else 40.0
        phase = JobPhase.POSTCOPY if job.switched_at is not None else JobPhase.PRECOPY
        stats = MigrationProgress(job.migration_id, percent=percent, phase=phase)
        return (job.source, "migration_progress", (job.migration_id, stats))

    def end_job(self, job: Job, moved: bool, ok: bool, why: str) -> Report:
        del self.jobs[job.migration_id]
        self.moved[job.migration_id] = moved
        if moved:
            self.location[job.vm] = job.target
            self.inventory.move_vm(job.vm, job.source, job.target)
        else:
            self.inventory.gone(job.vm, job.target)
        return (job.source, "migration_finished", (job.migration_id, ok, why))


class Lab(Mesh):
    """A `Mesh` whose actions run against a fake `Hypervisor` with fault injection."""

    def __init__(
        self,
        records: Iterable[NodeRecord],
        *,
        config: MigrationConfig | None = None,
        seed: int = 1,
        loss: float = 0.0,
        duplicate: float = 0.0,
        max_delay: float = 0.0,
        job_seconds: float = 4.0,
        postcopy_seconds: float = 2.0,
        hot: Iterable[str] = (),
    ) -> None:
        records = list(records)
        self.job_seconds = job_seconds  # pre-copy time of a converging guest
        self.hot = frozenset(hot)  # VMs that never converge in pre-copy
        self._reports: list[Report] = []  # driver -> core, next step
        self._reconciles: list[tuple[str, ReconcileVm]] = []  # (asking host, action) to answer
        super().__init__(
            records,
            config=config,
            seed=seed,
            loss=loss,
            duplicate=duplicate,
            max_delay=max_delay,
        )
        self.hypervisor = Hypervisor(
            self.view,
            {v.name: r.node_id for r in records for v in r.vms},
            duration=lambda vm: INF if vm in self.hot else self.job_seconds,
            postcopy_seconds=postcopy_seconds,
            linked=lambda a, b: frozenset((a, b)) not in self.cut,
        )
        self.location = self.hypervisor.location  # VM -> active host
        self.jobs = self.hypervisor.jobs  # running jobs by migration id
        self.moved = self.hypervisor.moved  # ended job -> whether the VM moved
        self.libvirtd_down = self.hypervisor.libvirtd_down  # hosts whose libvirtd is dead
        self.violations = self.hypervisor.violations  # broken libvirt rules

    # --- the driver ----------------------------------------------------------------------

    def start_agent(self, node_id: str) -> None:
        """A (re)started agent; its driver hands over jobs libvirtd still runs for it."""
        super().start_agent(node_id)
        if not hasattr(self, "hypervisor"):
            return  # first start: no job runs yet
        for job in [j for j in self.jobs.values() if j.source == node_id]:
            core = self.core(node_id)
            out = core.adopt_job(job.vm, job.target, job.switched_at is not None, self.now)
            (event,) = out.events
            del self.jobs[job.migration_id]
            job.migration_id = event.migration_id
            self.jobs[job.migration_id] = job
            self.absorb(node_id, out)

    def absorb(self, node_id: str, out: MigrationOutput) -> MigrationOutput:
        """Check each saga's verdict against the hypervisor the moment it is given."""
        for event in out.events:
            if isinstance(event, MigrationCompleted):
                if self.location[event.vm] != event.target:
                    self.violations.append(f"completed but {event.vm} is elsewhere: {event}")
            elif isinstance(event, MigrationFailed | MigrationRefused) and event.migration_id:
                if self.moved.get(event.migration_id):
                    self.violations.append(f"failed but the job moved the VM: {event}")
                if self.location[event.vm] == event.target and event.migration_id in self.moved:
                    self.violations.append(f"failed but {event.vm} is on the target: {event}")
        return super().absorb(node_id, out)

    def on_action(self, node_id: str, action: MigrationAction) -> None:
        if isinstance(action, ReconcileVm):
            self._reconciles.append((node_id, action))
            return
        report = self.hypervisor.perform(node_id, action, self.now)
        if report is not None:
            self._reports.append(report)

    def before_step(self) -> None:
        """The hypervisor: run jobs, answer reconciles, deliver the driver's reports."""
        self._reports.extend(self.hypervisor.advance(self.now))
        reconciles, self._reconciles = self._reconciles, []
        for asking, action in reconciles:
            self._reports.append(self.hypervisor.presence(asking, action))
        reports, self._reports = self._reports, []
        for node_id, method, args in reports:
            core = self.cores.get(node_id)
            if core is not None:  # a dead agent's driver reports to no one
                self.absorb(node_id, getattr(core, method)(*args, self.now))

    # --- checks -----------------------------------------------------------------------------

    def settle(self, seconds: float = 300.0) -> None:
        """Heal every fault and let timers run out: leases, reconciles, escalations."""
        self.cut.clear()
        self.libvirtd_down.clear()
        self.loss = self.duplicate = 0.0
        for node_id, core in self.cores.items():
            if core is None:
                self.start_agent(node_id)
        self.run(self.now + seconds)

    def check_invariant(self) -> None:
        """Each VM on exactly one host; each saga outcome agrees with the hypervisor."""
        assert not self.violations, self.violations
        for name, where in self.location.items():
            assert self.view.owners(name) == [where], (name, self.view.owners(name), where)

    def check_quiet(self) -> None:
        """After `settle`: no saga running, no reservation held, no job left."""
        assert not self.jobs
        for core in self.cores.values():
            assert core is not None
            assert core.outbound() == 0, core.migrations()
            assert core.reservations() == [], core.reservations()
