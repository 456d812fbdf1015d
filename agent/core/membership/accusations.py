"""How many accusations (Suspect, Dead) each member may make: a token bucket per accuser.

An honest member accuses at most the target of each failed probe, once as a
suspect and once as dead, so at most about two claims per probe interval;
Lifeguard slows it further when it is unwell. A member that accuses faster is
lying or broken, and every accusation it makes costs its victim a refutation
and the mesh a round of gossip. Each accuser therefore gets a bucket of
`burst` accusations, refilled at `rate` per second; what does not fit is
dropped and counted. Pure bookkeeping over the caller's clock.
"""

from __future__ import annotations


class AccusationBudget:
    """Token buckets of accusations, one per accuser."""

    __slots__ = ("_buckets", "burst", "max_accusers", "rate")

    def __init__(self, rate: float, burst: float, max_accusers: int = 100_000) -> None:
        self.rate = rate  # accusations per second an accuser earns back
        self.burst = burst  # the most an accuser may make at once
        self.max_accusers = max_accusers  # buckets kept; beyond it, full ones are forgotten
        self._buckets: dict[str, tuple[float, float]] = {}  # accuser -> (tokens, as of when)

    def allow(self, accuser: str, now: float) -> bool:
        """Spend one of `accuser`'s accusations at `now`; False when none is left."""
        tokens, since = self._buckets.get(accuser, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        if tokens < 1.0:
            self._buckets[accuser] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_accusers and accuser not in self._buckets:
            self._forget_full(now)
        self._buckets[accuser] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        refill = self.burst / self.rate if self.rate > 0 else float("inf")
        self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] < refill}
