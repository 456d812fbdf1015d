"""Live migration through the agents, end to end: real lab hosts, libvirtd, QEMU guests.

Three lab hosts each run `nova-agent`; `nova` runs inside a host, as an
operator's would. Guests are the TCG test guest (simulations/guest.py), whose
heartbeat on the serial console proves that a migrated guest kept running.
Guests are defined through the hypervisor adapter from this process, with
libvirt connections opened inside the lab host's namespace (`opener_in`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import libvirt
import pytest

from novacron.agent.inventory import read_domains, recent_dirty_rate
from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import DISK_DIR, LabAgents, wait_for
from tests.lab_vms import (
    agent_metrics,
    beats,
    console_log,
    delete_guest,
    dirty_rate_started,
    domains,
    everyone_sees,
    hosts_of,
    metric,
    migrations,
    nova,
    opener_in,
    remove_everywhere,
    running_mesh,
    scratch_dir,
    start_guest,
    wait_beat_above,
    wait_measured_idle,
)

pytestmark = pytest.mark.lab

RUN = f"m{os.getpid() % 100000}"
HOSTS = 3


@pytest.fixture(scope="module")
def disk_dir() -> Iterator[Path]:
    with scratch_dir(RUN) as path:
        yield path


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, LabAgents]]:
    with running_mesh(RUN, hosts=HOSTS) as mesh:
        yield mesh


def test_migrate_keeps_the_guest_running_and_every_agent_agrees(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    start_guest(lab, agents, disk_dir, guest, "test-vm")
    wait_measured_idle(h1, "test-vm")
    before = wait_beat_above(h1, "test-vm", 30)[-1]

    code, answer = nova(h1, "vm", "migrate", "test-vm", "--to", h2.name, "--wait")

    assert (code, answer["ok"]) == (0, True), answer
    migration = answer["migration"]
    assert migration["max_downtime_ms"] == 50, "an idle guest gets the short switchover pause"
    assert (migration["outcome"], migration["source"], migration["target"]) == (
        "committed",
        h1.name,
        h2.name,
    )
    after = wait_beat_above(h2, "test-vm", before + 10)
    last_on_source = beats(h1, "test-vm")[-1]
    assert last_on_source >= before
    assert last_on_source < after[0] <= last_on_source + 2, "the guest rebooted or stalled"
    assert after == list(range(after[0], after[0] + len(after))), "no gaps, no restart"
    everyone_sees(agents, lab, "test-vm", h2.name)
    inbound = [m for m in migrations(h2) if m["migration_id"] == migration["migration_id"]]
    assert [m["outcome"] for m in inbound] == ["committed"]
    # What the job cost, from libvirt's final statistics, in the source agent's metrics.
    scraped = agent_metrics(h1)
    assert metric(scraped, "novacron_vmi_migration_downtime_seconds_count") == 1
    assert 0 < metric(scraped, "novacron_vmi_migration_downtime_seconds_sum") < 5
    sent = "novacron_vmi_migration_data_processed_bytes"
    assert metric(scraped, f'{sent}_count{{outcome="committed"}}') == 1
    assert metric(scraped, f'{sent}_sum{{outcome="committed"}}') > 1 << 20  # the guest's memory
    # The agents read the job's statistics and left them for the operator's own tools.
    job = h2.run(
        ["virsh", "-c", "qemu:///system", "domjobinfo", "--completed", "test-vm"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "Completed" in job and "Total downtime" in job, job
    print(f"migrated in {migration['elapsed_s']} s; heartbeat ..{last_on_source} | {after[0]}..")
    the_same_migration_everywhere(lab, agents, "test-vm", migration["migration_id"])
    delete_guest(h2, disk_dir, "test-vm")


def the_same_migration_everywhere(lab: Lab, agents: LabAgents, vm: str, mid: str) -> None:
    """`nova vm show` on the host the VM left (its agent restarted since: it forgot what it
    remembered), on its new host and on a bystander: the migration that moved it, with the
    same outcome and the same wall-clock times."""
    h1 = lab.hosts[0]
    agents.kill(h1, signal.SIGKILL)
    agents.start(h1)
    agents.wait_for_full_mesh(timeout=60)
    shown = {}
    for host in lab.hosts:
        code, show = nova(host, "vm", "show", vm)
        assert code == 0, show
        shown[host.name] = [
            (m["source"], m["target"], m["phase"], m["outcome"], m["started"], m["ended"])
            for m in show["migrations"]
            if m["migration_id"] == mid
        ]
    print(shown)
    (row,) = shown["h1"]
    assert row[:4] == ("h1", "h2", "committed", "committed")
    assert row[4] is not None and row[5] is not None and row[4] < row[5]
    assert shown["h2"] == shown["h3"] == [row]


@pytest.fixture(scope="module")
def dirty_vm(mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path) -> Iterator[str]:
    """A guest on h1 that keeps dirtying memory with non-zero data: 40 MiB/s, five times
    the rate under which the agent calls a guest idle (in every one-second sample of the
    last minute; at 20 MiB/s, sampled 16 on a quiet machine, a loaded run once sampled
    it idle)."""
    lab, agents = mesh
    start_guest(lab, agents, disk_dir, guest, "dirty-vm", dirty_mib=32, dirty_rate=40)
    yield "dirty-vm"
    remove_everywhere(lab, "dirty-vm")


def test_a_migration_waits_for_a_dirty_rate_measurement_in_progress(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1 = lab.hosts[0]
    start_guest(lab, agents, disk_dir, guest, "measured-vm")
    wait_beat_above(h1, "measured-vm", 30)
    conn = opener_in(h1)(h1.libvirt_uri)
    try:
        dom = conn.lookupByName("measured-vm")
        try:
            dom.startDirtyRateCalc(1, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
        except libvirt.libvirtError as exc:  # the agent's inventory started one just now
            assert "already being measured" in str(exc)

        rate = recent_dirty_rate(conn, dom)  # what the migrator asks before a job

        ((_, fields),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
        now = f"wall {time.time():.0f}, monotonic {time.monotonic():.0f}"
        assert rate is not None and rate < 8.0, f"not waited for or not idle: {fields}, {now}"
        assert fields["dirtyrate.calc_status"] == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED
    finally:
        conn.close()
        delete_guest(h1, disk_dir, "measured-vm")


@pytest.mark.parametrize(
    ("vm", "to", "reason"),
    [
        ("ghost", "h2", "unknown VM: ghost does not run on h1"),
        ("dirty-vm", "h9", "unknown host: h9"),
        ("dirty-vm", "h1", "cannot migrate to itself"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    mesh: tuple[Lab, LabAgents], dirty_vm: str, vm: str, to: str, reason: str
) -> None:
    lab, agents = mesh
    h1 = lab.hosts[0]
    before = migrations(h1)

    code, answer = nova(h1, "vm", "migrate", vm, "--to", to, "--wait")

    assert (code, answer["ok"]) == (1, False)
    assert reason in answer["error"]
    assert migrations(h1) == before
    assert hosts_of(agents, h1, dirty_vm) == [(h1.name, "running")]


def test_cancel_mid_migration_leaves_the_guest_on_the_source(
    mesh: tuple[Lab, LabAgents], dirty_vm: str
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    args = ("vm", "migrate", dirty_vm, "--to", h2.name, "--bandwidth", "2", "--no-post-copy")
    # The cancel, not the escalation after the completion timeout, must end it.
    code, started = nova(h1, *args, "--completion-timeout", "120")
    assert (code, started["ok"]) == (0, True), started
    migration_id = started["migration_id"]
    wait_for(
        lambda: nova(h1, "migrations")[1]["migrations"][0],
        lambda m: m["phase"] == "migrating" and m["percent"] > 0,
        timeout=60,
        interval=0.2,
    )
    before = beats(h1, dirty_vm)[-1]
    # The inventory measures no VM's dirty rate while it migrates: libvirt would hold that
    # call until the migration ends (30 s, then fails), and the inventory with it.
    measured = dirty_rate_started(h1, dirty_vm)
    conn = opener_in(h1)(h1.libvirt_uri)
    try:
        with ThreadPoolExecutor(1) as pool:
            read = pool.submit(read_domains, conn)
            assert dirty_vm in [d.name for d in read.result(timeout=10)], "the read got stuck"
    finally:
        conn.close()
    assert dirty_rate_started(h1, dirty_vm) == measured, "a measurement overlapped a migration"

    code, answer = nova(h1, "vm", "cancel", migration_id)

    assert (code, answer["ok"]) == (0, True), answer
    ended = wait_for(
        lambda: nova(h1, "migrations")[1]["migrations"],
        lambda ms: any(m["migration_id"] == migration_id and m["outcome"] for m in ms),
        timeout=30,
    )
    row = next(m for m in ended if m["migration_id"] == migration_id)
    assert (row["outcome"], row["reason"]) == ("aborted", "cancelled by operator")
    wait_beat_above(h1, dirty_vm, before + 10)
    assert dirty_vm not in domains(h2, "--all")
    everyone_sees(agents, lab, dirty_vm, h1.name)
    inbound = wait_for(
        partial(migrations, h2),
        lambda ms: any(m["migration_id"] == migration_id and m["outcome"] for m in ms),
        timeout=15,
    )
    assert [m["outcome"] for m in inbound if m["migration_id"] == migration_id] == ["aborted"]


def test_target_agent_killed_mid_migration_the_vm_lands_on_the_target_once(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    """libvirtd drives a peer-to-peer job by itself: the target's agent is not needed for it."""
    lab, agents = mesh
    h1, h3 = lab.hosts[0], lab.hosts[2]
    start_guest(lab, agents, disk_dir, guest, "fault-vm")
    before = wait_beat_above(h1, "fault-vm", 10)[-1]
    # 300 ms: with 50 ms under a bandwidth cap QEMU 7.2 corrupts TCG guests here (migrator.py).
    args = ("vm", "migrate", "fault-vm", "--to", h3.name, "--bandwidth", "8", "--max-downtime")
    code, started = nova(h1, *args, "300", "--completion-timeout", "120")
    assert (code, started["ok"]) == (0, True), started
    migration_id = started["migration_id"]
    wait_for(
        lambda: nova(h1, "migrations")[1]["migrations"][0],
        lambda m: m["phase"] == "migrating" and m["percent"] > 0,
        timeout=60,
        interval=0.2,
    )

    agents.kill(h3, signal.SIGKILL)
    try:
        ended = wait_for(
            lambda: nova(h1, "migrations")[1]["migrations"],
            lambda ms: any(m["migration_id"] == migration_id and m["outcome"] for m in ms),
            timeout=60,
        )
    finally:
        agents.start(h3)

    row = next(m for m in ended if m["migration_id"] == migration_id)
    assert row["outcome"] == "committed", row
    after = wait_beat_above(h3, "fault-vm", before + 10)
    assert after == list(range(after[0], after[0] + len(after))), "no gaps, no restart"
    assert after[0] > before, "the guest rebooted"
    assert "fault-vm" not in domains(h1, "--all")
    everyone_sees(agents, lab, "fault-vm", h3.name, timeout=60)
    delete_guest(h3, disk_dir, "fault-vm")


def test_migrating_a_guest_that_dirties_memory_keeps_it_running(
    mesh: tuple[Lab, LabAgents], dirty_vm: str
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before = wait_beat_above(h1, dirty_vm, 10)[-1]
    dirtied = wait_for(
        lambda: guest_mod.dirty_rates(h1.path(console_log(dirty_vm)).read_bytes()),
        bool,
        timeout=30,
    )
    assert dirtied[-1] > 10, f"the guest does not dirty memory as asked: {dirtied}"

    code, answer = nova(h1, "vm", "migrate", dirty_vm, "--to", h2.name, "--wait")

    assert (code, answer["migration"]["outcome"]) == (0, "committed"), answer
    assert answer["migration"]["max_downtime_ms"] == 300, "a guest writing memory: QEMU's limit"
    after = wait_beat_above(h2, dirty_vm, before + 10)
    assert after == list(range(after[0], after[0] + len(after))), "no gaps, no restart"
    assert after[0] > before, "the guest rebooted"
    rates = wait_for(
        lambda: guest_mod.dirty_rates(h2.path(console_log(dirty_vm)).read_bytes()),
        lambda r: len(r) >= 2,
        timeout=30,
    )
    assert rates[-1] > 0, "the guest stopped dirtying memory on the target"
    everyone_sees(agents, lab, dirty_vm, h2.name)


def create_disk_guest(host: LabHost, guest: Guest, name: str, marker: str) -> None:
    """`nova vm create` a 128 MiB guest with a local disk overlay that writes `marker` to it
    and re-reads it every second (console lines), and start it on `host`."""
    cmdline = guest.cmdline(disk_marker=marker, disk_check=1)
    boot = ("--kernel", str(guest.kernel), "--initrd", str(guest.initrd), "--cmdline", cmdline)
    disk = ("--disk", str(guest.disk), "--start")
    code, created = nova(host, "vm", "create", name, "--memory", "128", *boot, *disk)
    assert code == 0, created


def test_local_disk_contents_move_with_the_guest(mesh: tuple[Lab, LabAgents], guest: Guest) -> None:
    """No shared storage: the disk overlay lives in each host's private /var/lib/libvirt."""
    lab, agents = mesh
    h1, h3 = lab.hosts[0], lab.hosts[2]
    marker = f"written-on-h1-{RUN}"
    create_disk_guest(h1, guest, "disk-vm", marker)
    wait_for(
        lambda: guest_mod.disk_lines(h1.path(console_log("disk-vm")).read_bytes()),
        lambda lines: marker in lines,
        timeout=60,
    )
    before = wait_beat_above(h1, "disk-vm", 5)[-1]
    everyone_sees(agents, lab, "disk-vm", h1.name, timeout=30)

    code, answer = nova(h1, "vm", "migrate", "disk-vm", "--to", h3.name, "--wait")

    assert (code, answer["migration"]["outcome"]) == (0, "committed"), answer
    after = wait_beat_above(h3, "disk-vm", before + 5)
    assert after == list(range(after[0], after[0] + len(after))), "no gaps, no restart"
    # The guest re-reads the sector every second with its page cache dropped: from h3's disk.
    lines = wait_for(
        lambda: guest_mod.disk_lines(h3.path(console_log("disk-vm")).read_bytes()),
        lambda lines: len(lines) >= 3,
        timeout=30,
    )
    assert lines[-3:] == [marker] * 3
    overlay = Path(DISK_DIR) / "disk-vm-vda.qcow2"
    assert h3.path(overlay).exists(), "the disk was not copied to the target's own storage"
    assert not h1.path(overlay).exists(), "the source's copy was left behind"
    everyone_sees(agents, lab, "disk-vm", h3.name)
    code, _ = nova(h3, "vm", "delete", "disk-vm", "--force")
    assert code == 0


def test_a_failed_local_disk_migration_leaves_no_copy_on_the_target(
    mesh: tuple[Lab, LabAgents], guest: Guest
) -> None:
    """The source prepares the disk's image on the target; a migration that fails removes it."""
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    marker = f"kept-on-h1-{RUN}"
    create_disk_guest(h1, guest, "stay-vm", marker)
    wait_beat_above(h1, "stay-vm", 5)
    everyone_sees(agents, lab, "stay-vm", h1.name, timeout=30)
    overlay = Path(DISK_DIR) / "stay-vm-vda.qcow2"
    slow = ("--bandwidth", "1", "--no-post-copy", "--completion-timeout", "120")
    code, started = nova(h1, "vm", "migrate", "stay-vm", "--to", h2.name, *slow)
    assert (code, started["ok"]) == (0, True), started
    wait_for(lambda: h2.path(overlay).exists(), bool, timeout=60, interval=0.2)

    code, answer = nova(h1, "vm", "cancel", started["migration_id"])

    assert code == 0, answer
    ended = wait_for(
        lambda: nova(h1, "migrations")[1]["migrations"],
        lambda ms: any(m["migration_id"] == started["migration_id"] and m["outcome"] for m in ms),
        timeout=30,
    )
    assert [m["outcome"] for m in ended if m["migration_id"] == started["migration_id"]] == [
        "aborted"
    ]
    assert wait_for(lambda: not h2.path(overlay).exists(), bool, timeout=15), (
        "the target kept the image prepared for the failed migration"
    )
    assert h1.path(overlay).exists(), "the source's own disk must stay"
    # The guest keeps reading its disk on the source: three reads in a row see the marker
    # (once, one read printed around the cancel did not; a lasting loss would fail here).
    wait_for(
        lambda: guest_mod.disk_lines(h1.path(console_log("stay-vm")).read_bytes())[-3:],
        lambda last: last == [marker] * 3,
        timeout=30,
    )
    everyone_sees(agents, lab, "stay-vm", h1.name)
    code, _ = nova(h1, "vm", "delete", "stay-vm", "--force")
    assert code == 0
