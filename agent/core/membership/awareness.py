"""Lifeguard local health awareness: slow down when we are the slow one.

A node whose own CPU or network is struggling misses Acks and then wrongly
suspects healthy peers. Lifeguard has each node keep a score of evidence
about its *own* health and stretch its probe interval and timeout by
`score + 1`, so a sick node probes less aggressively and gives others more
time before accusing them. (memberlist: `awareness.go`.)

Evidence, as memberlist applies it:

- +1 when a probe gets no Ack and no relay could vouch for us (no nacks
  expected), or +1 per relay that did not even send a Nack;
- -1 when a probe gets its Ack in time;
- +1 when we have to refute a suspicion about ourselves.
"""

from __future__ import annotations


class Awareness:
    """A bounded health score: 0 is healthy, `max_multiplier - 1` is worst."""

    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max_multiplier  # scores are clamped to 0..max-1
        self._score = 0  # current evidence that we are unhealthy

    @property
    def score(self) -> int:
        """The current health score (0 = healthy)."""
        return self._score

    def apply_delta(self, delta: int) -> None:
        """Add evidence, keeping the score within 0..max-1."""
        self._score = min(max(self._score + delta, 0), self._max - 1)

    def scale(self, timeout: float) -> float:
        """Stretch a timeout by how unhealthy we believe we are."""
        return timeout * (self._score + 1)
