"""A pre-converged, shared view of a cluster, to start thousands of nodes cheaply.

A simulator that starts 10,000 nodes "already converged" cannot give each a
private 10,000-entry member table and record store (10^8 entries). Instead it
builds one `ClusterSnapshot` and every node created with
`MembershipNode.from_snapshot` reads it as the shared base of its copy-on-write
member table and record store, storing only its own changes. Everything here
is immutable by contract: the mappings are typed read-only and hold frozen
values. (They are plain dicts rather than `MappingProxyType`s because every
member lookup of every node goes through them, and the proxy costs a call.)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from novacron.protocol.claims import Claim
from novacron.protocol.codec import unpack_struct
from novacron.protocol.messages import Alive, MemberDigest, MemberState, NodeRecord, SignedRecord

from .members import Member
from .pushpull import LineCache
from .records import RecordVerifier

SNAPSHOT_INCARNATION = 1  # every member of a converged snapshot is alive at this incarnation


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Members and verified records, shared read-only by many nodes."""

    node_ids: tuple[str, ...]  # member ids, sorted: the stable positions of the base
    members: Mapping[str, Member]  # id -> member at incarnation 1 (shared values)
    member_digests: Mapping[str, MemberDigest]  # id -> its push-pull digest line, built once
    signed_records: Mapping[str, SignedRecord]  # owner id -> signed record
    records: Mapping[str, NodeRecord]  # owner id -> verified contents
    taken_at: float  # the time the view describes (members' `state_since`)
    state_counts: Mapping[MemberState, int]  # members per state, computed once
    dead_ids: tuple[str, ...] = ()  # members held failed (none in a converged view)
    # Lines of members changed since, shared by every node built from this view (and
    # from its `with_failed` sides): equal values, built once.
    line_cache: LineCache = field(default_factory=LineCache, compare=False)

    @classmethod
    def converged(
        cls,
        members: Iterable[tuple[str, str]],
        records: Iterable[SignedRecord] = (),
        *,
        now: float = 0.0,
        verifier: RecordVerifier | None = None,
        sign_claim: Callable[[Claim], bytes],
    ) -> ClusterSnapshot:
        """Build a snapshot from (node id, address) pairs and signed records.

        With a `verifier` each record is verified once here; without one the
        records are trusted (the caller signed them) and only decoded.
        `sign_claim` signs each member's Alive as that member (a simulator or
        test holds every key), the proof every member entry carries.
        """
        addresses = dict(members)
        node_ids = tuple(sorted(addresses))
        table = {}
        for node_id in node_ids:
            alive = Alive(node_id, SNAPSHOT_INCARNATION, addresses[node_id])
            table[node_id] = Member(
                node_id,
                addresses[node_id],
                SNAPSHOT_INCARNATION,
                MemberState.ALIVE,
                now,
                sign_claim(alive),
            )
        digests = {
            node_id: MemberDigest(node_id, SNAPSHOT_INCARNATION, MemberState.ALIVE)
            for node_id in node_ids
        }
        signed_by_owner: dict[str, SignedRecord] = {}
        decoded: dict[str, NodeRecord] = {}
        for signed in records:
            if signed.node_id not in addresses:
                raise ValueError(f"record of {signed.node_id!r}, which is not a member")
            record = verifier(signed) if verifier else unpack_struct(NodeRecord, signed.record)
            if record.node_id != signed.node_id or record.version != signed.version:
                raise ValueError(f"record header of {signed.node_id!r} does not match contents")
            signed_by_owner[signed.node_id] = signed
            decoded[signed.node_id] = record
        return cls(
            node_ids=node_ids,
            members=table,
            member_digests=digests,
            signed_records=signed_by_owner,
            records=decoded,
            taken_at=now,
            state_counts={MemberState.ALIVE: len(node_ids)},
            line_cache=LineCache.shared_by(len(node_ids)),  # every node built from it
        )

    def with_failed(self, failed: Iterable[str]) -> ClusterSnapshot:
        """This view as one side of a partition held long sees it: every member in
        `failed` held failed at the incarnation it had (a side fails the others at
        their incarnation and never hears them refute), its gossip long since sent.
        Values stay shared, so a simulator builds one such view per side."""
        dead = tuple(sorted(set(failed)))
        unknown = [node_id for node_id in dead if node_id not in self.members]
        if unknown:
            raise ValueError(f"not members: {', '.join(unknown[:3])}")
        members = dict(self.members)
        digests = dict(self.member_digests)
        for node_id in dead:
            member = dataclasses.replace(
                members[node_id], state=MemberState.DEAD, state_since=self.taken_at
            )
            members[node_id] = member
            digests[node_id] = MemberDigest(node_id, member.incarnation, MemberState.DEAD)
        return dataclasses.replace(
            self,
            members=members,
            member_digests=digests,
            state_counts=Counter(member.state for member in members.values()),
            dead_ids=tuple(sorted(set(self.dead_ids) | set(dead))),
        )
