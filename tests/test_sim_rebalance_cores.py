"""The rebalancing simulator runs the agent's migration core: every simulated migration
is a `MigrationCore` saga on its source and a reservation on its target's core, so what
the cores decide is what the simulator's figures show."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from novacron.agent.core.migration.inbound import Inbound
from novacron.agent.core.migration.policy import MigrationLimits
from novacron.agent.core.migration.saga import MigrationConfig
from novacron.simulations.rebalance import sim
from novacron.simulations.rebalance.sim import Cluster, SimConfig, place_initial, simulate
from novacron.simulations.rebalance.workload import Workload, WorkloadConfig


def _cluster() -> Cluster:
    """A small balanced cluster with its first load sample taken."""
    config = SimConfig(hosts=10, vms=80, scenario="steady")
    cluster = Cluster(config, Workload(WorkloadConfig(seed=1, vms=config.vms)))
    place_initial(cluster, balanced=True, rng=random.Random(1))
    cluster.samples = cluster.workload.sample(0.0)
    cluster.remeasure()
    return cluster


def _a_move(cluster: Cluster) -> tuple[str, str, str]:
    """(VM, source, target): a VM without labels and a host it fits on."""
    vm = next(
        name for name, where in sorted(cluster.where.items()) if not cluster.spec(name).labels
    )
    source = cluster.where[vm]
    target = next(
        h.name for h in cluster.hosts.values() if h.name != source and cluster.fits(vm, h)
    )
    return vm, source, target


def test_a_simulated_migration_holds_a_reservation_on_its_target_during_the_copy() -> None:
    cluster = _cluster()
    vm, source, target = _a_move(cluster)
    migration_id = cluster.start(vm, target, "rebalance")
    assert migration_id is not None
    target_core = cluster.cores[target]
    assert target_core.reservations() == []  # the proposal is still on its way
    cluster.run_until(0.01)
    (held,) = target_core.reservations()
    assert (held.migration_id, held.vm, held.source) == (migration_id, vm, source)
    assert vm in cluster.hosts[target].inbound
    end = cluster.migrations[vm].end
    assert 0.0 < end < 60.0
    # Mid-copy: the target's libvirt shows the incoming domain, paused; the driver's job
    # sample reaches the source, whose forward moves the target's phase table on.
    cluster.run_until(end / 2)
    cluster.sample_jobs()
    cluster.run_until(end / 2 + 0.01)
    assert held.phase is Inbound.PRECOPY
    shown = {v.name: v.state for v in cluster.record(target).vms}
    assert shown[vm] == "paused" and cluster.where[vm] == source
    assert cluster.record(source).migrations_out == 1
    assert cluster.record(target).migrations_in == 1
    # The job ends: the VM lands, the source commits, the target's reservation lands.
    cluster.run_until(end + 0.01)
    assert cluster.where[vm] == target and vm in cluster.hosts[target].vms
    assert cluster.ended[migration_id].outcome == "committed"
    assert held.landed and not cluster.hosts[target].inbound
    assert cluster.cores[source].phase_of(migration_id) == "committed"
    assert cluster.stats.migrations == 1 and cluster.migrations == {}


def test_the_target_core_decides_even_against_what_its_record_shows() -> None:
    """A target that has begun to drain refuses before its record says so: the source
    proposed (its view saw nothing against it), the target's core refused, and the
    simulator counts that refusal and leaves the VM where it was."""
    cluster = _cluster()
    vm, source, target = _a_move(cluster)
    cluster.cores[target].set_draining(True, 0.0)
    assert not cluster.record(target).draining
    migration_id = cluster.start(vm, target, "rebalance")
    assert migration_id is not None  # proposed: the source's checks passed
    cluster.run_until(0.01)
    assert cluster.ended[migration_id].outcome == "refused"
    assert cluster.ended[migration_id].reason == f"host draining: {target} takes no new VMs"
    assert cluster.stats.refusals == {"target draining": 1}
    assert cluster.where[vm] == source and cluster.migrations == {}
    assert not cluster.hosts[source].outbound


def test_a_job_to_a_failed_host_ends_by_the_sagas_reconcile() -> None:
    cluster = _cluster()
    vm, source, target = _a_move(cluster)
    migration_id = cluster.start(vm, target, "rebalance")
    assert migration_id is not None
    cluster.run_until(0.01)
    cluster.fail_host(target)
    cluster.run_until(1.0)
    cluster.sample_jobs()  # libvirt reports the connection lost; the saga asks where it runs
    cluster.run_until(1.01)
    assert cluster.ended[migration_id].outcome == "aborted"
    assert "connection lost" in cluster.ended[migration_id].reason
    assert cluster.where[vm] == source and vm in cluster.hosts[source].vms
    assert cluster.stats.violations == {}


def _hotspot() -> SimConfig:
    return SimConfig(hosts=20, vms=200, scenario="hotspot", event_at=30.0, duration=200.0)


def test_a_rule_of_the_migration_core_changes_the_simulated_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cores, not the planner, hold the limits: cores that send one migration at a
    time refuse the planner's second move of a round, and the hotspot takes longer."""
    base = simulate(_hotspot(), "mesh")
    one_at_a_time = dataclasses.replace(MigrationConfig().limits, max_outbound=1)

    def config(**kwargs: Any) -> MigrationConfig:
        limits: MigrationLimits = kwargs.pop("limits")
        assert limits.max_outbound == 2  # the planner's and the strategies' limit is unchanged
        return MigrationConfig(limits=one_at_a_time, **kwargs)

    monkeypatch.setattr(sim, "MigrationConfig", config)
    slowed = simulate(_hotspot(), "mesh")
    assert base["refusals"].get("source outbound limit", 0) == 0
    assert slowed["refusals"]["source outbound limit"] > 0
    assert slowed["hotspot"]["seconds"] > base["hotspot"]["seconds"]
    assert slowed["violations"] == {} and slowed["oscillations"] == 0
