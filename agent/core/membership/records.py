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
   otherwise "bad-signature";
4. the signed bytes decode (the codec checks every field's type and range,
   and refuses host labels under the reserved `novacron/` prefix):
   otherwise "malformed", with the codec's reason;
5. its contents are within bounds (`RecordBounds`): finite, non-negative
   amounts no host could exceed, and a libvirt URI on the owner's own
   signed address: otherwise "out-of-bounds", with the reason. A member may
   say what it has; it may not say what no host has, nor point migrations
   at another machine.

Like the member table, the store is copy-on-write over an optional shared
base (a `ClusterSnapshot`'s records), so memory per node is O(changes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from urllib.parse import urlsplit

from novacron.protocol.errors import ProtocolError, RecordContentRefused
from novacron.protocol.messages import NodeRecord, Resources, SignedRecord

RecordVerifier = Callable[[SignedRecord], NodeRecord]
"""Checks a signed record against its owner's key; raises `ProtocolError` if bad."""


class RecordVerdict(Enum):
    """The outcome of offering a record to the store."""

    ACCEPT = "accepted"
    NOT_MEMBER = "not-a-member"
    STALE = "stale"
    BAD_SIGNATURE = "bad-signature"
    MALFORMED = "malformed"
    OUT_OF_BOUNDS = "out-of-bounds"


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided, with the decoded record when accepted."""

    verdict: RecordVerdict  # accepted, or why not
    record: NodeRecord | None = None  # the verified contents (only when accepted)
    reason: str = ""  # what was malformed or out of bounds


@dataclass(frozen=True, slots=True)
class RecordBounds:
    """The most any one host can honestly report; a record beyond is refused.

    Generous on purpose (today's largest servers are far below), so that
    only a lie or a broken agent reaches them: what they stop is a single
    record that would draw every placement (a million cores) or turn the
    mesh's mean load into infinity.
    """

    max_vcpus: float = 4096.0  # cores of one host
    max_memory_mib: int = 64 * 1024 * 1024  # 64 TiB
    max_disk_gib: float = 1024.0 * 1024.0  # 1 PiB
    max_vms: int = 10_000  # VMs on one host
    max_load_per_core: float = 64.0  # load average (and VM load) per core, overcommitted
    max_dirty_rate_mib_s: float = 1024.0 * 1024.0  # memory written per second by one VM


_version = attrgetter("version")


class RecordStore:
    """Signed records and their verified contents, by owner id."""

    __slots__ = ("_base_records", "_base_signed", "_received", "_records", "_signed", "_view")

    def __init__(
        self,
        base_signed: Mapping[str, SignedRecord] | None = None,
        base_records: Mapping[str, NodeRecord] | None = None,
    ) -> None:
        self._base_signed: Mapping[str, SignedRecord] = base_signed or {}  # shared, read-only
        self._base_records: Mapping[str, NodeRecord] = base_records or {}  # decoded base
        self._signed: dict[str, SignedRecord] = {}  # this node's newer records
        self._records: dict[str, NodeRecord] = {}  # their verified contents
        self._received: dict[str, float] = {}  # owner id -> when its stored version arrived
        self._view = _OverlayView(self._base_records, self._records)  # live public view

    def version(self, node_id: str) -> int:
        """The stored version of `node_id`'s record, 0 if none."""
        signed = self.signed(node_id)
        return signed.version if signed is not None else 0

    def signed(self, node_id: str) -> SignedRecord | None:
        """The stored signed record of `node_id`, if any."""
        signed = self._signed.get(node_id)
        return signed if signed is not None else self._base_signed.get(node_id)

    def put(self, signed: SignedRecord, record: NodeRecord, now: float | None = None) -> None:
        """Store a verified record (the caller checked it is newer), received at `now`
        (None: our own, which never arrives)."""
        self._view.note_key(signed.node_id)
        self._signed[signed.node_id] = signed
        self._records[signed.node_id] = record
        if now is not None:
            self._received[signed.node_id] = now

    def received(self) -> Mapping[str, float]:
        """When each stored record arrived, by owner: records taken from a shared snapshot
        (the simulator's) and our own have no arrival and are absent."""
        return self._received

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
        """Owner id -> stored version, for a push-pull digest (in `__iter__`'s order:
        the base's, then records new here; a record newer here keeps its base place)."""
        base = self._base_signed
        versions = dict(zip(base, map(_version, base.values()), strict=True))
        versions.update(zip(self._signed, map(_version, self._signed.values()), strict=True))
        return versions

    def versions_of(self, owners: Iterable[str]) -> dict[str, int]:
        """Owner id -> stored version, for the `owners` whose record we hold."""
        found = {}
        for node_id in owners:
            signed = self._signed.get(node_id) or self._base_signed.get(node_id)
            if signed is not None:
                found[node_id] = signed.version
        return found

    def newer_among(self, owners: Iterable[str], versions: Mapping[str, int]) -> list[SignedRecord]:
        """The stored records of `owners` whose version is above the one in `versions`."""
        get = versions.get
        newer = []
        for node_id in owners:
            signed = self._signed.get(node_id) or self._base_signed.get(node_id)
            if signed is not None and signed.version > get(node_id, 0):
                newer.append(signed)
        return newer

    def newer_than(self, versions: Mapping[str, int]) -> list[SignedRecord]:
        """Stored records whose version is above the one in `versions` (0 if absent)."""
        get = versions.get
        newer = [
            node_id for node_id, version in self.versions().items() if version > get(node_id, 0)
        ]
        return [self._signed.get(node_id) or self._base_signed[node_id] for node_id in newer]


def admit(
    store: RecordStore,
    signed: SignedRecord,
    verifier: RecordVerifier,
    owner_address: str | None,
    bounds: RecordBounds,
) -> Admission:
    """Decide whether `signed` may replace what the store holds (see module docstring).

    `owner_address` is the address the owner signed in its Alive, or None
    when the owner is not a member whose records we take.
    """
    if owner_address is None:
        return Admission(RecordVerdict.NOT_MEMBER)
    if signed.version <= store.version(signed.node_id):
        return Admission(RecordVerdict.STALE)
    try:
        record = verifier(signed)
    except RecordContentRefused as exc:  # its owner signed it: the fault is in what it says
        return Admission(RecordVerdict.MALFORMED, reason=str(exc))
    except ProtocolError:
        return Admission(RecordVerdict.BAD_SIGNATURE)
    if record.node_id != signed.node_id or record.version != signed.version:
        return Admission(RecordVerdict.BAD_SIGNATURE)  # a valid record under a false header
    problem = record_problem(record, bounds, owner_address)
    if problem:
        return Admission(RecordVerdict.OUT_OF_BOUNDS, reason=problem)
    return Admission(RecordVerdict.ACCEPT, record)


def record_problem(record: NodeRecord, bounds: RecordBounds, owner_address: str) -> str:
    """What in `record` no honest host would report, or "" (see `RecordBounds`)."""
    cores = max(record.capacity.vcpus, 1.0)
    problem = (
        _resources_problem("capacity", record.capacity, bounds, 1.0)
        or _resources_problem("usage", record.usage, bounds, bounds.max_load_per_core)
        or _amount_problem("load", record.load, cores * bounds.max_load_per_core)
        or _uri_problem(record.libvirt_uri, owner_address)
    )
    if problem:
        return problem
    if len(record.vms) > bounds.max_vms:
        return f"{len(record.vms)} VMs (at most {bounds.max_vms})"
    for vm in record.vms:
        problem = (
            _amount_problem(f"VM {vm.name[:64]!r} vcpus", vm.vcpus, bounds.max_vcpus)
            or _amount_problem(f"VM {vm.name[:64]!r} memory", vm.memory_mib, bounds.max_memory_mib)
            or _amount_problem(f"VM {vm.name[:64]!r} cpu load", vm.cpu_load, vm_load_limit(cores))
            or _amount_problem(
                f"VM {vm.name[:64]!r} dirty rate", vm.dirty_rate_mib_s, bounds.max_dirty_rate_mib_s
            )
        )
        if problem:
            return problem
    return ""


def vm_load_limit(host_cores: float) -> float:
    """The most CPU one VM can be seen using: every core of its host. Not its vCPU count:
    QEMU's own threads (TCG's, a migration's, I/O) work beside the vCPUs."""
    return max(host_cores, 1.0)


def _resources_problem(what: str, amount: Resources, bounds: RecordBounds, factor: float) -> str:
    return (
        _amount_problem(f"{what} vcpus", amount.vcpus, bounds.max_vcpus * factor)
        or _amount_problem(f"{what} memory", amount.memory_mib, bounds.max_memory_mib * factor)
        or _amount_problem(f"{what} disk", amount.disk_gib, bounds.max_disk_gib * factor)
    )


def _amount_problem(what: str, value: float, most: float) -> str:
    if not math.isfinite(value) or value < 0 or value > most:
        return f"{what} {value:g} (must be 0 to {most:g})"
    return ""


def _uri_problem(libvirt_uri: str, owner_address: str) -> str:
    """A libvirt URI naming a host must name the owner's own signed address."""
    try:
        host = urlsplit(libvirt_uri).hostname
    except ValueError:
        return f"libvirt URI {libvirt_uri[:120]!r} does not parse"
    if host is None:
        return ""  # a local URI (qemu:///system): peers reach it through the owner's address
    own = owner_address.rpartition(":")[0].strip("[]").lower() or owner_address.lower()
    if host.lower() != own:
        return f"libvirt URI host {host[:80]!r} is not the host's own address {own[:80]!r}"
    return ""


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
