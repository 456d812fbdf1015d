"""Suspicion timeouts: how long a suspected member has to refute before it is dead.

The math is pure functions (tested without any clock); `Suspicion` only
remembers when the suspicion started and who confirmed it. There are no timers:
the node asks `deadline()` and `tick(now)` acts when it has passed.

Lifeguard's idea (memberlist `suspicion.go`): start with a long timeout, and
shrink it logarithmically as *independent* members report the same suspicion,
so a real failure is declared fast while a lone, possibly sick, accuser cannot
kill a healthy node quickly.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """The minimum suspicion timeout for a cluster of `n` members.

    It grows with log10(n) because gossip needs about that many rounds to reach
    everyone, and the suspect must hear the accusation to refute it.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * probe_interval


def suspicion_total_timeout(n: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """The whole timeout after `n` of the `k` wanted confirmations arrived.

    memberlist's `remainingSuspicionTime` without the elapsed part: starts at
    `max_timeout` with no confirmations and falls to `min_timeout` at `k`,
    logarithmically (early confirmations count most). Floored at the
    millisecond and at `min_timeout`.
    """
    if k < 1:
        return min_timeout
    fraction = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - fraction * (max_timeout - min_timeout)
    return max(math.floor(1000.0 * raw) / 1000.0, min_timeout)


def remaining_suspicion_time(
    n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Time left before a suspicion started `elapsed` seconds ago expires (may be negative)."""
    return suspicion_total_timeout(n, k, min_timeout, max_timeout) - elapsed


class Suspicion:
    """One open suspicion about a member: when it started and who agreed."""

    __slots__ = ("_confirmations", "incarnation", "k", "max_timeout", "min_timeout", "started")

    def __init__(
        self,
        accuser: str,
        incarnation: int,
        started: float,
        k: int,
        min_timeout: float,
        max_timeout: float,
    ) -> None:
        self.incarnation = incarnation  # the incarnation that is suspected
        self.started = started  # when this node began suspecting
        self.k = k  # independent confirmations that bring the timeout to its minimum
        self.min_timeout = min_timeout  # timeout once k confirmations arrived
        self.max_timeout = max_timeout  # timeout with no confirmation
        # The original accuser is not a confirmation; it is remembered so that
        # its own repeats are not counted as independent evidence.
        self._confirmations: set[str] = {accuser}

    @property
    def confirmations(self) -> int:
        """Independent confirmations so far (the original accuser excluded)."""
        return len(self._confirmations) - 1

    def confirm(self, by: str) -> bool:
        """Count `by` as a confirmation; True if it was new (worth re-gossiping).

        Once `k` confirmations arrived more cannot shorten the timeout, so they
        are not counted (and not re-gossiped), as in memberlist.
        """
        if self.confirmations >= self.k or by in self._confirmations:
            return False
        self._confirmations.add(by)
        return True

    def deadline(self) -> float:
        """The time at which the suspect is declared dead unless it refutes."""
        total = suspicion_total_timeout(
            self.confirmations, self.k, self.min_timeout, self.max_timeout
        )
        return self.started + total
