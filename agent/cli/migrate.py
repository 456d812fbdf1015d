"""`nova vm migrate`, `nova vm cancel`, `nova migrations`: live migration from the CLI.

The agent on this host runs the migration (it is the source); these commands
only ask it and watch. `--wait` follows the migration to its end with a live
progress line and exits 0 when the VM runs on the target, 1 with the reason
when it does not, so a script can rely on the exit code alone. A target that
lacks the VM's template fetches it from its peers first; the command follows
that fetch (a progress line) and then starts the migration.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from novacron.agent import client
from novacron.agent.core.images.target_fetch import (
    FETCH_QUIET,
    TEMPLATE_ASKS,
    TEMPLATE_LOOK,
    AwaitedFetch,
    FetchState,
    FetchWatch,
    awaited_fetch,
)

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Groups,
    Output,
    Parser,
    agent_flags,
    ask,
)
from .table import render

LOG_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal
WAIT_HOLD = 0.5  # seconds the agent holds each look (it answers at once when the migration ends)
MIB = 1024 * 1024
PAGE = 4096  # libvirt reports the dirty rate in pages per second


def add_vm_migration_commands(vm_commands: Groups[Parser]) -> None:
    """Register `nova vm migrate` and `nova vm cancel` in the `vm` group."""
    migrate = vm_commands.add_parser("migrate", help="move a running VM live to another host")
    migrate.add_argument("vm", metavar="VM", help="name of a VM running on this host")
    where = migrate.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="HOST", help="target host id")
    where.add_argument(
        "--auto", action="store_true", help="let the agent pick the host with the most room"
    )
    migrate.add_argument("--bandwidth", type=float, metavar="MiB/s", help="bandwidth cap")
    migrate.add_argument("--max-downtime", type=int, metavar="ms", help="longest final pause")
    migrate.add_argument(
        "--post-copy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="switch to post-copy if it does not converge in time (default: the policy's)",
    )
    migrate.add_argument(
        "--completion-timeout",
        type=float,
        metavar="s",
        help="escalate (post-copy or abort) after at least this long (default: the policy's)",
    )
    migrate.add_argument("--wait", action="store_true", help="follow it to the end")
    agent_flags(migrate)
    migrate.set_defaults(handler=migrate_vm)

    cancel = vm_commands.add_parser("cancel", help="cancel a running migration (id or VM)")
    cancel.add_argument("id", metavar="ID", help="migration id, or the name of a migrating VM")
    agent_flags(cancel)
    cancel.set_defaults(handler=cancel_migration)


def add_migration_commands(groups: Groups[Parser]) -> None:
    """Register `nova migrations`."""
    listing = groups.add_parser("migrations", help="running and recent migrations of this host")
    agent_flags(listing)
    listing.set_defaults(handler=list_migrations)


# --- nova vm migrate ---------------------------------------------------------------------


def migrate_vm(args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"auto": True} if args.auto else {"to": args.to}
    if args.bandwidth is not None:
        body["bandwidth_mib_s"] = args.bandwidth
    if args.max_downtime is not None:
        body["max_downtime_ms"] = args.max_downtime
    if args.completion_timeout is not None:
        body["completion_timeout_min"] = args.completion_timeout
    if args.post_copy is not None:
        body["post_copy"] = args.post_copy
    answer, code = ask(out, _start, args, out, body)
    if answer is None:
        return code
    migration_id, target = answer["migration_id"], answer["to"]
    if not args.wait:
        line = f"migration {migration_id} of {args.vm} to {target} started"
        out.result({"migration_id": migration_id, "vm": args.vm, "to": target}, [line])
        return EXIT_OK
    return _wait(args, out, migration_id)


def _start(args: argparse.Namespace, out: Output, body: dict[str, Any]) -> Any:
    """Ask the agent to migrate; when the target lacks the VM's template and is fetching
    it from its peers, follow that fetch and ask again once the target holds it."""
    for _ in range(TEMPLATE_ASKS):
        try:
            return client.post(f"/v1/vms/{args.vm}/migrate", body, args.socket)
        except client.AgentRequestFailed as exc:
            awaited = awaited_fetch(exc.details)
            if awaited is None:
                raise
            _await_template(args, out, awaited)
            # That host by name: --auto could now choose another, one that lacks it.
            body = {**{k: v for k, v in body.items() if k != "auto"}, "to": awaited.host}
    return client.post(f"/v1/vms/{args.vm}/migrate", body, args.socket)


def _await_template(args: argparse.Namespace, out: Output, awaited: AwaitedFetch) -> None:
    """Wait until the target's gossiped record lists the template as held whole, with a
    progress line; `AgentRequestFailed` once it has been neither fetching nor holding it
    for a while."""
    host, ref = awaited.host, awaited.ref
    live = not out.json and sys.stderr.isatty()
    watch = FetchWatch(awaited, time.monotonic(), FETCH_QUIET)
    last_line = ""
    while True:
        record = client.get(f"/v1/hosts/{host}", args.socket).get("record") or {}
        now = time.monotonic()
        state = watch.look(record.get("templates", ()), record.get("fetching", ()), now)
        if state is FetchState.HELD:
            break
        if state is FetchState.QUIET:
            raise client.AgentRequestFailed(409, watch.gave_up())
        since = now - watch.started
        waited = since if live else since // LOG_EVERY * LOG_EVERY
        line = f"{host} is fetching template {ref} from its peers ({waited:.0f} s)"
        if not out.json and line != last_line:
            _draw(line, last_line, live)
            last_line = line
        time.sleep(TEMPLATE_LOOK)
    if live and last_line:
        print(file=sys.stderr)
    if not out.json:
        print(f"{host} holds template {ref}: migrating", file=sys.stderr, flush=True)


def _wait(args: argparse.Namespace, out: Output, migration_id: str) -> int:
    """Follow `migration_id` until it ends, drawing progress on stderr."""
    live = not out.json and sys.stderr.isatty()
    last_line = ""
    while True:
        path = f"/v1/migrations/{migration_id}?wait={WAIT_HOLD}"
        answer, code = ask(out, client.get, path, args.socket)
        if answer is None:
            return code
        migration = answer["migration"]
        if migration["outcome"]:
            break
        line = progress_line(migration)
        if line != last_line and not out.json:
            _draw(line, last_line, live)
            last_line = line
    if live:
        print(file=sys.stderr)
    return _ended(out, migration)


def _draw(line: str, previous: str, live: bool) -> None:
    """One progress line on stderr: redrawn in place on a terminal, appended otherwise."""
    if live:
        print("\r" + line.ljust(len(previous)), end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _ended(out: Output, migration: dict[str, Any]) -> int:
    what = f"{migration['vm']} from {migration['source']} to {migration['target']}"
    if migration["outcome"] == "committed":
        limit = migration.get("max_downtime_ms")
        pause = f" (switchover limit {limit} ms)" if limit is not None else ""
        lines = [f"migrated {what} in {migration['elapsed_s']:.1f} s{pause}"]
        if migration.get("escalation"):
            lines.append(f"escalated: {migration['escalation']}")
        out.result({"migration": migration}, lines)
        return EXIT_OK
    reason = migration["reason"] or migration["outcome"]
    out.error(f"migration of {what} {migration['outcome']}: {reason}", {"migration": migration})
    return EXIT_FAILED


def progress_line(migration: dict[str, Any]) -> str:
    """'[ 42.0%] precopy  remaining 31.2 MiB  30.0 MiB/s  dirty 2.1 MiB/s  iteration 3 ...'."""
    stats = migration.get("stats")
    head = f"[{migration['percent']:5.1f}%] {migration['phase']}"
    if not stats:
        return head
    return (
        f"{head} ({stats['phase']})  remaining {stats['data_remaining'] / MIB:.1f} MiB"
        f"  {stats['bandwidth'] / MIB:.1f} MiB/s"
        f"  dirty {stats['dirty_rate'] * PAGE / MIB:.1f} MiB/s"
        f"  iteration {stats['iteration']}"
        f"  expected downtime {stats['expected_downtime_ms']} ms"
    )


# --- nova vm cancel, nova migrations -----------------------------------------------------


def cancel_migration(args: argparse.Namespace, out: Output) -> int:
    listing, code = ask(out, client.get, "/v1/migrations", args.socket)
    if listing is None:
        return code
    migration_id = _resolve(listing["migrations"], args.id)
    answer, code = ask(out, client.post, f"/v1/migrations/{migration_id}/cancel", {}, args.socket)
    if answer is None:
        return code
    out.result(answer, [f"cancelling migration {migration_id}"])
    return EXIT_OK


def _resolve(migrations: list[dict[str, Any]], given: str) -> str:
    """A migration id from an id or the name of a VM with a running outbound migration."""
    if any(m["migration_id"] == given for m in migrations):
        return given
    running = [
        m
        for m in migrations
        if m["vm"] == given and not m["outcome"] and m["direction"] == "outbound"
    ]
    return running[0]["migration_id"] if running else given


def list_migrations(args: argparse.Namespace, out: Output) -> int:
    data, code = ask(out, client.get, "/v1/migrations", args.socket)
    if data is None:
        return code
    rows = [
        (
            m["migration_id"],
            m["vm"],
            m["source"],
            m["target"],
            m["phase"],
            f"{m['percent']:.0f}%",
            m["outcome"] or "running",
            m["reason"] or None,
        )
        for m in data["migrations"]
    ]
    headers = ("id", "vm", "source", "target", "phase", "percent", "outcome", "reason")
    out.result(data, render(headers, rows))
    return EXIT_OK
