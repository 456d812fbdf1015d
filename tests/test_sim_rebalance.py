"""The rebalancing simulator (issue 6): workload, baselines, constraint checker, mesh."""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.placement.targets import new_vm_target
from novacron.protocol.messages import MemberState
from novacron.simulations.rebalance import trace_profile
from novacron.simulations.rebalance.cli import main
from novacron.simulations.rebalance.sim import (
    Cluster,
    Host,
    SimConfig,
    Strategy,
    host_violations,
    place_initial,
    place_new,
    simulate,
    typical_host,
)
from novacron.simulations.rebalance.workload import (
    AFFINITY_LABEL,
    ANTI_AFFINITY_LABEL,
    Workload,
    WorkloadConfig,
)


def test_workload_is_deterministic_per_seed():
    def run(seed: int) -> list[dict[str, tuple[float, float]]]:
        w = Workload(WorkloadConfig(seed=seed, vms=200))
        out = []
        for step in range(6):
            t = step * 10.0
            if step:
                w.churn(t - 10.0, t)
            out.append({n: (s.load, s.dirty_rate_mib_s) for n, s in w.sample(t).items()})
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_workload_shape_follows_the_documented_model():
    w = Workload(WorkloadConfig(seed=1, vms=2000))
    sizes = [s.vcpus for s in w.vms.values()]
    assert set(sizes) <= {1, 2, 4, 8}
    assert 2.0 < sum(sizes) / len(sizes) < 2.7  # documented mean 2.3 vCPUs
    hot = sum(1 for s in w.vms.values() if s.base >= 0.5)
    assert 0.03 * 2000 < hot < 0.08 * 2000  # 5% hot class (plus the lognormal's cap)
    groups = [
        s.labels[ANTI_AFFINITY_LABEL] for s in w.vms.values() if ANTI_AFFINITY_LABEL in s.labels
    ]
    assert groups and all(groups.count(g) <= 3 for g in set(groups))
    loads = w.sample(0.0)
    assert all(0 < s.load <= w.vms[n].vcpus for n, s in loads.items())


def test_embedded_profile_matches_the_trace_package():
    assert len(trace_profile.AZURE_2019_DAY) == 288
    assert abs(sum(trace_profile.AZURE_2019_DAY) / 288 - 1.0) < 1e-3
    assert trace_profile.extract() == trace_profile.AZURE_2019_DAY  # the test extra has it


SMALL = SimConfig(hosts=20, vms=200, scenario="steady", duration=300.0)


def test_the_solver_baseline_plans_within_its_budget_and_lowers_imbalance():
    config = SimConfig(
        hosts=10, vms=80, scenario="steady", duration=120.0, solver_time_limit=3.0,
        solver_budget=8,
    )  # fmt: skip
    report = simulate(config, "solver")
    (solve,) = report["solver"]
    assert solve["status"] in ("OPTIMAL", "FEASIBLE") and solve["moves_planned"] <= 8
    assert 0.0 <= solve["gap"] <= 1.0
    assert report["migrations"] == solve["moves_planned"]
    assert report["final"]["std"] < report["initial"]["std"]
    assert report["violations"] == {} and report["oscillations"] == 0


def test_no_balancing_keeps_the_imbalance():
    report = simulate(SMALL, "none")
    assert report["migrations"] == 0
    assert report["final"]["std_last_60s"] > 0.8 * report["initial"]["std"]


def test_greedy_lowers_the_std_dev_within_the_rules():
    none = simulate(SMALL, "none")
    greedy = simulate(SMALL, "greedy")
    assert greedy["migrations"] > 0
    assert greedy["final"]["std_last_60s"] < 0.75 * none["final"]["std_last_60s"]
    assert greedy["violations"] == {}
    assert greedy["oscillations"] == 0
    assert greedy["max_concurrent_migrations"] <= greedy["cluster_limit"]


def test_constraint_checker_catches_planted_violations():
    cluster = Cluster(SMALL, Workload(WorkloadConfig(seed=1, vms=200)))
    place_initial(cluster, balanced=False, rng=random.Random(1))
    assert all(not host_violations(cluster, h) for h in cluster.hosts.values())
    # Plant two VMs of one anti-affinity group on one host, and overfill its memory.
    group = [
        n for n, s in cluster.workload.vms.items() if s.labels.get(ANTI_AFFINITY_LABEL) == "aa1"
    ]
    host = cluster.hosts[cluster.where[group[0]]]
    cluster.hosts[cluster.where[group[1]]].vms.discard(group[1])
    cluster.add_vm(group[1], host.name)
    kinds = {kind for kind, _ in host_violations(cluster, host)}
    assert "anti-affinity" in kinds
    for name in sorted(cluster.workload.vms)[:60]:
        if cluster.where.get(name) != host.name:
            cluster.hosts[cluster.where[name]].vms.discard(name)
            cluster.add_vm(name, host.name)
    cluster.check_host(host)
    assert {"anti-affinity", "memory capacity"} <= set(cluster.stats.violations)
    counted = dict(cluster.stats.violations)
    cluster.check_host(host)  # the same episode is counted once
    assert cluster.stats.violations == counted


def test_an_affinity_group_is_admitted_whole_or_not_at_all():
    """A group the planner moves together goes through the source's migration core as one
    proposal: slots and room for every member at once on one target, or nothing starts."""
    cluster = Cluster(SMALL, Workload(WorkloadConfig(seed=1, vms=200)))
    place_initial(cluster, balanced=True, rng=random.Random(1))
    cluster.samples = cluster.workload.sample(0.0)
    by_group: dict[str, list[str]] = {}
    for name, spec in sorted(cluster.workload.vms.items()):
        if AFFINITY_LABEL in spec.labels:
            by_group.setdefault(spec.labels[AFFINITY_LABEL], []).append(name)
    pair = tuple(next(vms for vms in by_group.values() if len(vms) == 2))
    source = cluster.where[pair[0]]
    assert cluster.where[pair[1]] == source
    target = next(
        h
        for h in cluster.hosts.values()
        if h.name != source and not any(cluster.anti_affine_clash(vm, h) for vm in pair)
    )
    # Room for either member, not for both.
    used = sum(cluster.spec(vm).memory_mib for vm in target.vms)
    target.memory_mib = used + max(cluster.spec(vm).memory_mib for vm in pair)
    cluster.touch(target.name)
    assert all(cluster.fits(vm, target) for vm in pair)
    assert not cluster.start_group(pair, target.name, "rebalance")
    assert cluster.migrations == {} and cluster.stats.refusals == {"group: target capacity": 1}
    other = next(
        vm for vm, host in sorted(cluster.where.items()) if host not in (source, target.name)
    )
    target.memory_mib = used + sum(cluster.spec(vm).memory_mib for vm in (*pair, other))
    cluster.touch(target.name)
    assert cluster.start(other, target.name, "rebalance") is not None
    cluster.run_until(0.01)  # the target admitted it: one inbound slot left
    assert target.inbound == {other}
    assert not cluster.start_group(pair, target.name, "rebalance")  # the pair needs two
    assert set(cluster.migrations) == {other}
    assert cluster.stats.refusals["group: target inbound limit"] == 1
    cluster.run_until(cluster.migrations[other].end + 0.01)  # landed, and the target knows
    assert cluster.where[other] == target.name and not target.inbound
    assert cluster.start_group(pair, target.name, "rebalance")
    cluster.run_until(cluster.now + 0.01)
    assert {m.vm: m.target for m in cluster.migrations.values()} == dict.fromkeys(pair, target.name)
    assert target.inbound == set(pair)  # the target reserved room for both at once


def _hotspot(hot_utilization: float) -> SimConfig:
    return SimConfig(
        hosts=20,
        vms=200,
        scenario="hotspot",
        event_at=30.0,
        duration=330.0,
        hot_utilization=hot_utilization,
    )


def test_mesh_resolves_a_hotspot_on_a_small_cluster():
    # One host's VMs all go to 30% of their vCPUs: the host doubles its load.
    config = _hotspot(0.3)
    none = simulate(config, "none")
    mesh = simulate(config, "mesh")
    assert none["hotspot"]["resolved_at"] is None  # without balancing the host stays hot
    assert mesh["hotspot"]["resolved_at"] is not None
    assert mesh["hotspot"]["final_util"] < none["hotspot"]["final_util"]
    assert mesh["violations"] == {}
    assert mesh["oscillations"] == 0
    assert mesh["decisions"]["move"] > 0


def test_mesh_sheds_a_host_whose_vms_all_run_hot():
    """VMs at 90% of their vCPUs: even VMs too big for the hysteresis band leave, until the
    host is within the trigger or holds one VM that alone is over the line."""
    mesh = simulate(_hotspot(0.9), "mesh")
    assert mesh["hotspot"]["resolved_at"] is not None, mesh["hotspot"]
    assert mesh["oscillations"] == 0 and mesh["violations"] == {}


@functools.cache
def _slow_rounds() -> dict[str, Any]:
    """A hotspot where timed rounds are 120 s apart: what the host does sooner is due to
    the agent's wake-ups (a migration ended, a new sample of its own)."""
    # The hot host's timed rounds fall at 29.7 s, 149.7 s, ...: the hotspot starts after one.
    return simulate(dataclasses.replace(_hotspot(0.9), plan_interval=120.0, event_at=40.0), "mesh")


def _hot_host_decisions() -> list[float]:
    mesh = _slow_rounds()
    return [e["t"] for e in mesh["decision_log_head"] if e["host"] == mesh["hotspot"]["host"]]


def test_mesh_hosts_plan_again_as_soon_as_a_migration_ends():
    """Rounds 120 s apart: a host whose VMs all run hot still sheds them back to back,
    because each migration that ends starts its next round (as the agent's rebalancer)."""
    assert _slow_rounds()["hotspot"]["seconds"] < 120.0  # before the host's next timed round
    assert len(_hot_host_decisions()) > 2  # more than one round's two outbound slots


def test_a_freed_slot_is_used_when_the_migration_ends():
    """Not at the next 1 s step, nor at a 0.25 s poll: the rebalancer wakes on its
    migrator's change."""
    assert any(t * 4 != int(t * 4) for t in _hot_host_decisions())


def test_a_host_whose_new_sample_shows_it_hot_plans_at_once():
    """The hot host acts at the sample that shows the hotspot, not at its next timed
    round (the agent's rebalancer wakes when its record is republished)."""
    assert _hot_host_decisions()[0] == _slow_rounds()["hotspot"]["onset"]


def test_mesh_drain_empties_the_host(tmp_path):
    config = SimConfig(hosts=20, vms=200, scenario="drain", event_at=20.0, duration=200.0)
    mesh = simulate(config, "mesh")
    assert mesh["drain"]["left"] == 0
    assert mesh["migrations_by_purpose"]["drain"] == mesh["drain"]["vms"]
    assert "drained host received" not in mesh["violations"]


def test_cli_writes_a_report(tmp_path):
    out = tmp_path / "r.json"
    code = main(
        ["--hosts", "10", "--vms", "80", "--strategy", "none,greedy", "--duration", "60",
         "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert '"greedy"' in text and '"series"' in text


def _drained(hosts: int = 20) -> tuple[Cluster, Strategy, Host]:
    """A balanced cluster whose median host has just begun to drain."""
    config = SimConfig(hosts=hosts, vms=10 * hosts, scenario="drain")
    cluster = Cluster(config, Workload(WorkloadConfig(seed=1, vms=config.vms)))
    place_initial(cluster, balanced=True, rng=random.Random(1))
    cluster.samples = cluster.workload.sample(0.0)
    cluster.remeasure()
    host = cluster.hosts[typical_host(cluster)]
    host.draining = True
    cluster.touch(host.name)
    return cluster, Strategy(cluster, 1), host


def test_the_simulated_drain_proposes_to_each_target_once_as_the_agent_does() -> None:
    """The agent's drain does not propose to a target that does not show its last
    migration yet (the target would refuse it); the simulator runs that same drain."""
    cluster, strategy, host = _drained()
    strategy.drain_loop(0.0)
    targets = [m.target for m in cluster.migrations.values() if m.source == host.name]
    assert len(targets) == 2 and len(set(targets)) == 2, targets
    assert cluster.stats.refusals == {}


def test_the_simulated_target_refuses_with_the_migration_cores_rules() -> None:
    cluster, _, host = _drained()
    vm = sorted(cluster.hosts["h0000"].vms)[0]
    assert cluster.start(vm, host.name, "rebalance") is None
    assert cluster.last_refusal == f"host draining: {host.name} takes no new VMs"
    assert cluster.stats.refusals == {"target draining": 1}


# --- where a new or restarted VM goes: the agent's own rule -------------------------------


def _agent_places(cluster: Cluster, vm: str) -> str | None:
    """Where the agent's rule puts `vm`, on the cluster's records and its hosts' states."""

    def member(node_id: str) -> MemberInfo:
        state = MemberState.DEAD if cluster.hosts[node_id].failed else MemberState.ALIVE
        return MemberInfo(node_id, "", 1, state, 0.0, 0.0)

    spec = cluster.spec(vm)
    overcommit = SimConfig().rebalance.vcpu_overcommit
    return new_vm_target(
        cluster.records(), member, spec.vcpus, spec.memory_mib, spec.labels,
        cluster.limits, overcommit,
    ).target  # fmt: skip


def test_restarted_vms_go_where_the_agents_rule_puts_them() -> None:
    """A failed host's VMs, restarted one after another, land where the agent's placement
    puts each: never on the failed or the draining host, never beside their anti-affinity
    group."""
    cluster, _, draining = _drained()
    failed = next(h for h in cluster.hosts.values() if h is not draining and len(h.vms) >= 8)
    lost = cluster.fail_host(failed.name)
    assert any(ANTI_AFFINITY_LABEL in cluster.spec(vm).labels for vm in lost)
    for vm in lost:
        target = place_new(cluster, vm)
        assert target is not None and target == _agent_places(cluster, vm)
        assert target not in (failed.name, draining.name)
        cluster.add_vm(vm, target)
        assert host_violations(cluster, cluster.hosts[target]) == []


def test_a_new_vm_skips_a_host_at_its_inbound_migration_limit() -> None:
    """The agent does not place on a host that already receives its limit of migrations;
    nor does the simulator, though the host is the least utilized and has room."""
    cluster, _, _ = _drained()
    vm = min(cluster.where, key=lambda n: (cluster.spec(n).memory_mib, n))
    cluster.remove_vm(vm)  # it comes back as a new VM
    first = place_new(cluster, vm)
    assert first is not None
    senders = sorted(
        (h for h in cluster.hosts.values() if h.name != first and not h.draining),
        key=lambda h: h.name,
    )
    moved = 0
    for sender in senders:
        small = min(sender.vms, key=lambda n: (cluster.spec(n).memory_mib, n))
        if moved < cluster.limits.max_inbound and cluster.start(small, first, "rebalance"):
            moved += 1
    cluster.run_until(0.01)  # the proposals arrive; the target admits both
    assert cluster.record(first).migrations_in == cluster.limits.max_inbound
    assert cluster.fits(vm, cluster.hosts[first])  # room enough: only the limit turns it down
    target = place_new(cluster, vm)
    assert target not in (None, first) and target == _agent_places(cluster, vm)
