"""Fetching one file's pieces from many peers at once, sans-IO.

The driver tells `ChunkFetch` which peers hold which pieces (`holds`; a peer
that holds the whole file, or only what it fetched so far), asks it which
pieces to request from whom (`requests`), and hands it every answer
(`arrived`, `failed`) and the time (`expire`). The core decides:

- which piece next: the rarest first (held by the fewest peers), ties broken
  at random, so many hosts fetching at once spread the pieces among
  themselves and soon serve each other instead of all asking the first
  source for the same piece (BitTorrent's rule; Dragonfly and Kraken do the
  same over their own networks);
- from whom: among the peers that hold the piece, the one with the fewest
  requests in flight, each peer an equal share of `in_flight` at once (at
  least one, at most `per_peer`: see `ChunkFetch.share`);
- what a bad answer costs the peer: a piece whose SHA-256 is not the chunk
  map's bans its sender for the rest of the fetch (it lied, or its copy is
  bad; either way nothing more is taken from it); a request failed or given
  up is asked of another holder, and a peer that fails `strikes` times in a
  row is dropped as unusable;
- when to give a request up: when its peer has sent no piece for `timeout`
  (counted from the request if it was asked later), not `timeout` after it
  was asked: a holder serving many hosts has a long queue, and one that
  keeps sending pieces is slow, not failing; and at once when `per_peer`
  requests asked of the same peer after it have come first, as its answer
  was then lost (TCP's fast retransmit: a holder answers one requester's
  asks about in the order asked; the catalogue, whose pieces the driver
  reads side by side, is not held to that);
- when to fall back: the catalogue (`CATALOGUE`, added with `holds` like a
  peer) is asked only for pieces no usable peer holds, so a site's own
  hosts carry the traffic whenever they can.

Every piece is checked against the signed chunk map before it counts; the
driver writes only pieces the core stored. Pure: no clock of its own (times
come in), randomness from the injected RNG.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

from .chunkmap import ChunkMap

CATALOGUE = "catalogue"
"""The source of last resort: a catalogue that holds every piece."""

INF = float("inf")


@dataclass(frozen=True, slots=True)
class FetchConfig:
    per_peer: int = 8  # requests in flight to one peer, at most (see `ChunkFetch.share`)
    in_flight: int = 16  # requests in flight in all
    timeout: float = 10.0  # seconds a peer may send no piece before its requests are given up
    strikes: int = 3  # failures in a row after which a peer is dropped

    def __post_init__(self) -> None:
        if self.per_peer < 1 or self.in_flight < 1 or self.strikes < 1:
            raise ValueError("per_peer, in_flight and strikes must be at least 1")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")


@dataclass(frozen=True, slots=True)
class Request:
    peer: str
    index: int


class Arrival(Enum):
    STORED = "stored"  # the piece checked: write it
    CORRUPT = "corrupt"  # not the chunk map's piece: its sender is banned
    UNASKED = "unasked"  # not asked of this peer (late, or never): ignored
    DUPLICATE = "duplicate"  # held already: ignored


@dataclass(slots=True)
class _Peer:
    pieces: set[int] | None  # None: every piece
    in_flight: int = 0
    strikes: int = 0  # failures since its last good piece
    delivered: float = -INF  # when it last sent a piece that checked


@dataclass(slots=True)
class _Ask:
    """A request in flight."""

    peer: str
    at: float  # when it was asked
    order: int  # asked before every request with a higher one
    overtaken: int = 0  # requests asked of its peer after it that came before it
    lost_at: float = INF  # when the `per_peer`-th of them came: its answer is taken as lost


@dataclass(slots=True)
class FetchStats:
    stored: int = 0
    corrupt: int = 0
    failed: int = 0  # failures and requests given up
    from_catalogue: int = 0  # pieces the catalogue gave
    by_peer: dict[str, int] = field(default_factory=dict)  # pieces stored, per source


class ChunkFetch:
    """One file's fetch: which pieces are held, asked and from whom (see the module doc)."""

    def __init__(
        self,
        chunks: ChunkMap,
        held: Collection[int] = (),
        config: FetchConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.chunks = chunks
        self.config = config or FetchConfig()
        self._rng = rng or random.Random()
        self._held = {i for i in held if 0 <= i < chunks.count}
        self._peers: dict[str, _Peer] = {}
        self._count = [0] * chunks.count  # peers (not the catalogue) holding each piece
        self._asked: dict[int, _Ask] = {}  # piece -> its request in flight
        self._asks = 0  # requests made: the next one's order
        self.banned: dict[str, str] = {}  # peer -> why nothing more is taken from it
        self.stats = FetchStats()

    # --- what the peers hold -------------------------------------------------------------

    def holds(self, peer: str, pieces: Collection[int] | None) -> None:
        """`peer` holds `pieces` (None: the whole file); replaces what it held before."""
        if peer in self.banned:
            return
        chosen = None if pieces is None else {i for i in pieces if 0 <= i < self.chunks.count}
        known = self._peers.get(peer)
        if known is None:
            known = self._peers[peer] = _Peer(set())
        else:
            self._recount(peer, known, -1)
        known.pieces = chosen
        self._recount(peer, known, +1)

    def _recount(self, name: str, peer: _Peer, step: int) -> None:
        """Add `step` to the holder count of each piece `peer` holds."""
        if name == CATALOGUE or step == 0:
            return
        if peer.pieces is None:
            self._count = [c + step for c in self._count]
        else:
            for i in peer.pieces:
                self._count[i] += step

    def knows(self, peer: str) -> bool:
        """Whether `peer` is one of this fetch's sources (whatever it holds)."""
        return peer in self._peers

    def forget(self, peer: str) -> None:
        """`peer` left: what it was asked is asked of others."""
        known = self._peers.pop(peer, None)
        if known is not None:
            self._recount(peer, known, -1)
        for index, asked in list(self._asked.items()):
            if asked.peer == peer:
                del self._asked[index]

    # --- asking ----------------------------------------------------------------------------

    def requests(self, now: float) -> list[Request]:
        """What to ask now, and of whom; each is noted as in flight until it is answered."""
        out: list[Request] = []
        room = self.config.in_flight - len(self._asked)
        if room <= 0:
            return out
        usable = {p: peer for p, peer in self._peers.items() if self._usable(p, peer)}
        peers_only = {p: peer for p, peer in usable.items() if p != CATALOGUE}
        share = self.share(len(peers_only))
        free = {p: peer for p, peer in usable.items() if self._free(p, peer, share)}
        if not free:
            return out  # every source is busy: the pieces left are not even sorted
        for index in self._wanted():
            if not free:
                break  # every source is busy: nothing more to ask now
            holders = [p for p, peer in peers_only.items() if _has(peer, index)]
            if not holders and CATALOGUE in usable:
                holders = [CATALOGUE]
            choices = [p for p in holders if p in free]
            if not choices:
                continue
            least = min(free[p].in_flight for p in choices)
            peer = self._rng.choice(sorted(p for p in choices if free[p].in_flight == least))
            free[peer].in_flight += 1
            if not self._free(peer, free[peer], share):
                del free[peer]
            self._asked[index] = _Ask(peer, now, self._asks)
            self._asks += 1
            out.append(Request(peer, index))
            room -= 1
            if room == 0:
                break
        return out

    def share(self, peers: int) -> int:
        """Requests in flight to one peer when `peers` usable peers are known (whole
        holders and hosts fetching the file, even those that hold nothing yet; not the
        catalogue, nor banned or struck-out peers): an equal share of `in_flight`, at
        least one, at most `per_peer`.

        The peers fetching the same file are also what a holder's queue is shared
        with: N hosts pulling from each other keep about one request at each, so a
        piece asked of the first source leaves within seconds, not after N *
        `per_peer` others, and two hosts seldom ask it the same piece before one of
        them holds it. Alone with one holder, a host keeps `per_peer` in flight there,
        enough to keep a fast link busy. The price: with a share of one, a lost answer
        holds its peer's slot until `timeout` (no later request can overtake it)."""
        return max(1, min(self.config.per_peer, self.config.in_flight // max(1, peers)))

    def _free(self, name: str, peer: _Peer, share: int) -> bool:
        """Whether `peer` may be asked one more piece (the catalogue: up to `per_peer`)."""
        limit = self.config.per_peer if name == CATALOGUE else share
        return peer.in_flight < limit

    def _usable(self, name: str, peer: _Peer) -> bool:
        return name not in self.banned and peer.strikes < self.config.strikes

    def _wanted(self) -> list[int]:
        """Pieces neither held nor asked, the rarest among the peers first (ties at random)."""
        count = self._count
        missing = [
            i for i in range(self.chunks.count) if i not in self._held and i not in self._asked
        ]
        self._rng.shuffle(missing)
        missing.sort(key=count.__getitem__)  # stable: the shuffle breaks ties
        return missing

    # --- answers ---------------------------------------------------------------------------

    def arrived(self, peer: str, index: int, data: bytes, now: float) -> Arrival:
        """`peer` sent piece `index` at `now`: stored if it was asked of it and checks."""
        asked = self._asked.get(index)
        if asked is None or asked.peer != peer:
            return Arrival.DUPLICATE if index in self._held else Arrival.UNASKED
        del self._asked[index]
        source = self._peers.get(peer)
        if source is not None:
            source.in_flight -= 1
        if not self.chunks.matches(index, data):
            self.stats.corrupt += 1
            self.banned[peer] = f"sent a piece {index} that is not the signed one"
            self.forget(peer)
            self._release(peer)
            return Arrival.CORRUPT
        if source is not None:
            source.strikes = 0
            source.delivered = max(source.delivered, now)
        self._overtake(asked, now)
        self._held.add(index)
        self.stats.stored += 1
        self.stats.by_peer[peer] = self.stats.by_peer.get(peer, 0) + 1
        if peer == CATALOGUE:
            self.stats.from_catalogue += 1
        return Arrival.STORED

    def awaits(self, peer: str, index: int) -> bool:
        """Whether piece `index` was asked of `peer` and has not arrived or expired."""
        asked = self._asked.get(index)
        return asked is not None and asked.peer == peer

    def failed(self, peer: str, index: int) -> None:
        """`peer` could not give piece `index` (an error, or it no longer holds it)."""
        asked = self._asked.get(index)
        if asked is None or asked.peer != peer:
            return
        del self._asked[index]
        self._strike(peer)

    def _overtake(self, came: _Ask, now: float) -> None:
        """`came` arrived: each request asked of its peer before it and still awaited was
        overtaken once more, and one overtaken `per_peer` times is taken as lost.

        This relies on a holder answering one requester's asks about in the order
        asked: they come over one connection, `ImageService` starts serving them in
        the order they come (paced, they take their turns on the uplink in that order)
        and its answers go back over one connection; only piece reads running side by
        side may finish out of turn. The catalogue is exempt: the driver reads its
        pieces side by side, each a range request of its own, so they come in any
        order (one lost there is given up once the catalogue has sent nothing for
        `timeout`)."""
        if came.peer == CATALOGUE:
            return
        for asked in self._asked.values():
            if asked.peer == came.peer and asked.order < came.order:
                asked.overtaken += 1
                if asked.overtaken == self.config.per_peer:
                    asked.lost_at = now

    def _due(self, asked: _Ask) -> float:
        """When `asked` is given up: `timeout` after its peer's last piece (or after it
        was asked, if that is later), or when its answer was taken as lost."""
        source = self._peers.get(asked.peer)
        delivered = -INF if source is None else source.delivered
        return min(asked.lost_at, max(asked.at, delivered) + self.config.timeout)

    def expire(self, now: float) -> list[Request]:
        """Requests given up by `now` (see `_due`): each a strike on its peer."""
        late = [Request(a.peer, i) for i, a in self._asked.items() if now >= self._due(a)]
        for request in late:
            del self._asked[request.index]
            self._strike(request.peer)
        return late

    def _strike(self, peer: str) -> None:
        self.stats.failed += 1
        source = self._peers.get(peer)
        if source is not None:
            source.in_flight -= 1
            source.strikes += 1

    def _release(self, peer: str) -> None:
        """A banned peer's other requests are asked of others (their answers are ignored)."""
        for index, asked in list(self._asked.items()):
            if asked.peer == peer:
                del self._asked[index]

    # --- where it stands -------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The earliest time `expire` gives a request up, as things stand now."""
        return min((self._due(a) for a in self._asked.values()), default=INF)

    @property
    def done(self) -> bool:
        return len(self._held) == self.chunks.count

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def held_bytes(self) -> int:
        return sum(self.chunks.length(i) for i in self._held)

    def stalled(self) -> list[int]:
        """Pieces missing that no usable source holds: the fetch cannot finish without a
        new source (a peer that gets them, or a catalogue)."""
        usable = [peer for p, peer in self._peers.items() if self._usable(p, peer)]
        return [
            i
            for i in range(self.chunks.count)
            if i not in self._held and not any(_has(peer, i) for peer in usable)
        ]


def _has(peer: _Peer, index: int) -> bool:
    return peer.pieces is None or index in peer.pieces
