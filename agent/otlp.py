"""Spans out over OTLP/HTTP (protobuf), with no OpenTelemetry SDK in the agent.

The SDK and its exporter cost an idle agent about 14 MiB of RSS, which the
agent's footprint goal cannot carry, so the few messages of OTLP's trace
service the agent sends are encoded here by hand: `ExportTraceServiceRequest`
> `ResourceSpans` > `ScopeSpans` > `Span` (with attributes, events and
status), field numbers from opentelemetry-proto's `trace.proto`. The tests
decode what this writes with the official generated classes.

`OtlpExporter` batches finished spans (at most `BATCH` per request, one
request at a time) and POSTs them to `<endpoint>/v1/traces`; spans that
cannot be sent after one retry are dropped and counted, and at most
`QUEUE` wait: tracing is for looking, it must never hold the agent up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from .core.observability.tracing import Span
from .tasks import wait_event

log = logging.getLogger("novacron.tracing")

BATCH = 128  # spans per request
QUEUE = 2048  # spans waiting; older ones are dropped beyond it
FLUSH_EVERY = 2.0  # seconds a span waits at most before its batch is sent
TIMEOUT = 10.0  # seconds for one request


# --- protobuf, the subset OTLP needs ------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64s are ten bytes, as protobuf writes them
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    return _bytes(number, text.encode())


def _fixed64(number: int, value: int) -> bytes:
    return _key(number, 1) + struct.pack("<Q", value)


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return _uint(2, int(value))
    if isinstance(value, int):
        return _uint(3, value)
    if isinstance(value, float):
        return _key(4, 1) + struct.pack("<d", value)
    return _text(1, str(value))


def _attributes(number: int, attributes: dict[str, Any]) -> bytes:
    return b"".join(
        _bytes(number, _text(1, key) + _bytes(2, _any_value(value)))
        for key, value in attributes.items()
    )


def encode_span(span: Span) -> bytes:
    out = _bytes(1, span.context.trace_id) + _bytes(2, span.context.span_id)
    if span.parent_span_id:
        out += _bytes(4, span.parent_span_id)
    out += _text(5, span.name) + _uint(6, int(span.kind))
    out += _fixed64(7, span.start_ns) + _fixed64(8, max(span.end_ns, span.start_ns))
    out += _attributes(9, span.attributes)
    for at, name, attributes in span.events:
        out += _bytes(11, _fixed64(1, at) + _text(2, name) + _attributes(3, attributes))
    status = _uint(3, 1) if span.error is None else _text(2, span.error) + _uint(3, 2)
    out += _bytes(15, status)
    if span.context.sampled:
        out += _key(16, 5) + struct.pack("<I", 1)  # flags: sampled
    return out


def encode_request(service: str, node_id: str, spans: Iterable[Span]) -> bytes:
    """An `ExportTraceServiceRequest` of `spans`, from service `service` on host `node_id`."""
    resource = _attributes(1, {"service.name": service, "host.name": node_id})
    scope = _text(1, "novacron")  # InstrumentationScope.name
    scope_spans = _bytes(1, scope) + b"".join(_bytes(2, encode_span(s)) for s in spans)
    resource_spans = _bytes(1, resource) + _bytes(2, scope_spans)
    return _bytes(1, resource_spans)


# --- the exporter --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExporterStatus:
    """What `nova status` shows of the span exporter."""

    endpoint: str  # the collector
    exported: int  # spans it took since start
    dropped: int  # spans dropped: the queue was full while the collector was away
    last_error: str | None  # why the last send failed (None once one succeeds)

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "exported": self.exported,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


class OtlpExporter:
    """Finished spans to an OTLP/HTTP collector, batched, never blocking the caller."""

    def __init__(self, endpoint: str, node_id: str, service: str = "nova-agent") -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP endpoint {endpoint!r} is not an http:// or https:// URL")
        self.endpoint = endpoint
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._path = parts.path.rstrip("/") + "/v1/traces"
        self.node_id = node_id
        self.service = service
        self._queue: deque[Span] = deque()
        self._ready = asyncio.Event()
        self.exported = 0
        self.dropped = 0
        self.last_error: str | None = None

    def status(self) -> ExporterStatus:
        return ExporterStatus(self.endpoint, self.exported, self.dropped, self.last_error)

    def add(self, spans: Iterable[Span]) -> None:
        for span in spans:
            if len(self._queue) >= QUEUE:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(span)
        if len(self._queue) >= BATCH:
            self._ready.set()

    async def run(self) -> None:
        """Send batches for ever; cancel to stop (`flush` first to send what waits)."""
        while True:
            await wait_event(self._ready, FLUSH_EVERY)
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            body = encode_request(self.service, self.node_id, batch)
            for attempt in (1, 2):
                try:
                    await asyncio.wait_for(self._post(body), TIMEOUT)
                except (OSError, TimeoutError, h11.ProtocolError, RuntimeError) as exc:
                    self.last_error = f"{self.endpoint}: {exc or type(exc).__name__}"
                    if attempt == 2:
                        self.dropped += len(batch)
                        log.warning("traces not exported: %s", self.last_error)
                else:
                    self.exported += len(batch)
                    self.last_error = None
                    break

    async def _post(self, body: bytes) -> None:
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._tls)
        try:
            conn = h11.Connection(h11.CLIENT)
            headers = [
                ("Host", self._host),
                ("Content-Type", "application/x-protobuf"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
            writer.write(conn.send(h11.Request(method="POST", target=self._path, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    if not 200 <= event.status_code < 300:
                        raise RuntimeError(f"collector answered {event.status_code}")
                    return
                if isinstance(event, h11.ConnectionClosed):
                    raise RuntimeError("collector closed the connection without an answer")
        finally:
            writer.close()
