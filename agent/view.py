"""The agent's state as the local API shows it: typed snapshots, JSON only at the API.

Reads the membership core and the records it holds; never changes anything.
Each answer is a frozen value (`MeshStatus`, `MemberRow`, `HostView`, `VmRow`,
`Conflict`) that says its own JSON shape (`to_json`), which `api` sends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from novacron.protocol.messages import MemberState, NodeRecord

from .claims import ClaimVerdict
from .core.membership.node import MembershipNode
from .core.placement.targets import libvirt_down
from .daemon_status import DaemonStatus


@dataclass(frozen=True, slots=True)
class MeshStatus:
    """This agent in the mesh (`nova status`): who it is, how many members it sees in each
    state, its gossip, and the daemon's own facts."""

    node_id: str
    address: str
    incarnation: int
    awareness: int  # Lifeguard's local health score (0: healthy)
    members: Mapping[str, int]  # member state -> how many, every state listed
    record_version: int  # this host's own record's
    records: int  # records held, this host's included
    gossip_queued: int  # broadcasts waiting for their retransmit budget
    stats: Mapping[str, int]  # the membership core's counters, as they were then
    daemon: DaemonStatus  # the daemon's facts (uptime, libvirt, identity, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "incarnation": self.incarnation,
            "awareness": self.awareness,
            "members": dict(self.members),
            "record_version": self.record_version,
            "records": self.records,
            "gossip_queued": self.gossip_queued,
            "stats": dict(self.stats),
            **self.daemon.to_json(),
        }


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as `nova members` lists it."""

    node_id: str
    address: str
    state: MemberState
    incarnation: int
    load: float | None  # its record's 1-minute load average (None: no record yet)
    last_heard_s: float | None  # seconds since it was last heard (None: this host)
    state_for_s: float  # seconds in its state
    is_self: bool  # this host
    note: str | None  # what is wrong with it (revoked, one id in two places), if anything

    def to_json(self) -> dict[str, Any]:
        # Ages rounded here, not when measured: the numbers stay exact inside the agent.
        heard = self.last_heard_s
        return {
            "node_id": self.node_id,
            "address": self.address,
            "state": self.state.value,
            "incarnation": self.incarnation,
            "load": self.load,
            "last_heard_s": round(heard, 3) if heard is not None else None,
            "state_for_s": round(self.state_for_s, 3),
            "self": self.is_self,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as this agent knows it: as a member, by its record, or both."""

    node_id: str
    state: MemberState | None  # None: not a member this agent knows
    incarnation: int | None
    address: str | None
    record: NodeRecord | None  # None: no record of it yet

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "node_id": self.node_id,
            "state": self.state.value if self.state is not None else None,
            "incarnation": self.incarnation,
            "address": self.address,
            "record": _record_dict(record) if record is not None else None,
        }


@dataclass(frozen=True, slots=True)
class VmRow:
    """One VM where a host's record puts it (`nova vm list`)."""

    name: str
    uuid: str
    state: str  # as the host's libvirt last said: running, paused, shutoff, ...
    host: str
    host_state: str  # the host's member state, or "unknown"
    vcpus: int
    memory_mib: int
    cpu_load: float  # cores in use
    libvirt_unreachable_since: str | None  # ISO 8601 UTC: the list is the host's last known one

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "state": self.state,
            "host": self.host,
            "host_state": self.host_state,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "cpu_load": self.cpu_load,
            "libvirt_unreachable_since": self.libvirt_unreachable_since,
        }


@dataclass(frozen=True, slots=True)
class Conflict:
    """A host's claim on a VM that the host's own libvirt denies: reported, not believed."""

    vm: VmRow  # the claim, as the claimant's record makes it
    why: str  # what its libvirt said
    runs_on: tuple[str, ...]  # where libvirt says the VM runs

    def to_json(self) -> dict[str, Any]:
        return {**self.vm.to_json(), "why": self.why, "runs_on": list(self.runs_on)}


class MeshView:
    """Implements `api.AgentView` over a `MembershipNode`."""

    def __init__(
        self,
        core: Callable[[], MembershipNode],
        clock: Callable[[], float],
        extra_status: Callable[[], DaemonStatus],
        claims: Callable[[], Mapping[str, ClaimVerdict]] = dict,
        notes: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self._core = core  # the live node (replaced on restart of the core)
        self._clock = clock  # the core's clock, to turn times into ages
        self._extra_status = extra_status  # daemon-level facts (uptime, libvirt, ...)
        self._claims = claims  # verdicts on VMs several records claim (libvirt's word)
        self._notes = notes  # node id -> what is wrong with it (revoked, one id in two places)

    def status(self) -> MeshStatus:
        core = self._core()
        counts = {state.value: 0 for state in MemberState}
        for member in core.members():
            counts[member.state.value] += 1
        return MeshStatus(
            core.node_id,
            core.address,
            core.incarnation,
            core.awareness,
            counts,
            core.record_version(core.node_id),
            len(core.records()),
            core.pending_gossip(),
            core.stats.as_dict(),
            self._extra_status(),
        )

    def members(self) -> list[MemberRow]:
        core = self._core()
        now = self._clock()
        records = core.records()
        notes = self._notes()
        rows = []
        for member in sorted(core.members(), key=lambda m: m.node_id):
            record = records.get(member.node_id)
            is_self = member.node_id == core.node_id
            rows.append(
                MemberRow(
                    member.node_id,
                    member.address,
                    member.state,
                    member.incarnation,
                    record.load if record is not None else None,
                    None if is_self else max(0.0, now - member.last_heard),
                    max(0.0, now - member.state_since),
                    is_self,
                    notes.get(member.node_id),
                )
            )
        return rows

    def host(self, node_id: str | None) -> HostView | None:
        core = self._core()
        node_id = node_id or core.node_id
        member = core.member(node_id)
        record = core.records().get(node_id)
        if member is None and record is None:
            return None
        if member is None:
            return HostView(node_id, None, None, None, record)
        return HostView(node_id, member.state, member.incarnation, member.address, record)

    def vms(self) -> list[VmRow]:
        """Every VM where the records put it, but for claims libvirt denied (`conflicts`)."""
        return [row for row in self._all_vms() if not self._denied(row)]

    def conflicts(self) -> list[Conflict]:
        """Claims on VMs that the claimant's own libvirt denies: reported, not believed."""
        rows = []
        for row in self._all_vms():
            why = self._denied(row)
            if why:
                runs_on = tuple(self._claims()[row.name].runs_on)
                rows.append(Conflict(row, why, runs_on))
        return rows

    def _denied(self, row: VmRow) -> str | None:
        verdict = self._claims().get(row.name)
        return verdict.denied.get(row.host) if verdict is not None else None

    def _all_vms(self) -> list[VmRow]:
        core = self._core()
        rows = []
        for host_id, record in sorted(core.records().items()):
            member = core.member(host_id)
            host_state = member.state.value if member is not None else "unknown"
            since = libvirt_down(record)  # the host's list is its last known one
            for vm in record.vms:
                rows.append(
                    VmRow(
                        vm.name,
                        vm.uuid,
                        vm.state,
                        host_id,
                        host_state,
                        vm.vcpus,
                        vm.memory_mib,
                        vm.cpu_load,
                        since,
                    )
                )
        return sorted(rows, key=lambda row: (row.name, row.host))


def _record_dict(record: NodeRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["addresses"] = list(record.addresses)
    return data
