"""The membership core's keyring on a real host: our Ed25519 key and the trust store.

Implements `core.keyring.Keyring`: the core asks it to sign what this node
says and to check what others say, and it answers from the certificates the
`TrustStore` has verified against the CA (valid now, not revoked). The trust
store is the one place that decides whether a certificate counts, for ZAP
and for the core alike.
"""

from __future__ import annotations

from novacron.protocol.claims import Claim, claim_valid, sign_claim, signer_of
from novacron.protocol.errors import InvalidRevocationList, ProtocolError
from novacron.protocol.keys import NodeKey
from novacron.protocol.messages import NodeRecord, SignedRecord
from novacron.protocol.records import sign_record, verify_record

from .security import PeerRefused, TrustStore


class AgentKeyring:
    """This node's key and the cluster's certificates, as the core's `Keyring`."""

    def __init__(self, key: NodeKey, trust: TrustStore, revocations: bytes | None) -> None:
        self._key = key  # signs our record and our claims
        self._trust = trust  # every certificate we know, verified
        self._crl = revocations or b""  # the newest revocation list, as the CA signed it

    def sign_record(self, record: NodeRecord) -> SignedRecord:
        return sign_record(self._key, record)

    def verify_record(self, signed: SignedRecord) -> NodeRecord:
        cert = self._trust.certificate_for(signed.node_id)
        if cert is None:
            raise ProtocolError(f"no valid certificate known for {signed.node_id[:80]!r}")
        return verify_record(signed, cert)

    def sign_claim(self, claim: Claim) -> bytes:
        return sign_claim(self._key, claim)

    def verify_claim(self, claim: Claim) -> bool:
        cert = self._trust.certificate_for(signer_of(claim))
        if cert is None:
            return False
        try:
            return claim_valid(cert.signing_public_key(), claim)
        except ProtocolError:
            return False

    def learn_certificate(self, node_id: str, certificate: bytes) -> bool:
        try:
            cert = self._trust.add_certificate(certificate)
        except PeerRefused:
            return False
        return cert.node_id == node_id

    def certificate(self, node_id: str) -> bytes:
        cert = self._trust.certificate_for(node_id)
        return cert.encoded if cert is not None else b""

    def revocations(self) -> tuple[float, bytes]:
        held = self._trust.revocations
        return (held.issued_at, self._crl) if held is not None and self._crl else (0.0, b"")

    def adopt_revocations(self, data: bytes) -> bool:
        try:
            adopted = self._trust.update_revocations(data)
        except InvalidRevocationList:
            return False
        if adopted:
            self._crl = bytes(data)
        return adopted

    def revoked(self, node_id: str) -> bool:
        return self._trust.is_revoked(node_id)
