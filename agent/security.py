"""The trust store: which Curve keys may talk to this node, and why others may not.

CurveZMQ proves that a peer holds the secret half of a Curve key; it does not
say whether that key belongs to a member. This module answers that question
for the ZAP handler (`transport.py`): a key is admitted only while it is bound
to a certificate that this cluster's CA signed, that is valid now, and that
the CA has not revoked.

Certificates are learnt as they arrive (gossiped `Alive` messages, discovery,
files) through `add_certificate`, which verifies them. A refused certificate
is remembered by its Curve key, so when that peer later knocks, the refusal
names the real cause ("certificate signed by another CA (key id ...)")
instead of a bare "unknown key". Every refusal is counted by its kind, for
the daemon's statistics, and comes with a sentence the daemon can log.

Pure bookkeeping: no sockets. The clock is injected (`clock`), and every
method that depends on time also takes an explicit `now`.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from novacron.protocol import z85
from novacron.protocol.certificates import (
    Certificate,
    check_not_revoked,
    check_validity,
    decode_certificate,
    verify_certificate,
)
from novacron.protocol.errors import (
    BadCertificateSignature,
    CertificateExpired,
    CertificateFromOtherCA,
    CertificateNotYetValid,
    CertificateRevoked,
    IdentityError,
    MalformedCertificate,
)
from novacron.protocol.keys import RAW_KEY_SIZE, Ed25519PublicKey, key_id
from novacron.protocol.revocation import RevocationList, verify_revocation_list

MAX_REMEMBERED_REFUSALS = 4096  # refused keys kept for precise reasons; oldest forgotten


class Refusal(StrEnum):
    """Why a certificate or a Curve key was not admitted: the counters' keys."""

    UNKNOWN_KEY = "unknown-key"  # no certificate was ever offered for this key
    OTHER_CA = "other-ca"  # the certificate names another CA
    BAD_SIGNATURE = "bad-signature"  # names our CA but the signature does not verify
    MALFORMED = "malformed"  # the bytes are not a certificate
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    NOT_A_NODE = "not-a-node"  # a valid certificate, but for an operator, not a member


class PeerRefused(IdentityError):
    """A certificate or key was refused; `str(exc)` is the sentence to log."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # which counter went up
        self.reason = reason  # human-readable cause, for the log


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one Curve key: its certificate, or why there is none."""

    certificate: Certificate | None
    refusal: Refusal | None = None
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return self.certificate is not None


# Most specific first: CertificateFromOtherCA is a BadCertificateSignature.
_KINDS: tuple[tuple[type[IdentityError], Refusal, str], ...] = (
    (CertificateFromOtherCA, Refusal.OTHER_CA, "certificate signed by another CA"),
    (BadCertificateSignature, Refusal.BAD_SIGNATURE, "certificate signature does not verify"),
    (MalformedCertificate, Refusal.MALFORMED, "malformed certificate"),
    (CertificateExpired, Refusal.EXPIRED, "certificate expired"),
    (CertificateNotYetValid, Refusal.NOT_YET_VALID, "certificate not yet valid"),
    (CertificateRevoked, Refusal.REVOKED, "certificate revoked"),
)


def describe(error: IdentityError, cert: Certificate | None = None) -> PeerRefused:
    """Turn a verification error into a counted kind and a sentence that names the cause."""
    kind, headline = next(
        ((k, h) for cls, k, h in _KINDS if isinstance(error, cls)),
        (Refusal.MALFORMED, "certificate refused"),
    )
    if kind is Refusal.OTHER_CA and cert is not None:
        headline = f"{headline} (key id {cert.issuer[:64]})"
    return PeerRefused(kind, f"{headline}: {error}")


def key_text(curve_key: bytes) -> str:
    """A Curve key as operators see it in logs and in pyzmq: Z85 when well-formed."""
    if len(curve_key) == RAW_KEY_SIZE:
        return z85.encode(curve_key)
    return f"<{len(curve_key)} bytes>"


class TrustStore:
    """Certified Curve keys of this cluster, the CA's revocation list, and refusal counts."""

    def __init__(
        self,
        ca_public: Ed25519PublicKey,
        revocations: RevocationList | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_remembered_refusals: int = MAX_REMEMBERED_REFUSALS,
    ) -> None:
        self._ca = ca_public  # verifies every certificate and revocation list
        self._ca_id = key_id(ca_public)  # named in refusal reasons
        self._revocations = revocations  # newest verified list, or None
        self._clock = clock  # wall clock: certificate windows are in unix seconds
        self._by_key: dict[bytes, Certificate] = {}  # raw Curve key -> verified certificate
        self._by_encoding: dict[bytes, Certificate] = {}  # the same, by the bytes as issued
        # node id -> its Curve keys in `_by_key`: every send looks a peer up by id
        self._keys_of: dict[str, set[bytes]] = {}
        self._refused: OrderedDict[bytes, PeerRefused] = OrderedDict()  # key -> why, LRU
        self._max_refused = max_remembered_refusals
        self.refusals: Counter[Refusal] = Counter()  # refusals by kind, since start
        self.last_refusal: PeerRefused | None = None  # the most recent, for tests and logs
        # The most recent refusal of a certificate someone presented: an unknown key
        # is ordinary life (a member that restarted, not yet reintroduced), not this.
        self.last_certificate_refusal: PeerRefused | None = None
        self.changes = 0  # certificates bound or dropped since start: when to save them

    @property
    def ca_key_id(self) -> str:
        """Key id of this cluster's CA."""
        return self._ca_id

    @property
    def revocations(self) -> RevocationList | None:
        return self._revocations

    # --- learning ----------------------------------------------------------------

    def add_certificate(self, data: bytes, now: float | None = None) -> Certificate:
        """Verify `data` and, if it is a valid certificate of this CA, admit its Curve key.

        Raises `PeerRefused` (counted) naming the cause otherwise; the refused
        key is remembered so a later connection attempt gets the same reason.
        """
        now = self._now(now)
        known = self._by_encoding.get(bytes(data))
        if known is not None and self._current_problem(known, now) is None:
            return known  # verified before: a second Ed25519 check would say the same
        try:
            cert = decode_certificate(data)
        except MalformedCertificate as exc:
            raise self._count(describe(exc)) from None
        try:
            verify_certificate(data, self._ca, now, self._revocations)
        except IdentityError as exc:
            raise self.refuse(exc, cert) from None
        if not cert.is_member:
            refused = self._count(
                PeerRefused(
                    Refusal.NOT_A_NODE,
                    f"{cert.label} has roles {', '.join(cert.body.roles)}: not a mesh member",
                )
            )
            self._remember_refusal(cert.curve_key, refused)
            raise refused
        self._keep(cert)
        return cert

    def refuse(self, error: IdentityError, cert: Certificate | None) -> PeerRefused:
        """Count a certificate refused by `error` (here, or by a cheaper check elsewhere)
        and remember why by its Curve key, so a later connection is told the cause."""
        refused = self._count(describe(error, cert))
        if cert is not None and cert.curve_key not in self._by_key:
            self._remember_refusal(cert.curve_key, refused)
        return refused

    def _keep(self, cert: Certificate) -> None:
        """Bind the key to `cert`; a renewal (later expiry) replaces an older certificate."""
        known = self._by_key.get(cert.curve_key)
        if known is None or cert.not_after >= known.not_after:
            if known is not None:
                self._keys_of.get(known.node_id, set()).discard(cert.curve_key)
                self._by_encoding.pop(known.encoded, None)
            self._by_key[cert.curve_key] = cert
            self._by_encoding[cert.encoded] = cert
            self._keys_of.setdefault(cert.node_id, set()).add(cert.curve_key)
            self.changes += known is None or known.encoded != cert.encoded
        self._refused.pop(cert.curve_key, None)

    def update_revocations(self, data: bytes) -> bool:
        """Adopt a signed revocation list if it is newer than the one held.

        Raises `InvalidRevocationList` if this CA did not sign it. Returns
        whether it was adopted. Revoked keys are refused from the next `judge`.
        """
        revocations = verify_revocation_list(data, self._ca)
        held = self._revocations
        if held is not None and revocations.issued_at <= held.issued_at:
            return False
        self._revocations = revocations
        return True

    def forget(self, node_id: str) -> None:
        """Drop every certificate of `node_id` (e.g. it left for good)."""
        for key in self._keys_of.pop(node_id, set()):
            self._by_encoding.pop(self._by_key.pop(key).encoded, None)
            self.changes += 1

    def certificates(self) -> list[Certificate]:
        """Every certificate held (valid or not: the caller judges)."""
        return list(self._by_key.values())

    def is_revoked(self, node_id: str) -> bool:
        """Whether certificates of `node_id` are known and the revocation list revokes them all."""
        keys = self._keys_of.get(node_id)
        if not keys or self._revocations is None:
            return False
        held = self._revocations
        return all(held.is_revoked(self._by_key[key]) for key in keys)

    # --- judging -----------------------------------------------------------------

    def judge(self, curve_key: bytes, now: float | None = None) -> Verdict:
        """Whether `curve_key` may talk to us now; a refusal is counted and explained."""
        cert = self._by_key.get(curve_key)
        if cert is None:
            return self._refuse_unknown(curve_key)
        problem = self._current_problem(cert, self._now(now))
        if problem is not None:
            refused = self._count(problem)
            return Verdict(None, refused.kind, refused.reason)
        return Verdict(cert)

    def admit(self, curve_key: bytes, now: float | None = None) -> Certificate | None:
        """The certificate admitting `curve_key`, or None (see `last_refusal` for why)."""
        return self.judge(curve_key, now).certificate

    def certificate_for(self, node_id: str, now: float | None = None) -> Certificate | None:
        """The valid certificate of `node_id` with the latest expiry, to connect to it."""
        now = self._now(now)
        best: Certificate | None = None
        for key in self._keys_of.get(node_id, ()):
            cert = self._by_key[key]
            if self._current_problem(cert, now) is not None:
                continue
            if best is None or cert.not_after > best.not_after:
                best = cert
        return best

    def _current_problem(self, cert: Certificate, now: float) -> PeerRefused | None:
        """Why a certificate that was valid when learnt no longer is (time, revocation)."""
        try:
            check_validity(cert, now)
            if self._revocations is not None:
                check_not_revoked(cert, self._revocations)
        except IdentityError as exc:
            return describe(exc, cert)
        return None

    def _refuse_unknown(self, curve_key: bytes) -> Verdict:
        refused = self._refused.get(curve_key)
        if refused is None:
            refused = PeerRefused(
                Refusal.UNKNOWN_KEY,
                f"no certificate of this cluster's CA (key id {self._ca_id}) "
                f"is known for Curve key {key_text(curve_key)}",
            )
        else:
            self._refused.move_to_end(curve_key)
        self._count(refused)
        return Verdict(None, refused.kind, refused.reason)

    def _remember_refusal(self, curve_key: bytes, refused: PeerRefused) -> None:
        self._refused[curve_key] = refused
        self._refused.move_to_end(curve_key)
        while len(self._refused) > self._max_refused:
            self._refused.popitem(last=False)

    def _count(self, refused: PeerRefused) -> PeerRefused:
        self.refusals[refused.kind] += 1
        self.last_refusal = refused
        if refused.kind is not Refusal.UNKNOWN_KEY:
            self.last_certificate_refusal = refused
        return refused

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def __len__(self) -> int:
        """How many Curve keys are currently bound to a certificate (valid or not)."""
        return len(self._by_key)
