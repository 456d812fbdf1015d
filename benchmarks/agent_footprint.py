"""Benchmark: idle footprint of `nova-agent` and time to full membership, in the lab.

For each lab size: bring up N hosts, start N agents (mDNS, no seeds), time
until every agent sees all N alive, let the mesh idle, then measure each
agent's resident memory and CPU share over the idle window. Baseline in the
same run: an idle Python interpreter that imports the agent's modules and
sleeps (the floor any Python agent pays).

Run as root: `.venv/bin/python -m benchmarks.agent_footprint --sizes 5,20,50 --idle 30`
(`--agent-args '...'` gives every agent more options, e.g. the event stream and traces)
Sizes above --libvirt-max (default 20, the size the footprint goal is stated at)
run their hosts without libvirtd; agents then inventory libvirt's test driver.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psutil

from novacron.simulations.lab import Lab
from novacron.simulations.lab.agents import LabAgents

BASELINE = "import novacron.agent.daemon, time; time.sleep({seconds})"


def measure_size(
    size: int, idle: float, libvirt: bool, extra: list[str] | None = None
) -> dict[str, Any]:
    with Lab(f"bench{size}", size, libvirt=libvirt) as lab:
        agents = LabAgents(lab, inventory_interval=10.0, extra_args=extra or ())
        started = time.monotonic()
        agents.start_all()
        try:
            agents.wait_for_full_mesh(timeout=300, interval=1.0)
            converged = time.monotonic() - started
            rss, uss, cpu = idle_usage([p.pid for p in agents.processes.values()], idle)
        finally:
            agents.stop_all()
    return {
        "hosts": size,
        "libvirt": libvirt,
        "seconds_to_full_membership": round(converged, 2),
        "rss_mib": summary(rss),
        "uss_mib": summary(uss),
        "cpu_percent_of_a_core": summary(cpu),
    }


def idle_usage(pids: list[int], idle: float) -> tuple[list[float], list[float], list[float]]:
    """RSS and USS (MiB) at the end, CPU share (% of one core) over `idle` s, per process.

    USS is the memory only this process holds (not shared libraries' pages
    that other processes map too): what a second agent would really add.
    """
    procs = [psutil.Process(pid) for pid in pids]
    before = [p.cpu_times() for p in procs]
    time.sleep(idle)
    after = [p.cpu_times() for p in procs]
    cpu = [
        100.0 * ((a.user + a.system) - (b.user + b.system)) / idle
        for a, b in zip(after, before, strict=True)
    ]
    memory = [p.memory_full_info() for p in procs]
    return [m.rss / 2**20 for m in memory], [m.uss / 2**20 for m in memory], cpu


def baseline(idle: float) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE.format(seconds=idle + 10)])
    try:
        time.sleep(3)  # imports done
        rss, uss, cpu = idle_usage([proc.pid], idle)
    finally:
        proc.kill()
        proc.wait()
    return {
        "what": "python importing the agent, sleeping",
        "rss_mib": rss[0],
        "uss_mib": uss[0],
        "cpu": cpu[0],
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,20,50")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--libvirt-max", type=int, default=20, help="largest size with libvirtd")
    parser.add_argument("--json", help="write results here too")
    parser.add_argument(
        "--agent-args",
        default="",
        help="more nova-agent options for every agent, e.g. '--tracing-otlp http://198.18.0.1:4318'",
    )
    args = parser.parse_args()
    extra = shlex.split(args.agent_args)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.machine()} {psutil.cpu_count()} cpus",
        "agent_args": extra,
        "baseline": baseline(args.idle),
        "sizes": [],
    }
    base = result["baseline"]
    print(
        f"baseline: {base['rss_mib']:.1f} MiB RSS, {base['uss_mib']:.1f} MiB USS, "
        f"{base['cpu']:.2f}% CPU"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure_size(size, args.idle, libvirt=size <= args.libvirt_max, extra=extra)
        result["sizes"].append(row)
        print(
            f"{size:3} hosts: full membership in {row['seconds_to_full_membership']:6.1f}s, "
            f"RSS median {row['rss_mib']['median']:.1f} MiB (max {row['rss_mib']['max']:.1f}), "
            f"USS median {row['uss_mib']['median']:.1f} MiB, "
            f"CPU median {row['cpu_percent_of_a_core']['median']:.2f}% "
            f"(max {row['cpu_percent_of_a_core']['max']:.2f}%)",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
