"""The agent's answers are typed values inside the agent and JSON only at the API.

Each test builds a typed answer, checks its fields, and checks that its JSON
(what `api.py` sends) is what the agent sent when these answers were dicts:
the same keys, in the same order, with the same values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.saga import MigrationInfo
from novacron.agent.history import HistoryEntry, HistoryRow, VmHistory
from novacron.agent.locator import Locator
from novacron.agent.migration_row import MigrationRow
from novacron.protocol.messages import NodeRecord, VmSummary

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
