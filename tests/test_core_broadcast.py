"""The retransmit-limited broadcast queue, and awareness (both small, pure pieces)."""

from __future__ import annotations

from novacron.agent.core.membership.awareness import Awareness
from novacron.agent.core.membership.broadcast import (
    MAX_MISFITS,
    BroadcastQueue,
    estimate_size,
    retransmit_limit,
)
from novacron.agent.core.membership.members import Member
from novacron.protocol.codec import encode
from novacron.protocol.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MemberState,
    RecordUpdate,
    SignedRecord,
    Suspect,
)


def test_retransmit_limit_is_mult_times_log10_n() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8  # ceil(log10(11)) = 2
    assert retransmit_limit(4, 50) == 8
    assert retransmit_limit(4, 10_000) == 20


def test_each_item_is_sent_at_most_limit_times() -> None:
    queue = BroadcastQueue()
    queue.queue("a", Alive("a", 1))
    sent = 0
    for _ in range(10):
        sent += len(queue.take(1400, limit=3))
    assert sent == 3
    assert len(queue) == 0


def test_a_member_queued_goes_out_as_its_alive_one_object_for_all_its_sends() -> None:
    queue = BroadcastQueue()
    member = Member("a", "sim://a", 5, MemberState.ALIVE, 3.0, bytes(64))
    alive = Alive("a", 5, "sim://a", b"", bytes(64))
    queue.queue("a", member)
    assert queue.items() == [(alive, 0)]
    assert estimate_size(member) == estimate_size(alive)
    first = queue.take(1400, limit=5)
    assert first == [alive]
    assert queue.take(1400, limit=5)[0] is first[0]  # relayed as one object
    # Newer news of the same kind continues the spread, whichever form it takes.
    queue.queue("a", Member("a", "sim://a", 6, MemberState.ALIVE, 4.0, bytes(64)))
    assert queue.items() == [(Alive("a", 6, "sim://a", b"", bytes(64)), 2)]
    queue.queue("a", Alive("a", 7, "sim://a"))
    assert queue.items() == [(Alive("a", 7, "sim://a"), 2)]


def test_newer_news_about_a_node_replaces_older() -> None:
    queue = BroadcastQueue()
    queue.queue("a", Suspect("a", 4, "b"))
    queue.queue("a", Alive("a", 5))
    queue.queue(("record", "a"), _record("a", 1))
    queue.queue(("record", "a"), _record("a", 2))
    items = queue.take(1400, limit=5)
    assert Alive("a", 5) in items and Suspect("a", 4, "b") not in items
    assert [i.signed.version for i in items if isinstance(i, RecordUpdate)] == [2]
    assert len(queue) == 2  # a member item and a record item, distinct keys


def test_least_transmitted_then_oldest_first_within_budget() -> None:
    queue = BroadcastQueue()
    for name in ("a", "b", "c"):
        queue.queue(name, Alive(name, 1))
    one = estimate_size(Alive("a", 1))
    assert queue.take(one, limit=10) == [Alive("a", 1)]  # oldest first: none starves
    assert queue.take(one, limit=10) == [Alive("b", 1)]
    assert queue.take(one, limit=10) == [Alive("c", 1)]
    queue.queue("d", Alive("d", 1))
    assert queue.take(2 * one, limit=10) == [Alive("d", 1), Alive("a", 1)]  # untransmitted


def test_urgent_news_goes_first_and_starts_afresh() -> None:
    queue = BroadcastQueue()
    queue.queue("a", Alive("a", 1))
    queue.queue("me", Alive("me", 2))
    queue.take(1400, limit=10)  # both sent once
    queue.queue("b", Alive("b", 1))
    queue.queue("me", Alive("me", 3), urgent=True)  # a refutation of ours
    one = estimate_size(Alive("a", 1))
    assert queue.take(one, limit=10) == [Alive("me", 3)]
    assert dict(queue.items())[Alive("me", 3)] == 1


def test_same_kind_news_continues_its_spread_and_a_new_kind_restarts_it() -> None:
    queue = BroadcastQueue()
    queue.queue(("record", "h"), _record("h", 1))
    queue.queue("x", Suspect("x", 1, "a"))
    for _ in range(3):
        queue.take(1400, limit=10)
    queue.queue(("record", "h"), _record("h", 2))  # a newer record: same spread, 3 sent
    queue.queue("x", Alive("x", 2))  # a refutation: spread afresh
    counts = {type(m).__name__: n for m, n in queue.items()}
    assert counts == {"RecordUpdate": 3, "Alive": 0}


def test_a_member_publishing_as_fast_as_it_can_does_not_starve_the_rest() -> None:
    """A new version of a hostile member's large record must not ride at the head of every
    packet: it keeps its predecessor's transmit count, so an honest record still fits beside
    it."""
    queue = BroadcastQueue()
    limit, honest_sent = 8, 0
    queue.queue(("record", "honest"), _record("honest", 1, size=700))
    for version in range(1, 200):
        queue.queue(("record", "hostile"), _record("hostile", version, size=900))
        items = queue.take(1400, limit)
        honest_sent += sum(
            1 for i in items if isinstance(i, RecordUpdate) and i.signed.node_id == "honest"
        )
    assert honest_sent == limit


def test_budget_limits_a_packet_and_oversized_items_go_alone() -> None:
    queue = BroadcastQueue()
    for i in range(100):
        queue.queue(f"n{i}", Alive(f"n{i}", 1, "addr"))
    items = queue.take(1400, limit=4)
    assert 0 < sum(estimate_size(i) for i in items) <= 1400
    big = _record("big", 1, size=5000)
    queue = BroadcastQueue()
    queue.queue(("record", "big"), big)
    assert queue.take(1400, limit=4) == [big]


def test_a_small_item_behind_a_few_large_ones_still_fills_the_packet() -> None:
    queue = BroadcastQueue()
    queue.queue(("record", "first"), _record("first", 1, size=700))
    for i in range(MAX_MISFITS):
        queue.queue(("record", f"big{i}"), _record(f"big{i}", 1, size=900))
    queue.queue("small", Alive("small", 1))
    items = queue.take(1400, limit=4)
    assert items == [_record("first", 1, size=700), Alive("small", 1)]


def test_a_packet_as_good_as_full_stops_looking_but_nothing_starves() -> None:
    """Past MAX_MISFITS items too large for what is left, the packet goes as it is; the
    small item further back is not lost, it goes out once the large ones have gone."""
    queue = BroadcastQueue()
    queue.queue(("record", "first"), _record("first", 1, size=700))
    for i in range(MAX_MISFITS + 1):
        queue.queue(("record", f"big{i}"), _record(f"big{i}", 1, size=900))
    queue.queue("small", Alive("small", 1))
    assert queue.take(1400, limit=4) == [_record("first", 1, size=700)]
    sent_small = 0
    for _ in range(4 * (MAX_MISFITS + 3)):
        sent_small += queue.take(1400, limit=4).count(Alive("small", 1))
    assert sent_small == 4
    assert len(queue) == 0


def test_size_estimates_cover_the_encoding() -> None:
    items: list[Gossip] = [
        Alive("node-00042", 2**31, "198.18.0.42:7946"),
        Alive("n", 1, "", b"c" * 300),
        Suspect("node-00042", 7, "node-00001"),
        Dead("node-00042", 7, "node-00001"),
        Leave("node-00042", 7),
        _record("node-00042", 12, size=400),
    ]
    for item in items:
        # the item's share of a packet: its encoding as piggybacked gossip
        actual = len(encode(Ack(1, (item,)), "x")) - len(encode(Ack(1, ()), "x"))
        assert actual <= estimate_size(item) <= actual + 40, item


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    awareness = Awareness(max_multiplier=8)
    awareness.apply_delta(-1)
    assert awareness.score == 0
    for _ in range(20):
        awareness.apply_delta(1)
    assert awareness.score == 7
    assert awareness.scale(0.5) == 4.0
    awareness.apply_delta(-3)
    assert awareness.score == 4


def _record(node_id: str, version: int, size: int = 100) -> RecordUpdate:
    return RecordUpdate(SignedRecord(node_id, version, b"r" * size, b"s" * 32))
