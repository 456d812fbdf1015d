"""One migration as this host shows it: what the API lists, the drain and the rebalancer read.

The migration core's `MigrationInfo`, with what only the driver knows: how
long it has run, the switchover limit it was given, and libvirt's latest job
sample. `to_json` is the API's shape (`nova migrations --json`), with wall-clock
times as the source stamped them, so a migration reads the same on both hosts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .core.events import MigrationProgressed
from .core.migration.saga import MigrationInfo


@dataclass(frozen=True, slots=True)
class MigrationRow:
    info: MigrationInfo
    elapsed_s: float  # since it was proposed, until it ended (or now)
    max_downtime_ms: int | None = None  # the switchover limit it got (None on the target)
    sample: MigrationProgressed | None = None  # libvirt's latest job statistics

    def to_json(self) -> dict[str, Any]:
        info = self.info
        row = dataclasses.asdict(info)
        row["elapsed_s"] = self.elapsed_s
        row["started"] = iso(info.started_at)
        row["ended"] = iso(info.ended_at)
        del row["started_at"], row["ended_at"]
        row["max_downtime_ms"] = self.max_downtime_ms
        sample = self.sample
        row["stats"] = None
        if sample is not None:
            row["stats"] = {
                "phase": sample.phase,
                "data_remaining": sample.data_remaining,
                "bandwidth": sample.bandwidth,
                "dirty_rate": sample.dirty_rate,
                "iteration": sample.iteration,
                "expected_downtime_ms": sample.expected_downtime_ms,
            }
        return row


def iso(wall: float | None) -> str | None:
    """A wall-clock time as the API shows it: ISO 8601 UTC, milliseconds (None stays None)."""
    if not wall:
        return None
    moment = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")
