"""What the agent's systemd unit promises, tried on a real agent, libvirtd and guest in a lab
host (this machine runs no systemd, so the test does what systemd would).

- Stopping the unit, as its KillMode says (read from the shipped unit file),
  ends every process the agent started, even one stuck in a system call, and
  never a VM: the agent runs in a control group of its own, as under systemd,
  while QEMU is libvirtd's child.
- The agent needs no write access to /run/libvirt (the unit no longer lists it
  in ReadWritePaths=): libvirt's client connects to its socket with /run
  mounted read-only, as ProtectSystem=strict mounts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for
from tests.lab_vms import beats, remove_everywhere, scratch_dir, wait_beat_above

pytestmark = pytest.mark.lab

RUN = f"u{os.getpid() % 100000}"
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "novacron-agent.service"
STOP_TIMEOUT = 10.0  # the unit's TimeoutStopSec, shortened: what matters is what is left


def kill_mode() -> str:
    """The shipped unit's KillMode (systemd's default: control-group)."""
    for line in UNIT.read_text().splitlines():
        if line.startswith("KillMode="):
            return line.partition("=")[2].strip()
    return "control-group"


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, *_ = line.split()
        if kind == "cgroup2":
            return Path(where)
    raise AssertionError("no cgroup2 file system mounted: cannot give the agent its own group")


def members_of(group: Path) -> list[int]:
    return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_like_systemd(group: Path, main_pid: int, mode: str) -> None:
    """systemd.kill(5): SIGTERM to the main process (control-group: to every process in the
    unit's group); whatever of those is left after the stop timeout gets SIGKILL."""
    targets = members_of(group) if mode == "control-group" else [main_pid]
    for pid in targets:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in targets):
        time.sleep(0.1)
    for pid in targets:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[LabHost, LabAgents]]:
    with Lab(RUN, 1) as lab:
        agents = LabAgents(lab)
        agents.start_all()
        try:
            agents.wait_for_full_mesh(timeout=60)
            yield lab.hosts[0], agents
        finally:
            for vm in ("unit-vm", "stuck-vm"):
                remove_everywhere(lab, vm)
            agents.stop_all()


@pytest.fixture
def agent_group(host: tuple[LabHost, LabAgents]) -> Iterator[tuple[Path, int]]:
    """The agent moved into a control group of its own, as systemd starts a unit."""
    h1, agents = host
    group = cgroup2_root() / f"novacron-test-{RUN}"
    group.mkdir()
    pid = agents.running_pid(h1)
    assert pid is not None
    (group / "cgroup.procs").write_text(str(pid))
    try:
        yield group, pid
    finally:
        for left in members_of(group):
            os.kill(left, signal.SIGKILL)
        wait_for(lambda: members_of(group), lambda pids: pids == [], timeout=10)
        group.rmdir()


def test_stopping_the_unit_ends_the_agents_children_and_spares_its_vms(
    host: tuple[LabHost, LabAgents], agent_group: tuple[Path, int], guest: Guest
) -> None:
    h1, agents = host
    group, agent = agent_group
    nova = str(BIN / "nova")
    cmdline = guest.cmdline()
    h1.run(
        [nova, "vm", "create", "unit-vm", "--memory", "128", "--kernel", str(guest.kernel),
         "--initrd", str(guest.initrd), "--cmdline", cmdline, "--start"],
        check=True, capture_output=True,
    )  # fmt: skip
    before = wait_beat_above(h1, "unit-vm", 5)[-1]
    with scratch_dir(RUN) as scratch:
        # A base image that never answers (a FIFO nobody writes): the agent's qemu-img
        # blocks opening it, a child of the agent as a hung NFS read would leave one.
        fifo = scratch / "base.qcow2"
        os.mkfifo(fifo)
        client = h1.popen(
            [nova, "vm", "create", "stuck-vm", "--memory", "64", "--kernel", str(guest.kernel),
             "--initrd", str(guest.initrd), "--disk", f"{fifo}:64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            stuck = wait_for(
                lambda: [p for p in members_of(group) if "qemu-img" in command_of(p)],
                bool,
                timeout=30,
            )
            qemu = [p for p in members_of(group) if "qemu-system" in command_of(p)]
            assert qemu == [], "a VM's QEMU in the agent's control group would die with it"

            stop_like_systemd(group, agent, kill_mode())

            assert [p for p in stuck if Path(f"/proc/{p}").exists()] == [], (
                f"KillMode={kill_mode()} left the agent's qemu-img running after the stop"
            )
            assert members_of(group) == []
        finally:
            client.kill()
            client.wait(timeout=10)
    agents.processes.pop(h1.name).wait(timeout=10)  # reap the agent this module started
    state = h1.run(
        ["virsh", "-c", "qemu:///system", "domstate", "unit-vm"], capture_output=True, text=True
    )
    assert state.stdout.strip() == "running"
    series = wait_beat_above(h1, "unit-vm", beats(h1, "unit-vm")[-1])
    assert series[-1] > before
    assert series == list(range(1, len(series) + 1)), "the guest rebooted"


def test_libvirt_needs_no_write_access_to_run(host: tuple[LabHost, LabAgents]) -> None:
    h1, _ = host
    script = (
        "mount --bind /run /run && mount -o remount,bind,ro /run && "
        "! touch /run/libvirt/probe 2>/dev/null && "
        "virsh -c qemu:///system uri"
    )
    done = h1.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "qemu:///system"), done.stderr
