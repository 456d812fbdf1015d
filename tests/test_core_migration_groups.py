"""`MigrationCore` moving an affinity group: one proposal asks room for every VM of the
group, the target reserves it for all of them or for none, and every copy starts with
that one answer. Virtual clock, no I/O."""

from __future__ import annotations

import dataclasses
import random

from novacron.agent.core.events import (
    MigrationFailed,
    MigrationProposed,
    MigrationRefused,
    ReservationMade,
    StartLibvirtMigration,
)
from novacron.agent.core.migration.saga import MigrationCore, Phase
from novacron.agent.core.placement.targets import ANTI_AFFINITY_LABEL
from novacron.protocol.messages import (
    GroupMember,
    MigrationAbort,
    MigrationAccept,
    MigrationPropose,
    MigrationRefuse,
    NodeRecord,
)
from novacron.simulations.migrations import Mesh, View, host, seen, vm

PAIR = ("a", "b")


def paired(memory_mib: int = 2048) -> Mesh:
    """h1 runs the pair a, b (2 GiB each) and c; h2 is empty with 8 GiB and 4 cores."""
    return Mesh(
        [host("h1", vm("a", memory_mib), vm("b", memory_mib), vm("c")), host("h2"), host("h3")]
    )


def move_pair(mesh: Mesh, target: str = "h2") -> None:
    mesh.call("h1", "request_group_migration", PAIR, target, None)


def test_one_proposal_reserves_room_for_the_whole_group_and_starts_every_copy() -> None:
    mesh = paired()
    move_pair(mesh)
    (proposal,) = mesh.sent_of(MigrationPropose)
    assert proposal.vm == "a" and [m.vm for m in proposal.group] == ["b"]
    made = mesh.of("h2", ReservationMade)
    assert sorted(r.vm for r in made) == ["a", "b"]
    assert len(mesh.sent_of(MigrationAccept)) == 1  # one answer for the group
    starts = mesh.of("h1", StartLibvirtMigration)
    assert sorted((s.vm, s.target) for s in starts) == [("a", "h2"), ("b", "h2")]
    ids = {e.vm: e.migration_id for e in mesh.of("h1", MigrationProposed)}
    assert {r.migration_id for r in mesh.core("h2").reservations()} == set(ids.values())
    assert all(mesh.core("h1").phase_of(mid) is Phase.MIGRATING for mid in ids.values())
    # One admission: it counts once against the one-unseen-admission-per-source rule, so the
    # target stays open to other sources, and closed to this one until libvirt shows it.
    assert mesh.core("h1").targets_full_from_here() == {"h2"}
    mesh.request("h1", "c", "h2")
    (refused,) = mesh.of("h1", MigrationRefused)
    assert refused.vm == "c" and "does not show the last one yet" in refused.reason


def answer(core: MigrationCore, message: MigrationPropose, sender: str = "h1") -> str:
    """What the target replies to `message`: "accepted" or its refusal."""
    ((dest, reply),) = core.receive(sender, message, 0.0).sends
    assert dest == sender and isinstance(reply, MigrationAccept | MigrationRefuse)
    assert reply.migration_id == message.migration_id
    return reply.reason if isinstance(reply, MigrationRefuse) else "accepted"


def target(*records: NodeRecord) -> MigrationCore:
    return MigrationCore("h2", view=View([*records, host("h1"), host("h3")]), rng=random.Random(1))


def pair_of(memory_mib: int, anti_affinity: str = "") -> MigrationPropose:
    member = GroupMember("m2", "b", 1, memory_mib, anti_affinity=anti_affinity)
    return MigrationPropose("m1", "a", "h1", "h2", 1, memory_mib, group=(member,))


def test_the_target_admits_the_whole_group_or_nothing() -> None:
    """Room for either VM but not both, one inbound slot for two, a member whose
    anti-affinity group runs there: each refuses the group and holds nothing."""
    core = target(host("h2", vm("x", 3072)))  # 5 GiB free: a or b (3 GiB), not both
    assert answer(core, pair_of(3072)) == (
        "no capacity: target h2 has 5120 MiB free, 6144 MiB needed"
    )
    assert core.reservations() == []
    assert answer(core, pair_of(1024)) == "accepted"
    assert sorted(r.vm for r in core.reservations()) == ["a", "b"]
    assert {r.group for r in core.reservations()} == {"m1"}

    core = target(host("h2"))
    assert answer(core, MigrationPropose("m0", "z", "h3", "h2", 1, 1024), "h3") == "accepted"
    assert answer(core, pair_of(1024)) == (
        "too many migrations: h2 already receives 1 inbound; its affinity group needs 2 at once"
    )
    assert [r.vm for r in core.reservations()] == ["z"]

    core = target(host("h2", dataclasses.replace(vm("db-1"), labels={ANTI_AFFINITY_LABEL: "db"})))
    assert answer(core, pair_of(1024, anti_affinity="db")) == (
        "anti-affinity: a VM of group db runs on h2"
    )
    assert core.reservations() == []


def test_a_group_larger_than_the_inbound_limit_is_refused_outright() -> None:
    core = target(host("h2"))
    members = tuple(GroupMember(f"m{i}", f"v{i}", 1, 1) for i in range(2, 1000))
    huge = dataclasses.replace(pair_of(1), group=members)
    assert answer(core, huge) == ("too many migrations: an affinity group of 999, limit 2 inbound")
    assert core.reservations() == []


def test_a_malformed_group_is_dropped() -> None:
    """A member repeating the proposal's VM or migration id means nothing: no answer."""
    core = target(host("h2"))
    twice = dataclasses.replace(pair_of(1024), group=(GroupMember("m2", "a", 1, 1024),))
    same_id = dataclasses.replace(pair_of(1024), group=(GroupMember("m1", "b", 1, 1024),))
    negative = dataclasses.replace(pair_of(1024), group=(GroupMember("m2", "b", 1, -1),))
    for bad in (twice, same_id, negative):
        assert core.receive("h1", bad, 0.0).sends == []
    assert core.stats.invalid == 3 and core.reservations() == []


def test_a_refused_group_ends_whole_on_the_source_and_nothing_starts() -> None:
    """h3's VM is arriving on h2 first; h1's view does not show it yet (h2's record does not
    count it), so h1 proposes its pair, and the target, one inbound slot left, refuses the
    group: both sagas end refused, nothing starts, neither VM is busy."""
    mesh = Mesh([host("h1", vm("a", 2048), vm("b", 2048)), host("h3", vm("big", 5120)), host("h2")])
    mesh.request("h3", "big", "h2")
    move_pair(mesh)
    refused = mesh.of("h1", MigrationRefused)
    assert sorted(r.vm for r in refused) == ["a", "b"]
    assert {r.reason for r in refused} == {
        "too many migrations: h2 already receives 1 inbound; its affinity group needs 2 at once"
    }
    assert mesh.of("h1", StartLibvirtMigration) == []
    assert not mesh.core("h1").busy("a") and not mesh.core("h1").busy("b")
    assert [r.vm for r in mesh.core("h2").reservations()] == ["big"]


def test_the_source_refuses_a_group_its_own_view_shows_cannot_go_together() -> None:
    mesh = paired(memory_mib=5120)  # 10 GiB for an 8 GiB host: each alone would fit
    move_pair(mesh)
    refused = mesh.of("h1", MigrationRefused)
    assert [r.vm for r in refused] == ["a", "b"]
    assert refused[0].reason == "no capacity: target h2 has 8192 MiB free, 10240 MiB needed"
    assert mesh.sent_of(MigrationPropose) == []
    mesh = paired()
    mesh.view.update("h2", migrations_in=1)
    move_pair(mesh)
    assert mesh.of("h1", MigrationRefused)[0].reason == (
        "too many migrations: h2 already receives 1 inbound; the affinity group needs 2 at once"
    )


def test_a_group_without_an_answer_or_cancelled_while_proposed_ends_whole() -> None:
    """The proposal is lost for good, or the operator cancels one member before the answer:
    every member's saga ends aborted and an Abort frees each reservation the target may hold."""
    mesh = paired()
    mesh.cut.add(frozenset(("h1", "h2")))
    move_pair(mesh)
    mesh.run(6.0)
    failed = mesh.of("h1", MigrationFailed)
    assert sorted(f.vm for f in failed) == ["a", "b"]
    assert len(mesh.sent_of(MigrationAbort, "h1")) == 2
    assert not mesh.core("h1").busy("a") and not mesh.core("h1").busy("b")

    mesh = paired()
    mesh.cut.add(frozenset(("h1", "h2")))
    move_pair(mesh)
    follower = next(e.migration_id for e in mesh.of("h1", MigrationProposed) if e.vm == "b")
    mesh.call("h1", "cancel", follower)
    assert sorted(f.vm for f in mesh.of("h1", MigrationFailed)) == ["a", "b"]


def test_a_member_whose_copy_fails_stays_behind_and_the_rest_commit() -> None:
    """After the target's yes each copy is its own: a fails (its VM still runs on h1), b
    lands. The group is split for a while; the planner's next round brings a to b
    (tests/test_core_rebalance.py)."""
    mesh = paired()
    move_pair(mesh)
    ids = {e.vm: e.migration_id for e in mesh.of("h1", MigrationProposed)}
    mesh.now = 3.0
    mesh.view.move_vm("b", "h1", "h2")
    mesh.call("h1", "migration_finished", ids["b"], True, "")
    mesh.call("h1", "migration_finished", ids["a"], False, "connection reset")
    mesh.call("h1", "vm_presence", "a", seen("h1"))
    outcomes = {info.vm: info.outcome for info in mesh.core("h1").migrations()}
    assert outcomes == {"a": "aborted", "b": "committed"}
    assert not any(r.vm == "a" for r in mesh.core("h2").reservations())
