"""`nova rebalance status|plan|pause|resume`: why the mesh moves VMs, and a brake.

`status` and `plan` are about this host (its recent moves with their reasons
and outcomes; what it would do now); `pause` and `resume` are mesh-wide: the
setting spreads to every agent by gossip within seconds.
"""

from __future__ import annotations

import argparse
from typing import Any

from novacron.agent import client

from .common import EXIT_OK, Groups, Output, Parser, agent_flags, ask, json_flag
from .table import render


def add_rebalance_commands(groups: Groups[Parser]) -> None:
    rebalance = groups.add_parser("rebalance", help="automatic load balancing between hosts")
    json_flag(rebalance)
    commands = rebalance.add_subparsers(dest="rebalance_command", metavar="COMMAND", required=True)
    for name, help_text, handler in (
        ("status", "this host's recent moves, their reasons and outcomes", show_status),
        ("plan", "what this host would move now (nothing is moved)", show_plan),
        ("pause", "stop automatic moves on every host of the mesh", pause),
        ("resume", "let every host move VMs again", resume),
    ):
        command = commands.add_parser(name, help=help_text)
        agent_flags(command)
        command.set_defaults(handler=handler)


def show_status(args: argparse.Namespace, out: Output) -> int:
    status, code = ask(out, client.get, "/v1/rebalance", args.socket)
    if status is None:
        return code
    state = "paused (mesh-wide)" if status["paused"] else "active"
    if not status["enabled"]:
        state += ", but disabled on this host (rebalance = false)"
    lines = [f"rebalancing: {state}"]
    if status["last_decision"] is not None:
        lines.append(f"last decision: {status['last_decision']['reason']}")
    rows = [
        (m["vm"], m["target"], m["outcome"], m["reason"] + _why_failed(m)) for m in status["moves"]
    ]
    lines += render(("vm", "to", "outcome", "why"), rows) if rows else ["no moves yet"]
    out.result({"rebalance": status}, lines)
    return EXIT_OK


def show_plan(args: argparse.Namespace, out: Output) -> int:
    decision, code = ask(out, client.get, "/v1/rebalance/plan", args.socket)
    if decision is None:
        return code
    move = decision["move"]
    head = f"would move {move['vm']} to {move['target']}: " if move else "would move nothing: "
    out.result({"plan": decision}, [head + decision["reason"]])
    return EXIT_OK


def pause(args: argparse.Namespace, out: Output) -> int:
    return _set(args, out, "pause", "paused on every host (spreading by gossip)")


def resume(args: argparse.Namespace, out: Output) -> int:
    return _set(args, out, "resume", "resumed on every host (spreading by gossip)")


def _set(args: argparse.Namespace, out: Output, verb: str, line: str) -> int:
    status, code = ask(out, client.post, f"/v1/rebalance/{verb}", {}, args.socket)
    if status is None:
        return code
    out.result({"rebalance": status}, [f"rebalancing {line}"])
    return EXIT_OK


def _why_failed(move: dict[str, Any]) -> str:
    return f" ({move['outcome_reason']})" if move.get("outcome_reason") else ""
