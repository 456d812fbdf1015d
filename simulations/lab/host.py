"""LabHost: one lab host as code sees it: address, URI, and a way to run in it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novacron.simulations.lab import netns
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.naming import libvirt_uri
from novacron.simulations.lab.state import HostRecord

LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")  # in the host's private /run


@dataclass(frozen=True)
class LabHost:
    """A running host. Commands run inside its network, mount and UTS namespaces.

    Entering via `nsenter -t <init pid>` (not `ip netns exec`) is what puts a
    command in the host's private /run and /etc/libvirt and under its
    hostname, so e.g. `virsh -c qemu:///system` talks to this host's libvirtd.
    """

    name: str  # h1, h2, ...; also its hostname
    address: str  # its only address, in 198.18.0.0/15
    netns: str  # its network namespace
    init_pid: int  # the process holding its namespaces
    host_uuid: str  # the host_uuid its libvirtd reports
    switch_netns: str  # where its cable's other end is
    switch_port: str  # that other end, on the bridge

    @classmethod
    def from_record(cls, record: HostRecord, switch_netns: str) -> LabHost:
        """Build from state.json; the host must have been started (has an init PID)."""
        if record.init_pid is None:
            raise ValueError(f"host {record.name} was never started")
        return cls(
            name=record.name,
            address=record.address,
            netns=record.netns,
            init_pid=record.init_pid,
            host_uuid=record.host_uuid,
            switch_netns=switch_netns,
            switch_port=record.switch_port,
        )

    @property
    def libvirt_uri(self) -> str:
        """qemu+tcp://<address>/system: reachable from every other lab host."""
        return libvirt_uri(self.address)

    def path(self, path: Path) -> Path:
        """Absolute `path` as this host sees it (its private mounts), readable from outside."""
        return Path(f"/proc/{self.init_pid}/root") / path.relative_to("/")

    def command(self, cmd: Sequence[str], cwd: Path | None = None) -> list[str]:
        """`cmd` prefixed with the nsenter call that runs it inside this host, in directory
        `cwd` (entering a mount namespace otherwise moves a process to its root)."""
        where = [f"--wd={cwd}"] if cwd is not None else []
        return ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-u", *where, "--", *cmd]

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(cmd, **kw), inside this host."""
        return subprocess.run(self.command(cmd), **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen(cmd, **kw), inside this host; `down` ends it if you don't."""
        return subprocess.Popen(self.command(cmd), **kw)

    def link_down(self) -> None:
        """Cut this host off the network (its cable unplugged at the switch)."""
        netns.set_port(self.switch_netns, self.switch_port, up=False)

    def link_up(self) -> None:
        """Reconnect this host."""
        netns.set_port(self.switch_netns, self.switch_port, up=True)

    def link_state(self) -> str:
        """ "up", "down" or "missing"."""
        return netns.port_state(self.switch_netns, self.switch_port)

    def libvirtd_pid(self) -> int | None:
        """The pid of this host's libvirtd, if it runs."""
        try:
            pid = int(self.path(LIBVIRTD_PIDFILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def kill_libvirtd(self) -> None:
        """SIGKILL this host's libvirtd (its guests' QEMU processes live on)."""
        pid = self.libvirtd_pid()
        if pid is None:
            raise LabError(f"{self.name}: libvirtd is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_libvirtd(self, timeout: float = 30.0) -> None:
        """Start this host's libvirtd again and wait until it answers."""
        self.run(["libvirtd", "-d", "-l"], check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = self.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise LabError(f"{self.name}: libvirtd did not answer within {timeout:g} s of starting")
