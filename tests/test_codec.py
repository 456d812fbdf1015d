"""Round trips for every message type and the codec's compatibility rules."""

from __future__ import annotations

import msgpack
import pytest

from novacron.protocol import codec
from novacron.protocol import messages as m
from novacron.protocol.errors import (
    FrameTooLarge,
    InvalidField,
    LimitExceeded,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
)

V = codec.PROTOCOL_VERSION  # the version every hand-made frame below speaks

RECORD = m.NodeRecord(
    node_id="edge-1",
    version=7,
    capacity=m.Resources(vcpus=8, memory_mib=16384, disk_gib=200),
    usage=m.Resources(vcpus=2.5, memory_mib=4096, disk_gib=20.5),
    load=1.25,
    vms=(m.VmSummary(name="web", uuid="u-1", state="running", vcpus=2, memory_mib=2048),),
    labels={"site": "lyon", "rack": "3"},
    addresses=("198.18.0.1",),
    libvirt_uri="qemu:///system",
)
SIGNED = m.SignedRecord(
    node_id="edge-1", version=7, record=codec.pack_struct(RECORD), signature=b"s" * 64
)
GOSSIP: tuple[m.Gossip, ...] = (
    m.Alive("edge-2", 3, address="198.18.0.2", certificate=b"cert", signature=b"a" * 64),
    m.Suspect("edge-3", 1, by="edge-1", signature=b"s" * 64),
    m.Dead("edge-4", 2, by="edge-1", signature=b"d" * 64),
    m.Leave("edge-5", 9, signature=b"l" * 64),
    m.RecordUpdate(SIGNED),
    m.Revocations(b"signed revocation list"),
)

EXAMPLES: list[m.Message] = [
    *GOSSIP,
    m.Ping(seq=1, target="edge-2", gossip=GOSSIP),
    m.IndirectPing(seq=2, target="edge-3", requester="edge-1", target_address="198.18.0.3"),
    m.Ack(seq=1, gossip=GOSSIP[:2]),
    m.Nack(seq=2),
    m.Digest(
        members=(m.MemberDigest("edge-2", 3, m.MemberState.SUSPECT, "198.18.0.2"),),
        records={"edge-1": 7, "edge-2": 1},
        reply=True,
    ),
    m.Delta(
        members=(m.MemberDigest("edge-4", 2, m.MemberState.DEAD, "a:1", b"p" * 64, b"cert"),),
        records=(SIGNED,),
        crl=b"list",
    ),
    m.CertificateRequest(("edge-4", "edge-5")),
    m.Certificates({"edge-4": b"cert"}),
    m.MigrationPropose("mig-1", "web", "edge-1", "edge-2", vcpus=2, memory_mib=2048, disk_gib=10),
    m.MigrationAccept("mig-1", reservation_expires=123.5, migration_uri="tcp://198.18.0.2"),
    m.MigrationRefuse("mig-1", reason="no capacity: 1024 MiB free, 2048 MiB needed"),
    m.MigrationProgress("mig-1", percent=42.0, data_remaining=1 << 20, bandwidth=3e7, iteration=3),
    m.MigrationCommit("mig-1"),
    m.MigrationAbort("mig-1", reason="cancelled by operator"),
    m.DrainRequest("req-1", node="edge-2", drain=True, requested_by="alice"),
    m.DrainAnswer("req-1", accepted=True, draining=True, running=("web", "db"), record_version=12),
    m.SiteCommandRelay("req-2", command=b"\x81\xa3key\xa2k1"),
    m.SiteCommandResult("req-2", outcome=b"\x81\xa3key\xa2k1"),
    m.TemplateAsk("debian-12:1"),
    m.TemplateWanted("debian-12:1"),
    m.TemplateGive("debian-12:1", manifest=b"signed", chunk_maps=(b"\x01" * 32,)),
    m.PiecesAsk(b"\x02" * 32),
    m.PiecesHeld(b"\x02" * 32, bitmap=b"\x05"),
    m.PiecesHeld(b"\x02" * 32, whole=True),
    m.PieceAsk(b"\x02" * 32, index=7),
    m.PieceGive(b"\x02" * 32, index=7, data=b"piece"),
    m.ImageLack("debian-12:1", reason="not held here"),
    m.ImageLack("02" * 32, reason="busy", index=7),
]


def test_examples_cover_the_whole_catalogue() -> None:
    assert {type(msg).TYPE for msg in EXAMPLES} == set(m.CATALOGUE)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda msg: type(msg).TYPE)
def test_every_message_round_trips(message: m.Message) -> None:
    envelope = codec.decode(codec.encode(message, "edge-1"))
    assert envelope.message == message
    assert envelope.sender == "edge-1"
    assert envelope.version == codec.PROTOCOL_VERSION


def test_record_round_trips_without_envelope() -> None:
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(RECORD)) == RECORD


def _frame(version: object, type_name: object, sender: object, payload: object) -> bytes:
    frame: bytes = msgpack.packb([version, type_name, sender, payload], use_bin_type=True)
    return frame


def _deep(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


def test_unknown_fields_are_ignored() -> None:
    frame = _frame(V, "ping", "edge-1", {"seq": 4, "target": "edge-2", "from_the_future": [1, 2]})
    assert codec.decode(frame).message == m.Ping(seq=4, target="edge-2")


def test_missing_optional_fields_get_defaults() -> None:
    frame = _frame(V, "indirect-ping", "edge-1", {"seq": 4, "target": "b", "requester": "a"})
    message = codec.decode(frame).message
    assert message == m.IndirectPing(seq=4, target="b", requester="a", want_nack=True, gossip=())


def test_extra_envelope_elements_are_ignored() -> None:
    frame = msgpack.packb([V, "nack", "edge-1", {"seq": 9}, "later-extension"])
    assert codec.decode(frame).message == m.Nack(seq=9)


def test_missing_required_field_is_named() -> None:
    with pytest.raises(InvalidField, match="required field 'target'"):
        codec.decode(_frame(V, "ping", "edge-1", {"seq": 4}))


def test_wrong_field_type_is_named() -> None:
    with pytest.raises(InvalidField, match=r"ping\.seq: expected an integer, got str"):
        codec.decode(_frame(V, "ping", "edge-1", {"seq": "4", "target": "b"}))


def test_bad_enum_value_lists_the_allowed_ones() -> None:
    payload = {"members": [{"node_id": "a", "incarnation": 1, "state": "zombie"}]}
    with pytest.raises(InvalidField, match="not one of alive, suspect, dead, left"):
        codec.decode(_frame(V, "digest", "edge-1", payload))


def test_a_migration_phase_the_protocol_does_not_know_is_refused() -> None:
    payload = {"migration_id": "m", "phase": "warp"}
    with pytest.raises(InvalidField, match="not one of precopy, switchover, postcopy"):
        codec.decode(_frame(V, "migration-progress", "edge-1", payload))
    for phase in m.JobPhase:
        frame = codec.encode(m.MigrationProgress("m", phase=phase), "edge-1")
        assert codec.decode(frame).message == m.MigrationProgress("m", phase=phase)


def test_non_finite_numbers_are_refused() -> None:
    payload = {"migration_id": "m", "reservation_expires": float("nan")}
    with pytest.raises(InvalidField, match="finite"):
        codec.decode(_frame(V, "migration-accept", "edge-1", payload))


def test_unknown_message_type_is_a_clear_error() -> None:
    with pytest.raises(UnknownMessageType, match="unknown message type 'teleport'"):
        codec.decode(_frame(V, "teleport", "edge-1", {}))


def test_non_gossip_message_cannot_be_piggybacked() -> None:
    payload = {"seq": 1, "target": "b", "gossip": [["ping", {"seq": 1, "target": "c"}]]}
    with pytest.raises(UnknownMessageType, match="not allowed here"):
        codec.decode(_frame(V, "ping", "edge-1", payload))


def test_unsupported_version_says_what_we_speak() -> None:
    with pytest.raises(UnsupportedVersion, match=f"version {V + 1}; this node speaks {V}") as info:
        codec.decode(codec.encode(m.Nack(seq=1), "edge-1", version=V + 1))
    assert info.value.version == V + 1


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"", MalformedFrame, "empty frame"),
        (b"\xc1", MalformedFrame, "not valid msgpack"),
        (msgpack.packb({"not": "a list"}), MalformedFrame, "not an envelope"),
        (msgpack.packb([V, "ping"]), MalformedFrame, "not an envelope"),
        (msgpack.packb(["1", "ping", "a", {}]), MalformedFrame, "version must be an integer"),
        (msgpack.packb([V, 7, "a", {}]), MalformedFrame, "type must be a string"),
        (msgpack.packb([V, "nack", "", {"seq": 1}]), MalformedFrame, "sender"),
        (msgpack.packb([V, "nack", "a", [1]]), InvalidField, "expected a map"),
        (codec.encode(m.Nack(seq=1), "a") + b"\x00", MalformedFrame, "trailing bytes"),
        (b"\x91" * 100 + b"\xc0", MalformedFrame, "not an envelope"),
        (_frame(V, "nack", "a", {"seq": 1, "x": _deep(100)}), LimitExceeded, "nested too deep"),
        (msgpack.packb([V, "nack", "a", {"seq": 1}, _deep(40)]), LimitExceeded, "nesting"),
        # A 4 GiB length prefix with nothing behind it: refused, nothing allocated.
        (b"\xdb\xff\xff\xff\xff", MalformedFrame, "incomplete input"),
        (b"\xdd\xff\xff\xff\xff", LimitExceeded, "exceeds max_array_len"),
    ],
)
def test_malformed_frames_are_protocol_errors(data: bytes, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        codec.decode(data)


def test_oversized_frame_is_refused_before_parsing() -> None:
    limits = codec.Limits(max_frame=64)
    frame = codec.encode(m.MigrationAbort("m", reason="x" * 100), "edge-1")
    with pytest.raises(FrameTooLarge, match="exceeds the 64-byte limit"):
        codec.decode(frame, limits)


def test_long_strings_over_the_limit_are_refused() -> None:
    frame = codec.encode(m.MigrationAbort("m", reason="x" * 100), "edge-1")
    with pytest.raises(LimitExceeded):
        codec.decode(frame, codec.Limits(max_str=50))


def test_nesting_limit_is_configurable() -> None:
    frame = codec.encode(m.Ping(seq=1, target="b", gossip=GOSSIP), "edge-1")
    assert codec.decode(frame, codec.Limits(max_depth=8)).message.TYPE == "ping"
    with pytest.raises(LimitExceeded, match="deeper than the depth limit"):
        codec.decode(frame, codec.Limits(max_depth=3))


def test_every_error_is_a_protocol_error() -> None:
    for error in (FrameTooLarge, MalformedFrame, LimitExceeded, UnknownMessageType, InvalidField):
        assert issubclass(error, ProtocolError)
    assert issubclass(UnsupportedVersion, ProtocolError)


def test_decoding_does_not_accept_non_bytes() -> None:
    with pytest.raises(MalformedFrame, match="must be bytes"):
        codec.decode("a string")  # type: ignore[arg-type]


def test_drain_messages_keep_their_optional_fields_optional() -> None:
    request = _frame(V, "drain-request", "edge-1", {"request_id": "r", "node": "b", "drain": False})
    assert codec.decode(request).message == m.DrainRequest("r", "b", False, requested_by="")
    answer = _frame(V, "drain-answer", "edge-2", {"request_id": "r", "accepted": False})
    assert codec.decode(answer).message == m.DrainAnswer("r", accepted=False)


@pytest.mark.parametrize(
    ("type_name", "payload", "error", "text"),
    [
        ("drain-request", {"request_id": "r", "node": "b"}, InvalidField, "field 'drain'"),
        (
            "drain-request",
            {"request_id": "r", "node": "b", "drain": 1},
            InvalidField,
            r"drain-request\.drain: expected a boolean, got int",
        ),
        (
            "drain-request",
            {"request_id": "r", "node": None, "drain": True},
            InvalidField,
            r"drain-request\.node: expected a string, got nil",
        ),
        (
            "drain-request",
            {"request_id": "r", "node": "b", "drain": True, "requested_by": "x" * 20_000},
            LimitExceeded,
            "exceeds max_str_len",
        ),
        ("drain-answer", {"accepted": True}, InvalidField, "field 'request_id'"),
        (
            "drain-answer",
            {"request_id": "r", "accepted": True, "running": ["web", 3]},
            InvalidField,
            r"drain-answer\.running\[1\]: expected a string, got int",
        ),
        (
            "drain-answer",
            {"request_id": "r", "accepted": True, "record_version": 1.5},
            InvalidField,
            r"drain-answer\.record_version: expected an integer, got float",
        ),
        (
            "drain-answer",
            {"request_id": "r", "accepted": True, "later": _deep(40)},
            LimitExceeded,
            "nested too deep",
        ),
    ],
)
def test_malformed_drain_messages_are_named_protocol_errors(
    type_name: str, payload: dict[str, object], error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        codec.decode(_frame(V, type_name, "edge-1", payload))
