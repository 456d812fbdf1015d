"""This host's image transport: serving template pieces to peers, and carrying answers
to the pulls that asked for them.

A second ROUTER with the host's own Curve keys and trust store (so only
certified, unrevoked members connect), on a port of its own that the record
names (`image_port`): a 1 MiB piece never waits ahead of gossip in a queue.

Serving answers only what the store holds whole, or the pieces a pull in
progress here has already checked; it reads in threads, a bounded number at
once per peer, so a peer asking for everything at once gets `busy` answers
instead of this host's memory. Nothing here decides what to fetch: that is
`mesh_pull` with the sans-IO `ChunkFetch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novacron.protocol.codec import Limits
from novacron.protocol.keys import NodeKey
from novacron.protocol.messages import (
    ImageLack,
    Message,
    NodeRecord,
    PieceAsk,
    PieceGive,
    PiecesAsk,
    PiecesHeld,
    TemplateAsk,
    TemplateGive,
    TemplateWanted,
)

from .core.images.chunkmap import CHUNK_SIZE, ChunkMap, ChunkMapBuilder, decode_chunk_map
from .core.images.holders import bitmap
from .core.templates import TemplateFile, TemplateRefused
from .logs import Throttle
from .security import TrustStore
from .template_store import TemplateStore
from .transport import Transport

log = logging.getLogger(__name__)

# A piece is 1 MiB and the envelope a few bytes more; the frame limit leaves room.
IMAGE_LIMITS = Limits(max_frame=CHUNK_SIZE + 64 * 1024)
# Frames queued on the image transport each way: 1 MiB pieces, so a peer that floods
# it costs at most this many MiB (the mesh transport queues 10,000 small frames).
IMAGE_QUEUE = 128
INBOX = 256  # answers waiting for one pull; past that they are dropped (asked again later)
SERVE_PER_PEER = 16  # piece reads in progress for one peer; more are answered "busy"
SERVE_IN_ALL = 32  # piece reads in progress for all peers
READ_BLOCK = 4 * CHUNK_SIZE  # bytes read at a time while computing a chunk map
# A member's first ask can arrive before its record (which names its image port) has:
# the answer waits this long for it, polling this often, at most this many per peer.
REPLY_WAIT = 10.0
REPLY_POLL = 0.1
WAITING_PER_PEER = 64


@dataclass
class Partial:
    """A file a pull in progress here is writing: the pieces it checked can be served."""

    path: Path
    chunks: ChunkMap
    held: AbstractSet[int]  # the pull's own set of pieces written, read as it grows


def no_answer(sender: str, message: Message) -> bool:
    """An inbox's filter while its pull has asked nothing (it looks for holders in the
    records, or is between files): whatever arrives then was not asked for."""
    return False


@dataclass
class Inbox:
    """Answers for one pull: what it asked of whom arrives here."""

    queue: asyncio.Queue[tuple[str, Message]] = field(default_factory=lambda: asyncio.Queue(INBOX))
    # Whether the pull awaits this answer: one it did not ask for is dropped before it
    # queues, so a flood of them costs no memory however slowly the pull drains its inbox.
    wants: Callable[[str, Message], bool] = no_answer


class ImageService:
    """Serves pieces on the image transport and routes answers to the pulls waiting."""

    def __init__(
        self,
        node_id: str,
        transport: Transport,
        store: TemplateStore,
        records: Callable[[], Mapping[str, NodeRecord]],
        serve_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.serve_rate = serve_rate  # bytes per second served in all; 0: unlimited
        self._clock = clock
        self._free_at = 0.0  # when the paced uplink is free for the next piece
        self.transport = transport
        self.store = store
        self._records = records
        self.partial: dict[bytes, Partial] = {}  # file SHA-256 -> a pull's file in progress
        self._inboxes: dict[object, Inbox] = {}  # a pull -> its inbox
        self._reading: dict[str, int] = {}  # peer -> piece reads in progress for it
        self._waiting: dict[str, int] = {}  # peer -> asks waiting for its record
        # file SHA-256 -> its chunk map, checked (computed once however many ask)
        self._chunk_maps: dict[bytes, asyncio.Future[ChunkMap]] = {}
        self._serving = asyncio.Semaphore(SERVE_IN_ALL)
        self._tasks: set[asyncio.Task[None]] = set()
        self._throttle = Throttle(log)
        self.served_pieces = 0
        # A peer about to migrate a VM here asks this host to fetch its template.
        self.on_wanted: Callable[[str, str], None] = lambda peer, ref: None
        self.served_bytes = 0
        # file SHA-256 -> (inode, mtime) of a held file found altered on this disk
        self.damaged: dict[bytes, tuple[int, int]] = {}
        self.on_damaged: Callable[[], None] = lambda: None  # the record must stop offering it

    @classmethod
    def create(
        cls,
        node_id: str,
        key: NodeKey,
        trust: TrustStore,
        bind: str,
        port: int,
        store: TemplateStore,
        records: Callable[[], Mapping[str, NodeRecord]],
        serve_rate: float = 0.0,
    ) -> ImageService:
        transport = Transport(
            node_id, key, trust, bind, port, limits=IMAGE_LIMITS, queue=IMAGE_QUEUE
        )
        return cls(node_id, transport, store, records, serve_rate)

    async def start(self) -> None:
        await self.transport.start()

    @property
    def port(self) -> int:
        return self.transport.port

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transport.close()

    # --- talking to peers --------------------------------------------------------------

    def address_of(self, peer: str) -> str | None:
        """`host:image_port` of `peer`, from its record; None when it serves no images."""
        record = self._records().get(peer)
        if record is None or record.image_port == 0 or not record.addresses:
            return None
        host = record.addresses[0].rsplit(":", 1)[0]
        return f"{host}:{record.image_port}"

    async def send(self, peer: str, message: Message) -> bool:
        address = self.address_of(peer)
        if address is None:
            return False
        return await self.transport.send(peer, address, message)

    def inbox(self, owner: object) -> Inbox:
        """Open an inbox for `owner` (a pull); every answer arriving goes to each open one."""
        box = self._inboxes[owner] = Inbox()
        return box

    def close_inbox(self, owner: object) -> None:
        self._inboxes.pop(owner, None)

    async def run(self) -> None:
        """Receive until cancelled: asks are served, answers handed to the open inboxes."""
        while True:
            sender, message = await self.transport.recv()
            if isinstance(message, TemplateAsk | PiecesAsk | PieceAsk):
                self._take_ask(sender, message)
            elif isinstance(message, TemplateWanted):
                self.on_wanted(sender, message.ref)
            elif isinstance(message, TemplateGive | PiecesHeld | PieceGive | ImageLack):
                for box in self._inboxes.values():
                    if not box.wants(sender, message):
                        continue  # unasked: a flood ends here
                    with contextlib.suppress(asyncio.QueueFull):
                        box.queue.put_nowait((sender, message))

    def _take_ask(self, peer: str, ask: TemplateAsk | PiecesAsk | PieceAsk) -> None:
        """Serve `ask`: at once when `peer`'s record names its image port; else once the
        record arrives, at most `WAITING_PER_PEER` asks of a peer waiting (counted here,
        before any task runs, so a burst of asks cannot pass the count)."""
        if self.address_of(peer) is not None:
            self._spawn(self._serve(peer, ask))
            return
        if self._waiting.get(peer, 0) >= WAITING_PER_PEER:
            self._throttle(
                (peer, "waiting"),
                logging.WARNING,
                "dropped an ask of %s: %d of its asks already wait for its record",
                peer,
                WAITING_PER_PEER,
            )
            return
        self._waiting[peer] = self._waiting.get(peer, 0) + 1
        task = self._spawn(self._serve_when_known(peer, ask))
        task.add_done_callback(lambda _: self._done_waiting(peer))

    def _done_waiting(self, peer: str) -> None:
        self._waiting[peer] -= 1
        if not self._waiting[peer]:
            del self._waiting[peer]

    @property
    def asks_waiting(self) -> int:
        """Asks from members whose records have not arrived yet (`nova status`)."""
        return sum(self._waiting.values())

    async def _serve_when_known(self, peer: str, ask: TemplateAsk | PiecesAsk | PieceAsk) -> None:
        """Serve `ask` once `peer`'s record names its image port: a member met a moment ago
        (authenticated, its record on its way) asks before this host could answer it.
        Dropped unanswered after `REPLY_WAIT`; the asker asks again."""
        deadline = self._clock() + REPLY_WAIT
        while self.address_of(peer) is None:
            if self._clock() >= deadline:
                self._throttle(
                    (peer, "no address"),
                    logging.WARNING,
                    "not answering %s: no record of it names its image port",
                    peer,
                )
                return
            await asyncio.sleep(REPLY_POLL)
        await self._serve(peer, ask)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- serving -----------------------------------------------------------------------

    async def _serve(self, peer: str, ask: TemplateAsk | PiecesAsk | PieceAsk) -> None:
        try:
            answer = await self._answer(peer, ask)
        except (OSError, TemplateRefused) as exc:
            self._throttle(
                (peer, "serve"),
                logging.WARNING,
                "cannot serve %s to %s: %s",
                type(ask).__name__,
                peer,
                exc,
            )
            answer = _lack(ask, "cannot read it here")
        await self.send(peer, answer)

    async def _answer(self, peer: str, ask: TemplateAsk | PiecesAsk | PieceAsk) -> Message:
        if isinstance(ask, TemplateAsk):
            return await self._template(ask)
        if isinstance(ask, PiecesAsk):
            return self._pieces_held(ask)
        return await self._piece(peer, ask)

    async def _template(self, ask: TemplateAsk) -> Message:
        signed = next((s for s in self.store.whole() if s.manifest.ref == ask.ref), None)
        if signed is None:
            return ImageLack(ask.ref, "not held here")
        maps = [(await self._chunk_map(f)).encoded() for f in signed.manifest.files]
        return TemplateGive(ask.ref, signed.encoded, tuple(maps))

    async def _chunk_map(self, template_file: TemplateFile) -> ChunkMap:
        """The file's chunk map as the store keeps it, checked against the manifest; for a
        file stored without one, computed from its bytes once (one computation however
        many peers ask at once) and kept."""
        computing = self._chunk_maps.get(template_file.sha256)
        if computing is None:
            computing = asyncio.ensure_future(self._load_chunk_map(template_file))
            self._chunk_maps[template_file.sha256] = computing
        try:
            return await asyncio.shield(computing)
        except (OSError, TemplateRefused):
            self._chunk_maps.pop(template_file.sha256, None)  # asked again: tried again
            raise

    async def _load_chunk_map(self, template_file: TemplateFile) -> ChunkMap:
        kept = self.store.chunk_map_file(template_file)
        try:
            return decode_chunk_map(kept.read_bytes(), template_file)
        except (OSError, TemplateRefused):
            pass  # none kept (a store from before chunk maps), or not the signed one
        built = await asyncio.to_thread(_build_chunk_map, self.store.file(template_file))
        checked = decode_chunk_map(built.encoded(), template_file)
        await asyncio.to_thread(self.store.keep_chunk_map, template_file, checked.encoded())
        return checked

    async def _serving_map(self, sha256: bytes) -> ChunkMap | None:
        """The signed chunk map of a whole file held here, which every piece served is
        checked against; None for a file no held template names."""
        computing = self._chunk_maps.get(sha256)
        ready = computing is not None and computing.done() and not computing.cancelled()
        if computing is not None and ready and computing.exception() is None:
            return computing.result()
        files = (f for s in self.store.whole() for f in s.manifest.files)  # once per file
        template_file = next((f for f in files if f.sha256 == sha256), None)
        return None if template_file is None else await self._chunk_map(template_file)

    async def _checked_serving_map(self, sha256: bytes, path: Path) -> ChunkMap | None:
        """`_serving_map`, with a file whose rebuilt chunk map is not the signed one (it
        kept none, and its bytes changed) marked damaged like a bad piece."""
        try:
            return await self._serving_map(sha256)
        except TemplateRefused:
            self._mark_damaged(sha256, path, -1)
            return None

    def _damaged_here(self, sha256: bytes, path: Path) -> bool:
        """Whether this file was found altered on this host's disk (and not replaced since:
        a pull that puts it back writes a new file)."""
        marked = self.damaged.get(sha256)
        if marked is None:
            return False
        if marked != _identity(path):
            del self.damaged[sha256]  # replaced: checked again as it is served
            return False
        return True

    def _mark_damaged(self, sha256: bytes, path: Path, index: int) -> None:
        self.damaged[sha256] = _identity(path)
        log.error(
            "a held image does not match its signed hash on this host's disk: no longer "
            "served or offered; remove and pull its template again",
            extra={"fields": {"file": str(path), "piece": index, "sha256": sha256.hex()}},
        )
        self.on_damaged()

    def _pieces_held(self, ask: PiecesAsk) -> Message:
        partial = self.partial.get(ask.sha256)
        if partial is not None:
            return PiecesHeld(ask.sha256, bitmap(partial.held, partial.chunks.count))
        path = self.store.checked_file(ask.sha256)
        if path is not None and not self._damaged_here(ask.sha256, path):
            return PiecesHeld(ask.sha256, whole=True)
        return ImageLack(ask.sha256.hex(), "not held here")

    async def _piece(self, peer: str, ask: PieceAsk) -> Message:
        path: Path | None
        chunks: ChunkMap | None = None  # what a whole file's piece is checked against
        partial = self.partial.get(ask.sha256)
        if partial is not None:  # its pieces were checked as they arrived
            path = partial.path if ask.index in partial.held else None
        else:
            path = self.store.checked_file(ask.sha256)
            if path is not None and self._damaged_here(ask.sha256, path):
                path = None
            if path is not None:
                chunks = await self._checked_serving_map(ask.sha256, path)
                path = None if chunks is None else path
        if path is None:
            return ImageLack(ask.sha256.hex(), "piece not held here", ask.index)
        if self._reading.get(peer, 0) >= SERVE_PER_PEER:
            return ImageLack(ask.sha256.hex(), "busy", ask.index)
        self._reading[peer] = self._reading.get(peer, 0) + 1
        try:
            await self._pace(CHUNK_SIZE)
            async with self._serving:
                data = await asyncio.to_thread(_read_piece, path, ask.index)
        finally:
            self._reading[peer] -= 1
            if not self._reading[peer]:
                del self._reading[peer]
        if not data:
            return ImageLack(ask.sha256.hex(), "no such piece", ask.index)
        if chunks is not None and not await asyncio.to_thread(chunks.matches, ask.index, data):
            self._mark_damaged(ask.sha256, path, ask.index)
            return ImageLack(ask.sha256.hex(), "damaged here", ask.index)
        self.served_pieces += 1
        self.served_bytes += len(data)
        return PieceGive(ask.sha256, ask.index, data)

    async def _pace(self, size: int) -> None:
        """Wait for this piece's turn on the uplink when serving is capped: pieces leave
        one after another at `serve_rate`, so peers fetching never fill an edge link."""
        if self.serve_rate <= 0:
            return
        now = self._clock()
        start = max(now, self._free_at)
        self._free_at = start + size / self.serve_rate
        if start > now:
            await asyncio.sleep(start - now)


def _lack(ask: TemplateAsk | PiecesAsk | PieceAsk, reason: str) -> ImageLack:
    if isinstance(ask, TemplateAsk):
        return ImageLack(ask.ref, reason)
    index = ask.index if isinstance(ask, PieceAsk) else -1
    return ImageLack(ask.sha256.hex(), reason, index)


def _identity(path: Path) -> tuple[int, int]:
    """Which file is at `path` now (inode, modification time): a new one after a re-pull."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_ino, stat.st_mtime_ns)


def _read_piece(path: Path, index: int) -> bytes:
    with open(path, "rb") as source:
        return os.pread(source.fileno(), CHUNK_SIZE, index * CHUNK_SIZE)


def _build_chunk_map(path: Path) -> ChunkMap:
    builder = ChunkMapBuilder()
    with open(path, "rb") as source:
        while block := source.read(READ_BLOCK):
            builder.feed(block)
    return builder.finish()
