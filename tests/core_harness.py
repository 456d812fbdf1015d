"""A tiny virtual network for testing the membership core: no sockets, no sleeping.

`Net` holds `MembershipNode`s by id and the simulators' `VirtualClock` of timed
entries (packet deliveries and node wake-ups). Links have a fixed small latency; loss, dead
links and partitions are decided with a seeded RNG, so every run is exact and
repeatable. Signatures are real: the simulator's MACs under per-node keys
(`simulations/signing.py`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from novacron.agent.core.events import Event, Output
from novacron.agent.core.membership.config import MembershipConfig
from novacron.agent.core.membership.node import MembershipNode
from novacron.agent.core.membership.snapshot import ClusterSnapshot
from novacron.protocol.messages import (
    Alive,
    Dead,
    Leave,
    MemberState,
    Message,
    NodeRecord,
    SignedRecord,
    Suspect,
)
from novacron.simulations.clock import VirtualClock
from novacron.simulations.signing import (
    SimKeyring,
    make_signer,
    sign_claim_as_signer,
    verify_uncached,
)

INF = float("inf")
ENTRY = 0  # the agenda's one kind of entry: a=destination, b=sender, c=message (None: wake)
verify = verify_uncached  # checks a record's MAC under its owner's key, then decodes

__all__ = ["make_signer", "verify"]

ClaimT = TypeVar("ClaimT", Alive, Suspect, Dead, Leave)


def sign(claim: ClaimT, key: bytes | None = None) -> ClaimT:
    """`claim` signed by whoever must sign it (with another `key`: forged)."""
    return dataclasses.replace(claim, signature=sign_claim_as_signer(claim, key))


def record_for(node_id: str, load: float = 0.0) -> NodeRecord:
    """Record contents a test node publishes (the node assigns the version)."""
    return NodeRecord(node_id=node_id, version=0, load=load, addresses=(address_of(node_id),))


def address_of(node_id: str) -> str:
    return f"test://{node_id}"


def ids(count: int) -> list[str]:
    return [f"n{i:03d}" for i in range(count)]


def make_node(
    node_id: str, config: MembershipConfig, seed: int = 0, now: float = 0.0
) -> MembershipNode:
    return MembershipNode(
        node_id,
        address=address_of(node_id),
        config=config,
        rng=random.Random(f"{seed}/{node_id}"),
        keyring=SimKeyring(node_id),
        now=now,
    )


@dataclass
class Net:
    """Nodes on a virtual clock, with latency, loss, broken links and partitions."""

    config: MembershipConfig = field(default_factory=MembershipConfig)
    seed: int = 0
    latency: float = 0.002  # one-way delay of every packet
    loss: float = 0.0  # probability any packet is lost
    now: float = 0.0
    nodes: dict[str, MembershipNode] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)  # nodes that stopped dead
    broken: set[frozenset[str]] = field(default_factory=set)  # links dropping everything
    groups: dict[str, int] | None = None  # partition: only same-group nodes talk
    events: list[tuple[float, str, Event]] = field(default_factory=list)
    sent: list[tuple[str, str, Message]] = field(default_factory=list)  # every send
    sent_at: list[float] = field(default_factory=list)  # when each of `sent` was sent
    _agenda: VirtualClock = field(default_factory=VirtualClock)
    _wake: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- building -----------------------------------------------------------------

    def add(self, node: MembershipNode, output: Output | None = None) -> MembershipNode:
        self.nodes[node.node_id] = node
        self._wake[node.node_id] = INF
        if output is not None:
            self.apply(node.node_id, output)
        self._schedule(node.node_id)
        return node

    def start_joined(self, count: int, spacing: float = 0.1) -> list[str]:
        """`count` fresh nodes, one every `spacing` seconds, each joining through
        a random earlier one, each publishing its record first."""
        names = ids(count)
        for i, node_id in enumerate(names):
            node = self.add(make_node(node_id, self.config, self.seed, self.now))
            self.apply(node_id, node.update_record(record_for(node_id), self.now))
            if i:
                seed = names[self.rng.randrange(i)]
                self.apply(node_id, node.join([(seed, address_of(seed))], self.now))
            self.run_for(spacing)
        return names

    def start_converged(self, count: int) -> ClusterSnapshot:
        """`count` nodes sharing one converged snapshot."""
        names = ids(count)
        signed = [make_signer(n)(record_for_version(n, 1)) for n in names]
        snapshot = ClusterSnapshot.converged(
            [(n, address_of(n)) for n in names],
            signed,
            now=self.now,
            verifier=verify,
            sign_claim=sign_claim_as_signer,
        )
        for node_id in names:
            node = MembershipNode.from_snapshot(
                node_id,
                snapshot,
                address=address_of(node_id),
                config=self.config,
                rng=random.Random(f"{self.seed}/{node_id}"),
                keyring=SimKeyring(node_id),
                now=self.now,
            )
            self.add(node)
        return snapshot

    # --- faults -------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        self.crashed.add(node_id)

    def break_link(self, a: str, b: str) -> None:
        self.broken.add(frozenset((a, b)))

    def partition(self, *sides: Iterable[str]) -> None:
        self.groups = {n: i for i, side in enumerate(sides) for n in side}

    def heal(self) -> None:
        self.groups = None

    def _delivers(self, src: str, dst: str) -> bool:
        if dst in self.crashed or src in self.crashed or dst not in self.nodes:
            return False
        if frozenset((src, dst)) in self.broken:
            return False
        if self.groups is not None and self.groups.get(src) != self.groups.get(dst):
            return False
        return not (self.loss and self.rng.random() < self.loss)

    # --- running ------------------------------------------------------------------

    def apply(self, src: str, output: Output) -> None:
        for dst, message in output.sends:
            self.sent.append((src, dst, message))
            self.sent_at.append(self.now)
            if self._delivers(src, dst):
                self._push(self.now + self.latency, dst, src, message)
        self.events.extend((self.now, src, event) for event in output.events)

    def run_until(self, until: float) -> None:
        while self._agenda.peek_time() <= until:
            time, _, _, dst, src, message = self._agenda.pop()
            self.now = max(self.now, time)
            node = self.nodes.get(dst)
            if node is None or dst in self.crashed:
                continue
            if message is not None:
                self.apply(dst, node.receive(src, message, self.now))
            elif time == self._wake.get(dst):
                self._wake[dst] = INF
                self.apply(dst, node.tick(self.now))
                assert node.next_deadline() > self.now, "tick left work due"
            self._schedule(dst)
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def _schedule(self, node_id: str) -> None:
        deadline = max(self.nodes[node_id].next_deadline(), self.now)
        if deadline < self._wake[node_id]:
            self._wake[node_id] = deadline
            self._push(deadline, node_id, node_id, None)

    def _push(self, time: float, dst: str, src: str, message: Message | None) -> None:
        self._agenda.push(time, ENTRY, dst, src, message)

    # --- observations ---------------------------------------------------------------

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.crashed]

    def state_in(self, observer: str, node_id: str) -> MemberState | None:
        member = self.nodes[observer].member(node_id)
        return member.state if member is not None else None

    def all_see(self, node_id: str, state: MemberState) -> bool:
        """Every live node other than `node_id` sees it in `state`."""
        return all(self.state_in(o, node_id) is state for o in self.live() if o != node_id)

    def converged(self) -> bool:
        """Every live node sees every live node alive, and no live node as anything else."""
        live = self.live()
        return all(self.state_in(o, n) is MemberState.ALIVE for o in live for n in live)

    def events_of(self, kind: type) -> list[tuple[float, str, Event]]:
        return [e for e in self.events if isinstance(e[2], kind)]


def record_for_version(node_id: str, version: int, load: float = 0.0) -> NodeRecord:
    return NodeRecord(node_id=node_id, version=version, load=load, addresses=(address_of(node_id),))


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


def signed(node_id: str, version: int, load: float = 0.0) -> SignedRecord:
    return make_signer(node_id)(record_for_version(node_id, version, load))
