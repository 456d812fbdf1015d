"""The virtual network: latency, loss, partitions, crashed and slow nodes.

The network decides the fate of every packet at the moment it is sent: dropped
(and why), or delivered at a given time. It owns the one `random.Random` that
all packet-level randomness comes from, so the same seed gives the same losses
and latencies in the same order.

Model, and why it is shaped this way:

- Latency of one packet = the link's base latency + random jitter. Links
  differ (`link_spread`) the way hosts hanging off one switched fabric do:
  each node has an access delay, half the base latency times a factor in
  [1, 1 + spread) picked by a stable hash of its id, and a link's base is the
  sum of its two ends. That costs one cached number per node, where a table
  per link would need 50 million entries at 10,000 nodes.
- Loss: each packet is dropped independently with probability `loss`.
- Partitions: every node belongs to a group (all in group 0 by default);
  packets between groups are dropped at send time. Healing puts everyone back
  in group 0.
- A crashed node sends nothing and receives nothing; the engine checks at
  delivery time too, because a packet may be in flight when its target dies.
- A slow node serves its inbox late: every packet it receives is handed to it
  `slow_delay` seconds after it arrived, while its own timers still fire on
  time. That is the case Lifeguard was built for: acks that did arrive sit in
  the queue while the probe timer expires, so a slow node accuses healthy peers.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

JITTER_KINDS = ("none", "exponential", "lognormal")


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How long a packet takes: base latency plus jitter, both in seconds."""

    base_latency: float = 0.001  # one-way latency of a typical link
    jitter: str = "lognormal"  # one of JITTER_KINDS
    jitter_mean: float = 0.0005  # mean of the random extra delay
    jitter_sigma: float = 1.0  # lognormal shape: larger means a heavier tail
    link_spread: float = 0.5  # per-node access-delay factor drawn from [1, 1 + spread)

    def __post_init__(self) -> None:
        if self.jitter not in JITTER_KINDS:
            raise ValueError(f"jitter must be one of {', '.join(JITTER_KINDS)}")
        if self.base_latency < 0 or self.jitter_mean < 0 or self.link_spread < 0:
            raise ValueError("latencies and spread must not be negative")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Everything about the network that a scenario or the CLI can set."""

    link: LinkModel = LinkModel()
    loss: float = 0.0  # probability that any one packet is lost
    slow_delay: float = 0.0  # seconds a slow node's inbox lags behind

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")


def access_factor(node: str, spread: float) -> float:
    """The fixed multiplier of `node`'s access delay, in [1, 1 + spread).

    crc32 rather than `hash()`: str hashing is salted per process
    (PYTHONHASHSEED), and the simulation must not depend on it.
    """
    return 1.0 + spread * (zlib.crc32(node.encode()) / 4294967296.0)


def link_base(a: str, b: str, link: LinkModel) -> float:
    """The fixed one-way base latency between `a` and `b` (symmetric)."""
    half = link.base_latency / 2
    spread = link.link_spread
    return half * access_factor(a, spread) + half * access_factor(b, spread)


class Network:
    """Decides, for each packet, whether it arrives and when."""

    def __init__(self, config: NetworkConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng  # the only source of packet-level randomness
        self._loss = config.loss
        self._group: dict[str, int] = {}  # node -> partition group; absent means 0
        self._down: set[str] = set()  # crashed nodes
        self._slow: dict[str, float] = {}  # node -> inbox lag in seconds
        self.drops: Counter[str] = Counter()  # reason -> packets dropped
        self.delivered = 0  # packets handed to the engine for delivery
        link = config.link
        self._link = link
        self._access: dict[str, float] = {}  # node -> its share of the base latency
        self._jitter = link.jitter
        self._jitter_mean = link.jitter_mean
        self._mu = math.log(link.jitter_mean) - link.jitter_sigma**2 / 2 if link.jitter_mean else 0
        self._sigma = link.jitter_sigma

    # --- the per-packet decision (hot path) --------------------------------

    def route(self, src: str, dst: str, now: float) -> float | None:
        """Delivery time of a packet sent now from src to dst, or None if it is lost."""
        if dst in self._down or src in self._down:
            self.drops["crashed"] += 1
            return None
        group = self._group
        if group and group.get(src, 0) != group.get(dst, 0):
            self.drops["partition"] += 1
            return None
        if self._loss and self._rng.random() < self._loss:
            self.drops["loss"] += 1
            return None
        self.delivered += 1
        arrival = now + self.latency(src, dst)
        lag = self._slow.get(dst)
        return arrival + lag if lag else arrival

    def latency(self, src: str, dst: str) -> float:
        """One packet's one-way delay on the link src-dst."""
        access = self._access
        a = access.get(src)
        if a is None:
            a = access[src] = self._access_delay(src)
        b = access.get(dst)
        if b is None:
            b = access[dst] = self._access_delay(dst)
        if self._jitter == "lognormal" and self._jitter_mean:
            # exp(gauss) is lognormvariate with the faster Box-Muller sampler.
            return a + b + math.exp(self._rng.gauss(self._mu, self._sigma))
        if self._jitter == "exponential" and self._jitter_mean:
            return a + b + self._rng.expovariate(1.0 / self._jitter_mean)
        return a + b

    def _access_delay(self, node: str) -> float:
        return self._link.base_latency / 2 * access_factor(node, self._link.link_spread)

    def is_up(self, node: str) -> bool:
        """False while `node` is crashed."""
        return node not in self._down

    # --- faults --------------------------------------------------------------

    def crash(self, node: str) -> None:
        """From now on `node` neither sends nor receives."""
        self._down.add(node)

    def restore(self, node: str) -> None:
        """`node` is reachable again (the engine gives it a fresh process)."""
        self._down.discard(node)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: packets only flow within a group.

        Nodes not named in any group stay in group 0 together with the first
        group, so `partition([[lonely]])` needs a second group to isolate
        `lonely`; the helper `isolate` does exactly that.
        """
        self._group = {}
        for index, members in enumerate(groups):
            for node in members:
                self._group[node] = index + 1

    def isolate(self, node: str) -> None:
        """Cut `node` off from everyone else."""
        self._group = {node: 1}

    def heal(self) -> None:
        """Remove every partition."""
        self._group = {}

    def set_slow(self, nodes: Iterable[str], delay: float | None = None) -> None:
        """Make `nodes` serve their inbox `delay` seconds late (default: the config's)."""
        lag = self.config.slow_delay if delay is None else delay
        for node in nodes:
            if lag > 0:
                self._slow[node] = lag
            else:
                self._slow.pop(node, None)

    @property
    def slow_nodes(self) -> Mapping[str, float]:
        """Currently slow nodes and their inbox lag."""
        return self._slow

    def group_of(self, node: str) -> int:
        """The partition group `node` is in (0 when the network is whole)."""
        return self._group.get(node, 0)
