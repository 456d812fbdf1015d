"""Template images in pieces: the signed chunk map, and fetching pieces from many peers
(liars, peers that die mid-transfer, a catalogue as the last resort). No I/O: the one
test of the pull's driver gives it an image service that only notes what it was sent."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
from functools import partial
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.agent.catalogue import Publication, publish
from novacron.agent.core.images.chunkmap import (
    CHUNK_SIZE,
    ChunkMap,
    ChunkMapBuilder,
    ChunkMapRefused,
    decode_chunk_map,
)
from novacron.agent.core.images.fetch import (
    CATALOGUE,
    INF,
    Arrival,
    ChunkFetch,
    FetchConfig,
    Request,
)
from novacron.agent.core.images.holders import (
    MAX_LISTED,
    Holders,
    bitmap,
    holders,
    listed,
    newest_offered,
    pieces_of,
)
from novacron.agent.core.templates import DefaultSpec, TemplateFile, decode_manifest
from novacron.agent.image_service import ImageService, Inbox
from novacron.agent.mesh_pull import MeshPull, PeersView, PullFailed, PullStatus, _awaited
from novacron.agent.template_store import TemplateStore
from novacron.protocol.keys import Ed25519PrivateKey
from novacron.protocol.messages import (
    ImageLack,
    MemberState,
    Message,
    NodeRecord,
    PieceGive,
    PiecesHeld,
    TemplateGive,
)


def image(pieces: float, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(int(pieces * CHUNK_SIZE))


def chunk_map(data: bytes) -> ChunkMap:
    builder = ChunkMapBuilder()
    builder.feed(data)
    return builder.finish()


# --- the chunk map -------------------------------------------------------------------


def test_the_chunk_map_names_each_piece_whatever_sizes_the_bytes_come_in() -> None:
    data = image(3.5)
    made = chunk_map(data)
    assert made.count == 4 and made.size == len(data)
    assert made.length(3) == CHUNK_SIZE // 2
    for i in range(4):
        piece = data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        assert made.digests[i] == hashlib.sha256(piece).digest() and made.matches(i, piece)
    builder = ChunkMapBuilder()
    for start in range(0, len(data), 333_333):
        builder.feed(data[start : start + 333_333])
    assert builder.finish() == made
    assert chunk_map(b"") == ChunkMap(0, ())


def test_a_piece_that_is_not_the_signed_one_does_not_match() -> None:
    data = image(2)
    made = chunk_map(data)
    piece = data[:CHUNK_SIZE]
    assert not made.matches(0, piece[:-1])  # truncated
    assert not made.matches(0, b"\0" + piece[1:])  # one byte changed
    assert not made.matches(1, piece)  # another piece's bytes
    assert not made.matches(2, piece) and not made.matches(-1, piece)


def test_a_chunk_map_is_taken_only_as_the_manifest_signed_it() -> None:
    data = image(3)
    made = chunk_map(data)
    signed = TemplateFile("image", hashlib.sha256(data).digest(), len(data), made.digest())
    assert decode_chunk_map(made.encoded(), signed) == made
    forged = chunk_map(image(3, seed=2))
    with pytest.raises(ChunkMapRefused, match="not the one its manifest signed"):
        decode_chunk_map(forged.encoded(), signed)
    with pytest.raises(ChunkMapRefused, match="3 pieces"):
        decode_chunk_map(made.encoded()[:-32], signed)
    with pytest.raises(ChunkMapRefused, match="signs no chunk map"):
        decode_chunk_map(made.encoded(), dataclasses.replace(signed, chunk_map=b""))


def test_a_published_manifest_signs_each_files_chunk_map(tmp_path: Path) -> None:
    data = image(2.25)
    (tmp_path / "disk.qcow2").write_bytes(data)
    key = Ed25519PrivateKey.generate()
    what = Publication("debian-12", "1", "acme", DefaultSpec(memory_mib=128, vcpus=1))
    made = publish(tmp_path / "catalogue", key, what, tmp_path / "disk.qcow2", None, None, 0.0)
    path = tmp_path / "catalogue" / "manifests" / "debian-12" / "1.manifest"
    signed = decode_manifest(path.read_bytes()).manifest
    assert signed == made and signed.format == 2
    assert decode_chunk_map(chunk_map(data).encoded(), signed.image) == chunk_map(data)


# --- fetching from peers -------------------------------------------------------------


class Swarm:
    """Peers answering a `ChunkFetch`: honest ones, liars, and ones that never answer."""

    def __init__(self, data: bytes, fetch: ChunkFetch) -> None:
        self.data = data
        self.fetch = fetch
        self.liars: set[str] = set()
        self.silent: set[str] = set()
        self.asked: list[Request] = []
        self.now = 0.0

    def piece(self, index: int) -> bytes:
        return self.data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]

    def run(self, rounds: int = 1000) -> None:
        for _ in range(rounds):
            if self.fetch.done:
                return
            requests = self.fetch.requests(self.now)
            self.asked += requests
            for request in requests:
                if request.peer in self.silent:
                    continue
                data = self.piece(request.index)
                if request.peer in self.liars:
                    data = bytes(len(data))
                self.fetch.arrived(request.peer, request.index, data, self.now)
            self.now += 1.0
            self.fetch.expire(self.now)


def fetch_of(data: bytes, **config: int) -> ChunkFetch:
    return ChunkFetch(chunk_map(data), config=FetchConfig(**config), rng=random.Random(7))


def test_pieces_come_from_every_peer_that_has_them_and_each_is_checked() -> None:
    data = image(12)
    fetch = fetch_of(data, per_peer=2, in_flight=6)
    for peer in ("h1", "h2", "h3"):
        fetch.holds(peer, None)
    swarm = Swarm(data, fetch)
    first = fetch.requests(0.0)
    assert len(first) == 6 and {r.peer for r in first} == {"h1", "h2", "h3"}
    for request in first:
        assert fetch.arrived(request.peer, request.index, swarm.piece(request.index), 0.0) is (
            Arrival.STORED
        )
    swarm.run()
    assert fetch.done and fetch.held_bytes() == len(data)
    assert set(fetch.stats.by_peer) == {"h1", "h2", "h3"}
    assert fetch.stats.from_catalogue == 0


def test_a_peer_that_sends_a_bad_piece_is_banned_and_the_fetch_ends_right() -> None:
    data = image(10)
    fetch = fetch_of(data)
    for peer in ("liar", "h2"):
        fetch.holds(peer, None)
    swarm = Swarm(data, fetch)
    swarm.liars.add("liar")
    swarm.run()
    assert fetch.done and "liar" in fetch.banned and "liar" not in fetch.stats.by_peer
    assert fetch.stats.corrupt >= 1
    banned_at = next(i for i, r in enumerate(swarm.asked) if r.peer == "liar")
    later = swarm.asked[banned_at + fetch.config.in_flight :]
    assert all(r.peer != "liar" for r in later)  # once caught, never asked again
    fetch.holds("liar", None)  # a banned peer offering again is not taken back
    assert "liar" not in {r.peer for r in fetch.requests(swarm.now)}


def test_a_source_dying_mid_transfer_leaves_the_rest_to_the_others() -> None:
    data = image(16)
    fetch = fetch_of(data, per_peer=4, in_flight=8)
    for peer in ("h1", "h2"):
        fetch.holds(peer, None)
    swarm = Swarm(data, fetch)
    swarm.run(rounds=1)
    swarm.silent.add("h1")  # killed: never answers again
    swarm.run()
    assert fetch.done and fetch.stats.failed >= 1
    late = [r for r in swarm.asked if r.peer == "h1"][8:]  # after its in-flight were lost
    assert len(late) <= fetch.config.strikes * fetch.config.per_peer


def test_the_catalogue_gives_only_what_no_peer_holds() -> None:
    data = image(8)
    fetch = fetch_of(data)
    fetch.holds("h2", range(0, 5))  # a peer still fetching: it has half
    fetch.holds(CATALOGUE, None)
    swarm = Swarm(data, fetch)
    swarm.run()
    assert fetch.done
    assert fetch.stats.by_peer == {"h2": 5, CATALOGUE: 3}
    by_source = {r.index: r.peer for r in swarm.asked}
    assert all(by_source[i] == CATALOGUE for i in range(5, 8))


def test_the_rarest_piece_is_asked_first() -> None:
    data = image(6)
    fetch = fetch_of(data, per_peer=1, in_flight=1)
    fetch.holds("h1", None)
    fetch.holds("h2", range(0, 5))
    fetch.holds("h3", range(0, 5))
    (first,) = fetch.requests(0.0)
    assert (first.peer, first.index) == ("h1", 5)  # only h1 has piece 5


def test_a_host_keeps_an_equal_share_of_its_requests_at_each_holder() -> None:
    data = image(64)
    alone = fetch_of(data, per_peer=8, in_flight=16)
    alone.holds("h1", None)
    assert [r.peer for r in alone.requests(0.0)] == ["h1"] * 8  # deep enough for a fast link
    crowd = fetch_of(data, per_peer=8, in_flight=16)
    crowd.holds("h1", None)  # the first source, which every host fetching waits on
    for i in range(2, 11):
        crowd.holds(f"h{i}", range(0, 64, i))  # hosts fetching too, each with some pieces
    crowd.holds("h11", ())  # fetching, nothing yet: still one of the hosts sharing h1
    asked = crowd.requests(0.0)
    per_peer = {peer: sum(r.peer == peer for r in asked) for peer in {r.peer for r in asked}}
    assert per_peer["h1"] == 1 and max(per_peer.values()) == 1  # 16 // 11 holders
    three = fetch_of(data, per_peer=8, in_flight=16)
    for name in ("h1", "h2", "h3"):
        three.holds(name, None)
    assert sorted(r.peer for r in three.requests(0.0)) == ["h1"] * 5 + ["h2"] * 5 + ["h3"] * 5


class Bitmaps:
    """The image service as a pull sees it: bitmap requests sent, or not (`unreachable`)."""

    def __init__(self, unreachable: set[str]) -> None:
        self.unreachable = unreachable
        self.asked: list[str] = []

    async def send(self, peer: str, message: object) -> bool:
        self.asked.append(peer)
        return peer not in self.unreachable


async def test_hosts_fetching_share_the_first_source_before_their_bitmaps_answer() -> None:
    data = image(32)
    chunks = chunk_map(data)
    expected = TemplateFile("image", hashlib.sha256(data).digest(), len(data), chunks.digest())
    ref = "bench:1"
    records = {"h1": NodeRecord("h1", 1, templates=(ref,), image_port=9)}
    for i in range(2, 12):  # ten more hosts pulling it at once, none with a piece yet
        records[f"h{i}"] = NodeRecord(f"h{i}", 1, fetching=(ref,), image_port=9)
    states = {node: MemberState.ALIVE for node in records}
    service = Bitmaps(unreachable={"h5"})
    pull = MeshPull(
        PullStatus("p1", ref),
        "bench",
        "1",
        store=cast(TemplateStore, None),
        trusted={},
        service=cast(ImageService, service),
        mesh=PeersView("h2", lambda: records, lambda: states),
    )
    fetch = ChunkFetch(chunks, config=FetchConfig(per_peer=8, in_flight=16))
    sources: set[str] = set()
    await pull._look(fetch, expected, sources)
    assert sources == set(records) - {"h2"}  # h5 too: its bitmap may come on the next look
    assert sorted(service.asked) == sorted(f"h{i}" for i in range(3, 12))
    assert [r.peer for r in fetch.requests(0.0)] == ["h1"]  # 16 // 10 holders: one each


def test_with_no_source_for_a_piece_the_fetch_says_it_is_stalled() -> None:
    data = image(4)
    fetch = fetch_of(data)
    fetch.holds("h2", {0, 1})
    swarm = Swarm(data, fetch)
    swarm.run(rounds=5)
    assert not fetch.done and fetch.stalled() == [2, 3]
    fetch.forget("h2")
    assert fetch.stalled() == [2, 3]  # what was stored stays stored


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.integers(1, 24),
    holdings=st.lists(st.one_of(st.none(), st.sets(st.integers(0, 23))), min_size=1, max_size=6),
    liars=st.sets(st.integers(0, 5)),
    silent=st.sets(st.integers(0, 5)),
    catalogue=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_any_swarm_ends_with_only_checked_pieces_from_those_that_hold_them(
    pieces: int,
    holdings: list[set[int] | None],
    liars: set[int],
    silent: set[int],
    catalogue: bool,
    seed: int,
) -> None:
    data = random.Random(seed).randbytes(pieces * 1024) * (CHUNK_SIZE // 1024)
    chunks = chunk_map(data)
    config = FetchConfig(per_peer=2, in_flight=5, timeout=2.0, strikes=2)
    fetch = ChunkFetch(chunks, config=config, rng=random.Random(seed))
    names = [f"h{i}" for i in range(len(holdings))]
    for name, held in zip(names, holdings, strict=True):
        fetch.holds(name, held)
    if catalogue:
        fetch.holds(CATALOGUE, None)
    swarm = Swarm(data, fetch)
    swarm.liars = {names[i] for i in liars if i < len(names)}
    swarm.silent = {names[i] for i in silent if i < len(names)}
    in_flight: dict[str, int] = {}
    for _ in range(400):
        if fetch.done:
            break
        requests = fetch.requests(swarm.now)
        for request in requests:
            held = dict(zip(names, holdings, strict=True)).get(request.peer)
            assert request.peer == CATALOGUE or held is None or request.index in held
            in_flight[request.peer] = in_flight.get(request.peer, 0) + 1
        assert len(requests) <= config.in_flight
        for request in requests:
            if request.peer in swarm.silent:
                continue
            data_ = swarm.piece(request.index)
            if request.peer in swarm.liars:
                data_ = bytes(len(data_))
            fetch.arrived(request.peer, request.index, data_, swarm.now)
        swarm.now += 1.0
        fetch.expire(swarm.now)
    honest = [
        held
        for name, held in zip(names, holdings, strict=True)
        if name not in swarm.liars and name not in swarm.silent
    ]
    coverable = catalogue or all(
        any(held is None or i in held for held in honest) for i in range(chunks.count)
    )
    if coverable:
        assert fetch.done
    for liar in swarm.liars:
        assert liar not in fetch.stats.by_peer
    assert sum(fetch.stats.by_peer.values()) == len(fetch.held)


# --- deadlines that follow each peer's deliveries -------------------------------------


class InOrder:
    """A holder answering the requests asked of it in the order they were asked, as a
    holder serves one requester's asks."""

    def __init__(self, fetch: ChunkFetch, name: str, data: bytes) -> None:
        self.fetch, self.name, self.data = fetch, name, data
        self.queue: list[int] = []  # pieces asked of it and not answered yet, oldest first

    def take(self, requests: list[Request]) -> None:
        self.queue += [r.index for r in requests if r.peer == self.name]

    def answer(self, now: float) -> Arrival:
        index = self.queue.pop(0)
        data = self.data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
        return self.fetch.arrived(self.name, index, data, now)


def one_holder(name: str, pieces: int, per_peer: int, in_flight: int) -> tuple[ChunkFetch, InOrder]:
    """A fetch of `pieces` from holder `name` alone, its first requests asked at 0 s."""
    data = image(pieces)
    fetch = fetch_of(data, per_peer=per_peer, in_flight=in_flight)
    fetch.holds(name, None)
    holder = InOrder(fetch, name, data)
    holder.take(fetch.requests(0.0))
    return fetch, holder


def test_a_busy_holder_that_keeps_delivering_is_slow_not_failing() -> None:
    fetch, busy = one_holder("busy", 40, per_peer=8, in_flight=16)
    assert len(busy.queue) == 8
    for tick in range(1, 121):  # every half second for 60 s
        now = tick / 2
        if tick % 4 == 0:  # one piece every 2 s: each request waits 16 s, past the timeout
            assert busy.answer(now) is Arrival.STORED
            busy.take(fetch.requests(now))
        assert fetch.expire(now) == []
    assert fetch.stats.stored == 30 and fetch.stats.failed == 0  # no strike
    assert len(busy.queue) == 8


def test_a_holder_gone_silent_loses_its_requests_timeout_after_its_last_piece() -> None:
    data = image(12)
    fetch = fetch_of(data, per_peer=6, in_flight=12)
    fetch.holds("h1", None)
    fetch.holds("h2", None)
    h1, h2 = InOrder(fetch, "h1", data), InOrder(fetch, "h2", data)
    first = fetch.requests(0.0)
    h1.take(first)
    h2.take(first)
    assert len(h1.queue) == len(h2.queue) == 6
    for now, holder in ((1, h2), (1.5, h2), (2, h1), (2.5, h2), (3, h2), (3.5, h2), (3.8, h2)):
        holder.answer(now)
    h1.answer(4.0)  # its last piece
    assert h2.queue == [] and fetch.requests(4.0) == []  # h2 idle; h1 silent from 4 s
    assert fetch.expire(13.99) == []
    late = fetch.expire(14.0)
    assert sorted(late, key=lambda r: r.index) == [Request("h1", i) for i in sorted(h1.queue)]
    again = fetch.requests(14.0)
    assert sorted(again, key=lambda r: r.index) == [Request("h2", i) for i in sorted(h1.queue)]


def test_a_lost_answer_is_asked_again_once_later_requests_have_come() -> None:
    fetch, h1 = one_holder("h1", 8, per_peer=4, in_flight=4)
    lost = h1.queue.pop(0)  # its answer never comes; the holder keeps sending the rest
    for now in (1.0, 2.0, 3.0):
        h1.answer(now)
        h1.take(fetch.requests(now))
        assert fetch.expire(now) == []  # fewer than per_peer later ones came
    h1.answer(4.0)  # the fourth asked after it
    assert fetch.expire(4.0) == [Request("h1", lost)]
    assert Request("h1", lost) in fetch.requests(4.0)


def test_the_next_deadline_is_when_a_request_is_first_given_up() -> None:
    fetch, h1 = one_holder("h1", 8, per_peer=4, in_flight=4)
    h1.queue.pop(0)  # lost
    given_up: list[tuple[float, int]] = []
    for tick in range(1, 81):  # every half second for 40 s
        now = tick / 2
        if now in (3.0, 6.0, 9.0, 12.0, 15.0):  # a piece every 3 s, then silence
            h1.answer(now)
        h1.take(fetch.requests(now))
        due = fetch.next_deadline()
        if due < INF:
            assert copy.deepcopy(fetch).expire(due - 0.001) == []
            assert copy.deepcopy(fetch).expire(due) != []
        late = fetch.expire(now)
        assert bool(late) == (now >= due)
        if late:
            given_up.append((now, len(late)))
    # the lost one once four asked after it came (12 s); the rest 10 s after the last piece
    assert given_up == [(12.0, 1), (25.0, 3)]
    assert fetch.next_deadline() == INF  # h1 struck out: nothing asked, nothing due


# --- who holds which pieces: the bitmap peers send, and the records they gossip ---------


@given(st.sets(st.integers(0, 300)), st.integers(0, 300))
def test_a_bitmap_carries_exactly_the_pieces_held(pieces: set[int], count: int) -> None:
    assert pieces_of(bitmap(pieces, count), count) == {i for i in pieces if i < count}


@given(st.binary(max_size=64), st.integers(0, 300))
def test_an_untrusted_bitmap_names_no_piece_past_the_file(bits: bytes, count: int) -> None:
    assert all(0 <= i < count for i in pieces_of(bits, count))


def test_holders_are_alive_peers_serving_images_whole_or_in_part() -> None:
    def record(
        node: str, port: int = 9, held: tuple[str, ...] = (), fetching: tuple[str, ...] = ()
    ) -> NodeRecord:
        return NodeRecord(node, 1, templates=held, fetching=fetching, image_port=port)

    records = {
        "me": record("me", held=("debian-12:1",)),
        "a": record("a", held=("debian-12:1",)),
        "b": record("b", fetching=("debian-12:1",)),
        "c": record("c", port=0, held=("debian-12:1",)),  # serves no images
        "d": record("d", held=("debian-12:1",)),  # dead
        "e": record("e", held=("debian-12:2",)),
    }
    states = {n: MemberState.ALIVE for n in records} | {"d": MemberState.DEAD}
    assert holders(records, "debian-12:1", "me", states) == Holders(("a",), ("b",))
    assert newest_offered(records.values(), "debian-12") == "2"
    assert newest_offered(records.values(), "ubuntu") is None


def test_a_record_lists_at_most_its_newest_templates() -> None:
    refs = [f"t{i}:{i}" for i in range(MAX_LISTED + 10)]
    shown = listed(refs)
    assert len(shown) == MAX_LISTED and f"t{MAX_LISTED + 9}:{MAX_LISTED + 9}" in shown


def test_a_pull_awaits_only_the_pieces_it_asked_of_each_peer() -> None:
    data = image(3)
    fetch = ChunkFetch(chunk_map(data), config=FetchConfig(per_peer=1, in_flight=2))
    fetch.holds("n1", None)
    fetch.holds("n2", None)
    asked = {r.index: r.peer for r in fetch.requests(0.0)}
    assert len(asked) == 2
    for index, peer in asked.items():
        assert fetch.awaits(peer, index)
        other = "n2" if peer == "n1" else "n1"
        assert not fetch.awaits(other, index)  # the same piece, unasked of the other
    (never,) = set(range(3)) - set(asked)
    assert not fetch.awaits("n1", never) and not fetch.awaits("n2", never)
    index, peer = next(iter(asked.items()))
    fetch.arrived(peer, index, data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE], 0.0)
    assert not fetch.awaits(peer, index)  # arrived: a second copy is not awaited


class Answering:
    """The image service as a pull's manifest asks see it: each ask to a holder is
    answered with that holder's scripted answers, through the inbox's filter as the
    service's receive loop applies it."""

    def __init__(self, answers: dict[str, list[Message]]) -> None:
        self.answers = answers
        self.box = Inbox()

    async def send(self, peer: str, message: object) -> bool:
        for answer in self.answers.get(peer, []):
            if self.box.wants(peer, answer):
                self.box.queue.put_nowait((peer, answer))
        return True


async def test_a_holders_late_answers_do_not_answer_for_the_next_holder_asked() -> None:
    """Holder A answers each ask twice (its asks waited for our record, then were all
    served): its second "cannot give" must not fail the ask to holder B."""
    lack = ImageLack("bench:1", "cannot read it here")
    give = TemplateGive("bench:1", b"manifest", ())
    service = Answering({"a": [lack, lack], "b": [give]})
    pull = MeshPull(
        PullStatus("p1", "bench:1"),
        "bench",
        "1",
        store=cast(TemplateStore, None),
        trusted={},
        service=cast(ImageService, service),
        mesh=cast(PeersView, None),
    )
    pull._box = service.box
    with pytest.raises(PullFailed, match="cannot read it here"):
        await pull._ask_template("a")
    assert await pull._ask_template("b") == give


def test_while_fetching_a_file_only_its_sources_answers_about_it_are_taken() -> None:
    data = image(4)
    chunks = chunk_map(data)
    expected = TemplateFile("image", hashlib.sha256(data).digest(), len(data), chunks.digest())
    fetch = ChunkFetch(chunks, config=FetchConfig(per_peer=1, in_flight=1))
    fetch.holds("h1", None)
    (asked,) = fetch.requests(0.0)
    wants = partial(_awaited, fetch, expected)
    assert wants("h1", PiecesHeld(expected.sha256, whole=True))
    assert wants("h1", ImageLack(expected.digest, "gone", asked.index))
    assert wants("h1", PieceGive(expected.sha256, asked.index, b"x"))
    assert not wants("h1", PieceGive(expected.sha256, asked.index + 1, b"x"))  # not asked
    assert not wants("h1", PiecesHeld(b"\0" * 32, whole=True))  # another file
    assert not wants("m", PiecesHeld(expected.sha256, whole=True))  # not a source
    assert not wants("m", ImageLack(expected.digest, "gone"))
    assert not wants("h1", TemplateGive("bench:1", b"x" * 1000, ()))  # nothing asked it
