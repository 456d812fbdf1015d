"""The lab's events in NATS JetStream, through a 60 s outage of NATS while a VM moves;
and a migration's trace, exported by both agents over OTLP/HTTP.

Three lab hosts stream their events to a real `nats-server -js` running on h1
(in h1's namespaces, on its lab address). NATS is stopped; a guest migrates
h1 -> h2 and back while it is away; it comes back after 60 s. Then every
event is in the stream once, each host's in the order it happened, and the
two migrations are told by both ends: started, accepted and completed by the
source, reserved and released (committed) by the target. Then a migration
asked with a `traceparent` is one trace: the source's spans under the
caller's, the target's reservation under the source's, each agent exporting
its own over OTLP/HTTP to a receiver on h1 whose payloads the test decodes
with OpenTelemetry's own protobuf classes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents
from tests import otlp_receiver
from tests.lab_vms import (
    beats,
    nova,
    running_mesh,
    scratch_dir,
    start_guest,
    wait_beat_above,
)
from tests.nats_server import NatsServer

pytestmark = pytest.mark.lab

RUN = f"e{os.getpid() % 100000}"
NATS_PORT = 4222
NATS_URL = f"nats://198.18.0.1:{NATS_PORT}"  # h1's lab address
STREAM = "NOVACRON_EVENTS"
OUTAGE = 60.0  # seconds NATS is away
OTLP_PORT = 4318
OTLP_URL = f"http://198.18.0.1:{OTLP_PORT}"
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the operator's trace

DUMP = """
import asyncio, json, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1], connect_timeout=5)
    js = nc.jetstream()
    info = await js.stream_info(sys.argv[2])
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        out.append(json.loads((await js.get_msg(sys.argv[2], seq)).data))
    await nc.close()
    json.dump(out, sys.stdout)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def disk_dir() -> Iterator[Path]:
    with scratch_dir(RUN) as path:
        yield path


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, LabAgents]]:
    options = ["--events-nats", NATS_URL, "--tracing-otlp", OTLP_URL]
    with running_mesh(RUN, vms=["event-vm"], extra_args=options) as mesh:
        yield mesh


def _stream(host: LabHost) -> list[dict[str, Any]]:
    """Every event the stream holds, read from inside `host`."""
    done = host.run(
        [str(BIN / "python"), "-c", DUMP, NATS_URL, STREAM],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout))


def _waiting(host: LabHost) -> int:
    code, answer = nova(host, "status")
    assert code == 0, answer
    stream = answer["status"]["event_stream"]
    assert stream["dropped"] == 0
    return int(stream["backlog"])


def _migrate(vm: str, source: LabHost, target: LabHost) -> str:
    # Capped, so the copy outlasts a few of the source's progress samples (half a second
    # apart) on a quiet machine too: an idle guest's copy, uncapped, can finish before one.
    # The long completion timeout keeps a loaded machine's slow copy from escalating.
    args = ("--to", target.name, "--bandwidth", "16", "--completion-timeout", "300", "--wait")
    code, answer = nova(source, "vm", "migrate", vm, *args)
    assert (code, answer["migration"]["outcome"]) == (0, "committed"), answer
    return str(answer["migration"]["migration_id"])


def test_every_event_of_a_nats_outage_arrives_once_and_in_order(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path
) -> None:
    lab, agents = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    server = NatsServer(disk_dir / "nats", address="198.18.0.1", port=NATS_PORT, popen=h1.popen)
    server.start()
    try:
        start_guest(lab, agents, disk_dir, guest, "event-vm")
        deadline = time.monotonic() + 60
        while any(_waiting(host) for host in lab.hosts):  # the mesh's joins, before the outage
            assert time.monotonic() < deadline, "the first events did not reach NATS in 60 s"
            time.sleep(0.5)
        server.stop()
        down_since = time.monotonic()
        there = _migrate("event-vm", h1, h2)
        back = _migrate("event-vm", h2, h1)
        assert _waiting(h1) > 0 and _waiting(h2) > 0, "no event waited for NATS"
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))
        server.start()
        deadline = time.monotonic() + 120
        while any(_waiting(host) for host in lab.hosts):
            assert time.monotonic() < deadline, "the spooled events did not reach NATS in 120 s"
            time.sleep(0.5)
        wait_beat_above(h1, "event-vm", beats(h1, "event-vm")[-1])  # alive after two moves
        events = _stream(h1)
    finally:
        server.stop()

    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event is in the stream twice"
    for host in lab.hosts:
        own = [int(e["id"].rsplit(".", 1)[1]) for e in events if e["source"].endswith(host.name)]
        assert own and own == sorted(own), f"{host.name}'s events are missing or out of order"
    told = [(e["source"].rsplit("/", 1)[1], e["type"].removeprefix("io.novacron."), e["subject"])
            for e in events]  # fmt: skip
    for mid, source, target in ((there, "h1", "h2"), (back, "h2", "h1")):
        by_source = [kind for host, kind, subject in told if subject == mid and host == source]
        by_target = [kind for host, kind, subject in told if subject == mid and host == target]
        steps = [kind for kind in by_source if kind != "migration.progressed"]
        assert steps == ["migration.started", "migration.accepted", "migration.completed"]
        assert "migration.progressed" in by_source[1:-1]  # between accepted and completed
        # The target streams the progress its source forwards, when the copy lasts long
        # enough for a forward (a loaded machine): always between its reservation's ends.
        assert [k for k in by_target if k != "migration.progressed"] == [
            "migration.reserved",
            "migration.reservation-released",
        ]
        assert "migration.progressed" not in (by_target[0], by_target[-1])
        released = next(
            e for e in events
            if e["subject"] == mid and e["type"] == "io.novacron.migration.reservation-released"
        )  # fmt: skip
        assert released["data"]["outcome"] == "committed"


def test_a_migration_asked_with_a_trace_is_one_trace_from_both_agents(
    mesh: tuple[Lab, LabAgents], disk_dir: Path
) -> None:
    lab, _ = mesh
    h1, h2 = lab.hosts[0], lab.hosts[1]
    out = disk_dir / "otlp"
    receiver = otlp_receiver.start("198.18.0.1", OTLP_PORT, out, popen=h1.popen)
    try:
        done = h1.run(
            [str(BIN / "nova"), "--json", "vm", "migrate", "event-vm", "--to", h2.name, "--wait"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TRACEPARENT": CALLER},
        )
        answer = json.loads(done.stdout)
        assert answer["migration"]["outcome"] == "committed", answer
        trace_id = bytes.fromhex(CALLER.split("-")[1])
        deadline = time.monotonic() + 60
        while True:  # each agent sends its spans within a few seconds of the end
            spans = [
                (resource["host.name"], s)
                for resource, s in otlp_receiver.received(out)
                if s.trace_id == trace_id
            ]
            if {host for host, _ in spans} == {"h1", "h2"} and len(spans) >= 4:
                break
            assert time.monotonic() < deadline, f"spans of the trace after 60 s: {spans}"
            time.sleep(0.5)
    finally:
        receiver.kill()
        receiver.wait(timeout=30)
    by_name = {span.name: (host, span) for host, span in spans}
    assert set(by_name) == {"migrate event-vm", "reservation", "libvirt job", "reserve event-vm"}
    root_host, root = by_name["migrate event-vm"]
    assert root_host == "h1" and root.parent_span_id == bytes.fromhex(CALLER.split("-")[2])
    for child in ("reservation", "libvirt job"):
        assert by_name[child][0] == "h1" and by_name[child][1].parent_span_id == root.span_id
    reserve_host, reserve = by_name["reserve event-vm"]
    assert reserve_host == "h2" and reserve.parent_span_id == root.span_id
    assert root.status.code == reserve.status.code == 1  # OK
    assert root.start_time_unix_nano <= reserve.start_time_unix_nano < root.end_time_unix_nano
    code, status = nova(h2, "status")
    assert code == 0 and status["status"]["tracing"]["exported"] >= 1, status
