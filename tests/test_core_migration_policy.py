"""The pure parts of migration: policy overrides, limits, cost estimates, free capacity."""

from __future__ import annotations

import math

import pytest

from novacron.agent.core.migration.cost import (
    converges,
    data_to_send_mib,
    expected_migration_seconds,
    migration_cost,
    precopy_seconds,
)
from novacron.agent.core.migration.policy import (
    MigrationLimits,
    MigrationPolicy,
    PolicyError,
    PolicyOverrides,
    cluster_limit,
    cluster_migrations,
    completion_timeout,
    switchover_limit_ms,
    with_migration_counts,
    with_overrides,
)
from novacron.agent.core.migration.reservations import (
    Demand,
    Reservation,
    ReservationBook,
    ReservationConfig,
    capacity_refusal,
    free_capacity,
)
from novacron.agent.core.placement.admission import cluster_refusal
from novacron.protocol.messages import MAX_MIGRATIONS
from novacron.simulations.migrations import host, vm


def test_overrides_change_only_what_they_give_and_are_checked_for_range() -> None:
    base = MigrationPolicy(auto_converge=False)
    assert with_overrides(base, None) is base
    assert with_overrides(base, PolicyOverrides()) is base
    assert with_overrides(base, PolicyOverrides(max_downtime_ms=10)).max_downtime_ms == 10
    capped = with_overrides(base, PolicyOverrides(bandwidth_mib_s=30, post_copy=False))
    assert capped == MigrationPolicy(bandwidth_mib_s=30, auto_converge=False, post_copy=False)
    with pytest.raises(PolicyError, match="bandwidth must be >= 0"):
        with_overrides(base, PolicyOverrides(bandwidth_mib_s=-1))


def test_only_a_guest_measured_idle_gets_the_low_switchover_limit() -> None:
    policy = MigrationPolicy()
    assert switchover_limit_ms(policy, [0.0]) == 50
    assert switchover_limit_ms(policy, [3.0, 8.0, 1.0]) == 50
    assert switchover_limit_ms(policy, [16.0]) == 300  # more passes: TCG guests broke
    assert switchover_limit_ms(policy, []) == 300  # not measured: no risk taken
    capped = with_overrides(policy, PolicyOverrides(bandwidth_mib_s=30))
    assert switchover_limit_ms(capped, [0.0]) == 300  # a low limit under a cap broke guests
    set_by_hand = with_overrides(capped, PolicyOverrides(max_downtime_ms=20))
    assert switchover_limit_ms(set_by_hand, [50.0]) == 20
    with pytest.raises(PolicyError, match="max downtime must be >= 1 ms"):
        with_overrides(policy, PolicyOverrides(max_downtime_ms=0))


def test_a_guest_idle_in_one_sample_but_writing_in_another_is_not_idle() -> None:
    """A loaded host can starve a writing guest through one whole 1 s sample; the last
    sample reading idle must not give it the low limit."""
    assert switchover_limit_ms(MigrationPolicy(), [38.0, 41.0, 2.0]) == 300
    assert switchover_limit_ms(MigrationPolicy(), [2.0, 40.0]) == 300


def test_completion_timeout_scales_per_gib_with_a_floor() -> None:
    policy = MigrationPolicy(completion_timeout_per_gib=30.0, completion_timeout_min=10.0)
    assert completion_timeout(policy, 4096) == 120.0
    assert completion_timeout(policy, 128) == 10.0


def test_limits() -> None:
    limits = MigrationLimits()
    assert (limits.max_outbound, limits.max_inbound) == (2, 2)
    assert cluster_limit(limits, 3) == 2
    assert cluster_limit(limits, 100) == 25
    assert cluster_limit(MigrationLimits(max_cluster=7), 100) == 7
    with pytest.raises(ValueError):
        MigrationLimits(max_outbound=0)


def test_cluster_count_from_gossiped_counters() -> None:
    records = {
        "h1": host("h1", outbound=5),  # ours: our live count wins
        "h2": with_migration_counts(host("h2"), 2, 0),
        "h3": host("h3", inbound=2),  # receiving is not sending
        "h4": host("h4"),
    }
    assert cluster_migrations(records, "h1", 1, per_host=2) == 3


def test_a_peer_claiming_many_migrations_weighs_as_one_busy_host() -> None:
    """One member claiming 1,024 outbound migrations must not stop the cluster's moves."""
    records = {f"h{i}": host(f"h{i}") for i in range(1, 21)}
    records["h2"] = with_migration_counts(host("h2"), MAX_MIGRATIONS, 0)
    running = cluster_migrations(records, "h1", 0, per_host=2)
    assert running == 2
    assert cluster_refusal(running, len(records), MigrationLimits(), 1) is None  # ceiling 5


def test_published_counts_stay_within_what_peers_accept() -> None:
    published = with_migration_counts(host("h1"), MAX_MIGRATIONS + 5, -1)
    assert (published.migrations_out, published.migrations_in) == (MAX_MIGRATIONS, 0)
    MigrationLimits(max_outbound=MAX_MIGRATIONS, max_inbound=MAX_MIGRATIONS)
    with pytest.raises(ValueError, match=f"at most {MAX_MIGRATIONS}"):
        MigrationLimits(max_inbound=MAX_MIGRATIONS + 1)


def test_precopy_arithmetic() -> None:
    assert converges(100, 20) and not converges(30, 30) and not converges(0, 0)
    assert data_to_send_mib(1024, 100, 0) == 1024
    assert data_to_send_mib(1000, 100, 50) == 2000
    assert precopy_seconds(1000, 100, 50) == 20
    assert math.isinf(precopy_seconds(512, 30, 30))


def test_expected_time_accounts_for_escalation() -> None:
    policy = MigrationPolicy()  # 30 s per GiB, post-copy allowed
    assert expected_migration_seconds(1024, 100, 0, policy) == pytest.approx(10.24)
    # The KubeVirt #3504 guest: dirtying as fast as the link, 512 MiB.
    assert expected_migration_seconds(512, 30, 30, policy) == pytest.approx(15 + 512 / 30)
    no_postcopy = MigrationPolicy(post_copy=False)
    assert math.isinf(expected_migration_seconds(512, 30, 30, no_postcopy))


def test_cost_grows_with_memory_dirt_and_recent_moves() -> None:
    base = migration_cost(1024, 0, 100)
    assert migration_cost(2048, 0, 100) > base
    assert migration_cost(1024, 50, 100) > base
    assert migration_cost(1024, 0, 100, recent_moves=2) == 4 * base
    assert math.isfinite(migration_cost(1024, 200, 100))


def test_free_capacity_subtracts_vms_and_pending_reservations_once() -> None:
    record = host("h2", vm("a", 2048, 2), vm("incoming", 1024, 1), memory_mib=8192, vcpus=2)
    held = [
        Reservation("m1", "incoming", "h1", 1, 1024, 0.0, 0.0, 30.0),  # already listed
        Reservation("m2", "other", "h3", 1, 1024, 0.0, 0.0, 30.0),
    ]
    free = free_capacity(record, held, overcommit=4.0)
    assert (free.memory_mib, free.vcpus) == (8192 - 2048 - 1024 - 1024, 8 - 3 - 1)
    assert capacity_refusal("h2", free, Demand(1, 4096), False) is None
    assert capacity_refusal("h2", free, Demand(1, 4097), False) == (
        "no capacity: target h2 has 4096 MiB free, 4097 MiB needed"
    )
    assert capacity_refusal("h2", free, Demand(5, 1), False) == (
        "no capacity: target h2 has 4 vCPUs free, 5 needed"
    )


def test_book_leases_land_settle_and_expire() -> None:
    book = ReservationBook()
    config = ReservationConfig(ttl=30.0, landed_hold=10.0)
    book.add(Reservation("m1", "a", "h1", 1, 1024, 0.0, 0.0, 30.0))
    book.add(Reservation("m2", "b", "h1", 1, 1024, 0.0, 0.0, 30.0))
    assert book.inbound() == 2 and book.next_deadline() == 30.0
    book.renew("m1", 20.0, config.ttl)
    book.land("m2", 25.0, config.landed_hold)
    assert book.inbound() == 1 and book.next_deadline() == 35.0
    assert [r.migration_id for r in book.settle(host("h2", vm("b")))] == ["m2"]
    assert book.expire(49.0) == [] and [r.vm for r in book.expire(50.0)] == ["a"]
    assert len(book) == 0 and book.release("m1") is None
    assert book.admit("h2", None, Demand(1, 1), config) == "not ready: h2 has no inventory yet"
