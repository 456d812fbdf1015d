"""Node records: the store of verified, signed records and the rule for accepting one.

Every node owns one record and signs it; relays pass the signed bytes on
unchanged, so nobody can forge or alter another node's record. A record is
accepted only when (in this order, cheapest check first):

1. its owner is a member (known, and neither left nor failed for longer than
   the reconnect window): otherwise "not-a-member";
2. its version is newer than the stored one: otherwise "stale", and the
   signature is *not* checked (verification is the expensive step and an old
   record is worthless anyway);
3. the signature verifies and the signed header matches the contents:
   otherwise "bad-signature".

Like the member table, the store is copy-on-write over an optional shared
base (a `ClusterSnapshot`'s records), so memory per node is O(changes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import NodeRecord, SignedRecord

RecordVerifier = Callable[[SignedRecord], NodeRecord]
"""Checks a signed record against its owner's key; raises `ProtocolError` if bad."""


class RecordVerdict(Enum):
    """The outcome of offering a record to the store."""

    ACCEPT = "accepted"
    NOT_MEMBER = "not-a-member"
    STALE = "stale"
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided, with the decoded record when accepted."""

    verdict: RecordVerdict  # accepted, or why not
    record: NodeRecord | None = None  # the verified contents (only when accepted)


class RecordStore:
    """Signed records and their verified contents, by owner id."""

    __slots__ = ("_base_records", "_base_signed", "_records", "_signed", "_view")

    def __init__(
        self,
        base_signed: Mapping[str, SignedRecord] | None = None,
        base_records: Mapping[str, NodeRecord] | None = None,
    ) -> None:
        self._base_signed: Mapping[str, SignedRecord] = base_signed or {}  # shared, read-only
        self._base_records: Mapping[str, NodeRecord] = base_records or {}  # decoded base
        self._signed: dict[str, SignedRecord] = {}  # this node's newer records
        self._records: dict[str, NodeRecord] = {}  # their verified contents
        self._view = _OverlayView(self._base_records, self._records)  # live public view

    def version(self, node_id: str) -> int:
        """The stored version of `node_id`'s record, 0 if none."""
        signed = self.signed(node_id)
        return signed.version if signed is not None else 0

    def signed(self, node_id: str) -> SignedRecord | None:
        """The stored signed record of `node_id`, if any."""
        signed = self._signed.get(node_id)
        return signed if signed is not None else self._base_signed.get(node_id)

    def put(self, signed: SignedRecord, record: NodeRecord) -> None:
        """Store a verified record (the caller checked it is newer)."""
        self._view.note_key(signed.node_id)
        self._signed[signed.node_id] = signed
        self._records[signed.node_id] = record

    def overlay_size(self) -> int:
        """How many records this node holds privately (memory diagnostics)."""
        return len(self._signed)

    def view(self) -> Mapping[str, NodeRecord]:
        """Verified records by owner: a live read-only view, not a copy."""
        return self._view

    def __iter__(self) -> Iterator[SignedRecord]:
        """Every stored signed record: O(N), for push-pull."""
        overlay = self._signed
        for node_id, signed in self._base_signed.items():
            yield overlay.get(node_id) or signed
        for node_id, signed in overlay.items():
            if node_id not in self._base_signed:
                yield signed

    def versions(self) -> dict[str, int]:
        """Owner id -> stored version, for a push-pull digest."""
        return {signed.node_id: signed.version for signed in self}

    def newer_than(self, versions: Mapping[str, int]) -> list[SignedRecord]:
        """Stored records whose version is above the one in `versions` (0 if absent)."""
        return [signed for signed in self if signed.version > versions.get(signed.node_id, 0)]


def admit(
    store: RecordStore, signed: SignedRecord, verifier: RecordVerifier, owner_is_member: bool
) -> Admission:
    """Decide whether `signed` may replace what the store holds (see module docstring)."""
    if not owner_is_member:
        return Admission(RecordVerdict.NOT_MEMBER)
    if signed.version <= store.version(signed.node_id):
        return Admission(RecordVerdict.STALE)
    try:
        record = verifier(signed)
    except ProtocolError:
        return Admission(RecordVerdict.BAD_SIGNATURE)
    if record.node_id != signed.node_id or record.version != signed.version:
        return Admission(RecordVerdict.BAD_SIGNATURE)  # a valid record under a false header
    return Admission(RecordVerdict.ACCEPT, record)


class _OverlayView(Mapping[str, NodeRecord]):
    """A read-only mapping: the private overlay's entries over the shared base's."""

    __slots__ = ("_base", "_extra", "_overlay")

    def __init__(self, base: Mapping[str, NodeRecord], overlay: dict[str, NodeRecord]) -> None:
        self._base = base  # shared records
        self._overlay = overlay  # this node's newer records (owned by the store)
        self._extra = 0  # overlay keys that are not in the base

    def note_key(self, node_id: str) -> None:
        """Called before a key is stored, to keep `len` O(1)."""
        if node_id not in self._overlay and node_id not in self._base:
            self._extra += 1

    def __getitem__(self, node_id: str) -> NodeRecord:
        record = self._overlay.get(node_id)
        return record if record is not None else self._base[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._overlay or node_id in self._base

    def __len__(self) -> int:
        return len(self._base) + self._extra

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        for node_id in self._overlay:
            if node_id not in self._base:
                yield node_id
