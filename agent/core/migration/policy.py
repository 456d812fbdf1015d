"""Migration policy: how one live migration is driven, and how many may run at once.

Two frozen values, both with defaults chosen for edge hosts and overridable:

- `MigrationPolicy` is per migration: bandwidth cap, max downtime,
  auto-converge, and the escalation rule for a guest that does not converge
  (after `completion_timeout_per_gib` seconds per GiB of guest memory, switch
  to post-copy if allowed, else abort). `with_overrides` applies an operator's
  per-migration settings (`PolicyOverrides`: `nova vm migrate --bandwidth ...`)
  and refuses out-of-range ones with a sentence the CLI can print.
- `MigrationLimits` is per host and per cluster: at most 2 outbound and 2
  inbound migrations per host, and a cluster-wide ceiling estimated from the
  counters every agent publishes in its gossiped record's typed fields
  (`with_migration_counts`, `cluster_migrations`).

Everything here is a pure function of its arguments: no clock, no state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from novacron.protocol.messages import MAX_MIGRATIONS, NodeRecord

MIB_PER_GIB = 1024


class PolicyError(ValueError):
    """A policy override that cannot be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class MigrationPolicy:
    """How to drive one live migration (libvirt `migrateToURI3` parameters and escalation).

    Max downtime, unless set (`switchover_limit_ms`): 50 ms for a guest
    measured idle (writing at most `IDLE_DIRTY_MIB_S` in every measurement of
    the last minute) with no bandwidth cap,
    else QEMU's own 300 ms. QEMU switches over as soon as what is left to
    copy fits the limit, so at 300 ms an idle 128 MiB guest paused 150-175 ms
    in the lab on 2026-11-27 and at 50 ms 40 ms, its migration taking the
    same 3 pre-copy passes. A guest that writes memory needs more passes
    under a low limit, and TCG guests in the lab panicked after switchovers
    that took 4 or more passes (at 50 ms: 6 of 8 dirtying 100 MiB/s, raw
    virsh alike; with a cap at 50 ms: 3 of 3), so only measured-idle guests
    get the low limit; an unmeasured one gets 300 ms: a guest that crashes
    has lost more than a pause. `--max-downtime` sets it per migration.

    The policy also aims at finishing guests that dirty memory faster than
    the link: after the completion timeout such a guest switches to
    post-copy, which always converges (KubeVirt #3504 is what happens
    without it).
    """

    bandwidth_mib_s: float = 0.0  # cap on migration traffic in MiB/s; 0 = libvirt's default
    max_downtime_ms: int | None = None  # longest final switchover pause; None: see above
    auto_converge: bool = True  # let QEMU throttle the guest's vCPUs when it does not converge
    post_copy: bool = True  # on timeout switch to post-copy (True) or abort (False)
    completion_timeout_per_gib: float = 30.0  # seconds per GiB of guest memory before escalation
    completion_timeout_min: float = 10.0  # floor of that timeout, so small guests get a chance

    def __post_init__(self) -> None:
        """Refuse values libvirt would reject or that make escalation meaningless."""
        if not self.bandwidth_mib_s >= 0:
            raise PolicyError(f"bandwidth must be >= 0 MiB/s, got {self.bandwidth_mib_s!r}")
        if self.max_downtime_ms is not None and self.max_downtime_ms < 1:
            raise PolicyError(f"max downtime must be >= 1 ms, got {self.max_downtime_ms!r}")
        if not self.completion_timeout_per_gib > 0:
            raise PolicyError(
                f"completion timeout per GiB must be positive, got "
                f"{self.completion_timeout_per_gib!r}"
            )
        if not self.completion_timeout_min >= 0:
            raise PolicyError(
                f"minimum completion timeout must be >= 0, got {self.completion_timeout_min!r}"
            )


@dataclass(frozen=True, slots=True)
class PolicyOverrides:
    """An operator's settings for one migration (`nova vm migrate --bandwidth ...`).

    Each field is a `MigrationPolicy` field of the same name; None leaves the
    configured value. The local API builds this from a request's body, its
    types checked there (`api_requests.migrate_request`); the ranges are the
    policy's to check, once applied (`with_overrides`).
    """

    bandwidth_mib_s: float | None = None
    max_downtime_ms: int | None = None
    auto_converge: bool | None = None
    post_copy: bool | None = None
    completion_timeout_per_gib: float | None = None
    completion_timeout_min: float | None = None


def with_overrides(policy: MigrationPolicy, overrides: PolicyOverrides | None) -> MigrationPolicy:
    """`policy` with an operator's per-migration settings applied.

    Raises `PolicyError` naming a setting whose value is out of range.
    """
    if overrides is None:
        return policy
    changes = {
        field.name: value
        for field in dataclasses.fields(overrides)
        if (value := getattr(overrides, field.name)) is not None
    }
    return dataclasses.replace(policy, **changes) if changes else policy


IDLE_MAX_DOWNTIME_MS = 50  # switchover limit for a guest measured idle, without a cap
DEFAULT_MAX_DOWNTIME_MS = 300  # for every other guest (QEMU's own default)
IDLE_DIRTY_MIB_S = 8.0  # "idle": the heartbeat guest measures 0-4, one writing 20 MiB/s 16


def switchover_limit_ms(policy: MigrationPolicy, dirty_mib_s: Sequence[float]) -> int:
    """The max downtime for a guest whose recent measurements read `dirty_mib_s` MiB/s
    (none: not measured). It is idle only if every one of them says so: a guest writes
    in bursts, and on a busy host one 1-second sample can catch a writing guest starved
    of CPU."""
    if policy.max_downtime_ms is not None:
        return policy.max_downtime_ms
    idle = bool(dirty_mib_s) and max(dirty_mib_s) <= IDLE_DIRTY_MIB_S
    if idle and policy.bandwidth_mib_s == 0:
        return IDLE_MAX_DOWNTIME_MS
    return DEFAULT_MAX_DOWNTIME_MS


def completion_timeout(policy: MigrationPolicy, memory_mib: int) -> float:
    """Seconds of libvirt job time after which a migration escalates (post-copy or abort)."""
    per_gib = policy.completion_timeout_per_gib * max(memory_mib, 0) / MIB_PER_GIB
    return max(policy.completion_timeout_min, per_gib)


@dataclass(frozen=True, slots=True)
class MigrationLimits:
    """How many migrations may run at once, per host and across the cluster.

    Each migration costs both ends network bandwidth and CPU; two at a time
    per direction keeps one host from starving its guests (vSphere's default
    per-host limit is of the same order), and the cluster-wide ceiling keeps a
    rebalancing storm from saturating a shared uplink.
    """

    max_outbound: int = 2  # migrations one host may send at once
    max_inbound: int = 2  # migrations one host may receive at once
    max_cluster: int = 0  # fixed cluster-wide ceiling; 0 = derive it from the host count
    cluster_fraction: float = 0.25  # derived ceiling: this share of alive hosts ...
    cluster_floor: int = 2  # ... but never fewer than this many

    def __post_init__(self) -> None:
        """Refuse limits that would forbid every migration or are nonsense."""
        if self.max_outbound < 1 or self.max_inbound < 1:
            raise ValueError("per-host migration limits must be at least 1")
        if max(self.max_outbound, self.max_inbound) > MAX_MIGRATIONS:
            # The record's counters could not say it: peers refuse a count above this.
            raise ValueError(f"per-host migration limits must be at most {MAX_MIGRATIONS}")
        if self.max_cluster < 0 or self.cluster_floor < 1:
            raise ValueError("cluster limits must be positive (max_cluster 0 = derived)")
        if not 0 < self.cluster_fraction <= 1:
            raise ValueError("cluster_fraction must be in (0, 1]")


def cluster_limit(limits: MigrationLimits, hosts: int) -> int:
    """The cluster-wide ceiling on concurrent migrations for `hosts` alive hosts."""
    if limits.max_cluster:
        return limits.max_cluster
    return max(limits.cluster_floor, math.ceil(limits.cluster_fraction * hosts))


def with_migration_counts(record: NodeRecord, outbound: int, inbound: int) -> NodeRecord:
    """`record` publishing how many migrations its host sends and receives now.

    The per-host limits keep both counts within what the record may carry; the
    bound is applied here as well, so a count past it can never make peers
    refuse the whole record.
    """
    return dataclasses.replace(
        record,
        migrations_out=min(max(outbound, 0), MAX_MIGRATIONS),
        migrations_in=min(max(inbound, 0), MAX_MIGRATIONS),
    )


def cluster_migrations(
    records: Mapping[str, NodeRecord], self_id: str, own_outbound: int, per_host: int
) -> int:
    """Migrations running in the cluster as this host can tell: its own, live, plus
    every other host's published outbound counter (gossip lags, so this is an estimate).

    A peer's counter counts for at most `per_host` (the outbound limit): a member
    claiming hundreds of migrations would otherwise fill the cluster's ceiling alone
    and stop every other host's moves; so it weighs what an honest busy host weighs.
    """
    others = sum(
        min(record.migrations_out, per_host)
        for node_id, record in records.items()
        if node_id != self_id
    )
    return own_outbound + others
