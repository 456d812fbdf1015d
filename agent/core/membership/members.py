"""The member table: who is in the cluster, at which incarnation, in which state.

Copy-on-write by design. A table may sit on a shared, read-only *base*
(a `ClusterSnapshot`'s members, at incarnation 1) and keep only its
own differences in a small *overlay* dict. Ten thousand simulated nodes then
share one 10,000-entry base instead of holding 10^8 entries, and each node's
memory grows with what changed, not with the cluster size.

Members are immutable values (`Member`); a change replaces the value in the
overlay, so the shared base is never written. Members are never removed: a
failed member stays (as DEAD) so it can be retried when a partition heals.

Positions: every member has a stable index (base ids first, in the base's
order, then members learnt later, in arrival order). Random sampling and the
probe order work on indices, so neither copies the member list.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from novacron.protocol.messages import MemberState

T = TypeVar("T")
SCAN_LIMIT = 64  # tables this small are sampled by scanning; larger by rejection


@dataclass(frozen=True, slots=True)
class Member:
    """What this node believes about one member, as an immutable value."""

    node_id: str  # the member's id
    address: str  # where the driver reaches it ("" if never announced)
    incarnation: int  # the member's own counter; higher always wins
    state: MemberState  # alive, suspect, dead or left
    state_since: float  # when this node moved it into `state`
    # The member's own signature of its Alive at (incarnation, address), or of
    # its Leave once left: what push-pull hands on so others can check it.
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """The public view of one member, as `MembershipNode.members()` returns it."""

    node_id: str  # the member's id
    address: str  # where the driver reaches it
    incarnation: int  # the member's incarnation as this node knows it
    state: MemberState  # alive, suspect, dead or left
    state_since: float  # when this node moved it into `state`
    last_heard: float  # last direct protocol message from it (or `state_since`)


class MemberTable:
    """Members by id: a shared base plus a private overlay of changes."""

    __slots__ = (
        "_base",
        "_base_dead",
        "_base_ids",
        "_base_sorted",
        "_counts",
        "_dead",
        "_extra_ids",
        "_overlay",
        "_sorted",
    )

    def __init__(
        self,
        base: Mapping[str, Member] | None = None,
        base_ids: tuple[str, ...] = (),
        base_counts: Mapping[MemberState, int] | None = None,
        base_dead: Sequence[str] = (),
        *,
        base_sorted: bool = False,
    ) -> None:
        """An empty table, or one over a shared base.

        `base_counts` (members per state in the base) saves an O(N) scan per
        table when many tables share one base; `base_dead` must then name the
        base's DEAD members (a converged snapshot has none), and is shared, not
        copied, when a tuple. `base_sorted` says `base_ids` is in id order, so
        tables share it for `ids_in`.
        """
        self._base: Mapping[str, Member] = base if base is not None else {}  # shared, read-only
        self._base_ids = base_ids  # the base's ids in index order (shared)
        self._overlay: dict[str, Member] = {}  # this node's changes and additions
        self._extra_ids: list[str] = []  # ids not in the base, in arrival order
        self._counts: dict[MemberState, int] = dict.fromkeys(MemberState, 0)  # per state
        # DEAD members: the base's (shared; each counts while not in the overlay), then
        # the overlay's in the order they died. A healed side's node would otherwise
        # copy the thousands the base holds failed, and keep the dict's size after
        # they come back (a dict never shrinks).
        self._base_dead = tuple(base_dead)  # the same tuple when given one
        self._dead: dict[str, None] = {}  # ids DEAD in the overlay (ordered set)
        self._base_sorted = base_sorted  # whether `_base_ids` is in id order
        self._sorted: Sequence[str] | None = None  # every id in id order (built on demand)
        if base_counts is not None:
            self._counts.update(base_counts)
            return
        for member in self._base.values():
            self._counts[member.state] += 1
        dead = MemberState.DEAD
        self._base_dead = tuple(m.node_id for m in self._base.values() if m.state is dead)

    def __len__(self) -> int:
        """Every member ever known, in any state (this node included)."""
        return len(self._base_ids) + len(self._extra_ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._overlay or node_id in self._base

    def get(self, node_id: str) -> Member | None:
        """The current value for `node_id`, or None if it was never heard of."""
        member = self._overlay.get(node_id)
        return member if member is not None else self._base.get(node_id)

    def put(self, member: Member) -> None:
        """Add or replace a member (in the overlay; the base is never written)."""
        old = self.get(member.node_id)
        if old is None:
            self._extra_ids.append(member.node_id)
            self._sorted = None
        else:
            self._counts[old.state] -= 1
            if old.state is MemberState.DEAD:
                self._dead.pop(old.node_id, None)  # absent if it was the base's value
        self._counts[member.state] += 1
        if member.state is MemberState.DEAD:
            self._dead[member.node_id] = None
        self._overlay[member.node_id] = member

    def is_shared(self, member: Member) -> bool:
        """Whether `member` is the base's own value (unchanged since the snapshot)."""
        return self._base.get(member.node_id) is member

    def count(self, state: MemberState) -> int:
        """How many members are in `state`."""
        return self._counts[state]

    def dead_ids(self) -> list[str]:
        """Ids of DEAD members, the base's first, then in the order they died (a copy).

        A member once in the overlay stays there, so the base's failed that came
        back can be forgotten: once most have, this table keeps its own tuple of
        the rest, and a node rejoining after a heal, asking every tick, scans the
        few it still holds failed rather than the thousands the base did."""
        if not self._base_dead:
            return list(self._dead)
        overlay = self._overlay
        still = [node_id for node_id in self._base_dead if node_id not in overlay]
        if len(still) * 2 < len(self._base_dead):
            self._base_dead = tuple(still)
        return still + list(self._dead)

    def ids_in(self, first: str, end: str) -> list[str]:
        """Member ids from `first` (inclusive) to `end` (exclusive), in id order; ""
        leaves that side open. O(log N) plus the ids returned, once the order is built
        (shared with the base when nothing was added to it)."""
        ordered = self._sorted
        if ordered is None:
            if self._base_sorted and not self._extra_ids:
                ordered = self._base_ids
            else:
                ordered = tuple(sorted((*self._base_ids, *self._extra_ids)))
            self._sorted = ordered
        lo = bisect.bisect_left(ordered, first) if first else 0
        hi = bisect.bisect_left(ordered, end) if end else len(ordered)
        return list(ordered[lo:hi])

    def id_at(self, index: int) -> str:
        """The id at a stable position (see the module docstring)."""
        base_count = len(self._base_ids)
        return self._base_ids[index] if index < base_count else self._extra_ids[index - base_count]

    def __iter__(self) -> Iterator[Member]:
        """All members, base order then arrivals: O(N), for push-pull and views."""
        overlay = self._overlay
        for node_id in self._base_ids:
            yield overlay.get(node_id) or self._base[node_id]
        for node_id in self._extra_ids:
            yield overlay[node_id]

    def map_members(
        self, shared: Mapping[str, T], fresh: Callable[[Member], T], *, skip: str = ""
    ) -> list[T]:
        """One value per member, in `__iter__`'s order: `shared[id]` for a member that
        is still the base's own value (when `shared` has it), else `fresh(member)`; the
        member `skip` always gets `fresh`. Members untouched since the base cost one
        dictionary lookup each, with no `Member` read: push-pull digests at 10,000."""
        overlay, base, get = self._overlay, self._base, shared.get
        values: list[T | None] = [
            None if node_id in overlay or node_id == skip else get(node_id)
            for node_id in self._base_ids
        ]
        for position in [i for i, value in enumerate(values) if value is None]:
            node_id = self._base_ids[position]
            member = overlay.get(node_id) or base[node_id]
            value = get(node_id) if node_id != skip and base[node_id] is member else None
            values[position] = fresh(member) if value is None else value
        values.extend(fresh(overlay[node_id]) for node_id in self._extra_ids)
        return cast(list[T], values)

    def overlay_size(self) -> int:
        """How many members this node holds privately (memory diagnostics)."""
        return len(self._overlay)

    def sample(self, rng: random.Random, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to `k` distinct random members for which `accept` holds.

        Large tables are sampled by drawing random indices (no copy of the
        member list); only when too few draws pass `accept` does it fall back
        to one scan, which returns every acceptable member if there are fewer
        than `k`.
        """
        total = len(self)
        if k <= 0 or total == 0:
            return []
        if total > SCAN_LIMIT:
            found = self._sample_by_index(rng, k, accept, total)
            if len(found) == k:
                return found
        candidates = [m for m in self if accept(m)]
        return candidates if len(candidates) <= k else rng.sample(candidates, k)

    def _sample_by_index(
        self, rng: random.Random, k: int, accept: Callable[[Member], bool], total: int
    ) -> list[Member]:
        found: list[Member] = []
        seen: set[int] = set()
        base, base_ids, overlay = self._base, self._base_ids, self._overlay
        base_count = len(base_ids)
        extra_ids = self._extra_ids
        randrange = rng.randrange
        for _ in range(8 * k + 8):
            index = randrange(total)
            if index in seen:
                continue
            seen.add(index)
            # self.get(self.id_at(index)), inlined: this is every gossip round's hot path
            node_id = base_ids[index] if index < base_count else extra_ids[index - base_count]
            member = overlay.get(node_id)
            if member is None:
                member = base.get(node_id)
            if member is not None and accept(member):
                found.append(member)
                if len(found) == k:
                    break
        return found


class ProbeOrder:
    """A fresh random permutation of member positions each round, in O(1) memory.

    SWIM probes members round-robin in a shuffled order so every member is
    probed once per round (bounded detection time). Instead of shuffling a
    per-node list, each round draws a random start and a random stride coprime
    with the round's size: `start + i * stride (mod size)` visits every
    position exactly once.
    """

    __slots__ = ("_pos", "_size", "_start", "_stride")

    def __init__(self) -> None:
        self._start = 0  # first position of this round
        self._stride = 1  # step between positions, coprime with `_size`
        self._size = 0  # table size when the round started
        self._pos = 0  # how many positions this round has produced

    def next_index(self, rng: random.Random, size: int) -> int:
        """The next position to consider; starts a new round when one is complete."""
        if self._pos >= self._size:
            self._new_round(rng, size)
        index = (self._start + self._pos * self._stride) % self._size
        self._pos += 1
        return index

    def _new_round(self, rng: random.Random, size: int) -> None:
        self._size = max(size, 1)
        self._pos = 0
        self._start = rng.randrange(self._size)
        self._stride = 1
        if self._size > 2:
            stride = rng.randrange(1, self._size)
            while math.gcd(stride, self._size) != 1:
                stride = rng.randrange(1, self._size)
            self._stride = stride
