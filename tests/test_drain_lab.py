"""Draining a host from another host of the mesh, in the lab: `nova host drain h2` on h1.

Three lab hosts with their own libvirtd and agents; a real TCG test guest
runs on h2, whose heartbeat on the serial console proves it kept running
through the move. The operator is logged into h1 only: the request crosses
the mesh to h2's agent, which moves its own VMs away.

A drain begun before, during and after a migration's admission to the drained
host: nothing lands there for good, and `nova host drain --wait` ends only
when the host is really empty (nothing running, paused or arriving), so an
operator who then powers it off loses nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import LabAgents, wait_for
from tests.lab_vms import (
    MEMORY_MIB,
    POSTCOPY,
    beats,
    defined_on,
    domstate,
    ended,
    everyone_sees,
    lab_fixtures,
    migrating,
    migrations,
    nova,
    removed_after,
    running_on,
    start_guest,
    wait_beat_above,
)

pytestmark = pytest.mark.lab

RUN = f"dr{os.getpid() % 100000}"
VM = "far-vm"
VMS = (VM, "dra-vm", "drb-vm", "drc-vm")
mesh, disk_dir = lab_fixtures(RUN, VMS)
removed = removed_after(VMS)


@pytest.fixture(scope="module")
def operator(mesh: tuple[Lab, LabAgents]) -> tuple[str, str]:
    """`--operator CERT`: the engineer's own certificate, which a drain of another host needs."""
    return ("--operator", str(mesh[1].operator()))


def draining(observer: LabHost, node: str) -> bool:
    """Whether `observer`'s agent sees `node` draining (`nova host show NODE`)."""
    host = nova(observer, "host", "show", node)[1].get("host") or {}
    return bool((host.get("record") or {}).get("draining"))


def test_a_host_is_drained_and_undrained_from_another_host(
    mesh: tuple[Lab, LabAgents], guest: Guest, operator: tuple[str, str]
) -> None:
    lab, agents = mesh
    h1, h2, _ = lab.hosts
    boot = ("--kernel", str(guest.kernel), "--initrd", str(guest.initrd))
    code, created = nova(
        h2, "vm", "create", VM, "--memory", str(MEMORY_MIB), *boot,
        "--cmdline", guest.cmdline(), "--start",
    )  # fmt: skip
    assert (code, created["host"]) == (0, "h2"), created
    before = wait_beat_above(h2, VM, 5)[-1]
    everyone_sees(agents, lab, VM, "h2", timeout=30)

    code, answer = nova(h1, "host", "drain", "h2", "--wait", "--json", *operator, timeout=300)

    assert code == 0, answer
    drain = answer["drain"]
    assert (drain["node_id"], drain["draining"], drain["done"], drain["running"]) == (
        "h2",
        True,
        True,
        [],
    )
    (host,) = running_on(lab, VM)
    assert host in ("h1", "h3")
    after = wait_beat_above(lab.host(host), VM, before)
    assert after[0] > before, "the guest rebooted"
    assert after == list(range(after[0], after[0] + len(after))), "the heartbeat was reset"
    everyone_sees(agents, lab, VM, host)
    for observer in lab.hosts:
        wait_for(partial(draining, observer, "h2"), bool, 15, 0.5)
    # h2 moved it itself, as a drain, and logged who asked.
    moves = [m for m in migrations(h2) if m["vm"] == VM and m["direction"] == "outbound"]
    assert ("drain", host, "committed") in [
        (m["purpose"], m["target"], m["outcome"]) for m in moves
    ]
    asked = [line for line in agents.log(h2).splitlines() if "drain requested over the" in line]
    assert len(asked) == 1 and "from=h1" in asked[0] and "drain=True" in asked[0], asked
    code, refused = nova(lab.host(host), "vm", "migrate", VM, "--to", "h2")
    assert (code, refused["error"]) == (1, "host draining: h2 takes no new VMs")

    code, undrained = nova(h1, "host", "undrain", "h2", *operator)

    assert (code, undrained["drain"]["node_id"], undrained["drain"]["draining"]) == (
        0,
        "h2",
        False,
    ), undrained
    for observer in lab.hosts:
        wait_for(partial(draining, observer, "h2"), lambda d: not d, 15, 0.5)
    code, status = nova(h1, "host", "drain", "h2", "--status")
    assert (code, status["drain"]["draining"], status["drain"]["seen_from"]) == (0, False, "h1")


def test_a_remote_drain_of_an_unknown_host_fails_cleanly(mesh: tuple[Lab, LabAgents]) -> None:
    lab, _ = mesh
    h1 = lab.hosts[0]
    for command in (("drain", "h9"), ("drain", "h9", "--wait"), ("undrain", "h9")):
        code, answer = nova(h1, "host", *command)
        assert (code, answer["ok"], answer["error"]) == (
            1,
            False,
            "unknown host: h9 is not in h1's view of the mesh",
        ), command
    for host in lab.hosts:
        assert not draining(h1, host.name)  # nothing changed anywhere


@pytest.fixture
def undrain(mesh: tuple[Lab, LabAgents]) -> Iterator[None]:
    yield
    lab, _ = mesh
    nova(lab.hosts[1], "host", "undrain")


def test_a_drain_begun_as_a_migration_is_proposed_takes_nothing(
    mesh: tuple[Lab, LabAgents],
    guest: Guest,
    disk_dir: Path,
    undrain: None,
    operator: tuple[str, str],
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "dra-vm")
    with ThreadPoolExecutor(2) as pool:
        drain = pool.submit(nova, h3, "host", "drain", "h2", *operator)
        move = pool.submit(nova, h1, "vm", "migrate", "dra-vm", "--to", "h2", "--wait")
        (code, drained), (moved_code, moved) = drain.result(), move.result()
    assert code == 0, drained
    print(f"migration: {moved}")
    assert moved_code == 1 and "host draining: h2 takes no new VMs" in moved["error"], moved
    assert running_on(lab, "dra-vm") == ["h1"]
    code, waited = nova(h3, "host", "drain", "h2", "--wait", *operator, timeout=120)
    assert (code, waited["drain"]["done"]) == (0, True), waited
    assert defined_on(lab, "dra-vm") == ["h1"]


def test_a_drain_begun_while_a_vm_is_copied_in_stops_that_migration(
    mesh: tuple[Lab, LabAgents],
    guest: Guest,
    disk_dir: Path,
    undrain: None,
    operator: tuple[str, str],
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    before = migrating(lab, agents, disk_dir, guest, "drb-vm", "h2")  # pre-copy, for minutes

    code, answer = nova(h3, "host", "drain", "h2", "--wait", *operator, timeout=300)

    assert code == 0, answer
    assert answer["drain"]["done"] is True, answer
    # When --wait says drained, nothing of the VM is on h2, not even an incoming copy.
    assert defined_on(lab, "drb-vm") == ["h1"]
    assert running_on(lab, "drb-vm") == ["h1"]
    row = ended(h1, "drb-vm", timeout=60)
    assert (row["outcome"], row["reason"]) == ("aborted", "host draining: h2 takes no new VMs")
    series = wait_beat_above(h1, "drb-vm", before + 10)
    assert series == list(range(series[0], series[0] + len(series))), "the guest restarted"
    nova(h1, "vm", "stop", "drb-vm", "--timeout", "0")  # it dirties memory: let it rest


def test_a_drain_begun_in_post_copy_lets_the_vm_land_then_moves_it_on(
    mesh: tuple[Lab, LabAgents],
    guest: Guest,
    disk_dir: Path,
    undrain: None,
    operator: tuple[str, str],
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "drc-vm", dirty_mib=32, dirty_rate=10)
    before = wait_beat_above(h1, "drc-vm", 10)[-1]
    code, started = nova(h1, "vm", "migrate", "drc-vm", "--to", "h2", *POSTCOPY)
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: domstate(h1, "drc-vm"), lambda s: "post-copy" in s, 90, 0.02)

    code, answer = nova(h3, "host", "drain", "h2", "--wait", *operator, timeout=300)

    assert code == 0, answer
    assert answer["drain"]["done"] is True, answer
    (host,) = running_on(lab, "drc-vm")
    assert host != "h2", "--wait returned with the VM still on the drained host"
    assert defined_on(lab, "drc-vm") == [host]
    landed = ended(h1, "drc-vm", timeout=60)
    assert (landed["target"], landed["outcome"]) == ("h2", "committed"), landed
    after = wait_beat_above(lab.host(host), "drc-vm", before)
    assert after == list(range(after[0], after[0] + len(after))), "the guest restarted"
    assert beats(lab.host(host), "drc-vm")[-1] > before
