"""Suspicion timeout math (pure functions) and confirmation counting."""

from __future__ import annotations

import math

import pytest

from novacron.agent.core.membership.suspicion import (
    Suspicion,
    remaining_suspicion_time,
    suspicion_timeout,
    suspicion_total_timeout,
)


def test_minimum_timeout_scales_with_log10_of_cluster_size() -> None:
    assert suspicion_timeout(4, 1, 1.0) == 4.0  # never below one "round"
    assert suspicion_timeout(4, 10, 1.0) == 4.0
    assert suspicion_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_timeout(4, 10_000, 0.5) == pytest.approx(8.0)
    assert suspicion_timeout(4, 50, 1.0) == pytest.approx(4 * math.log10(50))


def test_timeout_starts_at_max_and_reaches_min_at_k_confirmations() -> None:
    lo, hi, k = 10.0, 60.0, 3
    assert suspicion_total_timeout(0, k, lo, hi) == hi
    assert suspicion_total_timeout(k, k, lo, hi) == lo
    assert suspicion_total_timeout(k + 5, k, lo, hi) == lo  # floored at the minimum


def test_timeout_shrinks_logarithmically_with_confirmations() -> None:
    lo, hi, k = 10.0, 60.0, 3
    timeouts = [suspicion_total_timeout(n, k, lo, hi) for n in range(k + 1)]
    assert timeouts == sorted(timeouts, reverse=True)
    # memberlist's formula: max - log(n+1)/log(k+1) * (max - min), floored to the ms
    assert timeouts[1] == math.floor(1000 * (hi - math.log(2) / math.log(4) * (hi - lo))) / 1000
    # the first confirmation buys more than the last (logarithmic, not linear)
    assert timeouts[0] - timeouts[1] > timeouts[2] - timeouts[3]


def test_no_confirmations_expected_means_the_minimum() -> None:
    assert suspicion_total_timeout(0, 0, 5.0, 30.0) == 5.0


def test_remaining_time_subtracts_elapsed() -> None:
    assert remaining_suspicion_time(0, 2, 4.0, 10.0, 60.0) == 56.0
    assert remaining_suspicion_time(2, 2, 12.0, 10.0, 60.0) == -2.0


def test_only_new_independent_confirmations_count() -> None:
    s = Suspicion("accuser", incarnation=3, started=100.0, k=2, min_timeout=10.0, max_timeout=60.0)
    assert s.deadline() == 160.0
    assert not s.confirm("accuser")  # the original accuser is not independent
    assert s.confirm("b")
    assert not s.confirm("b")  # repeats do not count
    assert s.confirmations == 1
    assert 110.0 < s.deadline() < 160.0
    assert s.confirm("c")
    assert s.deadline() == 110.0
    assert not s.confirm("d")  # beyond k nothing changes, so nothing to re-gossip
    assert s.confirmations == 2
