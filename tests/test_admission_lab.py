"""What a host admits, under faults and lies, in the lab: real agents, real libvirtd.

Every host offers 300 MiB to VMs (the rest reserved): one 128 MiB guest more
fits where one runs, two do not; two 150 MiB lies are all of a host's memory.

- A host whose libvirtd is down: its VMs are unknown, not gone, and it takes
  nothing until it can count its memory again. h3's libvirtd is killed while
  h1 and h2 try to move their guests there at once, then started again and
  they try once more: h3 must never end up with more than it has, and no agent
  may stop seeing h3's guest while libvirtd is away.
- A certified member that lies (h3 running a real agent with an attack beside
  it, tests/hostile_agent.py): proposals that never come, "renewed" for ever,
  must not hold h1's memory and inbound slots; a record claiming h1's VM must
  not be believed: the conflict is reported, and h3's libvirt settles it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for
from tests.lab_vms import (
    MEMORY_MIB,
    hosts_of,
    lab_fixtures,
    migrations,
    nova,
    offering,
    removed_after,
    running_on,
    start_guest,
    start_guests,
)

pytestmark = pytest.mark.lab

RUN = f"ad{os.getpid() % 100000}"
OFFERED_MIB = 300
VMS = ("lua-vm", "lub-vm", "luc-vm", "hma-vm", "hmb-vm", "hmc-vm")
HOSTILE = Path(__file__).with_name("hostile_agent.py")
mesh, disk_dir = lab_fixtures(RUN, VMS, extra_args=offering(OFFERED_MIB))
removed = removed_after(VMS)


def race(moves: list[tuple[LabHost, str]], target: str, *flags: str) -> list[dict[str, Any]]:
    """`nova vm migrate VM --to target` from each (host, VM) at the same moment."""
    with ThreadPoolExecutor(len(moves)) as pool:
        runs = [
            pool.submit(nova, host, "vm", "migrate", vm, "--to", target, *flags)
            for host, vm in moves
        ]
        return [run.result()[1] for run in runs]


def record_of(observer: LabHost, node: str) -> dict[str, Any]:
    host = nova(observer, "host", "show", node)[1].get("host") or {}
    return dict(host.get("record") or {})


def test_a_host_without_libvirt_keeps_its_vms_and_is_never_overcommitted(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2, h3 = lab.hosts
    start_guests(lab, agents, disk_dir, guest, {"luc-vm": h3, "lua-vm": h1, "lub-vm": h2})
    assert record_of(h1, "h3")["capacity"]["memory_mib"] == OFFERED_MIB

    h3.kill_libvirtd()
    try:
        down = wait_for(
            lambda: record_of(h1, "h3"), lambda r: r["libvirt_unreachable_since"] > 0, 30
        )
        # Unknown, not gone: every agent still sees h3's guest (and counts its memory).
        for observer in lab.hosts:
            assert hosts_of(agents, observer, "luc-vm") == [("h3", "unknown")]
        assert [vm["name"] for vm in down["vms"]] == ["luc-vm"]

        refused = race([(h1, "lua-vm"), (h2, "lub-vm")], "h3", "--wait")

        for answer in refused:
            assert answer["ok"] is False and "libvirt unreachable on h3" in answer["error"], answer
    finally:
        h3.start_libvirtd(timeout=120)

    # Back at the next inventory refresh (every second here), not half a minute later.
    wait_for(lambda: hosts_of(agents, h1, "luc-vm"), lambda r: r == [("h3", "running")], 15)
    assert record_of(h1, "h3")["libvirt_unreachable_since"] == 0

    answers = race([(h1, "lua-vm"), (h2, "lub-vm")], "h3", "--wait")

    outcomes = sorted(a["migration"]["outcome"] if a["ok"] else a["error"] for a in answers)
    print(outcomes)
    assert outcomes[0] == "committed" and "no capacity" in outcomes[1], outcomes
    guests = ("lua-vm", "lub-vm", "luc-vm")
    on_h3 = [vm for vm in guests if running_on(lab, vm) == ["h3"]]
    assert len(on_h3) == 2, on_h3
    assert len(on_h3) * MEMORY_MIB <= OFFERED_MIB
    for vm in guests:
        assert len(running_on(lab, vm)) == 1, vm


@pytest.fixture(scope="module")
def mallory(mesh: tuple[Lab, LabAgents]) -> Iterator[None]:
    """h3's agent replaced by the hostile one (same certificate), attacking h1 both ways,
    for the tests that ask for her (after the ones that need an honest h3)."""
    lab, agents = mesh
    h3 = lab.hosts[2]
    agents.kill(h3, signal.SIGTERM)
    args = agents.command(h3)[1:]
    log = open(agents.host_dir(h3) / "hostile.log", "ab")  # noqa: SIM115 - the child owns it
    attack = {"HOSTILE_VICTIM": "h1", "HOSTILE_MODE": "reserve,claim", "HOSTILE_MIB": "150"}
    proc = h3.popen(
        [str(BIN / "python"), str(HOSTILE), *args], env={**os.environ, **attack}, stdout=log
    )
    log.close()
    try:
        wait_for(lambda: agents.states(lab.hosts[0]).get("h3"), lambda s: s == "alive", 60)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        agents.start(h3)
        agents.wait_for_full_mesh(timeout=90)


def inbound_from(host: LabHost, source: str, ended: bool = False) -> list[dict[str, Any]]:
    """`host`'s inbound migrations from `source` that have not ended (`ended`: all)."""
    return [
        m
        for m in migrations(host)
        if m["direction"] == "inbound" and m["source"] == source and (ended or not m["outcome"])
    ]


def create(host: LabHost, guest: Guest, name: str) -> tuple[int, dict[str, Any]]:
    boot = ("--kernel", str(guest.kernel), "--initrd", str(guest.initrd))
    memory = ("--memory", str(MEMORY_MIB), "--cmdline", guest.cmdline())
    return nova(host, "vm", "create", name, *memory, *boot)


def test_a_member_cannot_hold_a_hosts_memory_and_slots_with_proposals_it_keeps_renewing(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, mallory: None
) -> None:
    lab, agents = mesh
    h1, h2, _ = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "hma-vm", on=h2)
    wait_for(lambda: inbound_from(h1, "h3", ended=True), bool, 60)  # the lies reach h1
    started = time.monotonic()
    held = []
    created: tuple[int, dict[str, Any]] = (1, {})
    while time.monotonic() - started < 60 and created[0] != 0:
        held.append(len(inbound_from(h1, "h3")))
        created = create(h1, guest, "hmb-vm")
        time.sleep(1)
    print(f"h3's reservations held on h1, once a second: {held}")
    assert created[0] == 0, f"no VM could be created on h1 for 60 s: {created[1]}"
    assert max(held) <= 1, "h3 held more than one reservation not seen in libvirt"
    assert nova(h1, "vm", "delete", "hmb-vm")[0] == 0

    # An honest migration into h1 gets a slot and the memory while the lies go on.
    code, moved = nova(h2, "vm", "migrate", "hma-vm", "--to", "h1", "--wait")

    assert (code, moved["migration"]["outcome"]) == (0, "committed"), moved
    assert running_on(lab, "hma-vm") == ["h1"]
    assert len(inbound_from(h1, "h3")) <= 1


def test_a_host_claiming_another_hosts_vm_is_not_believed(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, mallory: None
) -> None:
    lab, agents = mesh
    h1, h2, _ = lab.hosts
    start_guest(lab, agents, disk_dir, guest, "hmc-vm", on=h1)
    wait_for(
        lambda: nova(h2, "host", "show", "h3")[1]["host"]["record"]["vms"],
        lambda vms: "hmc-vm" in [vm["name"] for vm in vms],
        60,
    )  # the lie is gossiped, signed by h3
    for observer in lab.hosts[:2]:
        wait_for(
            partial(hosts_of, agents, observer, "hmc-vm"),
            lambda rows: rows == [("h1", "running")],
            30,
        )
        _, listing = nova(observer, "vm", "list")
        (conflict,) = [c for c in listing["conflicts"] if c["name"] == "hmc-vm"]
        assert (conflict["host"], conflict["runs_on"]) == ("h3", ["h1"]), conflict
        assert "h3's libvirt: not defined" in conflict["why"], conflict
    assert running_on(lab, "hmc-vm") == ["h1"]
    # The lie does not keep the VM from its own host either.
    assert nova(h1, "vm", "stop", "hmc-vm", "--timeout", "0")[0] == 0
    code, answer = nova(h1, "vm", "start", "hmc-vm")
    assert (code, answer["started"]) == (0, True), answer
