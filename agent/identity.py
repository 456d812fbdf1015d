"""The agent's own identity, loaded and checked before anything listens.

A node refuses to start on a missing, unreadable, expired, foreign or
mismatched certificate, with a message that names the file and the problem:
better a clear refusal at 3 a.m. than a node that silently never joins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from novacron.protocol import keyfiles
from novacron.protocol.certificates import Certificate, verify_certificate
from novacron.protocol.errors import IdentityError
from novacron.protocol.keys import Ed25519PublicKey, NodeKey
from novacron.protocol.revocation import RevocationList, verify_revocation_list


class IdentityProblem(Exception):
    """The node's identity files cannot be used; the message says which and why."""


@dataclass(frozen=True)
class NodeIdentity:
    """Everything that makes this node a member: keys, certificate, the CA it trusts."""

    node_id: str  # from the certificate
    key: NodeKey  # signs our record; our CurveZMQ key pair
    certificate: Certificate  # verified against `ca_public`
    certificate_bytes: bytes  # as issued, to hand to peers
    ca_public: Ed25519PublicKey  # verifies every peer's certificate
    revocations: RevocationList | None  # the CA's signed list, if the operator gave one
    revocations_bytes: bytes | None


def load_identity(
    ca_file: Path, cert_file: Path, key_file: Path, crl_file: Path | None, now: float
) -> NodeIdentity:
    """Load and cross-check the identity files; raise `IdentityProblem` on any fault."""
    try:
        ca_public = keyfiles.load_ca_public(ca_file)
        revocations, crl_bytes = _load_revocations(crl_file, ca_public)
        cert_bytes = keyfiles.read_certificate(cert_file)
        cert = verify_certificate(cert_bytes, ca_public, now, revocations)
        key = keyfiles.load_node_key(key_file)
    except IdentityError as exc:
        raise IdentityProblem(str(exc)) from None
    _check_key_matches(key, cert, key_file, cert_file)
    return NodeIdentity(cert.node_id, key, cert, cert_bytes, ca_public, revocations, crl_bytes)


def _load_revocations(
    crl_file: Path | None, ca_public: Ed25519PublicKey
) -> tuple[RevocationList | None, bytes | None]:
    if crl_file is None:
        return None, None
    data = keyfiles.read_revocation_list(crl_file)
    return verify_revocation_list(data, ca_public), data


def _check_key_matches(key: NodeKey, cert: Certificate, key_file: Path, cert_file: Path) -> None:
    """The key file must hold the private halves of the certificate's public keys."""
    if key.signing_public != cert.body.signing_key or key.curve_public != cert.curve_key:
        raise IdentityProblem(
            f"key {key_file} does not belong to certificate {cert_file} "
            f"(node {cert.node_id!r}): issue a new pair with 'nova ca issue {cert.node_id}'"
        )
