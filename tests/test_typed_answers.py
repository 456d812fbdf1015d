"""The agent's answers are typed values inside the agent and JSON only at the API.

Each test builds a typed answer, checks its fields, and checks that its JSON
(what `api.py` sends) is what the agent sent when these answers were dicts:
the same keys, in the same order, with the same values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from novacron.agent.api_requests import migrate_request
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.location import Presence, Where
from novacron.agent.core.migration.policy import PolicyOverrides
from novacron.agent.core.migration.saga import MigrationInfo
from novacron.agent.drain import Arriving, DrainStatus, Moving, RemoteDrainStatus
from novacron.agent.history import HistoryEntry, HistoryRow, VmHistory
from novacron.agent.locator import Locator
from novacron.agent.migration_row import MigrationRow
from novacron.agent.recovery import Recovered, Recoveries
from novacron.protocol.messages import Message, NodeRecord, VmSummary
from novacron.protocol.operators import OperatorCommand
from tests.api_server import raw_answer, serve_api
from tests.fake_mesh import FakeView, migrator

START, END = 1_800_000_000.0, 1_800_000_005.25


def same_json(value: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """Equal as the API's bytes: keys in the same order too."""
    return json.dumps(value) == json.dumps(expected)


# --- a VM's migration history ---------------------------------------------------------------


def local_row(migration_id: str = "m1", started_at: float = START) -> MigrationRow:
    info = MigrationInfo(
        migration_id, "vm1", "h1", "h2", "outbound", "committed", 100.0, "committed", "",
        10.0, 15.0, purpose="manual", started_at=started_at, ended_at=started_at + 5,
    )  # fmt: skip
    return MigrationRow(info, 5.0, 300)


def carried(migration_id: str = "m1", started_at: float = START) -> HistoryEntry:
    return HistoryEntry(
        migration_id, "h1", "h2", "committed", started_at, started_at + 5.25, "", "drain"
    )


CARRIED_JSON = {
    "migration_id": "m1",
    "source": "h1",
    "target": "h2",
    "outcome": "committed",
    "reason": "",
    "purpose": "drain",
    "vm": "vm1",
    "phase": "committed",
    "started": "2027-01-15T08:00:00.000Z",
    "ended": "2027-01-15T08:00:05.250Z",
}


def test_a_history_row_of_this_agent_alone_is_its_migration_row() -> None:
    row = HistoryRow("vm1", local=local_row())
    assert (row.vm, row.migration_id, row.carried) == ("vm1", "m1", None)
    assert row.started == "2027-01-15T08:00:00.000Z"
    assert same_json(row.to_json(), local_row().to_json())


def test_a_carried_history_row_shows_the_entry_the_vm_carries() -> None:
    row = HistoryRow("vm1", carried=carried())
    assert (row.migration_id, row.local) == ("m1", None)
    assert same_json(row.to_json(), CARRIED_JSON)


def test_where_both_speak_the_carried_entry_wins_in_the_local_rows_key_order() -> None:
    row = HistoryRow("vm1", local=local_row(), carried=carried())
    before = {**local_row().to_json(), **CARRIED_JSON}  # the dict merge it replaces
    assert same_json(row.to_json(), before)
    assert row.to_json()["purpose"] == "drain" and row.to_json()["max_downtime_ms"] == 300


class _View:
    """h2 runs vm1."""

    def member(self, node_id: str) -> MemberInfo | None:
        return None

    def records(self) -> Mapping[str, NodeRecord]:
        return {"h2": NodeRecord("h2", 1, vms=(VmSummary("vm1"),))}


class _Locator:
    """h2's libvirt: vm1 carries m0 and m1."""

    async def read(self, host: str, call: object, vm: str) -> list[HistoryEntry]:
        return [carried("m0", START - 60), carried("m1")] if host == "h2" else []


async def test_a_vms_history_merges_by_id_oldest_first() -> None:
    rows = [local_row("m1"), local_row("m2", START + 60)]
    history = VmHistory("h1", _View(), cast(Locator, _Locator()), lambda: rows)
    found = await history.of("vm1")
    assert [row.migration_id for row in found] == ["m0", "m1", "m2"]
    assert [(row.local is not None, row.carried is not None) for row in found] == [
        (False, True),
        (True, True),
        (True, False),
    ]
    assert same_json(found[2].to_json(), rows[1].to_json())
    assert await history.of("vm9") == []


# --- drains -----------------------------------------------------------------------------------

DRAINING = DrainStatus(
    "h1",
    draining=True,
    running=("vm1", "vm2"),
    arriving=(Arriving("vm3", "h3", "precopy"),),
    moving=(Moving("vm1", "m1", "h2", "precopy", 42.5),),
    moved=("vm0",),
    blocked={"vm2": "no host has room"},
    not_moved={"off": "shutoff"},
)
DRAINING_JSON = {  # as `Drain.status` wrote it when it was a dict
    "node_id": "h1",
    "draining": True,
    "done": False,
    "running": ["vm1", "vm2"],
    "arriving": [{"vm": "vm3", "source": "h3", "phase": "precopy"}],
    "moving": [
        {"vm": "vm1", "migration_id": "m1", "target": "h2", "phase": "precopy", "percent": 42.5}
    ],
    "moved": ["vm0"],
    "blocked": {"vm2": "no host has room"},
    "not_moved": {"off": "shutoff"},
}
SEEN = RemoteDrainStatus(
    "h1", "h2", "alive", True, False, ("vm1",), {"off": "shutoff"}, 1, 0, 7
)  # fmt: skip
SEEN_JSON = {  # as `DrainRequests._seen` wrote it when it was a dict
    "node_id": "h1",
    "remote": True,
    "seen_from": "h2",
    "state": "alive",
    "draining": True,
    "done": False,
    "running": ["vm1"],
    "not_moved": {"off": "shutoff"},
    "migrations_out": 1,
    "migrations_in": 0,
    "record_version": 7,
}


def test_a_drain_status_is_typed_and_its_json_is_the_old_dict() -> None:
    assert DRAINING.moving[0].target == "h2" and DRAINING.arriving[0].source == "h3"
    assert (DRAINING.running, DRAINING.moved) == (("vm1", "vm2"), ("vm0",))
    assert same_json(DRAINING.to_json(), DRAINING_JSON)
    idle = DrainStatus("h1", draining=False)
    assert (idle.done, idle.running, idle.blocked, idle.not_moved) == (False, (), {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        DRAINING.draining = False  # type: ignore[misc]


def test_a_remote_drain_status_says_it_was_seen_from_another_host() -> None:
    assert (SEEN.node_id, SEEN.seen_from, SEEN.record_version) == ("h1", "h2", 7)
    assert same_json(SEEN.to_json(), SEEN_JSON)
    # A host's answer replaces what its record said, in place (the keys keep their order).
    answered = dataclasses.replace(SEEN, done=True, running=(), record_version=8)
    assert same_json(
        answered.to_json(), {**SEEN_JSON, "done": True, "running": [], "record_version": 8}
    )


class _Drain:
    """This host's drain, always `DRAINING`."""

    async def drain(self) -> DrainStatus:
        return DRAINING

    async def undrain(self) -> DrainStatus:
        return dataclasses.replace(DRAINING, draining=False)

    def status(self) -> DrainStatus:
        return DRAINING


class _HostDrain:
    """Drains of other hosts: h1 is seen as `SEEN`."""

    async def ask(
        self,
        node: str,
        drain: bool,
        requested_by: str = "",
        command: OperatorCommand | None = None,
    ) -> DrainStatus | RemoteDrainStatus:
        return SEEN

    def status_of(self, node: str) -> DrainStatus | RemoteDrainStatus:
        return SEEN


async def test_the_api_sends_a_drains_json_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await serve_api(tmp_path, drain=_Drain(), host_drain=_HostDrain())
    try:
        before = json.dumps(DRAINING_JSON).encode()
        assert await raw_answer(sock, "GET", "/v1/drain") == (200, before)
        assert await raw_answer(sock, "POST", "/v1/drain") == (202, before)
        undrained = json.dumps({**DRAINING_JSON, "draining": False}).encode()
        assert await raw_answer(sock, "POST", "/v1/undrain") == (200, undrained)
        seen = json.dumps(SEEN_JSON).encode()
        assert await raw_answer(sock, "GET", "/v1/hosts/h1/drain") == (200, seen)
        assert await raw_answer(sock, "POST", "/v1/hosts/h1/drain") == (202, seen)
        assert await raw_answer(sock, "POST", "/v1/hosts/h1/undrain") == (200, seen)
    finally:
        await server.close()


# --- a VM recovered by the operator -------------------------------------------------------


async def test_a_recovery_answers_what_it_did_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """vm1 is defined, stopped, on both hosts: recovered on h1, h2's copy goes."""
    driver = migrator([])
    stopped = Presence(Where.STOPPED, "shut off", "u1", persistent=True)

    async def look(vm: str, hosts: list[str]) -> dict[str, Presence]:
        return {host: stopped for host in hosts}

    async def retire(vm: str, host: str, uuid: str, force: bool = False) -> str:
        return "undefined"

    async def boot(vm: str, host: str) -> str:
        return "started"

    monkeypatch.setattr(driver.locator, "look", look)
    monkeypatch.setattr(driver.locator, "retire", retire)
    monkeypatch.setattr(driver.locator, "boot", boot)
    try:
        recovered = await Recoveries("h1", FakeView, driver).recover("vm1", "h1")
    finally:
        await driver.close()
    assert recovered == Recovered("vm1", "h1", True, {"h2": "undefined"}, None)
    before = {"vm": "vm1", "host": "h1", "started": True, "removed": {"h2": "undefined"}}
    assert same_json(recovered.to_json(), {**before, "was": None})


class _Recovery:
    async def recover(self, vm: str, host: str) -> Recovered:
        return Recovered(vm, host, False, {"h2": "undefined"}, "in doubt after m1")


async def test_the_api_sends_a_recoverys_json_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await serve_api(tmp_path, recovery=_Recovery())
    try:
        answer = await raw_answer(sock, "POST", "/v1/vms/a/recover", b'{"on": "h1"}')
    finally:
        await server.close()
    before = {  # as `Recoveries.recover` wrote it when it was a dict
        "vm": "a",
        "host": "h1",
        "started": False,
        "removed": {"h2": "undefined"},
        "was": "in doubt after m1",
    }
    assert answer == (200, json.dumps(before).encode())


# --- a migration's policy overrides ------------------------------------------------------------


async def test_overrides_are_typed_by_the_api_and_a_bad_one_is_answered_as_before(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    sock, server = await serve_api(tmp_path, migrations=driver)
    try:
        # The migration core refused these when overrides were dicts; the API does now.
        for body, before in [
            (b'{"to": "h2", "max_downtime_ms": 1.5}', "'max_downtime_ms' has the wrong type: 1.5"),
            (b'{"auto": true, "post_copy": "yes"}', "'post_copy' has the wrong type: 'yes'"),
            (b'{"to": "h2", "bandwidth_mib_s": -1}', None),  # a range: still the policy's
        ]:
            answer = await raw_answer(sock, "POST", "/v1/vms/vm1/migrate", body)
            why = (
                f"bad policy: policy setting {before}"
                if before is not None
                else "bad policy: bandwidth must be >= 0 MiB/s, got -1"
            )
            assert answer == (400, json.dumps({"error": why}).encode())
        assert sent == [] and driver.migrations() == []
    finally:
        await server.close()
        await driver.close()
    asked = migrate_request({"to": "h2", "bandwidth_mib_s": 5, "post_copy": False})
    assert asked.overrides == PolicyOverrides(bandwidth_mib_s=5, post_copy=False)
