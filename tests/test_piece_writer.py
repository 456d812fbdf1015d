"""Pieces written beside the event loop: all of them in place, or the failure reported."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from novacron.agent.core.images.chunkmap import CHUNK_SIZE
from novacron.agent.piece_writer import PieceWriter


async def test_pieces_written_in_any_order_make_the_file_and_count_once_written(
    tmp_path: Path,
) -> None:
    pieces = {i: os.urandom(CHUNK_SIZE) for i in range(24)}
    order = list(pieces)
    random.Random(5).shuffle(order)
    path = tmp_path / "image"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    written: set[int] = set()
    writer = PieceWriter(fd, written)
    try:
        for index in order:
            await writer.write(index, pieces[index])
        await writer.finish()
    finally:
        writer.close()
        os.close(fd)
    assert written == set(pieces)
    assert path.read_bytes() == b"".join(pieces[i] for i in range(24))


async def test_a_failed_write_stops_the_pull_and_is_never_counted_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "image"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every write fails, as on a disk gone read-only
    written: set[int] = set()
    writer = PieceWriter(fd, written)
    try:
        await writer.write(0, b"x" * CHUNK_SIZE)
        with pytest.raises(OSError):
            await writer.finish()
        with pytest.raises(OSError):
            await writer.write(1, b"y" * CHUNK_SIZE)
    finally:
        writer.close()
        os.close(fd)
    assert written == set() and path.read_bytes() == b""
