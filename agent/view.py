"""The agent's state as the local API shows it: plain JSON-ready dictionaries.

Reads the membership core and the records it holds; never changes anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from novacron.protocol.messages import MemberState, NodeRecord

from .claims import ClaimVerdict
from .core.membership.node import MembershipNode
from .core.placement.targets import libvirt_down


class MeshView:
    """Implements `api.AgentView` over a `MembershipNode`."""

    def __init__(
        self,
        core: Callable[[], MembershipNode],
        clock: Callable[[], float],
        extra_status: Callable[[], dict[str, Any]],
        claims: Callable[[], Mapping[str, ClaimVerdict]] = dict,
        notes: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self._core = core  # the live node (replaced on restart of the core)
        self._clock = clock  # the core's clock, to turn times into ages
        self._extra_status = extra_status  # daemon-level facts (uptime, libvirt, ...)
        self._claims = claims  # verdicts on VMs several records claim (libvirt's word)
        self._notes = notes  # node id -> what is wrong with it (revoked, one id in two places)

    def status(self) -> dict[str, Any]:
        core = self._core()
        counts = {state.value: 0 for state in MemberState}
        for member in core.members():
            counts[member.state.value] += 1
        return {
            "node_id": core.node_id,
            "address": core.address,
            "incarnation": core.incarnation,
            "awareness": core.awareness,
            "members": counts,
            "record_version": core.record_version(core.node_id),
            "records": len(core.records()),
            "gossip_queued": core.pending_gossip(),
            "stats": core.stats.as_dict(),
            **self._extra_status(),
        }

    def members(self) -> list[dict[str, Any]]:
        core = self._core()
        now = self._clock()
        records = core.records()
        notes = self._notes()
        rows = []
        for member in sorted(core.members(), key=lambda m: m.node_id):
            record = records.get(member.node_id)
            rows.append(
                {
                    "node_id": member.node_id,
                    "address": member.address,
                    "state": member.state.value,
                    "incarnation": member.incarnation,
                    "load": record.load if record is not None else None,
                    "last_heard_s": None
                    if member.node_id == core.node_id
                    else _age(now, member.last_heard),
                    "state_for_s": round(max(0.0, now - member.state_since), 3),
                    "self": member.node_id == core.node_id,
                    "note": notes.get(member.node_id),
                }
            )
        return rows

    def host(self, node_id: str | None) -> dict[str, Any] | None:
        core = self._core()
        node_id = node_id or core.node_id
        member = core.member(node_id)
        record = core.records().get(node_id)
        if member is None and record is None:
            return None
        return {
            "node_id": node_id,
            "state": member.state.value if member is not None else None,
            "incarnation": member.incarnation if member is not None else None,
            "address": member.address if member is not None else None,
            "record": _record_dict(record) if record is not None else None,
        }

    def vms(self) -> list[dict[str, Any]]:
        """Every VM where the records put it, but for claims libvirt denied (`conflicts`)."""
        return [row for row in self._all_vms() if not self._denied(row)]

    def conflicts(self) -> list[dict[str, Any]]:
        """Claims on VMs that the claimant's own libvirt denies: reported, not believed."""
        rows = []
        for row in self._all_vms():
            why = self._denied(row)
            if why:
                runs_on = list(self._claims()[row["name"]].runs_on)
                rows.append({**row, "why": why, "runs_on": runs_on})
        return rows

    def _denied(self, row: dict[str, Any]) -> str | None:
        verdict = self._claims().get(row["name"])
        return verdict.denied.get(row["host"]) if verdict is not None else None

    def _all_vms(self) -> list[dict[str, Any]]:
        core = self._core()
        rows = []
        for host_id, record in sorted(core.records().items()):
            member = core.member(host_id)
            host_state = member.state.value if member is not None else "unknown"
            since = libvirt_down(record)  # the host's list is its last known one
            for vm in record.vms:
                rows.append(
                    {
                        "name": vm.name,
                        "uuid": vm.uuid,
                        "state": vm.state,
                        "host": host_id,
                        "host_state": host_state,
                        "vcpus": vm.vcpus,
                        "memory_mib": vm.memory_mib,
                        "cpu_load": vm.cpu_load,
                        "libvirt_unreachable_since": since,
                    }
                )
        return sorted(rows, key=lambda row: (row["name"], row["host"]))


def _age(now: float, then: float) -> float:
    return round(max(0.0, now - then), 3)


def _record_dict(record: NodeRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["addresses"] = list(record.addresses)
    return data
