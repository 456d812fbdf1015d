"""Every way a frame, a certificate or a signature can be wrong.

Decoders raise only subclasses of `ProtocolError`, so a caller that reads from
the network needs exactly one `except` clause and never crashes on bad input.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: the bytes or the credentials we were given are not acceptable."""


class FrameTooLarge(ProtocolError):
    """The frame is larger than the configured maximum."""


class MalformedFrame(ProtocolError):
    """The bytes are not a well-formed msgpack envelope."""


class LimitExceeded(ProtocolError):
    """A string, bytes, array or map length, or the nesting depth, is over its limit."""


class UnsupportedVersion(ProtocolError):
    """The sender speaks a protocol version this node cannot."""

    def __init__(self, version: object, supported: tuple[int, ...]) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            f"unsupported protocol version {version!r}; this node speaks "
            f"{', '.join(str(v) for v in supported)}"
        )


class UnknownMessageType(ProtocolError):
    """The envelope names a message type that is not in the catalogue."""


class InvalidField(ProtocolError):
    """A payload field is missing or has the wrong type or value."""


class IdentityError(ProtocolError):
    """Base class for key, certificate, signature and revocation failures."""


# --- identity: files, certificates, signed records, revocations ---------------


class IdentityFileError(IdentityError):
    """A key, certificate or revocation file is missing, unreadable or corrupt."""


class KeyFileTooOpen(IdentityFileError):
    """A private-key file is readable or writable by group or other users."""


class InvalidNodeId(IdentityError):
    """A node id is empty, too long, or uses characters outside [A-Za-z0-9._-]."""


class MalformedCertificate(IdentityError):
    """The bytes are not a well-formed certificate (decoding failed)."""


class BadCertificateSignature(IdentityError):
    """The certificate's signature does not verify under this cluster's CA key."""


class CertificateFromOtherCA(BadCertificateSignature):
    """The certificate names, and was presumably signed by, a different CA."""


class CertificateExpired(IdentityError):
    """`now` is at or after the certificate's `not_after`."""


class CertificateNotYetValid(IdentityError):
    """`now` is before the certificate's `not_before`."""


class CertificateRevoked(IdentityError):
    """The certificate's serial is on the CA's revocation list."""


class InvalidRevocationList(IdentityError):
    """A revocation list is malformed, badly signed, or from another CA."""


class MalformedRecord(IdentityError):
    """A signed record's bytes do not decode, or disagree with its envelope."""


class RecordContentRefused(MalformedRecord):
    """Its owner signed the record, but the codec refuses what it says (a field's type or
    range, a reserved label): the owner's fault, not a relay's."""


class BadRecordSignature(IdentityError):
    """A signed record's signature does not verify under its owner's key."""


class RecordSignerMismatch(IdentityError):
    """The record was checked against a certificate issued to another node."""
