"""Traces of migrations: W3C trace context and the spans a host's migration events make.

Pure rules: no clock, no randomness of its own (times and an RNG come in),
no I/O. `parse_traceparent`/`format_traceparent` are the W3C Trace Context
header (version 00); `MigrationSpans` turns the migration core's events into
finished spans:

- on the source, one span per migration (`migrate <vm>`) from the proposal
  to its end, with two children: `reservation` (the target's answer) and
  `libvirt job` (from the answer to the commit or abort); escalations and
  doubts are span events;
- on the target, `reserve <vm>` from the reservation to its release.

`start_span` begins any other span (a coordinator's request, a site command
on the host that runs it) under the context it came with.

A span's parent is the trace context the request came with (the API's
`traceparent` header on the source, the proposal's on the target), so one
operation is one trace across hosts; without one, the migration starts a
trace of its own.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .. import events as ev

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class SpanContext:
    trace_id: bytes  # 16 bytes, never all zero
    span_id: bytes  # 8 bytes, never all zero
    sampled: bool = True


def parse_traceparent(text: str | None) -> SpanContext | None:
    """A `traceparent` header's context, or None for a missing or invalid one (W3C says
    to start a new trace then, not to fail the request)."""
    match = _TRACEPARENT.fullmatch((text or "").strip())
    if match is None:
        return None
    trace_id, span_id = bytes.fromhex(match[1]), bytes.fromhex(match[2])
    if not any(trace_id) or not any(span_id):
        return None
    return SpanContext(trace_id, span_id, bool(int(match[3], 16) & 1))


def format_traceparent(context: SpanContext) -> str:
    flags = "01" if context.sampled else "00"
    return f"00-{context.trace_id.hex()}-{context.span_id.hex()}-{flags}"


class SpanKind(IntEnum):  # OTLP's numbers
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


@dataclass(slots=True)
class Span:
    context: SpanContext
    parent_span_id: bytes  # empty for a trace's root
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None  # None: ended well


def new_id(rng: random.Random, size: int) -> bytes:
    while True:
        value = rng.getrandbits(8 * size).to_bytes(size, "big")
        if any(value):
            return value


def start_span(
    name: str, kind: SpanKind, now_ns: int, parent: SpanContext | None, rng: random.Random
) -> Span:
    """A span begun at `now_ns`: a child of `parent`, or the root of a new trace."""
    trace_id = parent.trace_id if parent else new_id(rng, 16)
    context = SpanContext(trace_id, new_id(rng, 8), parent.sampled if parent else True)
    return Span(context, parent.span_id if parent else b"", name, kind, now_ns)


@dataclass(slots=True)
class _Open:
    root: Span
    step: Span | None  # the open child: the reservation, then the libvirt job


class MigrationSpans:
    """The spans of this host's migrations, built from the core's events as they come."""

    def __init__(self, node_id: str, rng: random.Random) -> None:
        self.node_id = node_id
        self._rng = rng
        self._parents: dict[str, SpanContext] = {}  # vm -> context its next migration joins
        self._open: dict[str, _Open] = {}  # migration id -> spans not ended yet

    def expect(self, vm: str, parent: SpanContext) -> None:
        """`vm`'s next migration belongs to the trace of `parent` (the request that asked)."""
        self._parents[vm] = parent

    def context_of(self, migration_id: str) -> SpanContext | None:
        """The context a message about `migration_id` carries to the other host."""
        held = self._open.get(migration_id)
        return held.root.context if held else None

    def on_event(self, event: object, now_ns: int, parent: SpanContext | None = None) -> list[Span]:
        """Spans `event` ended (handed to the exporter); `parent` for a target's reservation."""
        if isinstance(event, ev.MigrationProposed):
            self._begin(event, now_ns)
        elif isinstance(event, ev.ReservationMade):
            self._begin_reservation(event, now_ns, parent)
        elif isinstance(event, ev.MigrationAccepted):
            return self._step(event.migration_id, now_ns, "libvirt job")
        elif isinstance(event, ev.MigrationEscalated | ev.MigrationInDoubt):
            self._note(event, now_ns)
        elif isinstance(event, ev.MigrationCompleted):
            return self._end(event.migration_id, now_ns, None, {"duration_s": event.duration})
        elif isinstance(event, ev.MigrationFailed | ev.MigrationUndecided):
            return self._end(event.migration_id, now_ns, event.reason, {})
        elif isinstance(event, ev.MigrationRefused) and event.migration_id:
            return self._end(event.migration_id, now_ns, event.reason, {"refused_by": event.by})
        elif isinstance(event, ev.ReservationReleased):
            why = (
                None if event.outcome in ("committed", "settled") else event.reason or event.outcome
            )
            return self._end(event.migration_id, now_ns, why, {"outcome": event.outcome})
        elif isinstance(event, ev.ReservationRefused):
            self._begin_reservation(event, now_ns, parent)
            return self._end(event.migration_id, now_ns, event.reason, {})
        return []

    def _span(self, name: str, kind: SpanKind, now_ns: int, parent: SpanContext | None) -> Span:
        return start_span(name, kind, now_ns, parent, self._rng)

    def _begin(self, event: ev.MigrationProposed, now_ns: int) -> None:
        parent = self._parents.pop(event.vm, None)
        root = self._span(f"migrate {event.vm}", SpanKind.INTERNAL, now_ns, parent)
        root.attributes = {
            "novacron.migration_id": event.migration_id,
            "novacron.vm": event.vm,
            "novacron.source": event.source,
            "novacron.target": event.target,
        }
        step = self._span("reservation", SpanKind.CLIENT, now_ns, root.context)
        step.attributes = {"novacron.target": event.target}
        self._open[event.migration_id] = _Open(root, step)

    def _begin_reservation(
        self,
        event: ev.ReservationMade | ev.ReservationRefused,
        now_ns: int,
        parent: SpanContext | None,
    ) -> None:
        root = self._span(f"reserve {event.vm}", SpanKind.SERVER, now_ns, parent)
        root.attributes = {
            "novacron.migration_id": event.migration_id,
            "novacron.vm": event.vm,
            "novacron.source": event.source,
            "novacron.target": self.node_id,
        }
        self._open[event.migration_id] = _Open(root, None)

    def _step(self, migration_id: str, now_ns: int, name: str) -> list[Span]:
        held = self._open.get(migration_id)
        if held is None:
            return []
        done = []
        if held.step is not None:
            held.step.end_ns = now_ns
            done.append(held.step)
        held.step = self._span(name, SpanKind.INTERNAL, now_ns, held.root.context)
        return done

    def _note(self, event: ev.MigrationEscalated | ev.MigrationInDoubt, now_ns: int) -> None:
        held = self._open.get(event.migration_id)
        if held is None:
            return
        if isinstance(event, ev.MigrationEscalated):
            detail: dict[str, Any] = {"step": event.step, "reason": event.reason}
            held.root.events.append((now_ns, "escalated", detail))
        else:
            held.root.events.append((now_ns, "in doubt", {"reason": event.reason}))

    def _end(
        self, migration_id: str, now_ns: int, error: str | None, attributes: dict[str, Any]
    ) -> list[Span]:
        held = self._open.pop(migration_id, None)
        if held is None:
            return []
        held.root.attributes.update({f"novacron.{k}": v for k, v in attributes.items()})
        done = []
        if held.step is not None:
            held.step.end_ns, held.step.error = now_ns, error
            done.append(held.step)
        held.root.end_ns, held.root.error = now_ns, error
        done.append(held.root)
        return done
