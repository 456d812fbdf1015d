"""The membership state machine as an explicit table of pure decisions.

Each incoming claim about a member (Alive, Suspect, Dead, Leave) is judged
against what we believe now, giving a `Verdict`; `MembershipNode` then applies
it (state change, events, re-broadcast, timers). Keeping the rules here, free
of side effects, makes them readable in one place and testable one by one.
The rules are memberlist's (`state.go`: aliveNode, suspectNode, deadNode):

| claim   | unknown node | older inc | about us                    | otherwise                    |
|---------|--------------|-----------|-----------------------------|------------------------------|
| Alive   | ACCEPT (join)| IGNORE    | REFUTE if inc > ours (and   | ACCEPT if inc > current      |
|         |              |           | we did not leave)           |                              |
| Suspect | UNKNOWN      | IGNORE    | REFUTE (IGNORE if we left)  | CONFIRM if already suspected;|
|         |              |           |                             | ACCEPT if ALIVE, else IGNORE |
| Dead    | UNKNOWN      | IGNORE    | REFUTE (IGNORE if we left)  | SUSPECT_FIRST if ALIVE;      |
|         |              |           |                             | CONFIRM if SUSPECT, else     |
|         |              |           |                             | IGNORE                       |
| Leave   | UNKNOWN      | IGNORE    | REFUTE (IGNORE if we left)  | ACCEPT unless LEFT           |

"older inc" means the claim's incarnation is below the one we hold.

One deliberate departure from memberlist: another member's Dead is never
our verdict, only its accusation. About a member we hold ALIVE it starts a
suspicion; about one we already suspect it is one more confirmation (which
shortens the suspicion, down to its minimum, but never ends it). Only our
own suspicion timing out fails a member here. Why: the side of a partition
that could not reach a member declares it dead, and the moment the link
returns those Dead messages flood into the side that could reach it all
along; two of them from different accusers would fail it at once, though it
is alive. As accusations, they reach the member,
which refutes them within the minimum timeout. In a real failure many
members suspect it, so every suspicion runs at its minimum anyway. At equal
incarnation the stronger state wins (ALIVE < SUSPECT < DEAD, LEFT), which is
why an Alive needs a *higher* incarnation to override a suspicion: only the
member itself raises its incarnation, so only it can refute.
"""

from __future__ import annotations

from enum import Enum

from novacron.protocol.messages import MemberState

from .members import Member


class Verdict(Enum):
    """What to do with a claim about a member."""

    ACCEPT = "accept"  # move the member to the claimed state and re-gossip the claim
    CONFIRM = "confirm"  # an already suspected member: count another accuser
    REFUTE = "refute"  # a false claim about us: raise our incarnation, gossip Alive
    SUSPECT_FIRST = "suspect-first"  # Dead about a member we hold alive: suspect it instead
    IGNORE = "ignore"  # old or redundant news
    UNKNOWN = "unknown"  # about a member we never heard of: cannot be judged


_PRECEDENCE = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 2,
}


def supersedes(
    incarnation: int, state: MemberState, other_incarnation: int, other_state: MemberState
) -> bool:
    """Whether (incarnation, state) is strictly newer news than the other pair."""
    if incarnation != other_incarnation:
        return incarnation > other_incarnation
    return _PRECEDENCE[state] > _PRECEDENCE[other_state]


def on_alive(current: Member | None, incarnation: int, about_self: bool) -> Verdict:
    """Someone says the member is alive at `incarnation`."""
    if about_self:
        # Only we raise our incarnation; a higher one means an old life of ours
        # (a restart) or a forgery: either way, out-number it.
        if current is None or current.state is MemberState.LEFT:
            return Verdict.IGNORE
        return Verdict.REFUTE if incarnation > current.incarnation else Verdict.IGNORE
    if current is None:
        return Verdict.ACCEPT
    return Verdict.ACCEPT if incarnation > current.incarnation else Verdict.IGNORE


def on_suspect(
    current: Member | None, incarnation: int, about_self: bool, suspected: bool
) -> Verdict:
    """Someone suspects the member at `incarnation`; `suspected`: we have a timer running."""
    if current is None:
        return Verdict.UNKNOWN
    if incarnation < current.incarnation:
        return Verdict.IGNORE
    if about_self:
        return Verdict.IGNORE if current.state is MemberState.LEFT else Verdict.REFUTE
    if suspected:
        return Verdict.CONFIRM
    return Verdict.ACCEPT if current.state is MemberState.ALIVE else Verdict.IGNORE


def on_dead(current: Member | None, incarnation: int, about_self: bool) -> Verdict:
    """Someone declares the member failed at `incarnation`."""
    if current is None:
        return Verdict.UNKNOWN
    if incarnation < current.incarnation:
        return Verdict.IGNORE
    if about_self:
        return Verdict.IGNORE if current.state is MemberState.LEFT else Verdict.REFUTE
    if current.state in (MemberState.DEAD, MemberState.LEFT):
        return Verdict.IGNORE
    if current.state is MemberState.ALIVE:
        return Verdict.SUSPECT_FIRST
    return Verdict.CONFIRM


def on_leave(current: Member | None, incarnation: int, about_self: bool) -> Verdict:
    """The member is said to have left on purpose at `incarnation`.

    A Leave also converts DEAD into LEFT: the member is gone on purpose, so it
    is no longer worth reconnecting to.
    """
    if current is None:
        return Verdict.UNKNOWN
    if incarnation < current.incarnation:
        return Verdict.IGNORE
    if about_self:
        return Verdict.IGNORE if current.state is MemberState.LEFT else Verdict.REFUTE
    return Verdict.IGNORE if current.state is MemberState.LEFT else Verdict.ACCEPT
