"""What the membership core asks of keys and certificates: an injected keyring.

The core never reads a key, a certificate or a clock; it asks its keyring to
sign what this node says (its record, its own liveness, its accusations) and
to check what others say. Three keyrings implement this one interface: the
agent's (Ed25519 keys and the trust store's certificates, `agent/keyring.py`),
the simulator's and the tests' (cheap MACs under per-node keys, with
certificates of realistic size). So the rules that decide what is believed
run unchanged in a unit test, a 10,000-node simulation and on a real host.

Who must sign which claim is the protocol's rule (`protocol/claims.py`);
when to ask (cheap checks first, signatures last) is the core's.
"""

from __future__ import annotations

from typing import Protocol

from novacron.protocol.claims import Claim
from novacron.protocol.messages import NodeRecord, SignedRecord


class Keyring(Protocol):
    """This node's signing key and its knowledge of every member's certificate."""

    def sign_record(self, record: NodeRecord) -> SignedRecord:
        """Encode and sign this node's own record."""
        ...

    def verify_record(self, signed: SignedRecord) -> NodeRecord:
        """The record's contents if its owner signed it; else raise a `ProtocolError`."""
        ...

    def sign_claim(self, claim: Claim) -> bytes:
        """This node's signature of a claim it makes (about itself, or an accusation)."""
        ...

    def verify_claim(self, claim: Claim) -> bool:
        """Whether the claim's signer (`claims.signer_of`) signed it, under a certificate
        valid now and not revoked."""
        ...

    def learn_certificate(self, node_id: str, certificate: bytes) -> bool:
        """Admit `certificate` if it is a valid certificate of `node_id` (CA-signed,
        within its validity, not revoked); whether `node_id` is now known."""
        ...

    def certificate(self, node_id: str) -> bytes:
        """`node_id`'s certificate as issued (ours included), or b"" if none is known."""
        ...

    def revocations(self) -> tuple[float, bytes]:
        """The newest revocation list held: (its issue time, its signed bytes); (0, b"")."""
        ...

    def adopt_revocations(self, data: bytes) -> bool:
        """Take a signed revocation list if it is valid and newer than the one held."""
        ...

    def revoked(self, node_id: str) -> bool:
        """Whether the list held revokes every certificate known for `node_id`."""
        ...
