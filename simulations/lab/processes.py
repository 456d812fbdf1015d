"""Finding and ending a lab's processes without touching anyone else's.

A process counts as the lab's when it lives in one of the lab's network
namespaces (what `ip netns pids` reports), or carries the lab's marker in its
environment (`NCLAB_LAB=<name>`, set on every host init). PIDs remembered in
state.json are never killed on their own say-so: after a crash they may have
been reused by an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

MARKER_VAR = "NCLAB_LAB"
"""Environment variable naming the lab a process belongs to."""


def is_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a zombie has already exited).

    Zombies count as gone because orphans are reaped by PID 1 on its own
    schedule; they hold no namespace, socket or file.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def name(pid: int) -> str:
    """The process's command name (`libvirtd`), or "?" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def marked_pids(lab: str) -> list[int]:
    """PIDs whose environment carries `NCLAB_LAB=<lab>` (kernel threads excluded)."""
    marker = f"{MARKER_VAR}={lab}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send `sig` to each pid, ignoring those already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` runs; return the ones still running at timeout."""
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while True:
        for pid in remaining:
            reap(pid)
        remaining = [pid for pid in remaining if is_running(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


def terminate(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return survivors."""
    pids = sorted(set(pids))
    signal_all(pids, signal.SIGTERM)
    left = wait_gone(pids, grace)
    if left:
        signal_all(left, signal.SIGKILL)
        left = wait_gone(left, 2.0)
    return left
