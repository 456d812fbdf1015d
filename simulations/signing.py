"""Cheap but real record signatures for simulated nodes.

Real nodes sign records with Ed25519; at 10,000 simulated nodes in one process
that would dominate the run. The simulator therefore signs with HMAC-SHA256
under a per-node key derived from the node id: a forged or altered record is
still rejected (the verifier recomputes the MAC over the exact bytes), so the
core's signature path is exercised, only the primitive is cheaper.

Verification cache: every simulated node verifies the same signed record when
it hears it. `VerificationCache` remembers, per (node id, version, signature),
the record bytes it verified and the decoded `NodeRecord`, and is shared by all
simulated nodes, so a record is MAC-checked and decoded once per process
instead of once per node. A hit requires the exact same bytes, so a record
whose bytes were changed under an old signature is still checked (and refused).
The cache is a simulator shortcut: a real node verifies for itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from novacron.protocol.codec import pack_struct, unpack_struct
from novacron.protocol.errors import IdentityError, ProtocolError
from novacron.protocol.messages import NodeRecord, SignedRecord

RecordSigner = Callable[[NodeRecord], SignedRecord]
RecordVerifier = Callable[[SignedRecord], NodeRecord]


def node_key(node_id: str) -> bytes:
    """The simulated node's signing key: a pure function of its id."""
    return hashlib.sha256(b"novacron-sim-key:" + node_id.encode()).digest()


def mac(node_id: str, data: bytes) -> bytes:
    """HMAC-SHA256 of `data` under `node_id`'s key."""
    return hmac.digest(node_key(node_id), data, "sha256")


def make_signer(node_id: str) -> RecordSigner:
    """A signer that only signs its own node's records, as a real key would."""

    def sign(record: NodeRecord) -> SignedRecord:
        if record.node_id != node_id:
            raise ValueError(f"{node_id} cannot sign a record of {record.node_id}")
        data = pack_struct(record)
        return SignedRecord(record.node_id, record.version, data, mac(node_id, data))

    return sign


def verify_uncached(signed: SignedRecord) -> NodeRecord:
    """Check the MAC, decode, and check the envelope matches the contents."""
    if not hmac.compare_digest(mac(signed.node_id, signed.record), signed.signature):
        raise IdentityError(f"bad record signature for {signed.node_id}")
    record = unpack_struct(NodeRecord, signed.record)
    if record.node_id != signed.node_id or record.version != signed.version:
        raise ProtocolError("signed record envelope does not match its contents")
    return record


class VerificationCache:
    """A verifier shared by all simulated nodes that verifies each record once."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # False: verify every time (to measure the cost)
        self._seen: dict[tuple[str, int, bytes], tuple[bytes, NodeRecord]] = {}
        self.hits = 0  # verifications answered from the cache
        self.misses = 0  # verifications really computed (MAC + decode)

    def __call__(self, signed: SignedRecord) -> NodeRecord:
        if not self.enabled:
            self.misses += 1
            return verify_uncached(signed)
        key = (signed.node_id, signed.version, signed.signature)
        found = self._seen.get(key)
        if found is not None and (found[0] is signed.record or found[0] == signed.record):
            self.hits += 1
            return found[1]
        self.misses += 1
        record = verify_uncached(signed)  # raises on a bad signature: never cached
        self._seen[key] = (signed.record, record)
        return record
