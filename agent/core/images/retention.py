"""Which held templates to remove: those no VM on this host has used for a grace period.

A host keeps every template it pulled, and pulls for each VM created or
migrated here; without a rule its store only grows. A template is in use while
a VM of this host names it (its `novacron/template` label, running or not) or
a disk in the host's disk directory has one of its files as base. The clock
of a template starts when it is first seen held and unused, and stops when it
is used again; one unused for `grace` seconds is removed (and fetched again,
from peers, if a VM needs it later). Pure: what is held and used, and the time,
in; the templates to remove out.

The clocks live in memory: after an agent restart every unused template's
grace starts anew, which only ever keeps a template longer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..templates import template_of


def used_refs(vm_labels: Iterable[Mapping[str, str]], disk_bases: Iterable[str]) -> set[str]:
    """The templates in use: named by a VM's label, or the base of a disk (by ref)."""
    named = {ref for labels in vm_labels if (ref := template_of(labels))}
    return named | set(disk_bases)


class Retention:
    """Since when each held template has been unused; which have been so for too long."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # seconds; 0 (or less): templates are never removed
        self._unused_since: dict[str, float] = {}

    def look(self, held: Iterable[str], used: Iterable[str], now: float) -> list[str]:
        """Note what is held and used at `now`; the held templates unused for `grace`."""
        held, used = set(held), set(used)
        for ref in list(self._unused_since):
            if ref not in held or ref in used:
                del self._unused_since[ref]
        for ref in held - used:
            self._unused_since.setdefault(ref, now)
        if self.grace <= 0:
            return []
        return sorted(r for r, since in self._unused_since.items() if now - since >= self.grace)

    def unused_since(self, ref: str) -> float | None:
        """When `ref` was first seen unused (this agent's clock), or None while used."""
        return self._unused_since.get(ref)
