"""Bookkeeping of SWIM probes: ours in flight, and the ones we relay for others.

A probe of ours goes through three phases, all decided by `tick(now)`:

1. `Ping` sent; an `Ack` before `timeout_at` is a direct success;
2. at `timeout_at` without an Ack, `IndirectPing`s go to k relays, which ping
   the target for us and forward its Ack (or, with Lifeguard, send a `Nack`
   when the target did not answer them either), and a second `Ping` goes to
   the target directly (memberlist sends its TCP ping at this point: a lost
   datagram is the commonest reason for silence);
3. at `deadline` (one probe interval after the start) without any Ack, the
   probe failed. A first attempt is repeated at once (`attempt` 2); only a
   second failure makes the target suspected.

Why two attempts: at 10% packet loss one attempt fails for a healthy target
about once in 700 (a lost Ping or Ack, and every relay path losing one of
its four datagrams), which in a mesh of 10,000 is a false suspicion, and a
refutation spread to everyone, every tenth of a second: more than the gossip
budget can carry. Two independent attempts make it once in half a million;
a real failure is suspected one probe interval later.

Relayed probes wait for the target's Ack until `nack_at` (one probe timeout);
past it the relay sends a Nack if asked to, and forgets the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from novacron.protocol.messages import MAX_COUNTER

MAX_CHECKS = 64  # members waiting to be probed because a peer said they failed
INDIRECT_IN_A_ROW = 2  # probes in a row a member answers only via relays: tell the driver
MAX_INDIRECT = 4096  # members whose relayed answers are counted (then the counts restart)


@dataclass(slots=True)
class PendingProbe:
    """Our probe of one member, from Ping to verdict."""

    target: str  # the member being probed
    incarnation: int  # its incarnation when the probe started (what we suspect)
    seq: int  # sequence number the Ack must carry
    started: float  # when the Ping went out
    timeout_at: float  # no Ack by then: ask relays
    deadline: float  # no Ack by then: suspect the target
    attempt: int = 1  # 1, or 2 for the repeat of a failed first attempt
    indirect_sent: bool = False  # relays were asked
    expected_nacks: int = 0  # relays asked to send a Nack (Lifeguard)
    nacks: int = 0  # Nacks received so far
    relays: tuple[str, ...] = ()  # the members asked to try for us: their Acks count


@dataclass(slots=True)
class RelayedProbe:
    """An indirect probe we perform for `requester`."""

    requester: str  # who asked; gets the forwarded Ack or a Nack
    requester_seq: int  # the requester's sequence number, echoed back
    want_nack: bool  # the requester wants to hear about silence (Lifeguard)
    nack_at: float  # when we give up on the target


class ProbeTracker:
    """Sequence numbers, our pending probe, and the relays we owe an answer."""

    __slots__ = ("_checks", "_indirect", "_next_seq", "checked_last", "pending", "relays", "retry")

    def __init__(self) -> None:
        self._next_seq = 1  # 0 is never used, so a zero seq never matches
        self.pending: PendingProbe | None = None  # at most one probe of ours at a time
        self.retry: str | None = None  # member whose first attempt failed: probed next
        self.relays: dict[int, RelayedProbe] = {}  # our relay ping seq -> request
        self._checks: dict[str, None] = {}  # members others said failed: to probe ourselves
        self.checked_last = False  # the last probe was such a check (they alternate)
        self._indirect: dict[str, int] = {}  # member -> probes in a row it answered via relays

    def answered(self, target: str, directly: bool) -> bool:
        """Note how `target` answered a probe; whether that was through relays for the
        `INDIRECT_IN_A_ROW`th time in a row (then the count starts again). Once can be
        a slow target; in a row, our own path to it has failed."""
        before = self._indirect.pop(target, 0)
        count = 0 if directly else before + 1
        if count == 0 or count >= INDIRECT_IN_A_ROW:
            return count > 0
        if len(self._indirect) >= MAX_INDIRECT:
            self._indirect.clear()
        self._indirect[target] = count
        return False

    def check(self, node_id: str) -> None:
        """Probe `node_id` soon: a peer says it failed while we hold it alive.

        At most `MAX_CHECKS` wait (the oldest is dropped), and checks take
        every other probe slot, so a peer listing everyone as failed steers
        half our probes at most and delays no one's turn for long.
        """
        self._checks.pop(node_id, None)
        self._checks[node_id] = None
        if len(self._checks) > MAX_CHECKS:
            del self._checks[next(iter(self._checks))]

    def next_check(self) -> str | None:
        """The member to check in this probe slot, if it is a check's turn."""
        if self.checked_last or not self._checks:
            self.checked_last = False
            return None
        node_id = next(iter(self._checks))
        del self._checks[node_id]
        self.checked_last = True
        return node_id

    def next_seq(self) -> int:
        """A fresh sequence number for a Ping."""
        seq = self._next_seq
        self._next_seq = seq + 1 if seq < MAX_COUNTER else 1  # never past the wire's bound
        return seq

    def next_relay_deadline(self) -> float:
        """The earliest relay that may need a Nack (inf if none)."""
        return min((r.nack_at for r in self.relays.values()), default=float("inf"))

    def expired_relays(self, now: float) -> list[RelayedProbe]:
        """Remove and return relayed probes whose target stayed silent until `now`."""
        expired = [seq for seq, relay in self.relays.items() if relay.nack_at <= now]
        return [self.relays.pop(seq) for seq in expired]
