"""The simulator's command line: one scenario, one or all strategies on the same workload."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .planner import RebalanceConfig
from .sim import SCENARIOS, STRATEGIES, SimConfig, simulate

GOAL_IMBALANCE = 1.10  # within 10% of the solver's final imbalance ...
GOAL_MIGRATIONS = 1.25  # ... at no more than 1.25x its migrations
GOAL_HOTSPOT_SECONDS = 20.0


def goals(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals for the mesh, from the reports of one run."""
    mesh = reports.get("mesh")
    if mesh is None:
        return {}
    out: dict[str, Any] = {
        "zero_oscillations": mesh["oscillations"] == 0,
        "zero_violations": not mesh["violations"],
    }
    if "hotspot" in mesh:
        seconds = mesh["hotspot"].get("seconds")
        out["hotspot_seconds"] = seconds
        out["hotspot_within_20s"] = seconds is not None and seconds <= GOAL_HOTSPOT_SECONDS
    solver = reports.get("solver")
    if (
        solver is not None
        and solver.get("solver")
        and solver["solver"][0].get("objective") is not None
    ):
        m_std = mesh["final"]["std_last_60s"]
        s_std = solver["final"]["std_last_60s"]
        out["std_ratio_vs_solver"] = round(m_std / s_std, 3) if s_std > 0 else None
        out["migrations_ratio_vs_solver"] = (
            round(mesh["migrations"] / solver["migrations"], 3) if solver["migrations"] else None
        )
        out["imbalance_within_10pct"] = s_std > 0 and m_std <= GOAL_IMBALANCE * s_std
        out["migrations_within_1.25x"] = mesh["migrations"] <= GOAL_MIGRATIONS * max(
            solver["migrations"], 1
        )
    elif solver is not None:
        out["solver"] = "no solution within the time limit"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m novacron.simulations.rebalance")
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--scenario", choices=SCENARIOS, default="steady")
    parser.add_argument(
        "--strategy",
        default="all",
        help="none, greedy, solver, mesh, a comma-separated list, or all (default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds (0: scenario's)")
    parser.add_argument("--event-at", type=float, default=60.0)
    parser.add_argument("--gossip-delay", type=float, default=1.0)
    parser.add_argument("--plan-interval", type=float, default=2.0)
    parser.add_argument("--bandwidth", type=float, default=1024.0, help="MiB/s")
    parser.add_argument(
        "--solver-budget",
        type=int,
        default=0,
        help="max moves for the solver (0: the mesh's migrations / 1.25 when the mesh runs "
        "first, else 5%% of the VMs)",
    )
    parser.add_argument("--solver-time-limit", type=float, default=30.0)
    parser.add_argument("--trigger", type=float, default=RebalanceConfig().trigger)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = list(STRATEGIES) if args.strategy == "all" else args.strategy.split(",")
    for name in names:
        if name not in STRATEGIES:
            parser.error(f"unknown strategy {name!r}")
    if "mesh" in names and "solver" in names:
        names.remove("mesh")
        names.insert(0, "mesh")  # the solver's default budget comes from the mesh's moves
    config = SimConfig(
        hosts=args.hosts,
        vms=args.vms,
        scenario=args.scenario,
        seed=args.seed,
        duration=args.duration,
        event_at=args.event_at,
        gossip_delay=args.gossip_delay,
        plan_interval=args.plan_interval,
        bandwidth_mib_s=args.bandwidth,
        solver_budget=args.solver_budget,
        solver_time_limit=args.solver_time_limit,
        rebalance=RebalanceConfig(trigger=args.trigger, bandwidth_mib_s=args.bandwidth),
    )

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    reports: dict[str, dict[str, Any]] = {}
    for name in names:
        budget = 0
        if name == "solver" and not args.solver_budget and "mesh" in reports:
            budget = max(1, math.ceil(reports["mesh"]["migrations"] / GOAL_MIGRATIONS))
        say(f"running {name} ...")
        reports[name] = simulate(config, name, solver_budget=budget, progress=say)
        r = reports[name]
        say(
            f"{name}: std {r['initial']['std']:.4f} -> {r['final']['std_last_60s']:.4f}, "
            f"max/mean {r['final']['max_over_mean_last_60s']:.3f}, migrations {r['migrations']}, "
            f"{r['gib_moved']} GiB, oscillations {r['oscillations']}, "
            f"violations {r['violations'] or 0}, wall {r['wall_seconds']} s"
        )
    out = {
        "command": "python -m novacron.simulations.rebalance "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            **{k: v for k, v in dataclasses.asdict(config).items() if k != "rebalance"},
            "rebalance": dataclasses.asdict(config.rebalance),
            "horizon": config.horizon(),
            "detection": config.detection(),
        },
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "goals": goals(reports),
        "strategies": reports,
    }
    print(json.dumps({"goals": out["goals"]}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0
