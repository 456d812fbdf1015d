"""The agent's event stream: the CloudEvents catalogue, the spool, and a real NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.config import ConfigError, load
from novacron.agent.core import events as ev
from novacron.agent.core.observability.cloud_events import (
    DrainChanged,
    RebalanceMoved,
    RebalanceRefused,
    VmChanged,
    catalogue,
    cloud_event,
)
from novacron.agent.event_spool import EventSpool
from novacron.agent.event_stream import EventStream, NatsSink
from novacron.agent.nats_publish import FAILURES, NatsError, NatsPublisher
from tests.nats_server import NatsServer, wait_for

ROOT = Path(__file__).resolve().parent.parent
STREAM = "NOVACRON_EVENTS"


# --- the catalogue -------------------------------------------------------------------------


def test_a_failed_member_is_a_cloud_event_with_every_required_attribute() -> None:
    out = cloud_event(
        ev.MemberFailed("h2", 3, by="h1"), source_node="h1", event_id="h1.1.7", at=1_800_000_000.25
    )
    assert out == {
        "specversion": "1.0",
        "id": "h1.1.7",
        "source": "/novacron/host/h1",
        "type": "io.novacron.member.failed",
        "subject": "h2",
        "time": "2027-01-15T08:00:00.250Z",
        "datacontenttype": "application/json",
        "data": {"node_id": "h2", "incarnation": 3, "by": "h1"},
    }


def test_every_event_the_stream_carries_is_json_and_records_are_not_streamed() -> None:
    completed = ev.MigrationCompleted("m1", "vm1", "h1", "h2", 4.5)
    undecided = ev.MigrationUndecided("m2", "vm2", "no host answered", candidates=("h2", "h3"))
    created = VmChanged("vm3", "created", {"uuid": "u", "host": "h1"})
    for event in (completed, undecided, created):
        out = cloud_event(event, source_node="h1", event_id="x", at=0.0)
        assert out is not None
        json.dumps(out)  # plain JSON values only
    out = cloud_event(undecided, source_node="h1", event_id="x", at=0.0)
    assert out is not None and out["data"]["candidates"] == ["h2", "h3"]
    for quiet in (ev.RecordRejected("h2", 1, "stale"), VmChanged("vm", "renamed", {})):
        assert cloud_event(quiet, source_node="h1", event_id="x", at=0) is None


def test_the_readme_lists_every_type_of_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`(io\.novacron\.[a-z.-]+)`", readme))
    assert set(catalogue()) <= listed, sorted(set(catalogue()) - listed)


# --- the spool -----------------------------------------------------------------------------


def _event(n: int) -> dict[str, object]:
    return {"id": f"e{n}", "type": "io.novacron.member.joined", "data": {"n": n}}


def test_the_spool_keeps_order_across_a_restart_and_forgets_what_was_delivered(
    tmp_path: Path,
) -> None:
    spool = EventSpool(tmp_path, max_bytes=64 * 1024)
    for n in range(1, 11):
        assert spool.append(_event(n)) == n
    spool.delivered(4)
    again = EventSpool(tmp_path, max_bytes=64 * 1024)  # the agent restarted
    assert [item.event["id"] for item in again.pending(100)] == [f"e{n}" for n in range(5, 11)]
    assert again.append(_event(11)) == 11  # numbering goes on
    again.delivered(11)
    assert again.pending(100) == [] and again.backlog == 0
    assert EventSpool(tmp_path, max_bytes=64 * 1024).backlog == 0


def test_a_line_torn_by_a_kill_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, max_bytes=64 * 1024)
    for n in range(1, 4):
        spool.append(_event(n))
    segment = next(tmp_path.glob("seg-*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"seq":4,"event":{"id":"e4"')  # the kill came mid-write
    again = EventSpool(tmp_path, max_bytes=64 * 1024)
    assert [item.seq for item in again.pending(100)] == [1, 2, 3]
    assert again.append(_event(4)) == 4
    assert [item.event["id"] for item in again.pending(100)] == ["e1", "e2", "e3", "e4"]


def test_a_full_spool_drops_its_oldest_events_counts_them_and_stays_in_bound(
    tmp_path: Path,
) -> None:
    bound = 8 * 1024
    spool = EventSpool(tmp_path, max_bytes=bound)
    for n in range(1, 2001):
        spool.append(_event(n))
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("seg-*.jsonl"))
    assert on_disk <= bound + spool.segment_bytes
    kept = [item.seq for item in spool.pending(10_000)]
    assert kept == list(range(kept[0], 2001))  # the newest, in order, no hole
    assert spool.dropped == kept[0] - 1 > 0
    assert EventSpool(tmp_path, max_bytes=bound).dropped == spool.dropped  # survives a restart


def test_a_spool_too_small_to_hold_anything_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        EventSpool(tmp_path, max_bytes=100)


# --- a real NATS JetStream -----------------------------------------------------------------


def _stream(tmp_path: Path, server: NatsServer) -> EventStream:
    sink = NatsSink(server.url, STREAM, "novacron.events", timeout=2.0)
    return EventStream("h1", EventSpool(tmp_path / "spool", max_bytes=1 << 20), sink)


def _members(first: int, count: int) -> list[ev.MemberJoined]:
    return [ev.MemberJoined(f"h{n}", n) for n in range(first, first + count)]


@contextlib.asynccontextmanager
async def _delivering(stream: EventStream) -> AsyncIterator[None]:
    task = asyncio.create_task(stream.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.close()


async def test_events_arrive_in_jetstream_in_order_each_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    stream = _stream(tmp_path, nats_server)
    async with _delivering(stream):
        for event in _members(1, 40):
            stream.emit(event)
        await wait_for(lambda: stream.spool.backlog == 0, 30, "the 40 events were not delivered")
    held = await nats_server.messages(STREAM)
    assert [body["subject"] for _, body in held] == [f"h{n}" for n in range(1, 41)]
    assert {subject for subject, _ in held} == {"novacron.events.member.joined"}
    assert len({body["id"] for _, body in held}) == 40


async def test_events_emitted_while_nats_is_down_arrive_after_it_returns_in_order_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    stream = _stream(tmp_path, nats_server)
    async with _delivering(stream):
        for event in _members(1, 5):
            stream.emit(event)
        await wait_for(lambda: stream.spool.backlog == 0, 30, "the first events were not delivered")
        nats_server.stop()
        for event in _members(6, 20):
            stream.emit(event)
        await wait_for(lambda: stream.last_error is not None, 30, "the outage was not noticed")
        assert stream.spool.backlog == 20  # kept, not lost
        assert stream.status().last_error
        nats_server.start()
        await wait_for(lambda: stream.spool.backlog == 0, 60, "the backlog was not delivered")
    held = await nats_server.messages(STREAM)
    assert [body["subject"] for _, body in held] == [f"h{n}" for n in range(1, 26)]


async def test_a_redelivery_after_a_lost_cursor_is_stored_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    stream = _stream(tmp_path, nats_server)
    async with _delivering(stream):
        for event in _members(1, 10):
            stream.emit(event)
        await wait_for(lambda: stream.spool.backlog == 0, 30, "the events were not delivered")
    # The agent died after publishing but before its cursor reached the disk: the next life
    # offers the same events, with the same ids, again.
    (tmp_path / "spool" / "cursor.json").unlink()
    again = _stream(tmp_path, nats_server)
    assert again.spool.backlog == 10
    async with _delivering(again):
        await wait_for(lambda: again.spool.backlog == 0, 30, "the redelivery did not end")
    held = await nats_server.messages(STREAM)
    assert [body["subject"] for _, body in held] == [f"h{n}" for n in range(1, 11)]


# --- the settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("events_nats", "http://nats:4222", "must be a nats:// or tls:// URL"),
        ("events_subject", "novacron.>", "is not a NATS subject prefix"),
        ("events_subject", "a..b", "is not a NATS subject prefix"),
        ("events_stream", "has space", "is not a JetStream stream name"),
        ("events_spool_mib", 0, "between 1 and 65536"),
    ],
)
def test_a_bad_event_setting_is_refused_by_name(
    tmp_path: Path, setting: str, value: object, says: str
) -> None:
    with pytest.raises(ConfigError, match=f"{setting}.*{re.escape(says)}|{re.escape(says)}"):
        load({setting: value}, environ={}, config_file=str(_empty(tmp_path)))


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text("")
    return path


# --- what else the stream carries ----------------------------------------------------------


def test_rebalancing_moves_and_drains_are_events_too() -> None:
    moved = RebalanceMoved(("web-1", "web-2"), "h1", "h2", "h1 over its line", ("m1", "m2"))
    out = cloud_event(moved, source_node="h1", event_id="x", at=0)
    assert out is not None and out["type"] == "io.novacron.rebalance.moved"
    assert out["subject"] == "web-1+web-2" and out["data"]["migration_ids"] == ["m1", "m2"]
    refused = RebalanceRefused(("db",), "h3", "no capacity: h3 has 1 GiB free")
    assert cloud_event(refused, source_node="h1", event_id="x", at=0)["type"].endswith(  # type: ignore[index]
        "rebalance.refused"
    )
    drained = cloud_event(DrainChanged("h1", "started"), source_node="h1", event_id="x", at=0)
    assert drained is not None and (drained["type"], drained["subject"]) == (
        "io.novacron.drain.started",
        "h1",
    )


def test_a_migrations_progress_goes_out_at_most_every_ten_seconds(tmp_path: Path) -> None:
    clock = [1000.0]
    stream = EventStream(
        "h1", EventSpool(tmp_path, max_bytes=1 << 20), NatsSink("nats://127.0.0.1:9", "S", "x"),
        wall=lambda: clock[0],
    )  # fmt: skip
    for _ in range(30):  # a sample a second for 30 s
        stream.emit(ev.MigrationProgressed("m1", "vm1", "h1", "h2", 50.0, "precopy"))
        clock[0] += 1.0
    stream.emit(ev.MigrationCompleted("m1", "vm1", "h1", "h2", 30.0))
    kinds = [item.event["type"] for item in stream.spool.pending(100)]
    assert kinds == ["io.novacron.migration.progressed"] * 3 + ["io.novacron.migration.completed"]


# --- the agent's own NATS client: what a server sends is untrusted input --------------------


async def _answer_to_request(data: bytes) -> dict[str, object]:
    publisher = NatsPublisher("nats://127.0.0.1:4222")
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    publisher._reader = reader  # a connection whose server sends `data`

    class Sink:
        def write(self, _data: bytes) -> None: ...

        async def drain(self) -> None: ...

    publisher._writer = Sink()  # type: ignore[assignment]
    return await publisher.request("novacron.events.x", b"{}")


@given(st.binary(max_size=300))
async def test_anything_a_server_sends_gives_an_answer_or_a_nats_error(data: bytes) -> None:
    with contextlib.suppress(*FAILURES):  # and nothing else: no IndexError, no KeyError
        await _answer_to_request(data)


async def test_a_server_without_jetstream_is_named_as_such() -> None:
    reply = b"HMSG _INBOX.x.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    publisher = NatsPublisher("nats://127.0.0.1:4222")
    publisher._inbox = "_INBOX.x"
    reader = asyncio.StreamReader()
    reader.feed_data(b"PING\r\n" + reply)
    reader.feed_eof()
    publisher._reader = reader
    sent: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            sent.append(data)

        async def drain(self) -> None: ...

    publisher._writer = Sink()  # type: ignore[assignment]
    with pytest.raises(NatsError, match="is JetStream on"):
        await publisher.request("novacron.events.x", b"{}", {"Nats-Msg-Id": "e1"})
    assert sent[0].startswith(b"HPUB novacron.events.x _INBOX.x.1 ") and b"PONG\r\n" in sent
