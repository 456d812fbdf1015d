"""Lab: N hosts on this machine, brought up and torn down as one object.

    with Lab("demo", hosts=3) as lab:
        h1, h2, h3 = lab.hosts
        h2.run(["ping", "-c1", h1.address], check=True)

Each step records what it is about to create in state.json before creating
it, so `down` (here, from the CLI, or from another process) can always undo a
lab, however far `up` got. No module-level state: tests may run several labs.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from types import TracebackType

from novacron.simulations.lab import host_init, naming, netns, preflight, state
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.host import LabHost
from novacron.simulations.lab.state import DEFAULT_STATE_ROOT, HostRecord, LabRecord
from novacron.simulations.lab.teardown import Progress, TeardownReport, tear_down


def _alive(host: HostRecord) -> bool:
    """Whether the host's recorded init still holds its namespace.

    Checked before anyone nsenters by PID: after a crash or reboot the PID may
    belong to an unrelated process, whose namespaces we must not enter.
    """
    return host.init_pid is not None and host.init_pid in netns.netns_pids(host.netns)


def _quiet(_message: str) -> None:
    """The default progress sink: libraries should not print."""


class Lab:
    """A lab of `hosts` hosts named h1..hN on one bridge; see the module docstring."""

    def __init__(
        self,
        name: str = "default",
        hosts: int = 3,
        *,
        libvirt: bool = True,
        state_root: Path = DEFAULT_STATE_ROOT,
        progress: Progress = _quiet,
        timeout: float = 90.0,
    ) -> None:
        if not 1 <= hosts <= naming.MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {naming.MAX_HOSTS}, not {hosts}")
        self.name = naming.validate_lab_name(name)
        self.size = hosts  # how many hosts `up` creates
        self.libvirt = libvirt  # whether hosts run libvirtd
        self.state_root = state_root  # parent of every lab's state directory
        self.progress = progress  # receives one line per step worth reporting
        self.timeout = timeout  # seconds allowed for one host to become ready
        self.hosts: list[LabHost] = []  # filled by `up` (or `attach`)
        self._record: LabRecord | None = None
        self._inits: list[subprocess.Popen[bytes]] = []  # our children, reaped by `down`

    @property
    def state_dir(self) -> Path:
        """Where state.json and per-host files live."""
        return state.lab_dir(self.state_root, self.name)

    @classmethod
    def attach(cls, name: str, state_root: Path = DEFAULT_STATE_ROOT) -> Lab:
        """The running lab `name`, from its state.json (e.g. one `up` by the CLI)."""
        record = state.load(state.lab_dir(state_root, naming.validate_lab_name(name)))
        if record is None:
            raise LabError(f"no lab named {name!r} (nothing in {state_root / name})")
        lab = cls(name, max(1, len(record.hosts)), libvirt=record.libvirt, state_root=state_root)
        lab._record = record
        lab.hosts = [LabHost.from_record(h, record.switch_netns) for h in record.hosts if _alive(h)]
        return lab

    def host(self, name: str) -> LabHost:
        """The host called `name` (h1, h2, ...)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"lab {self.name!r} has no running host {name!r}")

    # -- up ---------------------------------------------------------------

    def up(self) -> Lab:
        """Create the switch and every host; on any failure, remove it all again."""
        preflight.require_root()
        preflight.require_binaries(self.libvirt)
        if self.libvirt:
            preflight.ensure_qemu_user()
        self._claim_name()
        try:
            self._build()
        except BaseException:
            self.progress(f"lab {self.name}: start-up failed, removing what was created")
            self.down()
            raise
        return self

    def _claim_name(self) -> None:
        """Create the state directory (atomic: the lab's lock) and the first record."""
        clashing = [ns for ns in netns.list_netns() if naming.owns_netns(self.name, ns)]
        if clashing:
            raise LabError(
                f"lab name {self.name!r} is in use (namespaces {', '.join(clashing)}); "
                f"remove it with `{naming.lab_command('down', '--name', self.name)}`"
            )
        self.state_root.mkdir(parents=True, exist_ok=True)
        try:
            self.state_dir.mkdir()
        except FileExistsError:
            raise LabError(
                f"lab name {self.name!r} is in use (state in {self.state_dir}); remove it "
                f"with `{naming.lab_command('down', '--name', self.name)}`"
            ) from None
        switch = naming.switch_netns(self.name)
        self._record = LabRecord(self.name, switch, self.libvirt, os.getpid())
        self._save()

    def _save(self) -> None:
        """Persist the record now: called before each resource is created."""
        assert self._record is not None
        state.save(self.state_dir, self._record)

    def _build(self) -> None:
        """Switch, then every host's namespace and cable, then the host inits."""
        record = self._record
        assert record is not None
        self.progress(f"lab {self.name}: creating switch {record.switch_netns}")
        self._record_netns(record.switch_netns)
        netns.create_switch(record.switch_netns)
        records = [self._plug(i) for i in range(1, self.size + 1)]
        host_init.write_shared_files(self.state_dir, records)
        host_init.ensure_mount_points()
        # Host 1 first: its QEMU capability probe warms the cache for the rest.
        self._start_hosts(records[:1])
        self._start_hosts(records[1:])
        record.phase = "up"
        self._save()

    def _record_netns(self, name: str) -> None:
        """Write namespace `name` into state.json; called just before creating it."""
        assert self._record is not None
        self._record.namespaces.append(name)
        self._save()

    def _plug(self, index: int) -> HostRecord:
        """Record and create host `index`'s namespace and cable."""
        assert self._record is not None
        host = HostRecord(
            name=naming.host_name(index),
            index=index,
            address=naming.host_address(index),
            netns=naming.host_netns(self.name, index),
            switch_port=naming.switch_port(index),
            host_uuid=str(uuid.uuid4()),
        )
        self._record.hosts.append(host)
        self._record.links += [f"{self._record.switch_netns}/{host.switch_port}"]
        self._record.links += [f"{host.netns}/{naming.HOST_IFACE}"]
        self._record_netns(host.netns)
        netns.add_netns(host.netns)
        netns.plug_host(self._record.switch_netns, host.switch_port, host.netns, host.address)
        host_init.prepare_host_dir(self.state_dir / host.name, host)
        return host

    def _start_hosts(self, hosts: list[HostRecord]) -> None:
        """Start the hosts' inits together, then wait for each in turn."""
        assert self._record is not None
        procs = []
        for host in hosts:
            proc = host_init.start_init(
                self.name, host, self.state_dir, self.state_root, self.libvirt
            )
            self._inits.append(proc)
            host.init_pid = proc.pid
            self._record.pids.append(proc.pid)
            self._save()
            procs.append(proc)
        for host, proc in zip(hosts, procs, strict=True):
            self._await_host(host, proc)

    def _await_host(self, host: HostRecord, proc: subprocess.Popen[bytes]) -> None:
        """Wait for one host's init (and libvirtd), then announce it."""
        assert self._record is not None and host.init_pid is not None
        host_dir = self.state_dir / host.name
        host_init.wait_init_ready(proc, host_dir, self.timeout)
        if self.libvirt:
            host_init.wait_libvirtd(host, host_dir, host.init_pid, self.timeout)
            host_init.harvest_caps_cache(host.init_pid, self.state_root)
        lab_host = LabHost.from_record(host, self._record.switch_netns)
        self.hosts.append(lab_host)
        self.progress(self.describe(lab_host))

    def describe(self, host: LabHost) -> str:
        """One progress/status line for `host`."""
        line = f"  {host.name}  {host.address:<15}  netns {host.netns}  pid {host.init_pid}"
        return line + (f"  {host.libvirt_uri}" if self.libvirt else "")

    # -- down -------------------------------------------------------------

    def down(self) -> TeardownReport:
        """Remove the lab (also one this object did not create); idempotent."""
        report = tear_down(self.name, self.state_root, self.progress)
        for proc in self._inits:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.progress(f"lab {self.name}: init {proc.pid} did not exit")
        self._inits.clear()
        self.hosts = []
        self._record = None
        return report

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
