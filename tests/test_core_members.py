"""The member table (copy-on-write, sampling, probe order) and the transition rules."""

from __future__ import annotations

import dataclasses
import random

import pytest

from novacron.agent.core.membership.members import Member, MemberTable, ProbeOrder
from novacron.agent.core.membership.snapshot import ClusterSnapshot
from novacron.agent.core.membership.transitions import (
    Verdict,
    on_alive,
    on_dead,
    on_leave,
    on_suspect,
    supersedes,
)
from novacron.protocol.messages import MemberState
from novacron.simulations.signing import sign_claim_as_signer

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def member(state: MemberState = ALIVE, incarnation: int = 5) -> Member:
    return Member("x", "addr", incarnation, state, 0.0)


def test_snapshot_table_shares_the_base_and_keeps_changes_private() -> None:
    members = [(f"n{i}", f"a{i}") for i in range(1000)]
    snapshot = ClusterSnapshot.converged(members, sign_claim=sign_claim_as_signer)
    one, two = (
        MemberTable(snapshot.members, snapshot.node_ids),
        MemberTable(snapshot.members, snapshot.node_ids),
    )
    assert len(one) == 1000 and one.overlay_size() == 0
    changed = Member("n7", "a7", 2, SUSPECT, 3.0)
    one.put(changed)
    one.put(Member("new", "b", 1, ALIVE, 3.0))
    assert one.get("n7") == changed and two.get("n7") == snapshot.members["n7"]
    assert one.overlay_size() == 2 and len(one) == 1001 and len(two) == 1000
    assert one.count(ALIVE) == 1000 and one.count(SUSPECT) == 1
    assert sum(1 for _ in one) == 1001


def test_a_split_snapshot_holds_the_other_side_failed_for_every_table_on_it() -> None:
    members = [(f"n{i}", f"a{i}") for i in range(10)]
    converged = ClusterSnapshot.converged(members, sign_claim=sign_claim_as_signer)
    side = converged.with_failed(["n7", "n3"])
    assert converged.members["n3"].state is ALIVE and not converged.dead_ids  # unchanged
    assert side.dead_ids == ("n3", "n7") and side.member_digests["n3"].state is DEAD
    counted = MemberTable(side.members, side.node_ids, side.state_counts, side.dead_ids)
    scanned = MemberTable(side.members, side.node_ids)
    assert counted._base_dead is side.dead_ids  # shared by every table on the side, not copied
    for table in (counted, scanned):
        assert table.count(DEAD) == 2 and table.count(ALIVE) == 8
        assert table.dead_ids() == ["n3", "n7"] and table.overlay_size() == 0
    counted.put(dataclasses.replace(side.members["n3"], incarnation=2, state=ALIVE))
    assert counted.dead_ids() == ["n7"] and counted.count(ALIVE) == 9
    for table in (counted, scanned):  # the base's failed first, then in the order they died
        table.put(dataclasses.replace(side.members["n7"], state_since=5.0))
        table.put(dataclasses.replace(side.members["n1"], state=DEAD))
        table.put(dataclasses.replace(side.members["n3"], incarnation=3, state=DEAD))
        assert table.dead_ids() == ["n7", "n1", "n3"] and table.count(DEAD) == 3
        table.put(dataclasses.replace(side.members["n7"], incarnation=2, state=ALIVE))
        assert table.dead_ids() == ["n1", "n3"] and table.count(DEAD) == 2
    with pytest.raises(ValueError, match="not members"):
        converged.with_failed(["stranger"])


def test_ids_in_a_range_come_sorted_whatever_the_order_members_arrived_in() -> None:
    members = [(f"n{i}", f"a{i}") for i in range(10)]
    snapshot = ClusterSnapshot.converged(members, sign_claim=sign_claim_as_signer)
    shared = MemberTable(snapshot.members, snapshot.node_ids, base_sorted=True)
    assert shared.ids_in("n3", "n6") == ["n3", "n4", "n5"]
    assert shared.ids_in("", "n1") == ["n0"] and shared.ids_in("n8", "") == ["n8", "n9"]
    shared.put(Member("m1", "b", 1, ALIVE, 1.0))  # an arrival after the base
    shared.put(Member("n55", "b", 1, ALIVE, 1.0))
    assert shared.ids_in("n5", "n6") == ["n5", "n55"]
    assert shared.ids_in("", "") == sorted([*snapshot.node_ids, "m1", "n55"])
    fresh = MemberTable()
    for node_id in ("c", "a", "b"):
        fresh.put(Member(node_id, "x", 1, ALIVE, 0.0))
    assert fresh.ids_in("", "") == ["a", "b", "c"] and fresh.ids_in("b", "") == ["b", "c"]


def test_map_members_uses_shared_values_only_for_unchanged_members() -> None:
    members = [(f"n{i}", f"a{i}") for i in range(50)]
    snapshot = ClusterSnapshot.converged(members, sign_claim=sign_claim_as_signer)
    table = MemberTable(snapshot.members, snapshot.node_ids)
    table.put(Member("n7", "a7", 2, SUSPECT, 3.0))  # changed here
    table.put(snapshot.members["n9"])  # written back unchanged: still the base's value
    table.put(Member("new", "b", 1, ALIVE, 3.0))  # not in the base
    shared = {node_id: f"shared {node_id}" for node_id in snapshot.node_ids if node_id != "n3"}

    def fresh(m: Member) -> str:
        return f"fresh {m.node_id} {m.incarnation} {m.state}"

    expected = [
        shared[m.node_id]
        if table.is_shared(m) and m.node_id in shared and m.node_id != "n5"
        else fresh(m)
        for m in table
    ]
    assert table.map_members(shared, fresh, skip="n5") == expected
    by_id = dict(zip((m.node_id for m in table), expected, strict=True))
    assert by_id["n3"] == "fresh n3 1 alive" and by_id["n7"] == "fresh n7 2 suspect"
    assert by_id["n5"].startswith("fresh") and by_id["n9"] == "shared n9"
    assert by_id["new"] == "fresh new 1 alive" and by_id["n1"] == "shared n1"


def test_dead_members_are_tracked_for_reconnection() -> None:
    table = MemberTable()
    table.put(Member("a", "", 1, ALIVE, 0.0))
    table.put(Member("a", "", 1, DEAD, 1.0))
    assert table.dead_ids() == ["a"] and table.count(DEAD) == 1
    table.put(Member("a", "", 2, ALIVE, 2.0))
    assert table.dead_ids() == [] and table.count(ALIVE) == 1


@pytest.mark.parametrize("size", [10, 500])
def test_sampling_returns_distinct_acceptable_members(size: int) -> None:
    table = MemberTable()
    for i in range(size):
        table.put(Member(f"n{i}", "", 1, ALIVE if i % 2 else DEAD, 0.0))
    rng = random.Random(1)
    picked = table.sample(rng, 3, lambda m: m.state is ALIVE)
    assert len(picked) == 3 and len({m.node_id for m in picked}) == 3
    assert all(m.state is ALIVE for m in picked)
    assert table.sample(rng, 3, lambda m: m.node_id == "n1") == [table.get("n1")]


@pytest.mark.parametrize("size", [1, 2, 3, 12, 97, 1000])
def test_probe_order_visits_every_position_once_per_round(size: int) -> None:
    order, rng = ProbeOrder(), random.Random(size)
    for _ in range(3):
        assert sorted(order.next_index(rng, size) for _ in range(size)) == list(range(size))


def test_probe_order_differs_between_rounds() -> None:
    order, rng = ProbeOrder(), random.Random(7)
    rounds = [[order.next_index(rng, 100) for _ in range(100)] for _ in range(3)]
    assert rounds[0] != rounds[1] != rounds[2]


def test_precedence_at_equal_incarnation() -> None:
    assert supersedes(5, SUSPECT, 5, ALIVE) and supersedes(5, DEAD, 5, SUSPECT)
    assert not supersedes(5, ALIVE, 5, SUSPECT)
    assert supersedes(6, ALIVE, 5, DEAD)  # a refutation beats any older belief


def test_alive_rules() -> None:
    assert on_alive(None, 1, about_self=False) is Verdict.ACCEPT
    assert on_alive(member(SUSPECT, 5), 5, about_self=False) is Verdict.IGNORE
    assert on_alive(member(SUSPECT, 5), 6, about_self=False) is Verdict.ACCEPT
    assert on_alive(member(DEAD, 5), 6, about_self=False) is Verdict.ACCEPT
    assert on_alive(member(ALIVE, 5), 9, about_self=True) is Verdict.REFUTE
    assert on_alive(member(ALIVE, 5), 5, about_self=True) is Verdict.IGNORE
    assert on_alive(member(LEFT, 5), 9, about_self=True) is Verdict.IGNORE


def test_suspect_rules() -> None:
    assert on_suspect(None, 1, False, False) is Verdict.UNKNOWN
    assert on_suspect(member(ALIVE, 5), 4, False, False) is Verdict.IGNORE
    assert on_suspect(member(ALIVE, 5), 5, False, False) is Verdict.ACCEPT
    assert on_suspect(member(SUSPECT, 5), 5, False, True) is Verdict.CONFIRM
    assert on_suspect(member(DEAD, 5), 5, False, False) is Verdict.IGNORE
    assert on_suspect(member(ALIVE, 5), 5, True, False) is Verdict.REFUTE
    assert on_suspect(member(LEFT, 5), 5, True, False) is Verdict.IGNORE


def test_dead_and_leave_rules() -> None:
    assert on_dead(None, 1, False) is Verdict.UNKNOWN
    assert on_dead(member(SUSPECT, 5), 5, False) is Verdict.CONFIRM  # an accuser, no verdict
    assert on_dead(member(DEAD, 5), 6, False) is Verdict.IGNORE
    assert on_dead(member(ALIVE, 5), 5, True) is Verdict.REFUTE
    assert on_leave(member(DEAD, 5), 5, False) is Verdict.ACCEPT  # gone on purpose after all
    assert on_leave(member(LEFT, 5), 6, False) is Verdict.IGNORE
    assert on_leave(member(ALIVE, 5), 4, False) is Verdict.IGNORE
    assert on_leave(member(ALIVE, 5), 5, True) is Verdict.REFUTE
