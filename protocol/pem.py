"""PEM key files for Ed25519 and X25519, exactly the forms OpenSSL writes (RFC 8410).

For these two algorithms the DER encodings are fixed byte strings around the
32 raw key bytes, so this module writes and reads exactly those, and nothing
else:

- private key, PKCS#8 v1 (`-----BEGIN PRIVATE KEY-----`):
  `30 2e 02 01 00 30 05 06 03 2b 65 70 04 22 04 20` + 32-byte seed (Ed25519;
  OID 1.3.101.112), OID byte `70` -> `6e` for X25519 (1.3.101.110);
- public key, SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`):
  `30 2a 30 05 06 03 2b 65 70 03 21 00` + 32 bytes.

This is what `openssl genpkey -algorithm ed25519`, `openssl pkey -pubout` and
the `cryptography` package produce and read. Any other algorithm, a PKCS#8 v2
key (with its public key attached), an encrypted key, another length or a
trailing byte is refused with `KeyFormatError`, a `ValueError`; callers turn
it into an `IdentityFileError` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from .keys import (
    RAW_KEY_SIZE,
    Ed25519PrivateKey,
    Ed25519PublicKey,
    X25519PrivateKey,
    X25519PublicKey,
)

# The DER before the 32 key bytes. PKCS#8: SEQUENCE(46) { INTEGER 0,
# SEQUENCE(5) { OID 1.3.101.112 (Ed25519) or .110 (X25519) }, OCTET STRING(34) {
# OCTET STRING(32) { key } } }. SPKI: SEQUENCE(42) { SEQUENCE(5) { OID },
# BIT STRING(33) { 0 unused bits, key } }.
_PKCS8_ED25519: Final = bytes.fromhex("302e020100300506032b657004220420")
_PKCS8_X25519: Final = bytes.fromhex("302e020100300506032b656e04220420")
_SPKI_ED25519: Final = bytes.fromhex("302a300506032b6570032100")
_SPKI_X25519: Final = bytes.fromhex("302a300506032b656e032100")

PRIVATE_LABEL: Final = "PRIVATE KEY"
PUBLIC_LABEL: Final = "PUBLIC KEY"

PrivateKey = Ed25519PrivateKey | X25519PrivateKey
PublicKey = Ed25519PublicKey | X25519PublicKey


class KeyFormatError(ValueError):
    """The bytes are not one of the four key encodings this module knows."""


class NoPemBlock(KeyFormatError):
    """The text holds no BEGIN/END block of the label asked for."""


# --- DER -----------------------------------------------------------------------


def private_der(key: PrivateKey) -> bytes:
    """The PKCS#8 DER encoding of a private key (48 bytes)."""
    prefix = _PKCS8_ED25519 if isinstance(key, Ed25519PrivateKey) else _PKCS8_X25519
    return prefix + key.private_bytes_raw()


def public_der(key: PublicKey) -> bytes:
    """The SubjectPublicKeyInfo DER encoding of a public key (44 bytes)."""
    prefix = _SPKI_ED25519 if isinstance(key, Ed25519PublicKey) else _SPKI_X25519
    return prefix + key.public_bytes_raw()


def private_from_der(der: bytes) -> PrivateKey:
    """The Ed25519 or X25519 private key in PKCS#8 DER `der`, or `KeyFormatError`."""
    der = bytes(der)
    prefix, raw = der[: len(_PKCS8_ED25519)], der[len(_PKCS8_ED25519) :]
    if prefix not in (_PKCS8_ED25519, _PKCS8_X25519):
        raise KeyFormatError(
            "not an Ed25519 or X25519 private key in unencrypted PKCS#8 form (RFC 8410)"
        )
    if len(raw) != RAW_KEY_SIZE:
        raise KeyFormatError(
            f"private key has {len(raw)} key bytes after the PKCS#8 header, not {RAW_KEY_SIZE}"
        )
    if prefix == _PKCS8_ED25519:
        return Ed25519PrivateKey.from_private_bytes(raw)
    return X25519PrivateKey.from_private_bytes(raw)


def public_from_der(der: bytes) -> PublicKey:
    """The Ed25519 or X25519 public key in SubjectPublicKeyInfo DER `der`, or `KeyFormatError`."""
    der = bytes(der)
    prefix, raw = der[: len(_SPKI_ED25519)], der[len(_SPKI_ED25519) :]
    if prefix not in (_SPKI_ED25519, _SPKI_X25519):
        raise KeyFormatError(
            "not an Ed25519 or X25519 public key in SubjectPublicKeyInfo form (RFC 8410)"
        )
    if len(raw) != RAW_KEY_SIZE:
        raise KeyFormatError(
            f"public key has {len(raw)} key bytes after the header, not {RAW_KEY_SIZE}"
        )
    if prefix == _SPKI_ED25519:
        return Ed25519PublicKey.from_public_bytes(raw)
    return X25519PublicKey.from_public_bytes(raw)


# --- PEM -----------------------------------------------------------------------


def encode(label: str, der: bytes) -> bytes:
    """PEM text as OpenSSL writes it: base64 in lines of 64 characters, final newline."""
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def decode(text: bytes, label: str) -> bytes:
    """The DER bytes of the first `label` PEM block in `text` (other text around it is
    ignored, as OpenSSL does); `KeyFormatError` if there is none or it is not base64.

    The block must hold base64 only: RFC 1421 headers (`Proc-Type: ...`, an
    encrypted legacy key) are refused.
    """
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    found = re.search(re.escape(begin) + rb"(.*?)" + re.escape(end), bytes(text), re.S)
    if found is None:
        raise NoPemBlock(f"no {label} PEM block (-----BEGIN {label}-----)")
    try:
        return base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"{label} PEM block is not base64: {exc}") from None


def private_pem(key: PrivateKey) -> bytes:
    """The `-----BEGIN PRIVATE KEY-----` PEM of a key, as `openssl genpkey` writes it."""
    return encode(PRIVATE_LABEL, private_der(key))


def public_pem(key: PublicKey) -> bytes:
    """The `-----BEGIN PUBLIC KEY-----` PEM of a key, as `openssl pkey -pubout` writes it."""
    return encode(PUBLIC_LABEL, public_der(key))


def private_from_pem(text: bytes) -> PrivateKey:
    """The private key in the first PRIVATE KEY block of `text`, or `KeyFormatError`."""
    return private_from_der(decode(text, PRIVATE_LABEL))


def public_from_pem(text: bytes) -> PublicKey:
    """The public key in the first PUBLIC KEY block of `text`, or `KeyFormatError`."""
    return public_from_der(decode(text, PUBLIC_LABEL))
