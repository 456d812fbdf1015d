"""Push-pull with members that come back from failure: how a healed split catches up.

When a partition heals, each side holds the other failed at incarnation n,
and only each member's own Alive at n + 1 changes that. Every member refutes
within seconds, but gossip then carries the N refutations one item at a time
through a rate-capped channel, each item sent about `retransmit_limit` times
by every node: the wait for the last pair grows as N log N over the rate.
Serf answers a reconnected member with a full push-pull; so do we: the first
member that comes back makes us plan one push-pull with a member that came
back, whose answer carries every refutation it holds in one exchange.

Rules:

- a pull is planned when a member we held failed comes back, damped as
  Serf damps reconnects (probability failed/alive): after a split nearly
  every node pulls, while one restarted member in a healthy mesh draws a
  digest from hardly anyone. The caller may lift the damping when it knows
  better (a node rejoining after a cut-off, answered by a member it held
  failed: the rest of that member's side is likely alive too);
- it goes out at a random moment within `spread` (so that a healed side
  does not send all its digests in the same second), and at most once per
  `gap` (the reconnect interval);
- its partner is drawn, when it goes out, from the members that came back
  since the last pull and are still alive (not the first one: every node on
  a side sees the same few come back first, and would all pull from them);
- a pull not answered within `ANSWER_WAIT` goes to another of them, at most
  `MAX_RETRIES` times a plan (each is a whole digest): the partner may be
  answering its share of pulls already (a node answers a few a second, or
  the few back first would answer dozens), or the answer was lost.

Pure bookkeeping over the caller's clock and random generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable

INF = float("inf")
MAX_RETURNED = 64  # members remembered as pull partners between two pulls
ANSWER_WAIT = 1.0  # seconds a pull's partner has to answer before another is asked
MAX_RETRIES = 2  # others asked, one after another, for one planned pull at most


class HealPulls:
    """When to push-pull with a member that came back from failure, and with whom."""

    __slots__ = ("_asked", "_due", "_last", "_retries", "_retry_at", "_returned", "returned_at")

    def __init__(self) -> None:
        self._due = INF  # when the planned pull goes out (inf: none planned)
        self._last = -INF  # when the last one went out
        self._returned: list[str] = []  # members back since then, the newest last
        self._asked: str | None = None  # the partner of the last pull, until it answers
        self._retry_at = INF  # when another is asked if it has not answered
        self._retries = 0  # others still to ask for the planned pull under way
        self.returned_at = -INF  # when a member we held failed last came back

    @property
    def due(self) -> float:
        """When `take` next has a partner to offer (inf: no pull planned)."""
        return min(self._due, self._retry_at)

    def answered(self, sender: str) -> None:
        """A push-pull answer from `sender`: if it is the partner of our pull, no other
        is asked in its place."""
        if sender == self._asked:
            self._asked = None
            self._retry_at = INF

    def on_return(
        self,
        node_id: str,
        now: float,
        rng: random.Random,
        *,
        failed: int,
        alive: int,
        gap: float,
        spread: float,
        damped: bool = True,
        since: float = -INF,
    ) -> bool:
        """`node_id`, held failed, is alive again; we still hold `failed` members
        failed and `alive` alive. `damped=False`: a pull is planned whatever the
        ratio (the caller knows the others held failed are likely alive too).
        `since`: when another pull of the caller's went out that counts for the gap
        (a rejoining node's exchange). True if this return planned the pull."""
        self.returned_at = now
        if len(self._returned) >= MAX_RETURNED:
            del self._returned[0]
        self._returned.append(node_id)
        if self._due < INF or failed <= 0:
            return False  # one is planned already; or nothing else to learn
        if damped and rng.random() > failed / max(1, alive):
            return False
        self._due = max(now, max(self._last, since) + gap) + rng.random() * spread
        return True

    def take(self, now: float, rng: random.Random, is_live: Callable[[str], bool]) -> str | None:
        """The partner of the pull due at `now`, if one is due and a returned member
        is still alive; the plan is spent either way."""
        if now < self.due:
            return None
        if now >= self._due:
            self._retries = MAX_RETRIES  # a planned pull; else a retry of the last one
        else:
            self._retries -= 1
        self._due = self._retry_at = INF
        candidates = [n for n in self._returned if is_live(n) and n != self._asked]
        self._returned.clear()
        if not candidates:
            self._asked = None
            return None  # no pull went out: the next return may plan one without a gap
        self._last = now
        self._asked = rng.choice(candidates)
        candidates.remove(self._asked)
        self._returned.extend(candidates)  # whom to ask if it does not answer
        if candidates and self._retries > 0:
            self._retry_at = now + ANSWER_WAIT
        return self._asked


def sweep_order(suspects: list[str], failed: list[str], limit: int) -> list[str]:
    """Whom a sweep of the doubted tries, the first last (the caller pops): the newest
    suspects, then the most recently failed, `limit` in all."""
    doubtful = suspects[-limit:]
    room = limit - len(doubtful)
    if room > 0:
        doubtful += failed[-room:]
    return doubtful[::-1]
