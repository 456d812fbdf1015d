"""Command line: `python -m novacron.simulations.gossip --nodes N --loss P ...`.

Runs one scenario of the membership simulator against the real sans-IO core,
prints a human summary and, with `--json PATH`, writes the full report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .network import JITTER_KINDS
from .report import run, summary_lines, to_json
from .scenarios import SCENARIOS, Params, parse_groups


def parser() -> argparse.ArgumentParser:
    """The CLI's arguments; defaults come from `Params`."""
    d = Params()
    p = argparse.ArgumentParser(
        prog="python -m novacron.simulations.gossip",
        description="Deterministic discrete-event simulation of NovaCron membership.",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="dissemination")
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--loss", type=float, default=d.loss, help="packet loss probability")
    p.add_argument("--duration", type=float, default=None, help="time limit, simulated seconds")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-lifeguard", action="store_true", help="plain SWIM baseline")
    p.add_argument("--slow-fraction", type=float, default=d.slow_fraction)
    p.add_argument("--slow-delay", type=float, default=d.slow_delay, help="inbox lag, s")
    p.add_argument("--latency-ms", type=float, default=d.latency * 1000)
    p.add_argument("--jitter-ms", type=float, default=d.jitter * 1000)
    p.add_argument("--jitter", choices=JITTER_KINDS, default=d.jitter_kind)
    p.add_argument("--warmup", type=float, default=d.warmup)
    p.add_argument("--isolation", type=float, default=d.isolation, help="catch-up only")
    p.add_argument("--updaters", type=int, default=d.updaters, help="catch-up only")
    p.add_argument(
        "--groups",
        default=d.groups,
        help='partition-heal: "K" equal sides, or sizes such as "1,*" (one node alone) '
        'or "100,300,*" ("*": the rest)',
    )
    p.add_argument("--split", type=float, default=None, help="partition-heal: longest split, s")
    p.add_argument(
        "--held-split",
        action="store_true",
        help="partition-heal: start split, each side already holding the others failed "
        "(a split held long), run --warmup so, then heal",
    )
    p.add_argument("--churn", type=float, default=d.churn, help="churn: fraction per period")
    p.add_argument("--churn-period", type=float, default=d.churn_period, help="churn: s")
    p.add_argument("--downtime", type=float, default=d.downtime, help="churn: mean time down, s")
    p.add_argument(
        "--bytes-every", type=int, default=d.bytes_every, help="1 exact, k sampled, 0 auto"
    )
    p.add_argument("--no-verify-cache", action="store_true")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--no-runtime", action="store_true", help="omit wall-clock and memory")
    p.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        help="a progress line on stderr every so many seconds of wall clock (0: none)",
    )
    return p


def params_from(args: argparse.Namespace) -> Params:
    """Translate parsed arguments into scenario parameters."""
    return Params(
        nodes=args.nodes,
        loss=args.loss,
        duration=args.duration,
        seed=args.seed,
        lifeguard=not args.no_lifeguard,
        slow_fraction=args.slow_fraction,
        slow_delay=args.slow_delay,
        bytes_every=args.bytes_every,
        latency=args.latency_ms / 1000,
        jitter=args.jitter_ms / 1000,
        jitter_kind=args.jitter,
        warmup=args.warmup,
        isolation=args.isolation,
        updaters=args.updaters,
        verify_cache=not args.no_verify_cache,
        groups=args.groups,
        split=args.split,
        held_split=args.held_split,
        churn=args.churn,
        churn_period=args.churn_period,
        downtime=args.downtime,
    )


def bad_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the scenario's own arguments, in one line (None: nothing)."""
    try:
        parse_groups(args.groups, args.nodes)
    except ValueError as error:
        return str(error)
    if not 0.0 <= args.churn <= 1.0:
        return f"--churn {args.churn}: a fraction between 0 and 1"
    if args.churn_period <= 0 or args.downtime < 0:
        return "--churn-period must be positive and --downtime not negative"
    if args.split is not None and args.split < 0:
        return "--split must not be negative"
    if args.held_split and (args.scenario != "partition-heal" or args.split is not None):
        return "--held-split is for --scenario partition-heal, without --split"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario; exit status 0."""
    args = parser().parse_args(argv)
    if args.nodes < 2:
        print("need at least 2 nodes", file=sys.stderr)
        return 2
    problem = bad_arguments(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    say = None if args.progress_every <= 0 else partial(print, file=sys.stderr, flush=True)
    report = run(
        args.scenario,
        params_from(args),
        with_runtime=not args.no_runtime,
        progress=say,
        progress_every=args.progress_every,
    )
    print("\n".join(summary_lines(report)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(to_json(report))
        print(f"  report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
