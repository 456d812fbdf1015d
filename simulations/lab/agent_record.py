"""agent.json: which process is a lab host's `nova-agent`, and how to start it again.

Agents outlive the command that started them (`lab up --agents`), so the
lab's own commands (`lab agent stop h2`, `lab status`) find them through this
file in the host's agent directory. A recorded PID is trusted only while the
process it names still runs that same command line inside that host's network
namespace: after a crash the number may belong to an unrelated process.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from novacron.simulations.lab import netns, processes

RECORD = "agent.json"


@dataclass(frozen=True)
class AgentRecord:
    argv: list[str]  # the agent's command line, as started (a restart reuses it)
    pid: int | None  # its process while it runs; None once stopped


def save(host_dir: Path, record: AgentRecord) -> None:
    """Atomically replace `host_dir`/agent.json."""
    tmp = host_dir / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"argv": record.argv, "pid": record.pid}) + "\n")
    os.replace(tmp, host_dir / RECORD)


def load(host_dir: Path) -> AgentRecord | None:
    """The record, or None when there is none (no agent was ever started there)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads((host_dir / RECORD).read_text())
        pid = data["pid"]
        return AgentRecord([str(arg) for arg in data["argv"]], int(pid) if pid else None)
    return None


def running_pid(host_dir: Path, host_netns: str) -> int | None:
    """The recorded agent's PID if that very agent still runs in the host, else None."""
    record = load(host_dir)
    if record is None or record.pid is None or not processes.is_running(record.pid):
        return None
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return None
    # A console script runs under its interpreter: the command line ends with the argv.
    if [arg.decode(errors="replace") for arg in cmdline[-len(record.argv) :]] != record.argv:
        return None
    return record.pid if record.pid in netns.netns_pids(host_netns) else None
