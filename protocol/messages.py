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
from typing import Annotated, ClassVar, Union


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of a number field (int or float); the codec refuses a value outside them."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class ReservedKeys:
    """Keys of a string map under `prefix` belong to the protocol, not to users.

    The codec refuses a map holding one, saying `why`: state the agent
    publishes travels in typed fields, and a label that looks like one is
    either an old agent's or a forgery, never something to act on.
    """

    prefix: str
    why: str


MAX_COUNTER = 2**53 - 1
"""The largest incarnation, version or sequence number the protocol speaks.

Counters only ever grow by one (a refutation, a new record, a probe), so no
honest node comes near it; the bound keeps every counter encodable and exact
in JSON (the local API, the coordinator), and a peer that sends a larger one
sends a malformed frame.
"""

Counter = Annotated[int, Range(0, MAX_COUNTER)]

MAX_WALL_TIME = 253_402_300_799.0
"""The latest wall-clock time (unix seconds) a record may carry: 9999-12-31T23:59:59Z.

Python's datetime ends there, so every time within the bound can be shown;
a later one, or a negative one, is no time any host lived through.
"""

WallTime = Annotated[float, Range(0, MAX_WALL_TIME)]

MAX_MIGRATIONS = 1024
"""The most concurrent migrations one host may say it sends or receives.

Far above any per-host limit (`MigrationLimits`, 2 by default; its bounds
keep it at or below this): a larger count is a lie whose only effect would be
to fill the cluster-wide ceiling every peer computes from these counters.
"""

MigrationCount = Annotated[int, Range(0, MAX_MIGRATIONS)]

Port = Annotated[int, Range(0, 65535)]

MAX_PIECES = 1 << 20
"""The most 1 MiB pieces one file may have (a 1 TiB image): a larger index is no piece."""

PieceIndex = Annotated[int, Range(0, MAX_PIECES - 1)]

RESERVED_LABEL_PREFIX = "novacron/"
"""Host labels under this prefix are the protocol's; users and peers may not set them."""

HostLabels = Annotated[
    dict[str, str],
    ReservedKeys(RESERVED_LABEL_PREFIX, "reserved for the agent's own record fields"),
]


class JobPhase(StrEnum):
    """Where a running migration job stands, as its source reports it."""

    PRECOPY = "precopy"  # memory is copied while the guest runs on the source
    SWITCHOVER = "switchover"  # the source is paused for the final copy
    POSTCOPY = "postcopy"  # the guest runs on the target and pulls the pages it lacks


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
class RebalanceSetting:
    """The mesh-wide switch of automatic rebalancing, as one host last heard it.

    Every host republishes the newest setting it has seen (by `since`), so a
    pause given on one host reaches all of them and outlives that host.
    """

    paused: bool = False
    since: WallTime = 0.0  # when an operator set it (unix seconds, wall clock); 0: never


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The one record a node owns and gossips: its resources, its VMs, its mesh-wide state.

    `version` grows with every change; a higher version always wins. Every
    field below `version` is optional on the wire: a record that lacks one
    (at its default: no migrations, rebalancing not paused, not a gateway
    candidate, libvirt reachable) decodes to that default.
    """

    node_id: str
    version: Counter
    capacity: Resources = field(default_factory=Resources)
    usage: Resources = field(default_factory=Resources)
    load: float = 0.0  # 1-minute load average
    vms: tuple[VmSummary, ...] = ()
    labels: HostLabels = field(default_factory=dict)  # the operator's, free-form but the prefix
    addresses: tuple[str, ...] = ()
    libvirt_uri: str = ""
    draining: bool = False
    migrations_out: MigrationCount = 0  # migrations this host sends now (the cluster ceiling)
    migrations_in: MigrationCount = 0  # migrations this host receives now (per-host limit)
    rebalance: RebalanceSetting = field(default_factory=RebalanceSetting)
    gateway_candidate: bool = False  # configured with coordinator URLs: may hold the site link
    # When its libvirt stopped answering (unix seconds); 0: it answers. While it
    # does not, the VMs listed are the last ones seen and the host takes no VM.
    libvirt_unreachable_since: WallTime = 0.0
    # Templates (NAME:VERSION) whose files this host holds whole and serves to peers,
    # those it is fetching now (it serves the pieces it has), and the port of its
    # image transport (0: it serves none).
    templates: tuple[str, ...] = ()
    fetching: tuple[str, ...] = ()
    image_port: Port = 0


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A `NodeRecord` as its owner encoded and signed it.

    The record travels as the exact bytes that were signed, so a relay cannot
    alter it without breaking the signature; `identity.verify_record` checks
    it against the owner's certificate before anyone trusts its contents.
    """

    node_id: str
    version: Counter
    record: bytes  # msgpack encoding of the NodeRecord
    signature: bytes  # Ed25519 over `record`


@dataclass(frozen=True, slots=True)
class MemberDigest:
    """One line of a push-pull membership exchange."""

    node_id: str
    incarnation: Counter
    state: MemberState
    address: str = ""
    # The member's own signature of its Alive at (incarnation, address), or of its
    # Leave when left (`claims.line_claim`): what lets a receiver apply the line.
    signature: bytes = b""
    certificate: bytes = b""  # the member's certificate, for a receiver that lacks it


# --- gossip items (also sent on their own) -----------------------------------


@dataclass(frozen=True, slots=True)
class Alive:
    """`node_id` is alive at `incarnation`; refutes any older suspicion."""

    TYPE: ClassVar[str] = "alive"
    node_id: str
    incarnation: Counter
    address: str = ""
    certificate: bytes = b""  # the node's certificate, for members that do not know it yet
    signature: bytes = b""  # by `node_id` itself, over `claims.claim_bytes`


@dataclass(frozen=True, slots=True)
class Suspect:
    """`by` suspects `node_id` at `incarnation`."""

    TYPE: ClassVar[str] = "suspect"
    node_id: str
    incarnation: Counter
    by: str
    signature: bytes = b""  # by the accuser `by`, over `claims.claim_bytes`


@dataclass(frozen=True, slots=True)
class Dead:
    """`by` declares `node_id` failed at `incarnation`."""

    TYPE: ClassVar[str] = "dead"
    node_id: str
    incarnation: Counter
    by: str
    signature: bytes = b""  # by the accuser `by`, over `claims.claim_bytes`


@dataclass(frozen=True, slots=True)
class Leave:
    """`node_id` leaves the cluster on purpose: not a failure."""

    TYPE: ClassVar[str] = "leave"
    node_id: str
    incarnation: Counter
    signature: bytes = b""  # by `node_id` itself, over `claims.claim_bytes`


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    """A newer version of a node's signed record."""

    TYPE: ClassVar[str] = "record"
    signed: SignedRecord


@dataclass(frozen=True, slots=True)
class Revocations:
    """The CA's signed revocation list; a newer one (by its issue time) replaces an older.

    Any member passes it on; only the CA's signature makes it count
    (`revocation.verify_revocation_list`), so a relay can delay it, not forge it.
    """

    TYPE: ClassVar[str] = "revocations"
    crl: bytes  # `revocation.sign_revocation_list`'s output, as the CA made it


Gossip = Union[Alive, Suspect, Dead, Leave, RecordUpdate, Revocations]  # noqa: UP007


# --- failure detection -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe of `target`; answered by an `Ack` with the same `seq`."""

    TYPE: ClassVar[str] = "ping"
    seq: Counter
    target: str
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to probe `target` on behalf of `requester`."""

    TYPE: ClassVar[str] = "indirect-ping"
    seq: Counter
    target: str
    requester: str
    target_address: str = ""
    want_nack: bool = True  # Lifeguard: say so if the target did not answer
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a `Ping` (or relayed answer to an `IndirectPing`)."""

    TYPE: ClassVar[str] = "ack"
    seq: Counter
    gossip: tuple[Gossip, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """The relay of an indirect probe got no answer from the target in time."""

    TYPE: ClassVar[str] = "nack"
    seq: Counter
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
    records: dict[str, Counter] = field(default_factory=dict)  # node id -> version
    reply: bool = False
    crl_issued_at: float = 0.0  # issue time of the newest revocation list the sender holds
    # The sender was cut off and rejoins: what it holds failed may be its own stale
    # verdicts, so a member it holds DEAD at the incarnation the receiver holds ALIVE
    # is answered with the member's ALIVE line (see `pushpull.build_deltas`).
    rejoining: bool = False
    # One part of an exchange sent in parts: the lines and record versions of the
    # member ids from `first` (inclusive) to `end` (exclusive), "" leaving that side
    # open. Its answers (Deltas, the reply Digest) cover the same ids only.
    first: str = ""
    end: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    """Push-pull: the member states and records the peer lacked."""

    TYPE: ClassVar[str] = "delta"
    members: tuple[MemberDigest, ...] = ()
    records: tuple[SignedRecord, ...] = ()
    crl: bytes = b""  # a revocation list newer than the digest's, when the sender has one


# --- certificates --------------------------------------------------------------


MAX_CERTIFICATES = 8  # node ids one request is answered for (a request names one, usually)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """Ask a member for the certificates of nodes it told us about.

    Gossip carries no certificates (a certificate is several times the size
    of an Alive, and would be resent a dozen times by every node): a member
    that hears of a node it cannot check asks whoever told it, once.
    """

    TYPE: ClassVar[str] = "certificate-request"
    node_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Certificates:
    """Certificates the sender holds, by node id; each is checked against the CA."""

    TYPE: ClassVar[str] = "certificates"
    certificates: dict[str, bytes] = field(default_factory=dict)


# --- migration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupMember:
    """Another VM of an affinity group proposed together with the proposal's own VM."""

    migration_id: str  # its own migration, which the reservation is held under
    vm: str
    vcpus: int
    memory_mib: int
    disk_gib: float = 0.0
    anti_affinity: str = ""  # its anti-affinity group ("" for none)


@dataclass(frozen=True, slots=True)
class MigrationPropose:
    """The source asks the target to reserve room for a VM (and, with `group`, for the
    other VMs of its affinity group at once: all of them, or none)."""

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
    traceparent: str = ""  # the migration's W3C trace context, "" when it is not traced
    group: tuple[GroupMember, ...] = ()  # the rest of its affinity group, moving with it


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
    phase: JobPhase = JobPhase.PRECOPY


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
    drain` would; it refuses a request that names another node than itself,
    and one that an operator did not sign (action "drain" or "undrain",
    target `node`, id `request_id`).
    """

    TYPE: ClassVar[str] = "drain-request"
    request_id: str
    node: str  # the host to drain: must be the receiver
    drain: bool  # True: start draining; False: take new VMs again
    requested_by: str = ""  # the operator, as the asking host names them (for the log)
    # The operator's authority (`operators.py`): a member alone may not drain a host.
    issued_at: float = 0.0  # when the operator signed the command (unix seconds)
    operator_certificate: bytes = b""  # a certificate with the operator role
    signature: bytes = b""  # by that certificate's key over `operators.command_bytes`


@dataclass(frozen=True, slots=True)
class DrainAnswer:
    """The asked host's answer to a `DrainRequest` with the same `request_id`."""

    TYPE: ClassVar[str] = "drain-answer"
    request_id: str
    accepted: bool
    reason: str = ""  # why not, when refused
    draining: bool = False  # the host's flag after the request
    running: tuple[str, ...] = ()  # VMs still running there
    record_version: Counter = 0  # its record's version carrying that flag (gossip catches up)


# --- coordinator commands relayed by the site's gateway ------------------------


@dataclass(frozen=True, slots=True)
class SiteCommandRelay:
    """The site's gateway hands a coordinator command to the host it is pinned to.

    `command` is a `sitelink.Command` (`codec.pack_struct`), decoded strictly
    by the receiver. The receiver obeys only the member it sees as the site's
    gateway (`agent/core/federation/gateway.py`), runs the command at most once (its
    ledger) and answers with a `SiteCommandResult`.
    """

    TYPE: ClassVar[str] = "site-command"
    request_id: str
    command: bytes


@dataclass(frozen=True, slots=True)
class SiteCommandResult:
    """How a relayed command ended: a `sitelink.Outcome` (`codec.pack_struct`)."""

    TYPE: ClassVar[str] = "site-command-result"
    request_id: str
    outcome: bytes


# --- images: a host fetching a template's files from its peers -------------------
# These travel on each host's image transport (a second ROUTER with the same keys,
# `NodeRecord.image_port`), so a 1 MiB piece never queues ahead of gossip.


@dataclass(frozen=True, slots=True)
class TemplateAsk:
    """Send me the signed manifest of `ref` (NAME:VERSION) and its files' chunk maps."""

    TYPE: ClassVar[str] = "template-ask"
    ref: str


@dataclass(frozen=True, slots=True)
class TemplateWanted:
    """Fetch `ref` from the mesh: a VM made from it is about to move to you.

    The receiver pulls it as its operator would (its own trusted publishers decide);
    it is never told where the pieces come from."""

    TYPE: ClassVar[str] = "template-wanted"
    ref: str


@dataclass(frozen=True, slots=True)
class TemplateGive:
    """The manifest as its publisher signed it, and one chunk map per file, in order.

    Nothing here is trusted: the asker checks the signature against its own
    publisher keys and each chunk map against the digest the manifest signs."""

    TYPE: ClassVar[str] = "template-give"
    ref: str
    manifest: bytes
    chunk_maps: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PiecesAsk:
    """Which pieces of the file `sha256` do you hold?"""

    TYPE: ClassVar[str] = "pieces-ask"
    sha256: bytes


@dataclass(frozen=True, slots=True)
class PiecesHeld:
    """A bitmap of the pieces of `sha256` the sender holds (bit i of byte i // 8, low bit
    first); `whole` when it holds the whole file (the bitmap is then empty)."""

    TYPE: ClassVar[str] = "pieces-held"
    sha256: bytes
    bitmap: bytes = b""
    whole: bool = False


@dataclass(frozen=True, slots=True)
class PieceAsk:
    TYPE: ClassVar[str] = "piece-ask"
    sha256: bytes
    index: PieceIndex


@dataclass(frozen=True, slots=True)
class PieceGive:
    TYPE: ClassVar[str] = "piece-give"
    sha256: bytes
    index: PieceIndex
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageLack:
    """The sender cannot give what was asked (`index` -1: the template or the file)."""

    TYPE: ClassVar[str] = "image-lack"
    what: str  # the ref or the file's hex SHA-256
    reason: str
    index: Annotated[int, Range(-1, MAX_PIECES - 1)] = -1


Message = Union[  # noqa: UP007
    Alive,
    Suspect,
    Dead,
    Leave,
    RecordUpdate,
    Revocations,
    Ping,
    IndirectPing,
    Ack,
    Nack,
    Digest,
    Delta,
    CertificateRequest,
    Certificates,
    MigrationPropose,
    MigrationAccept,
    MigrationRefuse,
    MigrationProgress,
    MigrationCommit,
    MigrationAbort,
    DrainRequest,
    DrainAnswer,
    SiteCommandRelay,
    SiteCommandResult,
    TemplateAsk,
    TemplateWanted,
    TemplateGive,
    PiecesAsk,
    PiecesHeld,
    PieceAsk,
    PieceGive,
    ImageLack,
]

GOSSIP_TYPES: tuple[type, ...] = (Alive, Suspect, Dead, Leave, RecordUpdate, Revocations)

CATALOGUE: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        Alive,
        Suspect,
        Dead,
        Leave,
        RecordUpdate,
        Revocations,
        Ping,
        IndirectPing,
        Ack,
        Nack,
        Digest,
        Delta,
        CertificateRequest,
        Certificates,
        MigrationPropose,
        MigrationAccept,
        MigrationRefuse,
        MigrationProgress,
        MigrationCommit,
        MigrationAbort,
        DrainRequest,
        DrainAnswer,
        SiteCommandRelay,
        SiteCommandResult,
        TemplateAsk,
        TemplateWanted,
        TemplateGive,
        PiecesAsk,
        PiecesHeld,
        PieceAsk,
        PieceGive,
        ImageLack,
    )
}
