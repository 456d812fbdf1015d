"""The migration driver without a lab: its libvirt arguments, its refusals, its API.

What libvirt does with these arguments is tested for real in
tests/test_migration_lab.py; here the pure pieces and the request handling
are checked in milliseconds, with a fake cluster view and no libvirt calls.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron.agent import migrator as migrator_module
from novacron.agent.api import ApiServer, http_status
from novacron.agent.api_requests import MigrateRequest, migrate_request
from novacron.agent.core.migration.policy import MigrationPolicy, PolicyOverrides
from novacron.agent.core.refusals import Refused
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.agent.disks import LocalDisk, local_disks, volume_xml
from novacron.agent.migrator import (
    BASE_FLAGS,
    Migrator,
    final_totals,
    migration_flags,
    migration_params,
    progress_sample,
)
from novacron.protocol.messages import (
    JobPhase,
    Message,
    MigrationAccept,
    MigrationPropose,
    Ping,
)
from tests.api_client import call
from tests.fake_mesh import TEMPLATE, HolderView, NoView, labelled_libvirt, migrator

# --- libvirt arguments ----------------------------------------------------------------


def test_flags_follow_the_policy_and_the_disks() -> None:
    plain = MigrationPolicy(auto_converge=False, post_copy=False)
    assert migration_flags(plain, []) == BASE_FLAGS
    overlay = LocalDisk("/d/vm-vda.qcow2", "qcow2", "/base.qcow2", "qcow2")
    full = migration_flags(MigrationPolicy(), [overlay])
    for flag in (
        libvirt.VIR_MIGRATE_NON_SHARED_INC,
        libvirt.VIR_MIGRATE_AUTO_CONVERGE,
        libvirt.VIR_MIGRATE_POSTCOPY,
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    ):
        assert full & flag
    whole = migration_flags(plain, [overlay, LocalDisk("/d/raw.img", "raw", None, None)])
    assert whole == BASE_FLAGS | libvirt.VIR_MIGRATE_NON_SHARED_DISK


def test_params_carry_the_migration_uri_and_the_bandwidth_cap_for_post_copy_too() -> None:
    assert migration_params(MigrationPolicy(), "") == {}
    params = migration_params(MigrationPolicy(bandwidth_mib_s=2.4), "tcp://198.18.0.2")
    assert params == {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://198.18.0.2",
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 2,
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY: 2,
    }


@pytest.mark.parametrize(
    ("devices", "local"),
    [
        ("", False),
        ("<disk type='file' device='disk'><source file='/d/a.qcow2'/></disk>", True),
        ("<disk type='file' device='cdrom'><source file='/i.iso'/><readonly/></disk>", False),
        ("<disk type='file' device='disk'><source file='/s'/><shareable/></disk>", False),
    ],
)
def test_local_disks_are_writable_unshared_disks(devices: str, local: bool) -> None:
    xml = f"<domain><devices>{devices}</devices></domain>"
    assert bool(local_disks(xml)) is local


def test_a_live_overlay_names_its_base_and_formats() -> None:
    xml = """<domain><devices><disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/d/vm-vda.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/b/base.qcow2'/>
      <backingStore/></backingStore><target dev='vda'/></disk></devices></domain>"""
    (disk,) = local_disks(xml)
    assert disk == LocalDisk("/d/vm-vda.qcow2", "qcow2", "/b/base.qcow2", "qcow2")
    assert volume_xml(disk, 1 << 30, with_backing=True) == (
        "<volume><name>vm-vda.qcow2</name><capacity unit='bytes'>1073741824</capacity>"
        "<target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>"
        "<backingStore><path>/b/base.qcow2</path><format type='qcow2'/></backingStore></volume>"
    )


def test_job_stats_become_progress() -> None:
    raw = {
        "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
        "data_total": 200,
        "data_remaining": 50,
        "memory_bps": 1000,
        "memory_dirty_rate": 7,
        "memory_iteration": 3,
        "downtime": 40,
    }
    sample = progress_sample("m1", raw, JobPhase.POSTCOPY)
    assert sample is not None
    assert (sample.percent, sample.bandwidth, sample.dirty_rate) == (75.0, 1000.0, 7.0)
    assert (sample.iteration, sample.expected_downtime_ms, sample.phase) == (3, 40, "postcopy")
    assert progress_sample("m1", {"type": libvirt.VIR_DOMAIN_JOB_NONE}, JobPhase.PRECOPY) is None


# --- requests, with a fake mesh --------------------------------------------------------


@pytest.mark.parametrize(
    ("vm", "body", "status", "reason"),
    [
        ("ghost", {"to": "h2"}, 404, "unknown VM: ghost does not run on h1"),
        ("vm1", {"to": "h9"}, 404, "unknown host: h9"),
        ("vm1", {"to": "h1"}, 409, "cannot migrate to itself"),
        ("off", {"to": "h2"}, 409, "VM not running: off is shutoff"),
        ("vm1", {}, 400, "no target host given"),
        ("vm1", {"to": "h2", "speed": 1}, 400, "unknown setting(s): speed"),
        ("vm1", {"to": "h2", "max_downtime_ms": 1.5}, 400, "bad policy"),
        ("vm1", {"to": "h2", "auto": True}, 400, "not both"),
        ("vm1", {"auto": "yes"}, 400, "'auto' must be true or false"),
        ("ghost", {"auto": True}, 404, "unknown VM: ghost does not run on h1"),
    ],
)
async def test_bad_requests_are_refused_with_the_reason_and_send_nothing(
    vm: str, body: dict[str, Any], status: int, reason: str
) -> None:
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    with pytest.raises(Refused) as refused:
        await driver.migrate(vm, migrate_request(body))  # the API checks the body first
    assert http_status(refused.value) == status
    assert reason in str(refused.value)
    assert sent == [] and driver.migrations() == []
    await driver.close()


async def test_a_request_proposes_to_the_target_and_shows_in_the_list() -> None:
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    migration_id = await driver.migrate(
        "vm1", MigrateRequest("h2", PolicyOverrides(bandwidth_mib_s=5))
    )
    assert [(d, type(m)) for d, m in sent] == [("h2", MigrationPropose)]
    row = driver.migration(migration_id)
    assert row is not None
    assert (row.info.vm, row.info.target, row.info.phase, row.info.outcome) == (
        "vm1",
        "h2",
        "proposed",
        "",
    )
    with pytest.raises(Refused, match="already migrating"):
        await driver.migrate("vm1", MigrateRequest("h2"))
    await driver.cancel(migration_id)
    ended = driver.migration(migration_id)
    assert ended is not None and ended.info.outcome == "aborted"
    with pytest.raises(Refused, match="already ended") as again:
        await driver.cancel(migration_id)
    assert http_status(again.value) == 409
    with pytest.raises(Refused, match="cannot cancel nope: unknown migration") as unknown:
        await driver.cancel("nope")
    assert http_status(unknown.value) == 404
    await driver.close()


async def test_auto_picks_the_host_with_room() -> None:
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    migration_id = await driver.migrate("vm1", MigrateRequest(None))
    assert [(d, type(m)) for d, m in sent] == [("h2", MigrationPropose)]
    row = driver.migration(migration_id)
    assert row is not None and row.info.target == "h2"
    await driver.close()


@pytest.mark.parametrize(("labels", "target"), [({TEMPLATE_LABEL: TEMPLATE}, "h3"), ({}, "h2")])
async def test_auto_prefers_a_host_that_holds_the_vms_template(
    tmp_path: Path, labels: dict[str, str], target: str
) -> None:
    """The template is the one vm1's domain names: h3 holds it and wins h2's tie, so no
    image travels; a VM of no template goes where it went before (h2)."""
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent, HolderView(), labelled_libvirt(tmp_path, {"vm1": labels}))
    await driver.migrate("vm1", MigrateRequest(None))
    assert [(d, type(m)) for d, m in sent] == [(target, MigrationPropose)]
    await driver.close()


def test_only_migration_messages_go_to_the_driver() -> None:
    assert Migrator.handles(MigrationAccept("m", 1.0))
    assert not Migrator.handles(Ping(1, "h1"))


# --- the local API ---------------------------------------------------------------------


async def test_api_starts_lists_and_cancels_migrations_and_explains_refusals(
    tmp_path: Path,
) -> None:
    driver = migrator([])
    server = ApiServer(NoView(), str(tmp_path / "api.sock"), migrations=driver)
    await server.start()
    sock = str(server.socket_path)
    try:
        status, refused = await call(sock, "POST", "/v1/vms/ghost/migrate", json={"to": "h2"})
        assert status == 404
        assert "unknown VM" in refused["error"]
        status, bad = await call(sock, "POST", "/v1/vms/vm1/migrate", data=b"not json")
        assert (status, bad) == (400, {"error": "the request body is not JSON"})
        status, started = await call(sock, "POST", "/v1/vms/vm1/migrate", json={"to": "h2"})
        assert status == 202
        migration_id = started["migration_id"]
        assert started == {"migration_id": migration_id, "vm": "vm1", "to": "h2"}
        _, listing = await call(sock, "GET", "/v1/migrations")
        assert [m["migration_id"] for m in listing["migrations"]] == [migration_id]
        _, one = await call(sock, "GET", f"/v1/migrations/{migration_id}")
        assert one["migration"]["phase"] == "proposed"
        _, held = await call(sock, "GET", f"/v1/migrations/{migration_id}?wait=0.05")
        assert held["migration"]["outcome"] == ""  # not ended: held, then answered
        assert (await call(sock, "GET", f"/v1/migrations/{migration_id}?wait=soon")) == (
            400,
            {"error": "wait must be a number of seconds"},
        )
        path = f"/v1/migrations/{migration_id}?wait=10"
        waiting = asyncio.ensure_future(call(sock, "GET", path))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert (await call(sock, "POST", f"/v1/migrations/{migration_id}/cancel")) == (
            202,
            {"migration_id": migration_id, "cancelling": True},
        )
        _, woken = await asyncio.wait_for(waiting, 5)  # by the end, well before its 10 s
        assert woken["migration"]["outcome"] == "aborted"
        assert (await call(sock, "POST", f"/v1/migrations/{migration_id}/cancel"))[0] == 409
        _, ended = await call(sock, "GET", f"/v1/migrations/{migration_id}?wait=10")
        assert ended["migration"]["outcome"] == "aborted"  # ended: answered at once
        assert (await call(sock, "GET", "/v1/migrations/nope")) == (
            404,
            {"error": "no migration 'nope' on this host"},
        )
        assert (await call(sock, "POST", "/v1/migrations/nope/cancel"))[0] == 404
    finally:
        await server.close()
        await driver.close()


def test_progress_line_shows_what_the_operator_watches() -> None:
    from novacron.agent.cli.migrate import progress_line

    stats = {
        "phase": "precopy",
        "data_remaining": 3 * 1024 * 1024,
        "bandwidth": 2 * 1024 * 1024,
        "dirty_rate": 256,
        "iteration": 2,
        "expected_downtime_ms": 40,
    }
    row = {"percent": 42.0, "phase": "migrating", "stats": stats}
    assert progress_line(row) == (
        "[ 42.0%] migrating (precopy)  remaining 3.0 MiB  2.0 MiB/s  dirty 1.0 MiB/s"
        "  iteration 2  expected downtime 40 ms"
    )
    assert progress_line({**row, "stats": None}) == "[ 42.0%] migrating"


def test_the_end_of_a_migration_says_which_switchover_limit_it_got() -> None:
    import io

    from novacron.agent.cli.common import Output
    from novacron.agent.cli.migrate import _ended

    row = {
        "vm": "web-1",
        "source": "edge-01",
        "target": "edge-02",
        "outcome": "committed",
        "elapsed_s": 2.34,
        "escalation": None,
        "max_downtime_ms": 50,
    }
    text = io.StringIO()
    assert _ended(Output(stdout=text), row) == 0
    assert text.getvalue() == (
        "migrated web-1 from edge-01 to edge-02 in 2.3 s (switchover limit 50 ms)\n"
    )
    text = io.StringIO()
    _ended(Output(stdout=text), {**row, "max_downtime_ms": None})  # the target's row
    assert text.getvalue() == "migrated web-1 from edge-01 to edge-02 in 2.3 s\n"


async def test_a_hung_libvirtd_does_not_hold_back_the_end_of_a_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The target's libvirtd accepts the connection and never answers: the job's end goes
    to the core without its statistics, instead of waiting on libvirt."""
    monkeypatch.setattr(migrator_module, "TOTALS_TIMEOUT", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    held: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    accepting = loop.run_in_executor(None, lambda: held.append(silent.accept()[0]))
    driver = migrator([])
    try:
        uri = f"qemu+tcp://127.0.0.1:{port}/system"
        read = driver.job_totals(final_totals, "vm1", uri=uri)
        assert await asyncio.wait_for(read, 30) is None
        await accepting
        assert held, "the libvirt client reached the silent daemon"
    finally:
        for conn in held:
            conn.close()  # the blocked libvirt call fails, its thread ends
        silent.close()
        await driver.close()
