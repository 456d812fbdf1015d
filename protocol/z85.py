"""Z85, the ZeroMQ base-85 text encoding (ZeroMQ RFC 32).

pyzmq's CURVE options (`curve_publickey`, `curve_serverkey`, ...) take keys as
40-character Z85 strings. Implemented here, in a few lines, so the protocol
package has no dependency on pyzmq.
"""

from __future__ import annotations

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    """Encode `data` (length a multiple of 4) as Z85 text: 5 characters per 4 bytes."""
    if len(data) % 4:
        raise ValueError(f"Z85 encodes whole 4-byte groups; got {len(data)} bytes")
    chars: list[str] = []
    for start in range(0, len(data), 4):
        value = int.from_bytes(data[start : start + 4], "big")
        group = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            group.append(ALPHABET[digit])
        chars.extend(reversed(group))
    return "".join(chars)


def decode(text: str) -> bytes:
    """Decode Z85 text (length a multiple of 5); `ValueError` if it is not valid Z85."""
    if len(text) % 5:
        raise ValueError(f"Z85 text comes in 5-character groups; got {len(text)} characters")
    out = bytearray()
    for start in range(0, len(text), 5):
        value = 0
        for char in text[start : start + 5]:
            digit = _VALUES.get(char)
            if digit is None:
                raise ValueError(f"{char!r} is not a Z85 character")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise ValueError(f"Z85 group {text[start : start + 5]!r} is out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)
