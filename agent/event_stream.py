"""The agent's event stream: domain events to CloudEvents, spooled, delivered in order.

`EventStream.emit` takes what the cores and the API say happened, turns it
into a CloudEvent (`core.cloud_events`), and spools it (`EventSpool`) before
returning, so nothing emitted is lost when the sink is away or the agent is
killed. `run` delivers the spool to the sink oldest first, one event at a
time: an event is published only after the one before it was acknowledged,
so the sink holds them in the order they happened. While the sink is
unreachable the loop waits (1 s, doubling to 30 s) and tries the same event
again; the spool grows meanwhile, within its bound.

A sink is anything with `publish(event_id, kind, body)` that raises
`SinkUnavailable` when it did not take the event; it must store an event it
is given twice (a retry after a lost acknowledgement) once, by its id. NATS
JetStream does that with the `Nats-Msg-Id` header within the stream's
duplicate window. A Kafka producer with idempotence enabled and the id as
the record key would fit the same interface; none is shipped, because no
Kafka broker runs where the tests run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .core.events import MigrationProgressed
from .core.observability.cloud_events import PREFIX, VmChanged, cloud_event
from .event_spool import EventSpool
from .nats_publish import FAILURES, NatsError, NatsPublisher
from .vms import VmCreated, VmDeleted, VmStarted, VmStopped
from .vmspec import VmSpec

if TYPE_CHECKING:
    from .api import VmLifecycle

log = logging.getLogger("novacron.events")

RETRY_FIRST = 1.0  # seconds before the first retry of a sink that failed
RETRY_MAX = 30.0  # and at most this long between retries
BATCH = 256  # events read from the spool at a time
PROGRESS_EVERY = 10.0  # seconds between two progress events of one migration
DUPLICATE_WINDOW = 3600.0  # seconds JetStream remembers ids: longer than any retry gap


class SinkUnavailable(Exception):
    """The sink did not take the event; it will be offered again."""


class EventSink(Protocol):
    name: str  # for status: "nats://host:4222 stream NOVACRON_EVENTS"

    async def publish(self, event_id: str, kind: str, body: bytes) -> None: ...

    async def close(self) -> None: ...


class NatsSink:
    """A NATS JetStream stream, created with its subjects if it does not exist.

    Subjects are `<prefix>.<type after io.novacron.>`, e.g.
    `novacron.events.member.failed`, so a consumer may take a subset.
    """

    def __init__(self, url: str, stream: str, subject_prefix: str, timeout: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self.name = f"{url} stream {stream}"
        self._conn: NatsPublisher | None = None

    async def publish(self, event_id: str, kind: str, body: bytes) -> None:
        subject = f"{self.subject_prefix}.{kind.removeprefix(PREFIX)}"
        try:
            async with asyncio.timeout(2 * self.timeout):
                conn = await self._connection()
                ack = await conn.request(subject, body, {"Nats-Msg-Id": event_id})
            if "error" in ack:
                raise NatsError(f"JetStream refused it: {ack['error']}")
        except TimeoutError as exc:
            await self.close()
            raise SinkUnavailable(f"{self.url}: no answer within {2 * self.timeout:g} s") from exc
        except FAILURES as exc:
            await self.close()
            why = str(exc) or type(exc).__name__
            raise SinkUnavailable(f"{self.url}: {why}") from exc

    async def _connection(self) -> NatsPublisher:
        if self._conn is not None and self._conn.connected:
            return self._conn
        await self.close()
        conn = NatsPublisher(self.url)
        await conn.connect()
        info = await conn.request(f"$JS.API.STREAM.INFO.{self.stream}", b"")
        if info.get("error", {}).get("code") == 404:
            config = {
                "name": self.stream,
                "subjects": [f"{self.subject_prefix}.>"],
                "duplicate_window": int(DUPLICATE_WINDOW * 1e9),  # nanoseconds
                "storage": "file",
            }
            info = await conn.request(
                f"$JS.API.STREAM.CREATE.{self.stream}", json.dumps(config).encode()
            )
        if "error" in info:
            raise NatsError(f"stream {self.stream}: {info['error']}")
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """What `nova status` shows of the event stream."""

    sink: str  # where events go
    backlog: int  # events kept on disk, not yet delivered
    delivered: int  # since start
    dropped: int  # events the spool let go (full)
    last_error: str | None  # why the sink is unreachable (None while it is not)
    last_error_at: float | None  # when that was (wall clock)

    def to_json(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "backlog": self.backlog,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class EventStream:
    """Emits this host's events into the spool and delivers them to `sink`."""

    def __init__(
        self,
        node_id: str,
        spool: EventSpool,
        sink: EventSink,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.spool = spool
        self.sink = sink
        self._wall = wall
        self._life = int(wall() * 1000)  # ids stay unique if the spool is wiped
        self._news = asyncio.Event()
        self.delivered = 0  # events delivered in this life
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._progress: dict[str, float] = {}  # migration id -> when its progress last went

    def emit(self, event: object) -> None:
        """Spool `event` if it is one the stream carries (the catalogue says which); a
        migration's progress at most once per `PROGRESS_EVERY` seconds."""
        if isinstance(event, MigrationProgressed) and not self._progress_due(event):
            return
        seq = self.spool.last_seq + 1
        out = cloud_event(
            event,
            source_node=self.node_id,
            event_id=f"{self.node_id}.{self._life}.{seq}",
            at=self._wall(),
        )
        if out is None:
            return
        try:
            self.spool.append(out)
        except OSError as exc:  # a full or read-only disk must not stop the agent
            log.error("event not spooled (%s): %s %s", exc, out["type"], out["subject"])
            return
        self._news.set()

    def _progress_due(self, event: MigrationProgressed) -> bool:
        now = self._wall()
        last = self._progress.get(event.migration_id)
        if last is not None and now - last < PROGRESS_EVERY:
            return False
        self._progress[event.migration_id] = now
        for old in [k for k, at in self._progress.items() if now - at > 600]:  # ended long ago
            del self._progress[old]
        return True

    async def run(self) -> None:
        """Deliver for ever, oldest first; cancel to stop."""
        wait = RETRY_FIRST
        while True:
            batch = self.spool.pending(BATCH)
            if not batch:
                self.spool.delivered(self.spool.last_seq)  # nothing readable is left
                self._news.clear()  # no await since `pending`: no emit slipped in between
                await self._news.wait()
                continue
            done = 0
            try:
                for item in batch:
                    body = json.dumps(item.event, separators=(",", ":")).encode()
                    await self.sink.publish(item.event["id"], item.event["type"], body)
                    done = item.seq
                    self.delivered += 1
            except SinkUnavailable as exc:
                self._failed(str(exc))
            finally:
                if done:
                    self.spool.delivered(done)
            if done == batch[-1].seq:
                wait = RETRY_FIRST
                self.last_error = None
            else:
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX)

    def _failed(self, why: str) -> None:
        if self.last_error is None:
            log.warning("event sink unreachable, events kept on disk: %s", why)
        self.last_error = why
        self.last_error_at = self._wall()

    def status(self) -> StreamStatus:
        """What `nova status` shows of the stream."""
        return StreamStatus(
            self.sink.name,
            self.spool.backlog,
            self.delivered,
            self.spool.dropped,
            self.last_error,
            self.last_error_at,
        )

    async def close(self) -> None:
        await self.sink.close()


class EmittingVms:
    """A `VmLifecycle` that also tells the stream each change it made (api.VmLifecycle)."""

    def __init__(self, inner: VmLifecycle, emit: Callable[[object], None]) -> None:
        self._inner = inner
        self._emit = emit

    async def create(self, spec: VmSpec, start: bool = False) -> VmCreated:
        done = await self._inner.create(spec, start)
        self._emit(VmChanged(done.name, "created", {"uuid": done.uuid, "host": done.host}))
        if done.started:
            self._emit(VmChanged(done.name, "started", {"host": done.host}))
        return done

    async def start(self, name: str) -> VmStarted:
        done = await self._inner.start(name)
        if done.started:  # not when it was running already
            self._emit(VmChanged(name, "started", {"host": done.host}))
        return done

    async def stop(self, name: str, timeout: float) -> VmStopped:
        done = await self._inner.stop(name, timeout)
        if done.stopped != "not running":
            self._emit(VmChanged(name, "stopped", {"how": done.stopped, "host": done.host}))
        return done

    async def delete(self, name: str, force: bool = False) -> VmDeleted:
        done = await self._inner.delete(name, force)
        if done.deleted:
            self._emit(VmChanged(name, "deleted", {"disks_removed": list(done.removed)}))
        return done
