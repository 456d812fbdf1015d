"""`MigrationCore`: the live-migration saga of one host, as source and as target, sans-IO.

One instance per host. As a *source* it runs a saga per outgoing VM: validate
the request against its own view, propose to the target, drive libvirt through
actions, escalate a migration that does not converge, and end by committing or
aborting. As a *target* it admits or refuses proposals against its real free
capacity minus pending reservations (`reservations.py`) and holds leases that
expire when the source goes quiet; an arriving VM moves through the target's
own phase table (`inbound.py`), and a report that would move it back out of
post-copy is refused.

Inputs: `request_migration`, `cancel`, `receive(sender, message, now)` for
the Migration* messages, the driver's reports `migration_progress`,
`migration_finished` and `vm_presence`, and `tick(now)` whenever
`next_deadline()` has come. Each returns a `MigrationOutput`: messages to
send, events, and *actions* (`StartLibvirtMigration`, `SwitchToPostCopy`,
`AbortLibvirtMigration`, `ReconcileVm`, `RetireStaleCopy`) that only the
driver can perform.
Nothing here reads a clock, sleeps or does I/O; ids come from the injected RNG.

The source saga is an explicit state machine (`TRANSITIONS`, h11 style):

| phase       | trigger          | next        | what the core does                          |
|-------------|------------------|-------------|---------------------------------------------|
| proposed    | accept           | migrating   | action StartLibvirtMigration                |
| proposed    | refuse           | aborted     | event MigrationRefused (target's reason)    |
| proposed    | no-answer        | aborted     | send Abort (frees a reservation we missed)  |
| proposed    | target-gone      | aborted     | send Abort                                  |
| proposed    | cancel           | aborted     | send Abort                                  |
| proposed    | revoked          | aborted     | (the target began draining) send Abort      |
| migrating   | progress         | migrating   | event, forward Progress to target (renews)  |
| migrating   | switched         | postcopy    | (libvirt entered post-copy by itself)       |
| migrating   | timeout-postcopy | postcopy    | action SwitchToPostCopy                     |
| migrating   | timeout-abort    | aborting    | action AbortLibvirtMigration                |
| migrating   | cancel           | aborting    | action AbortLibvirtMigration                |
| migrating   | revoked          | aborting    | action AbortLibvirtMigration (the target    |
|             |                  |             | began draining; post-copy: it lands, then   |
|             |                  |             | the drain moves it on)                      |
| migrating   | switchover-      | aborting    | action AbortLibvirtMigration (the source    |
|             | stalled          |             | sat paused for the final copy too long)     |
| migrating,  | finished-ok      | committed   | send Commit, event MigrationCompleted       |
| postcopy,   |                  |             |                                             |
| aborting,   |                  |             |                                             |
| reconciling |                  |             |                                             |
| migrating,  | finished-failed  | reconciling | action ReconcileVm (where does it run?)     |
| postcopy,   |                  |             |                                             |
| aborting    |                  |             |                                             |
| aborting    | abort-stalled    | reconciling | action AbortLibvirtMigration + ReconcileVm  |
| reconciling | on-target        | committed   | send Commit, event MigrationCompleted       |
| reconciling | on-source        | aborted     | send Abort, event MigrationFailed (also    |
|             |                  |             | when found on a third host: not our move)   |
| reconciling | nowhere          | reconciling | look again after `locate_retry`             |
| reconciling | undecided        | in-doubt    | event MigrationUndecided: the operator     |
|             |                  |             | settles it (`nova vm recover VM --on HOST`) |

Where the VM runs is decided by evidence (`location.locate` over what each
host's libvirt says), never by the saga's last word: a copy left behind on
the other host (a definition a killed libvirtd did not undefine, a source
paused for post-copy after the target finished) is retired with
`RetireStaleCopy`. Evidence that cannot decide (no host runs it, two do, a
libvirtd that does not answer) is looked at again every `locate_retry`
seconds for at most `reconcile_deadline` seconds; then the saga ends
`in-doubt`, visibly, naming the hosts an operator may recover it on. An
in-doubt VM is no longer locked by the saga (it can be recovered, deleted)
and is remembered (`doubt`) until some host runs it again.

`adopt_job` starts a saga directly in `aborting` (or `postcopy`) for a job a
restarted agent finds running in libvirt without a saga of this life.

A failed libvirt job always goes through `reconciling`: a failure report does
not prove where the domain is (the connection may have dropped after the
switchover), and the hypervisor is the source of truth. Cancel in post-copy is
refused: the guest's memory is split between the hosts and aborting would lose
it. A VM whose saga has not ended cannot be proposed again, so one VM never
has two libvirt jobs.

Fault table (the invariant: afterwards the VM runs on exactly one host, and
the saga's outcome says which, or the saga says `in-doubt` and why):

| fault                          | what the core does                                         |
|--------------------------------|------------------------------------------------------------|
| target agent killed mid-       | libvirtd drives a p2p migration, so the job goes on: its   |
| migration                      | end is reported by the source's driver. ok -> Commit (lost |
|                                | or "unknown" to the restarted target, which counts and     |
|                                | ignores it; its inventory shows the VM); failed ->         |
|                                | reconcile -> committed or aborted by where the VM runs.    |
|                                | Before the accept: no answer -> aborted, nothing started.  |
| target libvirtd killed         | the job fails -> reconcile -> the VM is still active on    |
|                                | the source (pre-copy) -> aborted with libvirt's reason;    |
|                                | Abort frees the target's reservation.                      |
| source agent killed and        | the new core holds no saga. The job (driven by libvirtd)   |
| restarted                      | ends by itself; the agent rebuilds its record from libvirt.|
|                                | The target hears no renewals: its lease expires, it emits  |
|                                | ReservationReleased(expired) + ReconcileVm; late messages  |
|                                | for the old id are counted, an Accept is answered Abort.   |
|                                | The driver hands its journal's jobs to `adopt_job`:        |
|                                | pre-copy -> abort -> reconcile -> aborted, with the reason |
|                                | "source agent restarted mid-migration"; post-copy: waits.  |
| link cut mid-migration         | libvirt's keepalive fails the job -> reconcile -> aborted  |
|                                | (VM on the source) or committed (switchover had happened). |
|                                | The Commit/Abort may be lost: the target's lease expires,  |
|                                | it reconciles with its own hypervisor.                     |
| cancel                         | proposed: Abort sent, aborted. migrating: AbortLibvirt-    |
|                                | Migration, then the job's end decides (failed -> reconcile |
|                                | -> usually aborted; ok -> committed, "cancel came too      |
|                                | late"). post-copy: refused. aborting/reconciling: no-op.   |
| escalation without post-copy   | AbortLibvirtMigration; a job that does not end within      |
| or a stuck abort               | `abort_timeout` -> abort again + reconcile.                |
| messages lost, duplicated,     | Propose is resent until answered; duplicates are answered  |
| reordered                      | idempotently; a Propose after its Abort is refused (the    |
|                                | id is remembered); leases bound any leak on the target.    |
| source libvirtd killed         | the job fails -> reconcile. Pre-copy: the restarted        |
|                                | libvirtd resumes the guest on the source -> aborted.       |
|                                | Switchover or post-copy: once the target runs the whole    |
|                                | guest -> committed, and the source's paused copy or        |
|                                | "shut off (migrated)" definition is retired. Guest on no   |
|                                | host (libvirtd killed it) -> in-doubt.                     |

Post-copy policy (QEMU's failure modes): until the switch, the source is
authoritative (an abort leaves the guest there). From the switch on, the
guest's memory is split: cancel is refused, nothing is aborted or destroyed
while the target still pulls pages ("running (post-copy)" there), and once
the target runs the whole guest it is authoritative: any copy left on the
source is stale and retired. If the target's half dies (QEMU gone, "paused
(post-copy failed)" for `reconcile_deadline`), no host can run the guest as
it was: in-doubt, and the operator chooses where it boots again.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from novacron.protocol.messages import (
    GroupMember,
    JobPhase,
    MemberState,
    Message,
    MigrationAbort,
    MigrationAccept,
    MigrationCommit,
    MigrationProgress,
    MigrationPropose,
    MigrationRefuse,
    NodeRecord,
    VmSummary,
)

from ..events import (
    AbortLibvirtMigration,
    MigrationAccepted,
    MigrationCancelRefused,
    MigrationCompleted,
    MigrationEscalated,
    MigrationFailed,
    MigrationInDoubt,
    MigrationOutput,
    MigrationProgressed,
    MigrationProposed,
    MigrationRefused,
    MigrationUndecided,
    ReconcileVm,
    ReservationMade,
    ReservationRefused,
    ReservationReleased,
    RetireStaleCopy,
    StartLibvirtMigration,
    SwitchToPostCopy,
)
from ..membership.members import MemberInfo
from ..membership.stats import Histogram
from ..placement.admission import (
    Arrival,
    closed_targets,
    cluster_refusal,
    outbound_refusal,
    target_refusal,
)
from ..placement.targets import (
    ANTI_AFFINITY_LABEL,
    Placement,
    choose_group_target,
    group_room_refusal,
    libvirt_down,
    sending_load,
)
from ..refusals import RefusalKind
from ..templates import template_of
from .inbound import Inbound, next_inbound
from .location import Doubt, On, Presence, Wait, locate, undecided
from .policy import (
    MIB_PER_GIB,
    MigrationLimits,
    MigrationPolicy,
    PolicyError,
    PolicyOverrides,
    cluster_migrations,
    completion_timeout,
    with_migration_counts,
    with_overrides,
)
from .reservations import (
    Demand,
    Reservation,
    ReservationBook,
    ReservationConfig,
    unseen,
)

__all__ = [
    "TRANSITIONS",
    "ClusterView",
    "JobTotals",
    "MigrationConfig",
    "MigrationCore",
    "MigrationInfo",
    "MigrationStats",
    "Phase",
    "Trigger",
    "next_phase",
]

INF = float("inf")
MOVABLE = ("running", "paused")  # states a VM can be moved live in (a paused one stays paused)
CANCELLED = "cancelled by operator"
POSTCOPY_CANCEL = (
    "cannot cancel in post-copy: the guest's memory is split between both hosts, "
    "so the migration can only finish"
)


class Phase(StrEnum):
    """Where a source saga stands."""

    PROPOSED = "proposed"  # Propose sent, waiting for Accept or Refuse
    MIGRATING = "migrating"  # libvirt job running (pre-copy)
    POSTCOPY = "postcopy"  # libvirt job running in post-copy: it can only finish
    ABORTING = "aborting"  # abort of the libvirt job requested, waiting for its end
    RECONCILING = "reconciling"  # outcome unknown, waiting for `vm_presence`
    COMMITTED = "committed"  # ended: the VM runs on the target
    ABORTED = "aborted"  # ended: the VM runs on the source (refused, failed, cancelled)
    IN_DOUBT = "in-doubt"  # ended: the evidence could not say; an operator settles it


TERMINAL = frozenset({Phase.COMMITTED, Phase.ABORTED, Phase.IN_DOUBT})
# How an outbound saga ends (refused: by the target; in-doubt: an operator settles it).
OUTCOMES = ("committed", "aborted", "refused", "in-doubt")
# Seconds, proposal to end: a small idle VM moves in about a second on a LAN, a large
# busy one with post-copy in minutes; a completion timeout ends anything past an hour.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Seconds the guest stood still at the switchover: the max downtime defaults to 300 ms
# (QEMU's) and to 50 ms for an idle guest; seconds mean the limit could not hold.
DOWNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Bytes one job sent, memory and local disks: from a small guest's 64 MiB to a 256 GiB
# disk copied alongside its memory, by fours.
TRANSFER_BUCKETS = tuple(float(1 << bits) for bits in range(26, 40, 2))


class Trigger(StrEnum):
    """An input to a source saga."""

    ACCEPT = "accept"  # the target reserved room
    REFUSE = "refuse"  # the target said no
    NO_ANSWER = "no-answer"  # no Accept/Refuse within `answer_timeout`
    TARGET_GONE = "target-gone"  # the target failed or left before answering
    CANCEL = "cancel"  # operator's cancel
    REVOKED = "revoked"  # the target withdrew its reservation (it began draining)
    PROGRESS = "progress"  # a job-stats sample from the driver
    SWITCHED = "switched"  # the driver reports the job is in post-copy
    TIMEOUT_POSTCOPY = "timeout-postcopy"  # completion timeout passed, post-copy allowed
    TIMEOUT_ABORT = "timeout-abort"  # completion timeout passed, post-copy not allowed
    FINISHED_OK = "finished-ok"  # libvirt says the domain now runs on the target
    FINISHED_FAILED = "finished-failed"  # libvirt says the job failed (location unproven)
    ABORT_STALLED = "abort-stalled"  # an abort did not end the job within `abort_timeout`
    SWITCHOVER_STALLED = "switchover-stalled"  # paused for the final copy too long: abort
    ON_TARGET = "on-target"  # reconcile: the domain is active on the target
    ON_SOURCE = "on-source"  # reconcile: the domain is active on the source
    NOWHERE = "nowhere"  # reconcile: the evidence cannot decide yet: look again soon
    UNDECIDED = "undecided"  # reconcile: it could not decide within the deadline


_P, _T = Phase, Trigger
TRANSITIONS: Mapping[tuple[Phase, Trigger], Phase] = {
    (_P.PROPOSED, _T.ACCEPT): _P.MIGRATING,
    (_P.PROPOSED, _T.REFUSE): _P.ABORTED,
    (_P.PROPOSED, _T.NO_ANSWER): _P.ABORTED,
    (_P.PROPOSED, _T.TARGET_GONE): _P.ABORTED,
    (_P.PROPOSED, _T.CANCEL): _P.ABORTED,
    (_P.PROPOSED, _T.REVOKED): _P.ABORTED,
    (_P.MIGRATING, _T.PROGRESS): _P.MIGRATING,
    (_P.MIGRATING, _T.SWITCHED): _P.POSTCOPY,
    (_P.MIGRATING, _T.TIMEOUT_POSTCOPY): _P.POSTCOPY,
    (_P.MIGRATING, _T.TIMEOUT_ABORT): _P.ABORTING,
    (_P.MIGRATING, _T.CANCEL): _P.ABORTING,
    (_P.MIGRATING, _T.REVOKED): _P.ABORTING,
    (_P.MIGRATING, _T.SWITCHOVER_STALLED): _P.ABORTING,
    (_P.MIGRATING, _T.FINISHED_OK): _P.COMMITTED,
    (_P.MIGRATING, _T.FINISHED_FAILED): _P.RECONCILING,
    (_P.POSTCOPY, _T.PROGRESS): _P.POSTCOPY,
    (_P.POSTCOPY, _T.SWITCHED): _P.POSTCOPY,
    (_P.POSTCOPY, _T.FINISHED_OK): _P.COMMITTED,
    (_P.POSTCOPY, _T.FINISHED_FAILED): _P.RECONCILING,
    (_P.ABORTING, _T.PROGRESS): _P.ABORTING,
    (_P.ABORTING, _T.FINISHED_OK): _P.COMMITTED,
    (_P.ABORTING, _T.FINISHED_FAILED): _P.RECONCILING,
    (_P.ABORTING, _T.ABORT_STALLED): _P.RECONCILING,
    (_P.RECONCILING, _T.FINISHED_OK): _P.COMMITTED,
    (_P.RECONCILING, _T.ON_TARGET): _P.COMMITTED,
    (_P.RECONCILING, _T.ON_SOURCE): _P.ABORTED,
    (_P.RECONCILING, _T.NOWHERE): _P.RECONCILING,
    (_P.RECONCILING, _T.UNDECIDED): _P.IN_DOUBT,
}
"""Every legal move of a source saga; anything else is ignored and counted."""


def next_phase(phase: Phase, trigger: Trigger) -> Phase | None:
    """The phase `trigger` leads to from `phase`, or None if it means nothing there."""
    return TRANSITIONS.get((phase, trigger))


class ClusterView(Protocol):
    """What the migration core reads of the membership core (`MembershipNode` fits)."""

    def member(self, node_id: str) -> MemberInfo | None:
        """What this host knows about one member, or None."""
        ...

    def records(self) -> Mapping[str, NodeRecord]:
        """Verified records by node id, this host's own included."""
        ...


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """Timings and defaults of the migration core (seconds of the driver's clock)."""

    policy: MigrationPolicy = field(default_factory=MigrationPolicy)  # per-migration defaults
    limits: MigrationLimits = field(default_factory=MigrationLimits)  # concurrency limits
    reservations: ReservationConfig = field(default_factory=ReservationConfig)  # target side
    answer_timeout: float = 5.0  # wait this long for Accept/Refuse before giving up
    propose_retry: float = 1.0  # resend the Propose this often while unanswered (loss)
    progress_interval: float = 1.0  # forward progress to the target at most this often ...
    renew_interval: float = 5.0  # ... and at least this often (it renews the lease)
    abort_timeout: float = 30.0  # an abort that has not ended the job by then: reconcile
    switchover_stall: float = 5.0  # source paused this long for the final copy, no progress: abort
    reconcile_retry: float = 10.0  # ask again where a VM runs if no answer came at all
    locate_retry: float = 1.0  # look again this soon when the evidence could not decide
    doubt_after: float = 5.0  # evidence of "on no host" or "on two" counts after this long
    reconcile_deadline: float = 120.0  # undecided this long after the fault: in doubt
    history: int = 100  # ended migrations kept for `migrations()`, per direction

    def __post_init__(self) -> None:
        """Refuse timings that would stall a saga or let leases lapse while it is alive."""
        for name in ("answer_timeout", "propose_retry", "progress_interval", "renew_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.abort_timeout > 0 or not self.reconcile_retry > 0 or self.history < 0:
            raise ValueError("abort_timeout and reconcile_retry must be positive")
        if not self.locate_retry > 0 or not self.doubt_after >= 0:
            raise ValueError("locate_retry must be positive and doubt_after not negative")
        if not self.reconcile_deadline >= self.doubt_after:
            raise ValueError("reconcile_deadline must not be shorter than doubt_after")
        if not self.switchover_stall > 0:
            raise ValueError("switchover_stall must be positive")
        if self.renew_interval >= self.reservations.ttl:
            raise ValueError("renew_interval must be shorter than the reservation ttl")


@dataclass(slots=True)
class MigrationStats:
    """Counters of one host's migration core, for metrics and tests."""

    requested: int = 0  # request_migration calls
    refused_locally: int = 0  # requests refused by this host's own checks
    proposals_received: int = 0  # Propose messages handled as a target
    proposals_refused: int = 0  # of those, refused
    committed: int = 0  # outbound sagas that ended with the VM on the target
    aborted: int = 0  # outbound sagas that ended with the VM on the source
    reservations_expired: int = 0  # leases that ran out (source silent, or libvirt shows nothing)
    reservations_unused: int = 0  # of those, never shown by libvirt: the source is penalized
    reconciles: int = 0  # ReconcileVm actions emitted
    escalations: int = 0  # post-copy switches or aborts for a timeout
    in_doubt: int = 0  # outbound sagas that ended in doubt
    unknown_migration: int = 0  # messages or reports for an id this host does not hold
    wrong_peer: int = 0  # messages from a host that is not the saga's peer
    invalid: int = 0  # malformed messages or reports that mean nothing in this phase
    duplicates: int = 0  # repeated or late messages for a known saga (answered idempotently)
    unsolicited_locations: int = 0  # vm_presence reports nobody was waiting for
    unhandled: int = 0  # non-migration messages handed to receive()


@dataclass(frozen=True, slots=True)
class JobTotals:
    """What a libvirt migration job cost, from its final statistics (the driver reads them)."""

    data_bytes: int  # bytes the job sent: memory, and local disks copied with it
    downtime_s: float | None = None  # the guest's pause at the switchover; None if unknown


@dataclass(frozen=True, slots=True)
class MigrationInfo:
    """One migration as `nova migrations` shows it."""

    migration_id: str  # the saga's id
    vm: str  # the VM
    source: str  # sending host
    target: str  # receiving host
    direction: str  # "outbound" (we send) or "inbound" (we receive)
    phase: str  # a `Phase` value; inbound while running: reserved/precopy/postcopy/landed
    percent: float  # last progress, 0..100
    outcome: str  # "" while running; committed, aborted, refused, expired, in-doubt
    reason: str  # why it failed or was refused ("" if it did not)
    started: float  # when it was proposed (this host's clock)
    ended: float | None  # when it ended, None while running
    purpose: str = ""  # why it was requested: manual, drain, rebalance
    escalation: str = ""  # e.g. "post-copy after 20 s: did not converge ..." ("" if none)
    started_at: float = 0.0  # when it was proposed, wall clock (the source's, on both sides)
    ended_at: float | None = None  # when it ended, wall clock (the source's, on both sides)


@dataclass(frozen=True, slots=True)
class Doubted:
    """A VM whose migration ended in doubt: where it should run is the operator's call."""

    vm: str  # the VM
    migration_id: str  # the saga that could not decide
    reason: str  # what the evidence said
    candidates: tuple[str, ...]  # hosts holding a copy it could be recovered on
    since: float  # when the saga gave up (this host's clock)


@dataclass(slots=True)
class _Saga:
    """The source side of one migration."""

    migration_id: str  # our id, also the target's reservation key
    vm: str  # the VM moving
    source: str  # this host
    target: str  # the host receiving it: the only peer whose answers count
    demand: Demand  # what it needs on the target
    policy: MigrationPolicy  # defaults with the request's overrides
    purpose: str  # manual, drain, rebalance
    started: float  # when proposed
    phase: Phase = Phase.PROPOSED  # where it stands (moved only through TRANSITIONS)
    timer: float = INF  # the phase's deadline: answer, escalation, abort or reconcile retry
    retry_at: float = INF  # next Propose resend (proposed phase only)
    renew_at: float = INF  # next progress forward to the target at the latest
    forwarded_at: float = -INF  # last progress forward (rate limit)
    percent: float = 0.0  # last progress
    last_progress: MigrationProgress | None = None  # last sample, re-sent as a renewal
    cancelled: bool = False  # the operator cancelled after libvirt started
    adopted: bool = False  # taken over after a restart: the target does not know this id
    error: str = ""  # the first cause of failure, kept through reconcile
    escalation: str = ""  # how a non-converging migration was escalated, for the report
    paused_since: float | None = None  # since when the source sits paused for the switchover
    copied_at: float = 0.0  # ... when that pause last copied something (or began)
    paused_remaining: int = 0  # ... and what was left to copy then
    outcome: str = ""  # committed, aborted, refused or in-doubt once ended
    ended: float | None = None  # when it ended
    started_at: float = 0.0  # `started` on the wall clock (for people, and the target)
    ended_at: float | None = None  # `ended` on the wall clock
    reconciling_since: float | None = None  # when the evidence was first asked for
    doubt_note: str = ""  # why the outcome is unknown, as last reported
    totals: JobTotals | None = None  # the libvirt job's final statistics, if the driver had them
    group: tuple[str, ...] = ()  # its affinity group's migration ids, the proposing one first


@dataclass(slots=True)
class _Locating:
    """Target side: the look at where a VM went after its reservation expired."""

    migration_id: str  # the expired reservation
    hosts: tuple[str, ...]  # where to look: its source and this host
    since: float  # when the lease expired
    due: float  # when to ask (again)


class MigrationCore:
    """Source and target sides of live migration for one host (see module docstring)."""

    def __init__(
        self,
        node_id: str,
        *,
        view: ClusterView,
        rng: random.Random,
        config: MigrationConfig | None = None,
        migration_uri: str = "",
        wall: Callable[[float], float] = float,
    ) -> None:
        """`migration_uri`: where QEMU on a source should connect to us, e.g. tcp://198.18.0.2;
        `wall`: this host's clock reading `now` as wall-clock seconds (for people and peers:
        times shown must be the same on both hosts of a migration)."""
        self.node_id = node_id  # this host
        self.config = config or MigrationConfig()  # timings, defaults, limits
        self.migration_uri = migration_uri  # told to sources in every Accept
        self.stats = MigrationStats()  # counters
        # Outbound migrations for metrics, observed when each ends (`_end`): how long they
        # took, proposal to end, and what their libvirt job sent, by outcome; how long the
        # guest paused, for those that moved it (an aborted job's pause is not a move's).
        self.durations = {outcome: Histogram(DURATION_BUCKETS) for outcome in OUTCOMES}
        self.transferred = {outcome: Histogram(TRANSFER_BUCKETS) for outcome in OUTCOMES}
        self.downtimes = Histogram(DOWNTIME_BUCKETS)
        self._view = view  # membership and records, read only
        self._rng = rng  # the only source of randomness (ids)
        self._sagas: dict[str, _Saga] = {}  # running outbound sagas by id
        self._busy: dict[str, str] = {}  # VM name -> id of its running outbound saga
        self._ended: OrderedDict[str, _Saga] = OrderedDict()  # recent outbound, oldest first
        self._book = ReservationBook()  # inbound reservations
        self._inbound_ended: OrderedDict[str, MigrationInfo] = OrderedDict()  # recent inbound
        self._locating: dict[str, _Locating] = {}  # VM -> expired inbound reservation's look
        self._wall = wall  # `now` -> wall-clock seconds
        self._draining = False  # this host drains: it admits nothing (before its record says so)
        self._penalties: dict[str, tuple[float, int]] = {}  # source -> (refused until, strikes)
        self._doubts: dict[str, Doubted] = {}  # VM -> why its location is the operator's call

    # --- source side: requests ----------------------------------------------------

    def request_migration(
        self,
        vm: str,
        target: str,
        policy_overrides: PolicyOverrides | None,
        now: float,
        *,
        purpose: str = "manual",
    ) -> MigrationOutput:
        """Start moving `vm` to `target`, or refuse at once with a reason (nothing changes)."""
        return self.request_group_migration((vm,), target, policy_overrides, now, purpose=purpose)

    def request_group_migration(
        self,
        vms: Sequence[str],
        target: str,
        policy_overrides: PolicyOverrides | None,
        now: float,
        *,
        purpose: str = "manual",
    ) -> MigrationOutput:
        """Start moving VMs that must stay together (an affinity group) to `target`, or
        refuse them all at once with a reason (nothing changes). One proposal, the first
        VM's, asks room for all of them; the target reserves it for all or refuses; every
        VM's migration starts with that one answer (a saga each: each copy commits or
        aborts on its own). A single VM is the ordinary migration."""
        out = MigrationOutput()
        self.stats.requested += 1
        records = self._view.records()
        summaries = [_find_vm(records.get(self.node_id), vm) for vm in vms]
        try:
            policy = with_overrides(self.config.policy, policy_overrides)
        except PolicyError as exc:
            return self._refuse_locally(
                vms, target, (RefusalKind.INVALID, f"bad policy: {exc}"), out
            )
        refusal = self._request_refusal(vms, summaries, target, records)
        found = [summary for summary in summaries if summary is not None]
        if refusal is not None or not found or len(found) < len(vms):
            why = refusal or (RefusalKind.UNKNOWN, f"unknown VM: {', '.join(vms)}")
            return self._refuse_locally(vms, target, why, out)
        sagas: list[_Saga] = []
        for summary in found:
            # Only the first VM's saga proposes and waits for the answer; the others follow it.
            leads = not sagas
            saga = _Saga(
                migration_id=self._new_id(),
                vm=summary.name,
                source=self.node_id,
                target=target,
                demand=_demand(summary),
                policy=policy,
                purpose=purpose,
                started=now,
                timer=now + self.config.answer_timeout if leads else INF,
                retry_at=now + self.config.propose_retry if leads else INF,
                started_at=self._wall(now),
            )
            self._sagas[saga.migration_id] = saga
            self._busy[saga.vm] = saga.migration_id
            sagas.append(saga)
        if len(sagas) > 1:
            for saga in sagas:
                saga.group = tuple(each.migration_id for each in sagas)
        out.sends.append((target, self._proposal(sagas[0])))
        for saga in sagas:
            out.events.append(MigrationProposed(saga.migration_id, saga.vm, self.node_id, target))
        return out

    def place(self, vm: str, templates: Mapping[str, str] | None = None) -> Placement:
        """Where `vm` (running here) would go now: the best target, or why there is none."""
        return self.place_group((vm,), templates)

    def place_group(
        self, vms: Sequence[str], templates: Mapping[str, str] | None = None
    ) -> Placement:
        """Where VMs running here that must stay together would go now, all to one host:
        the best target, or why there is none. `templates`: the template each VM was made
        from, as its domain says (VM summaries carry the placement labels, not the template)."""
        records = self._view.records()
        own = records.get(self.node_id)
        demands = []
        for vm in vms:
            summary = _find_vm(own, vm)
            if summary is None:
                return Placement(
                    None, f"unknown VM: {vm} does not run on {self.node_id}", RefusalKind.UNKNOWN
                )
            demands.append(_demand(summary, (templates or {}).get(vm, "")))
        sending = sending_load(own, ((s.target, s.vm) for s in self._sagas.values()), records)
        return choose_group_target(
            records,
            self._view.member,
            self.node_id,
            demands,
            self.config.limits,
            self.config.reservations.vcpu_overcommit,
            self.targets_full_from_here(),
            sending,
        )

    def _request_refusal(
        self,
        vms: Sequence[str],
        summaries: Sequence[VmSummary | None],
        target: str,
        records: Mapping[str, NodeRecord],
    ) -> tuple[RefusalKind, str] | None:
        """Why this host will not even propose (the VMs of a group: not any of them): the
        checks it can make from its own view."""
        if not vms or len(set(vms)) < len(vms):
            return RefusalKind.INVALID, "the VMs to move together must be distinct, at least one"
        if target == self.node_id:
            names = ", ".join(vms)
            return (
                RefusalKind.CONFLICT,
                f"cannot migrate to itself: {names} already runs on {target}",
            )
        for vm, summary in zip(vms, summaries, strict=True):
            if summary is None:
                return RefusalKind.UNKNOWN, f"unknown VM: {vm} does not run on {self.node_id}"
        member = self._view.member(target)
        if member is None:
            return RefusalKind.UNKNOWN, f"unknown host: {target}"
        if member.state is not MemberState.ALIVE:
            return RefusalKind.CONFLICT, f"host {target} is {member.state.value}"
        present = [summary for summary in summaries if summary is not None]  # all, as checked
        for summary in present:
            refusal = self._vm_refusal(summary, records)
            if refusal is not None:
                return refusal
        if target in self.targets_full_from_here():
            return (
                RefusalKind.CONFLICT,
                f"too many migrations from {self.node_id}: {target} does not show the last one "
                "yet; try again in a few seconds",
            )
        record = records.get(target)
        if record is None:
            return RefusalKind.UNKNOWN, f"unknown host: no record of {target} yet"
        # The target's record may still list a VM it sent here a moment ago: that copy
        # counts neither against its room nor as a member of the VM's own group there
        # (whether it really runs there is the target's to say).
        moving = {summary.name for summary in present}
        why = self._target_refusal(_without_vms(record, moving), present, records)
        return (RefusalKind.CONFLICT, why) if why is not None else None

    def _vm_refusal(
        self, summary: VmSummary, records: Mapping[str, NodeRecord]
    ) -> tuple[RefusalKind, str] | None:
        """Why this VM cannot move now: its state, or a migration of it under way."""
        vm = summary.name
        if summary.state == "unknown":
            own = records.get(self.node_id)
            down = libvirt_down(own) if own is not None else None
            since = f"unreachable since {down}" if down else "not answering"
            where = f"{vm}'s libvirt on {self.node_id}"
            return (
                RefusalKind.CONFLICT,
                f"VM state unknown: {where} is {since}; try again when it answers",
            )
        if summary.state not in MOVABLE:
            return RefusalKind.CONFLICT, f"VM not running: {vm} is {summary.state}"
        if vm in self._busy:
            return RefusalKind.CONFLICT, f"VM {vm} is already migrating ({self._busy[vm]})"
        return None

    def _target_refusal(
        self, record: NodeRecord, summaries: Sequence[VmSummary], records: Mapping[str, NodeRecord]
    ) -> str | None:
        """Why the target, as its record shows it, or the mesh cannot take the VMs now (an
        affinity group's all at once: a slot for each, room for all together)."""
        limits = self.config.limits
        target = record.node_id
        count = len(summaries)
        whole = f"; the affinity group needs {count} at once" if count > 1 else ""
        if record.draining:
            return f"host draining: {target} takes no new VMs"
        busy = outbound_refusal(self.node_id, len(self._sagas), limits, count)
        if busy is not None:
            return busy.reason
        ours = sum(1 for s in self._sagas.values() if s.target == target)
        inbound = max(record.migrations_in, ours)
        if inbound + count > limits.max_inbound:
            return f"too many migrations: {target} already receives {inbound} inbound{whole}"
        alive = sum(
            1
            for node_id in records
            if (m := self._view.member(node_id)) is not None and m.state is MemberState.ALIVE
        )
        running = cluster_migrations(records, self.node_id, len(self._sagas), limits.max_outbound)
        full = cluster_refusal(running, alive, limits, count)
        if full is not None:
            return full.reason
        overcommit = self.config.reservations.vcpu_overcommit
        return group_room_refusal(record, [_demand(s) for s in summaries], overcommit)

    def _refuse_locally(
        self,
        vms: Sequence[str],
        target: str,
        refusal: tuple[RefusalKind, str],
        out: MigrationOutput,
    ) -> MigrationOutput:
        self.stats.refused_locally += 1
        kind, reason = refusal
        for vm in vms:
            out.events.append(MigrationRefused(vm, target, reason, "", self.node_id, kind))
        return out

    def _new_id(self) -> str:
        """A fresh 64-bit hex id from the injected RNG, unique among what we remember."""
        while True:
            migration_id = f"{self._rng.getrandbits(64):016x}"
            if migration_id not in self._sagas and migration_id not in self._ended:
                return migration_id

    def _proposal(self, saga: _Saga) -> MigrationPropose:
        """The leading saga's proposal (with the rest of its affinity group, if any)."""
        group = tuple(
            GroupMember(
                other.migration_id,
                other.vm,
                other.demand.vcpus,
                other.demand.memory_mib,
                other.demand.disk_gib,
                other.demand.anti_affinity,
            )
            for mid in saga.group[1:]
            if (other := self._sagas.get(mid)) is not None
        )
        return MigrationPropose(
            migration_id=saga.migration_id,
            vm=saga.vm,
            source=self.node_id,
            target=saga.target,
            vcpus=saga.demand.vcpus,
            memory_mib=saga.demand.memory_mib,
            disk_gib=saga.demand.disk_gib,
            reason=saga.purpose,
            anti_affinity=saga.demand.anti_affinity,
            started_at=saga.started_at,
            group=group,
        )

    def cancel(self, migration_id: str, now: float) -> MigrationOutput:
        """Stop a migration at whatever stage it is (refused only in post-copy)."""
        out = MigrationOutput()
        saga = self._sagas.get(migration_id)
        if saga is None:
            ended = self._ended.get(migration_id)
            if ended is None:
                out.events.append(
                    MigrationCancelRefused(migration_id, "unknown migration", RefusalKind.UNKNOWN)
                )
            else:
                why = f"already ended: {ended.outcome}"
                out.events.append(MigrationCancelRefused(migration_id, why, RefusalKind.CONFLICT))
            return out
        if saga.phase is Phase.POSTCOPY:
            out.events.append(
                MigrationCancelRefused(migration_id, POSTCOPY_CANCEL, RefusalKind.CONFLICT)
            )
        elif saga.phase is Phase.PROPOSED:
            self._abort_before_start(saga, Trigger.CANCEL, CANCELLED, now, out)
        elif saga.phase is Phase.MIGRATING:
            saga.cancelled = True
            saga.error = CANCELLED
            self._move(saga, Trigger.CANCEL, now)
            saga.timer = now + self.config.abort_timeout
            out.actions.append(AbortLibvirtMigration(migration_id, saga.vm))
        else:
            why = f"already stopping ({saga.phase.value})"
            out.events.append(MigrationCancelRefused(migration_id, why, RefusalKind.CONFLICT))
        return out

    def cancel_vm(self, vm: str, now: float) -> MigrationOutput:
        """`cancel` the running migration of `vm` (the CLI names VMs, not ids)."""
        return self.cancel(self._busy.get(vm, ""), now)

    def adopt_job(self, vm: str, target: str, postcopy: bool, now: float) -> MigrationOutput:
        """Take charge of an outgoing libvirt job found at start-up (this agent restarted).

        libvirtd drives a peer-to-peer migration on its own, so a job can
        outlive the agent that started it, with no saga left to escalate or
        report it. The driver lists such jobs when the agent starts and hands
        each here: a pre-copy job is aborted (the VM stays here, the failure
        is reported with its reason), a post-copy one can only finish. The new
        saga has a new id (the old one died with the old agent), which the
        driver uses to report the job's end; the target's old reservation
        lapses on its own.
        """
        out = MigrationOutput()
        if vm in self._busy or target == self.node_id:
            self.stats.invalid += 1
            return out
        summary = _find_vm(self._view.records().get(self.node_id), vm)
        demand = Demand(summary.vcpus, summary.memory_mib) if summary else Demand(0, 0)
        saga = _Saga(
            migration_id=self._new_id(),
            vm=vm,
            source=self.node_id,
            target=target,
            demand=demand,
            policy=self.config.policy,
            purpose="adopted",
            started=now,
            phase=Phase.POSTCOPY if postcopy else Phase.ABORTING,
            error="source agent restarted mid-migration",
            adopted=True,
            started_at=self._wall(now),
        )
        self._sagas[saga.migration_id] = saga
        self._busy[vm] = saga.migration_id
        if not postcopy:
            saga.timer = now + self.config.abort_timeout
            out.actions.append(AbortLibvirtMigration(saga.migration_id, vm))
        why = f"source agent restarted mid-migration: job adopted as {saga.migration_id}"
        out.events.append(MigrationInDoubt(saga.migration_id, vm, why))
        return out

    # --- the driver's reports -----------------------------------------------------

    def migration_progress(
        self, migration_id: str, stats: MigrationProgress, now: float
    ) -> MigrationOutput:
        """A libvirt job-stats sample: show it, forward it (renews the lease), maybe escalate."""
        out = MigrationOutput()
        saga = self._sagas.get(migration_id)
        if saga is None or stats.migration_id != migration_id:
            self._count_unknown(migration_id)
            return out
        trigger = Trigger.SWITCHED if stats.phase == JobPhase.POSTCOPY else Trigger.PROGRESS
        if saga.phase is Phase.ABORTING:
            trigger = Trigger.PROGRESS
        if next_phase(saga.phase, trigger) is None:
            self.stats.invalid += 1
            return out
        previous = saga.phase
        self._move(saga, trigger, now)
        saga.percent = max(0.0, min(100.0, stats.percent))
        saga.last_progress = stats
        out.events.append(
            MigrationProgressed(
                migration_id,
                saga.vm,
                saga.source,
                saga.target,
                saga.percent,
                stats.phase,
                stats.data_remaining,
                stats.bandwidth,
                stats.dirty_rate,
                stats.iteration,
                stats.expected_downtime_ms,
            )
        )
        if saga.phase is not previous or now >= saga.forwarded_at + self.config.progress_interval:
            self._forward(saga, now, out)
        self._check_switchover(saga, stats, now, out)
        self._check_escalation(saga, now, out)
        return out

    def migration_finished(
        self,
        migration_id: str,
        ok: bool,
        reason: str,
        now: float,
        totals: JobTotals | None = None,
    ) -> MigrationOutput:
        """The libvirt job ended: success commits; failure asks where the VM really runs.
        `totals`: what the job cost by libvirt's final statistics, counted when the saga ends."""
        out = MigrationOutput()
        saga = self._sagas.get(migration_id)
        if saga is None:
            self._count_unknown(migration_id)
            return out
        trigger = Trigger.FINISHED_OK if ok else Trigger.FINISHED_FAILED
        if next_phase(saga.phase, trigger) is None:
            self.stats.invalid += 1  # not started, or a second failure while reconciling
            return out
        saga.totals = totals or saga.totals
        if ok:
            note = "cancel came too late" if saga.cancelled else ""
            self._commit(saga, now, note, out)
        else:
            saga.error = saga.error or reason or "libvirt migration failed"
            self._move(saga, trigger, now)
            self._reconcile(saga, now, f"libvirt job failed: {reason or 'no reason given'}", out)
        return out

    def vm_presence(self, vm: str, seen: Mapping[str, Presence], now: float) -> MigrationOutput:
        """What each host's libvirt says about `vm` (answering `ReconcileVm`): the evidence
        that ends a saga in doubt, or an expired reservation's story."""
        out = MigrationOutput()
        saga = self._sagas.get(self._busy.get(vm, ""))
        if saga is None or saga.phase is not Phase.RECONCILING:
            self._inbound_location(vm, seen, now, out)
            return out
        verdict = locate(seen)
        since = saga.reconciling_since if saga.reconciling_since is not None else now
        waited = now - since
        if isinstance(verdict, On):
            self._retire(vm, saga.migration_id, verdict, seen, out)
            self._settle_on(saga, verdict.host, now, out)
        elif isinstance(verdict, Doubt) and waited >= self.config.doubt_after:
            self._give_up(saga, verdict, now, out)
        elif waited >= self.config.reconcile_deadline:
            self._give_up(saga, undecided(seen, f"{waited:.0f} s"), now, out)
        else:
            self._move(saga, Trigger.NOWHERE, now)
            saga.timer = now + self.config.locate_retry
            self._note_doubt(saga, verdict.why, out)
        return out

    def _settle_on(self, saga: _Saga, host: str, now: float, out: MigrationOutput) -> None:
        """The evidence found the VM on `host`: the saga ends by where it is."""
        if host == saga.target:
            self._commit(saga, now, "found on the target by reconcile", out)
            return
        # On the source, or on a third host (another job moved it): not our move.
        self._move(saga, Trigger.ON_SOURCE, now)
        reason = saga.error or "migration failed"
        if host != saga.source:
            reason = f"{reason}; {saga.vm} found on {host}"
        self._end(saga, "aborted", now)
        out.sends.append((saga.target, self._abort_message(saga, reason)))
        out.events.append(
            MigrationFailed(saga.migration_id, saga.vm, saga.source, saga.target, reason)
        )

    def _give_up(self, saga: _Saga, doubt: Doubt, now: float, out: MigrationOutput) -> None:
        """The evidence cannot say where the VM should run: end visibly, for the operator."""
        self._move(saga, Trigger.UNDECIDED, now)
        cause = f" ({saga.error})" if saga.error else ""
        reason = f"in doubt: {saga.vm} {doubt.why}{cause}; {recover_hint(saga.vm, doubt)}"
        saga.error = reason
        self._end(saga, "in-doubt", now)
        self._doubts[saga.vm] = Doubted(saga.vm, saga.migration_id, reason, doubt.candidates, now)
        out.sends.append((saga.target, self._abort_message(saga, reason)))
        out.events.append(MigrationUndecided(saga.migration_id, saga.vm, reason, doubt.candidates))

    def _abort_message(self, saga: _Saga, reason: str) -> MigrationAbort:
        """The Abort telling the target how an ended saga came out (and when)."""
        outcome = "in-doubt" if saga.phase is Phase.IN_DOUBT else "aborted"
        return MigrationAbort(
            saga.migration_id, reason, ended_at=saga.ended_at or 0.0, outcome=outcome
        )

    def _retire(
        self,
        vm: str,
        migration_id: str,
        verdict: On,
        seen: Mapping[str, Presence],
        out: MigrationOutput,
    ) -> None:
        """Ask the driver to remove every copy of `vm` left where it does not run."""
        uuid = seen[verdict.host].uuid
        for host in verdict.stale:
            out.actions.append(RetireStaleCopy(migration_id, vm, host, uuid, verdict.host))

    def _note_doubt(self, saga: _Saga, why: str, out: MigrationOutput) -> None:
        """Say why the outcome is still unknown, once per new reason (the looks repeat)."""
        if why != saga.doubt_note:
            saga.doubt_note = why
            out.events.append(MigrationInDoubt(saga.migration_id, saga.vm, why))

    def _inbound_location(
        self, vm: str, seen: Mapping[str, Presence], now: float, out: MigrationOutput
    ) -> None:
        """A target-side look after a lease expired: note what it found on the history."""
        locating = self._locating.get(vm)
        info = self._inbound_ended.get(locating.migration_id) if locating else None
        if locating is None or info is None:
            self._locating.pop(vm, None)
            self.stats.unsolicited_locations += 1
            return
        verdict = locate(seen)
        if isinstance(verdict, Wait) and now - locating.since < self.config.reconcile_deadline:
            locating.due = now + self.config.locate_retry
            return
        del self._locating[vm]
        if isinstance(verdict, On):
            self._retire(vm, locating.migration_id, verdict, seen, out)
            outcome = "committed" if verdict.host == self.node_id else "aborted"
            found = f"reconcile found {vm} on {verdict.host}"
        else:
            doubt = verdict if isinstance(verdict, Doubt) else undecided(seen, "the deadline")
            outcome, found = "in-doubt", f"in doubt: {vm} {doubt.why}"
        self._inbound_ended[info.migration_id] = dataclasses.replace(
            info, outcome=outcome, phase=outcome, reason=f"{info.reason}; {found}"
        )

    # --- doubts ---------------------------------------------------------------------

    def doubt(self, vm: str) -> Doubted | None:
        """Why `vm`'s location is in doubt here, if it is (until a host runs it again)."""
        return self._doubts.get(vm)

    def doubts(self) -> list[Doubted]:
        """Every VM whose migration from here ended in doubt and that no host runs yet."""
        return list(self._doubts.values())

    def settle_doubt(self, vm: str) -> Doubted | None:
        """The operator recovered `vm`: forget the doubt (returned, if there was one)."""
        return self._doubts.pop(vm, None)

    def _clear_doubts(self) -> None:
        """A doubt ends when some host's record shows the VM active again."""
        for record in self._view.records().values():
            for summary in record.vms:
                if summary.name in self._doubts and summary.state in ("running", "paused"):
                    del self._doubts[summary.name]

    # --- messages -----------------------------------------------------------------

    def receive(self, sender: str, message: Message, now: float) -> MigrationOutput:
        """Handle one Migration* message from `sender`; anything else is counted and ignored."""
        out = MigrationOutput()
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self.stats.unhandled += 1
        elif not sender or sender == self.node_id:
            self.stats.invalid += 1
        else:
            handler(self, sender, message, now, out)
        return out

    def _on_accept(
        self, sender: str, message: MigrationAccept, now: float, out: MigrationOutput
    ) -> None:
        saga = self._sagas.get(message.migration_id)
        if saga is None:
            if not self._count_late_reply(sender, message.migration_id):
                return
            ended = self._ended.get(message.migration_id)
            if ended is None or ended.outcome != "committed":
                # A reservation we no longer want (we gave up, or restarted): free it now.
                why = ended.error if ended else "unknown migration"
                out.sends.append((sender, MigrationAbort(message.migration_id, why)))
            return
        if sender != saga.target:
            self.stats.wrong_peer += 1
            return
        if saga.phase is not Phase.PROPOSED:
            self.stats.duplicates += 1
            return
        if saga.group and saga.group[0] != saga.migration_id:
            self.stats.invalid += 1  # only the group's proposal is answered: all or none
            return
        # The target reserved room for the whole affinity group: every VM's copy starts.
        for each in (saga, *self._waiting_with(saga)):
            self._move(each, Trigger.ACCEPT, now)
            each.timer = now + completion_timeout(each.policy, each.demand.memory_mib)
            each.renew_at = now + self.config.renew_interval
            each.forwarded_at = now
            record = self._view.records().get(each.target)
            target_uri = record.libvirt_uri if record is not None else ""
            out.events.append(
                MigrationAccepted(each.migration_id, each.vm, sender, message.reservation_expires)
            )
            out.actions.append(
                StartLibvirtMigration(
                    each.migration_id,
                    each.vm,
                    each.target,
                    target_uri,
                    message.migration_uri,
                    each.policy,
                )
            )

    def _waiting_with(self, saga: _Saga) -> list[_Saga]:
        """The other sagas of `saga`'s affinity group still waiting for the target's answer
        (they share the one proposal, so its answer is theirs too)."""
        return [
            other
            for mid in saga.group
            if mid != saga.migration_id
            and (other := self._sagas.get(mid)) is not None
            and other.phase is Phase.PROPOSED
        ]

    def _on_refuse(
        self, sender: str, message: MigrationRefuse, now: float, out: MigrationOutput
    ) -> None:
        saga = self._sagas.get(message.migration_id)
        if saga is None:
            self._count_late_reply(sender, message.migration_id)
            return
        if sender != saga.target:
            self.stats.wrong_peer += 1
            return
        if saga.phase is not Phase.PROPOSED:
            self.stats.duplicates += 1  # a late answer to a resent Propose
            return
        reason = message.reason or f"refused by {sender}"
        for each in (saga, *self._waiting_with(saga)):  # a group is refused whole
            each.error = reason
            self._move(each, Trigger.REFUSE, now)
            self._end(each, "refused", now)
            out.events.append(MigrationRefused(each.vm, sender, reason, each.migration_id, sender))

    def _on_revoke(
        self, saga: _Saga, sender: str, message: MigrationAbort, now: float, out: MigrationOutput
    ) -> None:
        """The target withdrew its reservation (it began draining): stop while we still can.
        In post-copy the guest is already split: it lands, and the target's drain moves it on."""
        if sender != saga.target:
            self.stats.wrong_peer += 1
            return
        reason = message.reason or f"{sender} withdrew its reservation"
        if saga.phase is Phase.PROPOSED:
            self._abort_before_start(saga, Trigger.REVOKED, reason, now, out)
        elif saga.phase is Phase.MIGRATING:
            saga.error = reason
            saga.escalation = f"aborted after {now - saga.started:.1f} s: {reason}"
            self._move(saga, Trigger.REVOKED, now)
            saga.timer = now + self.config.abort_timeout
            out.actions.append(AbortLibvirtMigration(saga.migration_id, saga.vm))
            out.events.append(MigrationEscalated(saga.migration_id, saga.vm, "abort", reason))
        else:
            self.stats.duplicates += 1  # post-copy can only finish; or it is ending already

    # --- target side ----------------------------------------------------------------

    def set_draining(self, draining: bool, now: float) -> MigrationOutput:
        """This host begins (or ends) a drain. From this moment it admits nothing, and the
        source of every migration still arriving before post-copy is asked to stop it (a
        reservation made a moment before the drain must not land a VM on a draining host)."""
        out = MigrationOutput()
        self._draining = draining
        if not draining:
            return out
        reason = f"host draining: {self.node_id} takes no new VMs"
        for held in self._book:
            if held.landed or held.revoked or held.phase is Inbound.POSTCOPY:
                continue
            held.revoked = True
            out.sends.append((held.source, MigrationAbort(held.migration_id, reason)))
            out.events.append(ReservationRefused(held.migration_id, held.vm, held.source, reason))
        return out

    def _on_propose(
        self, sender: str, message: MigrationPropose, now: float, out: MigrationOutput
    ) -> None:
        self.stats.proposals_received += 1
        arrivals = _arrivals(message)
        if (
            message.source != sender
            or message.target != self.node_id
            or not all(a.vm and a.migration_id for a in arrivals)
            or any(a.vcpus < 0 or a.memory_mib < 0 or not a.disk_gib >= 0 for a in arrivals)
            or len({a.vm for a in arrivals}) < len(arrivals)
            or len({a.migration_id for a in arrivals}) < len(arrivals)
        ):
            self.stats.invalid += 1
            return
        held = self._book.get(message.migration_id)
        if held is not None:
            if held.source != sender:
                self.stats.wrong_peer += 1
                return
            self.stats.duplicates += 1  # our Accept was lost or is late: say it again
            if not held.landed:
                out.sends.append((sender, self._accept(held)))
            return
        reason = self._admission_refusal(message, arrivals, now)
        if reason is not None:
            self.stats.proposals_refused += 1
            out.sends.append((sender, MigrationRefuse(message.migration_id, reason)))
            out.events.append(ReservationRefused(message.migration_id, message.vm, sender, reason))
            return
        # One step for the whole affinity group: every member's room is held, each under
        # its own migration id (its progress, commit and abort are its own), and the
        # group counts once against the source's unseen reservations.
        ttl = self.config.reservations.ttl
        group = message.migration_id if message.group else ""
        made: list[Reservation] = []
        for arrival in arrivals:
            held = Reservation(
                migration_id=arrival.migration_id,
                vm=arrival.vm,
                source=sender,
                vcpus=arrival.vcpus,
                memory_mib=arrival.memory_mib,
                disk_gib=arrival.disk_gib,
                created=now,
                expires=now + ttl,
                anti_affinity=arrival.anti_affinity,
                started_at=message.started_at or self._wall(now),
                purpose=message.reason,
                group=group,
            )
            self._book.add(held)
            made.append(held)
            out.events.append(
                ReservationMade(held.migration_id, held.vm, sender, held.memory_mib, held.expires)
            )
        out.sends.append((sender, self._accept(made[0])))  # the proposal's own VM's

    def _accept(self, held: Reservation) -> MigrationAccept:
        return MigrationAccept(held.migration_id, held.expires, self.migration_uri)

    def _admission_refusal(
        self, message: MigrationPropose, arrivals: Sequence[GroupMember], now: float
    ) -> str | None:
        """Why this host will not reserve room for the proposed VM, or for every VM of its
        affinity group at once (None: it will, for all of them)."""
        ended = next((a for a in arrivals if a.migration_id in self._inbound_ended), None)
        if ended is not None:
            return f"migration {ended.migration_id} already ended here"
        record = self._view.records().get(self.node_id)
        self._book.settle(record)
        self._observe(record, now)
        source, config = message.source, self.config.reservations
        until = self._penalties.get(source, (0.0, 0))[0]
        if now < until:
            return (
                f"refused for {until - now:.0f} s more: {source}'s last reservation here never "
                "showed in libvirt"
            )
        members = [
            Arrival(a.vm, source, Demand(a.vcpus, a.memory_mib, a.disk_gib, a.anti_affinity))
            for a in arrivals
        ]
        refusal = target_refusal(
            self.node_id,
            self._without_departed(record, members),
            self._book,
            members,
            draining=self._draining,
            max_inbound=self.config.limits.max_inbound,
            config=config,
        )
        return refusal.reason if refusal is not None else None

    def _without_departed(
        self, record: NodeRecord | None, arrivals: Sequence[Arrival]
    ) -> NodeRecord | None:
        """This host's `record` without the arriving VMs it sent to their source itself:
        the record lists a VM that left until the inventory reads libvirt again, and a VM
        sent straight back must not be refused as present here (or fill its own room)."""
        if record is None:
            return None
        departed = {a.vm for a in arrivals if self.left_for(a.vm) == a.source}
        return _without_vms(record, departed) if departed else record

    def _held_from(self, sender: str, migration_id: str) -> Reservation | None:
        """The reservation `migration_id` if `sender` owns it; counts why not otherwise."""
        held = self._book.get(migration_id)
        if held is None:
            if migration_id in self._inbound_ended:
                self.stats.duplicates += 1
            else:
                self._count_unknown(migration_id)
            return None
        if held.source != sender:
            self.stats.wrong_peer += 1
            return None
        return held

    def _on_progress(
        self, sender: str, message: MigrationProgress, now: float, out: MigrationOutput
    ) -> None:
        held = self._held_from(sender, message.migration_id)
        if held is None:
            return
        if held.landed:
            self.stats.duplicates += 1
            return
        phase = next_inbound(held.phase, message.phase)
        if phase is None:  # back out of post-copy: stale or false, and it renews nothing
            self.stats.invalid += 1
            return
        self._book.renew(held.migration_id, now, self.config.reservations.ttl)
        held.percent = max(0.0, min(100.0, message.percent))
        held.phase = phase
        out.events.append(
            MigrationProgressed(
                held.migration_id,
                held.vm,
                sender,
                self.node_id,
                held.percent,
                message.phase,
                message.data_remaining,
                message.bandwidth,
                message.dirty_rate,
                message.iteration,
                message.expected_downtime_ms,
            )
        )

    def _on_commit(
        self, sender: str, message: MigrationCommit, now: float, out: MigrationOutput
    ) -> None:
        held = self._held_from(sender, message.migration_id)
        if held is None:
            return
        if held.landed:
            self.stats.duplicates += 1
            return
        self._book.land(held.migration_id, now, self.config.reservations.landed_hold)
        self._end_inbound(held, "committed", "", now, message.ended_at)
        out.events.append(ReservationReleased(held.migration_id, held.vm, sender, "committed"))

    def _on_abort(
        self, sender: str, message: MigrationAbort, now: float, out: MigrationOutput
    ) -> None:
        saga = self._sagas.get(message.migration_id)
        if saga is not None:
            self._on_revoke(saga, sender, message, now, out)
            return
        held = self._book.get(message.migration_id)
        if held is None and message.migration_id not in self._inbound_ended:
            # Overtaken by its own Abort (reordering), or for a saga we never heard of:
            # remember the id so a late Propose is refused rather than reserved.
            self._count_unknown(message.migration_id)
            tombstone = Reservation(message.migration_id, "", sender, 0, 0, 0.0, now, now)
            self._inbound_ended[message.migration_id] = _inbound_info(
                tombstone, self.node_id, "aborted", message.reason, now, self._wall(now)
            )
            self._trim(self._inbound_ended)
            return
        held = self._held_from(sender, message.migration_id)
        if held is None:
            return
        if held.landed:
            self.stats.invalid += 1  # a commit cannot be taken back: the VM is here
            return
        self._book.release(held.migration_id)
        outcome = message.outcome if message.outcome in ("aborted", "in-doubt") else "aborted"
        self._end_inbound(held, outcome, message.reason, now, message.ended_at)
        out.events.append(
            ReservationReleased(held.migration_id, held.vm, sender, "aborted", message.reason)
        )

    def _observe(self, record: NodeRecord | None, now: float) -> None:
        """Note which arrivals this host's libvirt shows; a source whose migration shows is
        in good standing again."""
        for held in self._book.observe(record, now):
            self._penalties.pop(held.source, None)

    def _lapse(self, held: Reservation, now: float) -> str:
        """Why `held` lapsed; a reservation libvirt never showed earns its source a penalty."""
        config = self.config.reservations
        if not unseen(held, now, config.confirm_within):
            return f"no word from {held.source} for {config.ttl:g} s"
        if held.seen is not None:
            return f"{held.vm} no longer shows in {self.node_id}'s libvirt"
        strikes = self._penalties.get(held.source, (0.0, 0))[1] + 1
        wait = min(config.max_penalty, config.penalty * 2 ** (strikes - 1))
        self._penalties[held.source] = (now + wait, strikes)
        self.stats.reservations_unused += 1
        return (
            f"{held.vm} never showed in {self.node_id}'s libvirt within "
            f"{config.confirm_within:g} s; {held.source} refused for {wait:g} s"
        )

    def _end_inbound(
        self, held: Reservation, outcome: str, reason: str, now: float, ended_at: float = 0.0
    ) -> None:
        """Move an inbound migration to history; `ended_at`: the source's wall-clock end (0 if
        it did not say: this host's clock)."""
        info = _inbound_info(held, self.node_id, outcome, reason, now, ended_at or self._wall(now))
        self._inbound_ended[held.migration_id] = info
        self._trim(self._inbound_ended)

    # --- time -------------------------------------------------------------------------

    def tick(self, now: float) -> MigrationOutput:
        """Do whatever is due at `now`: answers overdue, escalations, renewals, lease expiry."""
        out = MigrationOutput()
        for saga in list(self._sagas.values()):
            self._tick_saga(saga, now, out)
        record = self._view.records().get(self.node_id)
        self._book.settle(record)
        self._observe(record, now)
        within = self.config.reservations.confirm_within
        for held in self._book.expire(now, within):
            if held.landed:
                continue  # the record never showed it within the hold: nothing to tell
            self.stats.reservations_expired += 1
            self.stats.reconciles += 1
            reason = self._lapse(held, now)
            self._end_inbound(held, "expired", reason, now)
            if held.seen is not None or not unseen(held, now, within):
                # It may have moved: look where it went (one never seen here did not).
                hosts = (held.source, self.node_id)
                self._locating[held.vm] = _Locating(held.migration_id, hosts, now, now)
            out.events.append(
                ReservationReleased(held.migration_id, held.vm, held.source, "expired", reason)
            )
        for vm, locating in self._locating.items():
            if now >= locating.due:
                locating.due = now + self.config.reconcile_retry
                out.actions.append(ReconcileVm(vm, locating.migration_id, locating.hosts))
        if self._doubts:
            self._clear_doubts()
        return out

    def _tick_saga(self, saga: _Saga, now: float, out: MigrationOutput) -> None:
        cfg = self.config
        if saga.phase is Phase.PROPOSED:
            member = self._view.member(saga.target)
            if member is None or member.state in (MemberState.DEAD, MemberState.LEFT):
                why = f"target {saga.target} failed before answering"
                self._abort_before_start(saga, Trigger.TARGET_GONE, why, now, out)
            elif now >= saga.timer:
                why = f"no answer from {saga.target} within {cfg.answer_timeout:g} s"
                self._abort_before_start(saga, Trigger.NO_ANSWER, why, now, out)
            elif now >= saga.retry_at:
                saga.retry_at = now + cfg.propose_retry
                out.sends.append((saga.target, self._proposal(saga)))
            return
        if now >= saga.renew_at:
            self._forward(saga, now, out)
        if saga.phase is Phase.MIGRATING:
            self._check_stall(saga, now, out)  # also when the samples stopped coming
            self._check_escalation(saga, now, out)
        elif saga.phase is Phase.ABORTING and now >= saga.timer:
            self._move(saga, Trigger.ABORT_STALLED, now)
            out.actions.append(AbortLibvirtMigration(saga.migration_id, saga.vm))
            why = f"abort did not end the libvirt job within {cfg.abort_timeout:g} s"
            self._reconcile(saga, now, why, out)
        elif saga.phase is Phase.RECONCILING and now >= saga.timer:
            since = saga.reconciling_since if saga.reconciling_since is not None else now
            if now - since >= cfg.reconcile_deadline:  # the looks themselves never came back
                why = (
                    f"could not be located: no hypervisor answered in {cfg.reconcile_deadline:g} s"
                )
                self._give_up(saga, Doubt(why), now, out)
            else:
                self._reconcile(saga, now, saga.doubt_note or "no answer yet", out)

    def next_deadline(self) -> float:
        """The earliest time at which `tick` has something to do (inf: nothing)."""
        deadline = self._book.next_deadline(self.config.reservations.confirm_within)
        for saga in self._sagas.values():
            due = min(saga.timer, saga.retry_at) if saga.phase is Phase.PROPOSED else saga.timer
            if saga.phase is Phase.POSTCOPY:
                due = INF  # no deadline of its own: post-copy can only finish
            elif saga.phase is Phase.MIGRATING and saga.paused_since is not None:
                due = min(self._escalation_due(saga), saga.copied_at + self.config.switchover_stall)
            deadline = min(deadline, due, saga.renew_at)
        return min([deadline, *(locating.due for locating in self._locating.values())])

    # --- saga mechanics ---------------------------------------------------------------

    def _move(self, saga: _Saga, trigger: Trigger, now: float) -> None:
        """Apply one transition of the table (callers checked it is legal)."""
        phase = next_phase(saga.phase, trigger)
        if phase is None:  # a bug in this module, not bad input: inputs are checked first
            raise AssertionError(f"no transition from {saga.phase} on {trigger}")
        saga.phase = phase

    def _end(self, saga: _Saga, outcome: str, now: float) -> None:
        """The saga reached a terminal phase: unlock the VM, move it to history."""
        saga.outcome = outcome
        saga.ended = now
        saga.ended_at = self._wall(now)
        saga.timer = saga.retry_at = saga.renew_at = INF
        del self._sagas[saga.migration_id]
        self._busy.pop(saga.vm, None)
        self._ended[saga.migration_id] = saga
        self._trim(self._ended)
        if outcome == "committed":
            self.stats.committed += 1
        elif outcome == "in-doubt":
            self.stats.in_doubt += 1
        else:
            self.stats.aborted += 1
        self.durations[outcome].observe(now - saga.started)
        if saga.totals is not None:
            self.transferred[outcome].observe(saga.totals.data_bytes)
            if outcome == "committed" and saga.totals.downtime_s is not None:
                self.downtimes.observe(saga.totals.downtime_s)

    def _trim(self, history: OrderedDict[str, Any]) -> None:
        while len(history) > self.config.history:
            history.popitem(last=False)

    def _commit(self, saga: _Saga, now: float, note: str, out: MigrationOutput) -> None:
        trigger = Trigger.ON_TARGET if saga.phase is Phase.RECONCILING else Trigger.FINISHED_OK
        self._move(saga, trigger, now)
        saga.percent = 100.0
        saga.error = ""
        self._end(saga, "committed", now)
        out.sends.append((saga.target, MigrationCommit(saga.migration_id, saga.ended_at or 0.0)))
        out.events.append(
            MigrationCompleted(
                saga.migration_id, saga.vm, saga.source, saga.target, now - saga.started, note
            )
        )

    def _abort_before_start(
        self, saga: _Saga, trigger: Trigger, reason: str, now: float, out: MigrationOutput
    ) -> None:
        """End a saga whose libvirt job never started (the VM certainly stayed here), and
        with it the rest of its affinity group waiting for the same answer: the group's
        reservations are freed together (each under its id), none is left to go alone."""
        for each in (saga, *self._waiting_with(saga)):
            each.error = reason
            self._move(each, trigger, now)
            self._end(each, "aborted", now)
            out.sends.append((each.target, self._abort_message(each, reason)))
            out.events.append(
                MigrationFailed(each.migration_id, each.vm, each.source, each.target, reason)
            )

    def _reconcile(self, saga: _Saga, now: float, why: str, out: MigrationOutput) -> None:
        """Ask the driver what each host's libvirt says; the answer (`vm_presence`) decides."""
        self.stats.reconciles += 1
        if saga.reconciling_since is None:
            saga.reconciling_since = now
        saga.timer = now + self.config.reconcile_retry
        self._note_doubt(saga, why, out)
        out.actions.append(ReconcileVm(saga.vm, saga.migration_id, (saga.source, saga.target)))

    def _forward(self, saga: _Saga, now: float, out: MigrationOutput) -> None:
        """Send the latest progress to the target: shows there, and renews its lease."""
        if saga.adopted:
            return  # the target holds no lease under this id
        sample = saga.last_progress or MigrationProgress(saga.migration_id, saga.percent)
        if saga.phase is Phase.POSTCOPY and sample.phase != JobPhase.POSTCOPY:
            sample = dataclasses.replace(sample, phase=JobPhase.POSTCOPY)
        saga.forwarded_at = now
        saga.renew_at = now + self.config.renew_interval
        out.sends.append((saga.target, sample))

    def _check_switchover(
        self, saga: _Saga, stats: MigrationProgress, now: float, out: MigrationOutput
    ) -> None:
        """Follow the source's pause for the final copy from the job samples: when it
        began, when it last copied something."""
        if saga.phase is not Phase.MIGRATING:
            return
        if stats.phase != JobPhase.SWITCHOVER:
            saga.paused_since = None
            return
        if saga.paused_since is None:
            saga.paused_since = saga.copied_at = now
            saga.paused_remaining = stats.data_remaining
        elif stats.data_remaining < saga.paused_remaining:
            saga.copied_at, saga.paused_remaining = now, stats.data_remaining
        self._check_stall(saga, now, out)

    def _check_stall(self, saga: _Saga, now: float, out: MigrationOutput) -> None:
        """Abort a job whose source has sat paused for the final copy, copying nothing, for
        `switchover_stall` s (the max downtime is meant to bound that pause to milliseconds;
        a slow final copy that still moves data is left to the completion timeout).

        Seen in the lab (QEMU 7.2, TCG): both sides paused, nothing left to copy, the job
        running for minutes; post-copy cannot start there, an abort ended it (the guest then
        ran on the target). Where the VM is afterwards, reconcile finds out. Checked on
        ticks too: job samples may stop coming while QEMU is stuck.
        """
        if saga.phase is not Phase.MIGRATING or saga.paused_since is None:
            return
        idle = now - saga.copied_at
        if idle < self.config.switchover_stall:
            return
        why = (
            f"stalled at the switchover: the VM sat paused {now - saga.paused_since:.0f} s, "
            f"nothing copied for {idle:.0f} s"
        )
        self._abort_job(saga, Trigger.SWITCHOVER_STALLED, why, now, out)

    def _escalation_due(self, saga: _Saga) -> float:
        """When the completion timeout acts: its time, but while the source is paused for
        the final copy not before `switchover_stall` into that pause (it may be finishing)."""
        if saga.paused_since is None:
            return saga.timer
        return max(saga.timer, saga.paused_since + self.config.switchover_stall)

    def _check_escalation(self, saga: _Saga, now: float, out: MigrationOutput) -> None:
        """Past the completion timeout: post-copy if the policy allows it, else abort.
        A source paused for the final copy (and still copying) is aborted: post-copy
        cannot start there."""
        if saga.phase is not Phase.MIGRATING or now < self._escalation_due(saga):
            return
        timeout = completion_timeout(saga.policy, saga.demand.memory_mib)
        gib = saga.demand.memory_mib / MIB_PER_GIB
        why = (
            f"did not converge within {timeout:g} s "
            f"({saga.policy.completion_timeout_per_gib:g} s per GiB of {gib:g} GiB)"
        )
        if not saga.policy.post_copy or saga.paused_since is not None:
            self._abort_job(saga, Trigger.TIMEOUT_ABORT, why, now, out)
            return
        self.stats.escalations += 1
        saga.escalation = f"post-copy after {now - saga.started:.1f} s: {why}"
        self._move(saga, Trigger.TIMEOUT_POSTCOPY, now)
        saga.timer = INF
        out.actions.append(SwitchToPostCopy(saga.migration_id, saga.vm))
        out.events.append(MigrationEscalated(saga.migration_id, saga.vm, "postcopy", why))

    def _abort_job(
        self, saga: _Saga, trigger: Trigger, why: str, now: float, out: MigrationOutput
    ) -> None:
        """Escalate by aborting the libvirt job (`trigger`: a timeout or a stall)."""
        self.stats.escalations += 1
        saga.escalation = f"aborted after {now - saga.started:.1f} s: {why}"
        self._move(saga, trigger, now)
        saga.error = why
        saga.timer = now + self.config.abort_timeout
        out.actions.append(AbortLibvirtMigration(saga.migration_id, saga.vm))
        out.events.append(MigrationEscalated(saga.migration_id, saga.vm, "abort", why))

    def _count_late_reply(self, sender: str, migration_id: str) -> bool:
        """Count a target's reply to no running saga; False if it is not even that target's."""
        ended = self._ended.get(migration_id)
        if ended is None:
            self.stats.unknown_migration += 1
        elif ended.target != sender:
            self.stats.wrong_peer += 1
            return False
        else:
            self.stats.duplicates += 1
        return True

    def _count_unknown(self, migration_id: str) -> None:
        if migration_id in self._ended:
            self.stats.duplicates += 1  # late news about a saga that already ended
        else:
            self.stats.unknown_migration += 1

    # --- bookkeeping --------------------------------------------------------------------

    def outbound(self) -> int:
        """Outgoing migrations not yet ended (they count against `max_outbound`)."""
        return len(self._sagas)

    def inbound(self) -> int:
        """Incoming migrations still arriving (they count against `max_inbound`)."""
        return self._book.inbound()

    def with_counts(self, record: NodeRecord) -> NodeRecord:
        """This host's `record` with its migration counters, so peers can count migrations."""
        return with_migration_counts(record, self.outbound(), self.inbound())

    def busy(self, vm: str) -> bool:
        """Whether `vm` has an outgoing saga that has not ended (it cannot be moved again)."""
        return vm in self._busy

    def targets_full_from_here(self) -> set[str]:
        """Targets that would refuse another proposal from this host now: each admits at
        most `per_source` migrations from one source that its libvirt does not show yet
        (`reservations`), and its record does not list that many of ours yet."""
        outbound = (
            (saga.target, saga.vm, saga.group[0] if saga.group else saga.migration_id)
            for saga in self._sagas.values()
        )
        return closed_targets(outbound, self._view.records(), self.config.reservations.per_source)

    def moved_to(self, vm: str) -> str | None:
        """Where this host's latest remembered outbound migration of `vm` took it, if that
        migration committed (None: it failed, or none is remembered)."""
        latest = max(
            (s for s in self._ended.values() if s.vm == vm),  # our outbound sagas only
            key=lambda s: s.ended or 0.0,
            default=None,
        )
        return latest.target if latest is not None and latest.outcome == "committed" else None

    def left_for(self, vm: str) -> str | None:
        """The host `vm` went to from here, if the last committed migration of it that this
        host took part in sent it away (None: it arrived here last, or never moved)."""
        moves: list[tuple[float, str | None]] = [
            (saga.ended or 0.0, saga.target)
            for saga in self._ended.values()
            if saga.vm == vm and saga.outcome == "committed"
        ]
        moves += [
            (info.ended or 0.0, None)
            for info in self._inbound_ended.values()
            if info.vm == vm and info.outcome == "committed"
        ]
        last = max(moves, key=lambda move: move[0], default=None)
        return last[1] if last is not None else None

    def phase_of(self, migration_id: str) -> Phase | None:
        """The phase of an outbound saga, running or remembered; None if unknown."""
        saga = self._sagas.get(migration_id) or self._ended.get(migration_id)
        return saga.phase if saga is not None else None

    def reservations(self) -> list[Reservation]:
        """Inbound reservations held now (copies are not made: do not mutate)."""
        return list(self._book)

    def own_vm(self, vm: str) -> VmSummary | None:
        """`vm` as this host's own record lists it (None: it does not)."""
        return _find_vm(self._view.records().get(self.node_id), vm)

    def arriving(self, vm: str) -> bool:
        """Whether `vm` is arriving here (an inbound migration of it has not landed)."""
        held = self._book.for_vm(vm)
        return held is not None and not held.landed

    def migrations(self) -> list[MigrationInfo]:
        """Running migrations (oldest first), then recent ended ones (newest first)."""
        running: list[MigrationInfo] = [_info(s) for s in self._sagas.values()]
        running += [
            _inbound_info(r, self.node_id, "", "", None) for r in self._book if not r.landed
        ]
        running.sort(key=lambda info: info.started)
        ended: list[MigrationInfo] = [_info(s) for s in self._ended.values()]
        ended += [info for info in self._inbound_ended.values() if info.vm]
        ended.sort(key=lambda info: info.ended or 0.0, reverse=True)
        return running + ended

    def migration(self, migration_id: str) -> MigrationInfo | None:
        """One migration as `migrations()` shows it, found by id without building the list
        (clients waiting on a migration look it up many times a second)."""
        saga = self._sagas.get(migration_id) or self._ended.get(migration_id)
        if saga is not None:
            return _info(saga)
        held = self._book.get(migration_id)
        if held is not None and not held.landed:
            return _inbound_info(held, self.node_id, "", "", None)
        info = self._inbound_ended.get(migration_id)
        return info if info is not None and info.vm else None


def recover_hint(vm: str, doubt: Doubt) -> str:
    """What the operator runs to settle a VM in doubt."""
    command = f"run `nova vm recover {vm} --on HOST`"
    if doubt.candidates:
        return f"{command} (HOST: {', '.join(doubt.candidates)} hold a copy)"
    return f"{command} on a host that holds its definition and disks"


def _without_vms(record: NodeRecord, names: set[str]) -> NodeRecord:
    """`record` as if the VMs named `names` were not listed in it."""
    vms = tuple(summary for summary in record.vms if summary.name not in names)
    return dataclasses.replace(record, vms=vms)


def _find_vm(record: NodeRecord | None, vm: str) -> VmSummary | None:
    if record is None:
        return None
    return next((summary for summary in record.vms if summary.name == vm), None)


def _inbound_info(
    held: Reservation,
    target: str,
    outcome: str,
    reason: str,
    ended: float | None,
    ended_at: float | None = None,
) -> MigrationInfo:
    """How an inbound migration shows in `migrations()` (running if `ended` is None); an
    ended one shows its outcome as its phase, as the source's saga does."""
    return MigrationInfo(
        migration_id=held.migration_id,
        vm=held.vm,
        source=held.source,
        target=target,
        direction="inbound",
        phase=held.phase if ended is None else outcome,
        percent=held.percent,
        outcome=outcome,
        reason=reason,
        started=held.created,
        ended=ended,
        purpose=held.purpose,
        started_at=held.started_at,
        ended_at=ended_at,
    )


def _info(saga: _Saga) -> MigrationInfo:
    return MigrationInfo(
        migration_id=saga.migration_id,
        vm=saga.vm,
        source=saga.source,
        target=saga.target,
        direction="outbound",
        phase=saga.phase.value,
        percent=saga.percent,
        outcome=saga.outcome,
        reason=saga.error,
        started=saga.started,
        ended=saga.ended,
        purpose=saga.purpose,
        escalation=saga.escalation,
        started_at=saga.started_at,
        ended_at=saga.ended_at,
    )


Handler = Callable[[MigrationCore, str, Any, float, MigrationOutput], None]

_HANDLERS: dict[type, Handler] = {
    MigrationPropose: MigrationCore._on_propose,
    MigrationAccept: MigrationCore._on_accept,
    MigrationRefuse: MigrationCore._on_refuse,
    MigrationProgress: MigrationCore._on_progress,
    MigrationCommit: MigrationCore._on_commit,
    MigrationAbort: MigrationCore._on_abort,
}


def _arrivals(message: MigrationPropose) -> list[GroupMember]:
    """Every VM a proposal asks room for: its own, then the rest of its affinity group."""
    own = GroupMember(
        message.migration_id,
        message.vm,
        message.vcpus,
        message.memory_mib,
        message.disk_gib,
        message.anti_affinity,
    )
    return [own, *message.group]


def _demand(summary: VmSummary, template: str = "") -> Demand:
    """What `summary`'s VM asks of a target: its size, its anti-affinity group and the
    template its disk comes from (`template`, else as its labels say)."""
    labels = summary.labels
    group = labels.get(ANTI_AFFINITY_LABEL, "")
    return Demand(summary.vcpus, summary.memory_mib, 0.0, group, template or template_of(labels))
