"""Sites as placement targets: the store's rows seen through `placement.Target`.

A site's room is that of its roomiest host that takes new VMs (alive, not
draining): memory is the host's capacity less the memory of the VMs it runs,
vCPUs its cores times `OVERCOMMIT` less the VMs' vCPUs, as the agents count
them. Its labels are the site's own (set with `PATCH /v1/sites/{site}`), with
`site` added, so `site=lyon` is a constraint like `region=eu-west`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from novacron.agent.core.placement.targets import ANTI_AFFINITY_LABEL

from .placement import Request
from .store import Store

OVERCOMMIT = 4.0  # vCPUs per core the agents allow (MigrationConfig's default)


@dataclass(frozen=True)
class SiteTarget:
    name: str
    labels: Mapping[str, str]
    reachable: bool
    cost: float
    free: tuple[float, int]
    runs_groups: frozenset[str] = field(default_factory=frozenset)
    kind: str = "site"

    def room(self) -> tuple[float, int]:
        return self.free

    def groups(self) -> frozenset[str]:
        return self.runs_groups


def host_room(host: Mapping[str, Any]) -> tuple[float, int]:
    """(vCPUs, MiB) free for a new VM on a host that takes new VMs (`host_capacities`)."""
    vcpus = float(host["vcpus"]) * OVERCOMMIT - int(host["vm_vcpus"])
    memory = int(host["memory_mib"]) - int(host["vm_memory_mib"])
    return max(vcpus, 0.0), max(memory, 0)


async def site_targets(store: Store, request: Request) -> list[SiteTarget]:
    """Every enrolled site as a target for `request`."""
    grouped = (
        await store.groups(ANTI_AFFINITY_LABEL, request.anti_affinity)
        if request.anti_affinity
        else set()
    )
    rooms: dict[str, tuple[float, int]] = {}
    for host in await store.host_capacities():
        vcpus, memory = host_room(host)
        best = rooms.get(host["site"], (0.0, 0))
        if (memory, vcpus) > (best[1], best[0]):
            rooms[host["site"]] = (vcpus, memory)
    targets = []
    for site in await store.sites():
        if site["state"] != "enrolled":
            continue
        targets.append(
            SiteTarget(
                site["name"],
                {**site["labels"], "site": site["name"]},
                site["connected"],
                float(site["cost"]),
                rooms.get(site["name"], (0.0, 0)),
                frozenset({request.anti_affinity}) if site["name"] in grouped else frozenset(),
            )
        )
    return targets
