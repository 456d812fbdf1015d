"""What is running: each lab's hosts, whether they live, their links, libvirtd and agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from novacron.simulations.lab import agent_record, netns, processes
from novacron.simulations.lab.naming import libvirt_uri
from novacron.simulations.lab.state import HostRecord, LabRecord, lab_dir, list_labs, load


def _daemon_running(init_pid: int, pidfile: str) -> bool:
    """Whether the daemon whose pid file sits in the host's private /run is alive."""
    try:
        pid = int(Path(f"/proc/{init_pid}/root/run/{pidfile}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return processes.is_running(pid)


def host_status(record: LabRecord, host: HostRecord, directory: Path) -> dict[str, Any]:
    """One host's status as plain data (the `status --json` host object)."""
    pid = host.init_pid
    alive = pid is not None and processes.is_running(pid) and pid in netns.netns_pids(host.netns)
    status: dict[str, Any] = {
        "name": host.name,
        "address": host.address,
        "netns": host.netns,
        "init_pid": pid,
        "running": alive,
        "link": netns.port_state(record.switch_netns, host.switch_port),
        "host_uuid": host.host_uuid,
    }
    if record.libvirt:
        status["libvirt_uri"] = libvirt_uri(host.address)
        status["libvirtd"] = alive and pid is not None and _daemon_running(pid, "libvirtd.pid")
    agent_dir = directory / "agents" / host.name
    if agent_record.load(agent_dir) is not None:  # the lab runs agents
        status["agent_pid"] = agent_record.running_pid(agent_dir, host.netns) if alive else None
        status["agent_log"] = str(agent_dir / "agent.log")
    return status


def lab_status(state_root: Path, name: str) -> dict[str, Any]:
    """One lab's status; `phase` is "unreadable" when state.json is missing or bad."""
    directory = lab_dir(state_root, name)
    record = load(directory)
    if record is None:
        return {"name": name, "state_dir": str(directory), "phase": "unreadable", "hosts": []}
    return {
        "name": name,
        "state_dir": str(directory),
        "phase": record.phase,
        "libvirt": record.libvirt,
        "switch_netns": record.switch_netns,
        "creator_pid": record.creator_pid,
        "hosts": [host_status(record, h, directory) for h in record.hosts],
    }


def all_status(state_root: Path, only: str | None = None) -> list[dict[str, Any]]:
    """Status of every lab under `state_root` (or just `only`)."""
    names = list_labs(state_root)
    return [lab_status(state_root, n) for n in names if only is None or n == only]


def format_status(labs: list[dict[str, Any]]) -> str:
    """Human-readable table of `all_status` output."""
    if not labs:
        return "no labs"
    lines = []
    for lab in labs:
        lines.append(f"lab {lab['name']} ({lab['phase']}, {lab['state_dir']})")
        for h in lab["hosts"]:
            state = "running" if h["running"] else "STOPPED"
            extra = f"  libvirtd {'up' if h.get('libvirtd') else 'DOWN'}" if "libvirtd" in h else ""
            if "agent_pid" in h:
                extra += f"  agent {'pid ' + str(h['agent_pid']) if h['agent_pid'] else 'STOPPED'}"
            lines.append(
                f"  {h['name']:<4} {h['address']:<15} {state:<8} link {h['link']:<7}"
                f" init pid {h['init_pid']}{extra}"
            )
    return "\n".join(lines)
