"""The one place the simulator touches the agent's rebalancing planner and placement rule.

Everything the mesh strategy calls from `novacron.agent.core` goes through
here, so a change of the planner's signature is a one-place fix.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.cost import expected_migration_seconds
from novacron.agent.core.migration.policy import MigrationLimits, MigrationPolicy
from novacron.agent.core.migration.reservations import Demand
from novacron.agent.core.placement.targets import Placement, choose_group_target
from novacron.agent.core.rebalancing import planner as rebalance
from novacron.protocol.messages import MemberState, NodeRecord

ANTI_AFFINITY_LABEL = rebalance.ANTI_AFFINITY_LABEL
RebalanceConfig = rebalance.RebalanceConfig
Move = rebalance.Move
Decision = rebalance.Decision
utilization = rebalance.utilization

__all__ = [
    "ANTI_AFFINITY_LABEL",
    "Decision",
    "Move",
    "Overlay",
    "PlanCall",
    "RebalanceConfig",
    "migration_seconds",
    "over_line",
    "place",
    "plan",
    "plan_round",
    "shedding_line",
    "utilization",
]

_POLICY = MigrationPolicy()


@dataclass(frozen=True, slots=True)
class PlanCall:
    """What one host hands the planner (kept for the decision log)."""

    node_id: str
    now: float


plan = rebalance.plan  # the agent's planner, unchanged
plan_round = rebalance.plan_round  # every move a host's free slots allow, unchanged
shedding_line = rebalance.shedding_line  # how far above the mean a host may stay
over_line = rebalance.over_line  # whether a new record of its own makes the agent plan at once


def migration_seconds(memory_mib: float, bandwidth_mib_s: float, dirty_rate_mib_s: float) -> float:
    """How long the migration takes under the default policy (inf: it would be aborted)."""
    return expected_migration_seconds(memory_mib, bandwidth_mib_s, dirty_rate_mib_s, _POLICY)


def place(
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    source: str,
    vcpus: int,
    memory_mib: int,
    limits: MigrationLimits,
    overcommit: float,
    anti_affinity: str = "",
    closed: Collection[str] = (),
) -> Placement:
    """The drain's target (`placement.choose_target`, least utilized that fits), or why none."""
    demand = Demand(vcpus, memory_mib, anti_affinity=anti_affinity)
    return place_group(records, alive, source, (demand,), limits, overcommit, closed)


def place_group(
    records: Mapping[str, NodeRecord],
    alive: Collection[str],
    source: str,
    demands: Sequence[Demand],
    limits: MigrationLimits,
    overcommit: float,
    closed: Collection[str] = (),
    sending: Mapping[str, float] | None = None,
) -> Placement:
    """The drain's one target for VMs that go together (`placement.choose_group_target`)."""

    def member(node_id: str) -> MemberInfo | None:
        if node_id not in alive:
            return None
        return MemberInfo(node_id, "", 1, MemberState.ALIVE, 0.0, 0.0)

    return choose_group_target(
        records, member, source, demands, limits, overcommit, closed, sending
    )


class Overlay(Mapping[str, NodeRecord]):
    """A gossiped view with this host's own, current record laid over its stale copy."""

    __slots__ = ("_base", "_key", "_own")

    def __init__(self, base: Mapping[str, NodeRecord], key: str, own: NodeRecord) -> None:
        self._base = base
        self._key = key
        self._own = own

    def __getitem__(self, key: str) -> NodeRecord:
        if key == self._key:
            return self._own
        return self._base[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        if self._key not in self._base:
            yield self._key

    def __len__(self) -> int:
        return len(self._base) + (0 if self._key in self._base else 1)
