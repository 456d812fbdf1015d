"""Node and CA keys: Ed25519 for signatures, X25519 (Curve25519) for CurveZMQ.

Keys travel in certificates as 32 raw bytes; this module converts between raw
bytes and `cryptography` key objects, and names a signing key by a short,
stable key id so a certificate can say which CA issued it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import z85

RAW_KEY_SIZE = 32  # bytes, for Ed25519 and X25519 public and private keys
SIGNATURE_SIZE = 64  # bytes, Ed25519

_RAW = serialization.Encoding.Raw


def public_bytes(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key, as certificates carry it."""
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (CurveZMQ wants the X25519 secret this way)."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short name for a signing key: hex of the first 16 bytes of SHA-256(raw public key).

    Certificates and revocation lists carry their CA's key id, so a verifier
    can tell "signed by another CA" from "tampered with".
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public_bytes(public)).hexdigest()[:32]


def curve_z85(raw_key: bytes) -> str:
    """A 32-byte Curve25519 key as the 40-character Z85 text pyzmq's CURVE options take."""
    if len(raw_key) != RAW_KEY_SIZE:
        raise ValueError(f"a Curve25519 key has {RAW_KEY_SIZE} bytes, got {len(raw_key)}")
    return z85.encode(raw_key)


@dataclass(frozen=True)
class NodeKey:
    """A node's two private keys: one signs records, one secures its ZeroMQ sockets."""

    signing: Ed25519PrivateKey  # signs the node's gossiped record
    curve: X25519PrivateKey  # CurveZMQ long-term key; its public half is in the certificate

    @classmethod
    def generate(cls) -> NodeKey:
        """Fresh keys from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def signing_public(self) -> bytes:
        """Raw Ed25519 public key, as written into the node's certificate."""
        return public_bytes(self.signing.public_key())

    @property
    def curve_public(self) -> bytes:
        """Raw X25519 public key, as written into the node's certificate."""
        return public_bytes(self.curve.public_key())

    def curve_public_z85(self) -> str:
        """The CurveZMQ public key for `socket.curve_publickey`."""
        return curve_z85(self.curve_public)

    def curve_secret_z85(self) -> str:
        """The CurveZMQ secret key for `socket.curve_secretkey`."""
        return curve_z85(private_bytes(self.curve))


def signature_valid(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is `public`'s Ed25519 signature over exactly `data`."""
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
