"""A population of real membership cores on one engine, and the faults to apply.

`Cluster` is where the simulator meets the sans-IO core: it builds
`MembershipNode`s (fresh, or from a converged `ClusterSnapshot`), gives each a
deterministic RNG, an HMAC signer and the shared verifier, and offers the
operations scenarios need: crash, restart, partition, slow nodes, record
updates. The core itself runs unchanged.

Determinism: node ids are zero-padded and always handled in sorted order; the
network's RNG is `random.Random(seed)`; a node's RNG is seeded with the string
`"{seed}/{node id}/{life}"` (string seeds are hashed with SHA-512 by `random`,
independent of PYTHONHASHSEED), where `life` counts restarts so a restarted
node does not replay its previous life's choices.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from novacron.agent.core.events import Output
from novacron.agent.core.membership.config import MembershipConfig
from novacron.agent.core.membership.node import MembershipNode
from novacron.agent.core.membership.pushpull import LineCache
from novacron.agent.core.membership.snapshot import ClusterSnapshot
from novacron.protocol.messages import NodeRecord, Resources

from .engine import Engine
from .metrics import ByteMeter
from .network import Network, NetworkConfig
from .signing import (
    ClaimCache,
    SimKeyring,
    VerificationCache,
    make_signer,
    sign_claim_as_signer,
)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Everything that defines a run, apart from the scenario's script."""

    nodes: int = 100
    seed: int = 1
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    bytes_sample_every: int = 1  # 1: encode every message; k: every k-th, scaled
    verify_cache: bool = True  # share record verifications between simulated nodes


def node_ids(count: int) -> list[str]:
    """Ids that sort in creation order: node-00000, node-00001, ..."""
    width = max(5, len(str(count - 1)))
    return [f"node-{i:0{width}d}" for i in range(count)]


def address_of(node_id: str) -> str:
    """A node's (fictional) address: the simulator routes by id, not address."""
    return f"sim://{node_id}:7946"


def initial_record(node_id: str, version: int = 1) -> NodeRecord:
    """What a freshly started simulated host would publish."""
    return NodeRecord(
        node_id=node_id,
        version=version,
        capacity=Resources(vcpus=16, memory_mib=65536, disk_gib=500),
        usage=Resources(vcpus=1.0, memory_mib=2048, disk_gib=20),
        addresses=(address_of(node_id),),
        libvirt_uri="qemu:///system",  # local: peers reach it through its address
        labels={"site": "sim"},
    )


class Cluster:
    """Real `MembershipNode`s under simulation, plus handles to break things."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.ids = node_ids(settings.nodes)  # every node that ever exists, sorted
        self.network = Network(settings.network, random.Random(settings.seed))
        self.meter = ByteMeter(settings.bytes_sample_every)
        self.meter.budget = settings.membership.packet_budget
        self.engine = Engine(self.network, self.meter)
        self.verifier = VerificationCache(settings.verify_cache)
        self.claims = ClaimCache() if settings.verify_cache else None  # shared claim checks
        # push-pull lines shared by every process started fresh (as a snapshot's nodes share its)
        self.lines = LineCache.shared_by(settings.nodes)
        self.members: dict[str, MembershipNode] = {}  # current process of each live node
        self.crashed: set[str] = set()  # nodes currently down
        self.ever_crashed: set[str] = set()  # nodes that were down at some point
        self.latest_version: dict[str, int] = {}  # owner -> newest version it published
        self._lives: dict[str, int] = {}  # node -> number of processes it has had

    # --- construction ------------------------------------------------------------

    def rng_for(self, node_id: str) -> random.Random:
        """The RNG of `node_id`'s current process (a new stream per restart)."""
        life = self._lives.get(node_id, 0)
        return random.Random(f"{self.settings.seed}/{node_id}/{life}")

    def start_converged(self, now: float = 0.0) -> None:
        """Every node alive, knowing everyone and every record (shared snapshot)."""
        snapshot = self._converged_snapshot(now)
        for node_id in self.ids:
            self._start_from(node_id, snapshot, now)

    def start_split(self, sides: list[list[str]], now: float = 0.0) -> None:
        """Every node alive, each side holding every other side failed, as after a
        partition held long, and the network split so: a heal without the hours of
        simulated failure detection before it (one shared view per side)."""
        converged = self._converged_snapshot(now)
        for side in sides:
            others = set(self.ids).difference(side)
            snapshot = converged.with_failed(others)
            for node_id in side:
                self._start_from(node_id, snapshot, now)
        self.network.partition(sides)

    def _start_from(self, node_id: str, snapshot: ClusterSnapshot, now: float) -> None:
        node = MembershipNode.from_snapshot(
            node_id,
            snapshot,
            address=address_of(node_id),
            config=self.settings.membership,
            rng=self.rng_for(node_id),
            keyring=SimKeyring(node_id, self.verifier, self.claims),
            now=now,
        )
        self._register(node_id, node, None)

    def _converged_snapshot(self, now: float) -> ClusterSnapshot:
        records = [make_signer(n)(initial_record(n)) for n in self.ids]
        for n in self.ids:
            self.latest_version[n] = 1
        members = [(n, address_of(n)) for n in self.ids]
        return ClusterSnapshot.converged(
            members, records, now=now, verifier=self.verifier, sign_claim=sign_claim_as_signer
        )

    def start_fresh(self, node_id: str, seeds: Iterable[str], now: float) -> None:
        """Start a new process for `node_id` that joins through `seeds`."""
        self._lives[node_id] = self._lives.get(node_id, -1) + 1
        node = MembershipNode(
            node_id,
            address=address_of(node_id),
            config=self.settings.membership,
            rng=self.rng_for(node_id),
            keyring=SimKeyring(node_id, self.verifier, self.claims),
            now=now,
            line_cache=self.lines,
        )
        output = node.join([(s, address_of(s)) for s in seeds], now)
        self._register(node_id, node, output)

    def _register(self, node_id: str, node: MembershipNode, output: Output | None) -> None:
        self.members[node_id] = node
        self._lives.setdefault(node_id, 0)
        self.crashed.discard(node_id)
        self.engine.add(node_id, node, output)

    # --- faults ------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        """The host dies: its process is gone, packets to it are lost."""
        self.engine.crash(node_id)
        self.members.pop(node_id, None)
        self.crashed.add(node_id)
        self.ever_crashed.add(node_id)

    def restart(self, node_id: str, seed_count: int = 3) -> None:
        """A crashed host comes back as a fresh process joining via live seeds."""
        live = self.live_ids()
        rng = random.Random(f"{self.settings.seed}/restart/{node_id}/{self.engine.now}")
        seeds = rng.sample(live, min(seed_count, len(live)))
        self.start_fresh(node_id, seeds, self.engine.now)

    def update_record(self, node_id: str, load: float) -> int:
        """`node_id` publishes a changed record; returns the version it got."""
        node = self.members[node_id]
        current = self.latest_version.get(node_id, 0)
        record = replace(initial_record(node_id, current + 1), load=load)
        output = node.update_record(record, self.engine.now)
        version = int(node.record_version(node_id))
        self.latest_version[node_id] = version
        self.engine.feed(node_id, output)
        return version

    # --- queries -----------------------------------------------------------------

    def live_ids(self) -> list[str]:
        """Ids of nodes that are up, sorted."""
        return [n for n in self.ids if n not in self.crashed]
