"""`nova top`'s screen as lines of text: pure functions of a snapshot, the events, a size.

The same lines serve the live view (cut to the window) and the plain output
for a pipe (no size: nothing cut). Hosts come busiest first, by CPU; when the
window is short, the hosts that do not fit are counted on one line, so
migrations and events keep their place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .table import age
from .top_events import Event
from .top_snapshot import HostRow, MigrationRow, Snapshot

PLAIN_BAR = 20  # bar width when there is no window to fit
MIN_BAR, MAX_BAR = 8, 40
MIN_EVENTS = 3  # event lines kept when the window is short
MAX_MIGRATIONS = 10  # migration rows shown on a window before "+N more"
STATES = ("alive", "suspect", "dead")


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def bar(share: float, width: int) -> str:
    """'[#####.....]' filled to `share` (0..1) of `width` characters inside the brackets."""
    inner = max(1, width - 2)
    filled = round(max(0.0, min(1.0, share)) * inner)
    return "[" + "#" * filled + "." * (inner - filled) + "]"


def screen(
    snapshot: Snapshot | None,
    events: Sequence[Event],
    now: float,
    width: int | None = None,
    height: int | None = None,
    problem: str | None = None,
) -> list[str]:
    """The whole view; with `width`/`height`, fitted to a window of that size."""
    head = _header(snapshot, now, problem)
    if snapshot is None:
        return _fit(head, width, height)
    migrations = _migration_lines(snapshot.in_flight(), width, height)
    told = [f"{clock(e.at)}  {e.text}" for e in events] or ["none seen yet"]
    room = None if height is None else height - len(head) - len(migrations) - 4 - MIN_EVENTS
    hosts = _host_lines(snapshot.hosts, width, room)
    body = [*head, "", *hosts, "", *migrations, "", "RECENT EVENTS", *told]
    return _fit(body, width, height)


def _fit(lines: list[str], width: int | None, height: int | None) -> list[str]:
    cut = lines if height is None else lines[: max(0, height)]
    return cut if width is None else [line[:width] for line in cut]


def _header(snapshot: Snapshot | None, now: float, problem: str | None) -> list[str]:
    if snapshot is None:
        lines = [f"nova top  {clock(now)}"]
    else:
        mesh = sum(snapshot.states.values()) - snapshot.states.get("left", 0)
        counts = ", ".join(f"{snapshot.states.get(s, 0)} {s}" for s in STATES)
        lines = [
            f"nova top  {snapshot.node_id} {snapshot.address}  mesh {mesh}: {counts}  {clock(now)}"
        ]
    if problem is not None:
        since = f"; last answer {clock(snapshot.taken)}" if snapshot is not None else ""
        lines.append(f"agent not answering: {problem} (retrying{since})")
    return lines


def _host_lines(hosts: Sequence[HostRow], width: int | None, room: int | None) -> list[str]:
    """Title, column heads, one line a host (busiest first); `room` lines at most."""
    ordered = sorted(hosts, key=lambda h: (-h.cpu_share, h.node_id))
    name_w = max([4, *(len(_name(h)) for h in ordered)])
    mem_w = max([10, *(len(_memory(h)) for h in ordered)])
    fixed = name_w + 2 + 7 + 2 + 2 + 4 + 2 + 11 + 2 + mem_w + 2 + 3
    bar_w = PLAIN_BAR if width is None else max(MIN_BAR, min(MAX_BAR, width - fixed))
    lines = [
        f"HOSTS ({len(ordered)}), BUSIEST CPU FIRST",
        f"{'HOST':<{name_w}}  {'STATE':<7}  {'CPU':<{bar_w + 6}}  {'CORES':<11}"
        f"  {'MEMORY MiB':<{mem_w}}  VMS",
    ]
    for h in ordered:
        lines.append(
            f"{_name(h):<{name_w}}  {h.state:<7}  {bar(h.cpu_share, bar_w)}"
            f"  {h.cpu_share * 100:3.0f}%  {f'{h.cpu_used:.1f}/{h.cpu_total:g}':<11}"
            f"  {_memory(h):<{mem_w}}  {h.vms:>3}"
        )
    if room is not None and len(lines) > max(room, 3):
        shown = max(room, 3) - 1
        lines = [*lines[:shown], f"... {len(lines) - shown} more hosts (a taller window)"]
    return lines


def _name(h: HostRow) -> str:
    return h.node_id + (" *" if h.is_self else "") + (" (draining)" if h.draining else "")


def _memory(h: HostRow) -> str:
    return f"{h.memory_used_mib}/{h.memory_total_mib}"


def _migration_lines(
    running: Sequence[MigrationRow], width: int | None, height: int | None
) -> list[str]:
    title = f"MIGRATIONS IN FLIGHT ({len(running)})"
    if not running:
        return [title, "none"]
    route_w = max(len(_route(m)) for m in running)
    vm_w = max([2, *(len(m.vm) for m in running)])
    fixed = vm_w + 2 + route_w + 2 + 2 + 6 + 2 + 10 + 2 + 7
    bar_w = PLAIN_BAR if width is None else max(MIN_BAR, min(MAX_BAR, width - fixed))
    lines = [title]
    for m in running:
        lines.append(
            f"{m.vm:<{vm_w}}  {_route(m):<{route_w}}  {bar(m.percent / 100, bar_w)}"
            f"  {m.percent:5.1f}%  {m.phase:<10}  {age(m.elapsed_s):>7}"
        )
    if height is not None and len(running) > MAX_MIGRATIONS:
        lines = [*lines[: MAX_MIGRATIONS + 1], f"... {len(running) - MAX_MIGRATIONS} more"]
    return lines


def _route(m: MigrationRow) -> str:
    return f"{m.source} -> {m.target}"
