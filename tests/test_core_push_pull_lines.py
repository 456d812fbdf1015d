"""A digest's lines: every member's incarnation and state, one object per equal line."""

from __future__ import annotations

import dataclasses

from novacron.agent.core.membership.members import Member, MemberTable
from novacron.agent.core.membership.pushpull import LineCache, build_deltas, build_digest
from novacron.agent.core.membership.records import RecordStore
from novacron.protocol.messages import Digest, MemberDigest, MemberState

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
OWN = MemberDigest("n0", 2, ALIVE, "sim://n0", b"signature")


def member(node_id: str, incarnation: int, state: MemberState) -> Member:
    return Member(node_id, f"sim://{node_id}", incarnation, state, 0.0)


def digest_of(table: MemberTable, cache: LineCache) -> Digest:
    return build_digest(table, RecordStore(), {}, OWN, 0.0, cache=cache, reply=True)


def test_each_push_pull_sends_the_same_line_objects_until_a_member_changes() -> None:
    cache = LineCache()
    table = MemberTable()
    for name in ("n0", "n1", "n2"):
        table.put(member(name, 2, ALIVE))
    first, second = digest_of(table, cache), digest_of(table, cache)
    assert first.members == (OWN, MemberDigest("n1", 2, ALIVE), MemberDigest("n2", 2, ALIVE))
    assert all(a is b for a, b in zip(first.members, second.members, strict=True))
    table.put(member("n1", 3, SUSPECT))
    third = digest_of(table, cache)
    assert third.members[1] == MemberDigest("n1", 3, SUSPECT)
    assert third.members[2] is first.members[2]


def test_the_cache_is_bounded_and_lines_stay_right_once_it_is_emptied() -> None:
    cache = LineCache(limit=3)
    table = MemberTable()
    for index in range(10):
        table.put(member(f"n{index}", 1 + index, ALIVE))
        lines = digest_of(table, cache).members
        assert len(cache) <= 3
        expected = [MemberDigest(f"n{i}", 1 + i, ALIVE) for i in range(1, index + 1)]
        assert list(lines[1:]) == expected


def test_answers_hand_on_the_same_signed_lines_with_a_certificate_only_for_strangers() -> None:
    cache = LineCache()
    table = MemberTable()
    for name in ("n0", "n1", "n2"):
        table.put(dataclasses.replace(member(name, 2, ALIVE), proof=f"proof-{name}".encode()))
    asked = Digest(members=(MemberDigest("n0", 2, ALIVE), MemberDigest("n1", 1, ALIVE)))

    def answer() -> tuple[MemberDigest, ...]:
        (delta,) = build_deltas(asked, table, RecordStore(), certificate, b"", 1 << 20, cache=cache)
        return delta.members

    first, second = answer(), answer()
    assert first == (
        MemberDigest("n1", 2, ALIVE, "sim://n1", b"proof-n1"),
        MemberDigest("n2", 2, ALIVE, "sim://n2", b"proof-n2", b"certificate-n2"),
    )
    assert all(a is b for a, b in zip(first, second, strict=True))


def certificate(node_id: str) -> bytes:
    return f"certificate-{node_id}".encode()
