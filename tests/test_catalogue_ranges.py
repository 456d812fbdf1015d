"""A piece of a catalogue's file is read where it lies: a range request over HTTP, a seek
in a directory; a server that ignores ranges still gives the right bytes."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.agent.catalogue import CatalogueError, DirectoryCatalogue, HttpCatalogue

DATA = os.urandom(5 * 1024 * 1024 + 123)
PIECE = 1024 * 1024


class Served(http.server.SimpleHTTPRequestHandler):
    """Python's file server (which ignores Range) plus, where `ranges` is set, ranges."""

    ranges = False
    lie_about_start = False
    sent: list[int]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        asked = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not (self.ranges and asked):
            self.sent.append(len(DATA))
            super().do_GET()
            return
        first, last = int(asked[1]), min(int(asked[2]), len(DATA) - 1)
        body = DATA[first : last + 1]
        shown = first + 1 if self.lie_about_start else first
        self.sent.append(len(body))  # counted before the client can have it all
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {shown}-{last}/{len(DATA)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "abc").write_bytes(DATA)
    return tmp_path


@contextlib.contextmanager
def serving(root: Path, **behaviour: bool) -> Iterator[tuple[HttpCatalogue, list[int]]]:
    sent: list[int] = []
    handler = type("Handler", (Served,), {**behaviour, "sent": sent})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpCatalogue(f"http://127.0.0.1:{server.server_address[1]}"), sent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
def test_every_piece_over_http_is_the_files_bytes_at_its_offset(root: Path, ranges: bool) -> None:
    with serving(root, ranges=ranges) as (catalogue, sent):
        for index in (0, 3, 5):  # 5: the short last piece
            got = catalogue.read_range("files/abc", index * PIECE, PIECE)
            assert got == DATA[index * PIECE : (index + 1) * PIECE]
        if ranges:  # only the pieces travelled, not the file up to each of them
            assert sent == [PIECE, PIECE, len(DATA) - 5 * PIECE]
        else:
            assert sent == [len(DATA)] * 3


def test_a_range_answer_starting_elsewhere_is_refused(root: Path) -> None:
    refused = pytest.raises(CatalogueError, match="asked for bytes from 1048576")
    with serving(root, ranges=True, lie_about_start=True) as (catalogue, _), refused:
        catalogue.read_range("files/abc", PIECE, PIECE)


def test_a_directory_catalogue_reads_the_piece_where_it_lies(root: Path) -> None:
    catalogue = DirectoryCatalogue(root)
    assert catalogue.read_range("files/abc", 2 * PIECE, PIECE) == DATA[2 * PIECE : 3 * PIECE]
    assert catalogue.read_range("files/abc", 10 * PIECE, PIECE) == b""
    with pytest.raises(CatalogueError, match="has no files/nope"):
        catalogue.read_range("files/nope", 0, PIECE)
