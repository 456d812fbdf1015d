"""Markdown tables for BENCHMARKS.md from the simulator's JSON reports.

`python -m novacron.simulations.rebalance.table simulations/results/rebalance/*.json`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _seconds(event: dict[str, Any]) -> float | None:
    """The event's time in seconds (older reports, whole seconds, hold ints)."""
    value = event.get("seconds")
    return None if value is None else float(value)


def rows(report: dict[str, Any]) -> list[str]:
    cfg = report["config"]
    out = []
    for name, r in report["strategies"].items():
        event = ""
        if "hotspot" in r:
            h = r["hotspot"]
            how = f" ({h['by']})" if h.get("by") else ""
            event = (
                f"resolved {_fmt(_seconds(h), 1)} s{how}"
                if h.get("seconds") is not None
                else (f"not resolved (host at {h['final_util']:.2f})")
            )
        elif "drain" in r:
            d = r["drain"]
            event = (
                f"empty after {_fmt(_seconds(d), 1)} s"
                if d.get("seconds") is not None
                else (f"{d['left']} VMs left")
            )
        if name == "solver" and r.get("solver"):
            s = r["solver"][0]
            gap = "-" if s.get("gap") is None else f"{100 * s['gap']:.1f}%"
            event += (" · " if event else "") + f"{s['status']}, gap {gap}, budget {s['budget']}"
        violations = sum(r["violations"].values()) if r["violations"] else 0
        out.append(
            f"| {cfg['scenario']} | {cfg['hosts']:,} / {cfg['vms']:,} | {name} "
            f"| {r['initial']['std']:.3f} | {r['final']['std_last_60s']:.3f} "
            f"| {r['final']['max_over_mean_last_60s']:.2f} | {r['migrations']} "
            f"| {r['gib_moved']:.0f} | {r['oscillations']} | {violations} | {event} "
            f"| {r['wall_seconds']:.0f} s |"
        )
    return out


HEADER = (
    "| scenario | hosts / VMs | strategy | std start | **std end** | max/mean end "
    "| migrations | GiB moved | oscill. | violations | event | wall |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    print(HEADER)
    goals = []
    for path in paths:
        report = json.loads(path.read_text())
        for line in rows(report):
            print(line)
        goals.append((path.name, report.get("goals", {})))
    print()
    for name, g in goals:
        print(f"- {name}: {json.dumps(g)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
