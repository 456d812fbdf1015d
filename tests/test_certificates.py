"""Certificates and revocation lists: what the CA vouches for, and every way to refuse it."""

from __future__ import annotations

import dataclasses

import pytest

from novacron.protocol import codec, z85
from novacron.protocol.certificates import (
    Certificate,
    check_node_id,
    decode_certificate,
    issue_certificate,
    verify_certificate,
)
from novacron.protocol.errors import (
    BadCertificateSignature,
    CertificateExpired,
    CertificateFromOtherCA,
    CertificateNotYetValid,
    CertificateRevoked,
    IdentityError,
    InvalidNodeId,
    InvalidRevocationList,
    MalformedCertificate,
)
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey, key_id, private_bytes
from novacron.protocol.revocation import sign_revocation_list, verify_revocation_list
from novacron.protocol.sealed import seal

NOT_BEFORE = 1_700_000_000.0  # 2023-11-14T22:13:20Z
NOT_AFTER = NOT_BEFORE + 86_400.0
NOW = NOT_BEFORE + 3_600.0


@pytest.fixture(scope="module")
def ca_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def node_key() -> NodeKey:
    return NodeKey.generate()


@pytest.fixture(scope="module")
def cert(ca_key: Ed25519PrivateKey, node_key: NodeKey) -> Certificate:
    return issue(ca_key, node_key)


def issue(
    ca_key: Ed25519PrivateKey,
    node_key: NodeKey,
    node_id: str = "edge-1",
    not_before: float = NOT_BEFORE,
    not_after: float = NOT_AFTER,
) -> Certificate:
    return issue_certificate(
        ca_key,
        node_id,
        node_key.signing_public,
        node_key.curve_public,
        not_before=not_before,
        not_after=not_after,
        serial=4242,
    )


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- keys and Z85 ----------------------------------------------------------------


def test_z85_matches_the_rfc_test_vector() -> None:
    raw = bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
    assert z85.encode(raw) == "HelloWorld"
    assert z85.decode("HelloWorld") == raw


def test_z85_largest_group_is_all_ones() -> None:
    assert z85.decode("%nSc0") == b"\xff" * 4


@pytest.mark.parametrize("text", ["abc", "Hell~", "Hell\u00e9", "%nSc1", "#####"])
def test_z85_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        z85.decode(text)


def test_z85_refuses_partial_groups() -> None:
    with pytest.raises(ValueError, match="4-byte"):
        z85.encode(b"abc")


def test_node_key_gives_40_character_curve_keys_for_pyzmq(node_key: NodeKey) -> None:
    public, secret = node_key.curve_public_z85(), node_key.curve_secret_z85()
    assert len(public) == len(secret) == 40
    assert z85.decode(public) == node_key.curve_public
    assert z85.decode(secret) == private_bytes(node_key.curve)


def test_key_id_is_stable_and_distinguishes_keys(ca_key: Ed25519PrivateKey) -> None:
    assert key_id(ca_key) == key_id(ca_key.public_key())
    assert len(key_id(ca_key)) == 32
    assert key_id(ca_key) != key_id(Ed25519PrivateKey.generate())


# --- issuing and verifying -----------------------------------------------------------


def test_certificate_round_trip_binds_node_id_and_both_keys(
    cert: Certificate, ca_key: Ed25519PrivateKey, node_key: NodeKey
) -> None:
    got = verify_certificate(cert.encoded, ca_key.public_key(), NOW)
    assert got == cert
    assert got.node_id == "edge-1"
    assert got.serial == 4242
    assert got.issuer == key_id(ca_key)
    assert (got.not_before, got.not_after) == (NOT_BEFORE, NOT_AFTER)
    assert got.curve_key == node_key.curve_public
    assert got.curve_public_z85() == node_key.curve_public_z85()
    assert got.signing_public_key().public_bytes_raw() == node_key.signing_public
    assert len(got.fingerprint) == 64


def test_certificate_is_valid_from_not_before_inclusive(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    assert verify_certificate(cert.encoded, ca_key.public_key(), NOT_BEFORE) == cert


@pytest.mark.parametrize("now", [NOT_AFTER, NOT_AFTER + 1, NOT_AFTER + 10 * 365 * 86_400])
def test_expired_certificate_is_refused_naming_node_and_times(
    cert: Certificate, ca_key: Ed25519PrivateKey, now: float
) -> None:
    with pytest.raises(CertificateExpired) as info:
        verify_certificate(cert.encoded, ca_key.public_key(), now)
    message = str(info.value)
    assert "'edge-1'" in message
    assert "expired at 2023-11-15T22:13:20Z" in message


def test_not_yet_valid_certificate_is_refused_naming_node_and_times(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(CertificateNotYetValid) as info:
        verify_certificate(cert.encoded, ca_key.public_key(), NOT_BEFORE - 0.5)
    assert "'edge-1'" in str(info.value)
    assert "not valid until 2023-11-14T22:13:20Z" in str(info.value)


def test_certificate_of_another_ca_is_refused_naming_both_cas(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(CertificateFromOtherCA) as info:
        verify_certificate(cert.encoded, other.public_key(), NOW)
    assert key_id(ca_key) in str(info.value)
    assert key_id(other) in str(info.value)


def test_forgery_claiming_our_ca_is_a_bad_signature(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    forger = Ed25519PrivateKey.generate()
    body = dataclasses.replace(cert.body, node_id="edge-9")  # issuer still says our CA
    forged = seal(forger, codec.pack_struct(body))
    with pytest.raises(BadCertificateSignature) as info:
        verify_certificate(forged, ca_key.public_key(), NOW)
    assert type(info.value) is BadCertificateSignature
    assert "'edge-9'" in str(info.value)


def test_every_single_bit_flip_is_refused_as_bad_signature_or_malformed(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    seen: set[type[IdentityError]] = set()
    for bit in range(len(cert.encoded) * 8):
        with pytest.raises((BadCertificateSignature, MalformedCertificate)) as info:
            verify_certificate(flipped(cert.encoded, bit), ca_key.public_key(), NOW)
        seen.add(type(info.value))
    assert {BadCertificateSignature, MalformedCertificate} <= seen


def test_every_truncation_and_extension_is_malformed(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    for size in range(len(cert.encoded)):
        with pytest.raises(MalformedCertificate):
            verify_certificate(cert.encoded[:size], ca_key.public_key(), NOW)
    with pytest.raises(MalformedCertificate, match="trailing"):
        verify_certificate(cert.encoded + b"\x00", ca_key.public_key(), NOW)


def test_non_canonical_encoding_of_a_valid_certificate_is_refused(cert: Certificate) -> None:
    import msgpack

    # Same fields, opposite key order: decodes to the same values, but is not what was signed.
    reordered = msgpack.packb({"signature": cert.signature, "body": codec.pack_struct(cert.body)})
    with pytest.raises(MalformedCertificate, match="canonical"):
        decode_certificate(reordered)


@pytest.mark.parametrize(
    "change",
    [
        {"signing_key": b"short"},
        {"curve_key": b"x" * 33},
        {"not_after": NOT_BEFORE},
        {"serial": -1},
        {"node_id": "../etc"},
    ],
)
def test_ca_signed_nonsense_is_malformed(
    cert: Certificate, ca_key: Ed25519PrivateKey, change: dict[str, object]
) -> None:
    body = dataclasses.replace(cert.body, **change)  # type: ignore[arg-type]
    with pytest.raises(MalformedCertificate):
        verify_certificate(seal(ca_key, codec.pack_struct(body)), ca_key.public_key(), NOW)


def test_issue_refuses_invalid_node_id_and_window(
    ca_key: Ed25519PrivateKey, node_key: NodeKey
) -> None:
    with pytest.raises(InvalidNodeId, match="1-64 characters"):
        issue(ca_key, node_key, node_id="edge/1")
    with pytest.raises(ValueError, match="not_before"):
        issue(ca_key, node_key, not_after=NOT_BEFORE - 1)


@pytest.mark.parametrize("node_id", ["a", "edge-1", "host.site_3", "A" * 64, "0"])
def test_valid_node_ids(node_id: str) -> None:
    assert check_node_id(node_id) == node_id


@pytest.mark.parametrize("node_id", ["", "A" * 65, "-rf", ".hidden", "..", "a b", "é", "a/b"])
def test_invalid_node_ids_are_refused_with_the_rule(node_id: str) -> None:
    with pytest.raises(InvalidNodeId, match="A-Z a-z 0-9"):
        check_node_id(node_id)


# --- revocation ---------------------------------------------------------------------


def test_revoked_certificate_is_refused(cert: Certificate, ca_key: Ed25519PrivateKey) -> None:
    signed = sign_revocation_list(ca_key, [7, cert.serial, 7], issued_at=NOW)
    revocations = verify_revocation_list(signed, ca_key.public_key())
    assert revocations.serials == (7, cert.serial)
    assert revocations.is_revoked(cert)
    with pytest.raises(CertificateRevoked) as info:
        verify_certificate(cert.encoded, ca_key.public_key(), NOW, revocations)
    assert "'edge-1'" in str(info.value)
    assert "serial 4242" in str(info.value)


def test_certificate_not_on_the_list_passes(
    cert: Certificate, ca_key: Ed25519PrivateKey, node_key: NodeKey
) -> None:
    revocations = verify_revocation_list(
        sign_revocation_list(ca_key, [1, 2, 3], issued_at=NOW), ca_key.public_key()
    )
    assert not revocations.is_revoked(cert)
    assert verify_certificate(cert.encoded, ca_key.public_key(), NOW, revocations) == cert


def test_revocation_list_of_another_ca_is_refused(cert: Certificate) -> None:
    other = Ed25519PrivateKey.generate()
    signed = sign_revocation_list(other, [cert.serial], issued_at=NOW)
    with pytest.raises(InvalidRevocationList, match="does not verify"):
        verify_revocation_list(signed, Ed25519PrivateKey.generate().public_key())
    revocations = verify_revocation_list(signed, other.public_key())
    assert not revocations.is_revoked(cert)  # same serial, different CA


def test_revocation_list_every_bit_flip_is_refused(ca_key: Ed25519PrivateKey) -> None:
    signed = sign_revocation_list(ca_key, [10, 20, 2**63], issued_at=NOW)
    for bit in range(len(signed) * 8):
        with pytest.raises(InvalidRevocationList):
            verify_revocation_list(flipped(signed, bit), ca_key.public_key())


def test_revocation_list_of_another_ca_cannot_clear_a_certificate(
    cert: Certificate, ca_key: Ed25519PrivateKey
) -> None:
    other = Ed25519PrivateKey.generate()
    foreign = verify_revocation_list(
        sign_revocation_list(other, [], issued_at=NOW), other.public_key()
    )
    with pytest.raises(InvalidRevocationList, match="cannot judge"):
        verify_certificate(cert.encoded, ca_key.public_key(), NOW, foreign)
