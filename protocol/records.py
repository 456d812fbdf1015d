"""Signed node records: each node signs the record it owns, so relays cannot forge it.

A `SignedRecord` carries the exact record bytes its owner signed. Receivers
check the signature against the owner's certificate before decoding, then
check that the decoded record agrees with the envelope it arrived in.
"""

from __future__ import annotations

from . import codec
from .certificates import Certificate
from .errors import (
    BadRecordSignature,
    MalformedRecord,
    ProtocolError,
    RecordContentRefused,
    RecordSignerMismatch,
)
from .keys import Ed25519PrivateKey, Ed25519PublicKey, NodeKey, signature_valid
from .messages import NodeRecord, SignedRecord


def sign_record(node_key: NodeKey | Ed25519PrivateKey, record: NodeRecord) -> SignedRecord:
    """Encode `record` and sign the encoding with the node's Ed25519 key."""
    signing = node_key.signing if isinstance(node_key, NodeKey) else node_key
    encoded = codec.pack_struct(record)
    return SignedRecord(
        node_id=record.node_id,
        version=record.version,
        record=encoded,
        signature=signing.sign(encoded),
    )


def verify_record(signed: SignedRecord, signer: Certificate | Ed25519PublicKey) -> NodeRecord:
    """Return the record in `signed` if its owner signed it, else raise an `IdentityError`.

    `signer` is the owner's certificate (already verified against the CA) or
    its bare public key; a certificate must be for `signed.node_id`.
    Raises `RecordSignerMismatch`, `BadRecordSignature` or `MalformedRecord` (its
    subclass `RecordContentRefused` when the signed bytes do not decode).
    """
    if isinstance(signer, Certificate):
        if signer.node_id != signed.node_id:
            where = _where(signed)
            raise RecordSignerMismatch(
                f"{where} cannot be checked with the certificate of node {signer.node_id!r}"
            )
        public = signer.signing_public_key()
    else:
        public = signer
    if not signature_valid(public, signed.signature, signed.record):
        raise BadRecordSignature(f"{_where(signed)}: signature does not verify (altered or forged)")
    return decode_signed_record(signed)


def decode_signed_record(signed: SignedRecord) -> NodeRecord:
    """The record in `signed`'s bytes, checked against its envelope; the caller has checked
    the signature. Raises `RecordContentRefused` or `MalformedRecord`."""
    try:
        record = codec.unpack_struct(NodeRecord, signed.record)
    except ProtocolError as exc:
        raise RecordContentRefused(f"{_where(signed)}: record bytes do not decode: {exc}") from exc
    if record.node_id != signed.node_id or record.version != signed.version:
        raise MalformedRecord(
            f"{_where(signed)}: signed bytes hold node {record.node_id[:80]!r} "
            f"version {record.version}, not what the envelope says"
        )
    return record


def _where(signed: SignedRecord) -> str:
    return f"record of node {str(signed.node_id)[:80]!r} version {signed.version!r}"
