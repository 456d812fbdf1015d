"""A certified member that lies, against real agents on loopback.

Each test is one attack from the review of the mesh under attack: Mallory
holds a valid certificate of the cluster's CA (she is a member), so her
frames pass CurveZMQ and ZAP; what she says must still not crash, split,
evict, mislead or command anyone. Every test checks what an operator would
see: the agents' member tables, records and drain state through their local
API, and whether the processes still run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import msgpack
import pytest

from novacron.protocol.codec import PROTOCOL_VERSION
from novacron.protocol.messages import (
    Alive,
    Dead,
    DrainRequest,
    NodeRecord,
    RecordUpdate,
    Resources,
    Suspect,
)
from novacron.protocol.records import sign_record
from tests.hostile import Mallory, Mesh, eventually

pytestmark = pytest.mark.agents  # real agent processes on loopback

HUGE = 2**64 - 1  # the largest integer msgpack encodes


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three agents shared by the module's tests: every attack must leave them whole."""
    mesh = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        mesh.start(3)
        yield mesh
    finally:
        mesh.stop()


_names = itertools.count(1)


@pytest.fixture
async def mallory(mesh: Mesh) -> AsyncIterator[Mallory]:
    """A new liar for each test (her own id and certificate), joined to every agent."""
    async with Mallory(mesh, f"mallory{next(_names)}") as mallory:
        await mallory.join(*mesh.agents.values())
        await eventually(
            lambda: all(a.state_of(mallory.node_id) == "alive" for a in mesh.agents.values()),
            20,
            f"every agent lists {mallory.node_id} as a member",
        )
        yield mallory


async def still_whole(mesh: Mesh, seconds: float) -> None:
    """For `seconds`, every agent runs and sees n1..n3 alive (looked at from a thread: the
    test's event loop, and Mallory's answers to pings, keep running meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.to_thread(_whole, mesh)
        await asyncio.sleep(0.5)


def _whole(mesh: Mesh) -> None:
    ids = set(mesh.agents)
    for agent in mesh.agents.values():
        assert agent.running(), f"{agent.node_id} exited:\n{agent.log()[-3000:]}"
        alive = {n for n, row in agent.members().items() if row["state"] == "alive"}
        assert ids <= alive, f"{agent.node_id} sees only {sorted(alive)} alive"


async def test_deep_nesting_inside_a_typed_field_is_dropped_and_the_agent_carries_on(
    mesh: Mesh, mallory: Mallory
) -> None:
    nested: list[object] = []
    inner = nested
    for _ in range(1000):  # deeper than Python's repr can go
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    payload = {"members": [{"node_id": "x", "incarnation": 1, "state": nested}]}
    frame = msgpack.packb([PROTOCOL_VERSION, "digest", mallory.node_id, payload])
    malformed = mesh["n2"].status()["transport"]["malformed"]
    await mallory.send_raw(mesh["n2"], frame)
    await eventually(
        lambda: mesh["n2"].status()["transport"]["malformed"] > malformed,
        10,
        "n2 counts the frame as malformed",
    )
    await still_whole(mesh, 3)


async def test_a_claim_at_the_largest_incarnation_does_not_evict_its_victim(
    mesh: Mesh, mallory: Mallory
) -> None:
    for agent in mesh.agents.values():
        await mallory.send(agent, Suspect("n2", HUGE, mallory.node_id))
        await mallory.send(agent, Dead("n2", HUGE, mallory.node_id))
    await still_whole(mesh, 12)
    assert mesh["n2"].status()["incarnation"] < 100


async def test_an_alive_forged_for_another_member_changes_nothing(
    mesh: Mesh, mallory: Mallory
) -> None:
    real = mesh["n2"].address
    for agent in (mesh["n1"], mesh["n3"]):
        await mallory.send(agent, mallory.alive("n2", 50, mallory.address))
        await mallory.send(agent, Alive("n2", 60, mallory.address))  # unsigned
    await still_whole(mesh, 3)
    for agent in (mesh["n1"], mesh["n3"]):
        row = agent.members()["n2"]
        assert row["address"] == real and row["incarnation"] < 50


async def test_invented_members_are_not_admitted_and_the_mesh_still_takes_newcomers(
    mesh: Mesh, mallory: Mallory
) -> None:
    for i in range(2000):
        fake = f"ghost-{i:05d}"
        await mallory.send(mesh["n1"], mallory.alive(fake, 1, f"127.0.0.1:{10000 + i}"))
        await mallory.send(mesh["n1"], Alive(fake + "-u", 1, f"127.0.0.1:{20000 + i}"))
    await asyncio.sleep(2)
    ghosts = [n for n in mesh["n1"].members() if n.startswith("ghost-")]
    assert ghosts == []
    mesh.start_agent("n4", seed="n1")  # joins through n1, the flooded agent
    await asyncio.to_thread(mesh.wait_converged)


@pytest.mark.parametrize(
    "lie",
    [
        {"capacity": Resources(vcpus=1_000_000, memory_mib=2**40)},
        {"load": 1e300},
        {"usage": Resources(vcpus=1e300)},
        {"libvirt_uri": "qemu+tcp://203.0.113.7/system"},
        {"labels": {"novacron/rebalance": "paused@9999999999"}},
        {"migrations_out": 1_000_000},
    ],
    ids=[
        "million-cores",
        "huge-load",
        "huge-usage",
        "foreign-libvirt-uri",
        "reserved-label",
        "absurd-migration-count",
    ],
)
async def test_a_record_outside_its_bounds_is_refused(
    mesh: Mesh, mallory: Mallory, lie: dict[str, object]
) -> None:
    honest = NodeRecord(
        mallory.node_id,
        version=1,
        capacity=Resources(vcpus=8, memory_mib=16384, disk_gib=100),
        addresses=(mallory.address,),
        libvirt_uri="qemu+tcp://127.0.0.1/system",
    )
    await mallory.send(mesh["n1"], RecordUpdate(sign_record(mallory.key, honest)))
    host = f"/v1/hosts/{mallory.node_id}"
    await eventually(lambda: mesh["n1"].api(host)["record"] is not None, 10, "n1 holds her record")
    lying = dataclasses.replace(honest, version=2, **lie)  # type: ignore[arg-type]
    await mallory.send(mesh["n1"], RecordUpdate(sign_record(mallory.key, lying)))
    await asyncio.sleep(2)
    record = mesh["n1"].api(host)["record"]
    assert record["version"] == 1, f"n1 took the lying record: {record}"
    assert f"record refused: {mallory.node_id} version 2" in mesh["n1"].log()


async def test_a_member_cannot_drain_another_host(mesh: Mesh, mallory: Mallory) -> None:
    await mallory.send(mesh["n2"], DrainRequest("r1", "n2", True, mallory.node_id))
    await eventually(lambda: "drain request refused" in mesh["n2"].log(), 10, "n2 refuses")
    assert mesh["n2"].api("/v1/drain")["draining"] is False
    assert "not authorized" in mesh["n2"].log()
