"""Joining through seeds: the mesh is sent to a newcomer once, not once per seed.

A newcomer knows nothing, so a seed's answer to its join digest is the whole
mesh: every member with its signed line and certificate, about 800 KB at
1,000 members. memberlist joins by push-pull with every seed it is given, so
a node joining through three seeds is sent the mesh three times in the same
second, and an agent that finds twenty peers by mDNS as it starts could be
sent it twenty times. Under churn (hosts rebooting all day) those answers
were the largest part of the busiest seconds.

Rules:

- one seed at a time is asked for the mesh (a join digest, answered in full);
- every other seed gets a digest of our own line only (one part of an
  exchange, a few hundred bytes with our certificate): it holds us alive
  and gossips our arrival, so the news still starts from every seed at
  once; and it answers with how it holds us, so that a life of ours from
  before a restart, held failed at a higher incarnation, is refuted even
  when the seed asked never heard of it (a seed that joined after that
  life failed is not told of failed members);
- the seed asked has `wait` seconds to answer (its whole digest, which
  follows its Deltas); if it does not (it died, the answer was lost or is
  slow, or it already answered us within its exchange allowance), the next
  seed introduced is asked; an answer from any seed asked ends the join, so
  a slow answer does not set every seed answering in turn;
- once answered, or once the wait is over, a seed given later is asked at
  once: a peer we do not hold alive after we have the mesh may be on the
  other side of a split, and only a full exchange tells us;
- `CATCH_UP_AFTER` seconds after the mesh first came, we pull once from
  another member what it holds newer (once a life: the joins an agent
  makes later, for peers mDNS finds, are answered by members that know
  the mesh as it is). The seed's answer is its view when it
  answered: a member back from failure a moment before, still held failed
  there, is not in it (a newcomer is told only of live members), and the
  gossip of its return may be spent before the mesh knows us. Our first
  periodic exchange could be minutes away in a large mesh.

Pure bookkeeping over the caller's clock.
"""

from __future__ import annotations

from collections import deque

INF = float("inf")
MAX_SPARE_SEEDS = 16  # seeds kept to ask next; more are introduced, not kept
CATCH_UP_AFTER = 1.0  # seconds after the mesh's answer that we pull what came since


class JoinAsks:
    """Which seed is asked for the mesh, until when, and whom to ask next."""

    __slots__ = (
        "_answered_by",
        "_asked",
        "_asked_at",
        "_asking",
        "_catch_up_at",
        "_spare",
        "wait",
    )

    def __init__(self, wait: float) -> None:
        self.wait = wait  # seconds the seed asked has to answer
        self._asked: str | None = None  # the seed asked last, while no seed has answered
        # every seed asked since (the latest few), any of whom may answer
        self._asking: deque[str] = deque(maxlen=MAX_SPARE_SEEDS + 1)
        self._asked_at = -INF  # when it was asked
        self._spare: list[str] = []  # seeds to ask next, in the order given
        self._catch_up_at = INF  # when we pull what came since the mesh's first answer
        self._answered_by = ""  # the seed whose answer that was ("": none yet)

    @property
    def due(self) -> float:
        """When `next_seed` or `catch_up` has something (inf: nothing to do)."""
        return min(self._next_ask_at, self._catch_up_at)

    @property
    def _next_ask_at(self) -> float:
        if self._asked is None or not self._spare:
            return INF
        return self._asked_at + self.wait

    def ask(self, seed: str, now: float) -> bool:
        """`seed` is given to join through: True if it is to be asked for the mesh
        now; False if a seed asked is still within its wait (`seed` is kept to ask
        next, and only introduced to us for now)."""
        if self._asked is not None and now < self._asked_at + self.wait:
            known = seed == self._asked or seed in self._spare
            if not known and len(self._spare) < MAX_SPARE_SEEDS:
                self._spare.append(seed)
            return False
        if self._asked is None:
            self._asking.clear()  # a join of its own: the last one was answered
        self._asked, self._asked_at = seed, now
        self._asking.append(seed)
        if seed in self._spare:
            self._spare.remove(seed)
        return True

    def heard_from(self, sender: str, now: float) -> None:
        """A whole digest from `sender`: if it is a seed we asked, the mesh came."""
        if sender in self._asking:
            self._asked = None
            self._asking.clear()
            self._spare.clear()
            if not self._answered_by:
                self._catch_up_at, self._answered_by = now + CATCH_UP_AFTER, sender

    def next_seed(self, now: float) -> str | None:
        """The seed to ask now because the one asked did not answer within the wait."""
        if now < self._next_ask_at:
            return None
        self._asked, self._asked_at = self._spare.pop(0), now
        self._asking.append(self._asked)
        return self._asked

    def catch_up(self, now: float) -> str | None:
        """The seed that first sent us the mesh, once it is time to pull from another
        member what came since (once a life); None before, and after."""
        if now < self._catch_up_at:
            return None
        self._catch_up_at = INF
        return self._answered_by
