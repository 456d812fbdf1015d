"""Signed node records: only the owner can produce a record others will accept."""

from __future__ import annotations

import dataclasses

import pytest

from novacron.protocol import codec
from novacron.protocol import messages as m
from novacron.protocol.certificates import Certificate, issue_certificate
from novacron.protocol.errors import (
    BadRecordSignature,
    IdentityError,
    MalformedRecord,
    ProtocolError,
    RecordSignerMismatch,
)
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.protocol.records import sign_record, verify_record

RECORD = m.NodeRecord(
    node_id="edge-1",
    version=7,
    capacity=m.Resources(vcpus=8, memory_mib=16384, disk_gib=200),
    usage=m.Resources(vcpus=2.5, memory_mib=4096),
    vms=(m.VmSummary(name="web", uuid="u-1", state="running", vcpus=2, memory_mib=2048),),
    labels={"site": "lyon"},
    addresses=("198.18.0.1",),
)


@pytest.fixture(scope="module")
def ca_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def node_key() -> NodeKey:
    return NodeKey.generate()


def certify(ca_key: Ed25519PrivateKey, node_key: NodeKey, node_id: str) -> Certificate:
    return issue_certificate(
        ca_key,
        node_id,
        node_key.signing_public,
        node_key.curve_public,
        not_before=0.0,
        not_after=1e10,
        serial=1,
    )


@pytest.fixture(scope="module")
def cert(ca_key: Ed25519PrivateKey, node_key: NodeKey) -> Certificate:
    return certify(ca_key, node_key, "edge-1")


@pytest.fixture(scope="module")
def signed(node_key: NodeKey) -> m.SignedRecord:
    return sign_record(node_key, RECORD)


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_signed_record_round_trip(signed: m.SignedRecord, cert: Certificate) -> None:
    assert (signed.node_id, signed.version) == ("edge-1", 7)
    assert signed.record == codec.pack_struct(RECORD)
    assert verify_record(signed, cert) == RECORD


def test_signed_record_verifies_with_bare_public_key(
    signed: m.SignedRecord, node_key: NodeKey
) -> None:
    assert verify_record(signed, node_key.signing.public_key()) == RECORD


def test_signed_record_survives_the_wire(signed: m.SignedRecord, cert: Certificate) -> None:
    frame = codec.encode(m.RecordUpdate(signed), sender="edge-2")
    relayed = codec.decode(frame).message
    assert isinstance(relayed, m.RecordUpdate)
    assert verify_record(relayed.signed, cert) == RECORD


def test_sign_record_accepts_the_bare_signing_key(node_key: NodeKey, cert: Certificate) -> None:
    assert verify_record(sign_record(node_key.signing, RECORD), cert) == RECORD


def test_every_bit_flip_in_record_or_signature_is_refused(
    signed: m.SignedRecord, cert: Certificate
) -> None:
    tampered = [
        *(
            dataclasses.replace(signed, record=flipped(signed.record, bit))
            for bit in range(len(signed.record) * 8)
        ),
        *(
            dataclasses.replace(signed, signature=flipped(signed.signature, bit))
            for bit in range(len(signed.signature) * 8)
        ),
    ]
    for bad in tampered:
        with pytest.raises(BadRecordSignature, match="'edge-1'"):
            verify_record(bad, cert)


def test_every_bit_flip_of_the_encoded_signed_record_is_refused(
    signed: m.SignedRecord, cert: Certificate
) -> None:
    wire = codec.pack_struct(signed)
    for bit in range(len(wire) * 8):
        try:
            tampered = codec.unpack_struct(m.SignedRecord, flipped(wire, bit))
        except ProtocolError:
            continue  # the codec refused it: fine
        assert tampered != signed
        with pytest.raises(IdentityError):
            verify_record(tampered, cert)


def test_truncated_signature_is_a_bad_signature(signed: m.SignedRecord, cert: Certificate) -> None:
    for size in (0, 1, 63):
        with pytest.raises(BadRecordSignature):
            verify_record(dataclasses.replace(signed, signature=signed.signature[:size]), cert)


def test_record_of_another_node_checked_with_its_certificate_is_refused(
    signed: m.SignedRecord, ca_key: Ed25519PrivateKey, node_key: NodeKey
) -> None:
    other = certify(ca_key, node_key, "edge-2")
    with pytest.raises(RecordSignerMismatch, match="'edge-2'"):
        verify_record(signed, other)


def test_relay_cannot_relabel_a_record_for_another_node(
    signed: m.SignedRecord, cert: Certificate, node_key: NodeKey
) -> None:
    relabelled = dataclasses.replace(signed, node_id="edge-2")
    with pytest.raises(RecordSignerMismatch):
        verify_record(relabelled, cert)
    with pytest.raises(MalformedRecord, match="not what the envelope says"):
        verify_record(relabelled, node_key.signing.public_key())


def test_relay_cannot_change_the_version(signed: m.SignedRecord, cert: Certificate) -> None:
    with pytest.raises(MalformedRecord, match="version 7"):
        verify_record(dataclasses.replace(signed, version=8), cert)


def test_record_signed_by_another_key_is_refused(cert: Certificate) -> None:
    impostor = sign_record(NodeKey.generate(), RECORD)
    with pytest.raises(BadRecordSignature, match="altered or forged"):
        verify_record(impostor, cert)


def test_signed_garbage_is_malformed_not_a_crash(node_key: NodeKey, cert: Certificate) -> None:
    garbage = b"\xc1 not msgpack"
    signed = m.SignedRecord("edge-1", 7, garbage, node_key.signing.sign(garbage))
    with pytest.raises(MalformedRecord, match="do not decode"):
        verify_record(signed, cert)


def test_identity_module_is_the_one_import_for_callers() -> None:
    from novacron.protocol import identity, records

    assert identity.verify_record is records.verify_record
    assert all(hasattr(identity, name) for name in identity.__all__)
