"""The `nova top` command line: its parser, with the work in `top_screen.py` loaded on use.

Every `nova` invocation builds the whole parser; curses and the screen's
modules are imported only when `nova top` runs.
"""

from __future__ import annotations

import argparse

from .common import Groups, Parser, agent_flags, handled_later


def add_top_commands(groups: Groups[Parser]) -> None:
    """Register `nova top`."""
    top = groups.add_parser(
        "top",
        help="a live view of the mesh: hosts by load, migrations in flight, recent events",
        description="Full screen on a terminal (q quits); one plain snapshot otherwise.",
    )
    top.add_argument(
        "--interval", type=_interval, default=2.0, metavar="S", help="seconds between looks"
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    agent_flags(top)
    top.set_defaults(handler=handled_later("top_screen", "show_top"))


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text} s is not between 0.1 and 3600")
    return seconds
