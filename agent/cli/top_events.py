"""`nova top`'s recent events: what changed between two snapshots, newest first.

The agent keeps no event log for the CLI, so `nova top` tells the story from
what it sees change: a member's state, a host starting or ending a drain, a
migration starting and ending (with its outcome), a rebalancing move. A
migration carries its own wall-clock times, so its events are dated when they
happened, not when they were noticed; the rest are dated by the snapshot that
showed them. Pure functions of snapshots: tested without an agent or a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .top_snapshot import MigrationRow, Snapshot

KEEP = 50  # events remembered; the screen shows what fits


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # wall clock
    text: str


def changes(before: Snapshot | None, after: Snapshot) -> list[Event]:
    """What `after` shows that `before` did not, newest first.

    With no `before` (the first look), the migrations and moves `after`
    already lists are told with their own times: what happened recently.
    """
    found = _migration_events(before, after) + _move_events(before, after)
    if before is not None:
        found += _host_events(before, after)
    return sorted(found, key=lambda e: e.at, reverse=True)


def remember(log: Sequence[Event], new: Sequence[Event], keep: int = KEEP) -> list[Event]:
    """`new` merged into `log`, newest first, at most `keep`."""
    return sorted([*new, *log], key=lambda e: e.at, reverse=True)[:keep]


def _host_events(before: Snapshot, after: Snapshot) -> list[Event]:
    old = {h.node_id: h for h in before.hosts}
    now = {h.node_id: h for h in after.hosts}
    found = []
    for node, host in now.items():
        was = old.get(node)
        if was is None:
            found.append(f"{node} joined ({host.state})")
            continue
        if was.state != host.state:
            found.append(f"{node} {was.state} -> {host.state}")
        if was.draining != host.draining:
            found.append(f"{node} {'draining' if host.draining else 'no longer draining'}")
    found += [f"{node} left this agent's view" for node in old.keys() - now.keys()]
    return [Event(after.taken, text) for text in found]


def _migration_events(before: Snapshot | None, after: Snapshot) -> list[Event]:
    old = {m.migration_id: m for m in before.migrations} if before is not None else {}
    found = []
    for m in after.migrations:
        was = old.get(m.migration_id)
        if was is None:
            found.append(Event(m.started or after.taken, _started(m)))
        if m.outcome and (was is None or not was.outcome):
            found.append(Event(m.ended or after.taken, _ended(m)))
    return found


def _move_events(before: Snapshot | None, after: Snapshot) -> list[Event]:
    seen = {m.migration_id for m in before.moves} if before is not None else set()
    return [
        Event(m.at, f"rebalance: move {m.vm} to {m.target}: {m.reason}")
        for m in after.moves
        if m.migration_id not in seen
    ]


def _started(m: MigrationRow) -> str:
    why = f" ({m.purpose})" if m.purpose else ""
    return f"migration of {m.vm} {m.source} -> {m.target} started{why}"


def _ended(m: MigrationRow) -> str:
    text = f"migration of {m.vm} {m.source} -> {m.target} {m.outcome} after {m.elapsed_s:.1f} s"
    return f"{text}: {m.reason}" if m.reason else text
