"""Property tests: generated messages round-trip; hostile bytes give only ProtocolError.

The fuzz tests together run well over 10,000 examples in `make test`
(a tenth in quick runs: tests/fuzzing.py).
"""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from novacron.protocol import codec
from novacron.protocol import messages as m
from novacron.protocol.errors import ProtocolError

from .fuzzing import fuzz
from .strategies import any_message, for_struct, node_ids

FUZZ = fuzz(2500)

V = codec.PROTOCOL_VERSION  # the version every hand-made frame below speaks


def _decode_or_protocol_error(data: bytes) -> None:
    """Decoding either succeeds or raises a ProtocolError; anything else fails the test."""
    with contextlib.suppress(ProtocolError):
        codec.decode(data)


@fuzz(1000)
@given(message=any_message(), sender=node_ids)
def test_generated_messages_round_trip(message: m.Message, sender: str) -> None:
    envelope = codec.decode(codec.encode(message, sender))
    assert envelope.message == message
    assert envelope.sender == sender


@fuzz(300)
@given(record=for_struct(m.NodeRecord))
def test_generated_records_round_trip(record: m.NodeRecord) -> None:
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(record)) == record


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_give_only_protocol_errors(data: bytes) -> None:
    _decode_or_protocol_error(data)


@FUZZ
@given(message=any_message(), data=st.data())
def test_bit_flips_give_only_protocol_errors(message: m.Message, data: st.DataObject) -> None:
    frame = bytearray(codec.encode(message, "edge-1"))
    flips = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=8))
    for bit in flips:
        frame[bit // 8] ^= 1 << (bit % 8)
    _decode_or_protocol_error(bytes(frame))


@FUZZ
@given(message=any_message(), data=st.data())
def test_truncation_gives_only_protocol_errors(message: m.Message, data: st.DataObject) -> None:
    frame = codec.encode(message, "edge-1")
    cut = data.draw(st.integers(0, len(frame) - 1))
    _decode_or_protocol_error(frame[:cut])


# msgpack headers that announce enormous lengths: str32, bin32, array32, map32, ext32.
HUGE_PREFIXES = [b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9"]


@FUZZ
@given(
    message=any_message(),
    prefix=st.sampled_from(HUGE_PREFIXES),
    length=st.integers(2**20, 2**32 - 1),
    data=st.data(),
)
def test_huge_length_prefixes_give_only_protocol_errors(
    message: m.Message, prefix: bytes, length: int, data: st.DataObject
) -> None:
    frame = codec.encode(message, "edge-1")
    at = data.draw(st.integers(0, len(frame)))
    hostile = frame[:at] + prefix + length.to_bytes(4, "big") + frame[at:]
    _decode_or_protocol_error(hostile)


@fuzz(1000)
@given(depth=st.integers(1, 5000), opener=st.sampled_from([b"\x91", b"\x81\xa1k"]))
def test_deep_nesting_gives_only_protocol_errors(depth: int, opener: bytes) -> None:
    _decode_or_protocol_error(opener * depth + b"\xc0")
    # A valid envelope whose unknown field hides deep nesting is refused too.
    nested = opener * depth + b"\xc0"
    head = msgpack.packb([V, "nack", "edge-1"])[1:]  # drop the 3-element array header
    payload = b"\x82" + msgpack.packb("seq") + b"\x01" + msgpack.packb("x") + nested
    _decode_or_protocol_error(b"\x94" + head + payload)


@FUZZ
@given(
    obj=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text()
        | st.binary(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_arbitrary_msgpack_payloads_give_only_protocol_errors(obj: object) -> None:
    for type_name in m.CATALOGUE:
        _decode_or_protocol_error(msgpack.packb([V, type_name, "edge-1", obj]))


# The drain messages travel between hosts like the others; a field-aware fuzz of their
# payloads (right names, any values) reaches the field checks random maps rarely do.
DRAIN_MESSAGES = (m.DrainRequest, m.DrainAnswer)
_any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


def test_the_fuzz_covers_the_drain_messages() -> None:
    assert {cls.TYPE for cls in DRAIN_MESSAGES} <= set(m.CATALOGUE)


@FUZZ
@given(cls=st.sampled_from(DRAIN_MESSAGES), data=st.data())
def test_malformed_drain_messages_give_only_protocol_errors(
    cls: type[m.DrainRequest | m.DrainAnswer], data: st.DataObject
) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    payload = data.draw(st.dictionaries(st.sampled_from([*names, "extra"]), _any_value))
    try:
        message = codec.decode(msgpack.packb([V, cls.TYPE, "edge-1", payload])).message
    except ProtocolError:
        return
    assert isinstance(message, cls)  # accepted: then it encodes and decodes to itself
    assert codec.decode(codec.encode(message, "edge-1")).message == message


# The host record's typed fields (mesh-wide state) get the same field-aware fuzz: their
# names with any values, values at and beyond their bounds, labels under the reserved prefix.
RECORD_FIELDS = (
    "migrations_out",
    "migrations_in",
    "rebalance",
    "gateway_candidate",
    "libvirt_unreachable_since",
    "labels",
)
_edge_values = st.sampled_from(
    [-1, 0, m.MAX_MIGRATIONS, m.MAX_MIGRATIONS + 1, m.MAX_WALL_TIME, m.MAX_WALL_TIME * 2, -0.5]
)
_record_value = st.one_of(
    _any_value,
    _edge_values,
    st.fixed_dictionaries({}, optional={"paused": _any_value, "since": _any_value | _edge_values}),
    st.dictionaries(st.sampled_from(["site", "novacron/rebalance", "novacron/"]), st.text()),
)


@FUZZ
@given(data=st.data())
def test_malformed_record_fields_give_only_protocol_errors(data: st.DataObject) -> None:
    fields = data.draw(st.dictionaries(st.sampled_from(RECORD_FIELDS), _record_value))
    wire = msgpack.packb({"node_id": "edge-1", "version": 1, **fields})
    try:
        record = codec.unpack_struct(m.NodeRecord, wire)
    except ProtocolError:
        return
    assert 0 <= record.migrations_out <= m.MAX_MIGRATIONS
    assert 0 <= record.migrations_in <= m.MAX_MIGRATIONS
    assert 0 <= record.rebalance.since <= m.MAX_WALL_TIME
    assert 0 <= record.libvirt_unreachable_since <= m.MAX_WALL_TIME
    assert isinstance(record.gateway_candidate, bool)
    assert not any(k.startswith(m.RESERVED_LABEL_PREFIX) for k in record.labels)
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(record)) == record
