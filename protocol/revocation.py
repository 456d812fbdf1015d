"""The CA's revocation list: serials of certificates that no longer admit a node.

The list is signed by the CA (a `Sealed` envelope, like a certificate) so it
can be gossiped through untrusted relays; a newer list (`issued_at`) replaces
an older one. Only `verify_revocation_list` turns bytes into a
`RevocationList`, so holding one means its signature was checked.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codec
from .errors import InvalidRevocationList, ProtocolError
from .keys import Ed25519PrivateKey, Ed25519PublicKey, key_id, signature_valid
from .sealed import seal, unseal

if TYPE_CHECKING:
    from .certificates import Certificate


@dataclass(frozen=True, slots=True)
class RevocationList:
    """What the CA signs: every revoked serial, as of `issued_at`."""

    issuer: str  # key id of the CA that signed the list
    issued_at: float  # unix seconds; the newest list wins
    serials: tuple[int, ...] = ()  # sorted, no duplicates

    def is_revoked(self, cert: Certificate) -> bool:
        """Whether this list revokes `cert` (only certificates of the same CA can be)."""
        if cert.issuer != self.issuer:
            return False
        index = bisect.bisect_left(self.serials, cert.serial)
        return index < len(self.serials) and self.serials[index] == cert.serial


def sign_revocation_list(
    ca_key: Ed25519PrivateKey, serials: tuple[int, ...] | list[int], issued_at: float
) -> bytes:
    """Encode and sign a revocation list of `serials` (sorted and de-duplicated here)."""
    body = RevocationList(
        issuer=key_id(ca_key),
        issued_at=float(issued_at),
        serials=tuple(sorted(set(serials))),
    )
    return seal(ca_key, codec.pack_struct(body))


def verify_revocation_list(data: bytes, ca_public: Ed25519PublicKey) -> RevocationList:
    """Decode `data` and check the CA with key `ca_public` signed it.

    Any problem (malformed, altered, another CA's list) is an `InvalidRevocationList`.
    """
    sealed = unseal(data, InvalidRevocationList, "revocation list")
    expected = key_id(ca_public)
    if not signature_valid(ca_public, sealed.signature, sealed.body):
        raise InvalidRevocationList(
            f"revocation list signature does not verify under CA {expected!r}"
        )
    try:
        revocations = codec.unpack_struct(RevocationList, sealed.body)
    except ProtocolError as exc:
        raise InvalidRevocationList(f"revocation list body is malformed: {exc}") from exc
    if revocations.issuer != expected:
        raise InvalidRevocationList(
            f"revocation list names CA {revocations.issuer[:64]!r}, not {expected!r}"
        )
    if any(a >= b for a, b in zip(revocations.serials, revocations.serials[1:], strict=False)):
        raise InvalidRevocationList("revocation list serials are not sorted and unique")
    return revocations
