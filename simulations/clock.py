"""The virtual clock: one heap of timestamped entries with a deterministic order.

Every happening in a simulation (a packet arriving, a node's timer falling
due, a scenario action such as a crash) is an entry on one heap. Entries are
plain tuples `(time, seq, kind, a, b, c)`: `seq` is a global counter, so two
entries for the same instant pop in the order they were pushed and the heap
never compares the payload. That tie-break is what makes a run reproducible:
nothing depends on object identity, hashing or dict order.

Tuples (rather than small classes) because a 10,000-node run pushes tens of
millions of entries; tuple creation and comparison are the cheapest Python has.
"""

from __future__ import annotations

import heapq
from typing import Any

Entry = tuple[float, int, int, Any, Any, Any]
"""(time, seq, kind, a, b, c): `kind` tells the engine how to read a, b, c."""


class VirtualClock:
    """Simulated time plus the agenda of everything that is still to happen."""

    __slots__ = ("heap", "now", "seq")

    def __init__(self, start: float = 0.0) -> None:
        self.now: float = start  # time of the entry being processed
        self.heap: list[Entry] = []  # min-heap ordered by (time, seq); the engine pops it
        self.seq = 0  # tie-break counter: insertion order within one instant

    def push(self, time: float, kind: int, a: Any = None, b: Any = None, c: Any = None) -> None:
        """Schedule an entry; `time` earlier than `now` is clamped (no time travel)."""
        if time < self.now:
            time = self.now
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, a, b, c))

    def pop(self) -> Entry:
        """Remove the earliest entry and advance `now` to its time."""
        entry = heapq.heappop(self.heap)
        self.now = entry[0]
        return entry

    def peek_time(self) -> float:
        """Time of the earliest entry, or infinity when the agenda is empty."""
        return self.heap[0][0] if self.heap else float("inf")

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def pushed(self) -> int:
        """How many entries were ever scheduled (a cost figure for reports)."""
        return self.seq
