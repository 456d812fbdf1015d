"""Traces: W3C trace context, the spans of a migration, and OTLP/HTTP protobuf that
OpenTelemetry's own generated classes decode, sent to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from novacron.agent.core import events as ev
from novacron.agent.core.observability.tracing import (
    MigrationSpans,
    Span,
    SpanContext,
    SpanKind,
    format_traceparent,
    parse_traceparent,
)
from novacron.agent.otlp import OtlpExporter, encode_request

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_traceparent_round_trips_and_a_bad_one_starts_a_new_trace() -> None:
    context = parse_traceparent(PARENT)
    assert context is not None and format_traceparent(context) == PARENT
    for bad in (
        None,
        "",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    ):
        assert parse_traceparent(bad) is None, bad


@given(st.text(max_size=80))
def test_any_header_text_parses_or_is_none(text: str) -> None:
    context = parse_traceparent(text)
    assert context is None or format_traceparent(context) == text.strip()


def _source_migration(spans: MigrationSpans, outcome: object) -> list[Span]:
    done = []
    done += spans.on_event(ev.MigrationProposed("m1", "vm1", "h1", "h2"), 1_000)
    done += spans.on_event(ev.MigrationAccepted("m1", "vm1", "h2", 0.0), 2_000)
    done += spans.on_event(ev.MigrationEscalated("m1", "vm1", "postcopy", "slow"), 3_000)
    done += spans.on_event(outcome, 4_000)
    return done


def test_a_committed_migration_is_one_trace_under_the_request_that_asked() -> None:
    spans = MigrationSpans("h1", random.Random(1))
    parent = parse_traceparent(PARENT)
    assert parent is not None
    spans.expect("vm1", parent)
    done = _source_migration(spans, ev.MigrationCompleted("m1", "vm1", "h1", "h2", 3.0))
    by_name = {s.name: s for s in done}
    assert set(by_name) == {"reservation", "libvirt job", "migrate vm1"}
    root = by_name["migrate vm1"]
    assert root.context.trace_id == parent.trace_id and root.parent_span_id == parent.span_id
    for child in ("reservation", "libvirt job"):
        assert by_name[child].parent_span_id == root.context.span_id
        assert by_name[child].context.trace_id == parent.trace_id
    assert (by_name["reservation"].start_ns, by_name["reservation"].end_ns) == (1_000, 2_000)
    assert (by_name["libvirt job"].start_ns, by_name["libvirt job"].end_ns) == (2_000, 4_000)
    assert root.error is None and [e[1] for e in root.events] == ["escalated"]
    assert root.attributes["novacron.target"] == "h2"


def test_a_failed_migration_ends_its_spans_as_errors_and_a_target_joins_the_trace() -> None:
    source = MigrationSpans("h1", random.Random(2))
    source.on_event(ev.MigrationProposed("m1", "vm1", "h1", "h2"), 1_000)
    context = source.context_of("m1")
    assert context is not None
    target = MigrationSpans("h2", random.Random(3))
    target.on_event(ev.ReservationMade("m1", "vm1", "h1", 512, 9.0), 1_500, parent=context)
    (reserve,) = target.on_event(ev.ReservationReleased("m1", "vm1", "h1", "aborted", "no"), 3_000)
    done = source.on_event(ev.MigrationFailed("m1", "vm1", "h1", "h2", "libvirt said no"), 3_000)
    assert {s.error for s in done} == {"libvirt said no"}
    assert reserve.context.trace_id == context.trace_id
    assert reserve.parent_span_id == context.span_id and reserve.kind is SpanKind.SERVER
    assert reserve.error == "no"
    assert source.context_of("m1") is None  # nothing left open


def _decoded(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def test_the_protobuf_is_what_opentelemetrys_own_classes_read() -> None:
    span = Span(
        SpanContext(bytes(range(1, 17)), bytes(range(1, 9))),
        b"\x09" * 8,
        "migrate vm1",
        SpanKind.INTERNAL,
        1_700_000_000_000_000_000,
        1_700_000_003_500_000_000,
        {"novacron.vm": "vm1", "novacron.duration_s": 3.5, "n": -2, "ok": True},
        [(1_700_000_001_000_000_000, "escalated", {"step": "postcopy"})],
        "it broke",
    )
    request = _decoded(encode_request("nova-agent", "h1", [span]))
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "nova-agent", "host.name": "h1"}
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "novacron"
    (out,) = scope_spans.spans
    assert out.trace_id == bytes(range(1, 17)) and out.span_id == bytes(range(1, 9))
    assert out.parent_span_id == b"\x09" * 8 and out.name == "migrate vm1" and out.kind == 1
    assert (out.start_time_unix_nano, out.end_time_unix_nano) == (span.start_ns, span.end_ns)
    attributes = {a.key: a.value for a in out.attributes}
    assert attributes["novacron.vm"].string_value == "vm1"
    assert attributes["novacron.duration_s"].double_value == 3.5
    assert attributes["n"].int_value == -2 and attributes["ok"].bool_value is True
    (event,) = out.events
    assert (event.name, event.attributes[0].value.string_value) == ("escalated", "postcopy")
    assert (out.status.code, out.status.message) == (2, "it broke")
    assert out.flags == 1


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def test_the_exporter_posts_every_span_and_counts_what_it_could_not(
    collector: tuple[str, list[bytes]],
) -> None:
    url, received = collector
    exporter = OtlpExporter(url, "h1")
    spans = MigrationSpans("h1", random.Random(4))
    exporter.add(_source_migration(spans, ev.MigrationCompleted("m1", "vm1", "h1", "h2", 3.0)))
    await exporter.flush()
    names = [
        s.name for body in received for s in _decoded(body).resource_spans[0].scope_spans[0].spans
    ]
    assert sorted(names) == ["libvirt job", "migrate vm1", "reservation"]
    assert (exporter.exported, exporter.dropped) == (3, 0)
    gone = OtlpExporter("http://127.0.0.1:9", "h1")  # nothing listens on the discard port
    gone.add(_source_migration(MigrationSpans("h1", random.Random(5)), ev.MigrationFailed(
        "m1", "vm1", "h1", "h2", "no")))  # fmt: skip
    await asyncio.wait_for(gone.flush(), 60)
    assert (gone.exported, gone.dropped) == (0, 3) and gone.last_error


def test_an_endpoint_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OtlpExporter("grpc://collector:4317", "h1")
