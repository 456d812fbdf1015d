"""Faults in the middle of a live migration, in the lab, with real QEMU guests.

Most tests start a guest that dirties memory faster than the migration's
bandwidth cap (so the job is certainly still in pre-copy when the fault hits,
and escalation is off so only the fault ends it), break something, and then
check what an operator would: the VM runs on exactly one host, its heartbeat
never restarted, every agent agrees where it is, and the failed migration is
reported with a reason. The target-agent crash and cancel are in
tests/test_migration_lab.py.

The source's libvirtd killed mid-migration breaks the saga's own view of the
job at every phase: in pre-copy, at the switchover (the source paused for the
final copy), and at the switch to post-copy. There no host other than the one
running the VM may keep a definition anyone could start, every agent lists it
once, and the migration has an outcome; or, where the guest was lost, the
migration says "in doubt" with the command that settles it, and that command
works.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import LabAgents, wait_for
from tests.lab_vms import (
    POSTCOPY,
    beats,
    defined_on,
    domains,
    domstate,
    ended,
    everyone_sees,
    hosts_of,
    lab_fixtures,
    migrating,
    migrations,
    nova,
    outbound_row,
    removed_after,
    running_on,
    settled_on,
    start_guest,
    wait_beat_above,
)

pytestmark = pytest.mark.lab

RUN = f"f{os.getpid() % 100000}"


VMS = ("fa-vm", "fb-vm", "fc-vm", "fd-vm", "sla-vm", "slb-vm", "slc-vm", "sld-vm", "sle-vm")
mesh, disk_dir = lab_fixtures(RUN, VMS)
removed = removed_after(VMS)


def test_target_libvirtd_killed_the_vm_stays_on_the_source(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before = migrating(lab, agents, disk_dir, guest, "fa-vm", h2.name)

    h2.kill_libvirtd()
    try:
        row = ended(h1, "fa-vm", timeout=90)
    finally:
        h2.start_libvirtd()

    assert row["outcome"] == "aborted" and row["reason"], row
    print(f"reported: {row['outcome']}: {row['reason']}")
    settled_on(lab, agents, "fa-vm", h1, before)


def test_source_agent_killed_and_restarted_the_job_is_adopted_and_reported(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h3 = lab.hosts[0], lab.hosts[2]
    before = migrating(lab, agents, disk_dir, guest, "fb-vm", h3.name)
    old_id = outbound_row(h1, "fb-vm")["migration_id"]  # type: ignore[index]

    agents.kill(h1, signal.SIGKILL)
    agents.start(h1)

    row = ended(h1, "fb-vm", timeout=120)
    assert (row["purpose"], row["outcome"]) == ("adopted", "aborted"), row
    assert row["reason"] == "source agent restarted mid-migration"
    settled_on(lab, agents, "fb-vm", h1, before)
    on_target = wait_for(
        lambda: [m for m in migrations(h3) if m["migration_id"] == old_id],
        lambda rows: bool(rows) and bool(rows[0]["outcome"]),
        timeout=60,
    )
    assert on_target[0]["outcome"] in ("expired", "aborted"), on_target


def test_link_cut_mid_migration_the_vm_stays_on_the_source(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before = migrating(lab, agents, disk_dir, guest, "fc-vm", h2.name)

    h2.link_down()
    try:
        row = ended(h1, "fc-vm", timeout=120)
    finally:
        h2.link_up()

    assert row["outcome"] == "aborted" and row["reason"], row
    print(f"reported: {row['outcome']}: {row['reason']}")
    agents.wait_for_full_mesh(timeout=90)
    settled_on(lab, agents, "fc-vm", h1, before)
    # With the link back and the mesh whole, the move can be made after all: the proposal
    # is answered even if h1's connection to h2 sat in TCP's back-off.
    code, answer = nova(h1, "vm", "migrate", "fc-vm", "--to", h2.name, "--wait")
    assert (code, answer["migration"]["outcome"]) == (0, "committed"), answer
    settled_on(lab, agents, "fc-vm", h2, before)


def test_target_libvirtd_frozen_at_the_switchover_is_reported_and_the_vm_lands_once(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """QEMU finishes copying, the source pauses, and the target's libvirtd never answers
    the finish: the source sits paused with nothing left to copy (the picture of the
    stalls in the soak, BENCHMARKS.md). The agent must say so within seconds, and the
    migration must end with the VM on one host once the target's libvirtd is back."""
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    start_guest(lab, agents, disk_dir, guest, "fd-vm")  # idle: it converges at once
    before = wait_beat_above(h1, "fd-vm", 10)[-1]
    # The cap leaves time to freeze libvirtd mid-copy; the long completion timeout keeps
    # a loaded machine's slow copy from being aborted before it reaches the switchover.
    args = ["--to", h2.name, "--bandwidth", "16", "--completion-timeout", "300"]
    code, started = nova(h1, "vm", "migrate", "fd-vm", *args)
    assert (code, started["ok"]) == (0, True), started
    wait_for(
        lambda: outbound_row(h1, "fd-vm"), lambda m: m is not None and m["percent"] > 0, 60, 0.2
    )
    libvirtd = h2.libvirtd_pid()
    assert libvirtd is not None
    os.kill(libvirtd, signal.SIGSTOP)  # QEMU copies on; libvirt's finish will not answer
    try:
        stalled = wait_for(
            lambda: outbound_row(h1, "fd-vm"),
            lambda m: m is not None and "stalled at the switchover" in (m["escalation"] or ""),
            timeout=60,
            interval=0.5,
        )
    finally:
        os.kill(libvirtd, signal.SIGCONT)

    assert stalled is not None
    print(f"while frozen: {stalled['phase']}: {stalled['escalation']}")
    row = ended(h1, "fd-vm", timeout=120)
    print(f"reported: {row['outcome']}: {row['reason'] or ''}")
    assert row["outcome"] in ("committed", "aborted"), row
    settled_on(lab, agents, "fd-vm", h2 if row["outcome"] == "committed" else h1, before)


def restart_libvirtd(host: LabHost, after: float = 3.0) -> None:
    """SIGKILL `host`'s libvirtd (its QEMU processes live on), start it again `after` s later."""
    host.kill_libvirtd()
    time.sleep(after)
    host.start_libvirtd(timeout=120)


def one_definition(lab: Lab, agents: LabAgents, vm: str, host: LabHost) -> None:
    """No host but `host` holds a definition of `vm`, and every agent lists it there once."""
    try:
        wait_for(lambda: defined_on(lab, vm), lambda hosts: hosts == [host.name], 60)
    except TimeoutError as exc:  # say what each copy is and what its agent did about it
        evidence = [
            f"{h.name}: {domstate(h, vm)!r}; "
            + " | ".join(line for line in agents.log(h).splitlines() if vm in line)[-1500:]
            for h in lab.hosts
            if h is not host
        ]
        raise AssertionError(f"{exc}\n" + "\n".join(evidence)) from exc
    for observer in lab.hosts:
        assert hosts_of(agents, observer, vm) == [(host.name, "running")]


def test_source_libvirtd_killed_in_pre_copy_the_vm_stays_on_the_source(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before = migrating(lab, agents, disk_dir, guest, "sla-vm", h2.name)

    restart_libvirtd(h1)

    row = ended(h1, "sla-vm", timeout=120)
    print(f"reported: {row['outcome']}: {row['reason']}")
    assert row["outcome"] == "aborted" and row["reason"], row
    settled_on(lab, agents, "sla-vm", h1, before)
    one_definition(lab, agents, "sla-vm", h1)


def test_source_libvirtd_killed_at_the_switchover_the_vm_lands_once_on_the_target(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """The target's libvirtd frozen holds the source paused for the final copy (the guest's
    memory has all gone over); the source's libvirtd is killed there. The target runs the
    guest once it thaws; the source's restarted libvirtd keeps it paused for minutes."""
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    start_guest(lab, agents, disk_dir, guest, "slb-vm")
    before = wait_beat_above(h1, "slb-vm", 10)[-1]
    code, started = nova(h1, "vm", "migrate", "slb-vm", "--to", h2.name, "--bandwidth", "16")
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: outbound_row(h1, "slb-vm"), lambda m: bool(m and m["percent"] > 0), 60, 0.2)
    target = h2.libvirtd_pid()
    assert target is not None
    os.kill(target, signal.SIGSTOP)
    try:
        # Paused with no memory left is not yet done: QEMU still sends the device state,
        # and a libvirtd restarted before QEMU finished cancels the migration and resumes
        # the source. The kill waits until libvirt has recorded that QEMU finished (its
        # "perform3_done" phase), from which a restarted libvirtd leaves the source paused.
        wait_for(lambda: migration_phase(h1, "slb-vm"), lambda p: p == "perform3_done", 120, 0.1)
        h1.kill_libvirtd()
    finally:
        os.kill(target, signal.SIGCONT)
    time.sleep(2)
    h1.start_libvirtd(timeout=120)

    row = ended(h1, "slb-vm", timeout=60)
    print(f"reported: {row['outcome']}: {row['reason'] or row['escalation']}")
    where = {h.name: domstate(h, "slb-vm") for h in (h1, h2)}
    assert row["outcome"] == "committed", (row, where)
    settled_on(lab, agents, "slb-vm", h2, before)
    one_definition(lab, agents, "slb-vm", h2)


def migration_phase(host: LabHost, vm: str) -> str | None:
    """The phase of `vm`'s migration job as `host`'s libvirtd has saved it in the
    domain's status file (what it acts on when it restarts), or None without a job."""
    done = host.run(
        ["cat", f"/run/libvirt/qemu/{vm}.xml"], capture_output=True, text=True, timeout=30
    )
    found = re.search(r"<job [^>]*phase='([a-z0-9_]+)'", str(done.stdout))
    return found.group(1) if found else None


def test_source_libvirtd_killed_at_the_post_copy_switch_leaves_no_second_copy(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """Killed once both sides are in post-copy: the source paused for it and the target
    running in it. Before the source's libvirtd has told the target to run the guest (its
    Finish call), the target's libvirtd destroys the incoming guest when the source's
    connection closes; a kill in that instant loses the guest's newest pages with it, and
    the migration is in doubt, as for a target lost in post-copy below."""
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    start_guest(lab, agents, disk_dir, guest, "slc-vm", dirty_mib=32, dirty_rate=10)
    before = wait_beat_above(h1, "slc-vm", 10)[-1]
    code, started = nova(h1, "vm", "migrate", "slc-vm", "--to", h2.name, *POSTCOPY)
    assert (code, started["ok"]) == (0, True), started
    wait_for(
        lambda: (domstate(h1, "slc-vm"), domstate(h2, "slc-vm")),
        lambda s: "post-copy" in s[0] and s[1] == "running (post-copy)",
        90,
        0.02,
    )

    restart_libvirtd(h1)

    row = ended(h1, "slc-vm", timeout=120)
    print(f"reported: {row['outcome']}: {row['reason'] or ''}")
    assert row["outcome"] == "committed", row
    settled_on(lab, agents, "slc-vm", h2, before)
    one_definition(lab, agents, "slc-vm", h2)
    code, refused = nova(h1, "vm", "start", "slc-vm")
    assert code == 1, refused
    assert running_on(lab, "slc-vm") == ["h2"]


def test_a_vm_running_elsewhere_is_not_started_twice(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """A copy of a running VM's definition on another host (what a killed libvirtd leaves
    behind): `nova vm start` there must refuse, naming where it runs."""
    lab, agents = mesh
    h1, h3 = lab.hosts[0], lab.hosts[2]
    start_guest(lab, agents, disk_dir, guest, "sld-vm")
    xml = h1.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", "sld-vm"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    h3.run(["virsh", "-c", "qemu:///system", "define", "/dev/stdin"], input=xml, text=True)
    assert "sld-vm" in domains(h3, "--all")

    code, refused = nova(h3, "vm", "start", "sld-vm")

    assert code == 1, refused
    assert refused["error"] == (
        "VM sld-vm runs on h1 (running): starting it here would run it twice"
    ), refused
    assert running_on(lab, "sld-vm") == ["h1"]


def qemu_pid(host: LabHost, vm: str) -> int:
    """The pid of the QEMU process running `vm` on `host` (libvirt's pid file)."""
    pid_file = host.path(Path(f"/run/libvirt/qemu/{vm}.pid"))
    return int(wait_for(pid_file.read_text, lambda text: text.strip().isdigit(), 30))


def test_a_guest_lost_in_post_copy_is_in_doubt_until_the_operator_recovers_it(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """The target's QEMU dies in post-copy: half of the guest's memory went with it, so no
    host can run it as it was. The migration ends in doubt, saying how to settle it, the VM
    cannot be started by accident, and `nova vm recover` boots it again on one host."""
    lab, agents = mesh
    h1, h2, h3 = lab.hosts
    vm = "sle-vm"
    start_guest(lab, agents, disk_dir, guest, vm, dirty_mib=32, dirty_rate=10)
    code, started = nova(h1, "vm", "migrate", vm, "--to", h2.name, *POSTCOPY)
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: domstate(h1, vm), lambda s: "post-copy" in s, 90, 0.02)

    last = beats(h1, vm)[-1]
    os.kill(qemu_pid(h2, vm), signal.SIGKILL)

    row = ended(h1, vm, timeout=90)
    print(f"reported: {row['outcome']}: {row['reason']}")
    assert row["outcome"] == "in-doubt", row
    assert f"run `nova vm recover {vm} --on HOST` (HOST: h1" in row["reason"], row
    code, refused = nova(h1, "vm", "start", vm)
    assert code == 1 and refused["error"].startswith(f"VM {vm} is in doubt"), refused
    assert domstate(h1, vm).startswith("paused (post-copy") and vm not in domains(h2)

    code, recovered = nova(h3, "vm", "recover", vm, "--on", "h1")  # from any host

    assert (code, recovered["host"], recovered["started"]) == (0, "h1", True), recovered
    wait_for(lambda: running_on(lab, vm), lambda hosts: hosts == ["h1"], 30)
    # It booted afresh (its console log starts again): what was in memory is gone.
    wait_for(lambda: beats(h1, vm), lambda b: bool(b) and 5 < b[-1] < last, 60, 0.2)
    assert defined_on(lab, vm) == ["h1"]
    everyone_sees(agents, lab, vm, "h1", timeout=30)
    rows = [m for m in migrations(h1) if m["migration_id"] == row["migration_id"]]
    assert [(m["phase"], m["outcome"]) for m in rows] == [("in-doubt", "in-doubt")]


def test_source_agent_killed_in_post_copy_the_adopted_job_ends_on_the_target(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """The fault soak's: the source's agent killed in post-copy; its next life adopts a job
    that can only finish, and must see it finish (it once waited for ever, the VM locked)."""
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    start_guest(lab, agents, disk_dir, guest, "sle-vm", dirty_mib=32, dirty_rate=10)
    before = wait_beat_above(h1, "sle-vm", 10)[-1]
    code, started = nova(h1, "vm", "migrate", "sle-vm", "--to", h2.name, *POSTCOPY)
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: domstate(h1, "sle-vm"), lambda s: "post-copy" in s, 90, 0.02)

    agents.kill(h1, signal.SIGKILL)
    agents.start(h1)

    row = ended(h1, "sle-vm", timeout=120)
    print(f"reported: {row['outcome']}: {row['reason'] or ''}")
    assert (row["purpose"], row["outcome"]) == ("adopted", "committed"), row
    settled_on(lab, agents, "sle-vm", h2, before)
    one_definition(lab, agents, "sle-vm", h2)
