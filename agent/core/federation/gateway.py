"""Which agent of a site holds the link to the coordinator: the gateway, sans-IO.

Every agent configured with coordinator URLs says so in its record (its
`gateway_candidate` field); the gateway is the candidate with the lowest node id among
members that are alive or suspect. Each agent computes this from its own
gossiped view, so all agents that share a view agree, and no election
messages are needed. A suspect candidate keeps the role until the mesh
declares it dead: a gateway that stalls for a moment does not hand the link
over and back, and when it really fails another candidate takes over once
the suspicion times out. A site whose views disagree for a moment may hold
two links; the coordinator keeps the newest (it replaces an older
connection of the same site), so nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from novacron.protocol.messages import MemberState, NodeRecord

from ..membership.members import MemberInfo

HOLDING = (MemberState.ALIVE, MemberState.SUSPECT)  # states in which a candidate keeps the role


def is_candidate(record: NodeRecord | None) -> bool:
    """Whether the record's owner is configured to hold the site link."""
    return record is not None and record.gateway_candidate


def elect(members: Iterable[MemberInfo], records: Mapping[str, NodeRecord]) -> str | None:
    """The site's gateway in this view, or None when no live member is a candidate.

    None too while a live member's record is still missing: an agent that has
    just joined does not yet know who else is a candidate, and would take the
    link from the real gateway for a moment."""
    live = [m.node_id for m in members if m.state in HOLDING]
    if any(node not in records for node in live):
        return None
    candidates = [node for node in live if is_candidate(records[node])]
    return min(candidates) if candidates else None
