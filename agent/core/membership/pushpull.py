"""Anti-entropy push-pull: exchange digests, then send only what the other lacks.

Gossip is fast but lossy; push-pull (Scuttlebutt reconciliation) repairs what
gossip missed and brings a fresh or partitioned node up to date:

1. A sends `Digest(members, records={owner: version}, reply=True)` to B;
2. B answers `Delta(what B knows newer)` and its own `Digest(reply=False)`;
3. A answers B's digest with a `Delta` of what A knows newer.

Only newer entries travel in a `Delta`, so catching up costs what changed,
not the size of the cluster. Digests themselves are O(N), which is why the
interval grows with the cluster (`push_pull_scale`), and why the periodic
exchange goes in parts (`plan_parts`): each a digest of one range of member
ids, answered for that range only, one a second, so that a 10,000-member
digest (570 KB) never fills one second of a node's traffic.

These helpers are pure over the member table and record store; applying a
Delta goes through the node's normal transition rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from novacron.protocol.messages import Delta, Digest, MemberDigest, MemberState, SignedRecord

from .members import Member, MemberTable
from .records import RecordStore
from .transitions import supersedes

ALIVE = MemberState.ALIVE  # module constant: enum attribute access is slow in O(N) loops
DEAD = MemberState.DEAD
PUSH_PULL_SCALE_THRESHOLD = 32  # memberlist: clusters above this push-pull less often
LINE_CACHE_LIMIT = 1 << 14  # lines of each kind a node's `LineCache` holds


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's `pushPullScale`: stretch the interval by log2(n / 32) above 32 nodes."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return interval * multiplier


def plan_parts(ids: Sequence[str], part_bytes: int) -> list[tuple[str, str]]:
    """Ranges `(first, end)` of member ids, in order, each holding about `part_bytes`
    of digest lines and record versions of the sorted `ids`. The first starts at ""
    and the last ends at "", so that together they cover every id, known or not."""
    bounds: list[str] = []
    size = 0
    for node_id in ids:
        line = _PART_LINE_OVERHEAD + 2 * len(node_id)
        if size and size + line > part_bytes:
            bounds.append(node_id)
            size = 0
        size += line
    return list(zip(["", *bounds], [*bounds, ""], strict=True))


def only(node_id: str) -> tuple[str, str]:
    """The range `(first, end)` of ids that holds `node_id` and no other."""
    return node_id, node_id + "\0"


class LineCache:
    """Push-pull lines, one object per value: the digest lines of members changed
    since the snapshot, and the signed lines of answers.

    A digest lists every member and a node sends one each push-pull, so the
    lines of those that changed would otherwise be built anew each time, and a
    healing node answers pull after pull with the same signed lines. The nodes
    of a simulator built from one snapshot share one cache (lines are immutable
    values). Each kind is emptied when full: a node's default, enough for a
    10,000-member mesh, holds some 6 MB at most.
    """

    __slots__ = ("_lines", "_signed", "limit")

    def __init__(self, limit: int = LINE_CACHE_LIMIT) -> None:
        self.limit = limit  # lines of each kind held before they are forgotten
        self._lines: dict[tuple[str, int, MemberState], MemberDigest] = {}
        self._signed: dict[tuple[str, int, MemberState, str, bytes, bytes], MemberDigest] = {}

    @classmethod
    def shared_by(cls, nodes: int) -> LineCache:
        """One cache for `nodes` simulated nodes of one process: a few lines per member."""
        return cls(max(LINE_CACHE_LIMIT, 4 * nodes))

    def __len__(self) -> int:
        return len(self._lines) + len(self._signed)

    def line(self, member: Member) -> MemberDigest:
        """The line saying `member`'s incarnation and state (without its address)."""
        return self._held(self._lines, (member.node_id, member.incarnation, member.state))

    def signed(self, member: Member, certificate: bytes) -> MemberDigest:
        """The line handing `member` on: with its address, its own signature and
        `certificate` (for a receiver that lacks it, else empty)."""
        node_id, incarnation, state = member.node_id, member.incarnation, member.state
        fields = (node_id, incarnation, state, member.address, member.proof, certificate)
        return self._held(self._signed, fields)

    def _held(self, lines: dict[Any, MemberDigest], fields: tuple[Any, ...]) -> MemberDigest:
        """The line of these fields (MemberDigest's, in order), built once."""
        found = lines.get(fields)
        if found is None:
            if len(lines) >= self.limit:
                lines.clear()
            found = lines[fields] = MemberDigest(*fields)
        return found


def digest_line(
    member: Member, table: MemberTable, shared: Mapping[str, MemberDigest], cache: LineCache
) -> MemberDigest:
    """The digest line for `member`, reusing the snapshot's line when unchanged.

    Digest lines say only what we know (incarnation and state), unsigned and
    without the address: the receiver compares them, it does not apply them
    (but for the sender's own line, built with its address and signature, and
    the line about the receiver itself, which only ever makes it refute). A
    third of a digest's bytes were addresses, and digests are most of what a
    large mesh sends.
    """
    if table.is_shared(member):
        cached = shared.get(member.node_id)
        if cached is not None:
            return cached
    return cache.line(member)


def build_digest(
    table: MemberTable,
    store: RecordStore,
    shared: Mapping[str, MemberDigest],
    own: MemberDigest,
    crl_issued_at: float,
    *,
    cache: LineCache,
    reply: bool,
    rejoining: bool = False,
    within: tuple[str, str] = ("", ""),
) -> Digest:
    """Everything this node knows, as (incarnation, state) lines and record versions;
    or, `within` a range of ids `(first, end)`, what it knows of those.

    `own` is the sender's line about itself, signed and with its certificate,
    because the receiver applies it: that is how a newcomer introduces itself.
    """

    def fresh(member: Member) -> MemberDigest:  # a member changed here, or ourselves
        return own if member.node_id == own.node_id else digest_line(member, table, shared, cache)

    if within == ("", ""):
        members = table.map_members(shared, fresh, skip=own.node_id)
        records = store.versions()
    else:
        ids = table.ids_in(*within)
        members = [fresh(member) for member in _members_of(table, ids)]
        records = store.versions_of(ids)
    return Digest(
        members=tuple(members),
        records=records,
        reply=reply,
        crl_issued_at=crl_issued_at,
        rejoining=rejoining,
        first=within[0],
        end=within[1],
    )


def _members_of(table: MemberTable, ids: Iterable[str]) -> list[Member]:
    return [member for member in map(table.get, ids) if member is not None]


def build_deltas(
    digest: Digest,
    table: MemberTable,
    store: RecordStore,
    certificate: Callable[[str], bytes],
    crl: bytes,
    max_bytes: int,
    *,
    cache: LineCache,
) -> list[Delta]:
    """What this node knows that is newer than `digest` says, in Deltas of `max_bytes`.

    Each line carries the member's own signature (its `proof`), so the
    receiver can apply it; a member the digest does not list is sent only
    when alive (a suspicion or failure about a member the peer never heard of
    would be ignored there), with its certificate, which the peer lacks.
    Large answers (a newcomer in a big mesh) are split so that no frame comes
    near the frame limit. Empty when there is nothing to send.

    A rejoining peer (`Digest.rejoining`) also gets our ALIVE line for each
    member it holds DEAD at the same incarnation: it was the one cut off, and
    takes our view of them as a newcomer would (`MembershipNode._merge_line`).
    """
    theirs = {line.node_id: line for line in digest.members}
    rejoining = digest.rejoining
    items: list[MemberDigest | SignedRecord] = []
    members: Iterable[Member] = table
    if digest.first or digest.end:  # one part of an exchange: its range only
        ids = table.ids_in(digest.first, digest.end)
        members = _members_of(table, ids)
        newer_records = store.newer_among(ids, digest.records)
    else:
        newer_records = store.newer_than(digest.records)
    for member in members:
        line = theirs.get(member.node_id)
        if line is None:
            newer = member.state is ALIVE
        elif member.incarnation == line.incarnation and member.state is line.state:
            continue  # the same news (most lines): never newer
        elif rejoining and line.state is DEAD and member.state is ALIVE:
            newer = member.incarnation >= line.incarnation
        else:
            newer = supersedes(member.incarnation, member.state, line.incarnation, line.state)
        if newer:
            cert = certificate(member.node_id) if line is None else b""
            items.append(cache.signed(member, cert))
    items.extend(newer_records)
    return _split(items, crl, max_bytes)


def _split(items: list[MemberDigest | SignedRecord], crl: bytes, max_bytes: int) -> list[Delta]:
    deltas: list[Delta] = []
    lines: list[MemberDigest] = []
    records: list[SignedRecord] = []
    size = len(crl)
    for item in items:
        item_size = _size(item)
        if size + item_size > max_bytes and (lines or records):
            deltas.append(Delta(tuple(lines), tuple(records), crl if not deltas else b""))
            lines, records, size = [], [], 0
        if isinstance(item, MemberDigest):
            lines.append(item)
        else:
            records.append(item)
        size += item_size
    if lines or records or (crl and not deltas):
        deltas.append(Delta(tuple(lines), tuple(records), crl if not deltas else b""))
    return deltas


def digest_size(digest: Digest) -> int:
    """Encoded bytes of a digest, estimated on the large side (for the gossip budget)."""
    size = _DIGEST_OVERHEAD + sum(len(node_id) for node_id in digest.records)
    size += _VERSION_OVERHEAD * len(digest.records)
    for line in digest.members:
        variable = len(line.address) + len(line.signature) + len(line.certificate)
        size += _DIGEST_LINE_OVERHEAD + len(line.node_id) + variable
    return size


def deltas_size(deltas: list[Delta]) -> int:
    """Encoded bytes of push-pull answers, estimated on the large side."""
    size = 0
    for delta in deltas:
        size += len(delta.crl) + sum(_size(line) for line in delta.members)
        size += sum(_size(record) for record in delta.records)
    return size


def _size(item: MemberDigest | SignedRecord) -> int:
    """Encoded bytes of one item, estimated on the large side (field names included)."""
    if isinstance(item, MemberDigest):
        variable = len(item.address) + len(item.signature) + len(item.certificate)
        return _LINE_OVERHEAD + len(item.node_id) + variable
    return _RECORD_OVERHEAD + len(item.node_id) + len(item.record) + len(item.signature)


_LINE_OVERHEAD = 80  # map header, six field names, integers and headers of a MemberDigest
_RECORD_OVERHEAD = 60  # the same for a SignedRecord
_DIGEST_OVERHEAD = 64  # a digest's own header and field names
_DIGEST_LINE_OVERHEAD = 36  # a digest line's map header, field names and integers
_VERSION_OVERHEAD = 4  # a record version's integer and string header
_PART_LINE_OVERHEAD = _DIGEST_LINE_OVERHEAD + _VERSION_OVERHEAD  # a member's share of a part
