"""The outbound-migration journal: which VM this host is sending where, on disk.

libvirtd drives a peer-to-peer migration by itself, so a job outlives an agent
that is killed while it runs, and the new agent's memory is empty. One small
file per running outbound migration (`<vm>.json`: migration id and target),
written before the libvirt job starts and removed when the call returns, is
what lets the next life of the agent find such jobs and hand them to
`MigrationCore.adopt_job`, which ends each with a reported outcome.
Files are replaced atomically, so a crash mid-write leaves the old one or none.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("novacron.journal")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    vm: str
    migration_id: str
    target: str


class MigrationJournal:
    """Entries under `directory`, one per VM with an outbound migration in flight."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, entry: JournalEntry) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(entry.vm)
        tmp = path.with_suffix(".tmp")
        data = {"vm": entry.vm, "migration_id": entry.migration_id, "target": entry.target}
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def forget(self, vm: str, migration_id: str) -> None:
        """Remove `vm`'s entry if it is still the one for `migration_id`."""
        entry = self._read(self._path(vm))
        if entry is not None and entry.migration_id == migration_id:
            self._path(vm).unlink(missing_ok=True)

    def take_all(self) -> list[JournalEntry]:
        """Every entry left by an earlier life, removed from disk as it is returned."""
        if not self.directory.is_dir():
            return []
        entries = []
        for path in sorted(self.directory.glob("*.json")):
            entry = self._read(path)
            if entry is not None:
                entries.append(entry)
            path.unlink(missing_ok=True)
        return entries

    def _path(self, vm: str) -> Path:
        return self.directory / f"{vm}.json"  # VM names are file-name safe (vmspec.NAME)

    @staticmethod
    def _read(path: Path) -> JournalEntry | None:
        try:
            data = json.loads(path.read_text())
            return JournalEntry(str(data["vm"]), str(data["migration_id"]), str(data["target"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fields = {"path": str(path), "why": str(exc)}
            log.warning("unreadable journal entry", extra={"fields": fields})
            return None
