"""The agent's traces: migration spans from the core's events, out over OTLP/HTTP.

Off unless `tracing_otlp` names a collector. The spans are made by
`core.tracing.MigrationSpans`; this shell gives it the wall clock and the
trace context that crosses hosts: a migration requested through the API
joins the trace of the request's `traceparent` header; the proposal carries
the migration's context to the target (`MigrationPropose.traceparent`), whose
reservation span joins it, so one migration is one trace from both agents.
A coordinator's command gets a span of its own on the host that runs it
(`begin`/`end`), under the coordinator request's context; a migration it
starts is that span's child. A drain is a span too, from its start until the
host is empty (or undrained), with every migration it starts as a child.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from novacron.protocol.messages import Message, MigrationPropose

from .core import events as ev
from .core.observability.tracing import (
    MigrationSpans,
    Span,
    SpanContext,
    SpanKind,
    format_traceparent,
    parse_traceparent,
    start_span,
)
from .otlp import ExporterStatus, OtlpExporter


class Tracing:
    def __init__(
        self,
        node_id: str,
        exporter: OtlpExporter,
        wall_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.exporter = exporter
        self._rng = rng or random.SystemRandom()
        self.spans = MigrationSpans(node_id, self._rng)
        self._wall_ns = wall_ns
        self._asked: dict[str, SpanContext] = {}  # migration id -> the source's context

    def expect(self, vm: str, traceparent: str | None) -> None:
        """`vm`'s next migration was asked by a request with this `traceparent` header."""
        context = parse_traceparent(traceparent)
        if context is not None:
            self.spans.expect(vm, context)

    def begin(
        self,
        name: str,
        traceparent: str,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.SERVER,
    ) -> Span:
        """A span for work asked with `traceparent` (a coordinator's command), or begun
        here (a drain: `kind` INTERNAL, no parent)."""
        parent = parse_traceparent(traceparent)
        span = start_span(name, kind, self._wall_ns(), parent, self._rng)
        span.attributes = attributes
        return span

    def adopt(self, span: Span, vms: Sequence[str]) -> None:
        """The next migration of each of `vms` is a child of `span` (a drain, a round)."""
        for vm in vms:
            self.spans.expect(vm, span.context)

    def end(self, span: Span, error: str | None) -> None:
        span.end_ns, span.error = self._wall_ns(), error
        self.exporter.add([span])

    def on_event(self, event: object) -> None:
        parent = None
        if isinstance(event, ev.ReservationMade | ev.ReservationRefused):
            parent = self._asked.pop(event.migration_id, None)
        self.exporter.add(self.spans.on_event(event, self._wall_ns(), parent))

    def outgoing(self, message: Message) -> Message:
        """`message` with this migration's trace context, if it is a proposal."""
        if isinstance(message, MigrationPropose):
            context = self.spans.context_of(message.migration_id)
            if context is not None:
                return dataclasses.replace(message, traceparent=format_traceparent(context))
        return message

    def incoming(self, message: Message) -> None:
        """Note the trace context a proposal came with, for the reservation it leads to."""
        if isinstance(message, MigrationPropose):
            context = parse_traceparent(message.traceparent)
            if context is not None:
                self._asked[message.migration_id] = context
                if len(self._asked) > 1024:  # proposals never answered must not pile up
                    self._asked.pop(next(iter(self._asked)))

    def status(self) -> ExporterStatus:
        return self.exporter.status()

    async def run(self) -> None:
        await self.exporter.run()

    async def close(self) -> None:
        await self.exporter.flush()
