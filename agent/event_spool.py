"""Events waiting for their sink, on disk, in order, within a size bound.

The event stream must lose nothing while its sink (NATS) is away, survive
the agent being killed, and never fill the disk. So each event is appended,
as one JSON line with its sequence number, to the newest of a few segment
files (`seg-<first seq>.jsonl`) before anything tries to deliver it, and a
cursor file (`cursor.json`) says up to which sequence number the sink has
it. A segment whose events are all delivered is deleted. When the spool
outgrows `max_bytes`, its oldest segment goes although undelivered: those
events are counted in `dropped` (kept in the cursor file, shown by `nova
status` and /metrics), and the stream goes on with the newer ones.

Writes go straight to the file (no user-space buffer), so a killed agent
loses nothing it has spooled; a torn last line (the kill came mid-write) is
cut off at the next start. The cursor is written after a batch is
delivered, so after a crash a few events may be delivered again: the sink
deduplicates them by event id.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("novacron.events")

SEGMENTS = 8  # a full spool holds about this many segments; dropping one drops 1/8 of it


@dataclass(frozen=True, slots=True)
class Spooled:
    seq: int
    event: dict[str, Any]


@dataclass(slots=True)
class _Segment:
    first: int  # sequence number of its first event
    path: Path
    size: int
    last: int  # sequence number of its last event (first - 1 when empty)


class EventSpool:
    """Events in `directory`, oldest first; at most about `max_bytes` on disk."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < 4096:
            raise ValueError(f"event spool of {max_bytes} bytes is too small (4096 at least)")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1024, max_bytes // SEGMENTS)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cursor = self._read_cursor()
        self.delivered_seq: int = cursor.get("delivered", 0)
        self.dropped: int = cursor.get("dropped", 0)
        self._segments: list[_Segment] = []
        for path in sorted(directory.glob("seg-*.jsonl")):
            segment = self._recover(path)
            if segment.last >= segment.first:
                self._segments.append(segment)
            else:
                path.unlink()  # nothing in it (cut at its first line)
        self.last_seq = max([s.last for s in self._segments] + [self.delivered_seq])
        self._forget_delivered()

    # --- writing ---------------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> int:
        """Spool `event`; returns its sequence number."""
        seq = self.last_seq + 1
        line = (json.dumps({"seq": seq, "event": event}, separators=(",", ":")) + "\n").encode()
        tail = self._tail()
        if tail is None or tail.size >= self.segment_bytes:
            tail = _Segment(seq, self.directory / f"seg-{seq:020d}.jsonl", 0, seq - 1)
            self._segments.append(tail)
        fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        tail.size += len(line)
        tail.last = seq
        self.last_seq = seq
        self._bound()
        return seq

    # --- reading ---------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Events spooled and not yet delivered."""
        return self.last_seq - self.delivered_seq

    def pending(self, limit: int) -> list[Spooled]:
        """Up to `limit` undelivered events, oldest first."""
        out: list[Spooled] = []
        for segment in self._segments:
            if segment.last <= self.delivered_seq:
                continue
            for item in _lines(segment.path):
                if item.seq > self.delivered_seq:
                    out.append(item)
                    if len(out) >= limit:
                        return out
        return out

    def delivered(self, seq: int) -> None:
        """The sink has every event up to `seq`."""
        if seq <= self.delivered_seq:
            return
        self.delivered_seq = min(seq, self.last_seq)
        self._forget_delivered()
        self._write_cursor()

    # --- bounds and files ------------------------------------------------------------------

    def _tail(self) -> _Segment | None:
        return self._segments[-1] if self._segments else None

    def _bound(self) -> None:
        """Drop the oldest segments while the spool is over its size (never the newest)."""
        while len(self._segments) > 1 and sum(s.size for s in self._segments) > self.max_bytes:
            oldest = self._segments.pop(0)
            lost = max(0, oldest.last - max(self.delivered_seq, oldest.first - 1))
            if lost:
                self.dropped += lost
                log.warning(
                    "event spool full: %d undelivered events dropped (%d in all)",
                    lost,
                    self.dropped,
                )
            self.delivered_seq = max(self.delivered_seq, oldest.last)
            oldest.path.unlink(missing_ok=True)
            self._write_cursor()

    def _forget_delivered(self) -> None:
        while len(self._segments) > 1 and self._segments[0].last <= self.delivered_seq:
            self._segments.pop(0).path.unlink(missing_ok=True)

    def _recover(self, path: Path) -> _Segment:
        """A segment as found on disk, a torn last line (a kill mid-write) cut off."""
        data = path.read_bytes()
        good = data.rfind(b"\n") + 1
        items = list(_parse(data[:good]))
        if good < len(data):
            with path.open("r+b") as handle:
                handle.truncate(good)
            log.warning("event spool: a torn last line cut from %s", path.name)
        first = int(path.stem.removeprefix("seg-"))
        return _Segment(first, path, good, items[-1].seq if items else first - 1)

    def _read_cursor(self) -> dict[str, int]:
        path = self.directory / "cursor.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("event spool: cursor unreadable (%s); delivering from the start", exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int) and v >= 0}

    def _write_cursor(self) -> None:
        path = self.directory / "cursor.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delivered": self.delivered_seq, "dropped": self.dropped}))
        os.replace(tmp, path)


def _lines(path: Path) -> list[Spooled]:
    try:
        return list(_parse(path.read_bytes()))
    except FileNotFoundError:
        return []


def _parse(data: bytes) -> list[Spooled]:
    out = []
    for raw in data.splitlines():
        try:
            item = json.loads(raw)
            out.append(Spooled(int(item["seq"]), dict(item["event"])))
        except (ValueError, KeyError, TypeError):
            log.warning("event spool: an unreadable line skipped")
    return out
