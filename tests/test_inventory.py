"""The inventory against libvirt's `test:///default` driver and the real machine.

`test:///default` needs no daemon and has one predefined running domain,
"test" (2 vCPUs, 8 GiB maximum memory). Its state is shared by every
connection in the process, so a test that changes it restores it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import libvirt
import psutil
import pytest

from novacron.agent.core.membership.records import RecordBounds, record_problem, vm_load_limit
from novacron.agent.core.migration.reservations import Demand
from novacron.agent.core.placement.targets import room_refusal
from novacron.agent.inventory import DomainSample, Inventory, measurement_age, measuring
from novacron.protocol.messages import NodeRecord, Resources

TIMEOUT = 10.0
TEST_URI = "test:///default"

ONE_VM = """<node>
  <domain type='test'>
    <name>vm1</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <memory>1048576</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


@pytest.fixture
async def inventory(tmp_path: Path) -> AsyncIterator[Inventory]:
    inv = Inventory(
        "edge-1",
        libvirt_uri=TEST_URI,
        data_dir=tmp_path,
        labels={"site": "lab"},
        addresses=("127.0.0.1",),
    )
    await asyncio.wait_for(inv.start(), TIMEOUT)
    yield inv
    await asyncio.wait_for(inv.close(), TIMEOUT)


@pytest.fixture
def test_domain() -> Iterator[libvirt.virDomain]:
    """A second connection to the shared test driver, as an operator's `virsh` would be."""
    conn = libvirt.open(TEST_URI)
    dom = conn.lookupByName("test")
    try:
        yield dom
    finally:
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        conn.close()


async def test_record_lists_the_running_test_domain(inventory: Inventory) -> None:
    record = await asyncio.wait_for(inventory.record(version=3), TIMEOUT)

    assert (record.node_id, record.version) == ("edge-1", 3)
    assert record.libvirt_uri == TEST_URI
    assert record.labels == {"site": "lab"} and record.addresses == ("127.0.0.1",)
    vm = next(vm for vm in record.vms if vm.name == "test")
    assert vm.state == "running"
    assert vm.vcpus == 2
    assert vm.memory_mib == 8192
    assert len(vm.uuid) == 36
    assert inventory.warning is None


async def test_host_figures_are_sane(inventory: Inventory) -> None:
    record = await asyncio.wait_for(inventory.record(), TIMEOUT)
    capacity, usage = record.capacity, record.usage

    assert capacity.vcpus >= 1
    assert 0 <= usage.vcpus <= capacity.vcpus
    assert capacity.memory_mib >= usage.memory_mib > 0
    assert capacity.disk_gib >= usage.disk_gib > 0
    assert record.load >= 0
    host = await asyncio.wait_for(inventory.host(), TIMEOUT)
    assert host.net_bytes_recv >= 0 and host.net_bytes_sent >= 0
    assert 0.0 <= host.cpu_busy <= 1.0


async def test_domain_lifecycle_event_wakes_the_inventory(
    inventory: Inventory, test_domain: libvirt.virDomain
) -> None:
    await asyncio.to_thread(test_domain.suspend)
    assert await inventory.wait_changed(timeout=TIMEOUT) is True
    record = await asyncio.wait_for(inventory.record(), TIMEOUT)
    assert next(vm for vm in record.vms if vm.name == "test").state == "paused"

    await asyncio.to_thread(test_domain.resume)
    assert await inventory.wait_changed(timeout=TIMEOUT) is True
    record = await asyncio.wait_for(inventory.record(), TIMEOUT)
    assert next(vm for vm in record.vms if vm.name == "test").state == "running"


async def test_without_events_the_poll_interval_still_returns(tmp_path: Path) -> None:
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, use_events=False)
    await asyncio.wait_for(inv.start(), TIMEOUT)
    try:
        assert await inv.wait_changed(timeout=0.05) is False
    finally:
        await asyncio.wait_for(inv.close(), TIMEOUT)


async def test_unreachable_libvirt_keeps_the_last_vms_as_unknown_says_since_when_and_retries(
    tmp_path: Path,
) -> None:
    config = tmp_path / "hypervisor.xml"  # the test driver reads its "host" from this file
    inv = Inventory(
        "edge-1",
        libvirt_uri=f"test://{config}",
        data_dir=tmp_path / "not" / "yet",
        poll_interval=0.0,  # retried at every refresh
        wall=lambda: 1_800_000_000.0,
    )
    await asyncio.wait_for(inv.start(), TIMEOUT)
    try:
        record = await asyncio.wait_for(inv.record(), TIMEOUT)
        assert record.vms == ()  # never reached: nothing known
        assert record.libvirt_unreachable_since == 1_800_000_000.0  # 2027-01-15T08:00:00Z
        assert record.capacity.memory_mib > 0  # the host part still works
        assert inv.warning is not None and f"test://{config}" in inv.warning
        assert not inv.connected

        config.write_text(ONE_VM)  # "libvirtd is back"
        record = await asyncio.wait_for(inv.record(), TIMEOUT)
        assert [(vm.name, vm.state, vm.vcpus, vm.memory_mib) for vm in record.vms] == [
            ("vm1", "running", 1, 1024)
        ]
        assert record.libvirt_unreachable_since == 0.0
        assert inv.warning is None and inv.connected

        config.unlink()  # "libvirtd is gone again": the VMs have not stopped for that
        inv.libvirt.connection().close()
        record = await asyncio.wait_for(inv.record(), TIMEOUT)
        assert [(vm.name, vm.state, vm.memory_mib) for vm in record.vms] == [
            ("vm1", "unknown", 1024)
        ]
        assert record.libvirt_unreachable_since == 1_800_000_000.0
        assert room_refusal(record, Demand(1, 1), 4.0) == (
            "libvirt unreachable on edge-1 since 2027-01-15T08:00:00Z: its VMs cannot be counted"
        )
    finally:
        await asyncio.wait_for(inv.close(), TIMEOUT)


async def test_a_driver_without_dirty_rates_leaves_them_unknown(inventory: Inventory) -> None:
    record = await asyncio.wait_for(inventory.record(), TIMEOUT)
    (vm,) = [v for v in record.vms if v.name == "test"]
    assert vm.dirty_rate_mib_s == 0.0
    assert inventory.dirty_rate("test") is None  # so a migration takes no risk with it


def test_a_dirty_rate_is_trusted_a_minute_from_its_start_and_forgotten_when_the_vm_stops(
    tmp_path: Path,
) -> None:
    now = [100.0]
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, clock=lambda: now[0])
    running = DomainSample("vm1", "u1", "running", 1, 1024, 0)
    inv._summaries([dataclasses.replace(running, measuring=True)])  # started at 100
    now[0] += 2
    (vm,) = inv._summaries([dataclasses.replace(running, dirty_mib_s=16.0)])  # its result
    assert (vm.dirty_rate_mib_s, inv.dirty_rate("vm1")) == (16.0, 16.0)
    now[0] += 58  # QEMU still returns that result on every read, but no new one started
    inv._summaries([dataclasses.replace(running, dirty_mib_s=16.0)])
    assert inv.dirty_rate("vm1") == 16.0
    now[0] += 1  # 61 s after the measurement began
    inv._summaries([dataclasses.replace(running, dirty_mib_s=16.0)])
    assert inv.dirty_rate("vm1") is None  # too old to decide a migration on
    inv._summaries([dataclasses.replace(running, measuring=True)])
    now[0] += 2
    inv._summaries([dataclasses.replace(running, dirty_mib_s=0.0)])
    assert inv.dirty_rate("vm1") == 0.0
    inv._summaries([dataclasses.replace(running, state="shutoff")])
    assert inv.dirty_rate("vm1") is None


def test_the_last_minutes_measurements_are_kept_each_once(tmp_path: Path) -> None:
    """A migration judges a guest idle only on every rate of the last minute, so they are
    all kept: each once, however often QEMU returns the same result."""
    now = [100.0]
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, clock=lambda: now[0])
    running = DomainSample("vm1", "u1", "running", 1, 1024, 0)
    for rate in (40.0, 38.0, 2.0):  # a writing guest, its last sample taken while starved
        inv._summaries([dataclasses.replace(running, measuring=True)])
        now[0] += 2
        inv._summaries([dataclasses.replace(running, dirty_mib_s=rate)])
        inv._summaries([dataclasses.replace(running, dirty_mib_s=rate)])  # read again
        now[0] += 8
    assert inv.dirty_rates("vm1") == [40.0, 38.0, 2.0]
    assert inv.dirty_rate("vm1") == 2.0  # the latest, as gossiped
    now[0] += 31  # the first one started 61 s ago
    assert inv.dirty_rates("vm1") == [38.0, 2.0]
    inv._summaries([dataclasses.replace(running, state="shutoff")])
    assert inv.dirty_rates("vm1") == []


def test_a_rate_this_inventory_did_not_start_is_not_trusted(tmp_path: Path) -> None:
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, clock=lambda: 100.0)
    # e.g. QEMU's result from the agent's previous life: its age is unknown
    inv._summaries([DomainSample("vm1", "u1", "running", 1, 1024, 0, dirty_mib_s=0.0)])
    assert inv.dirty_rate("vm1") is None


def test_a_vm_is_measured_every_ten_seconds_at_most_and_never_while_the_agent_moves_it(
    tmp_path: Path,
) -> None:
    now, moving = [100.0], set()
    inv = Inventory(
        "edge-1",
        libvirt_uri=TEST_URI,
        data_dir=tmp_path,
        clock=lambda: now[0],
        may_measure=lambda vm: vm not in moving,
    )
    running = DomainSample("vm1", "u1", "running", 1, 1024, 0)
    assert inv._measure_due("vm1")
    inv._summaries([dataclasses.replace(running, measuring=True)])
    now[0] += 9.9
    assert not inv._measure_due("vm1")  # the refresh may run every second: QEMU rests
    now[0] += 0.1
    assert inv._measure_due("vm1")
    moving.add("vm1")
    assert not inv._measure_due("vm1")
    moving.clear()
    inv._summaries([dataclasses.replace(running, measuring=True)])
    inv._summaries([])  # it left ...
    inv._summaries([running])  # ... and came back: measured at once
    assert inv._measure_due("vm1")


def test_a_vm_a_job_holds_is_looked_at_again_soon_but_not_for_the_whole_job(
    tmp_path: Path,
) -> None:
    now = [100.0]
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, clock=lambda: now[0])
    held = DomainSample("vm1", "u1", "running", 1, 1024, 0, held=True)
    inv._summaries([held])
    assert inv._look_again_soon()  # e.g. it just arrived: libvirt's migration job ends in a moment
    now[0] += 4.9
    inv._summaries([held])
    assert inv._look_again_soon()
    now[0] += 0.2
    inv._summaries([held])
    assert not inv._look_again_soon()  # a long job (a backup): back to the normal refresh interval
    inv._summaries([dataclasses.replace(held, held=False)])
    inv._summaries([held])
    assert inv._look_again_soon()  # a new hold starts a new window


def test_a_vms_cpu_load_is_timed_by_when_libvirt_read_it_not_by_when_it_was_summed_up(
    tmp_path: Path,
) -> None:
    """A busy event loop summarizes a read a second late; the next interval must not look
    that much shorter (a one-vCPU guest seen using three cores: every peer refused the record)."""
    now = [100.0]
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path, clock=lambda: now[0])
    busy = DomainSample("vm1", "u1", "running", 1, 1024, 0, read_at=100.0)
    inv._summaries([busy])
    now[0] = 101.5  # the first read, summarized 1.5 s late
    (vm,) = inv._summaries([dataclasses.replace(busy, cpu_time_ns=2 * 10**9, read_at=102.0)])
    assert vm.cpu_load == 1.0  # 2 s of CPU in the 2 s between the reads


def test_a_vms_cpu_load_never_exceeds_what_its_peers_accept(tmp_path: Path) -> None:
    """QEMU's threads can take a VM past its vCPUs, never past its host's cores: a reading
    beyond them (a clock that jumped) is capped where every peer's bound is."""
    inv = Inventory("edge-1", libvirt_uri=TEST_URI, data_dir=tmp_path)
    cores = float(psutil.cpu_count() or 1)
    busy = DomainSample("vm1", "u1", "running", 1, 1024, 0, read_at=100.0)
    inv._summaries([busy])
    over = int((cores * 10 + 1) * 10**9)
    (vm,) = inv._summaries([dataclasses.replace(busy, cpu_time_ns=over, read_at=110.0)])
    assert vm.cpu_load == vm_load_limit(cores) == cores
    record = NodeRecord("edge-1", 1, capacity=Resources(vcpus=cores), vms=(vm,))
    assert record_problem(record, RecordBounds(), "198.18.0.1:7946") == ""
    beyond = dataclasses.replace(vm, cpu_load=cores * 1.01)
    problem = record_problem(dataclasses.replace(record, vms=(beyond,)), RecordBounds(), "")
    assert "cpu load" in problem


def test_a_dirty_rate_measurement_is_aged_by_the_clock_its_qemu_stamped_it_with() -> None:
    """QEMU 7.2 stamps a measurement's start with CLOCK_MONOTONIC, QEMU 8.2 and later with
    wall-clock time; a measurement begun 3 s ago is 3 s old on either."""
    wall, monotonic = 1_796_400_000.4, 39_512.7
    assert measurement_age(39_509, wall, monotonic) == pytest.approx(3.7)
    assert measurement_age(1_796_399_997, wall, monotonic) == pytest.approx(3.4)
    assert measurement_age(1_796_399_000, wall, monotonic) == pytest.approx(1000.4)


GROUPED_VM = """<node>
  <domain type='test'>
    <name>db-1</name>
    <uuid>11111111-2222-3333-4444-666666666666</uuid>
    <memory>1048576</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <metadata>
      <nc:vm xmlns:nc="urn:novacron:vm:1">
        <nc:label key="novacron/anti-affinity">db</nc:label>
        <nc:label key="novacron/affinity">shard-a</nc:label>
        <nc:label key="team">blue</nc:label>
      </nc:vm>
    </metadata>
  </domain>
</node>
"""


async def test_a_vms_placement_labels_reach_its_hosts_record(tmp_path: Path) -> None:
    """Targets, drains and the rebalancer judge groups by the records: a host gossips
    its VMs' affinity and anti-affinity groups (not their other labels), so a second VM
    of group db finds no room here."""
    config = tmp_path / "node.xml"
    config.write_text(GROUPED_VM)
    inv = Inventory("edge-1", libvirt_uri=f"test://{config}", data_dir=tmp_path)
    await asyncio.wait_for(inv.start(), TIMEOUT)
    try:
        record = await asyncio.wait_for(inv.record(), TIMEOUT)
    finally:
        await asyncio.wait_for(inv.close(), TIMEOUT)

    (vm,) = record.vms
    assert vm.labels == {"novacron/anti-affinity": "db", "novacron/affinity": "shard-a"}
    small = Demand(vcpus=1, memory_mib=64)
    assert room_refusal(record, small, 1.0, anti_affinity="db") is not None
    assert room_refusal(record, small, 1.0, anti_affinity="web") is None


def test_a_measurement_just_started_counts_as_under_way_though_qemu_says_unstarted() -> None:
    """QEMU 10 reports a measurement "unstarted", with its start stamped, until its
    sampling thread runs: a migration asking then must wait, not start under it (a lab
    soak round caught `recent_dirty_rate` giving up on one in that state)."""
    wall, mono = 1_796_447_145.4, 67_767.0
    stamped = {"dirtyrate.calc_start_time": 1_796_447_145, "dirtyrate.calc_period": 1}
    unstarted = {**stamped, "dirtyrate.calc_status": libvirt.VIR_DOMAIN_DIRTYRATE_UNSTARTED}
    assert measuring(unstarted, wall, mono)
    assert measuring({**unstarted, "dirtyrate.calc_start_time": 67_767}, wall, mono)  # old QEMU
    running = {**stamped, "dirtyrate.calc_status": libvirt.VIR_DOMAIN_DIRTYRATE_MEASURING}
    assert measuring(running, wall, mono)
    done = {**stamped, "dirtyrate.calc_status": libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED}
    assert not measuring(done, wall, mono)
    assert not measuring(unstarted, wall + 60, mono + 60)  # stamped long ago: never ran
    assert not measuring({"dirtyrate.calc_status": 0}, wall, mono)  # never started at all
    assert not measuring({}, wall, mono)
