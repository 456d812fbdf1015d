"""Counters a membership node keeps about itself, for metrics and tests.

Plain integers, incremented on the hot path (cheaper than events), read by
the daemon's metrics endpoint and by the simulator's measurements.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass(slots=True)
class NodeStats:
    """What one node did and refused, since it started."""

    messages_received: int = 0  # every message handed to receive()
    messages_from_unknown: int = 0  # dropped: sender is not a member and not introducing itself
    messages_invalid: int = 0  # dropped: semantically malformed (negative incarnation, ...)
    messages_unhandled: int = 0  # not a membership message (e.g. migration traffic)
    gossip_about_unknown: int = 0  # Suspect/Dead/Leave about a member never heard of
    gossip_ignored: int = 0  # old or redundant claims
    probes_sent: int = 0  # direct Pings of our own
    probes_failed: int = 0  # probe attempts that ended without any Ack (the second: suspected)
    indirect_probes_sent: int = 0  # IndirectPings sent to relays
    acks_received: int = 0  # Acks that concluded a probe of ours
    acks_unexpected: int = 0  # Acks for no pending probe (late or bogus)
    acks_relayed: int = 0  # Acks forwarded to a requester of an indirect probe
    nacks_received: int = 0  # Nacks for our pending probe
    nacks_sent: int = 0  # Nacks sent as a relay (target silent)
    suspicions_started: int = 0  # members this node began to suspect
    suspicions_confirmed: int = 0  # new independent confirmations counted
    members_failed: int = 0  # members moved to DEAD
    refutations: int = 0  # times we raised our incarnation to deny a claim
    gossip_sent: int = 0  # gossip items sent in gossip rounds
    piggybacked: int = 0  # gossip items piggybacked on probe messages
    gossip_deferred: int = 0  # gossip rounds cut short: the gossip budget was spent
    push_pulls_sent: int = 0  # push-pull digests sent on the timer
    reconnects_attempted: int = 0  # Pings (with our Dead about it) sent to failed members
    heal_pulls_sent: int = 0  # push-pulls with a member that came back from failure (`heal.py`)
    catch_up_pulls_sent: int = 0  # pulls right after a join, of what came since (`joining.py`)
    announced: int = 0  # our new life's Alive sent by us to a member, once a life
    pulls_ignored: int = 0  # a member's pulls sooner than the heal pull gap after its last
    pulls_busy: int = 0  # pulls left unanswered: we answered our share of pulls just now
    exchanges_ignored: int = 0  # a member's push-pulls sooner than allowed after its last
    unasked_parts: int = 0  # parts answering none we sent (we never pull by parts)
    failed_members_told: int = 0  # members we hold failed that spoke to us, told so
    stale_claims_corrected: int = 0  # accusations of a refuted life answered with its Alive
    failures_withdrawn: int = 0  # members we held failed while cut off, alive on rejoining
    digests_received: int = 0  # push-pull digests answered
    records_accepted: int = 0  # newer verified records stored
    records_rejected_bad_signature: int = 0  # signature or header did not verify
    records_rejected_not_member: int = 0  # owner unknown, left, or failed too long ago
    records_rejected_stale: int = 0  # not newer than ours (never verified)
    records_rejected_out_of_bounds: int = 0  # contents no honest host reports
    records_rejected_malformed: int = 0  # signed, but the codec refuses a field (type, range)
    claims_bad_signature: int = 0  # a claim not signed by whom it must be (forged or altered)
    claims_without_certificate: int = 0  # about a member we never met, uncheckable
    certificates_requested: int = 0  # Alives of unknown nodes that made us ask whoever told us
    claims_ahead_of_member: int = 0  # accusations above the incarnation the member signed
    accusations_over_budget: int = 0  # an accuser accusing faster than probing allows
    lines_unsigned: int = 0  # push-pull lines that lacked the member's signature
    incarnation_exhausted: int = 0  # refutations impossible at the protocol's bound
    revocations_adopted: int = 0  # newer revocation lists taken

    def as_dict(self) -> dict[str, int]:
        """All counters by name (for metrics export). Plain integers: no deep copy as
        `dataclasses.asdict` makes (a tenth of a millisecond, at every scrape)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms keep them.

    Counts are per bucket (not cumulative) so an observation costs one bisect and
    one increment; `cumulative()` turns them into the `le` series at scrape time.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and ascending")
        self.bounds = tuple(float(b) for b in bounds)  # upper bounds, +Inf implied after
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, the last one above every bound
        self.sum = 0.0  # of every observation
        self.count = 0  # observations

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), +Inf last."""
        rows, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            rows.append((bound, total))
        return rows
