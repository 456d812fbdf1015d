"""Anti-entropy push-pull: exchange digests, then send only what the other lacks.

Gossip is fast but lossy; push-pull (Scuttlebutt reconciliation) repairs what
gossip missed and brings a fresh or partitioned node up to date:

1. A sends `Digest(members, records={owner: version}, reply=True)` to B;
2. B answers `Delta(what B knows newer)` and its own `Digest(reply=False)`;
3. A answers B's digest with a `Delta` of what A knows newer.

Only newer entries travel in a `Delta`, so catching up costs what changed,
not the size of the cluster. Digests themselves are O(N), which is why the
interval grows with the cluster (`push_pull_scale`).

These helpers are pure over the member table and record store; applying a
Delta goes through the node's normal transition rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from novacron.protocol.messages import Delta, Digest, MemberDigest, MemberState

from .members import Member, MemberTable
from .records import RecordStore
from .transitions import supersedes

ALIVE = MemberState.ALIVE  # module constant: enum attribute access is slow in O(N) loops
PUSH_PULL_SCALE_THRESHOLD = 32  # memberlist: clusters above this push-pull less often


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's `pushPullScale`: stretch the interval by log2(n / 32) above 32 nodes."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return interval * multiplier


def digest_line(
    member: Member, table: MemberTable, shared: Mapping[str, MemberDigest]
) -> MemberDigest:
    """The digest line for `member`, reusing the snapshot's line when unchanged."""
    if table.is_shared(member):
        cached = shared.get(member.node_id)
        if cached is not None:
            return cached
    return MemberDigest(member.node_id, member.incarnation, member.state, member.address)


def build_digest(
    table: MemberTable,
    store: RecordStore,
    shared: Mapping[str, MemberDigest],
    *,
    reply: bool,
) -> Digest:
    """Everything this node knows, as (incarnation, state) lines and record versions."""
    members = tuple(digest_line(m, table, shared) for m in table)
    return Digest(members=members, records=store.versions(), reply=reply)


def build_delta(
    digest: Digest,
    table: MemberTable,
    store: RecordStore,
    shared: Mapping[str, MemberDigest],
) -> Delta:
    """What this node knows that is newer than `digest` says.

    A member the digest does not list is sent only when alive: a suspicion or
    failure about a member the peer never heard of would be ignored there.
    """
    theirs = {line.node_id: line for line in digest.members}
    lines: list[MemberDigest] = []
    for member in table:
        line = theirs.get(member.node_id)
        if line is None:
            newer = member.state is ALIVE
        else:
            newer = supersedes(member.incarnation, member.state, line.incarnation, line.state)
        if newer:
            lines.append(digest_line(member, table, shared))
    return Delta(members=tuple(lines), records=tuple(store.newer_than(digest.records)))
