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


async def site_targets(store: Store, request: Request) -> list[SiteTarget]:
    """Every enrolled site as a target for `request`."""
    grouped = (
        await store.groups(ANTI_AFFINITY_LABEL, request.anti_affinity)
        if request.anti_affinity
        else set()
    )
    return [
        SiteTarget(
            site["name"],
            {**site["labels"], "site": site["name"]},
            site["connected"],
            float(site["cost"]),
            room,
            frozenset({request.anti_affinity}) if site["name"] in grouped else frozenset(),
        )
        for site, room in await store.placement_sites(OVERCOMMIT)
    ]
