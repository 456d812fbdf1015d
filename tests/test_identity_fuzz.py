"""Property tests: any mutation of a certificate, revocation list or signed record is
refused with a ProtocolError subclass (IdentityError for identity checks), never a crash."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.protocol import codec
from novacron.protocol import messages as m
from novacron.protocol.certificates import issue_certificate, verify_certificate
from novacron.protocol.errors import IdentityError, ProtocolError
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.protocol.records import sign_record, verify_record
from novacron.protocol.revocation import sign_revocation_list, verify_revocation_list
from tests.fuzzing import fuzz
from tests.strategies import mutations

FUZZ = fuzz(1000)

CA_KEY = Ed25519PrivateKey.generate()
NODE_KEY = NodeKey.generate()
CERT = issue_certificate(
    CA_KEY,
    "edge-1",
    NODE_KEY.signing_public,
    NODE_KEY.curve_public,
    not_before=100.0,
    not_after=200.0,
    serial=99,
)
RECORD = m.NodeRecord("edge-1", 3, labels={"rack": "2"}, addresses=("198.18.0.1",))
SIGNED = sign_record(NODE_KEY, RECORD)
REVOCATIONS = sign_revocation_list(CA_KEY, [1, 99], issued_at=150.0)


@FUZZ
@given(data=mutations(CERT.encoded), now=st.floats(0, 300))
def test_mutated_certificate_raises_only_identity_errors(data: bytes, now: float) -> None:
    with pytest.raises(IdentityError):
        verify_certificate(data, CA_KEY.public_key(), now)


@FUZZ
@given(data=mutations(REVOCATIONS))
def test_mutated_revocation_list_raises_only_identity_errors(data: bytes) -> None:
    with pytest.raises(IdentityError):
        verify_revocation_list(data, CA_KEY.public_key())


@FUZZ
@given(record=mutations(SIGNED.record), signature=mutations(SIGNED.signature))
def test_mutated_record_bytes_raise_only_identity_errors(record: bytes, signature: bytes) -> None:
    for tampered in (
        dataclasses.replace(SIGNED, record=record),
        dataclasses.replace(SIGNED, signature=signature),
    ):
        with pytest.raises(IdentityError):
            verify_record(tampered, CERT)


@FUZZ
@given(wire=mutations(codec.pack_struct(SIGNED)))
def test_mutated_signed_record_on_the_wire_raises_only_protocol_errors(wire: bytes) -> None:
    try:
        relayed = codec.unpack_struct(m.SignedRecord, wire)
    except ProtocolError:
        return  # the codec refused the frame: fine
    if relayed == SIGNED:  # an equivalent encoding of the same values is still the same record
        assert verify_record(relayed, CERT) == RECORD
        return
    with pytest.raises(IdentityError):
        verify_record(relayed, CERT)
