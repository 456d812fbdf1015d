"""What the sans-IO core tells its driver: messages to send and things that happened.

The core never performs I/O. Every `receive(...)` and `tick(...)` returns an
`Output`; the daemon turns `sends` into ZeroMQ frames and `events` into logs,
metrics and API state, and the simulator turns them into virtual packets and
measurements. Events are small immutable values (h11 style).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from novacron.protocol.messages import Message, NodeRecord


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A node became a member (first heard alive)."""

    node_id: str
    incarnation: int
    address: str = ""


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspected or failed member is alive again (refutation or rejoin)."""

    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    """This node now suspects `node_id`."""

    node_id: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """`node_id` is declared failed (suspicion timed out or a Dead was heard)."""

    node_id: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """`node_id` left on purpose."""

    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class RecordUpdated:
    """A newer, verified version of `record.node_id`'s record was accepted."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class RecordRejected:
    """A record was dropped: bad signature, unknown owner, or older than ours."""

    node_id: str
    version: int
    reason: str  # "bad-signature", "not-a-member", "stale"


Event = (
    MemberJoined
    | MemberAlive
    | MemberSuspected
    | MemberFailed
    | MemberLeft
    | RecordUpdated
    | RecordRejected
)


@dataclass(slots=True)
class Output:
    """Result of one `receive` or `tick`: sends as (destination node id, message)."""

    sends: list[tuple[str, Message]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.sends.extend(other.sends)
        self.events.extend(other.events)
