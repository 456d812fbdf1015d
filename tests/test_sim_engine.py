"""The simulator's engine and network model, driven with small stand-in nodes.

These tests do not need the membership core: a stand-in that floods a value
and one that pings on a timer are enough to check time, loss, partitions,
crashes, slow inboxes, wake-up scheduling and determinism.
"""

from __future__ import annotations

import random
import sys

import pytest

from novacron.agent.core.events import Output
from novacron.protocol.codec import encode
from novacron.protocol.messages import (
    Ack,
    Alive,
    Dead,
    Delta,
    Digest,
    Gossip,
    IndirectPing,
    Leave,
    MemberDigest,
    MemberState,
    Message,
    Nack,
    Ping,
    RecordUpdate,
    Revocations,
    SignedRecord,
    Suspect,
)
from novacron.simulations.clock import VirtualClock
from novacron.simulations.engine import Engine
from novacron.simulations.metrics import ByteMeter, PushPullSizer, percentile
from novacron.simulations.network import LinkModel, Network, NetworkConfig, link_base

FIXED = LinkModel(base_latency=0.01, jitter="none", link_spread=0.0)


class Pinger:
    """Pings one peer every `interval` seconds; logs what it sees and when."""

    def __init__(self, node_id: str, peers: list[str], interval: float, now: float = 0.0):
        self.node_id = node_id
        self.peers = peers
        self.interval = interval
        self.next = now + interval
        self.seq = 0
        self.ticks: list[float] = []
        self.pings: list[tuple[float, str]] = []  # (time, sender)
        self.acks: list[tuple[float, int]] = []  # (time, seq)

    def receive(self, sender: str, message: Message, now: float) -> Output:
        if isinstance(message, Ping):
            self.pings.append((now, sender))
            return Output(sends=[(sender, Ack(seq=message.seq))])
        if isinstance(message, Ack):
            self.acks.append((now, message.seq))
        return Output()

    def tick(self, now: float) -> Output:
        out = Output()
        if now >= self.next:
            self.ticks.append(now)
            self.next = now + self.interval
            for peer in self.peers:
                self.seq += 1
                out.sends.append((peer, Ping(seq=self.seq, target=peer)))
        return out

    def next_deadline(self) -> float:
        return self.next


class Flooder:
    """Forwards a value the first time it hears it to `fanout` random peers."""

    def __init__(self, node_id: str, peers: list[str], rng: random.Random, fanout: int = 3):
        self.node_id = node_id
        self.peers = peers
        self.rng = rng
        self.fanout = fanout
        self.heard_at: float | None = None

    def start(self, now: float) -> Output:
        self.heard_at = now
        return self._forward()

    def receive(self, sender: str, message: Message, now: float) -> Output:
        if self.heard_at is not None:
            return Output()
        self.heard_at = now
        return self._forward()

    def _forward(self) -> Output:
        targets = self.rng.sample(self.peers, self.fanout)
        return Output(sends=[(t, Ping(seq=1, target=t)) for t in targets])

    def tick(self, now: float) -> Output:
        return Output()

    def next_deadline(self) -> float:
        return float("inf")


def make_engine(config: NetworkConfig, seed: int = 1) -> Engine:
    return Engine(Network(config, random.Random(seed)), ByteMeter())


def pair(config: NetworkConfig, interval: float = 1.0) -> tuple[Engine, Pinger, Pinger]:
    engine = make_engine(config)
    a, b = Pinger("a", ["b"], interval), Pinger("b", [], 1000.0)
    engine.add("a", a)
    engine.add("b", b)
    return engine, a, b


def test_clock_orders_same_instant_by_insertion() -> None:
    clock = VirtualClock()
    for label in "xyz":
        clock.push(1.0, 2, label)
    clock.push(0.5, 2, "first")
    assert [clock.pop()[3] for _ in range(4)] == ["first", "x", "y", "z"]
    assert clock.now == 1.0


def test_ticks_fire_exactly_at_deadlines_and_packets_take_the_link_latency() -> None:
    engine, a, b = pair(NetworkConfig(link=FIXED))
    engine.run(3.5)
    assert a.ticks == [1.0, 2.0, 3.0]
    assert [t for t, _ in b.pings] == pytest.approx([1.01, 2.01, 3.01])
    assert [t for t, _ in a.acks] == pytest.approx([1.02, 2.02, 3.02])
    assert engine.now == 3.5


def test_an_earlier_deadline_replaces_the_pending_wake_up() -> None:
    engine, a, _ = pair(NetworkConfig(link=FIXED), interval=10.0)
    engine.run(1.0)
    a.next = 2.5  # what a receive() would do: the node now wants to wake earlier
    engine.add("a", a)  # re-register: reads next_deadline again
    engine.run(3.0)
    assert a.ticks == [2.5]


def test_loss_drops_the_configured_fraction() -> None:
    network = Network(NetworkConfig(link=FIXED, loss=0.3), random.Random(7))
    delivered = sum(network.route("a", "b", 0.0) is not None for _ in range(20_000))
    assert delivered / 20_000 == pytest.approx(0.7, abs=0.02)
    assert network.drops["loss"] == 20_000 - delivered


def test_partition_drops_across_groups_until_healed() -> None:
    network = Network(NetworkConfig(link=FIXED), random.Random(1))
    network.partition([["a", "b"], ["c"]])
    assert network.route("a", "b", 0.0) is not None
    assert network.route("a", "c", 0.0) is None
    network.heal()
    assert network.route("a", "c", 0.0) is not None
    network.isolate("c")
    assert network.route("a", "c", 0.0) is None
    assert network.route("a", "b", 0.0) is not None
    assert network.drops["partition"] == 2


def test_partitioned_pinger_gets_no_acks_then_recovers() -> None:
    engine, a, _ = pair(NetworkConfig(link=FIXED))
    engine.at(1.5, lambda: engine.network.isolate("b"))
    engine.at(3.5, engine.network.heal)
    engine.run(4.5)
    assert [seq for _, seq in a.acks] == [1, 4]


def test_crashed_node_neither_ticks_nor_receives_and_restart_is_fresh() -> None:
    engine, a, b = pair(NetworkConfig(link=FIXED))
    engine.at(1.5, lambda: engine.crash("a"))
    engine.run(3.0)
    assert a.ticks == [1.0]
    engine.crash("b")
    engine.add("a", a)  # the old object comes back; ticks resume at its deadline
    engine.run(5.0)
    assert len(b.pings) == 1
    assert engine.network.drops["crashed"] >= 1
    fresh = Pinger("b", [], 1000.0)
    engine.add("b", fresh)
    engine.run(6.5)
    assert len(fresh.pings) == 1 and len(b.pings) == 1


def test_packet_in_flight_to_a_node_that_crashes_is_dropped_on_arrival() -> None:
    engine, _, b = pair(NetworkConfig(link=FIXED))
    engine.at(1.005, lambda: engine.crash("b"))  # the ping left at 1.0, lands at 1.01
    engine.run(1.5)
    assert b.pings == []
    assert engine.stats["dropped-on-arrival"] == 1


def test_slow_node_serves_its_inbox_late_but_its_timers_fire_on_time() -> None:
    engine, a, b = pair(NetworkConfig(link=FIXED, slow_delay=0.7))
    engine.network.set_slow(["a"])
    engine.run(2.5)
    assert a.ticks == [1.0, 2.0]  # timers on time
    assert [t for t, _ in b.pings] == pytest.approx([1.01, 2.01])
    assert [t for t, _ in a.acks] == pytest.approx([1.72])  # served 0.7 s late
    assert engine.network.slow_nodes == {"a": 0.7}


def test_jitter_is_never_negative_and_links_differ_stably() -> None:
    for kind in ("exponential", "lognormal"):
        link = LinkModel(base_latency=0.001, jitter=kind, jitter_mean=0.002, link_spread=1.0)
        network = Network(NetworkConfig(link=link), random.Random(3))
        samples = [network.latency("a", "b") for _ in range(5000)]
        assert min(samples) >= 0.001
        expected = link_base("a", "b", link) + 0.002
        assert sum(samples) / len(samples) == pytest.approx(expected, rel=0.1)
    link = LinkModel(base_latency=0.001, link_spread=1.0)
    assert link_base("a", "b", link) == link_base("b", "a", link)
    assert link_base("a", "b", link) != link_base("a", "c", link)
    assert 0.001 <= link_base("a", "b", link) < 0.002


def flood(seed: int, loss: float = 0.0, size: int = 200) -> list[float | None]:
    link = LinkModel(jitter="exponential", jitter_mean=0.005)
    engine = make_engine(NetworkConfig(link=link, loss=loss), seed)
    ids = [f"n{i:03d}" for i in range(size)]
    nodes = [Flooder(i, [p for p in ids if p != i], random.Random(f"{seed}/{i}")) for i in ids]
    for node in nodes:
        engine.add(node.node_id, node)
    engine.add(ids[0], nodes[0], nodes[0].start(0.0))
    engine.run(10.0)
    return [n.heard_at for n in nodes]


def test_same_seed_same_run_different_seed_different_run() -> None:
    assert flood(5, loss=0.1) == flood(5, loss=0.1)
    assert flood(5, loss=0.1) != flood(6, loss=0.1)


def test_flood_reaches_most_nodes_in_causal_order() -> None:
    times = flood(9)
    heard = [t for t in times if t is not None]
    assert len(heard) > 0.9 * len(times)  # infect-once fanout 3 misses ~e^-3 of nodes
    assert times[0] == 0.0 and min(heard) == 0.0


def test_byte_meter_exact_and_sampled() -> None:
    exact, sampled = ByteMeter(), ByteMeter(sample_every=4)
    message = Ping(seq=1, target="peer")
    for _ in range(8):
        exact.count("me", message)
        sampled.count("me", message)
    assert exact.bytes == sampled.bytes == 8 * exact.size("me", message)
    assert exact.packets == sampled.packets == 8
    assert sampled.mode() == {"mode": "sampled", "every": 4}
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0


def test_byte_meter_sizes_equal_messages_once_and_exactly_for_any_sender() -> None:
    meter = ByteMeter()
    sends: list[tuple[str, Message]] = []
    expected = 0
    for sender in ("a", "node-00001", "x" * 40, "y" * 300):
        batch: list[tuple[str, Message]] = [
            ("peer", Suspect("n", 7, "b", bytes(64))),  # equal values, distinct objects
            ("peer", Dead("n", 70_000, "b", bytes(64))),
            ("peer", Alive("n", 1, "sim://n", signature=bytes(64))),
            ("peer", Ping(seq=3, target="n", gossip=(Suspect("n", 7, "b", bytes(64)),))),
        ]
        meter.count_sends(sender, batch)
        sends.extend(batch)
        batch_bytes = sum(len(encode(message, sender)) for _, message in batch)
        expected += batch_bytes
        assert meter.bytes_by_node[sender] == batch_bytes
    assert meter.bytes == expected
    assert meter.packets == len(sends) == 16
    assert meter.packets_by_type["suspect"] == 4


def test_push_pull_messages_are_sized_exactly_and_not_held() -> None:
    meter = ByteMeter(sample_every=10)
    lines = tuple(MemberDigest(f"n{i}", 1, MemberState.ALIVE) for i in range(500))
    delta, digest = Delta(members=lines), Digest(members=lines)
    held_before = sys.getrefcount(delta), sys.getrefcount(digest)
    meter.count_sends("me", [("peer", delta), ("peer", digest)])
    # A heal sends thousands of answers of thousands of lines each, every one once:
    # the meter must not keep them (and their lines) alive.
    assert (sys.getrefcount(delta), sys.getrefcount(digest)) == held_before
    assert meter.bytes == len(encode(delta, "me")) + len(encode(digest, "me"))


def test_probes_are_sized_exactly_from_their_gossip_items() -> None:
    items: list[Gossip] = [
        Alive("n", 3, "sim://n", certificate=bytes(300), signature=bytes(64)),
        Suspect("m", 2**40, "b", bytes(64)),
        Dead("o", 1, "c"),
        Leave("p", 9, bytes(64)),
        RecordUpdate(SignedRecord("q", 70_000, bytes(500), bytes(64))),
        Revocations(bytes(2000)),
    ]
    meter = ByteMeter()
    for count in (0, 1, 6, 15, 16, 17, 40):
        gossip = tuple(items[i % len(items)] for i in range(count))
        for message in (
            Ping(seq=count, target="t", gossip=gossip),
            IndirectPing(2**33, "t", "r", "sim://t", want_nack=False, gossip=gossip),
            Ack(seq=300, gossip=gossip),
            Nack(seq=1, gossip=gossip),
        ):
            for sender in ("a", "x" * 40):
                assert meter.size(sender, message) == len(encode(message, sender))


def test_push_pull_is_sized_exactly_from_its_parts_those_of_one_range_too() -> None:
    rng = random.Random(1)
    sizer = PushPullSizer()
    for trial in range(100):
        count = 70_000 if trial == 0 else rng.choice([0, 1, 15, 16, 17, 300])
        lines = tuple(
            MemberDigest(
                f"node-{i:05d}",
                rng.choice([1, 127, 128, 255, 256, 70_000, 2**32 + 5]),
                rng.choice(list(MemberState)),
                rng.choice(["", "sim://node:7946"]),
                rng.choice([b"", bytes(64)]),
                rng.choice([b"", bytes(293)]),
            )
            for i in range(count)
        )
        versions = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**31, 2**32, 2**53 - 1]
        records = {f"node-{i:05d}": rng.choice(versions) for i in range(rng.choice([0, 3, 300]))}
        first, end = rng.choice([("", ""), ("", "node-00042"), ("node-00042", "node-01000")])
        digest = Digest(
            lines,
            records,
            rng.random() < 0.5,
            rng.choice([0.0, 12.5]),
            rejoining=rng.random() < 0.5,
            first=first,
            end=end,
        )
        sender = rng.choice(["a", "node-00001", "x" * 40])
        assert sizer.size(sender, digest) == len(encode(digest, sender))
        signed = tuple(
            SignedRecord(node_id, version, bytes(rng.choice([0, 40, 300])), bytes(64))
            for node_id, version in list(records.items())[: rng.choice([0, 1, 20])]
        )
        delta = Delta(lines, signed, rng.choice([b"", bytes(500)]))
        assert sizer.size(sender, delta) == len(encode(delta, sender))
    for records in (
        {f"node-{i:05d}": i % 128 for i in range(300)},  # short ASCII ids, small versions
        {f"node-{i:05d}": i * 1000 for i in range(300)},
        {"n" * 31: 1, "long-" * 8: 2, "nöde": 3, "x" * 300: 70_000},
    ):
        digest = Digest((), records)
        assert sizer.size("me", digest) == len(encode(digest, "me"))
    meter = ByteMeter(sample_every=10)
    digest = Digest((MemberDigest("a", 1, MemberState.ALIVE),), {"a": 1})
    meter.count("me", digest)  # the first of ten: a sampled message would count nothing
    assert meter.bytes == len(encode(digest, "me"))


def test_peak_rate_is_the_busiest_second_per_live_node() -> None:
    meter = ByteMeter()
    message = Ping(seq=1, target="peer")
    size = meter.size("me", message)
    for tenth in range(50):  # 5 s: one message per tenth, ten in the tenths of second 2
        meter.at(tenth / 10, live=4)
        for _ in range(10 if 20 <= tenth < 30 else 1):
            meter.count("me", message)
    assert meter.peak_rate() == pytest.approx(10 * 10 * size / 4)
    assert meter.peak_rate(3.0, 5.0) == pytest.approx(10 * size / 4)
    assert meter.peak_rate(2.5, 2.7) == pytest.approx(10 * size / 4 * 10)  # scaled to 1 s
    assert meter.peak_rate(6.0, 7.0) is None


def test_each_nodes_busiest_second_is_kept() -> None:
    meter = ByteMeter()
    message = Ping(seq=1, target="peer")
    size = meter.size("me", message)
    for tenth in range(30):  # "me" sends once a tenth, five times a tenth in second 1
        meter.at(tenth / 10, live=2)
        for _ in range(5 if 10 <= tenth < 20 else 1):
            meter.count("me", message)
        if tenth == 25:
            meter.count("other", message)
    assert meter.node_peak_second["me"] == 10 * 5 * size
    assert meter.node_peak_second["other"] == meter.size("other", message)


def test_a_message_over_the_budget_counts_once_however_often_it_is_sent() -> None:
    meter = ByteMeter()
    meter.budget = 1_000
    big = Ping(seq=1, target="t", gossip=(Revocations(bytes(2_000)),))
    item = Revocations(bytes(3_000))  # a gossip item: counted once by value
    meter.count_sends("a", [("b", big), ("c", item)])
    # Tens of thousands of small messages in between fill the meter's size caches,
    # which are then cleared; the same message sent again is still the same one.
    for seq in range(70_000):
        meter.count_sends("a", [("b", Ping(seq=seq, target="t")), ("b", Alive(f"n{seq}", 1))])
    meter.count_sends("a", [("d", big), ("e", Revocations(bytes(3_000)))])
    assert meter.over_budget == 2
