"""The catalogue: every message the mesh can say, as small immutable classes.

Each message is a frozen dataclass with a wire name in `TYPE`. Fields with a
default are optional on the wire (an older sender may omit them); fields
without one are required. Nested structures (`VmSummary`, `NodeRecord`, ...)
are plain frozen dataclasses without a `TYPE`. The codec (`codec.py`) turns
these classes into msgpack maps and back, checking every field's type.

Gossip items (`Alive`, `Suspect`, `Dead`, `Leave`, `RecordUpdate`) travel on
their own or piggybacked in the `gossip` field of the probe messages, which is
how SWIM disseminates membership changes without extra packets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Union


class MemberState(StrEnum):
    """What one node believes about another."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


# --- nested structures -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of compute: used both for capacity and for usage."""

    vcpus: float = 0.0  # cores (fractional for usage)
    memory_mib: int = 0
    disk_gib: float = 0.0


@dataclass(frozen=True, slots=True)
class VmSummary:
    """What the mesh needs to know about one VM on a host."""

    name: str
    uuid: str = ""
    state: str = "unknown"  # libvirt's state name: running, paused, shutoff, ...
    vcpus: int = 0
    memory_mib: int = 0
    cpu_load: float = 0.0  # cores in use, for the rebalancer
    dirty_rate_mib_s: float = 0.0  # memory written per second (0 until measured), for costs
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The one record a node owns and gossips: its resources and its VMs.

    `version` grows with every change; a higher version always wins.
    """

    node_id: str
    version: int
    capacity: Resources = field(default_factory=Resources)
    usage: Resources = field(default_factory=Resources)
    load: float = 0.0  # 1-minute load average
    vms: tuple[VmSummary, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    libvirt_uri: str = ""
    draining: bool = False


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A `NodeRecord` as its owner encoded and signed it.

    The record travels as the exact bytes that were signed, so a relay cannot
    alter it without breaking the signature; `identity.verify_record` checks
    it against the owner's certificate before anyone trusts its contents.
    """

    node_id: str
    version: int
    record: bytes  # msgpack encoding of the NodeRecord
    signature: bytes  # Ed25519 over `record`


@dataclass(frozen=True, slots=True)
class MemberDigest:
    """One line of a push-pull membership exchange."""

    node_id: str
    incarnation: int
    state: MemberState
    address: str = ""


# --- gossip items (also sent on their own) -----------------------------------


@dataclass(frozen=True, slots=True)
class Alive:
    """`node_id` is alive at `incarnation`; refutes any older suspicion."""

    TYPE: ClassVar[str] = "alive"
    node_id: str
    incarnation: int
    address: str = ""
    certificate: bytes = b""  # the node's certificate, so peers can verify it


@dataclass(frozen=True, slots=True)
class Suspect:
    """`by` suspects `node_id` at `incarnation`."""

    TYPE: ClassVar[str] = "suspect"
    node_id: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`by` declares `node_id` failed at `incarnation`."""

    TYPE: ClassVar[str] = "dead"
    node_id: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Leave:
    """`node_id` leaves the cluster on purpose: not a failure."""

    TYPE: ClassVar[str] = "leave"
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    """A newer version of a node's signed record."""

    TYPE: ClassVar[str] = "record"
    signed: SignedRecord


Gossip = Union[Alive, Suspect, Dead, Leave, RecordUpdate]  # noqa: UP007


# --- failure detection -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe of `target`; answered by an `Ack` with the same `seq`."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    target: str
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to probe `target` on behalf of `requester`."""

    TYPE: ClassVar[str] = "indirect-ping"
    seq: int
    target: str
    requester: str
    target_address: str = ""
    want_nack: bool = True  # Lifeguard: say so if the target did not answer
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a `Ping` (or relayed answer to an `IndirectPing`)."""

    TYPE: ClassVar[str] = "ack"
    seq: int
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """The relay of an indirect probe got no answer from the target in time."""

    TYPE: ClassVar[str] = "nack"
    seq: int
    gossip: tuple[Gossip, ...] = ()


# --- anti-entropy ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digest:
    """Push-pull: what the sender knows (member states and record versions).

    The receiver answers with a `Delta` holding what is newer on its side and,
    when `reply` is set, its own `Digest` so the sender can do the same.
    """

    TYPE: ClassVar[str] = "digest"
    members: tuple[MemberDigest, ...] = ()
    records: dict[str, int] = field(default_factory=dict)  # node id -> version
    reply: bool = False


@dataclass(frozen=True, slots=True)
class Delta:
    """Push-pull: the member states and records the peer lacked."""

    TYPE: ClassVar[str] = "delta"
    members: tuple[MemberDigest, ...] = ()
    records: tuple[SignedRecord, ...] = ()


# --- migration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationPropose:
    """The source asks the target to reserve room for a VM."""

    TYPE: ClassVar[str] = "migration-propose"
    migration_id: str
    vm: str
    source: str
    target: str
    vcpus: int
    memory_mib: int
    disk_gib: float = 0.0
    reason: str = ""  # manual, drain, rebalance
    anti_affinity: str = ""  # the VM's group: refused where one of it runs or is arriving
    started_at: float = 0.0  # when the source proposed it, wall clock (s): shown on both hosts


@dataclass(frozen=True, slots=True)
class MigrationAccept:
    """The target reserved room until `reservation_expires` (seconds, its clock)."""

    TYPE: ClassVar[str] = "migration-accept"
    migration_id: str
    reservation_expires: float
    migration_uri: str = ""  # where QEMU should connect, e.g. tcp://198.18.0.2


@dataclass(frozen=True, slots=True)
class MigrationRefuse:
    """The target will not take the VM, and says why."""

    TYPE: ClassVar[str] = "migration-refuse"
    migration_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """libvirt job statistics of a running migration."""

    TYPE: ClassVar[str] = "migration-progress"
    migration_id: str
    percent: float = 0.0
    data_remaining: int = 0  # bytes
    bandwidth: float = 0.0  # bytes per second
    dirty_rate: float = 0.0  # pages per second
    iteration: int = 0
    expected_downtime_ms: int = 0
    phase: str = "precopy"  # precopy, switchover (source paused for the final copy), postcopy


@dataclass(frozen=True, slots=True)
class MigrationCommit:
    """The VM now runs on the target; the reservation becomes the VM."""

    TYPE: ClassVar[str] = "migration-commit"
    migration_id: str
    ended_at: float = 0.0  # when the source committed, wall clock (s): shown on both hosts


@dataclass(frozen=True, slots=True)
class MigrationAbort:
    """The migration stopped; the VM stays on the source. Frees the reservation.

    Sent by the source to end a saga; sent by the target to ask its source to
    stop a migration it can no longer take (it began draining).
    """

    TYPE: ClassVar[str] = "migration-abort"
    migration_id: str
    reason: str
    ended_at: float = 0.0  # when the source ended it, wall clock (s); 0 from a target
    outcome: str = "aborted"  # how the source's saga ended: aborted, or in-doubt


# --- drain -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """An operator on another host asks `node` to start (`drain`) or end its drain.

    The drained host's own agent carries the drain out, as a local `nova host
    drain` would; it refuses a request that names another node than itself.
    """

    TYPE: ClassVar[str] = "drain-request"
    request_id: str
    node: str  # the host to drain: must be the receiver
    drain: bool  # True: start draining; False: take new VMs again
    requested_by: str = ""  # the operator, as the asking host names them (for the log)


@dataclass(frozen=True, slots=True)
class DrainAnswer:
    """The asked host's answer to a `DrainRequest` with the same `request_id`."""

    TYPE: ClassVar[str] = "drain-answer"
    request_id: str
    accepted: bool
    reason: str = ""  # why not, when refused
    draining: bool = False  # the host's flag after the request
    running: tuple[str, ...] = ()  # VMs still running there
    record_version: int = 0  # its record's version carrying that flag (gossip catches up)


Message = Union[  # noqa: UP007
    Alive,
    Suspect,
    Dead,
    Leave,
    RecordUpdate,
    Ping,
    IndirectPing,
    Ack,
    Nack,
    Digest,
    Delta,
    MigrationPropose,
    MigrationAccept,
    MigrationRefuse,
    MigrationProgress,
    MigrationCommit,
    MigrationAbort,
    DrainRequest,
    DrainAnswer,
]

GOSSIP_TYPES: tuple[type, ...] = (Alive, Suspect, Dead, Leave, RecordUpdate)

CATALOGUE: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        Alive,
        Suspect,
        Dead,
        Leave,
        RecordUpdate,
        Ping,
        IndirectPing,
        Ack,
        Nack,
        Digest,
        Delta,
        MigrationPropose,
        MigrationAccept,
        MigrationRefuse,
        MigrationProgress,
        MigrationCommit,
        MigrationAbort,
        DrainRequest,
        DrainAnswer,
    )
}
