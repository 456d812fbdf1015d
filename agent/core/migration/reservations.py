"""Target-side admission: room held for incoming VMs until they arrive or the source goes quiet.

A target admits a proposed VM against its *real* free capacity, computed from
its own latest record (capacity minus the VMs the hypervisor reports) minus
what it already promised to other pending migrations. Without the second
term two hot hosts could each be told "yes" for the last 2 GiB of the same
cold host; reservations are the arbiter the rebalancer relies on.

A reservation is a lease. It expires `ttl` seconds after it was made unless
the source renews it (every `MigrationProgress` does), so a source that dies
mid-migration cannot pin capacity forever. Renewals are the source's word,
though, and a member may lie: a reservation also lives only while this
host's own libvirt shows the migration (the incoming domain in its record),
at the latest `confirm_within` seconds after it was made or last seen there,
whatever the source says. A source holds at most `per_source` admissions
not yet seen in libvirt (an affinity group admitted in one step is one
admission), and one whose reservation lapsed unseen is refused
for `penalty` seconds (doubling with each repeat, up to `max_penalty`), so a
member cannot keep a host's memory and inbound slots with proposals it keeps
renewing. On commit the reservation is not
dropped at once: it is *held* until the host's own record lists the VM
(the inventory refresh lags the hypervisor), so the freed memory is not
promised twice in between. A reservation whose VM already appears in the
record is not counted again (the incoming domain is visible in libvirt while
pre-copy runs), so nothing is subtracted twice either.

Pure bookkeeping: the saga (`saga.py`) decides when to call what.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from novacron.protocol.messages import NodeRecord, Resources

from .inbound import COMMIT, Inbound, next_inbound

INF = float("inf")


@dataclass(frozen=True, slots=True)
class ReservationConfig:
    """Target-side admission knobs."""

    ttl: float = 30.0  # seconds a reservation lives without a renewal from its source
    landed_hold: float = 30.0  # after commit, hold the room at most this long for the record
    vcpu_overcommit: float = 4.0  # vCPUs promised per physical core (memory is never overcommitted)
    confirm_within: float = 20.0  # libvirt must show the migration within this, and keep showing it
    per_source: int = 1  # reservations one source may hold that libvirt does not show yet
    penalty: float = 60.0  # a source whose reservation lapsed unseen is refused this long ...
    max_penalty: float = 600.0  # ... doubling with each repeat, up to this

    def __post_init__(self) -> None:
        """Refuse values that would admit nothing or never expire."""
        if not self.ttl > 0 or not self.landed_hold >= 0:
            raise ValueError("ttl must be positive and landed_hold non-negative")
        if not self.vcpu_overcommit > 0:
            raise ValueError("vcpu_overcommit must be positive")
        if not self.confirm_within > 0 or self.per_source < 1:
            raise ValueError("confirm_within must be positive and per_source at least 1")
        if not 0 <= self.penalty <= self.max_penalty:
            raise ValueError("penalty must be between 0 and max_penalty")


@dataclass(slots=True)
class Reservation:
    """Room held on this host for one incoming VM."""

    migration_id: str  # the saga's id, chosen by the source
    vm: str  # the VM's name
    source: str  # node id of the source host: the only one who may renew or end this
    vcpus: int  # vCPUs held
    memory_mib: int  # memory held
    disk_gib: float  # disk held (local disks are copied)
    created: float  # when it was made (this host's clock)
    expires: float  # when it lapses unless renewed (or, once landed, is dropped)
    percent: float = 0.0  # last progress the source reported, for `nova migrations`
    phase: Inbound = Inbound.RESERVED  # moved only through `inbound.INBOUND_MOVES`
    anti_affinity: str = ""  # the arriving VM's anti-affinity group ("" for none)
    started_at: float = 0.0  # when the source proposed it, on the source's wall clock
    purpose: str = ""  # why the source moves it: manual, drain, rebalance
    revoked: bool = False  # this host asked its source to stop it (it began draining)
    seen: float | None = None  # when this host's libvirt last showed the incoming VM
    group: str = ""  # the leading migration id of the affinity group admitted with it

    @property
    def landed(self) -> bool:
        """The commit arrived: the VM runs here; the room is held until our record shows it."""
        return self.phase is Inbound.LANDED


@dataclass(frozen=True, slots=True)
class Demand:
    """What one VM needs on its target."""

    vcpus: int  # virtual CPUs
    memory_mib: int  # guest memory
    disk_gib: float = 0.0  # local disk to copy
    anti_affinity: str = ""  # its anti-affinity group ("" for none)
    template: str = ""  # the template (NAME:VERSION) its disk's base comes from ("" for none)


def combined(demands: Iterable[Demand]) -> Demand:
    """What VMs that arrive together (an affinity group) need of their target at once."""
    vcpus = memory = 0
    disk = 0.0
    for demand in demands:
        vcpus += demand.vcpus
        memory += demand.memory_mib
        disk += demand.disk_gib
    return Demand(vcpus, memory, disk)


def free_capacity(
    record: NodeRecord, reservations: Iterable[Reservation], overcommit: float
) -> Resources:
    """What the host can still promise: capacity minus its VMs minus pending reservations.

    vCPUs are counted against `capacity.vcpus * overcommit`; memory is not
    overcommitted. Disk counts `usage.disk_gib` (the hypervisor's figure).
    Reservations whose VM the record already lists are skipped (no double count).
    """
    present = {vm.name for vm in record.vms}
    vcpus = record.capacity.vcpus * overcommit - sum(vm.vcpus for vm in record.vms)
    memory = record.capacity.memory_mib - sum(vm.memory_mib for vm in record.vms)
    disk = record.capacity.disk_gib - record.usage.disk_gib
    for held in reservations:
        if held.vm in present:
            continue
        vcpus -= held.vcpus
        memory -= held.memory_mib
        disk -= held.disk_gib
    return Resources(vcpus=vcpus, memory_mib=memory, disk_gib=disk)


def capacity_refusal(host: str, free: Resources, demand: Demand, check_disk: bool) -> str | None:
    """Why `demand` does not fit in `free` on `host` (memory first), or None if it fits."""
    if demand.memory_mib > free.memory_mib:
        return (
            f"no capacity: target {host} has {max(free.memory_mib, 0)} MiB free, "
            f"{demand.memory_mib} MiB needed"
        )
    if demand.vcpus > free.vcpus:
        return (
            f"no capacity: target {host} has {max(free.vcpus, 0):g} vCPUs free, "
            f"{demand.vcpus} needed"
        )
    if check_disk and demand.disk_gib > free.disk_gib:
        return (
            f"no capacity: target {host} has {max(free.disk_gib, 0):g} GiB of disk free, "
            f"{demand.disk_gib:g} GiB needed"
        )
    return None


class ReservationBook:
    """The reservations one host holds, by migration id."""

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[str, Reservation] = {}  # migration id -> reservation

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Reservation]:
        return iter(list(self._by_id.values()))

    def get(self, migration_id: str) -> Reservation | None:
        """The reservation of `migration_id`, if held."""
        return self._by_id.get(migration_id)

    def for_vm(self, vm: str) -> Reservation | None:
        """The reservation held for a VM of that name, if any."""
        return next((r for r in self._by_id.values() if r.vm == vm), None)

    def inbound(self) -> int:
        """Migrations still arriving (landed ones are done: they no longer load the link)."""
        return sum(1 for r in self._by_id.values() if not r.landed)

    def add(self, reservation: Reservation) -> None:
        """Hold room (the caller admitted it)."""
        self._by_id[reservation.migration_id] = reservation

    def release(self, migration_id: str) -> Reservation | None:
        """Drop a reservation; returns it, or None if it was not held."""
        return self._by_id.pop(migration_id, None)

    def admit(
        self, host: str, record: NodeRecord | None, demand: Demand, config: ReservationConfig
    ) -> str | None:
        """Why `demand` cannot be reserved now (None: it can)."""
        if record is None:
            return f"not ready: {host} has no inventory yet"
        free = free_capacity(record, self, config.vcpu_overcommit)
        return capacity_refusal(host, free, demand, check_disk=record.capacity.disk_gib > 0)

    def arriving_group(self, group: str) -> Reservation | None:
        """A pending arrival of anti-affinity group `group`, if any."""
        return next((r for r in self._by_id.values() if r.anti_affinity == group), None)

    def renew(self, migration_id: str, now: float, ttl: float) -> None:
        """Push the lease out: its source is alive and migrating."""
        held = self._by_id.get(migration_id)
        if held is not None and not held.landed:
            held.expires = max(held.expires, now + ttl)

    def land(self, migration_id: str, now: float, hold: float) -> Reservation | None:
        """The commit arrived: keep the room until our record shows the VM (or `hold` passes)."""
        held = self._by_id.get(migration_id)
        landed = next_inbound(held.phase, COMMIT) if held is not None else None
        if held is not None and landed is not None:
            held.phase = landed
            held.percent = 100.0
            held.expires = now + hold
        return held

    def observe(self, record: NodeRecord | None, now: float) -> list[Reservation]:
        """Note which arriving VMs this host's libvirt shows (its record lists them); returns
        the reservations seen there for the first time."""
        if record is None:
            return []
        present = {vm.name for vm in record.vms}
        first = []
        for held in self._by_id.values():
            if not held.landed and held.vm in present:
                if held.seen is None:
                    first.append(held)
                held.seen = now
        return first

    def unseen_from(self, source: str) -> int:
        """Admissions of `source` that libvirt has not shown yet: an affinity group admitted
        in one step counts once (its members' copies start together)."""
        return len(
            {
                r.group or r.migration_id
                for r in self._by_id.values()
                if r.source == source and not r.landed and r.seen is None
            }
        )

    def settle(self, record: NodeRecord | None) -> list[Reservation]:
        """Drop landed reservations whose VM our record now lists; returns them."""
        if record is None:
            return []
        present = {vm.name for vm in record.vms}
        done = [r for r in self._by_id.values() if r.landed and r.vm in present]
        for held in done:
            del self._by_id[held.migration_id]
        return done

    def expire(self, now: float, confirm_within: float = INF) -> list[Reservation]:
        """Drop every reservation whose lease ran out, or that libvirt has not shown for
        `confirm_within` seconds; returns them."""
        gone = [r for r in self._by_id.values() if now >= _deadline(r, confirm_within)]
        for held in gone:
            del self._by_id[held.migration_id]
        return gone

    def next_deadline(self, confirm_within: float = INF) -> float:
        """When the next reservation lapses (inf: none held)."""
        return min((_deadline(r, confirm_within) for r in self._by_id.values()), default=INF)


def _deadline(held: Reservation, confirm_within: float) -> float:
    """When `held` lapses: its lease, or (arriving) its libvirt evidence going stale."""
    if held.landed:
        return held.expires
    evidence = held.seen if held.seen is not None else held.created
    return min(held.expires, evidence + confirm_within)


def unseen(held: Reservation, now: float, confirm_within: float) -> bool:
    """Whether `held` lapsed for want of libvirt's evidence (not for a silent source)."""
    evidence = held.seen if held.seen is not None else held.created
    return not held.landed and now >= evidence + confirm_within and now < held.expires
