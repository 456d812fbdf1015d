"""`down`: remove everything a lab made, from its record and from its names.

Works the same whether the lab object is alive, the `up` process crashed
half-way, or state.json is gone: the namespaces to remove are those recorded
plus those whose names match the lab's pattern, and the processes to end are
those inside them plus any still carrying the lab's environment marker.
Order matters: processes first (a namespace with a live process survives
`ip netns delete` invisibly), then namespaces (veths die with them), then the
state directory.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from novacron.simulations.lab import netns, processes
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.naming import owns_netns
from novacron.simulations.lab.state import LabRecord, lab_dir, load

Progress = Callable[[str], None]


@dataclass
class TeardownReport:
    """What `down` removed, for the CLI's output and for tests."""

    lab: str
    namespaces: list[str] = field(default_factory=list)  # deleted
    killed: list[int] = field(default_factory=list)  # PIDs ended
    state_dir_removed: bool = False


def lab_namespaces(lab: str, record: LabRecord | None) -> list[str]:
    """Recorded namespaces plus any matching the lab's names; hosts before switch."""
    found = set(record.namespaces if record else [])
    found.update(ns for ns in netns.list_netns() if owns_netns(lab, ns))
    return sorted(found, key=lambda ns: (ns.endswith("-sw"), ns))


def lab_pids(lab: str, namespaces: list[str]) -> set[int]:
    """Every running process that belongs to the lab (see module docstring)."""
    pids = set(processes.marked_pids(lab))
    for ns in namespaces:
        pids.update(netns.netns_pids(ns))
    return {pid for pid in pids if processes.is_running(pid)}


def end_processes(lab: str, namespaces: list[str], progress: Progress) -> list[int]:
    """Terminate the lab's processes, repeating while new ones appear (forks)."""
    killed: list[int] = []
    for _ in range(5):
        pids = lab_pids(lab, namespaces)
        if not pids:
            return killed
        noun = "process" if len(pids) == 1 else "processes"
        progress(f"stopping {len(pids)} {noun} ({_names(pids)})")
        survivors = processes.terminate(pids)
        killed.extend(sorted(pids - set(survivors)))
    left = lab_pids(lab, namespaces)
    if left:
        raise LabError(f"lab {lab!r}: processes {sorted(left)} survive SIGKILL")
    return killed


def _names(pids: set[int]) -> str:
    """`3 libvirtd, 3 virtlogd, ...`: what is being stopped, for the progress line."""
    names = Counter(processes.name(pid) for pid in pids)
    return ", ".join(f"{count} {name}" for name, count in sorted(names.items()))


def tear_down(lab: str, state_root: Path, progress: Progress | None = None) -> TeardownReport:
    """Remove lab `lab` entirely; safe to call repeatedly and after crashes."""
    say: Progress = progress or (lambda _msg: None)
    directory = lab_dir(state_root, lab)
    record = load(directory)
    report = TeardownReport(lab)
    namespaces = lab_namespaces(lab, record)
    report.killed = end_processes(lab, namespaces, say)
    for ns in namespaces:
        if netns.netns_exists(ns):
            say(f"deleting namespace {ns}")
            netns.delete_netns(ns)
            report.namespaces.append(ns)
    if directory.exists():
        shutil.rmtree(directory)
        report.state_dir_removed = True
    return report
