"""`nova host drain` and `nova host undrain`: empty a host before maintenance.

Draining is done by the drained host's own agent (it is the source of every
move), so these commands run on that host. `--wait` follows the drain until
no VM runs there any more, showing what moves where.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from novacron.agent import client

from .common import EXIT_FAILED, EXIT_OK, Groups, Output, Parser, agent_flags, ask

WAIT_POLL = 1.0  # seconds between looks at a drain being waited for


def add_drain_commands(host_commands: Groups[Parser]) -> None:
    """Register `nova host drain` and `nova host undrain` in the `host` group."""
    drain = host_commands.add_parser(
        "drain", help="no new VMs on this host; move every running VM away live"
    )
    drain.add_argument("node_id", nargs="?", metavar="HOST", help="this host's id (a check)")
    drain.add_argument("--wait", action="store_true", help="follow it until the host is empty")
    drain.add_argument(
        "--status", action="store_true", help="only show how the drain stands; change nothing"
    )
    agent_flags(drain)
    drain.set_defaults(handler=drain_host)

    undrain = host_commands.add_parser("undrain", help="take new VMs on this host again")
    undrain.add_argument("node_id", nargs="?", metavar="HOST", help="this host's id (a check)")
    agent_flags(undrain)
    undrain.set_defaults(handler=undrain_host)


def drain_host(args: argparse.Namespace, out: Output) -> int:
    code = _check_host(args, out)
    if code != EXIT_OK:
        return code
    if args.status:
        answer, code = ask(out, client.get, "/v1/drain", args.socket)
    else:
        answer, code = ask(out, client.post, "/v1/drain", {}, args.socket)
    if answer is None:
        return code
    if not args.wait:
        out.result({"drain": answer}, summary(answer))
        return EXIT_OK
    return _wait(args, out, answer)


def undrain_host(args: argparse.Namespace, out: Output) -> int:
    code = _check_host(args, out)
    if code != EXIT_OK:
        return code
    answer, code = ask(out, client.post, "/v1/undrain", {}, args.socket)
    if answer is None:
        return code
    out.result({"drain": answer}, [f"{answer['node_id']} takes new VMs again"])
    return EXIT_OK


def _check_host(args: argparse.Namespace, out: Output) -> int:
    """A HOST argument must name this host: the drained host's agent moves its VMs."""
    if not args.node_id:
        return EXIT_OK
    status, code = ask(out, client.get, "/v1/status", args.socket)
    if status is None:
        return code
    if status["node_id"] != args.node_id:
        out.error(
            f"this agent is {status['node_id']}, not {args.node_id}: a drain is carried out by "
            f"the drained host's own agent, so run 'nova host drain' on {args.node_id}"
        )
        return EXIT_FAILED
    return EXIT_OK


def _wait(args: argparse.Namespace, out: Output, answer: dict[str, Any]) -> int:
    last: list[str] = []
    while not answer["done"]:
        if not answer["draining"]:
            out.error("the drain was cancelled (nova host undrain)", {"drain": answer})
            return EXIT_FAILED
        lines = summary(answer)
        if lines != last and not out.json:
            print("\n".join(lines), file=sys.stderr, flush=True)
            last = lines
        time.sleep(WAIT_POLL)
        answer, code = ask(out, client.get, "/v1/drain", args.socket)
        if answer is None:
            return code
    out.result({"drain": answer}, summary(answer))
    return EXIT_OK


def summary(drain: dict[str, Any]) -> list[str]:
    """How a drain stands, a few lines for people."""
    node = drain["node_id"]
    if not drain["draining"]:
        return [f"{node} is not draining"]
    if drain["done"]:
        lines = [f"{node} drained: no VM runs here; moved {', '.join(drain['moved']) or 'none'}"]
    else:
        lines = [f"{node} draining: {len(drain['running'])} VM(s) still running here"]
    for move in drain["moving"]:
        lines.append(
            f"  moving {move['vm']} -> {move['target']} ({move['phase']}, {move['percent']:.0f}%)"
        )
    for vm, why in drain["blocked"].items():
        lines.append(f"  waiting {vm}: {why}")
    for vm, state in drain["not_moved"].items():
        lines.append(f"  left {vm}: {state} (only running VMs move)")
    return lines
