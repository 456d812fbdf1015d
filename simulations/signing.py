"""Cheap but real signatures for simulated and test nodes: the one keyring they share.

Real nodes sign with Ed25519 and check certificates against the CA; at
10,000 simulated nodes in one process that would dominate the run. Simulated
nodes (and the core's unit tests) therefore sign with HMAC under a per-node
key derived from the node id: a forged or altered record or claim is still
rejected (the verifier recomputes the MAC over the exact bytes), so the
core's signature paths are exercised; only the primitive is cheaper. The
sizes are the real ones (64-byte signatures, certificates of a real
certificate's length), so the simulator's bandwidth figures count the bytes
a real mesh sends.

`SimKeyring` implements the core's `Keyring` for one node; `SimCA` issues the
simulated CA's revocation lists. Records are verified through a
`VerificationCache` and claims through a `ClaimCache`, each shared by all
simulated nodes: each signed record or claim is checked once per process
instead of once per node (a hit requires the exact same bytes, or the same
claim object). The caches are a simulator shortcut: a real node verifies for
itself.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable

import msgpack

from novacron.protocol.claims import Claim, claim_bytes, signer_of
from novacron.protocol.codec import pack_struct
from novacron.protocol.errors import IdentityError
from novacron.protocol.messages import NodeRecord, SignedRecord
from novacron.protocol.records import decode_signed_record

RecordSigner = Callable[[NodeRecord], SignedRecord]
RecordVerifier = Callable[[SignedRecord], NodeRecord]

SIGNATURE_SIZE = 64  # an Ed25519 signature's size
CERTIFICATE_SIZE = 293  # a real certificate's encoded size, for a 13-character node id
CA_ID = "sim-ca"  # the simulated CA's key name


@functools.cache
def node_key(node_id: str) -> bytes:
    """The simulated node's signing key: a pure function of its id."""
    return hashlib.sha256(b"novacron-sim-key:" + node_id.encode()).digest()


def mac(node_id: str, data: bytes, key: bytes | None = None) -> bytes:
    """A 64-byte MAC of `data` under `node_id`'s key (or `key`, to forge)."""
    return hmac.digest(key or node_key(node_id), data, "sha512")


def make_signer(node_id: str, key: bytes | None = None) -> RecordSigner:
    """Signs `node_id`'s records (with another `key`: a forger's signer)."""

    def sign(record: NodeRecord) -> SignedRecord:
        if record.node_id != node_id:
            raise ValueError(f"{node_id} cannot sign a record of {record.node_id}")
        data = pack_struct(record)
        return SignedRecord(record.node_id, record.version, data, mac(node_id, data, key))

    return sign


def sign_claim_as_signer(claim: Claim, key: bytes | None = None) -> bytes:
    """The signature of `claim` by whoever must sign it (the simulator holds every key)."""
    return mac(signer_of(claim), claim_bytes(claim), key)


@functools.cache
def certificate_of(node_id: str) -> bytes:
    """A stand-in for `node_id`'s certificate: deterministic, of a real one's size."""
    head = b"sim-certificate:" + node_id.encode() + b":"
    filler = hashlib.sha256(head).digest() * (CERTIFICATE_SIZE // 32 + 1)
    return (head + filler)[: max(CERTIFICATE_SIZE, len(head))]


def verify_uncached(signed: SignedRecord) -> NodeRecord:
    """Check the MAC, decode, and check the envelope matches the contents."""
    if not hmac.compare_digest(mac(signed.node_id, signed.record), signed.signature):
        raise IdentityError(f"bad record signature for {signed.node_id}")
    return decode_signed_record(signed)


class VerificationCache:
    """A record verifier shared by all simulated nodes that verifies each record once."""

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


class ClaimCache:
    """Claim verifications shared by all simulated nodes: each claim is checked once
    per process. Gossip relays the very objects it received, so one accusation
    heard by ten thousand nodes costs one MAC here, as records do with
    `VerificationCache`; such a hit is by identity (the object held, so its id is
    not reused while cached). Push-pull lines are read into a new claim by every
    receiver, so a claim is also looked up by value: a verdict depends on the
    claim's fields alone, signature included, so an equal claim has the same one
    and a forgery, which differs in its signature, is checked and refused on its
    own. (Only with an `int` incarnation: `True == 1 == 1.0`, yet msgpack signs
    them apart. The codec admits nothing else; a test might.) A real node
    verifies every claim itself."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit  # entries of either map before it is emptied
        self._by_id: dict[int, tuple[Claim, bool]] = {}  # id -> (claim, verdict)
        self._by_value: dict[Claim, bool] = {}  # claim -> verdict
        self.hits = 0  # verifications answered from the cache
        self.misses = 0  # verifications computed

    def __call__(self, claim: Claim) -> bool:
        found = self._by_id.get(id(claim))
        if found is not None and found[0] is claim:
            self.hits += 1
            return found[1]
        by_value = type(claim.incarnation) is int
        verdict = self._by_value.get(claim) if by_value else None
        if verdict is not None:
            self.hits += 1
            return verdict
        self.misses += 1
        verdict = hmac.compare_digest(sign_claim_as_signer(claim), claim.signature)
        for seen in (self._by_id, self._by_value):
            if len(seen) >= self.limit:
                seen.clear()
        self._by_id[id(claim)] = (claim, verdict)
        if by_value:
            self._by_value[claim] = verdict
        return verdict


def verify_claim_uncached(claim: Claim) -> bool:
    """Whether `claim` carries the MAC of whoever must sign it."""
    return hmac.compare_digest(sign_claim_as_signer(claim), claim.signature)


class SimCA:
    """The simulated CA: signs revocation lists naming revoked node ids."""

    @staticmethod
    def revocation_list(issued_at: float, revoked: tuple[str, ...] | list[str]) -> bytes:
        body = msgpack.packb([issued_at, sorted(revoked)])
        return msgpack.packb([body, mac(CA_ID, body)])  # type: ignore[no-any-return]

    @staticmethod
    def open(data: bytes) -> tuple[float, frozenset[str]] | None:
        """The list's issue time and revoked ids if the CA signed it, else None."""
        try:
            body, signature = msgpack.unpackb(data)
            if not hmac.compare_digest(mac(CA_ID, body), signature):
                return None
            issued_at, revoked = msgpack.unpackb(body)
            return float(issued_at), frozenset(str(n) for n in revoked)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None


class SimKeyring:
    """One simulated node's keyring (the core's `Keyring`), with MACs for signatures."""

    __slots__ = ("_crl", "_revoked", "_verify_claim", "_verify_record", "node_id")

    def __init__(
        self,
        node_id: str,
        records: RecordVerifier | None = None,
        claims: Callable[[Claim], bool] | None = None,
    ) -> None:
        self.node_id = node_id  # whose claims and records this keyring signs
        self._verify_record = records or verify_uncached  # shared cache or plain checks
        self._verify_claim = claims or verify_claim_uncached  # likewise for claims
        self._crl: tuple[float, bytes] = (0.0, b"")  # newest revocation list adopted
        self._revoked: frozenset[str] = frozenset()  # the ids it revokes

    def sign_record(self, record: NodeRecord) -> SignedRecord:
        return make_signer(self.node_id)(record)

    def verify_record(self, signed: SignedRecord) -> NodeRecord:
        if signed.node_id in self._revoked:
            raise IdentityError(f"the certificate of {signed.node_id} is revoked")
        return self._verify_record(signed)

    def sign_claim(self, claim: Claim) -> bytes:
        if signer_of(claim) != self.node_id:
            raise ValueError(f"{self.node_id} cannot sign a claim as {signer_of(claim)}")
        return sign_claim_as_signer(claim)

    def verify_claim(self, claim: Claim) -> bool:
        if self._revoked and signer_of(claim) in self._revoked:
            return False
        return self._verify_claim(claim)

    def learn_certificate(self, node_id: str, certificate: bytes) -> bool:
        return node_id not in self._revoked and certificate == certificate_of(node_id)

    def certificate(self, node_id: str) -> bytes:
        return certificate_of(node_id)

    def revocations(self) -> tuple[float, bytes]:
        return self._crl

    def adopt_revocations(self, data: bytes) -> bool:
        opened = SimCA.open(data)
        if opened is None or opened[0] <= self._crl[0]:
            return False
        self._crl = (opened[0], data)
        self._revoked = opened[1]
        return True

    def revoked(self, node_id: str) -> bool:
        return node_id in self._revoked
