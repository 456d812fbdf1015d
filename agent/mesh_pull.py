"""Pulling a template from the mesh: its manifest from a peer that holds it, its files
in 1 MiB pieces from every peer that has them, checked piece by piece.

The driver of the sans-IO `ChunkFetch` (which piece from whom, liars banned,
timeouts, the catalogue as last resort). Trust is the host's own: the manifest
must carry a trusted publisher's signature, each file's chunk map must be the
one the manifest signs, and each piece must be the chunk map's; a peer is
only a source of bytes. The store's rules hold as for a catalogue pull: the
writers' lock is held throughout, files enter the store only when every one
is complete, and an interrupted pull leaves only `.incoming/` behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from novacron.protocol.keys import Ed25519PublicKey
from novacron.protocol.messages import (
    ImageLack,
    MemberState,
    Message,
    NodeRecord,
    PieceAsk,
    PieceGive,
    PiecesAsk,
    PiecesHeld,
    TemplateAsk,
    TemplateGive,
)

from .catalogue import Catalogue, CatalogueError, file_path
from .core.images.chunkmap import CHUNK_SIZE, ChunkMap, ChunkMapRefused, decode_chunk_map
from .core.images.fetch import CATALOGUE, Arrival, ChunkFetch, FetchConfig
from .core.images.holders import Holders, holders, newest_offered, pieces_of
from .core.refusals import RefusalKind, Refused
from .core.templates import (
    MalformedManifest,
    SignedManifest,
    TemplateFile,
    TemplateRefused,
    decode_manifest,
    verify_manifest,
)
from .image_service import ImageService, Inbox, Partial, no_answer
from .piece_writer import PieceWriter
from .template_store import Pulled, PullResult, StoreError, TemplateStore, newest_listed

log = logging.getLogger(__name__)
T = TypeVar("T")

ASK_TIMEOUT = 30.0  # seconds a holder may take to send a manifest (its chunk maps included)
ASK_AGAIN = 3.0  # seconds between asks of one holder for the manifest within that time
REFRESH = 1.0  # seconds between looks at who holds what (records, partial holders' maps)
STALL_TIMEOUT = 60.0  # seconds without a new piece after which a pull gives up
# Seconds a pull with no catalogue to fall back on looks for a peer offering the template
# before it fails: a host that just joined, or a template published a moment ago, shows in
# the records within seconds, and failing at once would send the operator to try again.
HOLDER_WAIT = 15.0


class PullFailed(Exception):
    """A pull from the mesh cannot finish; the message says why and what was held."""


@dataclass
class PullStatus:
    """Where one pull stands, as `nova template pull` shows it."""

    pull_id: str
    ref: str  # NAME or NAME:VERSION as asked; NAME:VERSION once known
    state: str = "finding"  # finding, fetching, done, failed
    done_bytes: int = 0
    total_bytes: int = 0
    outcome: str = ""  # added, already held (when done)
    error: str = ""
    reason: str = ""  # a refusal's one word (untrusted-publisher, ...), for scripts
    sources: dict[str, int] = field(default_factory=dict)  # pieces stored per source
    banned: dict[str, str] = field(default_factory=dict)  # peers nothing more is taken from
    started: float = field(default_factory=time.time)
    ended: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "pull_id": self.pull_id,
            "template": self.ref,
            "state": self.state,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "outcome": self.outcome,
            "error": self.error,
            "reason": self.reason,
            "sources": dict(self.sources),
            "banned": dict(self.banned),
            "started": self.started,
            "ended": self.ended,
        }


@dataclass(frozen=True)
class PeersView:
    """What a pull reads of the mesh: this host's id, the records, the members' states."""

    me: str
    records: Callable[[], Mapping[str, NodeRecord]]
    states: Callable[[], Mapping[str, MemberState]]


class MeshPull:
    """One template pulled from peers (see the module doc)."""

    def __init__(
        self,
        status: PullStatus,
        name: str,
        version: str | None,
        *,
        store: TemplateStore,
        trusted: Mapping[str, Ed25519PublicKey],
        service: ImageService,
        mesh: PeersView,
        catalogue: Catalogue | None = None,
        config: FetchConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_fetching: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self._on_fetching = on_fetching  # the record lists what this host fetches
        self.name, self.version = name, version
        self.store = store
        self.trusted = trusted
        self.service = service
        self.mesh = mesh
        self.catalogue = catalogue
        self.config = config or FetchConfig()
        self._clock = clock
        self._rng = random.Random()
        self._box: Inbox | None = None
        self._held_before = 0  # bytes of the files finished before the current one
        self._reads: set[asyncio.Future[None]] = set()  # catalogue reads in progress

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    async def run(self) -> PullResult:
        """Pull, or raise `PullFailed`, `TemplateRefused`, `StoreError` or `CatalogueError`."""
        self._box = self.service.inbox(self)
        try:
            # One wait for a holder, however it is spent between the version and its holders.
            until = self._clock() + (0.0 if self.catalogue is not None else HOLDER_WAIT)
            if self.version is None:
                self.version = await self._newest(until)
            self.status.ref = self.ref
            found = await self._holders(until)
            if found is None:
                return await self._from_catalogue(f"no alive peer holds {self.ref} whole")
            signed, maps = await self._template(list(found.whole))
            if maps is None:
                return await self._from_catalogue(
                    f"{self.ref} was published without piece digests (manifest format 1)"
                )
            return await self._locked_pull(signed, maps)
        finally:
            self.service.close_inbox(self)

    async def _newest(self, until: float) -> str:
        def offered() -> str | None:
            return newest_offered(self.mesh.records().values(), self.name)

        version = await self._looked_for(offered, until)
        if version is None and self.catalogue is not None:
            return newest_listed(self.catalogue, self.name)
        if version is None:
            raise PullFailed(
                f"no peer holds a template named {self.name} (looked for {HOLDER_WAIT:.0f} s) "
                "and this host has no catalogue (catalogue in agent.toml, or nova template "
                "pull --from CATALOGUE)"
            )
        return version

    async def _holders(self, until: float) -> Holders | None:
        def whole() -> Holders | None:
            found = holders(self.mesh.records(), self.ref, self.mesh.me, self.mesh.states())
            return found if found.whole else None

        return await self._looked_for(whole, until)

    async def _looked_for(self, find: Callable[[], T | None], until: float) -> T | None:
        """What `find` finds in the records, looked for again every `REFRESH` s until
        `until` (the pull's clock)."""
        while (found := find()) is None and self._clock() < until:
            await asyncio.sleep(REFRESH)
        return found

    async def _from_catalogue(self, why: str) -> PullResult:
        if self.catalogue is None:
            raise PullFailed(f"{why}, and this host has no catalogue to fall back on")
        log.info("pulling from the catalogue", extra={"fields": {"ref": self.ref, "why": why}})
        self.status.state = "fetching"
        self.status.sources[CATALOGUE] = 0
        catalogue = self.catalogue

        def progress(what: str, done: int, total: int) -> None:
            self.status.done_bytes, self.status.total_bytes = done, total

        return await asyncio.to_thread(
            self.store.pull, catalogue, self.name, self.version, self.trusted, progress
        )

    # --- the manifest --------------------------------------------------------------------

    async def _template(self, whole: list[str]) -> tuple[SignedManifest, list[ChunkMap] | None]:
        """The signed manifest (verified) and its files' chunk maps (None: format 1), from
        the first holder that gives a manifest of the right name and checking maps."""
        self._rng.shuffle(whole)
        problems = []
        for peer in whole:
            try:
                give = await self._ask_template(peer)
                signed = decode_manifest(give.manifest)
                if signed.manifest.ref != self.ref:
                    raise MalformedManifest(f"{peer} sent {signed.manifest.ref} for {self.ref}")
                verify_manifest(signed, self.trusted)  # refused here: no peer can fix it
                files = signed.manifest.files
                if not all(f.chunk_map for f in files):
                    return signed, None
                if len(give.chunk_maps) != len(files):
                    raise ChunkMapRefused(f"{peer} sent {len(give.chunk_maps)} chunk maps")
                return signed, [
                    decode_chunk_map(m, f) for m, f in zip(give.chunk_maps, files, strict=True)
                ]
            except (PullFailed, MalformedManifest, ChunkMapRefused) as exc:
                problems.append(f"{peer}: {exc}")
                self.status.banned[peer] = str(exc)
        raise PullFailed(f"no holder of {self.ref} gave its manifest: " + "; ".join(problems))

    async def _ask_template(self, peer: str) -> TemplateGive:
        """`peer`'s answer to our ask for the manifest, asked again every `ASK_AGAIN` s: an
        ask or its answer may be lost (the holder restarted on another port, or cannot
        answer us until our record reaches it), and asking again costs a few bytes."""
        assert self._box is not None
        self._box.wants = partial(_template_answer, peer, self.ref)
        try:
            deadline = self._clock() + ASK_TIMEOUT
            next_ask = self._clock()
            while (now := self._clock()) < deadline:
                if now >= next_ask:
                    if not await self.service.send(peer, TemplateAsk(self.ref)):
                        raise PullFailed("not reachable")
                    next_ask = now + ASK_AGAIN
                sender, message = await self._next(min(deadline, next_ask) - now)
                if message is None or not _template_answer(peer, self.ref, sender, message):
                    continue  # one queued before the filter changed (another holder's)
                if isinstance(message, TemplateGive):
                    return message
                if isinstance(message, ImageLack):
                    raise PullFailed(f"answered: {message.reason}")
            raise PullFailed(f"no answer within {ASK_TIMEOUT:.0f} s")
        finally:
            self._box.wants = no_answer

    async def _next(self, timeout: float) -> tuple[str, Message | None]:
        assert self._box is not None
        try:
            return await asyncio.wait_for(self._box.queue.get(), max(0.0, timeout))
        except TimeoutError:
            return "", None

    # --- the files -----------------------------------------------------------------------

    async def _locked_pull(self, signed: SignedManifest, maps: list[ChunkMap]) -> PullResult:
        writing = self.store.writing()
        await asyncio.to_thread(writing.__enter__)
        try:
            manifest, wanted = self.store.admission(signed, self.trusted)
            if not wanted:
                return PullResult(manifest, Pulled.ALREADY_HELD, 0)
            by_digest = {f.sha256: m for f, m in zip(manifest.files, maps, strict=True)}
            self.status.state = "fetching"
            if self._on_fetching is not None:
                await self._on_fetching()
            self.status.total_bytes = sum(f.size for f in wanted)
            staged = []
            for template_file in wanted:
                staged.append((template_file, await self._file(template_file, by_digest)))
                self._held_before += template_file.size
            maps_by_file = {f.sha256: by_digest[f.sha256].encoded() for f in wanted}
            await asyncio.to_thread(self.store.install, signed, staged, maps_by_file)
            return PullResult(manifest, Pulled.ADDED, self.status.total_bytes)
        finally:
            await asyncio.to_thread(_leave, writing)

    async def _file(self, expected: TemplateFile, maps: dict[bytes, ChunkMap]) -> Path:
        """One file fetched into `.incoming/`, every piece checked; its path."""
        chunks = maps[expected.sha256]
        path = self.store.incoming_path(expected)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        written: set[int] = set()  # pieces on disk: only these are served to others
        self.service.partial[expected.sha256] = Partial(path, chunks, written)
        writer = PieceWriter(fd, written)
        try:
            os.ftruncate(fd, expected.size)
            fetch = ChunkFetch(chunks, config=self.config, rng=self._rng)
            assert self._box is not None
            self._box.wants = partial(_awaited, fetch, expected)
            await self._fetch(fetch, expected, writer)
            await writer.finish()
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            if self._box is not None:
                self._box.wants = no_answer
            writer.close()
            os.close(fd)
            self.service.partial.pop(expected.sha256, None)
        return path

    async def _fetch(self, fetch: ChunkFetch, expected: TemplateFile, writer: PieceWriter) -> None:
        sources: set[str] = set()
        next_look = 0.0
        last_piece = self._clock()
        while not fetch.done:
            now = self._clock()
            if now >= next_look:
                await self._look(fetch, expected, sources)
                next_look = now + REFRESH
            await self._ask(fetch, expected, now)
            wait = min(next_look, fetch.next_deadline()) - self._clock()
            sender, message = await self._next(wait)
            stored = None if message is None else self._answer(fetch, expected, sender, message)
            if stored is not None:
                await writer.write(stored.index, stored.data)
                last_piece = self._clock()
                self._show(fetch)
            fetch.expire(self._clock())
            if self._clock() - last_piece > STALL_TIMEOUT:
                missing = fetch.chunks.count - len(fetch.held)
                raise PullFailed(
                    f"no piece of {self.ref}'s {expected.role} arrived for {STALL_TIMEOUT:.0f} s "
                    f"({missing} of {fetch.chunks.count} pieces missing; "
                    f"sources: {', '.join(sorted(sources)) or 'none'})"
                )

    async def _look(self, fetch: ChunkFetch, expected: TemplateFile, sources: set[str]) -> None:
        """Who holds the file now: whole holders from their records, partial ones asked for
        their bitmaps; peers gone from both are forgotten; the catalogue joins when the
        peers lack pieces."""
        found = holders(self.mesh.records(), self.ref, self.mesh.me, self.mesh.states())
        current = set(found.whole) | set(found.partial)
        for peer in sources - current - {CATALOGUE}:
            fetch.forget(peer)
            sources.discard(peer)
        for peer in found.whole:
            fetch.holds(peer, None)
            sources.add(peer)
        for peer in found.partial:  # each holds nothing until its bitmap answers
            if peer not in sources:
                fetch.holds(peer, ())
                sources.add(peer)
            await self.service.send(peer, PiecesAsk(expected.sha256))
        if self.catalogue is not None and CATALOGUE not in sources and fetch.stalled():
            fetch.holds(CATALOGUE, None)
            sources.add(CATALOGUE)

    async def _ask(self, fetch: ChunkFetch, expected: TemplateFile, now: float) -> None:
        for request in fetch.requests(now):
            if request.peer == CATALOGUE:
                task = asyncio.ensure_future(self._catalogue_piece(expected, request.index))
                self._reads.add(task)
                task.add_done_callback(self._reads.discard)
            elif not await self.service.send(
                request.peer, PieceAsk(expected.sha256, request.index)
            ):
                fetch.failed(request.peer, request.index)

    async def _catalogue_piece(self, expected: TemplateFile, index: int) -> None:
        assert self.catalogue is not None and self._box is not None
        try:
            data = await asyncio.to_thread(_read_catalogue_piece, self.catalogue, expected, index)
            answer: Message = PieceGive(expected.sha256, index, data)
        except (CatalogueError, OSError) as exc:
            answer = ImageLack(expected.digest, str(exc), index)
        with contextlib.suppress(asyncio.QueueFull):  # asked again after its timeout
            self._box.queue.put_nowait((CATALOGUE, answer))

    def _answer(
        self, fetch: ChunkFetch, expected: TemplateFile, sender: str, message: Message
    ) -> PieceGive | None:
        """Apply one answer; the piece when it was one checked and taken (to be written)."""
        if isinstance(message, PieceGive) and message.sha256 == expected.sha256:
            arrival = fetch.arrived(sender, message.index, message.data, self._clock())
            if arrival is Arrival.CORRUPT:
                log.warning(
                    "a peer sent a corrupt piece: nothing more is taken from it",
                    extra={"fields": {"peer": sender, "ref": self.ref, "piece": message.index}},
                )
                self.status.banned[sender] = fetch.banned.get(sender, "corrupt piece")
            if arrival is not Arrival.STORED:
                return None
            self.status.sources[sender] = self.status.sources.get(sender, 0) + 1
            return message
        if isinstance(message, PiecesHeld) and message.sha256 == expected.sha256:
            pieces = None if message.whole else pieces_of(message.bitmap, fetch.chunks.count)
            fetch.holds(sender, pieces)
        elif isinstance(message, ImageLack) and message.what == expected.digest:
            if message.index >= 0:
                fetch.failed(sender, message.index)
            else:
                fetch.holds(sender, ())
        return None

    def _show(self, fetch: ChunkFetch) -> None:
        self.status.done_bytes = self._held_before + fetch.held_bytes()


def _leave(context: AbstractContextManager[None]) -> None:
    context.__exit__(None, None, None)


def _template_answer(peer: str, ref: str, sender: str, message: Message) -> bool:
    """Whether a pull that asked `peer` for template `ref` awaits `message`."""
    if sender != peer:
        return False
    if isinstance(message, TemplateGive):
        return message.ref == ref
    return isinstance(message, ImageLack) and message.what == ref


def _awaited(fetch: ChunkFetch, expected: TemplateFile, sender: str, message: Message) -> bool:
    """Whether a pull fetching file `expected` awaits `message`: a piece asked of
    `sender`, or what one of the fetch's sources says it holds or lacks of that file."""
    if isinstance(message, PieceGive):
        return message.sha256 == expected.sha256 and fetch.awaits(sender, message.index)
    if isinstance(message, PiecesHeld):
        return message.sha256 == expected.sha256 and fetch.knows(sender)
    if isinstance(message, ImageLack):
        return message.what == expected.digest and fetch.knows(sender)
    return False


def _read_catalogue_piece(catalogue: Catalogue, expected: TemplateFile, index: int) -> bytes:
    """Piece `index` of a catalogue's file (a range request to an HTTP catalogue)."""
    return catalogue.read_range(file_path(expected.digest), index * CHUNK_SIZE, CHUNK_SIZE)


# --- the pulls of this host ------------------------------------------------------------


PullFactory = Callable[[PullStatus, str, str | None], MeshPull]


class Pulls:
    """The pulls this agent runs: one per template at a time, the recent ones remembered."""

    KEEP = 20  # finished pulls kept for `nova template pull` to read

    def __init__(self, make: PullFactory, on_change: Callable[[], Awaitable[None]]) -> None:
        self._make = make
        self._on_change = on_change  # republish the record: what this host fetches and holds
        self._pulls: dict[str, PullStatus] = {}
        self._running: dict[str, MeshPull] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next = 0

    def start(self, name: str, version: str | None) -> PullStatus:
        """Start pulling NAME[:VERSION], or join the pull of it already running; `Refused`
        when this host cannot pull at all (it trusts no publisher)."""
        asked = name if version is None else f"{name}:{version}"
        for pull in self._running.values():
            if asked in (pull.status.ref, pull.ref):
                return pull.status
        self._next += 1
        status = PullStatus(f"pull-{self._next}", asked)
        try:
            pull = self._make(status, name, version)
        except PullFailed as exc:
            raise Refused(RefusalKind.CONFLICT, str(exc)) from None
        self._pulls[status.pull_id] = status
        self._running[status.pull_id] = pull
        task = asyncio.ensure_future(self._run(pull))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._forget_old()
        return status

    def get(self, pull_id: str) -> PullStatus | None:
        return self._pulls.get(pull_id)

    def listing(self) -> list[PullStatus]:
        return list(self._pulls.values())

    def fetching(self) -> tuple[str, ...]:
        """Templates being fetched now (NAME:VERSION), for this host's record."""
        return tuple(
            p.ref for p in self._running.values() if p.status.state == "fetching" and p.version
        )

    async def _run(self, pull: MeshPull) -> None:
        status = pull.status
        try:
            result = await pull.run()
            status.outcome = result.outcome.value
            status.done_bytes = status.total_bytes = result.fetched_bytes
            status.state = "done"
        except TemplateRefused as exc:
            status.state, status.error, status.reason = "failed", f"refused: {exc}", exc.reason
        except (PullFailed, StoreError, CatalogueError, OSError) as exc:
            status.state, status.error = "failed", str(exc)
        finally:
            status.ended = time.time()
            self._running.pop(status.pull_id, None)
            log.info(
                "template pull ended",
                extra={"fields": {"ref": status.ref, "state": status.state, "error": status.error}},
            )
            await self._on_change()

    def _forget_old(self) -> None:
        ended = [p for p in self._pulls.values() if p.pull_id not in self._running]
        for status in ended[: max(0, len(ended) - self.KEEP)]:
            del self._pulls[status.pull_id]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
