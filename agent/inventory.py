"""What this host has and runs: psutil for the machine, libvirt for its VMs.

The inventory produces the content of the node's gossiped `NodeRecord`
(capacity, usage, load, VMs, labels, addresses, libvirt URI); the core owns
the record's version and decides when to gossip it.

The hypervisor is the source of truth for what runs here, so VM changes
should reach the record quickly: libvirt's domain lifecycle events (through
its default event loop, run in one background thread for the process) wake
`wait_changed`, and polling every `poll_interval` seconds catches anything
events miss. libvirt calls block, so every one runs in a worker thread of the
host's `LibvirtAdapter`, on its one connection, never on the event loop; the
inventory subscribes to domain events on each connection the adapter opens.

An unreachable libvirt is an operational state, not a crash, and it does not
mean "this host runs nothing": the record keeps the last VMs libvirt listed,
each in state "unknown", and says since when it is unreachable (its
`libvirt_unreachable_since` field, wall clock), so every agent still sees
them, counts their memory, and sends the host nothing until it can count
again (`placement.room_refusal`, the target's admission). `warning` says
why, one warning is logged, and the connection is retried at every refresh
(`retry_interval`, by default the poll interval), so the first refresh after
libvirtd is back lists the VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import psutil

from novacron.protocol.messages import NodeRecord, Resources, VmSummary

from .core.membership.records import vm_load_limit
from .core.placement.targets import gossiped_labels
from .libvirt_adapter import LibvirtAdapter, start_libvirt_event_loop
from .tasks import wait_event
from .vmspec import NAMESPACE, parse_metadata

log = logging.getLogger(__name__)

MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_URI = "qemu:///system"
POLL_INTERVAL = 10.0  # seconds between refreshes when libvirt sends no events
DIRTY_RATE_PERIOD = 1  # seconds QEMU samples a VM's memory writes over (read at the next refresh)
DIRTY_RATE_EVERY = 10.0  # seconds between a VM's measurements, however often the refresh runs
REMEASURE_DELAY = 0.5  # seconds before trying again to measure a VM a job held ...
REMEASURE_WINDOW = 5.0  # ... for this long; then at the normal refresh interval
DIRTY_RATE_MAX_AGE = 60.0  # seconds a measured dirty rate is trusted for migration decisions
DIRTY_RATES_KEPT = 8  # measurements kept per VM: more than `DIRTY_RATE_MAX_AGE` s of them

VM_STATES: dict[int, str] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _nothing(conn: Any) -> None:
    """A call that only needs the connection open."""


# --- the host, through psutil ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostSample:
    """One reading of the machine's figures (more than the record carries)."""

    cpu_count: int
    cpu_busy: float  # fraction of all CPUs busy since the previous sample, 0..1
    memory_total_mib: int
    memory_available_mib: int
    disk_total_gib: float  # the filesystem holding the data directory
    disk_used_gib: float
    load_1m: float
    net_bytes_sent: int
    net_bytes_recv: int

    @property
    def capacity(self) -> Resources:
        return Resources(
            vcpus=float(self.cpu_count),
            memory_mib=self.memory_total_mib,
            disk_gib=self.disk_total_gib,
        )

    def offered(self, reserved_memory_mib: int) -> Resources:
        """The capacity VMs may be given: all but the memory kept for the host itself."""
        memory = max(0, self.memory_total_mib - reserved_memory_mib)
        return dataclasses.replace(self.capacity, memory_mib=memory)

    @property
    def usage(self) -> Resources:
        return Resources(
            vcpus=round(self.cpu_busy * self.cpu_count, 3),
            memory_mib=self.memory_total_mib - self.memory_available_mib,
            disk_gib=self.disk_used_gib,
        )


class CpuMeter:
    """Busy fraction between successive readings, independent of psutil's global state.

    `psutil.cpu_percent(interval=None)` keeps one process-wide "last reading",
    so any other caller would skew our figure; this keeps its own.
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def busy(self) -> float:
        now = psutil.cpu_times()
        total = sum(now) - sum(self._last)
        idle = _idle(now) - _idle(self._last)
        self._last = now
        if total <= 0:
            return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))  # too soon to tell
        return min(1.0, max(0.0, 1.0 - idle / total))


def _idle(times: Any) -> float:
    return float(times.idle + getattr(times, "iowait", 0.0))


def existing_dir(path: Path) -> Path:
    """`path`, or its nearest existing ancestor: the data dir may not exist yet."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def sample_host(data_dir: Path, cpu: CpuMeter) -> HostSample:
    """Read the machine's figures (blocking, but only for microseconds)."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(existing_dir(data_dir)))
    net = psutil.net_io_counters()
    return HostSample(
        cpu_count=psutil.cpu_count() or 1,
        cpu_busy=cpu.busy(),
        memory_total_mib=memory.total // MIB,
        memory_available_mib=memory.available // MIB,
        disk_total_gib=round(disk.total / GIB, 3),
        disk_used_gib=round(disk.used / GIB, 3),
        load_1m=psutil.getloadavg()[0],
        net_bytes_sent=net.bytes_sent if net else 0,
        net_bytes_recv=net.bytes_recv if net else 0,
    )


# --- the VMs, through libvirt ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainSample:
    """One domain as libvirt reports it, before CPU load is derived."""

    name: str
    uuid: str
    state: str
    vcpus: int
    memory_mib: int  # maximum memory: what the VM may claim, hence what a target reserves
    cpu_time_ns: int
    dirty_mib_s: float | None = None  # memory written per second, when libvirt measured it
    held: bool = False  # to be measured, but a libvirt job held it (e.g. it just arrived)
    measuring: bool = False  # a dirty-rate measurement was started by this read
    read_at: float = 0.0  # the inventory's clock when libvirt gave `cpu_time_ns`
    labels: Mapping[str, str] = field(default_factory=dict)  # those placement reads


def read_domains(
    conn: Any,
    may_measure: Callable[[str], bool] = lambda vm: True,
    clock: Callable[[], float] = time.monotonic,
) -> list[DomainSample]:
    """Every domain defined on `conn` (blocking). Domains vanishing mid-read are skipped.

    Running domains also get their dirty rate: the last measurement (QEMU's
    page sampling over `DIRTY_RATE_PERIOD` s) is read back from every running
    domain no libvirt job holds, and a new one is started on those that
    `may_measure` allows (the inventory: not measured in the last
    `DIRTY_RATE_EVERY` s, not being moved by this agent). A domain a job holds
    is not asked at all: on a migration's target libvirt makes the statistics
    call wait for the job (the whole post-copy, in the lab), and this read with
    it.
    """
    domains = []
    for dom in conn.listAllDomains(0):
        try:
            info, read_at = dom.info(), clock()
            job = in_job(dom) if info[0] == libvirt.VIR_DOMAIN_RUNNING else None
            domains.append((dom, info, read_at, job))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    free = [d for d, info, _, job in domains if info[0] == libvirt.VIR_DOMAIN_RUNNING and not job]
    dirty = _measured_dirty_rates(conn, free)
    samples = []
    for dom, (state, max_kib, _kib, vcpus, cpu_time), read_at, job in domains:
        try:
            uuid, name = dom.UUIDString(), dom.name()
            wanted = state == libvirt.VIR_DOMAIN_RUNNING and may_measure(name)
            measuring = wanted and job is False and _start_dirty_rate(dom)
            samples.append(
                DomainSample(
                    name=name,
                    uuid=uuid,
                    state=VM_STATES.get(state, "unknown"),
                    vcpus=int(vcpus),
                    memory_mib=int(max_kib) // 1024,
                    cpu_time_ns=int(cpu_time),
                    dirty_mib_s=dirty.get(uuid),
                    held=wanted and bool(job),
                    measuring=measuring,
                    read_at=read_at,
                    labels=gossiped_labels(domain_labels(dom)),
                )
            )
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return samples


def domain_labels(dom: Any) -> dict[str, str]:
    """A domain's NovaCron labels; {} for domains without NovaCron metadata."""
    try:
        element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise
    return parse_metadata(str(element)).labels


def _measured_dirty_rates(conn: Any, domains: list[Any]) -> dict[str, float]:
    """uuid -> MiB/s of each of `domains` whose last dirty-rate measurement finished."""
    if not domains:
        return {}
    try:
        stats = conn.domainListGetStats(domains, libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
    except libvirt.libvirtError:  # a driver without it (test:///default): rates stay unknown
        return {}
    rates = {dom.UUIDString(): _finished_rate(fields) for dom, fields in stats}
    return {uuid: rate for uuid, rate in rates.items() if rate is not None}


def _finished_rate(fields: Mapping[str, Any]) -> float | None:
    """MiB/s of the finished measurement in libvirt's dirty-rate `fields`, None if none."""
    if fields.get("dirtyrate.calc_status") != libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
        return None
    rate = fields.get("dirtyrate.megabytes_per_second")
    return float(rate) if isinstance(rate, int | float) else None


def recent_dirty_rate(conn: Any, dom: Any, max_age: float = DIRTY_RATE_MAX_AGE) -> float | None:
    """MiB/s `dom` wrote in its last measurement, if that started within `max_age` seconds
    (blocking). The inventory starts one every `DIRTY_RATE_EVERY` s; None if there is none.

    A measurement still running is waited for (at most `DIRTY_RATE_PERIOD` s and a
    little): the migration that asks must not start under it. In lab soaks (BENCHMARKS.md),
    3 of 162 migrations stalled at the switchover while measurements could run next to
    them, none of 150 without measurements and none of 200 with them kept apart.
    """
    fields = _dirty_rate_fields(conn, dom)
    deadline = time.monotonic() + DIRTY_RATE_PERIOD + 0.5
    while measuring(fields, time.time(), time.monotonic()):
        if time.monotonic() > deadline:
            log.warning("a dirty-rate measurement is still running as a migration starts")
            return None
        time.sleep(0.1)
        fields = _dirty_rate_fields(conn, dom)
    started = fields.get("dirtyrate.calc_start_time")
    if not isinstance(started, int):
        return None
    if not -5 <= measurement_age(started, time.time(), time.monotonic()) <= max_age:
        return None
    return _finished_rate(fields)


def measuring(fields: Mapping[str, Any], wall: float, monotonic: float) -> bool:
    """Whether libvirt's dirty-rate `fields` show a measurement under way. Just after it
    is started, QEMU 10 reports it "unstarted" with its start time already stamped
    (its sampling thread has not run yet): that one is under way too."""
    status = fields.get("dirtyrate.calc_status")
    if status == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURING:
        return True
    started = fields.get("dirtyrate.calc_start_time")
    if status != libvirt.VIR_DOMAIN_DIRTYRATE_UNSTARTED or not isinstance(started, int):
        return False
    return 0 <= measurement_age(started, wall, monotonic) <= DIRTY_RATE_PERIOD + 1


def measurement_age(started: int, wall: float, monotonic: float) -> float:
    """Seconds since a dirty-rate measurement stamped `started` began.

    QEMU before 8.2 stamps the start with the host's CLOCK_MONOTONIC, later ones with
    wall-clock time, both in whole seconds. The two clocks are decades apart (seconds
    since boot against seconds since 1970), so the clock nearer the stamp is its own.
    """
    now = wall if abs(wall - started) < abs(monotonic - started) else monotonic
    return now - started


def _dirty_rate_fields(conn: Any, dom: Any) -> dict[str, Any]:
    """libvirt's dirty-rate statistics of `dom` ({} if it has none to give)."""
    try:
        ((_, fields),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
    except (libvirt.libvirtError, ValueError):
        return {}
    return dict(fields)


def in_job(dom: Any) -> bool | None:
    """Whether a libvirt job (a migration, someone's `virsh migrate`) runs on `dom`; None if
    the driver cannot tell (test:///default). An incoming migration's job has no
    statistics to give ("only on the source host"), which says as much.

    A measurement never overlaps a migration the agent can see (see
    `recent_dirty_rate`), and libvirt holds a measurement's start until a
    migration ends (30 s, then fails), which would hold this read too.
    """
    try:
        return bool(dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError as exc:
        return True if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED else None


def _start_dirty_rate(dom: Any) -> bool:
    """Start measuring how fast `dom` writes memory (page sampling: reads, no dirty logging);
    whether it started."""
    try:
        dom.startDirtyRateCalc(DIRTY_RATE_PERIOD, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
    except libvirt.libvirtError as exc:  # unsupported, migrating, or already measuring
        log.debug("no dirty-rate measurement for %s: %s", dom.name(), exc)
        return False
    return True


@dataclass
class _CpuHistory:
    """Last CPU time per domain, to turn cumulative nanoseconds into cores in use.

    The time divided by is when libvirt gave each reading (`DomainSample.read_at`),
    not when the summary is made: a busy event loop can take a summary a second
    late, and the next interval would then look that much shorter (a one-vCPU
    guest seen using three cores). QEMU's own threads (TCG, a migration) can
    take a VM past its vCPU count, never past its host's cores: the load is
    capped there, the bound peers hold every record to (`vm_load_limit`).
    """

    cores: float  # this host's
    last: dict[str, tuple[int, float]] = field(default_factory=dict)  # uuid -> (ns, read at)

    def load(self, sample: DomainSample) -> float:
        previous = self.last.get(sample.uuid)
        now = sample.read_at
        self.last[sample.uuid] = (sample.cpu_time_ns, now)
        if previous is None or now <= previous[1] or sample.cpu_time_ns < previous[0]:
            return 0.0
        cores = (sample.cpu_time_ns - previous[0]) / 1e9 / (now - previous[1])
        return round(min(cores, vm_load_limit(self.cores)), 3)

    def keep_only(self, uuids: set[str]) -> None:
        for uuid in set(self.last) - uuids:
            del self.last[uuid]


# --- the inventory -------------------------------------------------------------------------


class Inventory:
    """Builds this node's record content from psutil and libvirt, and says when it changed."""

    def __init__(
        self,
        node_id: str,
        *,
        libvirt_uri: str = DEFAULT_URI,
        data_dir: Path | str = "/var/lib/novacron",
        labels: Mapping[str, str] | None = None,
        addresses: Sequence[str] = (),
        poll_interval: float = POLL_INTERVAL,
        retry_interval: float | None = None,
        use_events: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        may_measure: Callable[[str], bool] = lambda vm: True,
        reserved_memory_mib: int = 0,
        libvirt_adapter: LibvirtAdapter | None = None,
    ) -> None:
        """`may_measure(vm)`: whether that VM's dirty rate may be measured now (the agent
        says no while it moves the VM, from its decision on); `libvirt_adapter`: the host's
        libvirt connection and threads (one of its own at `libvirt_uri` if not given)."""
        self.node_id = node_id
        self.libvirt_uri = libvirt_uri  # where the VMs are managed; also gossiped
        self.warning: str | None = None  # why libvirt is unusable right now, if it is
        self._data_dir = Path(data_dir)  # its filesystem's size is the disk capacity
        self._labels = dict(labels or {})
        self._addresses = tuple(addresses)
        self._poll_interval = poll_interval
        self._retry_interval = poll_interval if retry_interval is None else retry_interval
        self._use_events = use_events
        self._clock = clock
        self._wall = wall  # stamps when libvirt became unreachable, for people
        self._may_measure = may_measure
        self._reserved_memory_mib = reserved_memory_mib  # kept for the host, never for VMs
        self._known: tuple[VmSummary, ...] = ()  # what libvirt last listed
        self.unreachable_since: float | None = None  # wall clock; None while reachable
        self._measured: dict[str, float] = {}  # VM name -> when its last measurement started
        self._held_since: float | None = None  # since when jobs have held VMs to be measured
        self._cpu = CpuMeter()
        self._history = _CpuHistory(cores=float(psutil.cpu_count() or 1))
        # VM name -> its measurements as (MiB/s, when started), oldest first
        self._dirty: dict[str, tuple[tuple[float, float], ...]] = {}
        self._owns_libvirt = libvirt_adapter is None  # closed with the inventory if so
        self.libvirt = libvirt_adapter or LibvirtAdapter(libvirt_uri)
        self._reachable = False  # whether the last call to libvirt worked
        self._events: tuple[Any, int] | None = None  # (connection, lifecycle callback id)
        if use_events:
            self.libvirt.on_open(self._subscribe)
            self.libvirt.on_close(self._on_close)
        self._last_attempt: float | None = None  # when we last tried to connect
        self._changed = asyncio.Event()  # set by libvirt callbacks (via the loop)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._reachable

    async def start(self) -> None:
        """Connect to libvirt and subscribe to domain events; an unreachable libvirt is fine."""
        self._loop = asyncio.get_running_loop()
        if self._use_events:
            await asyncio.to_thread(start_libvirt_event_loop)
        await self._connect()

    async def close(self) -> None:
        """Unsubscribe from libvirt's events (and close the connection if it is ours)."""
        self._reachable = False
        await self.libvirt.run(self._unsubscribe)
        if self._owns_libvirt:
            await self.libvirt.close()

    # --- the record ------------------------------------------------------------------

    async def host(self) -> HostSample:
        """The machine's current figures."""
        return await asyncio.to_thread(sample_host, self._data_dir, self._cpu)

    async def vms(self) -> tuple[VmSummary, ...]:
        """The VMs libvirt knows here; while it is unreachable, the last ones it listed, in
        state "unknown" (they have not stopped running because libvirtd did)."""
        if not self._reachable and self._retry_due():
            await self._connect()
        if not self._reachable:
            return self._unknown()
        try:
            samples = await self.libvirt.read(read_domains, self._measure_due, self._clock)
        except libvirt.libvirtError as exc:
            self._reachable = False
            self._unreachable(f"listing domains failed: {exc}")
            return self._unknown()
        self.unreachable_since = None
        self._known = self._summaries(samples)
        return self._known

    def _unknown(self) -> tuple[VmSummary, ...]:
        return tuple(dataclasses.replace(vm, state="unknown") for vm in self._known)

    async def record(self, version: int = 0) -> NodeRecord:
        """This node's record content now; the caller sets the version it gossips."""
        host, vms = await asyncio.gather(self.host(), self.vms())
        return NodeRecord(
            node_id=self.node_id,
            version=version,
            capacity=host.offered(self._reserved_memory_mib),
            usage=host.usage,
            load=host.load_1m,
            vms=vms,
            labels=dict(self._labels),
            addresses=self._addresses,
            libvirt_uri=self.libvirt_uri,
            libvirt_unreachable_since=self.unreachable_since or 0.0,
        )

    def _measure_due(self, vm: str) -> bool:
        """Whether to start measuring `vm` now: not too soon after the last measurement
        (a migration waits for one in progress), and only if the agent is not moving it."""
        last = self._measured.get(vm)
        return (last is None or self._clock() - last >= DIRTY_RATE_EVERY) and self._may_measure(vm)

    def dirty_rate(self, vm: str) -> float | None:
        """MiB/s `vm` last wrote to memory here, if measured in the last `DIRTY_RATE_MAX_AGE` s."""
        rates = self.dirty_rates(vm)
        return rates[-1] if rates else None

    def dirty_rates(self, vm: str) -> list[float]:
        """Every rate measured for `vm` here in the last `DIRTY_RATE_MAX_AGE` s, oldest first."""
        oldest = self._clock() - DIRTY_RATE_MAX_AGE
        return [rate for rate, started in self._dirty.get(vm, ()) if started >= oldest]

    def _summaries(self, samples: list[DomainSample]) -> tuple[VmSummary, ...]:
        now = self._clock()
        self._note_held(any(s.held for s in samples), now)
        running = {s.name for s in samples if s.state == "running"}  # one back is measured anew
        self._measured = {name: t for name, t in self._measured.items() if name in running}
        # A rate read now is QEMU's last finished measurement: the one this inventory started
        # last (QEMU keeps no other), so that start is its age; a rate whose start this
        # inventory does not know (an earlier life's) is not trusted.
        for s in samples:
            if s.dirty_mib_s is not None and s.name in self._measured:
                self._keep_rate(s.name, s.dirty_mib_s, self._measured[s.name])
        self._measured |= {s.name: now for s in samples if s.measuring}
        self._history.keep_only({s.uuid for s in samples})
        for name in set(self._dirty) - running:
            del self._dirty[name]  # gone or stopped: its rate says nothing any more
        return tuple(
            VmSummary(
                name=s.name,
                uuid=s.uuid,
                state=s.state,
                vcpus=s.vcpus,
                memory_mib=s.memory_mib,
                cpu_load=self._history.load(s) if s.state == "running" else 0.0,
                dirty_rate_mib_s=self.dirty_rate(s.name) or 0.0,
                labels=dict(s.labels),
            )
            for s in sorted(samples, key=lambda s: s.name)
        )

    def _keep_rate(self, vm: str, rate: float, started: float) -> None:
        """Add a measurement (QEMU returns its last one on every read: kept once). A new
        tuple each time: a migration's job thread reads them (`dirty_rates`)."""
        kept = self._dirty.get(vm, ())
        if kept and kept[-1][1] == started:
            kept = kept[:-1]
        self._dirty[vm] = (*kept, (rate, started))[-DIRTY_RATES_KEPT:]

    def _note_held(self, held: bool, now: float) -> None:
        """Remember since when libvirt jobs have held VMs the inventory wanted to measure."""
        if not held:
            self._held_since = None
        elif self._held_since is None:
            self._held_since = now

    def _look_again_soon(self) -> bool:
        """Whether to refresh after `REMEASURE_DELAY`: a job held a VM to be measured, for
        at most `REMEASURE_WINDOW` s (a VM that just arrived is free in a moment; a long
        job, someone's backup or `virsh migrate`, must not make every refresh twice a
        second)."""
        held = self._held_since
        return held is not None and self._clock() - held < REMEASURE_WINDOW

    async def wait_changed(self, timeout: float | None = None) -> bool:
        """Wait for a libvirt domain event (True) or the poll interval to pass (False)."""
        wait = self._poll_interval if timeout is None else timeout
        if self._look_again_soon():  # e.g. a VM that just arrived, in libvirt's migration job
            wait = min(wait, REMEASURE_DELAY)
        if not await wait_event(self._changed, wait):
            return False
        self._changed.clear()
        return True

    # --- the libvirt connection ---------------------------------------------------------

    def _retry_due(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self._retry_interval

    async def _connect(self) -> None:
        self._last_attempt = self._clock()
        try:
            await self.libvirt.read(_nothing)  # opens the connection if there is none
        except libvirt.libvirtError as exc:
            self._unreachable(f"cannot connect: {exc}")
            return
        self._reachable = True
        if self.warning is not None:
            log.info("libvirt at %s is reachable again", self.libvirt_uri)
        self.warning = None

    def _subscribe(self, conn: Any) -> None:
        """Subscribe to domain events on a new connection (blocking; in a worker thread)."""
        try:
            event_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_domain_event, None
            )
        except libvirt.libvirtError as exc:
            log.info("libvirt at %s gives no events (%s); polling", self.libvirt_uri, exc)
            return
        self._events = (conn, event_id)

    def _unsubscribe(self) -> None:
        """Unsubscribe (blocking). A dead connection may refuse: ignore."""
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(libvirt.libvirtError):
                events[0].domainEventDeregisterAny(events[1])

    def _unreachable(self, why: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = self._wall()
        warning = f"libvirt at {self.libvirt_uri} unavailable ({why})"
        if warning != self.warning:
            log.warning(
                "%s; its %d VMs reported as unknown, retrying every %g s",
                warning,
                len(self._known),
                self._retry_interval,
            )
        self.warning = warning

    # --- libvirt callbacks (in the libvirt event thread) --------------------------------

    def _on_domain_event(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        self._wake()

    def _on_close(self) -> None:
        """libvirt closed the connection (daemon restarted): reconnect on the next read."""
        self._last_attempt = None
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._changed.set)
