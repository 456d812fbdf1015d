"""A file in pieces: `CHUNK_SIZE` bytes each (the last may be shorter), each named by
its SHA-256, the list named by one SHA-256 that the signed manifest carries.

A host fetching an image from peers cannot trust any of them, and the whole
file's hash can only be checked at the end, when a bad piece can no longer
be blamed on the peer that sent it. So the publisher signs, for each file,
the SHA-256 of the list of its pieces' SHA-256s (`TemplateFile.chunk_map`,
manifest format 2); a host gets the list itself from any peer or catalogue,
checks it against that digest (`decode_chunk_map`), and then checks every
piece as it arrives (`ChunkMap.matches`).

Pure: no files, no network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from ..templates import TemplateFile, TemplateRefused

CHUNK_SIZE: Final = 1 << 20
"""Bytes per piece: one piece fits one message of the mesh's transport (its largest
binary field is 1 MiB), and a 1 GiB image is 1,024 pieces, a 32 KiB chunk map."""

DIGEST: Final = 32  # bytes of one SHA-256


class ChunkMapRefused(TemplateRefused):
    """A chunk map that is not the one the manifest signed, or does not fit the file."""

    reason = "bad-chunk-map"


@dataclass(frozen=True, slots=True)
class ChunkMap:
    """The pieces of one file: their SHA-256s, in order."""

    size: int  # bytes of the whole file
    digests: tuple[bytes, ...]  # SHA-256 of each CHUNK_SIZE piece

    @property
    def count(self) -> int:
        return len(self.digests)

    def length(self, index: int) -> int:
        """Bytes of piece `index` (the last one holds what is left)."""
        return min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)

    def matches(self, index: int, data: bytes) -> bool:
        """Whether `data` is piece `index` of the file."""
        return (
            0 <= index < self.count
            and len(data) == self.length(index)
            and hashlib.sha256(data).digest() == self.digests[index]
        )

    def encoded(self) -> bytes:
        """The list as it travels and as the manifest's digest covers it."""
        return b"".join(self.digests)

    def digest(self) -> bytes:
        """What a format-2 manifest signs for the file: the SHA-256 of `encoded()`."""
        return hashlib.sha256(self.encoded()).digest()


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_SIZE)


class ChunkMapBuilder:
    """The chunk map of a file whose bytes stream past in pieces of any size."""

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._piece = hashlib.sha256()
        self._filled = 0  # bytes of the current piece so far
        self.size = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(CHUNK_SIZE - self._filled, len(view))
            self._piece.update(view[:take])
            self._filled += take
            self.size += take
            view = view[take:]
            if self._filled == CHUNK_SIZE:
                self._digests.append(self._piece.digest())
                self._piece, self._filled = hashlib.sha256(), 0

    def finish(self) -> ChunkMap:
        if self._filled:
            self._digests.append(self._piece.digest())
            self._piece, self._filled = hashlib.sha256(), 0
        return ChunkMap(self.size, tuple(self._digests))


def decode_chunk_map(data: bytes, expected: TemplateFile) -> ChunkMap:
    """The chunk map of `expected` from untrusted bytes, or `ChunkMapRefused` saying why."""
    if not expected.chunk_map:
        raise ChunkMapRefused(f"the manifest signs no chunk map for its {expected.role}")
    count = chunk_count(expected.size)
    if len(data) != count * DIGEST:
        raise ChunkMapRefused(
            f"a chunk map of {len(data)} bytes for a {expected.role} of {count} pieces "
            f"(it takes {count * DIGEST})"
        )
    if hashlib.sha256(data).digest() != expected.chunk_map:
        raise ChunkMapRefused(f"the {expected.role}'s chunk map is not the one its manifest signed")
    return ChunkMap(expected.size, tuple(data[i : i + DIGEST] for i in range(0, len(data), DIGEST)))
