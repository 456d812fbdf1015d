"""What the sans-IO core tells its driver: messages to send and things that happened.

The core never performs I/O. Every `receive(...)` and `tick(...)` returns an
`Output`; the daemon turns `sends` into ZeroMQ frames and `events` into logs,
metrics and API state, and the simulator turns them into virtual packets and
measurements. Events are small immutable values (h11 style).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from novacron.protocol.messages import Message, NodeRecord

from .migration.policy import MigrationPolicy
from .refusals import RefusalKind


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
    was_failed: bool = False  # held failed, not only suspected: it comes back from a cut


@dataclass(frozen=True, slots=True)
class ReachedIndirectly:
    """Probes of `node_id` were answered only through relays, several in a row (the last
    by `via`): the member is alive, but our path to it or its path back to us failed. A
    transport that keeps connections rebuilds its own to it: one refused once may never
    recover by itself. (If the broken half is the member's own connection to us, its
    probes of us say so there.)"""

    node_id: str
    via: str


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
class MemberRevoked:
    """The CA revoked `node_id`'s certificate: expelled (our own id: we must stop)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class IdentityClash:
    """One node id speaks from two places: two processes hold the same key.

    `this_life_began` is set when the clash is about this node itself: when
    our own life began, so the driver can tell whether we are the newcomer.
    """

    node_id: str
    addresses: tuple[str, ...]
    this_life_began: float | None


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
    | ReachedIndirectly
    | MemberSuspected
    | MemberFailed
    | MemberLeft
    | MemberRevoked
    | IdentityClash
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


# --- migration ---------------------------------------------------------------
#
# The migration core (`migration/saga.py`) answers with a `MigrationOutput`: sends
# and events as above, plus *actions*, the hypervisor work only the driver
# can do (libvirt calls). The driver reports the results back as inputs
# (`migration_progress`, `migration_finished`, `vm_presence`).


@dataclass(frozen=True, slots=True)
class MigrationRefused:
    """A migration request was refused before anything moved; nothing changed."""

    vm: str  # the VM that was to move
    target: str  # the host it was to move to
    reason: str  # a sentence for the operator: "no capacity: target h2 has ..."
    migration_id: str = ""  # empty when refused locally before an id was made
    by: str = ""  # the host that refused: this one (local checks) or the target
    kind: RefusalKind = RefusalKind.CONFLICT  # unknown VM or host, a bad policy, or the state


@dataclass(frozen=True, slots=True)
class MigrationProposed:
    """Source side: the target was asked for a reservation; the saga has begun."""

    migration_id: str  # the saga's id
    vm: str  # the VM to move
    source: str  # this host
    target: str  # the host asked


@dataclass(frozen=True, slots=True)
class MigrationAccepted:
    """Source side: the target reserved room; libvirt is being asked to migrate."""

    migration_id: str  # the saga's id
    vm: str  # the VM moving
    target: str  # the host that reserved
    reservation_expires: float  # the lease end on the target's clock (renewed by progress)


@dataclass(frozen=True, slots=True)
class MigrationProgressed:
    """libvirt job statistics of a running migration (both sides emit it)."""

    migration_id: str  # the saga's id
    vm: str  # the VM moving
    source: str  # sending host
    target: str  # receiving host
    percent: float  # 0..100
    phase: str  # precopy, postcopy
    data_remaining: int = 0  # bytes still to send
    bandwidth: float = 0.0  # bytes per second
    dirty_rate: float = 0.0  # pages per second
    iteration: int = 0  # pre-copy round
    expected_downtime_ms: int = 0  # libvirt's estimate of the final pause


@dataclass(frozen=True, slots=True)
class MigrationEscalated:
    """Source side: the completion timeout passed; post-copy or abort was requested."""

    migration_id: str  # the saga's id
    vm: str  # the VM moving
    step: str  # "postcopy" or "abort"
    reason: str  # why: "did not converge within 60 s (30 s/GiB of 2 GiB)"


@dataclass(frozen=True, slots=True)
class MigrationInDoubt:
    """Source side: the outcome is unknown; the driver was asked where the VM runs."""

    migration_id: str  # the saga's id
    vm: str  # the VM whose host is in doubt
    reason: str  # what went wrong


@dataclass(frozen=True, slots=True)
class MigrationUndecided:
    """Source side: the evidence could not say where the VM should run; the saga ended in
    doubt and an operator settles it (`nova vm recover VM --on HOST`)."""

    migration_id: str  # the saga's id
    vm: str  # the VM in doubt
    reason: str  # what the hypervisors said, and the command that settles it
    candidates: tuple[str, ...] = ()  # hosts holding a copy it may be recovered on


@dataclass(frozen=True, slots=True)
class MigrationCompleted:
    """Source side: the VM runs on the target; the saga committed."""

    migration_id: str  # the saga's id
    vm: str  # the VM that moved
    source: str  # where it ran
    target: str  # where it runs now
    duration: float  # seconds from proposal to commit
    note: str = ""  # e.g. "cancel came too late" or "found on the target by reconcile"


@dataclass(frozen=True, slots=True)
class MigrationFailed:
    """Source side: the VM stays on (or was found back on) the source; the saga aborted."""

    migration_id: str  # the saga's id
    vm: str  # the VM that did not move
    source: str  # where it still runs
    target: str  # where it was to go
    reason: str  # why, for `nova migrations` and the operator


@dataclass(frozen=True, slots=True)
class MigrationCancelRefused:
    """`cancel` could not be honoured (unknown id, already ending, or in post-copy)."""

    migration_id: str  # the id given
    reason: str  # why not
    kind: RefusalKind  # unknown: no such migration; conflict: it is ending or in post-copy


@dataclass(frozen=True, slots=True)
class ReservationMade:
    """Target side: room was reserved for an incoming VM."""

    migration_id: str  # the saga's id
    vm: str  # the incoming VM
    source: str  # the host sending it
    memory_mib: int  # memory held
    expires: float  # lease end unless renewed


@dataclass(frozen=True, slots=True)
class ReservationRefused:
    """Target side: a proposal was refused."""

    migration_id: str  # the saga's id
    vm: str  # the VM that will not come
    source: str  # the host that asked
    reason: str  # the same sentence the source receives


@dataclass(frozen=True, slots=True)
class ReservationReleased:
    """Target side: a reservation ended."""

    migration_id: str  # the saga's id
    vm: str  # the VM it was for
    source: str  # the host that sent it
    outcome: str  # "committed", "aborted", "expired" or "settled" (record shows the VM)
    reason: str = ""  # the abort's reason, or why it expired


MigrationEvent = (
    MigrationRefused
    | MigrationProposed
    | MigrationAccepted
    | MigrationProgressed
    | MigrationEscalated
    | MigrationInDoubt
    | MigrationUndecided
    | MigrationCompleted
    | MigrationFailed
    | MigrationCancelRefused
    | ReservationMade
    | ReservationRefused
    | ReservationReleased
)


@dataclass(frozen=True, slots=True)
class StartLibvirtMigration:
    """Action: migrate `vm` live to `target` (migrateToURI3, peer to peer) under `policy`.

    Report every job-stats sample with `migration_progress` and the end with
    `migration_finished`. Flags: LIVE | PEER2PEER | PERSIST_DEST |
    UNDEFINE_SOURCE (+ NON_SHARED_INC/DISK for local disks); post-copy must be
    *enabled* (VIR_MIGRATE_POSTCOPY) when `policy.post_copy` so that
    `SwitchToPostCopy` can start it later.
    """

    migration_id: str  # the saga's id, to tag the reports
    vm: str  # domain name
    target: str  # target node id
    target_uri: str  # the target's libvirt URI (its record's `libvirt_uri`)
    migration_uri: str  # where QEMU connects (from the target's accept), may be empty
    policy: MigrationPolicy  # bandwidth, max downtime, auto-converge, post-copy allowed


@dataclass(frozen=True, slots=True)
class SwitchToPostCopy:
    """Action: switch the running migration to post-copy (virDomainMigrateStartPostCopy)."""

    migration_id: str  # the saga's id
    vm: str  # domain name


@dataclass(frozen=True, slots=True)
class AbortLibvirtMigration:
    """Action: abort the running migration job (virDomainAbortJob); the VM stays put."""

    migration_id: str  # the saga's id
    vm: str  # domain name


@dataclass(frozen=True, slots=True)
class ReconcileVm:
    """Action: look at `vm` in the libvirt of each of `hosts`, and report what each said
    with `vm_presence` (one look per host; the core asks again while it cannot decide)."""

    vm: str  # domain name
    migration_id: str  # the saga whose outcome depends on the answer
    hosts: tuple[str, ...]  # where to look: (source, target)


@dataclass(frozen=True, slots=True)
class RetireStaleCopy:
    """Action: remove the copy of `vm` on `host`, where it provably does not run (it runs on
    `runs_on`): destroy it if a paused QEMU holds it, undefine its definition.

    The driver checks again first and leaves the copy alone if it is not the same
    domain (`uuid`) or if it runs after all.
    """

    migration_id: str  # the saga whose reconcile found it
    vm: str  # domain name
    host: str  # where the stale copy is
    uuid: str  # the running domain's UUID: only a copy of that domain is removed
    runs_on: str  # where the VM runs, for the log


MigrationAction = (
    StartLibvirtMigration | SwitchToPostCopy | AbortLibvirtMigration | ReconcileVm | RetireStaleCopy
)


@dataclass(slots=True)
class MigrationOutput:
    """Result of one call into the migration core: sends, events, and actions for the driver."""

    sends: list[tuple[str, Message]] = field(default_factory=list)  # (destination, message)
    events: list[MigrationEvent] = field(default_factory=list)  # what happened
    actions: list[MigrationAction] = field(default_factory=list)  # hypervisor work, in order

    def extend(self, other: MigrationOutput) -> None:
        self.sends.extend(other.sends)
        self.events.extend(other.events)
        self.actions.extend(other.actions)
