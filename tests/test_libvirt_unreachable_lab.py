"""A host whose libvirtd is down, in the lab: its VMs are unknown, not gone, and it takes
nothing until it can count its memory again.

Three lab hosts offer 300 MiB each to VMs (the rest reserved): h3 runs one 128 MiB
guest, h1 and h2 one each. h3's libvirtd is killed while h1 and h2 try to move their
guests there at once, then started again and they try once more. Whatever the timing,
h3 must never end up with more than it has (two guests more would need 384 MiB), and no
agent may stop seeing h3's guest while libvirtd is away.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.core.placement import LIBVIRT_DOWN_LABEL
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import LabAgents, wait_for
from tests.lab_vms import (
    MEMORY_MIB,
    hosts_of,
    lab_fixtures,
    nova,
    offering,
    running_on,
    start_guest,
)

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    pytest.fail("the lab tests need root (network namespaces); run them as root", pytrace=False)

RUN = f"lu{os.getpid() % 100000}"
OFFERED_MIB = 300  # each host's memory for VMs: one guest more fits on h3, two do not
VMS = ("lua-vm", "lub-vm", "luc-vm")


mesh, disk_dir = lab_fixtures(RUN, VMS, extra_args=offering(OFFERED_MIB))


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
    start_guest(lab, agents, disk_dir, guest, "luc-vm", on=h3)
    start_guest(lab, agents, disk_dir, guest, "lua-vm", on=h1)
    start_guest(lab, agents, disk_dir, guest, "lub-vm", on=h2)
    assert record_of(h1, "h3")["capacity"]["memory_mib"] == OFFERED_MIB

    h3.kill_libvirtd()
    try:
        down = wait_for(
            lambda: record_of(h1, "h3"), lambda r: LIBVIRT_DOWN_LABEL in r["labels"], 30
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
    assert LIBVIRT_DOWN_LABEL not in record_of(h1, "h3")["labels"]

    answers = race([(h1, "lua-vm"), (h2, "lub-vm")], "h3", "--wait")

    outcomes = sorted(a["migration"]["outcome"] if a["ok"] else a["error"] for a in answers)
    print(outcomes)
    assert outcomes[0] == "committed" and "no capacity" in outcomes[1], outcomes
    on_h3 = [vm for vm in VMS if running_on(lab, vm) == ["h3"]]
    assert len(on_h3) == 2, on_h3
    assert len(on_h3) * MEMORY_MIB <= OFFERED_MIB
    for vm in VMS:
        assert len(running_on(lab, vm)) == 1, vm
