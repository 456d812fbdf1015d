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
