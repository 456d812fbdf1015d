"""The solver baseline: an OR-Tools CP-SAT plan for one snapshot of the cluster.

Model (loads in milli-cores, memory in MiB, all integers):

- Movable VMs: those on the `max_sources` (25) most utilized hosts above
  the mean (and all of them on a draining host), not migrating, out of
  their cooldown, not held by an affinity group that shares their host (the
  planner's rule). Everything else stays put and is a constant.
- Each movable VM takes exactly one of: its own host, or a candidate target
  (one of the `max_targets` (25) least utilized eligible hosts below the
  mean). The restriction keeps the model small enough for CP-SAT to close
  most of its gap in seconds at both sizes; the gap is measured within it.
  A drained host is never a target and its VMs must leave.
- Capacity: memory never overcommitted; vCPUs up to cores x overcommit.
  Anti-affinity: at most one VM of a group per host.
- Budget: at most `budget` VMs move.
- Objective: the sum over eligible hosts of |load_h - mean utilization x cores_h|
  (linearized with one deviation variable per host; L1, a stand-in for the
  standard deviation that CP-SAT handles linearly), plus 1 milli-core per
  move so a move that changes nothing is not made.

The plan is only as good as the snapshot: loads change after it, and its
moves are started later as the migration limits allow. The gap is
(objective - best bound) / objective, within the restricted model above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .workload import ANTI_AFFINITY_LABEL

if TYPE_CHECKING:
    from .sim import Cluster

SCALE = 1000  # milli-cores


@dataclass(slots=True)
class SolveResult:
    status: str
    moves: list[tuple[str, str, str]] = field(default_factory=list)  # (vm, target, purpose)
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    seconds: float = 0.0
    build_seconds: float = 0.0
    variables: int = 0
    budget: int = 0
    movable: int = 0
    predicted_std: float | None = None
    snapshot_std: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "moves_planned": len(self.moves),
            "budget": self.budget,
            "movable_vms": self.movable,
            "bool_variables": self.variables,
            "objective": self.objective,
            "best_bound": self.bound,
            "gap": None if self.gap is None else round(self.gap, 4),
            "solve_seconds": round(self.seconds, 2),
            "build_seconds": round(self.build_seconds, 2),
            "snapshot_std": None if self.snapshot_std is None else round(self.snapshot_std, 5),
            "predicted_std": None if self.predicted_std is None else round(self.predicted_std, 5),
        }


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return float((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)


def solve(
    cluster: Cluster,
    budget: int,
    time_limit: float,
    seed: int,
    max_sources: int = 25,
    max_targets: int = 25,
) -> SolveResult:
    """Plan up to `budget` moves that minimize the L1 imbalance of the current snapshot."""
    try:
        from ortools.sat.python import cp_model
    except ImportError:
        return SolveResult(status="ortools not installed (pip install -e '.[sim]')")
    start = time.perf_counter()
    c = cluster
    cfg = c.config.rebalance
    pool = c.eligible()
    if len(pool) < 2:
        return SolveResult(status="no hosts")
    load = {h.name: c.load(h) for h in c.hosts.values()}
    util = {name: load[name] / c.hosts[name].cores for name in load}
    mean = sum(load[h.name] for h in pool) / sum(h.cores for h in pool)
    now = c.now

    def movable(vm: str) -> bool:
        return (
            vm not in c.migrations
            and now - c.recent_moves.get(vm, -1e18) >= cfg.vm_cooldown
            and not c.held_by_affinity(vm)
        )

    hot = sorted((h for h in pool if util[h.name] > mean), key=lambda h: (-util[h.name], h.name))
    drained = [h for h in c.hosts.values() if h.draining and not h.failed]
    sources = drained + hot[:max_sources]
    cold = sorted((h for h in pool if util[h.name] < mean), key=lambda h: (util[h.name], h.name))
    cold = cold[:max_targets]
    items: list[tuple[str, str]] = [
        (vm, h.name) for h in sources for vm in sorted(h.vms) if movable(vm)
    ]
    model: Any = cp_model.CpModel()
    milli = {vm: round(c.measured.get(vm, 0.0) * SCALE) for vm, _ in items}
    choice: dict[tuple[str, str], Any] = {}
    stays: dict[str, Any] = {}
    on_host: dict[str, list[tuple[str, Any]]] = {h.name: [] for h in c.hosts.values()}
    moved_terms: list[Any] = []
    for vm, home in items:
        options = []
        if not c.hosts[home].draining:
            var = model.NewBoolVar(f"s_{vm}")
            stays[vm] = var
            options.append(var)
            on_host[home].append((vm, var))
        for dst in cold:
            if dst.name == home:
                continue
            var = model.NewBoolVar(f"x_{vm}_{dst.name}")
            choice[(vm, dst.name)] = var
            options.append(var)
            on_host[dst.name].append((vm, var))
            moved_terms.append(var)
        model.AddExactlyOne(options)
    moving = {vm for vm, _ in items}
    overcommit = cfg.vcpu_overcommit
    deviations = []
    by_host_fixed: dict[str, list[str]] = {
        h.name: [vm for vm in h.vms if vm not in moving] for h in c.hosts.values()
    }
    for host in c.hosts.values():
        if host.failed:
            continue
        terms = on_host[host.name]
        fixed = by_host_fixed[host.name]
        inbound = list(host.inbound)
        if terms:
            fixed_mem = sum(c.spec(v).memory_mib for v in fixed + inbound)
            fixed_cpu = sum(c.spec(v).vcpus for v in fixed + inbound)
            model.Add(
                sum(c.spec(vm).memory_mib * var for vm, var in terms)
                <= max(host.memory_mib - fixed_mem, 0)
            )
            model.Add(
                sum(c.spec(vm).vcpus * var for vm, var in terms)
                <= max(int(host.cores * overcommit) - fixed_cpu, 0)
            )
            groups: dict[str, list[Any]] = {}
            for vm, var in terms:
                group = c.spec(vm).labels.get(ANTI_AFFINITY_LABEL)
                if group:
                    groups.setdefault(group, []).append(var)
            fixed_groups = {c.spec(v).labels.get(ANTI_AFFINITY_LABEL) for v in fixed + inbound}
            for group, vars_ in groups.items():
                model.Add(sum(vars_) <= (0 if group in fixed_groups else 1))
        if host.draining:
            continue
        base = round(sum(c.measured.get(v, 0.0) for v in fixed) * SCALE)
        target = round(mean * host.cores * SCALE)
        expr = base + sum(milli[vm] * var for vm, var in terms)
        bound = base + sum(milli[vm] for vm, _ in terms) + target + 1
        dev = model.NewIntVar(0, bound, f"d_{host.name}")
        model.Add(dev >= expr - target)
        model.Add(dev >= target - expr)
        deviations.append(dev)
    model.Add(sum(moved_terms) <= budget)
    model.Minimize(sum(deviations) + sum(moved_terms))
    build = time.perf_counter() - start
    solver: Any = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 2
    solver.parameters.random_seed = seed
    t0 = time.perf_counter()
    status = solver.Solve(model)
    seconds = time.perf_counter() - t0
    result = SolveResult(
        status=solver.StatusName(status),
        seconds=seconds,
        build_seconds=build,
        variables=len(choice) + len(stays),
        budget=budget,
        movable=len(items),
        snapshot_std=_std([util[h.name] for h in pool]),
    )
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return result
    result.objective = solver.ObjectiveValue()
    result.bound = solver.BestObjectiveBound()
    if result.objective > 0:
        result.gap = (result.objective - result.bound) / result.objective
    else:
        result.gap = 0.0
    after = dict(load)
    for (vm, goal), var in sorted(choice.items()):
        if solver.Value(var):
            home = c.where[vm]
            purpose = "drain" if c.hosts[home].draining else "rebalance"
            result.moves.append((vm, goal, purpose))
            after[home] -= c.measured.get(vm, 0.0)
            after[goal] += c.measured.get(vm, 0.0)
    result.moves.sort(key=lambda m: (m[2] != "drain", -c.measured.get(m[0], 0.0), m[0]))
    result.predicted_std = _std([after[h.name] / h.cores for h in pool])
    return result
