"""What `nova top` shows, read from the local agent at one moment: hosts, migrations, moves.

The agent has no single "everything" route, so a snapshot is a few GETs over
the unix socket: status, members, each member's record, this host's
migrations and its rebalancer's recent moves. The parsing into small typed
rows is separate from the asking, so rendering and event tests build rows
directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from novacron.agent import client


@dataclass(frozen=True, slots=True)
class HostRow:
    """One member of the mesh as its gossiped record describes it."""

    node_id: str
    state: str  # alive, suspect, dead, left
    is_self: bool  # the host whose agent answered
    cpu_used: float  # cores busy
    cpu_total: float  # cores
    memory_used_mib: int
    memory_total_mib: int
    vms: int  # VMs its record lists
    draining: bool

    @property
    def cpu_share(self) -> float:
        """CPU utilization, 0..1 (0 when the record is unknown)."""
        return min(1.0, self.cpu_used / self.cpu_total) if self.cpu_total > 0 else 0.0


@dataclass(frozen=True, slots=True)
class MigrationRow:
    """A migration this host sends or receives, running or recently ended."""

    migration_id: str
    vm: str
    source: str
    target: str
    direction: str  # outbound, inbound
    phase: str
    percent: float  # 0..100
    outcome: str  # "" while running
    reason: str
    elapsed_s: float
    purpose: str  # manual, drain, rebalance ("" if not said)
    started: float | None  # wall clock, the source's
    ended: float | None  # wall clock, the source's; None while running

    @property
    def running(self) -> bool:
        return not self.outcome


@dataclass(frozen=True, slots=True)
class MoveRow:
    """A move this host's rebalancer decided."""

    migration_id: str
    vm: str
    target: str
    reason: str
    at: float  # wall clock of the decision


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The mesh as the local agent saw it at `taken`."""

    taken: float  # wall clock, this machine's
    node_id: str
    address: str
    states: dict[str, int]  # members by state (alive, suspect, dead, left)
    hosts: tuple[HostRow, ...]
    migrations: tuple[MigrationRow, ...]
    moves: tuple[MoveRow, ...]

    def in_flight(self) -> list[MigrationRow]:
        return [m for m in self.migrations if m.running]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fetch(socket_file: str | None, now: float, timeout: float = 5.0) -> Snapshot:
    """Ask the agent; `client.AgentUnavailable` or `AgentRequestFailed` when it cannot answer."""
    status = client.get("/v1/status", socket_file, timeout)
    members = client.get("/v1/members", socket_file, timeout)["members"]
    records = {m["node_id"]: _record(m["node_id"], socket_file, timeout) for m in members}
    migrations = client.get("/v1/migrations", socket_file, timeout)["migrations"]
    return Snapshot(
        taken=now,
        node_id=status["node_id"],
        address=status["address"],
        states={str(k): int(v) for k, v in status["members"].items()},
        hosts=tuple(host_row(m, records[m["node_id"]]) for m in members),
        migrations=tuple(migration_row(m) for m in migrations),
        moves=tuple(_moves(socket_file, timeout)),
    )


def _record(node_id: str, socket_file: str | None, timeout: float) -> dict[str, Any]:
    """A member's record ({} when the agent has none for it yet)."""
    try:
        host = client.get(f"/v1/hosts/{node_id}", socket_file, timeout)
    except client.AgentRequestFailed as exc:
        if exc.status == 404:  # a member whose record has not arrived
            return {}
        raise
    return host.get("record") or {}


def _moves(socket_file: str | None, timeout: float) -> list[MoveRow]:
    """The rebalancer's recent moves (none when this agent runs no rebalancer)."""
    try:
        status = client.get("/v1/rebalance", socket_file, timeout)
    except client.AgentRequestFailed as exc:
        if exc.status == 404:
            return []
        raise
    return [
        MoveRow(m["migration_id"], m["vm"], m["target"], m["reason"], float(m["wall_time"]))
        for m in status["moves"]
    ]


def host_row(member: dict[str, Any], record: dict[str, Any]) -> HostRow:
    capacity, usage = record.get("capacity", {}), record.get("usage", {})
    return HostRow(
        node_id=member["node_id"],
        state=member["state"],
        is_self=bool(member["self"]),
        cpu_used=float(usage.get("vcpus", 0.0)),
        cpu_total=float(capacity.get("vcpus", 0.0)),
        memory_used_mib=int(usage.get("memory_mib", 0)),
        memory_total_mib=int(capacity.get("memory_mib", 0)),
        vms=len(record.get("vms", [])),
        draining=bool(record.get("draining", False)),
    )


def migration_row(m: dict[str, Any]) -> MigrationRow:
    return MigrationRow(
        migration_id=m["migration_id"],
        vm=m["vm"],
        source=m["source"],
        target=m["target"],
        direction=m["direction"],
        phase=m["phase"],
        percent=float(m["percent"]),
        outcome=m["outcome"] or "",
        reason=m["reason"] or "",
        elapsed_s=float(m["elapsed_s"]),
        purpose=m.get("purpose") or "",
        started=_wall(m.get("started")),
        ended=_wall(m.get("ended")),
    )


def _wall(stamp: str | None) -> float | None:
    """The API's ISO 8601 time as seconds since the epoch (None stays None)."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else None
