"""VMs driven through `nova` in the lab: create, start, stop, delete, migrate --auto, drain.

Three lab hosts, each with its own libvirtd and agent; `nova` runs inside a
host as an operator's would, and the guests are real TCG QEMU guests whose
heartbeat on the serial console proves they kept running through every move.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, DISK_DIR, LabAgents, wait_for
from tests.lab_vms import (
    MEMORY_MIB,
    domains,
    everyone_sees,
    hosts_of,
    migrations,
    nova,
    running_mesh,
    running_on,
    wait_beat_above,
)

pytestmark = pytest.mark.lab

RUN = f"v{os.getpid() % 100000}"
VMS = ("life-vm", "ballast", "auto-vm", "d1", "d2")


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, LabAgents]]:
    with running_mesh(RUN, VMS) as mesh:
        yield mesh


def create(
    host: LabHost, guest: Guest, name: str, *extra: str, memory: int = MEMORY_MIB
) -> tuple[int, dict[str, Any]]:
    """`nova vm create NAME` of a test guest on `host`."""
    boot = ("--kernel", str(guest.kernel), "--initrd", str(guest.initrd))
    args = ("vm", "create", name, "--memory", str(memory), *boot, "--cmdline", guest.cmdline())
    return nova(host, *args, *extra)


def test_create_start_stop_delete_through_nova(mesh: tuple[Lab, LabAgents], guest: Guest) -> None:
    lab, agents = mesh
    h2 = lab.hosts[1]

    code, created = create(h2, guest, "life-vm", "--disk", str(guest.disk), "--start")

    assert (code, created["ok"], created["started"], created["host"]) == (0, True, True, "h2")
    wait_beat_above(h2, "life-vm", 5)
    everyone_sees(agents, lab, "life-vm", "h2", timeout=30)

    code, again = create(h2, guest, "life-vm")
    assert (code, again["ok"]) == (1, False) and "already exists" in again["error"]
    code, bad = nova(h2, "vm", "create", "bad/name", "--memory", "0")
    assert code == 1 and "bad spec for VM 'bad/name'" in bad["error"]
    code, huge = create(h2, guest, "huge", memory=1024 * 1024)
    assert code == 1 and huge["error"].startswith("no capacity: h2 has ")
    assert "huge" not in domains(h2, "--all")

    code, stopped = nova(h2, "vm", "stop", "life-vm", "--timeout", "20")
    assert (code, stopped["stopped"]) == (0, "graceful")
    for observer in lab.hosts:
        wait_for(
            partial(hosts_of, agents, observer, "life-vm"),
            lambda rows: rows == [("h2", "shutoff")],
            15,
        )

    code, deleted = nova(h2, "vm", "delete", "life-vm")
    assert (code, deleted["deleted"]) == (0, True)
    assert deleted["removed"] == [f"{DISK_DIR}/life-vm-vda.qcow2"]
    assert not h2.path(Path(deleted["removed"][0])).exists()
    for observer in lab.hosts:
        wait_for(partial(hosts_of, agents, observer, "life-vm"), lambda rows: rows == [], 15)


def test_migrate_auto_picks_the_host_with_most_room(
    mesh: tuple[Lab, LabAgents], guest: Guest
) -> None:
    lab, agents = mesh
    h1, h2, h3 = lab.hosts
    # A defined VM holds its memory: h2 now has less room than h3.
    assert create(h2, guest, "ballast")[0] == 0
    code, _ = create(h1, guest, "auto-vm", "--start")
    assert code == 0
    before = wait_beat_above(h1, "auto-vm", 5)[-1]
    everyone_sees(agents, lab, "auto-vm", "h1", timeout=30)
    wait_for(partial(hosts_of, agents, h1, "ballast"), lambda rows: rows == [("h2", "shutoff")], 15)

    code, answer = nova(h1, "vm", "migrate", "auto-vm", "--auto", "--wait")

    assert (code, answer["migration"]["target"], answer["migration"]["outcome"]) == (
        0,
        "h3",
        "committed",
    ), answer
    after = wait_beat_above(h3, "auto-vm", before + 5)
    assert after[0] > before, "the guest rebooted"
    everyone_sees(agents, lab, "auto-vm", "h3")


def test_drain_moves_every_vm_away_within_the_limit_and_refuses_new_ones(
    mesh: tuple[Lab, LabAgents], guest: Guest
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    if running_on(lab, "auto-vm") != ["h3"]:  # run alone: put a guest on h3 first
        assert create(h3, guest, "auto-vm", "--start")[0] == 0
    for name in ("d1", "d2"):
        assert create(h3, guest, name, "--start")[0] == 0
    vms = ("auto-vm", "d1", "d2")
    before = {vm: wait_beat_above(h3, vm, 5)[-1] for vm in vms}
    for vm in vms:
        everyone_sees(agents, lab, vm, "h3", timeout=30)

    code, started = nova(h3, "host", "drain", "h3")

    assert (code, started["drain"]["draining"]) == (0, True), started
    code, refused = create(h3, guest, "late-vm")
    assert (code, refused["error"]) == (1, "host draining: h3 takes no new VMs")
    wait_for(lambda: nova(h1, "host", "show", "h3")[1]["host"]["record"]["draining"], bool, 15, 0.5)
    most = _watch_drain(h3, timeout=240)
    print(f"at most {most} outbound migrations at once during the drain")
    assert 1 <= most <= 2, f"{most} outbound migrations at once; the per-host limit is 2"

    for vm in vms:
        (host,) = running_on(lab, vm)
        assert host in ("h1", "h2")
        target = lab.hosts[int(host[1:]) - 1]
        after = wait_beat_above(target, vm, before[vm])
        assert after == list(range(after[0], after[0] + len(after))), f"{vm} restarted"
        everyone_sees(agents, lab, vm, host)
    moved = [m for m in migrations(h3) if m["direction"] == "outbound"]
    assert {m["vm"] for m in moved if m["purpose"] == "drain" and m["outcome"] == "committed"} == {
        *vms
    }
    (host,) = running_on(lab, "d1")
    code, toward = nova(lab.hosts[int(host[1:]) - 1], "vm", "migrate", "d1", "--to", "h3")
    assert (code, toward["error"]) == (1, "host draining: h3 takes no new VMs")

    code, text = _nova_text(h3, "host", "drain", "h3", "--wait")
    assert code == 0 and text.startswith("h3 drained: no VM runs here; moved auto-vm, d1, d2")
    code, undrained = nova(h3, "host", "undrain")
    assert (code, undrained["drain"]["draining"]) == (0, False)
    wait_for(
        lambda: nova(h1, "host", "show", "h3")[1]["host"]["record"]["draining"],
        lambda d: not d,
        15,
        0.5,
    )


def _watch_drain(host: LabHost, timeout: float) -> int:
    """Poll the drain until done; the most outbound migrations seen running at once."""
    most = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [m for m in migrations(host) if m["direction"] == "outbound" and not m["outcome"]]
        most = max(most, len(running))
        status = nova(host, "host", "drain", "--status")[1]["drain"]
        if status["done"] and not running:
            return most
        time.sleep(0.3)
    raise AssertionError(f"drain not done after {timeout} s: {status}")


def _nova_text(host: LabHost, *args: str) -> tuple[int, str]:
    done = host.run([str(BIN / "nova"), *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout
