"""The envelope for CA-signed documents: exact body bytes plus a signature over them.

Certificates and revocation lists are both a msgpack body signed by the CA.
Carrying the body as the bytes that were signed (not as a re-encoded
structure) means verification never depends on encoding the same value the
same way twice; the strict canonical check in `unseal` means every change to
the outer bytes is refused too, not only changes to the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .errors import ProtocolError
from .keys import Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class Sealed:
    """A signed document as it travels: `{"body": bytes, "signature": bytes}` in msgpack."""

    body: bytes  # msgpack encoding of the document (e.g. a CertificateBody)
    signature: bytes  # Ed25519 over `body`


def seal(key: Ed25519PrivateKey, body: bytes) -> bytes:
    """Sign `body` with `key` and wrap both in the envelope."""
    return codec.pack_struct(Sealed(body=body, signature=key.sign(body)))


def unseal(data: bytes, malformed: type[ProtocolError], what: str) -> Sealed:
    """Decode the envelope, raising `malformed` (naming `what`) for any bad input.

    The signature is not checked here: the caller knows which key should have made it.
    """
    try:
        sealed = codec.unpack_struct(Sealed, data)
    except ProtocolError as exc:
        raise malformed(f"{what} is malformed: {exc}") from exc
    if codec.pack_struct(sealed) != bytes(data):
        raise malformed(f"{what} is not in canonical encoding")
    return sealed
