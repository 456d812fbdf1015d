"""Fuzzing the whole receive path of a real agent, not only the codec.

Hypothesis builds frames for every message type of the catalogue with the
right field names and hostile values (nesting a thousand deep inside typed
fields, integers at and past every bound, non-finite floats, huge strings),
plus well-formed messages with one field swapped. A certified member sends
them over a real CurveZMQ connection to a real agent; afterwards the agent
must still run, answer its API, see its peers alive, and have raised nothing
while handling what it decoded (`handling_failures` stays 0): every frame is
either refused by the decoder, counted, or handled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.protocol import codec
from novacron.protocol import messages as m
from tests.hostile import Mallory, Mesh, eventually
from tests.strategies import any_message

pytestmark = pytest.mark.agents  # real agent processes on loopback

FRAMES = 400  # examples drawn; each becomes one frame on the wire

_BOUNDARY_INTS = [0, -1, 1, m.MAX_COUNTER, m.MAX_COUNTER + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
_BOUNDARY_FLOATS = [0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf")]


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


_hostile_scalar = st.one_of(
    st.sampled_from(_BOUNDARY_INTS),
    st.sampled_from(_BOUNDARY_FLOATS),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.booleans(),
    st.just("x" * 20_000),  # over the codec's string limit
)
_hostile_value = st.one_of(
    _hostile_scalar,
    st.builds(_nested, st.integers(30, 500), _hostile_scalar),  # deep inside a typed field
    st.lists(_hostile_scalar, max_size=4),
    st.dictionaries(st.text(max_size=8), _hostile_scalar, max_size=4),
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """One frame: a catalogue type with hostile field values, or a valid message
    with one field replaced."""
    if draw(st.booleans()):
        type_name, cls = draw(st.sampled_from(sorted(m.CATALOGUE.items())))
        names = [f.name for f in dataclasses.fields(cls)]
        payload = draw(st.dictionaries(st.sampled_from(names), _hostile_value, max_size=6))
    else:
        message = draw(any_message())
        payload = codec.to_wire(message)
        names = list(typing.get_type_hints(type(message)))
        if names:
            payload[draw(st.sampled_from(names))] = draw(_hostile_value)
        type_name = message.TYPE
    frame = [codec.PROTOCOL_VERSION, type_name, "mallory", payload]
    return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]


def draw_frames(count: int) -> list[bytes]:
    """`count` frames drawn by Hypothesis (shrinking is moot: the agent is the oracle)."""
    frames: list[bytes] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_frames())
    def collect(frame: bytes) -> None:
        frames.append(frame)

    collect()
    return frames


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    try:
        mesh.start(2)
        yield mesh
    finally:
        mesh.stop()


async def test_hostile_frames_through_the_full_receive_path_stop_nothing(mesh: Mesh) -> None:
    frames = draw_frames(FRAMES)
    assert len(frames) >= FRAMES // 2  # Hypothesis may stop early; most must be drawn
    async with Mallory(mesh) as mallory:
        await mallory.join(*mesh.agents.values())
        victim = mesh["n1"]
        before = victim.status()
        for i, frame in enumerate(frames):
            await mallory.send_raw(victim, frame)
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # let the agent keep up; the point is content
        counted = _counted(before)
        await eventually(
            lambda: _counted(victim.status()) - counted >= len(frames),
            60,
            "the agent accounts for every frame (decoded, refused or dropped)",
        )
    status = victim.status()
    assert victim.running(), victim.log()[-3000:]
    assert status["handling_failures"] == 0, victim.log()[-3000:]
    assert status["transport"]["malformed"] > before["transport"]["malformed"]
    mesh.wait_converged()  # n1 and n2 still see each other alive
    assert "Traceback" not in victim.log()


def _counted(status: dict[str, Any]) -> int:
    transport = status["transport"]
    return int(transport["received"] + transport["malformed"] + transport["spoofed"])
