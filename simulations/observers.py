"""Scenario measurements, computed from the events the nodes report.

Each observer is an engine listener `(now, observer node id, event)` that
tracks one question ("how far has version 7 spread?", "who has declared X
failed?") incrementally, so a 10,000-node scenario never has to poll every
node's view. Observers only read events; they never touch a node.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
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


class PartitionWatch:
    """How the sides of a partition see each other, pair by (observer, member) pair.

    Only pairs across groups are tracked. `failed` holds members an observer
    has declared failed; `not_alive` also holds suspected and left ones. A
    `MemberAlive` or `MemberJoined` clears both. Counters are kept
    incrementally so the scenario's stop conditions cost O(1) per event.
    """

    def __init__(self, groups: Mapping[str, int]) -> None:
        self.group = dict(groups)  # node -> side of the partition
        sizes = Counter(self.group.values())
        total = len(self.group)
        self.pairs = sum(size * (total - size) for size in sizes.values())  # ordered pairs
        self.failed: dict[str, set[str]] = {n: set() for n in self.group}
        self.not_alive: dict[str, set[str]] = {n: set() for n in self.group}
        self.failed_pairs = 0  # pairs where the observer declared the member failed
        self.not_alive_pairs = 0  # pairs where the observer does not see the member alive

    def __call__(self, now: float, observer: str, event: Event) -> None:
        side = self.group.get(observer)
        member = getattr(event, "node_id", None)
        if side is None or member is None or self.group.get(member, side) == side:
            return
        if isinstance(event, MemberFailed):
            self._add(self.failed[observer], member, failed=True)
            self._add(self.not_alive[observer], member, failed=False)
        elif isinstance(event, MemberSuspected | MemberLeft):
            self._add(self.not_alive[observer], member, failed=False)
        elif isinstance(event, MemberAlive | MemberJoined):
            self._remove(self.failed[observer], member, failed=True)
            self._remove(self.not_alive[observer], member, failed=False)

    def _add(self, view: set[str], member: str, *, failed: bool) -> None:
        if member not in view:
            view.add(member)
            if failed:
                self.failed_pairs += 1
            else:
                self.not_alive_pairs += 1

    def _remove(self, view: set[str], member: str, *, failed: bool) -> None:
        if member in view:
            view.remove(member)
            if failed:
                self.failed_pairs -= 1
            else:
                self.not_alive_pairs -= 1

    def all_failed(self) -> bool:
        """Has every observer declared every member across the partition failed?"""
        return self.failed_pairs == self.pairs

    def all_alive(self) -> bool:
        """Does every observer see every member across the partition alive?"""
        return self.not_alive_pairs == 0
