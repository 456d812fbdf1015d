"""The coordinator's half of a site's stream: apply, ignore or resync a delta, sans-IO.

The rules are in `protocol/sitelink.py`: a delta is applied only when it is
the next one of the stream the coordinator holds for the site, or the first
delta (a snapshot start, seq 1) of a new stream; a delta at or below the
applied sequence of the held stream is a duplicate; anything else (a gap, a
stranger stream) asks the site for a new stream with a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from novacron.protocol.sitelink import Delta


class Verdict(Enum):
    APPLY = "apply"  # apply it, commit, then acknowledge it
    DUPLICATE = "duplicate"  # already applied: acknowledge again, change nothing
    RESYNC = "resync"  # apply nothing; ask for a new stream


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where the coordinator stands in a site's stream (persisted with the site)."""

    stream: str = ""  # "" before the site's first snapshot
    applied: int = 0  # the last sequence applied


@dataclass(frozen=True, slots=True)
class Applied:
    """What became of a delta once its transaction committed: the verdict, why (for a
    resync), and the keys of the pins it refused."""

    verdict: Verdict
    why: str = ""
    refused: tuple[str, ...] = ()


def judge(position: StreamPosition, delta: Delta) -> tuple[Verdict, str]:
    """What to do with `delta` given `position`, and why (for the log and the Resync)."""
    if delta.stream == position.stream and position.stream:
        if delta.seq <= position.applied:
            return Verdict.DUPLICATE, ""
        if delta.seq == position.applied + 1:
            return Verdict.APPLY, ""
        return Verdict.RESYNC, f"gap: expected {position.applied + 1}, got {delta.seq}"
    if delta.seq == 1 and delta.snapshot_start:
        return Verdict.APPLY, ""
    return Verdict.RESYNC, f"unknown stream {delta.stream[:40]!r} at seq {delta.seq}"


def advance(position: StreamPosition, delta: Delta) -> StreamPosition:
    """The position after applying `delta` (which `judge` said to apply)."""
    return StreamPosition(delta.stream, delta.seq)
