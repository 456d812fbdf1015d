"""Node certificates: the cluster CA vouches that a node id owns two public keys.

A certificate binds a node id to its Ed25519 key (which signs its gossiped
record) and its X25519 key (which CurveZMQ admits), for a validity window,
under a serial the CA can revoke. It travels as a `Sealed` envelope: the
msgpack body and the CA's Ed25519 signature over it.

Verification takes `now` from the caller: this package has no clock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import codec
from .errors import (
    BadCertificateSignature,
    CertificateExpired,
    CertificateFromOtherCA,
    CertificateNotYetValid,
    CertificateRevoked,
    InvalidNodeId,
    InvalidRevocationList,
    MalformedCertificate,
    ProtocolError,
)
from .keys import (
    RAW_KEY_SIZE,
    Ed25519PrivateKey,
    Ed25519PublicKey,
    curve_z85,
    key_id,
    signature_valid,
)
from .sealed import seal, unseal

if TYPE_CHECKING:
    from .revocation import RevocationList

NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_SERIAL = 2**64 - 1  # serials are unsigned 64-bit integers on the wire


def check_node_id(node_id: str) -> str:
    """Return `node_id` if usable as a name on the wire and as a file name, else raise.

    1-64 characters of [A-Za-z0-9._-], starting with a letter or digit (so it
    is never a hidden file, `..`, or something that looks like an option).
    """
    if not isinstance(node_id, str) or NODE_ID_RE.fullmatch(node_id) is None:
        raise InvalidNodeId(
            f"invalid node id {str(node_id)[:80]!r}: use 1-64 characters of "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return node_id


def format_time(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC, for messages; falls back to the number if out of range."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp!r} (unix seconds)"


@dataclass(frozen=True, slots=True)
class CertificateBody:
    """What the CA signs. Field names are the wire names."""

    node_id: str  # the member this certificate admits
    signing_key: bytes  # raw Ed25519 public key: verifies the node's signed records
    curve_key: bytes  # raw X25519 public key: the node's CurveZMQ identity
    not_before: float  # unix seconds; invalid before this
    not_after: float  # unix seconds; invalid from this instant on
    serial: int  # unique per CA; what a revocation list names
    issuer: str  # key id of the CA that signed (see keys.key_id)
    # What the CA lets the holder do besides nothing: () is a node, a mesh member;
    # ("operator",) a person who may command hosts from anywhere, never a member.
    roles: tuple[str, ...] = ()


ROLE_RE = re.compile(
    r"[a-z][a-z0-9-]{0,31}"
)  # a role's name; roles an agent does not know grant nothing


@dataclass(frozen=True, slots=True)
class Certificate:
    """A decoded certificate together with the exact bytes it was decoded from."""

    body: CertificateBody
    signature: bytes  # the CA's Ed25519 signature over the encoded body
    encoded: bytes  # the whole certificate as issued; what nodes send and store

    @property
    def node_id(self) -> str:
        return self.body.node_id

    @property
    def serial(self) -> int:
        return self.body.serial

    @property
    def issuer(self) -> str:
        return self.body.issuer

    @property
    def not_before(self) -> float:
        return self.body.not_before

    @property
    def not_after(self) -> float:
        return self.body.not_after

    @property
    def curve_key(self) -> bytes:
        return self.body.curve_key

    @property
    def is_member(self) -> bool:
        """Whether the certificate makes its holder a member of the mesh (a node)."""
        return not self.body.roles or "node" in self.body.roles

    def has_role(self, role: str) -> bool:
        return role in self.body.roles

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the whole certificate, hex: how operators compare certificates."""
        return hashlib.sha256(self.encoded).hexdigest()

    def signing_public_key(self) -> Ed25519PublicKey:
        """The node's Ed25519 key, for checking its signed records."""
        try:
            return Ed25519PublicKey.from_public_bytes(self.body.signing_key)
        except ValueError as exc:
            raise MalformedCertificate(f"{self.label}: unusable signing key: {exc}") from exc

    def curve_public_z85(self) -> str:
        """The node's CurveZMQ public key as pyzmq expects it (`curve_serverkey`)."""
        return curve_z85(self.body.curve_key)

    @property
    def label(self) -> str:
        """How messages name this certificate: its node id and serial."""
        return f"certificate for node {self.node_id!r} (serial {self.serial})"


def issue_certificate(
    ca_key: Ed25519PrivateKey,
    node_id: str,
    signing_key: bytes,
    curve_key: bytes,
    *,
    not_before: float,
    not_after: float,
    serial: int,
    roles: tuple[str, ...] = (),
) -> Certificate:
    """Sign a certificate for `node_id`'s raw public keys, valid in [not_before, not_after)."""
    body = CertificateBody(
        node_id=check_node_id(node_id),
        signing_key=bytes(signing_key),
        curve_key=bytes(curve_key),
        not_before=float(not_before),
        not_after=float(not_after),
        serial=serial,
        issuer=key_id(ca_key),
        roles=tuple(roles),
    )
    problem = _body_problem(body)
    if problem:
        raise ValueError(f"cannot issue certificate for node {node_id!r}: {problem}")
    return decode_certificate(seal(ca_key, codec.pack_struct(body)))


def decode_certificate(data: bytes) -> Certificate:
    """Parse a certificate without trusting it (use `verify_certificate` to trust it).

    Any malformation is a `MalformedCertificate`, whatever the bytes are.
    """
    sealed = unseal(data, MalformedCertificate, "certificate")
    try:
        body = codec.unpack_struct(CertificateBody, sealed.body)
    except ProtocolError as exc:
        raise MalformedCertificate(f"certificate body is malformed: {exc}") from exc
    if codec.pack_struct(body) != sealed.body:
        raise MalformedCertificate("certificate body is not in canonical encoding")
    problem = _body_problem(body)
    if problem:
        raise MalformedCertificate(f"certificate for node {body.node_id[:80]!r}: {problem}")
    return Certificate(body=body, signature=sealed.signature, encoded=bytes(data))


def _body_problem(body: CertificateBody) -> str:
    """What is structurally wrong with a body, or "" if nothing."""
    if NODE_ID_RE.fullmatch(body.node_id) is None:
        return "invalid node id"
    for name in ("signing_key", "curve_key"):
        if len(getattr(body, name)) != RAW_KEY_SIZE:
            return f"{name} must be {RAW_KEY_SIZE} bytes"
    if not body.not_before < body.not_after:
        return "not_before must be earlier than not_after"
    if not 0 <= body.serial <= MAX_SERIAL:
        return "serial must be an unsigned 64-bit integer"
    bad = [role for role in body.roles if ROLE_RE.fullmatch(role) is None]
    if bad or len(set(body.roles)) != len(body.roles) or len(body.roles) > 8:
        return "roles must be at most 8 distinct names of a-z, 0-9 and '-'"
    return ""


def verify_certificate(
    data: bytes,
    ca_public: Ed25519PublicKey,
    now: float,
    revocations: RevocationList | None = None,
) -> Certificate:
    """Decode `data` and check it is a certificate this CA issued, valid at `now`, not revoked.

    Raises (all `IdentityError`): `MalformedCertificate`, `BadCertificateSignature`
    (its subclass `CertificateFromOtherCA` when the issuer differs),
    `CertificateNotYetValid`, `CertificateExpired`, `CertificateRevoked`.
    """
    cert = decode_certificate(data)
    check_signature(cert, ca_public)
    check_validity(cert, now)
    if revocations is not None:
        check_not_revoked(cert, revocations)
    return cert


def check_issuer(cert: Certificate, ca_key_id: str) -> None:
    """Raise `CertificateFromOtherCA` unless `cert` names the CA with key id `ca_key_id`
    (cheap: no signature is checked, so a match proves nothing by itself)."""
    if cert.issuer != ca_key_id:
        raise CertificateFromOtherCA(
            f"{cert.label} was issued by CA {cert.issuer[:64]!r}, "
            f"not by this cluster's CA {ca_key_id!r}"
        )


def check_signature(cert: Certificate, ca_public: Ed25519PublicKey) -> None:
    """Raise unless the CA with key `ca_public` signed `cert` (time is not considered).

    `decode_certificate` checked that the body is canonical, so re-encoding it
    gives exactly the bytes the CA signed.
    """
    if signature_valid(ca_public, cert.signature, codec.pack_struct(cert.body)):
        return
    expected = key_id(ca_public)
    check_issuer(cert, expected)
    raise BadCertificateSignature(
        f"{cert.label}: signature does not verify under CA {expected!r} (altered or forged)"
    )


def check_validity(cert: Certificate, now: float) -> None:
    """Raise unless `now` lies in the certificate's window [not_before, not_after)."""
    if now < cert.not_before:
        raise CertificateNotYetValid(
            f"{cert.label} is not valid until {format_time(cert.not_before)}; "
            f"now is {format_time(now)} (check the clocks)"
        )
    if now >= cert.not_after:
        raise CertificateExpired(
            f"{cert.label} expired at {format_time(cert.not_after)}; now is {format_time(now)}"
        )


def check_not_revoked(cert: Certificate, revocations: RevocationList) -> None:
    """Raise if `revocations` (from the same CA) lists the certificate's serial."""
    if revocations.issuer != cert.issuer:
        raise InvalidRevocationList(
            f"revocation list from CA {revocations.issuer!r} cannot judge {cert.label} "
            f"issued by CA {cert.issuer[:64]!r}"
        )
    if revocations.is_revoked(cert):
        raise CertificateRevoked(
            f"{cert.label} was revoked (revocation list of {format_time(revocations.issued_at)})"
        )
