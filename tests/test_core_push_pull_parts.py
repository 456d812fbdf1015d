"""The periodic push-pull in parts: each a digest of one range of member ids, answered
for that range only, one a second, so no second of a node's traffic holds a whole
digest (570 KB at 10,000 members)."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from novacron.agent.core.membership.config import MembershipConfig
from novacron.agent.core.membership.node import MembershipNode
from novacron.agent.core.membership.pushpull import plan_parts
from novacron.protocol.codec import encode
from novacron.protocol.messages import (
    Dead,
    Delta,
    Digest,
    Leave,
    MemberState,
    RecordUpdate,
    Suspect,
)
from tests.core_harness import CONFIG, Net, ids, node_in, sign, signed, snapshot_of


def test_parts_cover_every_id_once_in_order_each_about_the_size_asked() -> None:
    rng = random.Random(7)
    known = sorted({f"node-{rng.randrange(10**6):06d}" for _ in range(2000)})
    parts = plan_parts(known, 4000)
    assert parts[0][0] == "" and parts[-1][1] == ""
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    for probe in [*known, "", "a", "node-", "zzz"]:  # known or not, every id has one part
        assert sum(1 for first, end in parts if first <= probe and (not end or probe < end)) == 1
    per_part = [[n for n in known if first <= n and (not end or n < end)] for first, end in parts]
    assert all(len(chunk) >= 1 and (40 + 22) * len(chunk) <= 4000 for chunk in per_part)
    assert len(parts) == pytest.approx(2000 * 62 / 4000, rel=0.1)
    assert plan_parts([], 4000) == [("", "")]


def exchange(
    part_bytes: int, interval: float = CONFIG.push_pull_interval
) -> tuple[Net, MembershipNode, MembershipNode]:
    """Two live members among 300 (the rest failed, so each picks the other for its
    periodic push-pull); each holds records the other lacks."""
    config = dataclasses.replace(
        CONFIG, push_pull_part_bytes=part_bytes, push_pull_interval=interval
    )
    snapshot = snapshot_of(300).with_failed([n for n in ids(300) if n not in ("n010", "n150")])
    net = Net(config=config)
    one, other = node_in(snapshot, "n010", config), node_in(snapshot, "n150", config)
    net.add(one)
    net.add(other)
    one.receive("n290", RecordUpdate(signed("n290", 5)), 0.0)
    other.receive("n020", RecordUpdate(signed("n020", 3)), 0.0)
    other.receive("n299", RecordUpdate(signed("n299", 7)), 0.0)
    net.run_for(400.0)  # past one push-pull interval at 300 members (150 s)
    return net, one, other


def test_a_periodic_exchange_goes_in_parts_and_each_side_learns_what_it_lacked() -> None:
    net, one, other = exchange(4000)
    assert one.record_version("n020") == 3 and one.record_version("n299") == 7
    assert other.record_version("n290") == 5
    digests = [(src, m) for src, _, m in net.sent if isinstance(m, Digest)]
    assert len(digests) > 10  # several parts each way, and their replies
    assert max(len(encode(m, src)) for src, m in digests) < 2 * 4000
    asked = [m for _, m in digests if m.reply]
    answers = [m for _, m in digests if not m.reply]
    assert {(m.first, m.end) for m in answers} <= {(m.first, m.end) for m in asked}
    for digest in answers:  # an answer lists only its part's ids
        assert all(
            digest.first <= line.node_id and (not digest.end or line.node_id < digest.end)
            for line in digest.members
        )


def test_with_parts_off_the_exchange_is_one_digest_as_before() -> None:
    net, one, other = exchange(0)
    assert one.record_version("n299") == 7 and other.record_version("n290") == 5
    digests = [m for _, _, m in net.sent if isinstance(m, Digest)]
    assert digests and all(len(m.members) == 300 and not (m.first or m.end) for m in digests)


def test_a_negative_part_size_is_refused() -> None:
    with pytest.raises(ValueError, match="push_pull_part_bytes"):
        MembershipConfig(push_pull_part_bytes=-1)


def test_a_stranger_that_did_not_introduce_itself_gets_no_answer() -> None:
    node = node_in(snapshot_of(5))
    assert not node.receive("mallory", Digest(reply=True), 1.0).sends
    assert node.stats.messages_from_unknown == 1


def test_a_member_asking_faster_than_its_honest_pace_is_not_answered() -> None:
    node = node_in(snapshot_of(300))
    whole, part = Digest(reply=True), Digest(reply=True, first="n100", end="n160")
    times = (1.0, 2.0, 2.5, 3.0, 11.5, 12.0)
    answered = [bool(node.receive("n007", whole, t).sends) for t in times]
    assert answered == [True, True, True, False, True, False]  # 3 at once, then one a 10 s
    times = (1.0, 1.2, 1.6, 2.3, 3.3, 3.5)
    answered = [bool(node.receive("n008", part, t).sends) for t in times]
    assert answered == [True, True, False, True, True, False]  # one a second, two at once
    flood = [bool(node.receive("n010", part, 1.0 + i / 10).sends) for i in range(100)]
    assert sum(flood) <= 11  # ten times a second for ten seconds: its honest pace
    every_id = Digest(reply=True, first="n000", end="n299")  # a "part" of nearly all
    answered = [bool(node.receive("n009", every_id, t).sends) for t in (1.0, 1.2, 1.4, 1.6)]
    assert answered == [True, True, True, False]  # counted as a whole digest
    assert node.stats.exchanges_ignored == 5 + flood.count(False)


def test_a_parts_answer_is_at_most_one_delta_of_a_few_parts() -> None:
    node = node_in(snapshot_of(300))
    out = node.receive("n008", Digest(reply=True, first="n100", end="n160"), 1.0)
    deltas = [m for _, m in out.sends if not isinstance(m, Digest)]
    assert len(deltas) == 1 and len(encode(deltas[0], "n000")) < 4 * 4000 * 1.2


def test_an_exchange_takes_at_most_half_the_interval_whatever_the_mesh() -> None:
    """A mesh too large for the part size gets larger parts, not an exchange that
    outlasts the interval (the next one would cut it short, its last ranges never sent)."""
    net, one, other = exchange(500, interval=4.0)  # 300 members: every 20 s, 10 parts
    parts = [m for src, _, m in net.sent if src == "n010" and isinstance(m, Digest) and m.reply]
    starts = [m for m in parts if m.first == ""]
    ends = [m for m in parts if m.end == ""]
    assert len(starts) >= 10 and len(ends) >= len(starts) - 1  # exchanges run to their end
    assert len(parts) <= 10 * len(starts)
    assert one.record_version("n020") == 3
    assert one.stats.exchanges_ignored == other.stats.exchanges_ignored == 0  # all answered


def test_a_node_with_parts_off_still_answers_a_part_as_a_part() -> None:
    node = node_in(snapshot_of(300), config=dataclasses.replace(CONFIG, push_pull_part_bytes=0))
    part = Digest(reply=True, first="n100", end="n160")
    answered = [bool(node.receive("n008", part, t).sends) for t in (1.0, 1.6)]
    assert answered == [True, True]  # a part's pace, not a whole digest's
    out = node.receive("n009", part, 1.0)
    deltas = [m for _, m in out.sends if not isinstance(m, Digest)]
    assert deltas and len(encode(deltas[0], "n000")) > 1000  # not capped at a few bytes


def first_parts(
    node: MembershipNode, count: int, now: float = 0.0
) -> tuple[list[tuple[str, Digest]], float]:
    """Tick `node` as its deadlines come until it has sent the first `count` parts of an
    exchange; those parts with whom each went to, and the time."""
    parts: list[tuple[str, Digest]] = []
    while len(parts) < count:
        out = node.tick(now)
        for to, m in out.sends:
            if isinstance(m, Digest) and m.reply:
                parts = [(to, m)] if m.first == "" else [*parts, (to, m)]
        now = max(node.next_deadline(), now + 0.01)
    return parts, now


def test_an_answer_to_a_part_that_comes_late_is_still_that_parts_answer() -> None:
    """The answer to one part, come after the next part went, is matched by its range:
    it gets the Deltas of that range, and the answer to the next part is not taken
    for a pull (which would refuse the member's real pull for a reconnect interval)."""
    # No probes within the test (nobody answers them here), an exchange every 20 s.
    config = dataclasses.replace(CONFIG, probe_interval=1000.0, push_pull_interval=4.0)
    two_alive = snapshot_of(300).with_failed([n for n in ids(300) if n not in ("n010", "n150")])
    one, other = node_in(two_alive, "n010", config), node_in(two_alive, "n150", config)
    one.receive("n290", RecordUpdate(signed("n005", 5)), 0.0)  # in the first part's range
    sent, now = first_parts(one, 2)
    parts = [part for _, part in sent]
    answers = []
    for part in parts:
        answers += [m for _, m in other.receive("n010", part, now).sends if isinstance(m, Digest)]
        now += 0.6
    late, next_ = answers
    assert (late.first, late.end) == (parts[0].first, parts[0].end) != (next_.first, next_.end)
    out = one.receive("n150", late, now)
    news = [r.node_id for _, m in out.sends if isinstance(m, Delta) for r in m.records]
    assert "n005" in news  # the first range's news
    one.receive("n150", next_, now + 0.1)
    assert one.receive("n150", Digest(reply=False), now + 1.0).sends  # a pull, answered
    assert one.stats.pulls_ignored == one.stats.unasked_parts == 0


def test_a_part_nobody_asked_for_gets_nothing() -> None:
    node = node_in(snapshot_of(300))
    assert not node.receive("n008", Digest(reply=False, first="n100", end="n160"), 1.0).sends
    assert node.stats.unasked_parts == 1


@pytest.mark.parametrize("fate", [MemberState.SUSPECT, MemberState.LEFT])
def test_an_exchange_whose_member_fails_goes_on_with_another(fate: MemberState) -> None:
    """The rest of the parts go to another live member as soon as the partner is in
    doubt (its failure may take longer to declare than the exchange): every range is
    exchanged, the one it left unanswered again."""
    config = dataclasses.replace(CONFIG, probe_interval=1000.0, push_pull_interval=4.0)
    alive = ("n010", "n150", "n200")
    three_alive = snapshot_of(300).with_failed([n for n in ids(300) if n not in alive])
    one = node_in(three_alive, "n010", config)
    sent, now = first_parts(one, 1)
    partner = sent[0][0]
    other = next(n for n in alive[1:] if n != partner)
    if fate is MemberState.LEFT:
        one.receive(partner, sign(Leave(partner, 1)), now)
    else:
        one.receive(other, sign(Suspect(partner, 1, other)), now)
    gone = one.member(partner)
    assert gone is not None and gone.state is fate
    rest: list[tuple[str, Digest]] = []
    while not rest or rest[-1][1].end != "":  # until the exchange's last part
        out = one.tick(now)
        rest += [(to, m) for to, m in out.sends if isinstance(m, Digest) and m.reply]
        now = max(one.next_deadline(), now + 0.01)
    # The range it left unanswered goes again, first; then the rest, none skipped.
    ranges = [(part.first, part.end) for _, part in rest]
    assert ranges[0] == (sent[0][1].first, sent[0][1].end)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert {to for to, _ in rest} == {other}


def test_parts_sent_while_rejoining_take_back_what_the_partner_holds_alive() -> None:
    """A node told it was held failed while its exchange in parts is under way: the
    parts it sends from then on ask, as its rejoining pull does, for the lines of the
    members it holds failed, and the answer of the member asked takes them back."""
    config = dataclasses.replace(CONFIG, probe_interval=1000.0, push_pull_interval=4.0)
    cut_off = snapshot_of(300).with_failed([n for n in ids(300) if n not in ("n010", "n150")])
    one, other = node_in(cut_off, "n010", config), node_in(snapshot_of(300), "n150", config)
    _, now = first_parts(one, 1)
    one.receive("n150", sign(Dead("n010", 1, "n150")), now)  # it learns it was cut off
    part = None
    while part is None:
        now = max(one.next_deadline(), now + 0.01)
        sent = [m for _, m in one.tick(now).sends if isinstance(m, Digest) and m.reply]
        part = sent[0] if sent else None
    assert part.rejoining and (part.first or part.end)
    for _, answer in other.receive("n010", part, now).sends:
        one.receive("n150", answer, now + 0.01)
    in_range = [n for n in ids(300) if part.first <= n and (not part.end or n < part.end)]
    in_range = [n for n in in_range if n != "n150"]  # held alive all along
    taken_back = [n for n in in_range if (m := one.member(n)) and m.state is MemberState.ALIVE]
    assert one.stats.failures_withdrawn == len(taken_back) > 10


def test_a_whole_digest_answering_a_part_is_its_answer_not_a_pull() -> None:
    """A node that does not know parts (an older one) answers one with its whole
    digest: that is the answer, and its own pull after it is answered as a pull."""
    config = dataclasses.replace(CONFIG, probe_interval=1000.0, push_pull_interval=4.0)
    two_alive = snapshot_of(300).with_failed([n for n in ids(300) if n not in ("n010", "n150")])
    one = node_in(two_alive, "n010", config)
    _, now = first_parts(one, 1)
    one.receive("n150", Digest(reply=False), now)  # the whole answer
    assert one.receive("n150", Digest(reply=False), now + 1.0).sends  # then a pull
    assert one.stats.pulls_ignored == one.stats.unasked_parts == 0
