"""`nova status`, `nova members`, `nova host show`, `nova vm list`: the mesh as this host sees it.

Each asks the local agent over its unix socket. When the agent is not
running, the command says so and exits 3 (4 when its socket refuses this
user), so scripts can tell "no agent" from "the command failed".
"""

from __future__ import annotations

import argparse
from typing import Any

from novacron.agent import client
from novacron.protocol.certificates import format_time

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Groups,
    Output,
    Parser,
    agent_flags,
    ask,
    json_flag,
)
from .drain import add_drain_commands
from .migrate import add_vm_migration_commands
from .table import age, render
from .vms import add_vm_lifecycle_commands


def add_mesh_commands(groups: Groups[Parser]) -> None:
    """Register the read-only mesh commands."""
    status = groups.add_parser("status", help="this agent: identity, health, member counts")
    agent_flags(status)
    status.set_defaults(handler=show_status)

    reload = groups.add_parser(
        "reload", help="the agent reads its certificate, key and revocation list again"
    )
    agent_flags(reload)
    reload.set_defaults(handler=reload_identity)

    members = groups.add_parser("members", help="every member this agent knows, with its state")
    agent_flags(members)
    members.set_defaults(handler=list_members)

    host = groups.add_parser("host", help="hosts of the mesh")
    json_flag(host)
    host_commands = host.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    show = host_commands.add_parser("show", help="one host's record (default: this host)")
    show.add_argument("node_id", nargs="?", metavar="ID", help="host node id")
    agent_flags(show)
    show.set_defaults(handler=show_host)
    add_drain_commands(host_commands)

    vm = groups.add_parser("vm", help="virtual machines")
    json_flag(vm)
    vm_commands = vm.add_subparsers(dest="vm_command", metavar="COMMAND", required=True)
    vm_list = vm_commands.add_parser("list", help="every VM the mesh knows, with its host")
    agent_flags(vm_list)
    vm_list.set_defaults(handler=list_vms)
    vm_show = vm_commands.add_parser("show", help="one VM: where it runs and its migrations")
    vm_show.add_argument("name", metavar="VM")
    agent_flags(vm_show)
    vm_show.set_defaults(handler=show_vm)
    add_vm_lifecycle_commands(vm_commands)
    add_vm_migration_commands(vm_commands)


def reload_identity(args: argparse.Namespace, out: Output) -> int:
    """`nova reload`: after `nova ca issue NODE --renew` or a new revocation list file."""
    answer, code = ask(out, client.post, "/v1/reload", {}, args.socket)
    if answer is None:
        return code
    out.result(
        {"certificate": answer},
        [f"reloaded: certificate serial {answer['serial']} valid until {answer['not_after']}"],
    )
    return EXIT_OK


def show_status(args: argparse.Namespace, out: Output) -> int:
    status, code = ask(out, client.get, "/v1/status", args.socket)
    if status is None:
        return code
    counts = status["members"]
    libvirt = "connected" if status["libvirt_connected"] else "NOT connected"
    if status["libvirt_warning"]:
        libvirt += f": {status['libvirt_warning']}"
    lines = [
        f"node:         {status['node_id']} at {status['address']}",
        f"incarnation:  {status['incarnation']}   health: {_health(status['awareness'])}",
        "members:      " + ", ".join(f"{n} {state}" for state, n in counts.items() if n),
        f"record:       version {status['record_version']}, {status['records']} records known",
        f"libvirt:      {status['libvirt_uri']} "
        + (
            "connected"
            if status["libvirt_connected"]
            else f"NOT connected: {status['libvirt_warning']}"
        ),
        f"domain type:  {status.get('domain_type') or 'none'} ({status.get('domain_type_reason')})",
        f"uptime:       {age(status['uptime_s'])}",
    ]
    cert = status.get("certificate")
    if cert:
        warn = (
            "  EXPIRING: renew it (nova ca issue --renew, nova reload)" if cert["expiring"] else ""
        )
        lines.append(
            f"certificate:  serial {cert['serial']}, valid until {cert['not_after']}{warn}"
        )
    for node, addresses in (status.get("identity_clashes") or {}).items():
        lines.append(
            f"IDENTITY:     node {node} speaks from {', '.join(addresses)}: two agents, one key"
        )
    if status.get("revoked_members"):
        lines.append(f"revoked:      {', '.join(status['revoked_members'])} (expelled)")
    if status.get("last_refusal"):
        lines.append(f"last refusal: {status['last_refusal']}")
    link = status.get("site_link")
    if link:
        lines.append(f"site link:    {_site_link(link, status['node_id'])}")
    if status.get("site_commands_refused"):
        refused = status["site_commands_refused"]
        lines.append(f"site link:    {refused} command(s) refused: not the coordinator's (see log)")
    stream = status.get("event_stream")
    if stream:
        lines.append(f"events:       {event_stream_line(stream)}")
    traces = status.get("tracing")
    if traces:
        failing = f"; FAILING: {traces['last_error']}" if traces["last_error"] else ""
        lines.append(
            f"traces:       to {traces['endpoint']}, {traces['exported']} spans sent, "
            f"{traces['dropped']} dropped{failing}"
        )
    out.result({"status": status}, lines)
    return EXIT_OK


def _site_link(link: dict[str, Any], node: str) -> str:
    if link["gateway"] != node:
        return f"held by the site's gateway, {link['gateway'] or 'none yet'}"
    if link["connected"]:
        return f"connected to {link['coordinator']} as site {link['site']}"
    return f"NOT connected to {link['coordinator'] or 'a coordinator'}: {link['last_error']}"


def event_stream_line(stream: dict[str, Any]) -> str:
    """The event stream as `nova status` shows it: where to, and what waits or was lost."""
    dropped = f", {stream['dropped']} DROPPED (spool full)" if stream["dropped"] else ""
    if stream["last_error"]:
        return (
            f"{stream['backlog']} waiting for {stream['sink']}, which is unreachable: "
            f"{stream['last_error']}{dropped}"
        )
    return f"to {stream['sink']}, {stream['backlog']} waiting{dropped}"


def _health(awareness: int) -> str:
    return "ok" if awareness == 0 else f"degraded (Lifeguard score {awareness})"


def list_members(args: argparse.Namespace, out: Output) -> int:
    data, code = ask(out, client.get, "/v1/members", args.socket)
    if data is None:
        return code
    rows = [
        (
            m["node_id"] + (" (self)" if m["self"] else ""),
            m["address"],
            m["state"] + (f" ({m['note']})" if m.get("note") else ""),
            m["incarnation"],
            m["load"],
            age(m["last_heard_s"]),
        )
        for m in data["members"]
    ]
    headers = ("id", "address", "state", "incarnation", "load", "last heard")
    out.result(data, render(headers, rows))
    return EXIT_OK


def show_host(args: argparse.Namespace, out: Output) -> int:
    path = f"/v1/hosts/{args.node_id}" if args.node_id else "/v1/hosts/self"
    host, code = ask(out, client.get, path, args.socket)
    if host is None:
        return code
    record = host["record"] or {}
    capacity, usage = record.get("capacity", {}), record.get("usage", {})
    lines = [
        f"host:      {host['node_id']}   state: {host['state']}   address: {host['address']}",
        f"cpu:       {usage.get('vcpus', 0):.1f} of {capacity.get('vcpus', 0):g} cores busy,"
        f" load {record.get('load', 0):.2f}",
        f"memory:    {usage.get('memory_mib', 0)} of {capacity.get('memory_mib', 0)} MiB used",
        f"disk:      {usage.get('disk_gib', 0):.1f} of {capacity.get('disk_gib', 0):.1f} GiB used",
        f"libvirt:   {record.get('libvirt_uri', '-')}{_unreachable(record)}",
        f"labels:    {', '.join(f'{k}={v}' for k, v in record.get('labels', {}).items()) or '-'}",
        f"draining:  {'yes' if record.get('draining') else 'no'}",
        f"migrating: {record.get('migrations_out', 0)} out, {record.get('migrations_in', 0)} in",
        f"rebalance: {_rebalance(record.get('rebalance', {}))}",
        f"gateway:   {'candidate' if record.get('gateway_candidate') else 'no'}",
        f"templates: {_templates(record)}",
        f"vms:       {len(record.get('vms', []))}   record version {record.get('version', '-')}",
    ]
    out.result({"host": host}, lines)
    return EXIT_OK


def _templates(record: dict[str, Any]) -> str:
    """The templates the host holds whole, and those it is fetching now."""
    held = ", ".join(record.get("templates", [])) or "-"
    fetching = ", ".join(record.get("fetching", []))
    return f"{held}   fetching: {fetching}" if fetching else held


def _rebalance(setting: dict[str, Any]) -> str:
    """The mesh-wide rebalancing switch as this host last published it."""
    state = "paused" if setting.get("paused") else "active"
    since = setting.get("since", 0.0)
    return f"{state} since {format_time(since)}" if since else state


def _unreachable(record: dict[str, Any]) -> str:
    since = record.get("libvirt_unreachable_since", 0.0)
    return f"  unreachable since {format_time(since)} (VMs as last listed)" if since else ""


def _vm_state(vm: dict[str, Any]) -> str:
    """A VM's state, saying so when its host cannot ask libvirt (the last state it knew)."""
    since = vm.get("libvirt_unreachable_since")
    return f"{vm['state']} (libvirt unreachable since {since})" if since else str(vm["state"])


def list_vms(args: argparse.Namespace, out: Output) -> int:
    data, code = ask(out, client.get, "/v1/vms", args.socket)
    if data is None:
        return code
    rows = [
        (vm["name"], _vm_state(vm), vm["host"], vm["vcpus"], vm["memory_mib"]) for vm in data["vms"]
    ]
    lines = render(("name", "state", "host", "vcpus", "memory mib"), rows)
    out.result(data, lines + _conflict_lines(data.get("conflicts", [])))
    return EXIT_OK


def _conflict_lines(conflicts: list[dict[str, Any]]) -> list[str]:
    """Claims on VMs that the claimant's libvirt denies: shown apart, not as locations."""
    return [
        f"not believed: {c['host']} claims {c['name']} ({c['state']}), which runs on "
        f"{', '.join(c['runs_on'])}: {c['why']}"
        for c in conflicts
    ]


def show_vm(args: argparse.Namespace, out: Output) -> int:
    """Every host that reports the VM (normally one) and the migrations that moved it."""
    data, code = ask(out, client.get, "/v1/vms", args.socket)
    if data is None:
        return code
    rows = [vm for vm in data["vms"] if vm["name"] == args.name]
    if not rows:
        out.error(
            f"no VM named {args.name!r} in this agent's view of the mesh (see 'nova vm list')"
        )
        return EXIT_FAILED
    try:
        moves = client.get(f"/v1/vms/{args.name}/migrations", args.socket)
    except (client.AgentUnavailable, client.AgentRequestFailed):
        moves = {}  # the VM's place is known; its history is a bonus
    history = moves.get("migrations", [])
    conflicts = [c for c in data.get("conflicts", []) if c["name"] == args.name]
    lines = [
        f"vm {vm['name']}: {vm['state']} on {vm['host']} ({vm['host_state']}), "
        f"{vm['vcpus']} vCPU, {vm['memory_mib']} MiB, uuid {vm['uuid'] or '-'}"
        for vm in rows
    ]
    if len(rows) > 1:
        lines.append("warning: more than one host reports this VM (a migration may be ending)")
    lines += _conflict_lines(conflicts)
    lines += [
        f"  migration {m['migration_id']}: {m['source']} -> {m['target']}, "
        f"{m.get('outcome') or m.get('phase')}, {m.get('started') or '?'} .. "
        f"{m.get('ended') or 'running'}{': ' + m['reason'] if m.get('reason') else ''}"
        for m in history
    ]
    out.result({"vm": rows, "migrations": history, "conflicts": conflicts}, lines)
    return EXIT_OK
