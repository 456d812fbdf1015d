"""A drain begun before, during and after a migration's admission to the drained host, in the
lab: nothing lands there for good, and `nova host drain --wait` ends only when the host is
really empty (nothing running, paused or arriving), so an operator who then powers it off
loses nothing.

Three lab hosts with agents; the operator drains h2 from h3, as from any host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab
from novacron.simulations.lab.agents import LabAgents, wait_for
from tests.lab_vms import (
    beats,
    defined_on,
    domstate,
    ended,
    lab_fixtures,
    migrating,
    nova,
    running_on,
    start_guest,
    wait_beat_above,
)
from tests.test_source_libvirtd_lab import POSTCOPY

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    pytest.fail("the lab tests need root (network namespaces); run them as root", pytrace=False)

RUN = f"dra{os.getpid() % 100000}"
VMS = ("dra-vm", "drb-vm", "drc-vm")


mesh, disk_dir = lab_fixtures(RUN, VMS)


@pytest.fixture
def undrain(mesh: tuple[Lab, LabAgents]) -> Iterator[None]:
    yield
    lab, _ = mesh
    nova(lab.hosts[1], "host", "undrain")


def test_a_drain_begun_as_a_migration_is_proposed_takes_nothing(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, undrain: None
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "dra-vm")
    with ThreadPoolExecutor(2) as pool:
        drain = pool.submit(nova, h3, "host", "drain", "h2")
        move = pool.submit(nova, h1, "vm", "migrate", "dra-vm", "--to", "h2", "--wait")
        (code, drained), (moved_code, moved) = drain.result(), move.result()
    assert code == 0, drained
    print(f"migration: {moved}")
    assert moved_code == 1 and "host draining: h2 takes no new VMs" in moved["error"], moved
    assert running_on(lab, "dra-vm") == ["h1"]
    code, waited = nova(h3, "host", "drain", "h2", "--wait", timeout=120)
    assert (code, waited["drain"]["done"]) == (0, True), waited
    assert defined_on(lab, "dra-vm") == ["h1"]


def test_a_drain_begun_while_a_vm_is_copied_in_stops_that_migration(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, undrain: None
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    before = migrating(lab, agents, disk_dir, guest, "drb-vm", "h2")  # pre-copy, for minutes

    code, answer = nova(h3, "host", "drain", "h2", "--wait", timeout=300)

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
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, undrain: None
) -> None:
    lab, agents = mesh
    h1, _, h3 = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "drc-vm", dirty_mib=32, dirty_rate=10)
    before = wait_beat_above(h1, "drc-vm", 10)[-1]
    code, started = nova(h1, "vm", "migrate", "drc-vm", "--to", "h2", *POSTCOPY)
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: domstate(h1, "drc-vm"), lambda s: "post-copy" in s, 90, 0.02)

    code, answer = nova(h3, "host", "drain", "h2", "--wait", timeout=300)

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
