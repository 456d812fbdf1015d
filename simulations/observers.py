"""Scenario measurements, computed from the events the nodes report.

Each observer is an engine listener `(now, observer node id, event)` that
tracks one question ("how far has version 7 spread?", "who has declared X
failed?") incrementally, so a 10,000-node scenario never has to poll every
node's view. Observers only read events; they never touch a node.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from novacron.agent.core.events import (
    Event,
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRevoked,
    MemberSuspected,
    RecordUpdated,
)

from .metrics import rounded


class RecordSpread:
    """When did each node first hold version >= `version` of `owner`'s record?"""

    def __init__(self, owner: str, version: int, start: float) -> None:
        self.owner = owner  # whose record is spreading
        self.version = version  # the version we wait for (or newer)
        self.start = start  # when the owner published it
        self.reached: dict[str, float] = {owner: start}  # node -> first time it held it

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if (
            isinstance(event, RecordUpdated)
            and event.record.node_id == self.owner
            and event.record.version >= self.version
            and observer not in self.reached
        ):
            self.reached[observer] = now

    def time_to_fraction(self, population: Iterable[str], fraction: float) -> float | None:
        """Seconds from publication until `fraction` of `population` held it."""
        members = list(population)
        times = sorted(self.reached[n] - self.start for n in members if n in self.reached)
        needed = max(1, math.ceil(fraction * len(members) - 1e-9))
        return rounded(times[needed - 1]) if len(times) >= needed else None

    def coverage(self, population: Iterable[str]) -> float:
        """Fraction of `population` that holds it now."""
        members = list(population)
        return sum(n in self.reached for n in members) / len(members) if members else 1.0


class RevocationSpread:
    """When did each node expel `revoked` (adopting the CA's list that revokes it)?"""

    def __init__(self, revoked: str, start: float) -> None:
        self.revoked = revoked  # the member the CA revoked
        self.start = start  # when the list was handed to its first node
        self.expelled: dict[str, float] = {}  # node -> when it expelled `revoked`

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if (
            isinstance(event, MemberRevoked)
            and event.node_id == self.revoked
            and observer != self.revoked  # it learns its own fate too, and stops
        ):
            self.expelled.setdefault(observer, now)

    def time_to_fraction(self, population: Iterable[str], fraction: float) -> float | None:
        """Seconds from the operator's publication until `fraction` of `population` expelled."""
        members = list(population)
        times = sorted(self.expelled[n] - self.start for n in members if n in self.expelled)
        needed = max(1, math.ceil(fraction * len(members) - 1e-9))
        return rounded(times[needed - 1]) if len(times) >= needed else None


class FailureWatch:
    """Who suspected and who declared `target` failed, and when."""

    def __init__(self, target: str, start: float) -> None:
        self.target = target  # the node that crashed
        self.start = start  # when it crashed
        self.first_suspected: float | None = None  # first suspicion anywhere
        self.first_suspected_by: str | None = None
        self.failed_at: dict[str, float] = {}  # observer -> first MemberFailed time

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if getattr(event, "node_id", None) != self.target or now < self.start:
            return
        if isinstance(event, MemberSuspected) and self.first_suspected is None:
            self.first_suspected, self.first_suspected_by = now, observer
        elif isinstance(event, MemberFailed) and observer not in self.failed_at:
            self.failed_at[observer] = now
            if self.first_suspected is None:  # declared dead without a local suspicion
                self.first_suspected, self.first_suspected_by = now, observer

    def all_failed(self, population: Iterable[str]) -> bool:
        """Has every node of `population` (except the target) declared it failed?"""
        return all(n in self.failed_at for n in population if n != self.target)


@dataclass
class Accusations:
    """Suspicions and failure declarations about nodes that were in fact healthy."""

    healthy: set[str]  # nodes that never crashed (the ones that must not be accused)
    suspected: dict[str, int] = field(default_factory=dict)  # accused -> suspicions
    failed: dict[str, int] = field(default_factory=dict)  # accused -> failure declarations
    refuted: int = 0  # MemberAlive events (a suspicion or failure was taken back)

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if isinstance(event, MemberSuspected) and event.node_id in self.healthy:
            self.suspected[event.node_id] = self.suspected.get(event.node_id, 0) + 1
        elif isinstance(event, MemberFailed) and event.node_id in self.healthy:
            self.failed[event.node_id] = self.failed.get(event.node_id, 0) + 1
        elif isinstance(event, MemberAlive):
            self.refuted += 1


class PairViews:
    """How every node sees every other, pair by (observer, member), in N*N bytes.

    One byte per ordered pair: 0 alive, 1 not alive (suspected or left), 2
    failed; `HEALED` is or-ed in once a pair that was not alive when the
    network healed is seen alive again, so its first recovery is counted once.
    A byte per pair (100 MB at 10,000 nodes) rather than sets of ids, which
    would take gigabytes once thousands of nodes fail thousands of others.
    Counters are kept incrementally, so stop conditions cost O(1) per event.

    `group` says which side of a partition a node is on; pairs across sides
    are "cross" pairs. A failure declared about a member its observer could
    reach (same side, or any pair once `mark_heal` was called) is a false
    positive and counted as such.
    """

    NOT_ALIVE, FAILED, HEALED = 1, 2, 16
    STATE = 3  # the bits of the state

    def __init__(self, ids: Iterable[str], groups: Mapping[str, int] | None = None) -> None:
        self.ids = list(ids)  # every node, in index order
        self.index = {node: i for i, node in enumerate(self.ids)}  # node -> index
        groups = groups or {}
        self.group = [groups.get(node, 0) for node in self.ids]  # index -> side
        n = len(self.ids)
        self.views = bytearray(n * n)  # observer index * n + member index -> state
        sizes = Counter(self.group)
        self.cross_pairs = sum(size * (n - size) for size in sizes.values())  # ordered pairs
        self.cross_not_alive = 0  # cross pairs whose observer does not see the member alive
        self.cross_failed = 0  # cross pairs whose observer declared the member failed
        self.same_not_alive = 0  # pairs on one side that are not alive
        self.healed_at: float | None = None  # when the network healed (None: still split)
        self.recovered: Counter[int] = Counter()  # tenths of a second after heal -> pairs
        self.false_failures = 0  # failure declarations about a reachable member
        self.falsely_failed: set[str] = set()  # members declared failed while reachable

    def mark_heal(self, now: float) -> None:
        """The network is whole from `now`: every pair is reachable."""
        self.healed_at = now

    def __call__(self, now: float, observer: str, event: Event) -> None:
        kind = type(event)
        if kind is MemberFailed:
            state = self.FAILED
        elif kind is MemberSuspected or kind is MemberLeft:
            state = self.NOT_ALIVE
        elif kind is MemberAlive or kind is MemberJoined:
            state = 0
        else:
            return
        o = self.index.get(observer)
        m = self.index.get(event.node_id)  # type: ignore[union-attr]
        if o is None or m is None or o == m:
            return
        cross = self.group[o] != self.group[m]
        if state == self.FAILED and (not cross or self.healed_at is not None):
            self.false_failures += 1
            self.falsely_failed.add(event.node_id)  # type: ignore[union-attr]
        self._set(o * len(self.ids) + m, state, cross, now)

    def _set(self, pair: int, state: int, cross: bool, now: float) -> None:
        old_byte = self.views[pair]
        old = old_byte & self.STATE
        if old == state:
            return
        healed = old_byte & self.HEALED
        if state == 0 and self.healed_at is not None and not healed:
            healed = self.HEALED
            self.recovered[int((now - self.healed_at) * 10)] += 1
        self.views[pair] = state | healed
        if cross:
            self.cross_not_alive += (state != 0) - (old != 0)
            self.cross_failed += (state == self.FAILED) - (old == self.FAILED)
        else:
            self.same_not_alive += (state != 0) - (old != 0)

    def hold_cross_failed(self) -> None:
        """Every observer holds every member across the partition failed, as nodes
        started from a split's views (`Cluster.start_split`) do."""
        n = len(self.ids)
        rows = {
            side: bytes(self.FAILED if g != side else 0 for g in self.group)
            for side in set(self.group)
        }
        for o, side in enumerate(self.group):
            self.views[o * n : (o + 1) * n] = rows[side]
        self.cross_not_alive = self.cross_failed = self.cross_pairs

    def not_alive_pairs(self) -> int:
        """Pairs (on any side) whose observer does not see the member alive."""
        return self.cross_not_alive + self.same_not_alive

    def all_cross_failed(self) -> bool:
        """Has every observer declared every member across the partition failed?"""
        return self.cross_failed == self.cross_pairs

    def all_alive(self) -> bool:
        """Does every observer see every member alive?"""
        return self.cross_not_alive == 0 and self.same_not_alive == 0

    def failed_by(self, observer: str) -> int:
        """How many members `observer` holds failed (O(N))."""
        n = len(self.ids)
        start = self.index[observer] * n
        row = self.views[start : start + n]
        return sum(1 for b in row if b & self.STATE == self.FAILED)

    def holding_failed(self, member: str) -> int:
        """How many observers hold `member` failed (O(N))."""
        n, m = len(self.ids), self.index[member]
        return sum(1 for o in range(n) if self.views[o * n + m] & self.STATE == self.FAILED)

    def recovery_times(self, fractions: Iterable[float]) -> dict[str, float | None]:
        """Seconds after the heal by which each fraction of the recovered pairs was alive."""
        total = sum(self.recovered.values())
        ordered = sorted(self.recovered.items())
        found: dict[str, float | None] = {}
        for fraction in fractions:
            needed = max(1, math.ceil(fraction * total - 1e-9))
            seen = 0
            found[_percent_key(fraction)] = None
            for tenth, count in ordered:
                seen += count
                if seen >= needed:
                    found[_percent_key(fraction)] = rounded((tenth + 1) / 10)
                    break
        return found


def _percent_key(fraction: float) -> str:
    text = f"{fraction * 100:g}".replace(".", "_")
    return f"p{text}"


class Restarts:
    """Nodes going down and coming back (churn), and what the others made of it.

    A node's current life begins at `floor[node]`: its new process refutes
    every claim about its previous life, so its incarnations from then on are
    above the last one that life signed. A failure declared about a node that
    is up, at an incarnation of its current life, is a false positive; one at
    an older incarnation is a late verdict on its previous life.
    """

    def __init__(self, live: Collection[str]) -> None:
        self.live = live  # the nodes up now (a live view, such as the cluster's members)
        self.floor: dict[str, int] = {}  # node -> lowest incarnation of its current life
        self.down_since: dict[str, float] = {}  # nodes down now -> since when
        self.back_at: dict[str, float] = {}  # node -> when its current life began
        self.declared: dict[str, set[str]] = {}  # down node -> observers that failed it
        self.detected: set[str] = set()  # down nodes every live node has failed
        self.ever_down: set[str] = set()  # nodes that went down at some point
        self.false_failures: Counter[str] = Counter()  # up node -> declarations (current life)
        self.late_failures = 0  # declarations about a previous life, after the node returned
        self.detected_after: list[float] = []  # down time until every live node failed it

    def went_down(self, node: str, last_incarnation: int, now: float) -> None:
        """`node` stops; its next life's incarnations will be above `last_incarnation`."""
        self.floor[node] = last_incarnation + 1
        self.down_since[node] = now
        self.declared[node] = set()
        self.ever_down.add(node)

    def came_back(self, node: str, now: float) -> None:
        """`node` runs again (a fresh process)."""
        self.back_at[node] = now
        del self.down_since[node]
        del self.declared[node]
        self.detected.discard(node)

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if type(event) is not MemberFailed:
            return
        node = event.node_id
        since = self.down_since.get(node)
        if since is None:
            if event.incarnation >= self.floor.get(node, 0):
                self.false_failures[node] += 1
            else:
                self.late_failures += 1
        elif node not in self.detected:
            declared = self.declared[node]
            declared.add(observer)
            if len(declared) >= len(self.live) and all(n in declared for n in self.live):
                self.detected.add(node)
                self.detected_after.append(now - since)
