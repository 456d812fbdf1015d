"""Push-pull with members that come back from failure (`heal.py`), on a virtual clock."""

from __future__ import annotations

import dataclasses
import itertools
import random

from novacron.agent.core.events import MemberAlive, MemberFailed
from novacron.agent.core.membership.heal import (
    ANSWER_WAIT,
    MAX_RETRIES,
    MAX_RETURNED,
    HealPulls,
    sweep_order,
)
from novacron.agent.core.membership.node import (
    HEAL_PULL_SPREAD,
    MAX_UNDAMPED_PULLS,
    PULL_ANSWER_GAP,
    PULL_BURST,
    REJOIN_PULL_GAP,
    MembershipNode,
)
from novacron.agent.core.membership.pushpull import deltas_size, digest_size
from novacron.protocol.codec import encode
from novacron.protocol.messages import (
    Alive,
    Dead,
    Delta,
    Digest,
    Leave,
    MemberDigest,
    MemberState,
    Message,
    Ping,
    RecordUpdate,
)
from novacron.simulations.report import run
from novacron.simulations.scenarios import Params
from tests.core_harness import CONFIG, address_of, ids, node_in, record_for, sign, snapshot_of


def live(node_id: str) -> bool:
    return True


def plan(pulls: HealPulls, node_id: str, now: float, *, failed: int = 50, alive: int = 50) -> None:
    rng = random.Random(1)
    pulls.on_return(node_id, now, rng, failed=failed, alive=alive, gap=10.0, spread=5.0)


def test_a_return_plans_one_pull_within_the_spread() -> None:
    pulls = HealPulls()
    plan(pulls, "a", 100.0)
    assert 100.0 <= pulls.due <= 105.0
    due = pulls.due
    plan(pulls, "b", 101.0)  # planned already: the plan stands
    assert pulls.due == due
    assert pulls.take(due - 0.01, random.Random(1), live) is None  # not yet
    partner = pulls.take(due, random.Random(1), live)
    assert partner in ("a", "b")
    pulls.answered(partner)
    assert pulls.due == float("inf") and pulls.take(due + 1, random.Random(1), live) is None


def test_a_pull_not_answered_within_the_wait_goes_to_another_member_back() -> None:
    pulls = HealPulls()
    for node_id in ("a", "b", "c"):
        plan(pulls, node_id, 100.0)
    first = pulls.take(pulls.due, random.Random(1), live)
    sent_at = pulls.due - ANSWER_WAIT
    pulls.answered("someone else")  # not the partner: the wait stands
    assert pulls.take(sent_at + ANSWER_WAIT - 0.01, random.Random(1), live) is None
    second = pulls.take(sent_at + ANSWER_WAIT, random.Random(1), live)
    assert second in ("a", "b", "c") and second != first
    pulls.answered(second)
    assert pulls.due == float("inf")  # answered: the third is not asked


def test_pulls_are_at_least_the_gap_apart() -> None:
    pulls = HealPulls()
    plan(pulls, "a", 0.0)
    first = pulls.due
    pulls.take(first, random.Random(1), live)
    plan(pulls, "b", first + 1.0)
    assert first + 10.0 <= pulls.due <= first + 15.0


def test_no_pull_when_nothing_else_is_held_failed_and_rarely_in_a_healthy_mesh() -> None:
    pulls = HealPulls()
    plan(pulls, "a", 0.0, failed=0, alive=99)
    assert pulls.due == float("inf")
    rng = random.Random(7)
    planned = 0
    for i in range(1000):  # one member back, one other failed, 999 alive
        pulls = HealPulls()
        pulls.on_return("a", float(i), rng, failed=1, alive=999, gap=10.0, spread=5.0)
        planned += pulls.due < float("inf")
    assert planned < 10  # Serf's damping: about failed/alive of the time


def test_the_partner_is_drawn_from_the_members_back_and_still_alive() -> None:
    """Not always the first back: a whole side sees the same few come back first."""
    pulls = HealPulls()
    for i in range(MAX_RETURNED + 10):
        plan(pulls, f"m{i:03d}", 0.0)
    partners = set()
    rng = random.Random(3)
    for _ in range(50):
        copy = HealPulls()
        for i in range(MAX_RETURNED + 10):
            plan(copy, f"m{i:03d}", 0.0)
        partners.add(copy.take(copy.due, rng, lambda n: n != "m073"))
    assert len(partners) > 10
    assert "m000" not in partners  # forgotten: only the last MAX_RETURNED are kept
    assert "m073" not in partners  # failed again meanwhile
    gone = HealPulls()
    plan(gone, "a", 0.0)
    assert gone.take(gone.due, rng, lambda n: False) is None  # nobody left to ask


def failed_all(node_id: str, members: list[str], size: int) -> tuple[MembershipNode, float]:
    """A node of a `size`-member mesh that holds `members` failed (split from them)."""
    node = node_in(snapshot_of(size), node_id)
    for member in members:
        node.receive("n001", sign(Dead(member, 1, "n001")), 0.0)
        node.receive("n002", sign(Dead(member, 1, "n002")), 0.0)
    now = 1000.0
    node.tick(now)
    node.tick(now + CONFIG.probe_interval)
    for member in members:
        info = node.member(member)
        assert info is not None and info.state is MemberState.DEAD
    return node, now + CONFIG.probe_interval


def test_a_failed_member_coming_back_brings_a_pull_from_the_members_back() -> None:
    other_side = [f"n{i:03d}" for i in range(10, 20)]
    node, now = failed_all("n000", other_side, 20)
    node.receive("n010", sign(Alive("n010", 2, address_of("n010"))), now)  # refuted
    node.receive("n011", sign(Alive("n011", 2, address_of("n011"))), now + 0.1)
    digests: list[tuple[str, Message]] = []
    end = now + 5.0 + CONFIG.gossip_interval
    while not digests and now < end:
        now = node.next_deadline()
        digests = [(d, m) for d, m in node.tick(now).sends if isinstance(m, Digest)]
    ((partner, digest),) = digests
    assert partner in ("n010", "n011") and isinstance(digest, Digest) and not digest.reply
    assert node.stats.heal_pulls_sent == 1


def test_a_failed_member_coming_back_starts_a_sweep_of_the_others_held_failed() -> None:
    """The last few pairs of a heal are not left to gossip: each member we still hold
    failed gets our Ping with our claim, and answers it with its refutation."""
    other_side = [f"n{i:03d}" for i in range(10, 20)]
    node, now = failed_all("n000", other_side, 20)
    node.receive("n010", sign(Alive("n010", 2, address_of("n010"))), now)
    pinged: set[str] = set()
    end = now + 12 * CONFIG.gossip_interval
    while now < end:
        now = node.next_deadline()
        sends = node.tick(now).sends
        pinged |= {d for d, m in sends if isinstance(m, Ping) and d in other_side}
    assert pinged == set(other_side) - {"n010"}


def pings_after_return(delay: float) -> dict[str, int]:
    """Pings to the still-failed members in the reconnect interval after one return
    (and the time a sweep started in it takes)."""
    other_side = [f"n{i:03d}" for i in range(10, 20)]
    node, now = failed_all("n000", other_side, 60)  # 10 failed, 50 alive: damped 1 in 5
    back = now + delay
    while node.next_deadline() < back:
        node.tick(node.next_deadline())
    now = back
    node.receive("n010", sign(Alive("n010", 2, address_of("n010"))), now)
    pinged = dict.fromkeys(other_side[1:], 0)
    end = now + CONFIG.reconnect_interval + 12 * CONFIG.gossip_interval  # a sweep's time
    while now < end:
        now = node.next_deadline()
        for dest, message in node.tick(now).sends:
            if isinstance(message, Ping) and dest in pinged:
                pinged[dest] += 1
    return pinged


def test_soon_after_a_return_the_reconnect_tick_tries_all_still_failed() -> None:
    """Besides the sweep the return starts, the next reconnect tick sweeps again: a
    pair whose Ping or answer was lost waits an interval, not for a damped coin.
    (The tick may fall within the first sweep, which it then leaves alone; of two
    returns half an interval apart, one has its tick after the sweep.)"""
    runs = [pings_after_return(delay) for delay in (0.0, CONFIG.reconnect_interval / 2)]
    assert all(count >= 1 for run in runs for count in run.values())
    assert any(all(count >= 2 for count in run.values()) for run in runs)


def test_size_estimates_err_on_the_large_side_by_little() -> None:
    lines = tuple(MemberDigest(f"node-{i:05d}", 3, MemberState.ALIVE) for i in range(500))
    digest = Digest(members=lines, records={f"node-{i:05d}": 12 for i in range(500)})
    encoded = len(encode(digest, "node-00001"))
    assert encoded <= digest_size(digest) <= 1.15 * encoded
    full = tuple(MemberDigest(m, 4, MemberState.ALIVE, address_of(m), b"s" * 64) for m in ids(50))
    deltas = [Delta(full[:25]), Delta(full[25:])]
    encoded = sum(len(encode(delta, "node-00001")) for delta in deltas)
    assert encoded <= deltas_size(deltas) <= 1.5 * encoded


def gossip_after_answering(reply: bool) -> int:
    """Gossip items a node sends in the 0.9 s after answering a digest that lists
    nothing (a large answer: every member, with certificates; the debt it leaves is
    at most a second of the gossip rate)."""
    node = node_in(snapshot_of(40), "n000")
    node.update_record(record_for("n000", load=5.0), 0.0)  # something to gossip
    node.receive("n001", Digest(reply=reply), 0.0)
    sent = 0
    now = 0.0
    while now < 0.9:
        now = node.next_deadline()
        sent += sum(isinstance(m, RecordUpdate) for _, m in node.tick(now).sends)
    return sent


def test_the_answer_to_a_pull_is_paid_from_the_gossip_budget() -> None:
    """A pull's answer (after a heal, one side's refutations) stands in for gossip:
    the answering node's gossip waits. A digest asking for a reply (the periodic
    exchange, a join) is answered outside the budget, as memberlist's streams are."""
    assert gossip_after_answering(reply=True) > 0
    assert gossip_after_answering(reply=False) == 0


def heal_pulls_after_a_lone_return(observer: str) -> int:
    """Pulls `observer`, in a 5-member mesh, sends in 20 s after the one member it held
    failed comes back (nobody else is held failed)."""
    node, now = failed_all(observer, ["n004"], 5)
    node.receive("n004", sign(Alive("n004", 2, address_of("n004"))), now)
    end = now + 20.0
    while now < end:
        now = node.next_deadline()
        node.tick(now)
    return node.stats.heal_pulls_sent


def test_one_member_back_with_nobody_else_failed_brings_no_pull() -> None:
    """The member back is not "still failed": with no one else held failed there is
    nothing a pull could bring (in a small mesh the damping alone would often pull)."""
    assert [heal_pulls_after_a_lone_return(f"n00{i}") for i in range(4)] == [0, 0, 0, 0]


def test_a_member_pulls_once_per_gap_and_its_answers_never_owe_more_than_a_second() -> None:
    """A member asking again and again (a broken or hostile peer) gets one answer per
    heal pull gap, and our gossip never owes more than a second of its rate for them."""
    node = node_in(snapshot_of(40), "n000")
    first = node.receive("n001", Digest(reply=False), 0.0)
    again = node.receive("n001", Digest(reply=False), 1.0)
    assert any(isinstance(m, Delta) for _, m in first.sends)
    assert not again.sends and node.stats.pulls_ignored == 1
    later = node.receive("n001", Digest(reply=False), CONFIG.reconnect_interval)
    assert any(isinstance(m, Delta) for _, m in later.sends)
    for sender in ids(40)[2:12]:
        node.receive(sender, Digest(reply=False), CONFIG.reconnect_interval)
    # gossip resumes once the budget refills from at most a second's debt
    node.update_record(record_for("n000", load=5.0), CONFIG.reconnect_interval)
    now, sent = CONFIG.reconnect_interval, 0
    while now < CONFIG.reconnect_interval + 2.0 and not sent:
        now = node.next_deadline()
        sent += sum(isinstance(m, RecordUpdate) for _, m in node.tick(now).sends)
    assert sent


def test_a_pull_with_nothing_newer_is_answered_so_the_puller_asks_nobody_else() -> None:
    peer = node_in(snapshot_of(5), "n004")
    same_view = node_in(snapshot_of(5), "n000")._digest(10.0, reply=False)
    ((whom, answer),) = peer.receive("n000", same_view, 10.0).sends
    assert whom == "n000" and answer == Delta()

    node = node_in(snapshot_of(12).with_failed(ids(12)[4:]))  # damping: failed/alive > 1
    pulls = node._heal_pulls
    for member in ("n004", "n005", "n006"):
        node.receive(member, sign(Alive(member, 2, address_of(member))), 10.0)
    now = 10.0
    while now < 40.0 and node.stats.heal_pulls_sent == 0:
        now = node.next_deadline()
        node.tick(now)
    asked = pulls._asked
    assert asked is not None and pulls.due < now + 2.0  # another is asked if it is silent
    node.receive(asked, answer, now + 0.1)
    assert pulls.due == float("inf")


def test_a_silent_partner_is_replaced_at_most_twice_a_planned_pull() -> None:
    """Each retry is a whole digest: a pull whose partners all stay silent (busy, or
    pulled by us moments ago) must not send one a second to every member back."""
    pulls = HealPulls()
    for i in range(10):
        plan(pulls, f"m{i}", 100.0)
    asked = []
    now = pulls.due
    while now < 200.0 and pulls.due < float("inf"):
        now = pulls.due
        partner = pulls.take(now, random.Random(1), live)
        if partner is not None:
            asked.append(partner)
    assert len(asked) == 1 + MAX_RETRIES and len(set(asked)) == len(asked)


def test_pulls_from_many_members_at_once_are_answered_a_few_a_second() -> None:
    """After a split every side draws its pull partners from the few members back
    first: those few must not answer dozens of pulls (megabytes) in one second."""
    node = node_in(snapshot_of(40), "n000")

    def answered(senders: list[str], now: float) -> int:
        outs = [node.receive(sender, Digest(reply=False), now) for sender in senders]
        return sum(any(isinstance(m, Delta) for _, m in out.sends) for out in outs)

    assert answered(ids(40)[1:11], 10.0) == PULL_BURST
    assert node.stats.pulls_busy == 10 - PULL_BURST
    assert answered(ids(40)[11:13], 10.0 + PULL_ANSWER_GAP) == 1
    assert answered(ids(40)[1:3], 20.0) == 2  # later, the same members are answered again


def test_a_sweep_tries_the_newest_suspects_then_the_latest_failed_never_more() -> None:
    assert sweep_order(["s1", "s2"], ["f1", "f2", "f3"], 4) == ["f3", "f2", "s2", "s1"]
    full = [f"s{i}" for i in range(6)]
    assert sweep_order(full, ["f1"], 4) == ["s5", "s4", "s3", "s2"]  # no room for the failed
    assert sweep_order(full[:4], ["f1"], 4) == ["s3", "s2", "s1", "s0"]
    assert sweep_order([], [], 4) == []


# --- rejoining after being cut off ---------------------------------------------------


def alive_line(node_id: str, incarnation: int, key: bytes | None = None) -> MemberDigest:
    """A push-pull answer's line: the member's own signed Alive (forged with `key`)."""
    claim = sign(Alive(node_id, incarnation, address_of(node_id)), key)
    return MemberDigest(node_id, incarnation, MemberState.ALIVE, claim.address, claim.signature)


def state(node: MembershipNode, node_id: str) -> MemberState:
    info = node.member(node_id)
    assert info is not None
    return info.state


def told_it_was_failed(node: MembershipNode, by: str, now: float) -> list[tuple[float, str]]:
    """`by` tells `node` it holds it failed: when `node` sends rejoining digests, to whom,
    in the next minute."""
    node.receive(by, sign(Dead(node.node_id, node.incarnation, by)), now)
    sent = [(now + t, send) for t in range(1, 60) for send in node.tick(now + t).sends]
    return [(t, peer) for t, (peer, m) in sent if isinstance(m, Digest) and m.rejoining]


def test_a_node_told_it_was_cut_off_takes_back_the_failures_it_held_from_one_answer() -> None:
    """Cut off alone, a node fails everyone; each would have to refute, one Ping at a
    time. Told it was held failed, it rejoins as a newcomer: the answer of the member
    it asks, in the members' own signed ALIVE lines, makes them alive again."""
    node = node_in(snapshot_of(5).with_failed(["n001", "n002", "n003"]))
    answer = Delta(members=(alive_line("n001", 1),))
    node.receive("n004", answer, 5.0)
    assert state(node, "n001") is MemberState.DEAD  # an old Alive does not undo a failure

    ((asked_at, peer),) = told_it_was_failed(node, "n004", 10.0)
    assert node.incarnation == 2 and peer == "n004"  # whoever told us, asked
    assert asked_at <= 10.0 + CONFIG.reconnect_interval + HEAL_PULL_SPREAD  # as a heal pull
    out = node.receive("n004", answer, asked_at + 0.01)
    assert MemberAlive("n001", 1, was_failed=True) in out.events
    assert state(node, "n001") is MemberState.ALIVE

    forged = alive_line("n002", 1, key=b"mallory" * 4)
    unsigned = MemberDigest("n003", 1, MemberState.ALIVE, address_of("n003"))
    node.receive("n004", Delta(members=(forged, unsigned)), asked_at + 0.02)
    assert state(node, "n002") is state(node, "n003") is MemberState.DEAD
    assert node.stats.claims_bad_signature == node.stats.lines_unsigned == 1


def test_only_the_member_asked_while_rejoining_can_undo_a_failure() -> None:
    node = node_in(snapshot_of(5).with_failed(["n001", "n002"]))
    ((asked_at, _),) = told_it_was_failed(node, "n004", 10.0)
    node.receive("n003", Delta(members=(alive_line("n001", 1),)), asked_at + 0.01)  # not asked
    assert state(node, "n001") is MemberState.DEAD
    node.receive("n004", Delta(members=(alive_line("n002", 1),)), asked_at + 30.0)  # too late
    assert state(node, "n002") is MemberState.DEAD


def test_rejoining_starts_only_on_a_members_word_and_does_not_slide() -> None:
    node = node_in(snapshot_of(5).with_failed(["n001"]))
    node.receive("n004", sign(Dead("n000", 1, "n004"), key=b"mallory" * 4), 10.0)  # forged
    lines = tuple(MemberDigest(n, 1, MemberState.DEAD) for n in ids(5))
    node.receive("zed", Digest(members=lines, reply=True), 10.5)  # a stranger's word
    assert node.incarnation == 2  # the line is refuted, but that is no rejoining
    assert not node._digest(11.0, reply=False).rejoining

    node.receive("n004", sign(Dead("n000", 2, "n004")), 20.0)  # rejoining until 80
    node.receive("n002", sign(Dead("n000", 3, "n002")), 50.0)  # told again: no longer
    assert node._digest(79.9, reply=False).rejoining
    assert not node._digest(80.0, reply=False).rejoining


def test_a_member_whose_digest_holds_us_failed_makes_us_rejoin_and_pull_its_view() -> None:
    """After a split, the first word a node gets of being held failed may be a pull of
    the other side: its digest's line about us, a member's authenticated word as its
    signed Dead would be. The node rejoins, and the pull it sends that member brings
    back whom it held failed, though the member's own side has not refuted yet."""
    node = node_in(snapshot_of(6).with_failed(["n003", "n004", "n005"]))
    held = {"n000": MemberState.DEAD, "n001": MemberState.DEAD, "n002": MemberState.DEAD}
    lines = tuple(MemberDigest(n, 1, held.get(n, MemberState.ALIVE)) for n in ids(6))
    node.receive("n004", Digest(members=(*lines[:4], alive_line("n004", 2), lines[5])), 10.0)
    assert node.incarnation == 2
    assert node._digest(10.5, reply=False).rejoining
    sent = [(t, p, m) for t in range(11, 31) for p, m in node.tick(float(t)).sends]
    asked = [t for t, p, m in sent if isinstance(m, Digest) and p == "n004" and m.rejoining]
    assert asked  # within a reconnect interval and the spread of a heal pull
    answer = Delta(members=(alive_line("n003", 1), alive_line("n005", 1)))
    node.receive("n004", answer, asked[0] + 0.01)
    assert [state(node, n) for n in ("n003", "n004", "n005")] == [MemberState.ALIVE] * 3


def test_a_digest_from_a_member_not_held_alive_holding_us_failed_is_no_rejoining() -> None:
    """A member that left (or was revoked, which leaves it held left) or one we hold
    failed without its own refutation in the digest: its word about us is refuted but
    starts nothing, as its signed Dead would not."""
    node = node_in(snapshot_of(5).with_failed(["n004"]))
    node.receive("n003", sign(Leave("n003", 1)), 5.0)
    dead_us = (MemberDigest("n000", 1, MemberState.DEAD),)
    node.receive("n003", Digest(members=dead_us, reply=False), 10.0)
    node.receive("n004", Digest(members=dead_us, reply=False), 10.5)
    assert node.incarnation == 2
    assert not node._digest(11.0, reply=False).rejoining


def test_a_digest_holding_a_life_before_our_restart_failed_is_refuted_not_rejoined() -> None:
    node = node_in(snapshot_of(5))
    lines = tuple(MemberDigest(n, 7 if n == "n000" else 1, MemberState.DEAD) for n in ids(5))
    node.receive("n003", Digest(members=lines, reply=True), 10.0)
    assert node.incarnation == 8
    assert not node._digest(10.5, reply=False).rejoining


def test_a_failure_older_than_the_reconnect_timeout_or_seen_after_rejoining_stays() -> None:
    config = dataclasses.replace(CONFIG, reconnect_timeout=5.0)
    node = node_in(snapshot_of(5).with_failed(["n001"]), config=config)  # failed at 0
    ((asked_at, _),) = told_it_was_failed(node, "n004", 10.0)
    node.receive("n004", Delta(members=(alive_line("n001", 1),)), asked_at + 0.01)
    assert state(node, "n001") is MemberState.DEAD  # we would not even retry it

    node = node_in(snapshot_of(5))
    node.receive("n004", sign(Dead("n000", 1, "n004")), 10.0)  # rejoining from 10
    node.receive("n003", sign(Dead("n002", 1, "n003")), 11.0)
    ticks = [(float(t), node.tick(float(t))) for t in range(12, 60)]
    assert MemberFailed("n002", 1, "n000") in [e for _, out in ticks for e in out.events]
    asked = [t for t, out in ticks for p, m in out.sends if isinstance(m, Digest) and p == "n004"]
    node.receive("n004", Delta(members=(alive_line("n002", 1),)), asked[-1] + 0.01)
    assert state(node, "n002") is MemberState.DEAD  # failed after we learnt: news


def test_a_rejoining_node_asks_for_and_gets_the_alive_lines_of_whom_it_holds_failed() -> None:
    node = node_in(snapshot_of(5).with_failed(["n001"]))
    node.receive("n004", sign(Dead("n000", 1, "n004")), 10.0)
    sent = [m for t in range(11, 71) for _, m in node.tick(float(t)).sends]
    digests = [m for m in sent if isinstance(m, Digest)]
    assert digests and all(d.rejoining for d in digests)

    peer = node_in(snapshot_of(5), "n004")
    held = tuple(
        MemberDigest(n, 1, MemberState.DEAD if n == "n001" else MemberState.ALIVE) for n in ids(5)
    )
    for when, rejoining, expected in ((20.0, False, set()), (40.0, True, {"n001"})):
        asking = Digest(members=held, reply=True, rejoining=rejoining)
        out = peer.receive("n003", asking, when)  # one exchange per reconnect interval
        lines = {
            line.node_id for m in out.sends if isinstance(m[1], Delta) for line in m[1].members
        }
        assert lines == expected
    ahead = Digest(
        members=(held[0], MemberDigest("n001", 2, MemberState.DEAD), *held[2:]),
        reply=True,
        rejoining=True,
    )
    out = peer.receive("n002", ahead, 41.0)
    assert not [m for _, m in out.sends if isinstance(m, Delta) and m.members]


def test_a_node_cut_off_alone_rejoins_without_every_member_refuting() -> None:
    """Among 200 its sweep (five Pings a second, 64 a sweep) would take 40 s to reach
    everyone, so the members come back through its rejoining pull; among 50, a pull drawn
    late in its spread could come after the sweep had reached them all."""
    report = run(
        "partition-heal",
        Params(nodes=200, seed=3, groups="1,*", held_split=True),
        with_runtime=False,
    )
    counters = report["simulation"]["core_counters"]
    assert report["results"]["pairs_not_alive_at_end"] == 0
    assert report["results"]["false_failures_after_heal"] == 0
    assert counters["failures_withdrawn"] > 0
    assert counters["refutations"] < 199  # fewer than the members the lone node held failed


def test_a_rejoining_node_sweeps_whom_it_still_holds_failed_until_rejoining_ends() -> None:
    """Those a rejoining pull's answer does not bring back (a third side's, failed by its
    sender too) each get our Ping again and again, not once per reconnect interval."""
    failed = [f"n{i:03d}" for i in range(10, 20)]
    node = node_in(snapshot_of(40).with_failed(failed))
    node.receive("n001", sign(Dead("n000", 1, "n001")), 10.0)
    pings: list[tuple[float, str]] = []
    now = 10.0
    while now < 80.0:
        now = node.next_deadline()
        pings += [(now, d) for d, m in node.tick(now).sends if isinstance(m, Ping) and d in failed]
    soon = [d for t, d in pings if t < 15.0]
    assert set(soon) == set(failed) and len(soon) >= 2 * len(failed)
    assert len([t for t, _ in pings if t >= 72.0]) <= 2  # rejoining is over: damped again


def test_while_rejoining_pulls_go_to_members_back_by_themselves_and_sooner() -> None:
    """The members an answer takes back are its sender's side, which we now have; the
    next pull goes to a member that came back by itself (another side), 2 s after the
    last rather than a reconnect interval."""
    failed = [f"n{i:03d}" for i in range(10, 60)]
    node = node_in(snapshot_of(60).with_failed(failed))
    node.receive("n001", sign(Dead("n000", 1, "n001")), 10.0)
    now, asked = 10.0, False
    while not asked:  # until our rejoining pull goes to whoever told us
        now = node.next_deadline()
        asked = any(isinstance(m, Digest) for _, m in node.tick(now).sends)
    taken_back = tuple(alive_line(n, 1) for n in failed[:10])
    node.receive("n001", Delta(members=taken_back), now + 0.01)
    assert node.stats.failures_withdrawn == 10
    now += 0.02
    pulls: list[tuple[float, str]] = []
    for i, member in enumerate(failed[10:20]):  # ten come back by themselves, 3 s apart
        back = now + 3.0 * i
        while node.next_deadline() < back:
            t = node.next_deadline()
            pulls += [(t, p) for p, m in node.tick(t).sends if isinstance(m, Digest)]
        node.receive(member, sign(Alive(member, 2, address_of(member))), back)
    end = now + 30.0
    while node.next_deadline() < end:
        t = node.next_deadline()
        pulls += [(t, p) for p, m in node.tick(t).sends if isinstance(m, Digest)]
    assert pulls and not {p for _, p in pulls} & set(failed[:10])
    assert len(pulls) >= 2 and min(b - a for (a, _), (b, _) in itertools.pairwise(pulls)) < 10.0


def rejoined_after_one_pull(
    failed: list[str], count: int, seed: int
) -> tuple[MembershipNode, float]:
    """A node of `count` holding `failed` failed, told it was cut off at 10 s, whose first
    rejoining pull (to whoever told it) is answered without them: its sender held them
    failed too. Returns the node and when that answer came."""
    node = node_in(snapshot_of(count).with_failed(failed))
    node._rng = random.Random(seed)
    node.receive("n001", sign(Dead("n000", 1, "n001")), 10.0)
    now, pulled = 10.0, False
    while not pulled:
        now = node.next_deadline()
        pulled = any(isinstance(m, Digest) for _, m in node.tick(now).sends)
    node.receive("n001", Delta(members=()), now + 0.01)
    return node, now + 0.01


def pulls_while_answering(
    node: MembershipNode, failed: list[str], since: float, until: float, every: float
) -> tuple[list[tuple[float, str]], list[float]]:
    """Run `node` from `since` to `until`; each member of `failed` it pings answers with
    its refutation, at most one every `every` seconds. Its pulls, and when each answered."""
    pulls: list[tuple[float, str]] = []
    answered: list[float] = []
    while (t := node.next_deadline()) < until:
        for peer, message in node.tick(max(t, since)).sends:
            if isinstance(message, Digest):
                pulls.append((t, peer))
            elif (
                isinstance(message, Ping)
                and peer in failed
                and (not answered or t - answered[-1] >= every)
            ):
                answered.append(t)
                node.receive(peer, sign(Alive(peer, 2, address_of(peer))), t + 0.002)
    return pulls, answered


def test_a_rejoining_node_pulls_from_a_member_that_answers_its_sweep_however_few_are_left() -> None:
    """After a rejoining pull's answer, a few of a side may still be held failed (its
    sender had not heard them refute). The first of them to answer our sweep's Ping shows
    its side was there all along: we pull its view a gap after our last pull, within as
    much again, not when the damping's coin (a few failed among hundreds alive) comes up,
    nor a whole heal spread later, so the rest come back in one answer rather than one
    Ping at a time. On every draw of the node's random generator, not one."""
    failed = [f"n{i:03d}" for i in range(100, 112)]  # 12 of 300: a coin of 4%
    for seed in range(12):
        node, answered_at = rejoined_after_one_pull(failed, 300, seed)
        pulls, answered = pulls_while_answering(node, failed, answered_at, answered_at + 8, 0.0)
        assert answered, "the sweep pinged none of those still held failed"
        later = [(t, p) for t, p in pulls if t > answered[0]]
        assert later, f"seed {seed}: no pull after the sweep was answered at {answered[0]:.2f}"
        assert later[0][1] in failed  # to a member that came back
        soonest = max(answered[0], answered_at - 0.01 + REJOIN_PULL_GAP)
        assert soonest - 1e-9 <= later[0][0] <= soonest + REJOIN_PULL_GAP, seed  # gap, spread


def test_a_rejoining_node_plans_few_pulls_on_members_words_whatever_the_coin() -> None:
    """Members we hold failed that keep telling us they are alive (here one every 5 s,
    more than a pull's gap and spread) draw at most `MAX_UNDAMPED_PULLS` pulls a
    rejoining beyond what the coin (12 of 1,000: about 1%) grants."""
    failed = [f"n{i:03d}" for i in range(100, 112)]
    node, answered_at = rejoined_after_one_pull(failed, 1000, 1)
    pulls, answered = pulls_while_answering(node, failed, answered_at, answered_at + 60, 5.0)
    assert len(answered) >= MAX_UNDAMPED_PULLS + 3
    assert MAX_UNDAMPED_PULLS <= len(pulls) <= MAX_UNDAMPED_PULLS + 1
