"""A VM's migration history, carried by the VM itself: the same wherever you ask.

Each agent remembers its own migrations in memory, and a host the VM left,
an agent restarted since, or a host that took no part would each tell a
different story. So when a migration that ran a libvirt job ends, the source
agent adds it to the domain's own metadata on the host the VM is on now
(`urn:novacron:history:1`, the last `KEEP` entries): the record travels with
the VM in every later migration, survives agent restarts, and any agent
reads it from the VM's host's libvirt. Times are the source's wall clock, as
both hosts show them.

`VmHistory.of(vm)` merges that record with this agent's own rows for the VM
(a migration still running, one whose record could not be written), by id,
into `HistoryRow`s.
The metadata comes from another host's libvirt, so it is parsed with bounds:
at most `MAX_BYTES`, `KEEP` entries, `MAX_TEXT` characters per attribute.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import libvirt

from .core.migration.saga import ClusterView
from .locator import Locator, find
from .migration_row import MigrationRow
from .migration_row import iso as iso  # the API's times; still importable from here

log = logging.getLogger("novacron.history")

NAMESPACE = "urn:novacron:history:1"
KEY = "novacron-history"  # the element's prefix in the domain XML
KEEP = 20  # entries a VM carries
MAX_BYTES = 64 * 1024  # a history element larger than this is not read
MAX_TEXT = 512  # characters kept of any attribute (reasons are sentences)
FIELDS = ("migration_id", "source", "target", "outcome", "reason", "purpose")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One migration of a VM, as its source ended it."""

    migration_id: str
    source: str
    target: str
    outcome: str  # committed, aborted, in-doubt
    started_at: float  # wall clock, the source's
    ended_at: float  # wall clock, the source's
    reason: str = ""  # why it failed ("" if it did not)
    purpose: str = ""  # manual, drain, rebalance


def to_xml(entries: Iterable[HistoryEntry]) -> str:
    """The metadata element for `entries` (the last `KEEP`)."""
    root = ET.Element("history", {"xmlns": NAMESPACE})
    for entry in list(entries)[-KEEP:]:
        attributes = {name: str(getattr(entry, name))[:MAX_TEXT] for name in FIELDS}
        attributes["started_at"] = repr(entry.started_at)
        attributes["ended_at"] = repr(entry.ended_at)
        ET.SubElement(root, "migration", attributes)
    return ET.tostring(root, encoding="unicode")


def from_xml(text: str) -> list[HistoryEntry]:
    """The entries in a history element; malformed or oversized input gives [] or skips."""
    if len(text) > MAX_BYTES:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return []
    entries = []
    for element in list(root)[-KEEP:]:
        fields = {name: element.get(name, "")[:MAX_TEXT] for name in FIELDS}
        try:
            started, ended = (
                float(element.get("started_at", "")),
                float(element.get("ended_at", "")),
            )
        except ValueError:
            continue
        if fields["migration_id"]:
            entries.append(HistoryEntry(started_at=started, ended_at=ended, **fields))
    return entries


# --- blocking helpers (worker threads) ----------------------------------------------------


def read_history(conn: Any, vm: str) -> list[HistoryEntry]:
    """The history `vm` carries on the libvirtd of `conn` ([] if none or no such VM)."""
    dom = find(conn, vm)
    return _carried(dom) if dom is not None else []


def _carried(dom: Any) -> list[HistoryEntry]:
    try:
        return from_xml(str(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)))
    except libvirt.libvirtError:  # no history element yet
        return []


def add_history(conn: Any, vm: str, entry: HistoryEntry) -> None:
    """Append `entry` to the history `vm` carries (its live and persistent XML)."""
    dom = conn.lookupByName(vm)
    entries = [e for e in _carried(dom) if e.migration_id != entry.migration_id] + [entry]
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
    if dom.isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, to_xml(entries), KEY, NAMESPACE, flags)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One migration of a VM as `nova vm migrations` lists it: this agent's own row, the
    entry the VM carries, or both (where both speak, the carried entry wins: it is the
    source's final word, the same on every host)."""

    vm: str
    local: MigrationRow | None = None  # this agent's row, while it still keeps one
    carried: HistoryEntry | None = None  # what the VM's metadata says

    @property
    def migration_id(self) -> str:
        if self.carried is not None:
            return self.carried.migration_id
        assert self.local is not None, "a history row has a local row or a carried entry"
        return self.local.info.migration_id

    @property
    def started(self) -> str:
        """When it began as the API shows it ("" if unknown): the rows' order."""
        if self.carried is not None:
            return iso(self.carried.started_at) or ""
        assert self.local is not None, "a history row has a local row or a carried entry"
        return iso(self.local.info.started_at) or ""

    def to_json(self) -> dict[str, Any]:
        """The API's shape: the local row's keys, overwritten by the carried entry's."""
        row = self.local.to_json() if self.local is not None else {}
        if self.carried is not None:
            row.update(_row(self.carried, self.vm))
        return row


class VmHistory:
    """A VM's migrations as this agent can tell them (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        view: ClusterView,
        locator: Locator,
        local: Callable[[], list[MigrationRow]],
    ) -> None:
        self.node_id = node_id
        self._view = view  # records: which hosts list the VM
        self._locator = locator  # where each host's libvirt is, and its worker threads
        self._local = local  # this agent's migration rows (the API's `migrations`)

    async def record(self, entry: HistoryEntry, vm: str, host: str) -> None:
        """Add `entry` to what `vm` carries on `host` (a failure is logged, not raised)."""
        try:
            await self._locator.call(host, add_history, vm, entry)
        except (libvirt.libvirtError, TimeoutError) as exc:
            fields = {"vm": vm, "host": host, "id": entry.migration_id, "why": str(exc)}
            log.warning("cannot add a migration to the VM's history", extra={"fields": fields})

    async def of(self, vm: str) -> list[HistoryRow]:
        """Every migration of `vm` known here or carried by it, oldest first."""
        rows = {
            m.info.migration_id: HistoryRow(vm, local=m) for m in self._local() if m.info.vm == vm
        }
        hosts = [h for h, r in self._view.records().items() if any(v.name == vm for v in r.vms)]
        for host in sorted(hosts):
            try:
                carried = await self._locator.read(host, read_history, vm)
            except (libvirt.libvirtError, TimeoutError):
                continue
            for entry in carried:
                known = rows.get(entry.migration_id)
                local = known.local if known is not None else None
                rows[entry.migration_id] = HistoryRow(vm, local=local, carried=entry)
        return sorted(rows.values(), key=lambda row: row.started)


def _row(entry: HistoryEntry, vm: str) -> dict[str, Any]:
    """An entry as the API shows a migration (the keys `nova migrations` uses)."""
    fields = asdict(entry)
    started, ended = fields.pop("started_at"), fields.pop("ended_at")
    return {
        **fields,
        "vm": vm,
        "phase": entry.outcome,
        "started": iso(started),
        "ended": iso(ended),
    }
