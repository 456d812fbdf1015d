"""`python -m novacron.simulations.lab`: up, down, status, exec, link.

Exit status 0 on success, 1 on a LabError (message on stderr), and for
`exec` the command's own status. `--json` output goes to stdout alone;
progress then goes to stderr, so the JSON stays parseable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novacron.simulations.lab import preflight
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.instance import Lab
from novacron.simulations.lab.state import DEFAULT_STATE_ROOT
from novacron.simulations.lab.status import all_status, format_status, lab_status
from novacron.simulations.lab.teardown import tear_down

PROG = "python -m novacron.simulations.lab"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Hosts in network namespaces.")
    parser.add_argument(
        "--state-root", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create a lab of N hosts")
    up.add_argument("--hosts", type=int, default=3, metavar="N")
    up.add_argument("--no-libvirt", action="store_true", help="hosts without libvirtd")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds per host to start")
    up.add_argument(
        "--agents", action="store_true", help="also issue certificates and start nova-agent"
    )
    down = sub.add_parser("down", help="remove a lab and everything it created")
    status = sub.add_parser("status", help="show labs (all, or --name)")
    run = sub.add_parser("exec", help="run a command inside a host: exec h1 -- CMD...")
    run.add_argument("host")
    run.add_argument("argv", nargs="*", metavar="CMD", help="after --: the command and its args")
    link = sub.add_parser("link", help="cut (down) or restore (up) a host's network")
    link.add_argument("host")
    link.add_argument("state", choices=["down", "up"])
    for cmd in (up, down, run, link):
        cmd.add_argument("--name", default="default", help="lab name (default: default)")
    status.add_argument("--name", default=None, help="only this lab")
    for cmd in (up, down, status):
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def emit(data: Any) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_up(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    lab = Lab(
        args.name,
        args.hosts,
        libvirt=not args.no_libvirt,
        state_root=args.state_root,
        progress=lambda line: print(line, file=out, flush=True),
        timeout=args.timeout,
    )
    lab.up()
    if args.agents:
        _start_agents(lab, out)
    if args.json:
        emit(lab_status(args.state_root, args.name))
    else:
        print(f"lab {args.name} is up; remove it with `{PROG} down --name {args.name}`")
    return 0


def _start_agents(lab: Lab, out: Any) -> None:
    """One agent per host; they outlive this command and `down` stops them."""
    from novacron.simulations.lab.agents import BIN, LabAgents  # only needed with --agents

    agents = LabAgents(lab)
    agents.start_all()
    for host in lab.hosts:
        print(f"  {host.name}: nova-agent started; log {agents.host_dir(host)}/agent.log", file=out)
    print(f"  see the mesh: {PROG} exec h1 --name {lab.name} -- {BIN}/nova members", file=out)


def cmd_down(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    report = tear_down(args.name, args.state_root, lambda line: print(line, file=out))
    if args.json:
        emit({"name": report.lab, "namespaces": report.namespaces, "killed": report.killed})
    else:
        print(f"lab {args.name} is down ({len(report.namespaces)} namespaces removed)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    labs = all_status(args.state_root, args.name)
    if args.json:
        emit({"labs": labs})
    else:
        print(format_status(labs))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if not argv:
        raise LabError(f"no command given: {PROG} exec HOST -- CMD...")
    host = Lab.attach(args.name, args.state_root).host(args.host)
    return subprocess.run(host.command(argv), check=False).returncode


def cmd_link(args: argparse.Namespace) -> int:
    host = Lab.attach(args.name, args.state_root).host(args.host)
    if args.state == "down":
        host.link_down()
    else:
        host.link_up()
    print(f"{args.name}/{host.name}: link {host.link_state()}")
    return 0


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "exec": cmd_exec,
    "link": cmd_link,
}


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; everything after the first `--` is the command for `exec`.

    Split by hand because argparse would read the command's own options
    (`exec h1 -- ip -j addr`) as the lab's.
    """
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if command:
        if args.command != "exec":
            build_parser().error("`--` is only for `exec HOST -- CMD...`")
        args.argv = [*args.argv, *command]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        preflight.require_root()
        return COMMANDS[args.command](args)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
