"""`nova host drain` and `nova host undrain`: empty a host before maintenance.

Draining is done by the drained host's own agent (it is the source of every
move). On that host the commands talk to its agent directly; on any other
host of the mesh they ask the local agent to forward the request over the
mesh (`POST /v1/hosts/HOST/drain`), signed with the operator's certificate
(`--operator`: another host obeys an operator, not a member), and print the
drained host's answer.
`--wait` follows the drain until no VM runs there any more: on the drained
host with what moves where, elsewhere from the host's gossiped record (its
`draining` flag and the VMs it still runs).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any

from novacron.agent import client

from .common import EXIT_FAILED, EXIT_OK, Groups, Output, Parser, agent_flags, ask
from .operator import operator_flags, signed_command

WAIT_POLL = 1.0  # seconds between looks at a drain being waited for
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as certificates allow


def add_drain_commands(host_commands: Groups[Parser]) -> None:
    """Register `nova host drain` and `nova host undrain` in the `host` group."""
    drain = host_commands.add_parser(
        "drain", help="no new VMs on a host; move every running VM away live"
    )
    drain.add_argument(
        "node_id", nargs="?", metavar="HOST", help="the host to drain (default: this host)"
    )
    drain.add_argument("--wait", action="store_true", help="follow it until the host is empty")
    drain.add_argument(
        "--status", action="store_true", help="only show how the drain stands; change nothing"
    )
    operator_flags(drain)
    agent_flags(drain)
    drain.set_defaults(handler=drain_host)

    undrain = host_commands.add_parser("undrain", help="a drained host takes new VMs again")
    undrain.add_argument(
        "node_id", nargs="?", metavar="HOST", help="the host to undrain (default: this host)"
    )
    operator_flags(undrain)
    agent_flags(undrain)
    undrain.set_defaults(handler=undrain_host)


def drain_host(args: argparse.Namespace, out: Output) -> int:
    remote, code = _remote_host(args, out)
    if code != EXIT_OK:
        return code
    if remote is not None:
        return _drain_remote(args, out, remote)
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
    remote, code = _remote_host(args, out)
    if code != EXIT_OK:
        return code
    if remote is not None:
        path, body = f"/v1/hosts/{remote}/undrain", _remote_body(args, "undrain", remote)
        answer, code = ask(out, client.post, path, body, args.socket)
    else:
        answer, code = ask(out, client.post, "/v1/undrain", {}, args.socket)
    if answer is None:
        return code
    out.result({"drain": answer}, [f"{answer['node_id']} takes new VMs again"])
    return EXIT_OK


def _remote_host(args: argparse.Namespace, out: Output) -> tuple[str | None, int]:
    """(HOST, EXIT_OK) when HOST is another host than this agent's; (None, EXIT_OK) for this
    host; (None, exit code) after reporting why when that cannot be told."""
    if not args.node_id:
        return None, EXIT_OK
    if NODE_ID.fullmatch(args.node_id) is None:
        out.error(f"unknown host: {args.node_id!r} is not a host id")
        return None, EXIT_FAILED
    status, code = ask(out, client.get, "/v1/status", args.socket)
    if status is None:
        return None, code
    return (None if status["node_id"] == args.node_id else args.node_id), EXIT_OK


def _operator() -> str:
    """Who runs `nova` (sudo's caller first), for the drained host's log."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME", "")


def _remote_body(args: argparse.Namespace, action: str, node: str) -> dict[str, Any]:
    """Who asks, and the operator's signed command that the other host will check."""
    body: dict[str, Any] = {"requested_by": _operator()}
    command = signed_command(args, action, node)
    if command is not None:
        body["operator"] = command
    return body


def _drain_remote(args: argparse.Namespace, out: Output, node: str) -> int:
    """Drain `node` (or show its drain) through this host's agent and the mesh."""
    path = f"/v1/hosts/{node}/drain"
    if args.status:
        answer, code = ask(out, client.get, path, args.socket)
    else:
        body = _remote_body(args, "drain", node)
        answer, code = ask(out, client.post, path, body, args.socket)
    if answer is None:
        return code
    if not args.wait:
        asked = [] if args.status else [f"{node} accepted the drain"]
        out.result({"drain": answer}, [*asked, *summary(answer)])
        return EXIT_OK
    return _wait_remote(args, out, node, answer)


def _wait(args: argparse.Namespace, out: Output, answer: dict[str, Any]) -> int:
    last: list[str] = []
    while not answer["done"]:
        if not answer["draining"]:
            out.error("the drain was cancelled (nova host undrain)", {"drain": answer})
            return EXIT_FAILED
        lines = summary(answer)
        if lines != last and not out.json:
            print("\n".join(lines), file=out.stderr, flush=True)
            last = lines
        time.sleep(WAIT_POLL)
        answer, code = ask(out, client.get, "/v1/drain", args.socket)
        if answer is None:
            return code
    out.result({"drain": answer}, summary(answer))
    return EXIT_OK


def _wait_remote(args: argparse.Namespace, out: Output, node: str, answer: dict[str, Any]) -> int:
    """Follow `node`'s drain in its gossiped record until it runs no VM.

    A record older than the one the drained host answered with (gossip has
    not brought the flag here yet) is not taken for a cancelled drain.
    """
    asked = answer["record_version"]
    last: list[str] = []
    while True:
        current = answer["record_version"] >= asked
        if current and answer["done"]:
            break
        if current and not answer["draining"]:
            out.error(f"the drain of {node} was cancelled (nova host undrain)", {"drain": answer})
            return EXIT_FAILED
        if answer["state"] in ("dead", "left"):
            out.error(
                f"{node} is {answer['state']} in {answer['seen_from']}'s view of the mesh: its "
                "drain goes on when its agent is back (see 'nova host drain "
                f"{node} --status')",
                {"drain": answer},
            )
            return EXIT_FAILED
        lines = summary(answer) if current else last
        if lines != last and not out.json:
            print("\n".join(lines), file=out.stderr, flush=True)
            last = lines
        time.sleep(WAIT_POLL)
        answer, code = ask(out, client.get, f"/v1/hosts/{node}/drain", args.socket)
        if answer is None:
            return code
    out.result({"drain": answer}, summary(answer))
    return EXIT_OK


def summary(drain: dict[str, Any]) -> list[str]:
    """How a drain stands, a few lines for people (the drained host's own status, or
    another host's as the mesh shows it)."""
    node = drain["node_id"]
    remote = bool(drain.get("remote"))
    seen = f" (as {drain['seen_from']} sees it)" if remote else ""
    if not drain["draining"]:
        return [f"{node} is not draining{seen}"]
    if drain["done"] and remote:
        lines = [f"{node} drained: no VM runs there{seen}"]
    elif drain["done"]:
        lines = [f"{node} drained: no VM runs here; moved {', '.join(drain['moved']) or 'none'}"]
    elif remote:
        out, arriving = drain["migrations_out"], drain.get("migrations_in", 0)
        lines = [
            f"{node} draining: {len(drain['running'])} VM(s) still running there"
            f" ({', '.join(drain['running'])}), {out} migration(s) out, {arriving} arriving{seen}"
        ]
    else:
        lines = [f"{node} draining: {len(drain['running'])} VM(s) still running here"]
    for arrival in drain.get("arriving", []):
        lines.append(
            f"  arriving {arrival['vm']} <- {arrival['source']} ({arrival['phase']}): "
            "it is stopped before post-copy, else moved on once it lands"
        )
    for move in drain.get("moving", []):
        lines.append(
            f"  moving {move['vm']} -> {move['target']} ({move['phase']}, {move['percent']:.0f}%)"
        )
    for vm, why in drain.get("blocked", {}).items():
        lines.append(f"  waiting {vm}: {why}")
    for vm, state in drain["not_moved"].items():
        lines.append(f"  left {vm}: {state} (only running VMs move)")
    return lines
