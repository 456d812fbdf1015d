"""`MembershipNode` one mechanism at a time: messages in, sends and events out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from novacron.agent.core.events import (
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    Output,
    ReachedIndirectly,
    RecordRejected,
    RecordUpdated,
)
from novacron.agent.core.membership.config import MembershipConfig
from novacron.agent.core.membership.node import MAX_UNPROVEN_LEAP, MembershipNode
from novacron.agent.core.membership.suspicion import suspicion_timeout
from novacron.protocol.messages import (
    MAX_COUNTER,
    Ack,
    Alive,
    CertificateRequest,
    Certificates,
    Dead,
    Delta,
    Digest,
    IndirectPing,
    Leave,
    MemberDigest,
    MemberState,
    Message,
    Nack,
    NodeRecord,
    Ping,
    RecordUpdate,
    SignedRecord,
    Suspect,
)
from novacron.simulations.signing import certificate_of
from tests.core_harness import (
    CONFIG,
    address_of,
    ids,
    make_node,
    make_signer,
    node_in,
    record_for,
    record_for_version,
    sign,
    signed,
    snapshot_of,
    verify,
)


def alive(node_id: str, incarnation: int) -> Alive:
    """`node_id`'s own signed Alive at its address."""
    return sign(Alive(node_id, incarnation, address_of(node_id)))


def sends_of(out: Output, kind: type) -> list[tuple[str, Message]]:
    return [(dest, m) for dest, m in out.sends if isinstance(m, kind)]


def answers(out: Output) -> list[tuple[str, str, int]]:
    """(destination, kind, seq) of every Ack and Nack sent."""
    return [(dest, type(m).__name__, m.seq) for dest, m in out.sends if isinstance(m, Ack | Nack)]


# --- incarnations and refutation ------------------------------------------------------


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n001", sign(Suspect("n000", 1, "n001")), 1.0)
    assert node.incarnation == 2
    assert node.awareness == 1  # having to refute is a sign of our own trouble
    out = node.tick(node.next_deadline())
    gossip = [m for _, m in out.sends if isinstance(m, Alive)] + [
        g for _, m in out.sends if isinstance(m, Ping) for g in m.gossip
    ]
    assert alive("n000", 2) in gossip


def test_alive_with_higher_incarnation_overrides_suspicion() -> None:
    node = node_in(snapshot_of(5))
    out = node.receive("n002", sign(Suspect("n001", 1, "n002")), 1.0)
    assert out.events == [MemberSuspected("n001", 1, "n002")]
    assert node.receive("n003", alive("n001", 1), 1.5).events == []  # same incarnation: no
    out = node.receive("n003", alive("n001", 2), 2.0)
    assert out.events == [MemberAlive("n001", 2)]
    info = node.member("n001")
    assert info is not None and info.state is MemberState.ALIVE and info.incarnation == 2
    # the suspicion timer is gone: nothing fails later
    assert not node.tick(1000.0).events


def test_a_member_back_from_failure_is_told_apart_from_a_refuted_suspicion() -> None:
    """The agent connects anew to a member it held failed (the old connection may sit in
    a back-off from the cut), not to one it only suspected."""
    node = node_in(snapshot_of(5))
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 1.0)
    assert node.receive("n001", alive("n001", 2), 1.5).events == [
        MemberAlive("n001", 2, was_failed=False)
    ]
    node.receive("n002", sign(Suspect("n001", 2, "n002")), 2.0)
    failed = node.tick(1000.0).events
    assert MemberFailed("n001", 2, "n000") in failed
    assert node.receive("n001", alive("n001", 3), 1001.0).events == [
        MemberAlive("n001", 3, was_failed=True)
    ]


def test_a_node_declared_dead_refutes_unless_it_left() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n001", sign(Dead("n000", 1, "n001")), 1.0)
    assert node.incarnation == 2
    node.leave(2.0)
    node.receive("n001", sign(Dead("n000", 2, "n001")), 3.0)
    node.receive("n001", sign(Suspect("n000", 2, "n001")), 3.0)
    assert node.incarnation == 2
    assert node.has_left


def test_dead_about_a_member_held_alive_is_only_a_suspicion() -> None:
    """A node back from isolation declares others dead: they must get to refute it."""
    node = node_in(snapshot_of(5))
    out = node.receive("n004", sign(Dead("n001", 1, "n004")), 1.0)
    assert out.events == [MemberSuspected("n001", 1, "n004")]
    info = node.member("n001")
    assert info is not None and info.state is MemberState.SUSPECT
    assert node.receive("n001", alive("n001", 2), 1.5).events == [MemberAlive("n001", 2)]
    assert not [e for e in node.tick(1000.0).events if isinstance(e, MemberFailed)]


def test_another_members_dead_is_a_confirmation_never_the_verdict() -> None:
    """The side of a healed partition that could not reach a member declares it dead;
    the side that could must let the member refute, however many accusers there are."""
    node = node_in(snapshot_of(20))
    minimum = suspicion_timeout(CONFIG.suspicion_mult, 20, CONFIG.probe_interval)
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 1.0)
    assert node.receive("n003", sign(Dead("n001", 1, "n003")), 1.1).events == []
    assert node.receive("n004", sign(Dead("n001", 1, "n004")), 1.2).events == []
    assert node.stats.suspicions_confirmed == 2  # shortened to the minimum, not ended
    assert node.receive("n001", alive("n001", 2), 1.0 + minimum - 0.1).events == [
        MemberAlive("n001", 2)
    ]
    other = node_in(snapshot_of(20), "n009")
    other.receive("n002", sign(Suspect("n001", 1, "n002")), 1.0)
    other.receive("n003", sign(Dead("n001", 1, "n003")), 1.1)
    other.receive("n004", sign(Dead("n001", 1, "n004")), 1.2)
    assert not [e for e in other.tick(1.0 + minimum - 0.01).events if isinstance(e, MemberFailed)]
    out = other.tick(1.0 + minimum + 0.01)
    assert MemberFailed("n001", 1, "n009") in out.events  # its own verdict, in its own name
    out.extend(other.tick(1.0 + minimum + CONFIG.gossip_interval + 0.01))
    assert sign(Dead("n001", 1, "n009")) in [m for _, m in out.sends] + [
        g for _, m in out.sends if isinstance(m, Ping) for g in m.gossip
    ]


def test_a_lone_accusers_dead_does_not_cut_the_suspicion_short() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n004", sign(Suspect("n001", 1, "n004")), 1.0)
    assert node.receive("n004", sign(Dead("n001", 1, "n004")), 1.1).events == []
    assert node.receive("n001", alive("n001", 2), 1.5).events == [MemberAlive("n001", 2)]
    assert not [e for e in node.tick(1000.0).events if isinstance(e, MemberFailed)]


def test_an_alive_claim_from_an_older_life_is_outnumbered() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n001", alive("n000", 7), 1.0)
    assert node.incarnation == 8


def test_suspect_then_dead_after_the_timeout() -> None:
    snapshot = snapshot_of(5)
    node = node_in(snapshot)
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 10.0)
    minimum = suspicion_timeout(CONFIG.suspicion_mult, 5, CONFIG.probe_interval)
    # 5 members: n - 2 = 3 >= k = 2, so confirmations are expected and we start at max
    maximum = minimum * CONFIG.suspicion_max_timeout_mult
    assert not node.tick(10.0 + maximum - 0.01).events.count(MemberFailed("n001", 1, "n000"))
    out = node.tick(10.0 + maximum + 0.01)
    assert MemberFailed("n001", 1, "n000") in out.events


def test_confirmations_shrink_the_suspicion_timeout() -> None:
    node = node_in(snapshot_of(20))
    minimum = suspicion_timeout(CONFIG.suspicion_mult, 20, CONFIG.probe_interval)
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 0.0)
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 0.0)  # same accuser: no confirmation
    node.receive("n003", sign(Suspect("n001", 1, "n003")), 0.0)
    assert node.stats.suspicions_confirmed == 1
    assert not [e for e in node.tick(minimum + 0.01).events if isinstance(e, MemberFailed)]
    node.receive("n004", sign(Suspect("n001", 1, "n004")), minimum + 0.02)  # k = mult - 2 = 2
    out = node.tick(minimum + 0.03)
    assert MemberFailed("n001", 1, "n000") in out.events


def test_without_lifeguard_the_timeout_is_fixed_at_the_minimum() -> None:
    config = MembershipConfig(lifeguard=False)
    node = node_in(snapshot_of(20), config=config)
    minimum = suspicion_timeout(config.suspicion_mult, 20, config.probe_interval)
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 0.0)
    node.receive("n003", sign(Suspect("n001", 1, "n003")), 0.0)
    assert node.stats.suspicions_confirmed == 0
    assert not [e for e in node.tick(minimum - 0.01).events if isinstance(e, MemberFailed)]
    assert MemberFailed("n001", 1, "n000") in node.tick(minimum + 0.01).events


# --- probing ------------------------------------------------------------------------------


def drive_probe(node: MembershipNode, now: float) -> tuple[float, Ping, str]:
    """Tick until the node pings someone; return the time, the Ping and the target."""
    for _ in range(100):
        now = node.next_deadline()
        pings = sends_of(node.tick(now), Ping)
        if pings:
            target, ping = pings[0]
            assert isinstance(ping, Ping)
            return now, ping, target
    raise AssertionError("no probe")


def test_an_ack_ends_the_probe_and_improves_health() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n001", sign(Suspect("n000", 1, "n001")), 0.0)  # awareness 1
    now, ping, target = drive_probe(node, 0.0)
    node.receive(target, Ack(ping.seq), now + 0.01)
    assert node.awareness == 0 and node.stats.acks_received == 1


def test_missing_acks_ask_relays_and_ping_again_then_suspect_and_grow_awareness() -> None:
    node = node_in(snapshot_of(5))
    now, ping, target = drive_probe(node, 0.0)
    out = node.tick(now + CONFIG.probe_timeout)
    relays = sends_of(out, IndirectPing)
    assert len(relays) == CONFIG.indirect_checks
    assert all(m.target == target and m.want_nack for _, m in relays)  # type: ignore[union-attr]
    assert (target, Ping(ping.seq, target)) in sends_of(out, Ping)  # once more, directly
    one_nack = relays[0][0]
    node.receive(one_nack, Nack(ping.seq), now + 0.7)
    out = node.tick(now + CONFIG.probe_interval)
    assert not out.events  # a first attempt that failed is repeated before anyone is accused
    ((again, repeat),) = sends_of(out, Ping)
    assert again == target and isinstance(repeat, Ping) and repeat.seq != ping.seq
    assert node.awareness == 2  # three relays asked, one answered: two missing nacks
    second = now + CONFIG.probe_interval
    node.tick(second + 3 * CONFIG.probe_timeout)  # awareness 2 stretches the timings
    out = node.tick(second + 3 * CONFIG.probe_interval)
    assert MemberSuspected(target, 1, "n000") in out.events


def answer_probes(
    node: MembershipNode, watched: str, answers: list[str], now: float = 0.0
) -> list[ReachedIndirectly]:
    """Probe until `watched` was probed once per entry of `answers`, answering each probe
    of it "direct" (the target acks) or "relay" (a relay asked forwards the ack), and
    every other probe directly; the ReachedIndirectly events that came out."""
    seen: list[ReachedIndirectly] = []
    left = list(answers)
    while left:
        now, ping, target = drive_probe(node, now)
        how = left.pop(0) if target == watched else "direct"
        if how == "direct":
            out = node.receive(target, Ack(ping.seq), now + 0.01)
        else:
            relays = sends_of(node.tick(now + CONFIG.probe_timeout), IndirectPing)
            out = node.receive(relays[0][0], Ack(ping.seq), now + CONFIG.probe_timeout + 0.01)
        assert node._probes.pending is None, "the answer ended the probe"
        seen += [e for e in out.events if isinstance(e, ReachedIndirectly)]
        now = node.next_deadline()
    return seen


def test_a_member_answering_probe_after_probe_only_through_relays_is_reported() -> None:
    """Alive, but not to us directly, twice in a row: the driver must learn it, since a
    connection that carries nothing any more is its own to rebuild. Once is a slow member;
    a direct answer in between starts the count again."""
    assert answer_probes(node_in(snapshot_of(3)), "n001", ["relay"]) == []
    (event,) = answer_probes(node_in(snapshot_of(3)), "n001", ["relay", "relay"])
    assert event == ReachedIndirectly("n001", "n002")  # the only possible relay
    assert answer_probes(node_in(snapshot_of(3)), "n001", ["relay", "direct", "relay"]) == []


def test_only_the_target_or_a_relay_asked_can_answer_a_probe() -> None:
    """Another member acking our sequence number (they are easy to guess) neither ends the
    probe nor speaks for the target."""
    node = node_in(snapshot_of(5))
    now, ping, target = drive_probe(node, 0.0)
    stranger = next(n for n in ("n001", "n002", "n003", "n004") if n != target)
    node.receive(stranger, Ack(ping.seq), now + 0.01)
    assert node._probes.pending is not None and node.stats.acks_received == 0
    node.receive(target, Ack(ping.seq), now + 0.02)
    assert node._probes.pending is None and node.stats.acks_received == 1


def test_an_ack_to_the_repeat_spares_the_target() -> None:
    node = node_in(snapshot_of(5))
    now, _, target = drive_probe(node, 0.0)
    node.tick(now + CONFIG.probe_timeout)
    out = node.tick(now + CONFIG.probe_interval)
    ((again, repeat),) = sends_of(out, Ping)
    assert again == target
    node.receive(target, Ack(repeat.seq), now + CONFIG.probe_interval + 0.01)  # type: ignore[union-attr]
    later = node.tick(now + 10 * CONFIG.probe_interval)
    assert not [e for e in later.events if isinstance(e, MemberSuspected)]
    assert node.stats.probes_failed == 1


def test_plain_swim_asks_for_no_nacks_and_keeps_no_health_score() -> None:
    config = MembershipConfig(lifeguard=False)
    node = node_in(snapshot_of(5), config=config)
    now, _, target = drive_probe(node, 0.0)
    relays = sends_of(node.tick(now + config.probe_timeout), IndirectPing)
    assert relays and not any(m.want_nack for _, m in relays)  # type: ignore[union-attr]
    node.tick(now + config.probe_interval)  # the first attempt failed: the repeat
    node.tick(now + config.probe_interval + config.probe_timeout)
    out = node.tick(now + 2 * config.probe_interval)
    assert MemberSuspected(target, 1, "n000") in out.events
    assert node.awareness == 0


def test_awareness_is_capped_and_stretches_the_probe_interval() -> None:
    node = node_in(snapshot_of(200))
    pings: list[float] = []  # when each probe attempt began (its repeated Ping not counted)
    seqs: set[int] = set()
    for _ in range(2000):  # nobody ever answers: every probe fails, no relay nacks
        now = node.next_deadline()
        for _, ping in sends_of(node.tick(now), Ping):
            if ping.seq not in seqs:  # type: ignore[union-attr]
                seqs.add(ping.seq)  # type: ignore[union-attr]
                pings.append(now)
        if len(pings) >= 12:
            break
    assert node.awareness == CONFIG.awareness_max_multiplier - 1
    assert pings[1] - pings[0] < 2 * CONFIG.probe_interval
    assert pings[-1] - pings[-2] == pytest.approx(8 * CONFIG.probe_interval)


def test_a_relay_forwards_the_ack_or_sends_a_nack() -> None:
    relay = node_in(snapshot_of(5), "n001")
    out = relay.receive("n000", IndirectPing(42, "n002", "n000"), 1.0)
    ((dest, ping),) = sends_of(out, Ping)
    assert dest == "n002" and isinstance(ping, Ping)
    out = relay.receive("n002", Ack(ping.seq), 1.1)
    assert answers(out) == [("n000", "Ack", 42)]
    out = relay.receive("n000", IndirectPing(43, "n003", "n000"), 2.0)
    out = relay.tick(2.0 + CONFIG.probe_timeout)
    assert answers(out) == [("n000", "Nack", 43)]


def test_pings_are_answered_with_piggybacked_gossip() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 0.0)
    out = node.receive("n003", Ping(9, "n000"), 0.1)
    ((dest, ack),) = out.sends
    assert dest == "n003" and isinstance(ack, Ack) and ack.seq == 9
    assert sign(Suspect("n001", 1, "n002")) in ack.gossip


# --- leave ----------------------------------------------------------------------------------


def test_leave_is_broadcast_and_received_as_left_not_failed() -> None:
    snapshot = snapshot_of(5)
    leaver, other = node_in(snapshot, "n004"), node_in(snapshot, "n001")
    out = leaver.leave(5.0)
    leaves = sends_of(out, Leave)
    assert leaves and all(m == sign(Leave("n004", 1)) for _, m in leaves)
    out = other.receive("n004", sign(Leave("n004", 1)), 5.01)
    assert out.events == [MemberLeft("n004", 1)]
    info = other.member("n004")
    assert info is not None and info.state is MemberState.LEFT
    # a left member is neither probed nor failed later
    assert not [e for e in other.tick(500.0).events if isinstance(e, MemberFailed)]
    assert leaver.next_deadline() > 5.0


# --- records ---------------------------------------------------------------------------------


def test_update_record_assigns_versions_and_gossips() -> None:
    node = node_in(snapshot_of(3))
    assert node.record_version("n000") == 1
    out = node.update_record(record_for("n000", load=2.5), 1.0)
    assert node.record_version("n000") == 2
    assert out.events == [RecordUpdated(record_for_version("n000", 2, 2.5))]
    assert node.records()["n000"].load == 2.5
    with pytest.raises(ValueError):
        node.update_record(record_for("n001"), 1.0)


def test_an_older_record_never_wins_and_is_not_verified() -> None:
    calls: list[int] = []

    def counting(s: SignedRecord) -> NodeRecord:
        calls.append(s.version)
        return verify(s)

    node = node_in(snapshot_of(3), verifier=counting)
    out = node.receive("n002", RecordUpdate(signed("n001", 3, load=3.0)), 1.0)
    assert out.events == [RecordUpdated(record_for_version("n001", 3, 3.0))]
    node.receive("n002", RecordUpdate(signed("n001", 2)), 2.0)
    node.receive("n002", RecordUpdate(signed("n001", 3)), 2.0)
    assert node.record_version("n001") == 3 and node.records()["n001"].load == 3.0
    assert node.stats.records_rejected_stale == 2
    assert calls == [3]


def test_a_bad_signature_is_dropped_and_counted() -> None:
    node = node_in(snapshot_of(3))
    forged = make_signer("n001", key=b"not the key of n001")(record_for_version("n001", 9))
    out = node.receive("n002", RecordUpdate(forged), 1.0)
    assert out.events == [RecordRejected("n001", 9, "bad-signature")]
    assert node.stats.records_rejected_bad_signature == 1 and node.record_version("n001") == 1
    # a valid record under a false header is a forgery too
    relabeled = replace(signed("n001", 2), version=5)
    node.receive("n002", RecordUpdate(relabeled), 1.0)
    assert node.stats.records_rejected_bad_signature == 2
    assert node.pending_gossip() == 0  # nothing was re-gossiped


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ({"labels": {"novacron/rebalance": "paused@9999999999"}}, "'novacron/' keys are reserved"),
        ({"migrations_out": 1_000_000}, "migrations_out: 1000000 is outside 0..1024"),
    ],
    ids=["reserved-label", "absurd-counter"],
)
def test_a_record_the_codec_refuses_is_dropped_with_the_reason(
    claim: dict[str, object], reason: str
) -> None:
    """Its owner signed it, so it is not a forgery: it is refused for what it says."""
    node = node_in(snapshot_of(3))
    lie = replace(record_for_version("n001", 2), **claim)  # type: ignore[arg-type]
    out = node.receive("n002", RecordUpdate(make_signer("n001")(lie)), 1.0)
    (event,) = out.events
    assert isinstance(event, RecordRejected) and (event.node_id, event.version) == ("n001", 2)
    assert reason in event.reason and "record bytes do not decode" in event.reason
    assert node.stats.records_rejected_malformed == 1
    assert node.stats.records_rejected_bad_signature == 0
    assert node.record_version("n001") == 1 and node.records()["n001"].labels == {}
    assert node.pending_gossip() == 0  # nothing was re-gossiped


def test_records_of_non_members_are_rejected() -> None:
    node = node_in(snapshot_of(3))
    node.receive("n002", RecordUpdate(signed("stranger", 1)), 1.0)
    node.receive("n002", sign(Leave("n001", 1)), 1.0)
    node.receive("n002", RecordUpdate(signed("n001", 2)), 1.0)
    assert node.stats.records_rejected_not_member == 2
    assert "stranger" not in node.records()


# --- push-pull --------------------------------------------------------------------------------


def test_push_pull_sends_only_newer_records_and_members() -> None:
    snapshot = snapshot_of(50)
    old, new = node_in(snapshot, "n000"), node_in(snapshot, "n001")
    new.receive("n007", RecordUpdate(signed("n007", 4)), 1.0)
    new.receive("n009", sign(Suspect("n009", 1, "n001")), 1.0)
    digest = old._digest(1.0, reply=True)
    assert len(digest.members) == 50 and len(digest.records) == 50
    out = new.receive("n000", digest, 2.0)
    ((_, delta),) = sends_of(out, Delta)
    assert isinstance(delta, Delta)
    assert [s.version for s in delta.records] == [4]
    proof = alive("n009", 1).signature  # the member's own, passed on
    line = MemberDigest("n009", 1, MemberState.SUSPECT, address_of("n009"), proof)
    assert delta.members == (line,)
    ((_, reply),) = sends_of(out, Digest)
    assert isinstance(reply, Digest) and not reply.reply
    # the initiator answers the reply digest with what *it* has newer: nothing (this
    # digest was not asked through the exchange's bookkeeping, so it reads as a pull,
    # whose answer says "nothing" with an empty Delta)
    assert [m for _, m in old.receive("n001", reply, 2.1).sends] == [Delta()]
    out = old.receive("n001", delta, 2.1)
    assert old.record_version("n007") == 4
    assert not out.events[1:]  # the record; n001's word that n009 is suspect is checked:
    assert drive_probe(old, 2.1)[2] == "n009"  # our next probe goes to n009


def test_a_digest_that_declares_us_dead_is_refuted_in_the_reply() -> None:
    snapshot = snapshot_of(4)
    node = node_in(snapshot, "n000")
    lines = tuple(
        MemberDigest(n, 1, MemberState.DEAD if n == "n000" else MemberState.ALIVE, address_of(n))
        for n in ids(4)
    )
    out = node.receive("n001", Digest(members=lines, reply=False), 1.0)
    ((_, delta),) = sends_of(out, Delta)
    assert isinstance(delta, Delta)
    proof = alive("n000", 2).signature
    assert MemberDigest("n000", 2, MemberState.ALIVE, address_of("n000"), proof) in delta.members


def test_a_digest_holding_us_left_under_our_old_key_is_refuted() -> None:
    """We left, then came back with a re-issued certificate (a new key) at the same
    incarnation: the peer's Leave carries our old key's signature, which our new key
    cannot check; that the peer holds us gone is all that matters, so we refute it."""
    node = node_in(snapshot_of(4), "n000")
    old_leave = sign(Leave("n000", 1), key=b"the key n000 held before" * 2)
    line = MemberDigest("n000", 1, MemberState.LEFT, address_of("n000"), old_leave.signature)
    out = node.receive("n001", Digest(members=(line,), reply=False), 1.0)
    ((_, delta),) = sends_of(out, Delta)
    assert isinstance(delta, Delta)
    proof = alive("n000", 2).signature
    assert MemberDigest("n000", 2, MemberState.ALIVE, address_of("n000"), proof) in delta.members


def test_a_restarted_node_outnumbers_a_leave_from_its_previous_life() -> None:
    """Held left at incarnation 2 by a life before a restart (and a key rotation), we
    restart at 1: the line cannot be checked, yet it is what the peer believes."""
    node = node_in(snapshot_of(4), "n000")
    assert node.incarnation == 1
    old_leave = sign(Leave("n000", 2), key=b"the key n000 held before" * 2)
    line = MemberDigest("n000", 2, MemberState.LEFT, address_of("n000"), old_leave.signature)
    node.receive("n001", Digest(members=(line,), reply=False), 1.0)
    assert node.incarnation == 3


def test_a_line_we_cannot_check_moves_our_incarnation_a_bounded_step() -> None:
    node = node_in(snapshot_of(4), "n000")
    line = MemberDigest("n000", MAX_COUNTER - 1, MemberState.DEAD, address_of("n000"), b"x" * 64)
    node.receive("n001", Digest(members=(line,), reply=False), 1.0)
    assert node.incarnation == 1 + MAX_UNPROVEN_LEAP + 1


def test_a_dead_line_in_a_delta_is_checked_by_our_own_probe_not_believed() -> None:
    """A peer on the other side of a healed partition still holds our neighbours dead.
    Suspecting them silently on its word failed them here (nobody told them, so nobody
    refuted); we probe them ourselves instead, and accuse only what fails our probe."""
    for answers_probe in (True, False):
        node = node_in(snapshot_of(40), "n000")
        line = MemberDigest("n002", 1, MemberState.DEAD)
        assert node.receive("n001", Delta(members=(line,)), 1.0).events == []
        now, ping, target = drive_probe(node, 1.0)
        assert target == "n002"
        if answers_probe:
            node.receive("n002", Ack(ping.seq), now + 0.01)
        events: list[object] = []
        for _ in range(200):
            events += node.tick(node.next_deadline()).events
        suspected = MemberSuspected("n002", 1, "n000") in events
        assert suspected is not answers_probe


# --- healing: members held failed ------------------------------------------------------------


def failed_in(node: MembershipNode, *members: str) -> float:
    """Make `node` hold `members` failed (its own suspicions of them ran out); the time."""
    for member in members:
        node.receive("n002", sign(Suspect(member, 1, "n002")), 0.0)
    node.tick(1000.0)
    node.tick(1000.0 + CONFIG.probe_interval)  # a probe under way then is over
    for member in members:
        info = node.member(member)
        assert info is not None and info.state is MemberState.DEAD
    return 1000.0 + CONFIG.probe_interval


def test_a_member_we_hold_failed_that_speaks_to_us_is_told_so() -> None:
    node = node_in(snapshot_of(10), "n000")
    now = failed_in(node, "n005")
    out = node.receive("n005", Ping(7, "n000"), now)
    assert ("n005", sign(Dead("n005", 1, "n000"))) in out.sends
    assert not sends_of(node.receive("n005", Ping(8, "n000"), now + 0.1), Dead)  # once a second


def test_whoever_accuses_us_gets_our_alive_directly_and_a_dead_earns_a_push_pull() -> None:
    node = node_in(snapshot_of(10), "n000")
    out = node.receive("n004", sign(Dead("n000", 1, "n007")), 1.0)  # relayed by n004
    assert node.incarnation == 2
    assert ("n004", alive("n000", 2)) in out.sends  # not left to the luck of gossip
    out = node.receive("n006", sign(Suspect("n000", 1, "n008")), 1.5)  # stale: we refuted
    assert ("n006", alive("n000", 2)) in out.sends and node.incarnation == 2
    digests = []
    for _ in range(400):
        digests += sends_of(node.tick(node.next_deadline()), Digest)
        if digests:
            break
    assert digests[0][0] == "n004" and node.next_deadline() < 1.0 + 2 * CONFIG.push_pull_interval


def test_reconnecting_is_a_ping_carrying_our_dead_not_our_whole_state() -> None:
    node = node_in(snapshot_of(10), "n000")
    failed = ("n005", "n006", "n007", "n008", "n009")  # 5 failed, 5 alive: no damping
    now = start = failed_in(node, *failed)
    pings: list[tuple[str, Message]] = []
    while now < start + 3 * CONFIG.reconnect_interval:
        now = node.next_deadline()
        out = node.tick(now)
        assert not [d for d, _ in sends_of(out, Digest) if d in failed]
        pings += [(d, p) for d, p in sends_of(out, Ping) if d in failed]
    assert len(pings) >= 2
    for dest, ping in pings:
        assert isinstance(ping, Ping) and ping.gossip == (sign(Dead(dest, 1, "n000")),)


def test_told_we_were_held_dead_we_retry_whom_we_suspect_or_hold_failed() -> None:
    """A node cut off alone suspects and fails a few members; healed, it must not
    fail them (they never heard of it) nor wait for chance to meet them again."""
    node = node_in(snapshot_of(40), "n000")
    now = failed_in(node, "n005")
    node.receive("n002", sign(Suspect("n006", 1, "n002")), now)
    node.receive("n003", sign(Dead("n000", 1, "n003")), now)  # we were held dead
    sent: list[tuple[str, Message]] = []
    for step in range(1, 6):
        sent += node.tick(now + step * CONFIG.gossip_interval).sends
    assert ("n006", Ping) in [(d, type(m)) for d, m in sent]
    claims = {d: m.gossip for d, m in sent if isinstance(m, Ping) and d in ("n005", "n006")}
    assert claims["n005"] == (sign(Dead("n005", 1, "n000")),)
    assert claims["n006"] == (sign(Suspect("n006", 1, "n000")),)


# --- certificates on demand ----------------------------------------------------------------


def test_a_certificate_request_that_goes_unanswered_is_asked_of_another_member() -> None:
    """A newcomer's Alive is gossiped for about a second; one lost request or answer
    must not keep it unknown here until the next push-pull, minutes in a large mesh."""
    node = node_in(snapshot_of(10), "n000")
    newcomer = sign(Alive("n100", 1, address_of("n100")))
    out = node.receive("n003", newcomer, 1.0)
    assert sends_of(out, CertificateRequest) == [("n003", CertificateRequest(("n100",)))]
    assert not sends_of(node.receive("n004", newcomer, 1.5), CertificateRequest)  # asked
    assert node.next_deadline() <= 2.0  # one CERTIFICATE_WAIT after the first request
    out = node.tick(2.0)
    ((whom, request),) = sends_of(out, CertificateRequest)
    assert whom not in ("n000", "n003") and request == CertificateRequest(("n100",))
    out = node.receive(whom, Certificates({"n100": certificate_of("n100")}), 2.1)
    assert MemberJoined("n100", 1, address_of("n100")) in out.events


# --- joining, strangers and nonsense -------------------------------------------------------------


def test_join_introduces_a_fresh_node_through_a_seed() -> None:
    seed = node_in(snapshot_of(3), "n000")
    fresh = make_node("n100", CONFIG)
    fresh.update_record(record_for("n100"), 0.0)
    ((dest, digest),) = fresh.join([("n000", address_of("n000"))], 0.0).sends
    assert dest == "n000" and isinstance(digest, Digest) and digest.reply
    out = seed.receive("n100", digest, 0.01)
    assert MemberJoined("n100", 1, address_of("n100")) in out.events
    assert seed.address_of("n100") == address_of("n100")
    replies = out.sends
    back = Output()
    for _, message in replies:
        back.extend(fresh.receive("n000", message, 0.02))
    assert {m.node_id for m in fresh.members()} == {"n000", "n001", "n002", "n100"}
    assert set(fresh.records()) == {"n000", "n001", "n002", "n100"}
    for _, message in back.sends:
        seed.receive("n100", message, 0.03)
    assert seed.record_version("n100") == 1


def test_strangers_may_only_introduce_themselves() -> None:
    node = node_in(snapshot_of(3))
    for message in (
        sign(Suspect("n001", 1, "zed")),
        sign(Dead("n001", 1, "zed")),
        Ack(1),
        Nack(1),
        IndirectPing(1, "n001", "zed"),
        Delta(),
        RecordUpdate(signed("n001", 5)),
    ):
        assert node.receive("zed", message, 1.0).sends == []
    assert node.stats.messages_from_unknown == 7
    assert node.record_version("n001") == 1
    assert node.receive("zed", Ping(1, "n000"), 1.0).sends  # answered
    node.receive("zed", sign(Alive("zed", 1, "addr", certificate_of("zed"))), 1.0)
    node.receive("zed", sign(Suspect("n001", 1, "zed")), 1.0)  # now a member: admitted
    assert node.stats.messages_from_unknown == 7


def test_nonsense_is_counted_not_crashed_on() -> None:
    node = node_in(snapshot_of(3))
    node.receive("n001", alive("n002", -1), 1.0)
    node.receive("n001", sign(Suspect("", 1, "n001")), 1.0)
    node.receive("n001", sign(Dead("n002", 1, "")), 1.0)
    node.receive("n001", RecordUpdate(SignedRecord("n002", -3, b"", b"")), 1.0)
    node.receive("n001", Ping(1, "someone-else"), 1.0)
    node.receive("n001", IndirectPing(1, "n002", "n009"), 1.0)  # requester is not the sender
    node.receive("n000", Ping(1, "n000"), 1.0)  # from ourselves
    assert node.stats.messages_invalid == 7
    node.receive("n001", sign(Suspect("ghost", 1, "n001")), 1.0)
    node.receive("n001", sign(Leave("ghost", 1)), 1.0)
    assert node.stats.gossip_about_unknown == 2
    assert all(m.state is MemberState.ALIVE for m in node.members())


def test_record_age_counts_from_the_arrival_of_the_version_held() -> None:
    node = node_in(snapshot_of(3))
    assert node.record_ages(5.0) == {}  # the snapshot's records never arrived here
    node.receive("n002", RecordUpdate(signed("n001", 3)), 1.0)
    node.receive("n002", RecordUpdate(signed("n001", 3)), 4.0)  # the same version again
    node.update_record(record_for("n000", load=1.0), 4.0)  # our own never ages here
    assert node.record_ages(10.0) == {"n001": 9.0}
    node.receive("n002", RecordUpdate(signed("n001", 4)), 12.0)
    assert node.record_ages(12.5) == {"n001": 0.5}
