"""The hypervisor adapter: VMs on this host's libvirtd, through libvirt-python.

Every libvirt call blocks (an RPC to libvirtd, which may wait on QEMU), so each
public method is a coroutine that runs its libvirt work in a worker thread of
the host's `LibvirtAdapter`, on its one connection; the agent's event loop
keeps gossiping meanwhile. Reads (list, stats, capabilities) are retried once
on a new connection when libvirtd restarted under them; changes are not. Waits
(for a guest to shut down, for a probe guest to boot) sleep on the event loop
between short threaded calls, never inside one long blocking call.

The adapter runs on the host whose libvirtd it manages: the disk overlays it
creates with qemu-img must be visible to that libvirtd at the same path.

Domain type: "kvm", "qemu" (TCG), or "auto": KVM wherever libvirt offers it
and /dev/kvm answers, TCG only where not (the rule is `domain_type.choose`).
Where the operator gave a probe guest (the test guest, or any kernel that
prints "heartbeat" on its serial console), "auto" also boots it as a
transient KVM domain, reads its console through libvirt, and keeps KVM only
if a heartbeat arrives in time: on some machines KVM accepts a guest and
then hangs early in its boot. The verdict, with its reason, is cached per
libvirt URI (and probe guest) for the life of the process.

Errors are HypervisorError subclasses with messages for humans: BadSpec,
VmExists, UnknownVm, LibvirtUnreachable.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import libvirt

from novacron.agent.domain_type import (
    DomainTypeVerdict,
    ProbeOutcome,
    choose,
    kvm_device_problem,
)
from novacron.agent.inventory import VM_STATES, domain_labels
from novacron.agent.libvirt_adapter import CONNECTION_ERRORS, LibvirtAdapter, Opener, Unreachable
from novacron.agent.vmspec import (
    BadSpec,
    HypervisorError,
    VmMetadata,
    VmSpec,
    disk_target,
    domain_type_of,
    domain_xml,
    parse_metadata,
)

__all__ = [
    "BadSpec",
    "DomainTypeVerdict",
    "Hypervisor",
    "HypervisorError",
    "JobStats",
    "LibvirtUnreachable",
    "ProbeGuest",
    "StopOutcome",
    "UnknownVm",
    "VmExists",
    "VmInfo",
    "VmStats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
DomainType = Literal["kvm", "qemu", "auto"]
StopOutcome = Literal["graceful", "forced", "not running"]

DEFAULT_URI = "qemu:///system"
DEFAULT_DISK_DIR = Path("/var/lib/novacron/disks")
DEFAULT_CONSOLE_DIR = Path("/var/log/libvirt/qemu")
POLL = 0.1  # seconds between state checks while waiting on a guest


class VmExists(HypervisorError):
    """A VM of that name (or a disk file it would own) already exists on this host."""


class UnknownVm(HypervisorError):
    """No VM of that name on this host."""


class LibvirtUnreachable(HypervisorError):
    """libvirtd could not be reached (not running, wrong URI, connection lost)."""


@dataclass(frozen=True)
class ProbeGuest:
    """A guest that proves a domain type works by printing "heartbeat" on ttyS0."""

    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0 quiet"
    memory_mib: int = 128
    marker: bytes = b"heartbeat"  # what the console shows once the guest runs


@dataclass(frozen=True)
class VmInfo:
    """One VM in a listing."""

    name: str
    uuid: str
    state: str  # running, paused, shutoff, ... (inventory.VM_STATES)
    labels: dict[str, str]


@dataclass(frozen=True)
class JobStats:
    """A libvirt job (a migration, mostly): what a migration policy watches."""

    kind: str  # "none", "bounded", "unbounded", "completed", "failed", "cancelled"
    elapsed_ms: int
    data_total: int  # bytes
    data_processed: int
    data_remaining: int
    memory_bps: int  # transfer rate, bytes/s
    dirty_rate_bps: int  # guest's dirty rate, bytes/s
    iteration: int  # pre-copy pass
    downtime_ms: int  # expected (active job) or measured (completed job)
    raw: dict[str, Any]  # everything libvirt reported


@dataclass(frozen=True)
class VmStats:
    """One VM's state and use, plus its current and last finished job."""

    name: str
    uuid: str
    state: str
    domain_type: str  # kvm or qemu
    persistent: bool  # defined (survives shutdown) rather than transient
    vcpus: int
    cpu_time_s: float  # cumulative, all vCPUs
    memory_mib: int  # current allocation
    max_memory_mib: int  # what the VM may claim: what a migration target must reserve
    rss_mib: int | None  # QEMU's resident memory; None when not running
    labels: dict[str, str]
    job: JobStats | None  # running job (e.g. an outgoing migration), if any
    last_job: JobStats | None  # the last completed job, e.g. the migration that brought it


_JOB_KINDS = {
    libvirt.VIR_DOMAIN_JOB_NONE: "none",
    libvirt.VIR_DOMAIN_JOB_BOUNDED: "bounded",
    libvirt.VIR_DOMAIN_JOB_UNBOUNDED: "unbounded",
    libvirt.VIR_DOMAIN_JOB_COMPLETED: "completed",
    libvirt.VIR_DOMAIN_JOB_FAILED: "failed",
    libvirt.VIR_DOMAIN_JOB_CANCELLED: "cancelled",
}


def job_stats(raw: dict[str, Any]) -> JobStats | None:
    """JobStats from libvirt's jobStats() dict; None when there is no job."""
    kind = _JOB_KINDS.get(int(raw.get("type", libvirt.VIR_DOMAIN_JOB_NONE)), "unknown")
    if kind == "none":
        return None
    page = int(raw.get("memory_page_size", 4096))
    return JobStats(
        kind=kind,
        elapsed_ms=int(raw.get("time_elapsed", 0)),
        data_total=int(raw.get("data_total", 0)),
        data_processed=int(raw.get("data_processed", 0)),
        data_remaining=int(raw.get("data_remaining", 0)),
        memory_bps=int(raw.get("memory_bps", 0)),
        dirty_rate_bps=int(raw.get("memory_dirty_rate", 0)) * page,
        iteration=int(raw.get("memory_iteration", 0)),
        downtime_ms=int(raw.get("downtime", 0)),
        raw=dict(raw),
    )


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def _silence_libvirt(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised instead."""


libvirt.registerErrorHandler(_silence_libvirt, None)

# (libvirt URI, probe guest) -> verdict, for the life of this process
_verdicts: dict[tuple[str, ProbeGuest | None], DomainTypeVerdict] = {}
_verdict_lock = threading.Lock()


class Hypervisor:
    """VMs on one libvirtd. Coroutine methods; see the module docstring."""

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        *,
        domain_type: DomainType = "auto",
        disk_dir: Path = DEFAULT_DISK_DIR,
        console_dir: Path = DEFAULT_CONSOLE_DIR,
        probe: ProbeGuest | None = None,
        probe_timeout: float = 15.0,
        opener: Opener = libvirt.open,
        libvirt_adapter: LibvirtAdapter | None = None,
    ) -> None:
        """`libvirt_adapter`: the host's connection and threads (one of its own at `uri`,
        opened by `opener`, if not given)."""
        if domain_type not in ("kvm", "qemu", "auto"):
            raise ValueError(f"domain_type must be kvm, qemu or auto, not {domain_type!r}")
        self._owns_libvirt = libvirt_adapter is None  # closed with the hypervisor if so
        self.libvirt = libvirt_adapter or LibvirtAdapter(uri, opener=opener)
        self.uri = self.libvirt.uri  # the libvirtd this adapter manages
        self.domain_type: DomainType = domain_type  # as configured
        self.disk_dir = disk_dir  # where VM disk overlays are created (on the libvirt host)
        self.console_dir = console_dir  # where each VM's console log goes (on its host)
        self.probe = probe  # if given, `auto` keeps KVM only if this guest boots under it
        self.probe_timeout = probe_timeout  # seconds a KVM probe may take to show a heartbeat
        self._probe_lock = asyncio.Lock()  # concurrent creates under `auto` probe once
        self.verdict: DomainTypeVerdict | None = None  # the domain type in use, once decided

    # -- plumbing -------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` on the host's connection, in a worker thread, translating
        libvirt's errors. Not retried: for changes.

        `what` names the operation for messages ("start vm1"). A lost connection
        becomes LibvirtUnreachable; the next call opens a new one.
        """
        with self._translated(what):
            return await self.libvirt.call(fn, *args)

    async def _read(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """As `_call`, for reads: retried once on a new connection if libvirtd restarted."""
        with self._translated(what):
            return await self.libvirt.read(fn, *args)

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (on handles it was given) in a worker thread, as `_call` translates."""
        with self._translated(what):
            return await self.libvirt.run(fn, *args)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except Unreachable as exc:
            raise LibvirtUnreachable(f"cannot reach libvirt at {self.uri}: {exc}") from None
        except libvirt.libvirtError as exc:
            if _code(exc) in CONNECTION_ERRORS:
                raise LibvirtUnreachable(f"{what}: lost libvirt at {self.uri}: {exc}") from None
            raise HypervisorError(f"{what}: {exc}") from None

    def _domain(self, conn: Any, name: str) -> Any:
        """The domain called `name` (blocking); UnknownVm if there is none."""
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                raise UnknownVm(f"no VM named {name!r} on {self.uri}") from None
            raise

    def _exists(self, conn: Any, name: str) -> bool:
        try:
            self._domain(conn, name)
        except UnknownVm:
            return False
        return True

    def console_log(self, name: str) -> Path:
        """Where VM `name`'s serial console is logged, on the host it runs on."""
        return self.console_dir / f"{name}.console.log"

    def overlay_path(self, name: str, index: int) -> Path:
        """The overlay file of VM `name`'s `index`-th disk."""
        return self.disk_dir / f"{name}-{disk_target(index)}.qcow2"

    async def close(self) -> None:
        """Close the libvirt connection and threads if they are this adapter's own."""
        if self._owns_libvirt:
            await self.libvirt.close()

    # -- domain type ----------------------------------------------------------------

    async def resolve_domain_type(self) -> DomainTypeVerdict:
        """The domain type VMs get here, with the reason; decided once per process."""
        if self.domain_type != "auto":
            self.verdict = choose(self.domain_type, capabilities_xml="", device_problem=None)
            return self.verdict
        async with self._probe_lock:
            with _verdict_lock:
                verdict = _verdicts.get((self.uri, self.probe))
            if verdict is None:
                verdict = await self._decide_auto()
                log.info(
                    "domain type for %s: %s (%s)", self.uri, verdict.domain_type, verdict.reason
                )
                with _verdict_lock:
                    _verdicts[(self.uri, self.probe)] = verdict
        self.verdict = verdict
        return verdict

    async def _decide_auto(self) -> DomainTypeVerdict:
        """KVM if libvirt offers it, /dev/kvm answers and the probe (if any) boots."""
        capabilities = await self._read("read libvirt's capabilities", _capabilities)
        device = await asyncio.to_thread(kvm_device_problem)
        verdict = choose("auto", capabilities_xml=capabilities, device_problem=device)
        if verdict.domain_type != "kvm" or self.probe is None:
            return verdict
        outcome = ProbeOutcome(await self._boot_probe(self.probe), self.probe_timeout)
        return choose("auto", capabilities_xml=capabilities, device_problem=device, probe=outcome)

    async def _boot_probe(self, probe: ProbeGuest) -> float | None:
        """Boot `probe` as a transient KVM domain; seconds to its marker, or None."""
        import uuid  # only for the probe: uuid loads platform and libuuid into every agent

        name = f"novacron-kvm-probe-{uuid.uuid4().hex[:8]}"
        spec = VmSpec(name, 1, probe.memory_mib, probe.kernel, probe.initrd, probe.cmdline)
        xml = domain_xml(spec, domain_type="kvm", overlays=(), console_log=None)
        started = time.monotonic()
        try:
            dom, stream = await self._call("start KVM probe", self._start_probe, xml)
        except LibvirtUnreachable:
            raise
        except HypervisorError as exc:
            log.warning("KVM probe guest did not start: %s", exc)
            return None
        try:
            seen = b""
            while time.monotonic() - started < self.probe_timeout:
                seen = (seen + await self._run("read KVM probe", _read_stream, stream))[-4096:]
                if probe.marker in seen:
                    return time.monotonic() - started
                await asyncio.sleep(POLL)
            return None
        finally:
            await self._run("stop KVM probe", _end_probe, dom, stream)

    def _start_probe(self, conn: Any, xml: str) -> tuple[Any, Any]:
        """Create the transient probe domain and open its console (blocking)."""
        dom = conn.createXML(xml, 0)
        stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError:
            _end_probe(dom, stream)
            raise
        return dom, stream

    # -- lifecycle ------------------------------------------------------------------

    async def create(self, spec: VmSpec) -> VmInfo:
        """Define a VM (not started): validate, create its disk overlays, define.

        Raises BadSpec (the spec or its files), VmExists, LibvirtUnreachable.
        """
        spec.validate()
        await asyncio.to_thread(_check_files, spec)
        verdict = await self.resolve_domain_type()
        return await self._call(f"create {spec.name}", self._define, spec, verdict.domain_type)

    def _define(self, conn: Any, spec: VmSpec, domain_type: str) -> VmInfo:
        """Overlays, then defineXML; overlays are removed again if defining fails."""
        if self._exists(conn, spec.name):
            raise VmExists(f"a VM named {spec.name!r} already exists on {self.uri}")
        overlays = [self.overlay_path(spec.name, i) for i in range(len(spec.disks))]
        created: list[Path] = []
        with _removed_on_error(created):
            for disk, overlay in zip(spec.disks, overlays, strict=True):
                _create_overlay(disk.base, overlay, disk.size_mib)
                created.append(overlay)
            xml = domain_xml(
                spec,
                domain_type=domain_type,
                overlays=overlays,
                console_log=self.console_log(spec.name),
            )
            try:
                dom = conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                if "already exists" in str(exc):
                    raise VmExists(f"a VM named {spec.name!r} already exists: {exc}") from None
                raise
        return VmInfo(spec.name, dom.UUIDString(), "shutoff", dict(spec.labels))

    async def start(self, name: str) -> bool:
        """Start VM `name`; False if it was already running."""
        return await self._call(f"start {name}", self._start, name)

    def _start(self, conn: Any, name: str) -> bool:
        dom = self._domain(conn, name)
        if dom.isActive():
            return False
        dom.create()
        return True

    async def stop(self, name: str, timeout: float = 30.0) -> StopOutcome:
        """Stop VM `name`: ACPI shutdown, then after `timeout` seconds, destroy.

        Returns how it stopped. A guest that ignores the power button still
        stops, just `timeout` seconds later.
        """
        if not await self._call(f"stop {name}", self._shutdown, name):
            return "not running"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self._read(f"stop {name}", self._is_active, name):
                return "graceful"
            await asyncio.sleep(POLL)
        stopped = await self._call(f"stop {name}", self._destroy, name)
        return "forced" if stopped else "graceful"

    def _shutdown(self, conn: Any, name: str) -> bool:
        """Ask the guest to power off; False if it was not running."""
        dom = self._domain(conn, name)
        if not dom.isActive():
            return False
        try:
            dom.shutdown()
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # it just stopped
                raise
        return True

    def _is_active(self, conn: Any, name: str) -> bool:
        try:
            return bool(self._domain(conn, name).isActive())
        except UnknownVm:
            return False  # a transient VM vanishes when it stops

    def _destroy(self, conn: Any, name: str) -> bool:
        """Pull the plug; False if it had stopped in the meantime."""
        try:
            self._domain(conn, name).destroy()
        except UnknownVm:
            return False
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_OPERATION_INVALID:  # not running
                return False
            raise
        return True

    async def delete(self, name: str) -> list[Path]:
        """Remove VM `name`: destroy if running, undefine, delete the disks it owns.

        Only overlays recorded in its metadata are deleted, never base images
        or disks of domains NovaCron did not create. Returns the files removed.
        """
        meta = await self._call(f"delete {name}", self._undefine, name)
        return await asyncio.to_thread(_remove_files, meta.disks)

    def _undefine(self, conn: Any, name: str) -> VmMetadata:
        dom = self._domain(conn, name)
        meta = parse_metadata(dom.XMLDesc(0))
        if dom.isActive():
            self._destroy(conn, name)
        if dom.isPersistent():
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            )
            with contextlib.suppress(UnknownVm):
                _undefine_domain(self._domain(conn, name), flags)
        return meta

    # -- reading --------------------------------------------------------------------

    async def list(self) -> list[VmInfo]:
        """Every VM on this host (NovaCron's or not), sorted by name."""
        return await self._read("list VMs", self._list)

    def _list(self, conn: Any) -> builtins.list[VmInfo]:
        infos = []
        for dom in conn.listAllDomains(0):
            with _skip_vanished():
                state = VM_STATES.get(int(dom.state()[0]), "unknown")
                infos.append(VmInfo(dom.name(), dom.UUIDString(), state, domain_labels(dom)))
        return sorted(infos, key=lambda info: info.name)

    async def stats(self, name: str) -> VmStats:
        """State, CPU time, memory, and job statistics of VM `name`."""
        return await self._read(f"stats {name}", self._stats, name)

    def _stats(self, conn: Any, name: str) -> VmStats:
        dom = self._domain(conn, name)
        state, max_kib, kib, vcpus, cpu_ns = dom.info()
        active = bool(dom.isActive())
        return VmStats(
            name=name,
            uuid=dom.UUIDString(),
            state=VM_STATES.get(int(state), "unknown"),
            domain_type=domain_type_of(dom.XMLDesc(0)),
            persistent=bool(dom.isPersistent()),
            vcpus=int(vcpus),
            cpu_time_s=int(cpu_ns) / 1e9,
            memory_mib=int(kib) // 1024,
            max_memory_mib=int(max_kib) // 1024,
            rss_mib=int(dom.memoryStats().get("rss", 0)) // 1024 if active else None,
            labels=domain_labels(dom),
            job=job_stats(dom.jobStats(0)) if active else None,
            last_job=_last_job(dom),
        )


# --- helpers (blocking; called in worker threads) --------------------------------------


def _capabilities(conn: Any) -> str:
    """libvirt's capabilities XML: the guests and domain types it offers."""
    return str(conn.getCapabilities())


def _check_files(spec: VmSpec) -> None:
    """BadSpec if a file the spec boots from is missing (on this host)."""
    needed = [("kernel", spec.kernel), ("initrd", spec.initrd)]
    needed += [(f"disk {disk_target(i)} base", d.base) for i, d in enumerate(spec.disks)]
    missing = [
        f"{what} {path} does not exist" for what, path in needed if path and not path.exists()
    ]
    relative = [
        f"{what} {path} is not absolute" for what, path in needed if path and not path.is_absolute()
    ]
    if missing or relative:
        raise BadSpec(f"bad spec for VM {spec.name!r}: " + "; ".join(relative + missing))


def _create_overlay(base: Path, overlay: Path, size_mib: int | None) -> None:
    """qemu-img create a qcow2 overlay backed by `base`; VmExists if the file is there."""
    if overlay.exists():
        raise VmExists(
            f"disk {overlay} already exists (left by an earlier VM of that name?); "
            "delete it or choose another name"
        )
    overlay.parent.mkdir(parents=True, exist_ok=True)
    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2"]
    command += [str(overlay)] + ([f"{size_mib}M"] if size_mib else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BadSpec(f"cannot create disk {overlay} on {base}: {result.stderr.strip()}")


@contextlib.contextmanager
def _removed_on_error(paths: list[Path]) -> Iterator[None]:
    """Delete `paths` (created inside the block) if the block raises."""
    try:
        yield
    except BaseException:
        _remove_files(paths)
        raise


def _remove_files(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Delete each file that exists; return those deleted."""
    removed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _skip_vanished() -> Iterator[None]:
    """Ignore a domain that disappeared mid-read (migrated away, transient stopped)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def _undefine_domain(dom: Any, flags: int) -> None:
    """undefineFlags, or plain undefine where the driver lacks these flags (test driver)."""
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if _code(exc) not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            raise
        dom.undefine()


# Reading a completed job's statistics without KEEP_COMPLETED discards them: the agent
# reads them too, and must leave them for `virsh domjobinfo --completed` and other tools.
COMPLETED_JOB_KEPT = (
    libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
)


def _last_job(dom: Any) -> JobStats | None:
    """The domain's last completed job (e.g. the incoming migration), if libvirt kept it."""
    try:
        return job_stats(dom.jobStats(COMPLETED_JOB_KEPT))
    except libvirt.libvirtError:
        return None


def _read_stream(stream: Any) -> bytes:
    """Whatever a non-blocking console stream has now (b"" if nothing)."""
    data = b""
    while True:
        chunk = stream.recv(4096)
        if not isinstance(chunk, bytes) or not chunk:  # -2: would block; b"": closed
            return data
        data += chunk


def _end_probe(dom: Any, stream: Any) -> None:
    """Close the probe's console and kill the transient probe domain (it vanishes)."""
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()
    with contextlib.suppress(libvirt.libvirtError):
        dom.destroy()
