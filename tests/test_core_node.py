"""`MembershipNode` one mechanism at a time: messages in, sends and events out."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from novacron.agent.core.config import MembershipConfig
from novacron.agent.core.events import (
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    Output,
    RecordRejected,
    RecordUpdated,
)
from novacron.agent.core.node import MAX_UNPROVEN_LEAP, MembershipNode
from novacron.agent.core.snapshot import ClusterSnapshot
from novacron.agent.core.suspicion import suspicion_timeout
from novacron.protocol.messages import (
    MAX_COUNTER,
    Ack,
    Alive,
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
from novacron.simulations.signing import SimKeyring, certificate_of, sign_claim_as_signer
from tests.core_harness import (
    address_of,
    ids,
    make_node,
    make_signer,
    record_for,
    record_for_version,
    sign,
    verify,
)

CONFIG = MembershipConfig()


def snapshot_of(count: int) -> ClusterSnapshot:
    names = ids(count)
    signed = [make_signer(n)(record_for_version(n, 1)) for n in names]
    return ClusterSnapshot.converged(
        [(n, address_of(n)) for n in names],
        signed,
        verifier=verify,
        sign_claim=sign_claim_as_signer,
    )


def node_in(
    snapshot: ClusterSnapshot,
    node_id: str = "n000",
    config: MembershipConfig = CONFIG,
    verifier: object = verify,
) -> MembershipNode:
    return MembershipNode.from_snapshot(
        node_id,
        snapshot,
        address=address_of(node_id),
        config=config,
        rng=random.Random(node_id),
        keyring=SimKeyring(node_id, verifier),  # type: ignore[arg-type]
        now=0.0,
    )


def alive(node_id: str, incarnation: int) -> Alive:
    """`node_id`'s own signed Alive at its address."""
    return sign(Alive(node_id, incarnation, address_of(node_id)))


def sends_of(out: Output, kind: type) -> list[tuple[str, Message]]:
    return [(dest, m) for dest, m in out.sends if isinstance(m, kind)]


def answers(out: Output) -> list[tuple[str, str, int]]:
    """(destination, kind, seq) of every Ack and Nack sent."""
    return [(dest, type(m).__name__, m.seq) for dest, m in out.sends if isinstance(m, Ack | Nack)]


def signed(node_id: str, version: int, load: float = 0.0) -> SignedRecord:
    return make_signer(node_id)(record_for_version(node_id, version, load))


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


def test_dead_about_a_suspected_member_fails_it_at_once() -> None:
    node = node_in(snapshot_of(5))
    node.receive("n002", sign(Suspect("n001", 1, "n002")), 1.0)
    out = node.receive("n003", sign(Dead("n001", 1, "n003")), 1.1)
    assert out.events == [MemberFailed("n001", 1, "n003")]


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


def test_missing_acks_ask_relays_then_suspect_and_grow_awareness() -> None:
    node = node_in(snapshot_of(5))
    now, ping, target = drive_probe(node, 0.0)
    out = node.tick(now + CONFIG.probe_timeout)
    relays = sends_of(out, IndirectPing)
    assert len(relays) == CONFIG.indirect_checks
    assert all(m.target == target and m.want_nack for _, m in relays)  # type: ignore[union-attr]
    one_nack = relays[0][0]
    node.receive(one_nack, Nack(ping.seq), now + 0.7)
    out = node.tick(now + CONFIG.probe_interval)
    assert MemberSuspected(target, 1, "n000") in out.events
    assert node.awareness == 2  # three relays asked, one answered: two missing nacks


def test_plain_swim_asks_for_no_nacks_and_keeps_no_health_score() -> None:
    config = MembershipConfig(lifeguard=False)
    node = node_in(snapshot_of(5), config=config)
    now, _, target = drive_probe(node, 0.0)
    relays = sends_of(node.tick(now + config.probe_timeout), IndirectPing)
    assert relays and not any(m.want_nack for _, m in relays)  # type: ignore[union-attr]
    out = node.tick(now + config.probe_interval)
    assert MemberSuspected(target, 1, "n000") in out.events
    assert node.awareness == 0


def test_awareness_is_capped_and_stretches_the_probe_interval() -> None:
    node = node_in(snapshot_of(200))
    pings: list[float] = []
    for _ in range(2000):  # nobody ever answers: every probe fails, no relay nacks
        now = node.next_deadline()
        if sends_of(node.tick(now), Ping):
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
    digest = old._digest(reply=True)
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
    # the initiator answers the reply digest with what *it* has newer: nothing
    assert not old.receive("n001", reply, 2.1).sends
    out = old.receive("n001", delta, 2.1)
    assert old.record_version("n007") == 4
    assert MemberSuspected("n009", 1, "n001") in out.events


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


def test_a_dead_line_in_a_delta_is_merged_as_a_suspicion() -> None:
    node = node_in(snapshot_of(4), "n000")
    out = node.receive("n001", Delta(members=(MemberDigest("n002", 1, MemberState.DEAD),)), 1.0)
    assert out.events == [MemberSuspected("n002", 1, "n001")]


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
