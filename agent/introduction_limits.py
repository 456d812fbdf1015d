"""What a stranger at the introduction port may cost: the limits and their bookkeeping.

The introduction port answers before any authentication, so everything here
is sized for a hostile caller: how many connections may be open (in all, and
from one address), how often one address may start an introduction, how many
certificates per second may reach the expensive checks, which refused
certificates are remembered so that sending one again costs a lookup, and how
refusals are logged (counted, summarised at most once per interval).

Pure bookkeeping: no sockets, no clock of its own; every method that depends
on time takes `now` (monotonic seconds). `introduction.py` does the I/O.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

BUSY = "busy"  # a cap, a rate or a bar; nothing checked, the connection reset unanswered
INCOMPLETE = "incomplete"  # the request did not arrive whole within its deadline
NOT_AN_INTRODUCTION = "not-an-introduction"  # the bytes do not start as ours do
TOO_LARGE = "too-large"  # the announced certificate is over the size limit


@dataclass(frozen=True, slots=True)
class IntroductionLimits:
    """Every bound of the introduction port. An honest peer introduces itself to one
    address at most every few seconds (the daemon's retry interval is 5 s)."""

    max_connections: int = 64  # open at once, all addresses together
    max_per_source: int = 4  # open at once from one address
    source_rate: float = 2.0  # introductions per second one address may start, sustained
    source_burst: float = 10.0  # ... and in one burst
    max_sources: int = 4096  # addresses whose rate is remembered (least recent forgotten)
    check_rate: float = 100.0  # certificates per second given the full checks, all addresses
    check_burst: float = 50.0  # ... and in one burst
    barred_for: float = 60.0  # seconds an address whose certificate failed them gets no more
    remembered: int = 1024  # certificates whose verdict is remembered by their exact bytes
    remember_for: float = 60.0  # seconds (a not-yet-valid one may become valid)
    request_timeout: float = 3.0  # seconds from accept until the whole request has arrived
    reply_timeout: float = 3.0  # seconds to hand over the answer
    accept_batch: int = 16  # connections accepted before the loop is yielded to others
    log_interval: float = 10.0  # seconds between two summary lines of refusals


class TokenBucket:
    """`rate` events per second on average, up to `burst` at once."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst  # events allowed right now
        self._stamp = now  # when `_tokens` was last brought up to date

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the rate."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass
class _Source:
    """What is remembered of one address."""

    rate: TokenBucket  # its introductions per second
    barred_until: float = field(default=float("-inf"))  # no new certificate checked before


class SourceGate:
    """Who may open an introduction connection now, and whose certificates are checked.

    Caps on open connections, a rate per address, and a bar on addresses that
    sent a certificate that failed the checks: an honest peer sends the same
    certificate every time (answered from memory, however often), so only a
    forger sends new ones, and each of its addresses gets one check a minute.
    """

    def __init__(self, limits: IntroductionLimits) -> None:
        self._limits = limits
        self._open: Counter[str] = Counter()  # address -> connections open from it
        self.open = 0  # connections open now, all addresses together
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # least recent first

    def admit(self, source: str, now: float) -> str | None:
        """Count a new connection from `source` as open, or say why not (None: admitted).

        The cap on all connections is left to the caller, who may close one to
        make room (see `over_capacity`) before refusing.
        """
        if self._open[source] >= self._limits.max_per_source:
            return f"too many introduction connections from {source} at once"
        if not self._source(source, now).rate.take(now):
            return f"too many introductions from {source}: try again in a few seconds"
        self._open[source] += 1
        self.open += 1
        return None

    def over_capacity(self) -> bool:
        return self.open > self._limits.max_connections

    def release(self, source: str) -> None:
        """A connection counted by `admit` has closed."""
        self.open -= 1
        self._open[source] -= 1
        if self._open[source] <= 0:
            del self._open[source]

    def may_check(self, source: str, now: float) -> bool:
        """Whether a new certificate from `source` may be given the full checks now."""
        return now >= self._source(source, now).barred_until

    def bar(self, source: str, now: float) -> None:
        """A certificate from `source` failed the checks: no new ones from it for a while."""
        self._source(source, now).barred_until = now + self._limits.barred_for

    def _source(self, source: str, now: float) -> _Source:
        known = self._sources.get(source)
        if known is None:
            rate = TokenBucket(self._limits.source_rate, self._limits.source_burst, now)
            known = self._sources[source] = _Source(rate)
            while len(self._sources) > self._limits.max_sources:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        return known


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a certificate's exact bytes were found to be: whom they admit, or why not."""

    node_id: str = ""  # the node admitted; "" for a refusal
    kind: str = ""  # the refusal's kind (a `security.Refusal` value); "" when admitted
    reason: str = ""  # the refusal's sentence


class RememberedVerdicts:
    """Certificates recently judged, by their exact bytes, for `ttl` seconds.

    A stranger who sends the same refused certificate again is answered from
    here, without decoding it; an honest peer introducing itself again skips
    the signature check (the caller still asks the trust store whether the
    certificate is current).
    """

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size  # at most this many remembered; least recent forgotten
        self._ttl = ttl
        self._known: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()  # -> (until, v)

    def get(self, data: bytes, now: float) -> Verdict | None:
        found = self._known.get(data)
        if found is None:
            return None
        until, verdict = found
        if now >= until:
            del self._known[data]
            return None
        self._known.move_to_end(data)  # a certificate sent again and again stays remembered
        return verdict

    def remember(self, data: bytes, verdict: Verdict, now: float) -> None:
        self._known[data] = (now + self._ttl, verdict)
        self._known.move_to_end(data)
        while len(self._known) > self._size:
            self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """Refusals since the previous summary: one log line."""

    count: int
    kinds: dict[str, int]  # kind -> how many
    last_reason: str  # the most recent refusal's sentence
    last_source: str  # and where it came from


class RefusalTally:
    """Counts refusals by kind since start, and says when a summary line is due.

    The first refusal after a quiet interval is summarised at once (an operator
    sees a misconfigured peer's reason immediately); later ones are gathered
    until `interval` has passed since the previous line.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self.total: Counter[str] = Counter()  # kind -> refusals since start
        self._pending: Counter[str] = Counter()  # kind -> refusals not yet summarised
        self._last = ("", "")  # (reason, source) of the most recent refusal
        self._next_line = float("-inf")  # no summary line before this

    def note(self, kind: str, reason: str, source: str, now: float) -> RefusalSummary | None:
        """Count one refusal; returns the summary to log if one is due now."""
        self.total[kind] += 1
        self._pending[kind] += 1
        self._last = (reason, source)
        return self.due(now)

    def due(self, now: float) -> RefusalSummary | None:
        """The summary of what is pending, if the interval allows a line now."""
        if not self._pending or now < self._next_line:
            return None
        summary = RefusalSummary(
            sum(self._pending.values()), dict(self._pending), self._last[0], self._last[1]
        )
        self._pending.clear()
        self._next_line = now + self._interval
        return summary

    @property
    def next_line(self) -> float:
        """When pending refusals may be summarised (a timer's deadline)."""
        return self._next_line

    @property
    def pending(self) -> bool:
        return bool(self._pending)
