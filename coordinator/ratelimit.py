"""Requests per principal: a token bucket each, sans-IO (the caller passes the time)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PRINCIPALS = 10_000  # buckets kept; the idlest are forgotten beyond it


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`rate` requests a second per principal, bursts up to `burst`; rate 0 turns it off."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, who: str, now: float) -> float:
        """0 if `who` may go ahead now, else the seconds until it may (for Retry-After)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= MAX_PRINCIPALS:
                idlest = min(self._buckets, key=lambda k: self._buckets[k].at)
                del self._buckets[idlest]
            bucket = self._buckets[who] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
