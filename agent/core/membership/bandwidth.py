"""How many bytes of gossip a node may send now: one token bucket for the channel.

Gossip leaves a node two ways: piggybacked on probe messages (Ping, Ack,
IndirectPing, Nack) and in gossip rounds (a packet to each of a few members
every gossip interval). Each way alone has a per-packet budget, but together,
under load, they add up past it: a mesh at 10% loss refuting suspicions sent
24 KB/s per node where memberlist's channel is 21 KB/s (3 packets of
1,400 bytes every 200 ms). So both draw on one bucket: `rate` bytes per
second, at most `burst` at once; what the bucket cannot pay waits in the
broadcast queue, which sends the least-transmitted items first.

The bucket may go briefly into debt: an item larger than what is left goes
out alone (a large record is never stuck), and the debt is paid back before
anything else is sent. Pure arithmetic over the caller's clock.
"""

from __future__ import annotations

import math


class GossipBudget:
    """A token bucket of bytes, refilled at `rate` per second up to `burst`."""

    __slots__ = ("_since", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate  # bytes per second earned back
        self.burst = burst  # the most that can be spent at once
        self._tokens = burst  # bytes that may be sent now (negative: in debt)
        self._since = now  # when `_tokens` was last brought up to date

    def available(self, now: float) -> float:
        """Bytes that may be sent at `now` (at most `burst`; negative while in debt)."""
        if now > self._since:
            self._tokens = min(self.burst, self._tokens + (now - self._since) * self.rate)
            self._since = now
        return self._tokens

    def spend(self, size: int, *, floor: float = -math.inf) -> None:
        """Account for `size` bytes just sent; on their account the debt goes no deeper
        than `floor` (a debt already deeper stays as it is)."""
        self._tokens = max(self._tokens - size, min(self._tokens, floor))
