"""What signed membership claims cost on the wire: this tree against a baseline tree.

Runs the membership simulator's scenarios on two checkouts, one after the
other on the same machine, and prints bytes per node per second for each:

    .venv/bin/python -m benchmarks.signed_claims --baseline /path/to/old/checkout

The baseline is any earlier checkout (a `git worktree add --detach DIR REV`);
it runs with this virtualenv's packages and its own `novacron` sources (put
first on `PYTHONPATH` through a directory of links, as the installed package
maps them). Simulated time, traffic and results are deterministic per seed;
only the wall-clock column depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGES = ("agent", "coordinator", "protocol", "simulations")
HERE = Path(__file__).resolve().parent.parent

# (scenario, nodes, loss, extra arguments): steady state at both sizes, a spread
# under heavy loss (suspicions and refutations share the channel), a revocation.
RUNS: list[tuple[str, int, float, tuple[str, ...]]] = [
    ("cost", 1000, 0.01, ("--duration", "60")),
    ("cost", 10000, 0.01, ("--duration", "60")),
    ("dissemination", 1000, 0.0, ()),
    ("dissemination", 1000, 0.10, ()),
    ("false-positives", 1000, 0.05, ("--duration", "60")),
]


def source_path(tree: Path, scratch: Path) -> str:
    """A directory whose `novacron/` links to `tree`'s packages, for PYTHONPATH."""
    root = scratch / tree.name / "novacron"
    root.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        link = root / package
        if not link.exists():
            link.symlink_to(tree / package)
    return str(root.parent)


def simulate(tree: Path, scratch: Path, run: tuple[str, int, float, tuple[str, ...]]) -> Any:
    scenario, nodes, loss, extra = run
    out = scratch / f"{tree.name}-{scenario}-{nodes}-{loss}.json"
    args = [sys.executable, "-m", "novacron.simulations.gossip", "--scenario", scenario]
    args += ["--nodes", str(nodes), "--loss", str(loss), "--seed", "1", *extra, "--json", str(out)]
    env = {"PYTHONPATH": source_path(tree, scratch), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    subprocess.run(args, check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    report["wall_s"] = time.monotonic() - started
    return report


def bytes_per_node(report: Any) -> float:
    """Bytes sent per node per second in the window the scenario measures (the steady
    state, the spread), else over the whole run."""
    results = report["results"]
    window = results.get("traffic") or results.get("traffic_during") or report["traffic_total"]
    return float(window["bytes_per_node_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, type=Path, help="an earlier checkout")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--json", type=Path, help="write every report here")
    args = parser.parse_args(argv)
    runs = [r for r in RUNS if not args.only or args.only in r[0]]
    reports: dict[str, Any] = {}
    header = "| scenario | nodes | loss | baseline B/node/s | signed B/node/s | ratio | wall |"
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for run in runs:
            old = simulate(args.baseline.resolve(), scratch, run)
            new = simulate(HERE, scratch, run)
            key = f"{run[0]}-n{run[1]}-loss{run[2]}"
            reports[key] = {"baseline": old, "signed": new}
            a, b = bytes_per_node(old), bytes_per_node(new)
            print(
                f"| {run[0]} | {run[1]:,} | {run[2]:.0%} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |"
                f" {old['wall_s']:.0f} s / {new['wall_s']:.0f} s |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
