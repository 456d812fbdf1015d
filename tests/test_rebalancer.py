"""The agent's rebalancing loop (`agent/rebalancer.py`) without a lab: moves, history, pause.

The migrator runs against a fake view, so a move shows as a sent Propose; the
real moves are in tests/test_rebalance_lab.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from novacron.agent import rebalancer as rebalancer_module
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.migrator import Migrator
from novacron.agent.rebalancer import SETTING_SKEW, Rebalancer, newest_setting, setting_text
from novacron.agent.tracing import Tracing
from novacron.protocol.messages import (
    MemberState,
    Message,
    MigrationPropose,
    NodeRecord,
    RebalanceSetting,
    Resources,
    VmSummary,
)

ROOM = Resources(vcpus=4, memory_mib=8192)


class Mesh:
    """h1 runs three busy VMs, h2 and h3 idle."""

    def __init__(self) -> None:
        busy = tuple(
            VmSummary(f"vm{i}", state="running", vcpus=1, memory_mib=256, cpu_load=1.0)
            for i in range(3)
        )
        self._records = {
            "h1": NodeRecord("h1", 1, capacity=ROOM, vms=busy),
            "h2": NodeRecord("h2", 1, capacity=ROOM),
            "h3": NodeRecord("h3", 1, capacity=ROOM),
        }

    def member(self, node_id: str) -> MemberInfo | None:
        if node_id not in self._records:
            return None
        return MemberInfo(node_id, f"198.18.0.{node_id[1:]}:7946", 1, MemberState.ALIVE, 0.0, 0.0)

    def members(self) -> list[MemberInfo]:
        return [m for n in self._records if (m := self.member(n)) is not None]

    def records(self) -> Mapping[str, NodeRecord]:
        return self._records

    def gone(self, node_id: str, vm: str) -> None:
        """The host's record no longer lists `vm` (its inventory saw it leave)."""
        record = self._records[node_id]
        vms = tuple(v for v in record.vms if v.name != vm)
        self._records[node_id] = NodeRecord(node_id, 2, capacity=record.capacity, vms=vms)

    def setting(self, node_id: str, setting: RebalanceSetting) -> None:
        record = self._records[node_id]
        self._records[node_id] = NodeRecord(
            node_id, 2, capacity=record.capacity, vms=record.vms, rebalance=setting
        )


def setup() -> tuple[Mesh, Rebalancer, list[tuple[str, Message]], list[str], Migrator]:
    mesh = Mesh()
    sent: list[tuple[str, Message]] = []
    published: list[str] = []

    async def send(destination: str, message: Message) -> None:
        sent.append((destination, message))

    migrator = Migrator(
        "h1",
        mesh,
        host="198.18.0.1",
        libvirt_uri="test:///default",
        send=send,
        clock=lambda: 100.0,
        rng=random.Random(1),
    )

    async def publish() -> None:
        published.append(setting_text(rebalancer.setting))

    rebalancer = Rebalancer(
        migrator,
        lambda: mesh,
        publish=publish,
        clock=lambda: 100.0,
        rng=random.Random(1),
        wall_clock=lambda: 1700000000.0,
    )
    return mesh, rebalancer, sent, published, migrator


async def test_a_hot_host_proposes_moves_and_explains_them() -> None:
    _, rebalancer, sent, _, migrator = setup()
    preview = rebalancer.preview()
    assert preview.move is not None and preview.decision.utilization == 0.75
    assert len(preview.moves) == 2  # both outbound slots: 0.75 stays hot after one move
    assert sent == []  # a preview moves nothing

    await rebalancer.round()

    proposals = [m for _, m in sent if isinstance(m, MigrationPropose)]
    assert [(p.vm, p.target) for p in proposals] == [(m.vm, m.target) for m in preview.moves]
    status = rebalancer.status()
    assert [(m.move.vm, m.outcome) for m in status.moves] == [
        (p.vm, "running") for p in reversed(proposals)
    ]
    assert status.moves[-1].move.reason.startswith("h1 at 0.75 > mean 0.25 + 0.15")
    assert status.last_decision is not None
    assert status.last_decision.reason.startswith("balanced: 0.25")  # after both moves
    await migrator.close()


async def test_a_round_that_moves_is_one_span_and_its_moves_are_its_children() -> None:
    _, rebalancer, sent, _, migrator = setup()
    spans: list[Any] = []
    exporter = SimpleNamespace(add=lambda done: spans.extend(done))
    migrator.tracing = Tracing("h1", exporter, rng=random.Random(5))  # type: ignore[arg-type]
    await rebalancer.round()
    proposals = [m for _, m in sent if isinstance(m, MigrationPropose)]
    for proposal in proposals:
        await migrator.cancel(proposal.migration_id)  # each move ends: its spans go out
    (round_span,) = [s for s in spans if s.name == "rebalance h1"]
    assert round_span.attributes["novacron.started"] == len(proposals) == 2
    assert round_span.attributes["novacron.reason"].startswith("h1 at 0.75 > mean 0.25")
    moves = [s for s in spans if s.name.startswith("migrate ")]
    assert len(moves) == 2
    assert all(m.parent_span_id == round_span.context.span_id for m in moves)
    await migrator.close()


async def test_pause_is_mesh_wide_and_the_newest_setting_wins() -> None:
    mesh, rebalancer, _, published, migrator = setup()
    await rebalancer.pause()
    assert rebalancer.paused and published == ["paused@1700000000.000"]
    assert rebalancer.setting == RebalanceSetting(paused=True, since=1700000000.0)
    assert rebalancer.status().to_json()["setting"] == "paused@1700000000.000"

    resumed = RebalanceSetting(paused=False, since=1700000001.0)
    mesh.setting("h2", resumed)  # someone resumed later, elsewhere
    now = 1700000002.0
    assert newest_setting(mesh.records(), rebalancer.setting, now) == resumed
    mesh.setting("h3", RebalanceSetting(paused=True, since=1699999999.0))  # an older pause
    assert newest_setting(mesh.records(), rebalancer.setting, now) == resumed
    await rebalancer.adopt_mesh_setting()
    assert not rebalancer.paused and published[-1] == "active@1700000001.000"
    await migrator.close()


async def test_a_setting_dated_far_ahead_of_the_clock_does_not_win() -> None:
    """A setting dated years ahead would outrank every later pause or resume: it waits for
    the clock to come near."""
    mesh, rebalancer, _, _, migrator = setup()  # its wall clock reads 1700000000
    await rebalancer.pause()
    forever = RebalanceSetting(paused=False, since=1700000000.0 + 86400 * 365 * 100)
    mesh.setting("h2", forever)
    await rebalancer.adopt_mesh_setting()
    assert rebalancer.paused  # the far-future resume was not taken
    soon = RebalanceSetting(paused=False, since=1700000000.0 + SETTING_SKEW)
    mesh.setting("h3", soon)  # a host whose clock runs a few minutes ahead
    await rebalancer.adopt_mesh_setting()
    assert rebalancer.setting == soon and not rebalancer.paused
    assert newest_setting(mesh.records(), soon, forever.since) == forever  # in its time, it counts
    await migrator.close()


async def test_a_freed_slot_triggers_the_next_round_once_the_record_shows_the_vm_gone() -> None:
    """A hot host plans again when a move ends, not a whole interval later, but not on a
    record that still lists the VM that left (its load would count twice)."""
    mesh, rebalancer, _, _, migrator = setup()
    assert not rebalancer.slot_freed()  # no round yet
    await rebalancer.round()
    assert migrator.core.outbound() == 2 and not rebalancer.slot_freed()

    first = rebalancer.moves[-1]
    await migrator.cancel(first.migration_id)  # one of the two moves ends
    assert migrator.core.outbound() == 1
    assert not rebalancer.slot_freed()  # the record still lists the same VMs

    mesh.gone("h1", first.vm)
    assert rebalancer.slot_freed()
    await rebalancer.round()
    assert not rebalancer.slot_freed()  # noted again after the round
    await migrator.close()


def _loads(mesh: Mesh, node_id: str, load: float) -> None:
    """A new record of `node_id` (its inventory's next refresh) with every VM at `load`."""
    record = mesh.records()[node_id]
    vms = tuple(dataclasses.replace(v, cpu_load=load) for v in record.vms)
    mesh._records[node_id] = dataclasses.replace(record, version=record.version + 1, vms=vms)


async def test_a_new_record_showing_the_host_hot_plans_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hotspot is acted on when this host's record shows it, not at the next round."""
    monkeypatch.setattr(rebalancer_module, "POLL", 60.0)  # only the poke can wake it
    mesh, rebalancer, sent, _, migrator = setup()
    _loads(mesh, "h1", 0.2)  # 0.15 of 4 cores: balanced
    rebalancer.interval = 60.0  # the next round is a minute after this one
    await rebalancer.round()
    assert sent == [] and not rebalancer.due_now()

    waiting = asyncio.create_task(rebalancer._wait())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    _loads(mesh, "h1", 1.0)  # the next refresh: 0.75
    rebalancer.poke()
    await asyncio.wait_for(waiting, timeout=5)

    assert rebalancer.due_now()
    await rebalancer.round()
    assert len([m for _, m in sent if isinstance(m, MigrationPropose)]) == 2
    assert not rebalancer.due_now()  # no free slot, and nothing new
    await migrator.close()


async def test_only_a_record_newer_than_the_last_round_makes_a_round_due() -> None:
    mesh, rebalancer, sent, _, migrator = setup()
    _loads(mesh, "h1", 0.2)
    await rebalancer.round()  # balanced, on version 2
    record = mesh.records()["h1"]
    hot = tuple(dataclasses.replace(v, cpu_load=1.0) for v in record.vms)
    mesh._records["h1"] = dataclasses.replace(record, vms=hot)  # same version
    assert not rebalancer.due_now()
    _loads(mesh, "h1", 1.0)
    assert rebalancer.due_now() and sent == []
    await migrator.close()


async def test_an_affinity_group_moves_with_one_proposal_for_all_its_vms() -> None:
    """h1's movable load is a pair sharing an affinity label (vm2 is paused and stays): the
    round sends one proposal that asks room for both, and both show among the moves."""
    mesh, rebalancer, sent, _, migrator = setup()
    web = {"novacron/affinity": "web"}
    own = mesh.records()["h1"]
    vms = (
        dataclasses.replace(own.vms[0], labels=web),
        dataclasses.replace(own.vms[1], labels=web),
        dataclasses.replace(own.vms[2], state="paused"),
    )
    mesh._records["h1"] = dataclasses.replace(own, vms=vms)

    await rebalancer.round()

    (proposal,) = [m for _, m in sent if isinstance(m, MigrationPropose)]
    assert proposal.vm == "vm0" and [m.vm for m in proposal.group] == ["vm1"]
    moves = rebalancer.status().moves
    assert sorted((m.move.vm, m.move.target, m.outcome) for m in moves) == [
        ("vm0", proposal.target, "running"),
        ("vm1", proposal.target, "running"),
    ]
    assert moves[0].move.reason.startswith("h1 at 0.75 > mean 0.25 + 0.15: affinity group web")
    await migrator.close()


async def arrive_uncommitted(mesh: Mesh, migrator: Migrator) -> None:
    """vm2 arrives on h1 from h2: h1 reserved room for it, and h1's record lists it running,
    the busiest VM there (without a cooldown it would be moved first), but no Commit came."""
    mesh.gone("h1", "vm2")
    propose = MigrationPropose("in-1", "vm2", "h2", "h1", 1, 256, reason="rebalance")
    await migrator.receive("h2", propose)
    record = mesh.records()["h1"]
    arrived = VmSummary("vm2", state="running", vcpus=1, memory_mib=256, cpu_load=2.0)
    mesh._records["h1"] = dataclasses.replace(
        record, version=record.version + 1, vms=(*record.vms, arrived)
    )


async def test_a_vm_that_arrived_but_is_not_committed_yet_is_not_moved_on() -> None:
    """Between the switchover (the VM runs here and the inventory lists it) and the
    source's Commit, the inbound migration has not ended: the VM has just moved all the
    same, so the cooldown keeps it here. Without it a host made hot by the arrival sent
    the VM straight on, even back to the host it came from."""
    mesh, rebalancer, sent, _, migrator = setup()
    await arrive_uncommitted(mesh, migrator)
    assert [type(m).__name__ for _, m in sent] == ["MigrationAccept"]

    assert [m.vm for m in rebalancer.preview().moves] == ["vm0", "vm1"]
    await rebalancer.round()
    proposals = [m for _, m in sent if isinstance(m, MigrationPropose)]
    assert sorted(p.vm for p in proposals) == ["vm0", "vm1"]
    await migrator.close()


async def test_a_vm_that_arrived_though_its_migration_expired_is_not_moved_on() -> None:
    """The source's Commit lost, the reservation runs out while the VM runs here: it has
    moved all the same, and the cooldown keeps it here."""
    mesh, rebalancer, _, _, migrator = setup()
    await arrive_uncommitted(mesh, migrator)
    migrator._clock = rebalancer._clock = lambda: 1000.0  # long past the lease
    await migrator.tick()
    (info,) = [m for m in migrator.core.migrations() if m.migration_id == "in-1"]
    assert info.outcome == "expired"

    assert [m.vm for m in rebalancer.preview().moves] == ["vm0", "vm1"]
    later = 1000.0 + rebalancer.config.vm_cooldown
    rebalancer._clock = lambda: later  # the cooldown over, it may move again, first
    assert rebalancer.preview().moves[0].vm == "vm2"
    await migrator.close()
