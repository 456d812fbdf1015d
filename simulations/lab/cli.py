"""`python -m novacron.simulations.lab`: up, down, status, exec, link, agent.

Exit status 0 on success, 1 on a LabError (message on stderr), and for
`exec` the command's own status. `--json` output goes to stdout alone;
progress then goes to stderr, so the JSON stays parseable.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novacron.simulations.lab import preflight
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.instance import Lab
from novacron.simulations.lab.naming import lab_command
from novacron.simulations.lab.state import DEFAULT_STATE_ROOT
from novacron.simulations.lab.status import all_status, format_status, lab_status
from novacron.simulations.lab.teardown import tear_down

PROG = "python -m novacron.simulations.lab"
NOVA = Path(sys.executable).parent / "nova"  # installed beside this Python
RUNNING_NOVA = f"""\
nova on a lab host: `{lab_command("exec", "h1", "--")} {NOVA} members`.
`exec` enters the host's network, mount and UTS namespaces, as its agent sees
them; `ip netns exec` enters only the network namespace, and there `nova` finds
no agent socket (it lives in the host's private /run). Give nova by its full
path: the lab host's PATH need not include this virtualenv. `exec` runs the
command in the current directory, so relative paths work.
"""
MESH_TIMEOUT = 120.0  # seconds `up --agents` waits for every agent to see every host
AGENT_ACTIONS = {
    "stop": "SIGTERM: the agent leaves the mesh and exits",
    "kill": "SIGKILL: a crash, for fault drills",
    "start": "start it again with the command line it had",
    "restart": "stop, then start",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hosts in network namespaces, each with its own libvirtd (and agent).",
        epilog=RUNNING_NOVA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    run = sub.add_parser(
        "exec",
        help="run a command inside a host, in this directory: exec h1 -- CMD...",
        description="Run a command inside a host, in the current directory.",
        epilog=RUNNING_NOVA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("host")
    run.add_argument("argv", nargs="*", metavar="CMD", help="after --: the command and its args")
    link = sub.add_parser("link", help="cut (down) or restore (up) a host's network")
    link.add_argument("host")
    link.add_argument("state", choices=["down", "up"])
    agent = sub.add_parser(
        "agent",
        help="stop, kill, start or restart one host's nova-agent",
        description="; ".join(f"{verb}: {what}" for verb, what in AGENT_ACTIONS.items()) + ".",
    )
    agent.add_argument("action", choices=list(AGENT_ACTIONS))
    agent.add_argument("host")
    for cmd in (up, down, run, link, agent):
        cmd.add_argument("--name", default="default", help="lab name (default: default)")
    status.add_argument("--name", default=None, help="only this lab")
    for cmd in (up, down, status, agent):
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
        down = lab_command("down", "--name", args.name)
        print(f"lab {args.name} is up; remove it with `{down}`")
    return 0


def _start_agents(lab: Lab, out: Any) -> None:
    """One agent per host; they outlive this command and `down` stops them."""
    from novacron.simulations.lab.agents import BIN, LabAgents  # only needed with --agents

    agents = LabAgents(lab)
    agents.start_all()
    for host in lab.hosts:
        print(f"  {host.name}: nova-agent started; log {agents.host_dir(host)}/agent.log", file=out)
    print(f"  waiting (up to {MESH_TIMEOUT:g} s) until every agent sees every host", file=out)
    try:  # so that the commands printed below work the moment they are printed
        agents.wait_for_full_mesh(timeout=MESH_TIMEOUT)
    except TimeoutError as exc:
        raise LabError(f"the agents did not all meet: {exc} (see their logs above)") from None
    see = lab_command("exec", "h1", "--name", lab.name, "--", str(BIN / "nova"), "members")
    print(f"  see the mesh: {see}", file=out)
    kill = lab_command("agent", "kill", lab.hosts[-1].name, "--name", lab.name)
    print(f"  stop, kill, start or restart an agent: {kill}", file=out)


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
    return subprocess.run(host.command(argv, cwd=Path.cwd()), check=False).returncode


def cmd_link(args: argparse.Namespace) -> int:
    host = Lab.attach(args.name, args.state_root).host(args.host)
    if args.state == "down":
        host.link_down()
    else:
        host.link_up()
    print(f"{args.name}/{host.name}: link {host.link_state()}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from novacron.simulations.lab.agents import LabAgents  # only needed here and with --agents

    lab = Lab.attach(args.name, args.state_root)
    host, agents = lab.host(args.host), LabAgents(lab)
    before = agents.running_pid(host)
    if args.action == "stop":
        agents.kill(host, signal.SIGTERM)
    elif args.action == "kill":
        agents.kill(host, signal.SIGKILL)
    else:  # start, restart: with the command line the agent had
        if before is not None and args.action == "start":
            raise LabError(f"{args.name}/{host.name}: the agent already runs (pid {before})")
        agents.restart(host)
    after = agents.running_pid(host)
    if args.json:
        emit({"host": host.name, "action": args.action, "pid_before": before, "pid": after})
        return 0
    done = {"stop": "stopped", "kill": "killed", "start": "started", "restart": "restarted"}
    line = f"{args.name}/{host.name}: agent {before or ''} {done[args.action]}".replace("  ", " ")
    if after:
        line += f"; now pid {after}, log {agents.host_dir(host) / 'agent.log'}"
    print(line)
    return 0


COMMANDS = {
    "agent": cmd_agent,
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
