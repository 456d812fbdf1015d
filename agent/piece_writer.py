"""Writing a fetched file's checked pieces to disk beside the event loop.

A pull receives, checks and stores pieces one after another on the event loop;
writing a 1 MiB piece into the page cache costs about as much as checking it,
so the writes go to worker threads (`os.pwrite` releases the GIL) while the
loop receives and checks the next pieces. A piece counts as written, and is
served to peers fetching the same file, only once its bytes are in the file.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .core.images.chunkmap import CHUNK_SIZE

IN_FLIGHT = 8  # pieces handed to the writers and not yet written (8 MiB of memory at most)
WRITERS = 2  # threads: page-cache copies run beside the loop's checks on a second core


class PieceWriter:
    """Writes pieces of one open file; `written` grows as writes complete."""

    def __init__(self, fd: int, written: set[int]) -> None:
        self._fd = fd
        self.written = written
        self._room = asyncio.Semaphore(IN_FLIGHT)
        self._threads = ThreadPoolExecutor(WRITERS, thread_name_prefix="piece-writer")
        self._pending: set[asyncio.Future[int]] = set()
        self._error: OSError | None = None

    async def write(self, index: int, data: bytes) -> None:
        """Hand piece `index` to a writer, after waiting for room; `OSError` if an earlier
        write failed (a full disk, say): the pull must stop, not carry on with holes."""
        self.raise_failure()
        await self._room.acquire()
        offset = index * CHUNK_SIZE
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._threads, os.pwrite, self._fd, data, offset)
        self._pending.add(done)
        done.add_done_callback(partial(self._written, index))

    def _written(self, index: int, done: asyncio.Future[int]) -> None:
        self._pending.discard(done)
        self._room.release()
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            self.written.add(index)
        elif self._error is None:
            self._error = error if isinstance(error, OSError) else OSError(str(error))

    def raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    async def finish(self) -> None:
        """Wait until every piece handed over is written; `OSError` if one was not."""
        if self._pending:
            await asyncio.wait(set(self._pending))
        self.raise_failure()

    def close(self) -> None:
        """Wait for the writer threads (a write in flight ends within milliseconds), so the
        file descriptor is never closed under a thread still writing to it."""
        self._threads.shutdown(wait=True, cancel_futures=True)
