"""Node and CA keys: Ed25519 for signatures, X25519 (Curve25519) for CurveZMQ.

Keys travel in certificates as 32 raw bytes. The four key classes here are
thin, immutable wrappers around libsodium (through PyNaCl's low-level
bindings) with the small part of the `cryptography` key API this project
uses (`generate`, `from_private_bytes`, `public_key`, `sign`, `verify`, ...),
so a signature made here is byte for byte the one `cryptography` or OpenSSL
makes (Ed25519 is deterministic). This module also names a signing key by a
short, stable key id so a certificate can say which CA issued it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Final

from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from . import z85

RAW_KEY_SIZE: Final = 32  # bytes, for Ed25519 and X25519 public and private keys
SIGNATURE_SIZE: Final = 64  # bytes, Ed25519


class InvalidSignature(Exception):
    """An Ed25519 signature does not verify (what `Ed25519PublicKey.verify` raises)."""


def _bytes(data: bytes, what: str) -> bytes:
    """`data` (any bytes-like object) as bytes; TypeError for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    return bytes(data)


def _raw(data: bytes, what: str) -> bytes:
    """`data` as exactly 32 immutable bytes, or TypeError/ValueError naming `what`."""
    raw = _bytes(data, what)
    if len(raw) != RAW_KEY_SIZE:
        raise ValueError(f"{what} is {RAW_KEY_SIZE} bytes long, got {len(raw)}")
    return raw


class Ed25519PublicKey:
    """An Ed25519 public key: verifies signatures. Equal keys compare equal."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        self._raw = _raw(raw, "an Ed25519 public key")

    @classmethod
    def from_public_bytes(cls, data: bytes) -> Ed25519PublicKey:
        """The key whose 32 raw bytes are `data`; ValueError if it has another length."""
        return cls(data)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if `signature` is this key's signature over exactly `data`, else raise
        `InvalidSignature` (also for a signature of the wrong length)."""
        signature = _bytes(signature, "a signature")
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes")
        try:
            sodium.crypto_sign_open(signature + _bytes(data, "signed data"), self._raw)
        except BadSignatureError:
            raise InvalidSignature("signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ed25519PublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash((Ed25519PublicKey, self._raw))

    def __repr__(self) -> str:
        return f"<Ed25519PublicKey {key_id(self)}>"


class Ed25519PrivateKey:
    """An Ed25519 private key (its 32-byte seed): signs. Compares by identity."""

    __slots__ = ("_public", "_secret", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = _raw(seed, "an Ed25519 private key")
        public, self._secret = sodium.crypto_sign_seed_keypair(self._seed)  # 64-byte expanded
        self._public = Ed25519PublicKey(public)

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(RAW_KEY_SIZE))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Ed25519PrivateKey:
        """The key whose 32-byte seed (RFC 8032 "private key") is `data`."""
        return cls(data)

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over `data` (deterministic, RFC 8032)."""
        return sodium.crypto_sign(_bytes(data, "data to sign"), self._secret)[:SIGNATURE_SIZE]

    def __repr__(self) -> str:
        return f"<Ed25519PrivateKey {key_id(self._public)}>"  # never the secret


class X25519PublicKey:
    """An X25519 (Curve25519) public key: a node's CurveZMQ identity."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        self._raw = _raw(raw, "an X25519 public key")

    @classmethod
    def from_public_bytes(cls, data: bytes) -> X25519PublicKey:
        return cls(data)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, X25519PublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash((X25519PublicKey, self._raw))

    def __repr__(self) -> str:
        return f"<X25519PublicKey {z85.encode(self._raw)}>"


class X25519PrivateKey:
    """An X25519 private key, kept as its 32 raw bytes exactly as given (unclamped)."""

    __slots__ = ("_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = _raw(raw, "an X25519 private key")
        self._public = X25519PublicKey(sodium.crypto_scalarmult_base(self._raw))

    @classmethod
    def generate(cls) -> X25519PrivateKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(RAW_KEY_SIZE))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> X25519PrivateKey:
        return cls(data)

    def public_key(self) -> X25519PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return f"<X25519PrivateKey {z85.encode(self._public.public_bytes_raw())}>"


def public_bytes(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key, as certificates carry it."""
    return key.public_bytes_raw()


def private_bytes(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (CurveZMQ wants the X25519 secret this way)."""
    return key.private_bytes_raw()


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
