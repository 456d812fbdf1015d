"""Measurements: bytes on the wire, and small statistics helpers.

Byte accounting. The simulator passes message objects, not bytes, between
nodes, so it must encode to know a packet's size. `codec.encode` costs tens of
microseconds per message, which at 10,000 nodes is a large share of the run.
`ByteMeter` therefore has two modes, and every report says which was used:

- exact (`sample_every=1`): every sent message is counted at its exact encoded
  size, but a message is encoded only the first time it is seen. A frame is
  `[version, type, sender, payload]`, so its size is the sender id's string
  plus the same frame's size with an empty sender (`codec.encode(message, "")`
  less one byte): that second part is cached. Every message object is cached
  by identity (the cache holds the object, so its id cannot be reused while
  cached; the core relays the very gossip objects it received), except
  push-pull messages: each goes to one peer once, and holding 65,536 of them
  would hold their lines, gigabytes in a 10,000-node heal. Gossip items
  (Alive, Suspect, Dead, ...) are also cached by value: the copies the core
  makes (an Alive without its certificate, a signed Dead re-sent to a failed
  member) are equal values, so nearly every item is encoded once per run, and
  a probe carrying items is sized as the probe without them plus their cached
  sizes;
- sampled (`sample_every=k`): every k-th sent message (a deterministic
  counter, not a random draw) is sized as above and counted k times. Packet
  counts stay exact; byte totals are estimates whose error shrinks with the
  number of packets. Push-pull messages are never sampled: at 10,000 nodes a
  digest is most of a second's traffic, and counting one in ten, ten times
  over, would put spikes into the per-second figures that no node sent.
  A `Digest` or `Delta` is sized from its parts (the encoded size of each
  line, cached per line object: the core shares equal lines), exactly as
  `codec.encode` would, without encoding its 10,000 lines every time.

Bytes are counted when a node sends, whatever happens to the packet later:
that is what the node's uplink carries. The engine hands the meter all of one
node's sends of one moment at once (`count_sends`), so the per-node and
per-slot totals are updated once per batch, not once per message. Bytes are
also added to the current time slot (`SLOT` seconds, set by the engine before
each node's output), with the number of live nodes at that moment, so a report
can state the peak over any 1 s window (`peak_rate`: the busiest run of
`SLOTS_PER_SECOND` consecutive slots, per live node), not only averages.
Push-pull messages (`Digest`, `Delta`) are full-state exchanges that a real
transport sends as a stream; they are counted like everything else but not
checked against the packet budget, which applies to datagrams (probes and
gossip).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, cast

from novacron.protocol.codec import encode, pack_struct
from novacron.protocol.messages import (
    Ack,
    Alive,
    Dead,
    Delta,
    Digest,
    IndirectPing,
    Leave,
    MemberDigest,
    Message,
    Nack,
    Ping,
    RecordUpdate,
    Revocations,
    Suspect,
)

_CACHE_LIMIT = 1 << 16  # entries of either size cache before it is cleared
_BY_VALUE = frozenset({Alive, Suspect, Dead, Leave, RecordUpdate, Revocations})  # gossip items
SLOTS_PER_SECOND = 10  # time slots per second: windows slide by a tenth of a second
SLOT = 1.0 / SLOTS_PER_SECOND
STREAM_TYPES = frozenset({"digest", "delta"})  # push-pull: a stream, not bound by the budget


class ByteMeter:
    """Counts packets and (exactly or by sampling) bytes, per sender and per type."""

    def __init__(self, sample_every: int = 1) -> None:
        if sample_every < 1:
            raise ValueError("sample_every must be at least 1")
        self.sample_every = sample_every  # encode one in this many messages
        self.packets = 0  # messages sent, all counted
        self.bytes = 0  # estimated bytes sent (exact when sample_every == 1)
        self.bytes_by_node: Counter[str] = Counter()
        self.bytes_by_type: Counter[str] = Counter()
        self.packets_by_type: Counter[str] = Counter()
        self.max_packet = 0  # largest encoded message seen
        self.max_datagram_message = 0  # largest encoded message other than push-pull
        # Non-push-pull messages encoded larger than `budget`, each held once: gossip
        # items by value, other messages by identity (holding one keeps its id its
        # own). Kept apart from the size caches, which are cleared, so a message sent
        # again after a clear still counts once. There are few (packets are filled to
        # an estimate of the budget); past `_CACHE_LIMIT` the rest are counted, not held.
        self._over_budget: dict[object, Message] = {}
        self._over_budget_unheld = 0
        self.budget = 0  # packet budget to check against (0: do not check)
        self._countdown = sample_every
        self._by_value: dict[Message, int] = {}  # gossip item -> size less the sender's id
        # id of any message sent -> (the message, held so the id stays its own, size
        # less the sender's id): one lookup without hashing the message's fields
        self._by_id: dict[int, tuple[Message, int]] = {}
        self._push_pull = PushPullSizer()
        self.slot_bytes: list[int] = []  # bytes sent in each time slot, from time 0
        self.slot_nodes: list[int] = []  # live nodes when each slot was last written
        self._slot = -1  # index of the slot bytes are being added to
        # The budget is per agent, so the busiest agent's busiest second is the figure to
        # hold against it: per node, the most bytes sent within one whole second (0-1 s,
        # 1-2 s, ...; a sliding window's peak is at most twice that).
        self.node_peak_second: Counter[str] = Counter()
        self._node_second: dict[str, tuple[int, int]] = {}  # node -> (second, bytes in it)

    def at(self, now: float, live: int) -> None:
        """Make `now`'s slot the current one (the engine calls this before counting)."""
        slot = int(now * SLOTS_PER_SECOND)
        if slot != self._slot:
            grow = slot + 1 - len(self.slot_bytes)
            if grow > 0:
                self.slot_bytes.extend([0] * grow)
                self.slot_nodes.extend([live] * grow)
            self._slot = slot
        self.slot_nodes[slot] = live

    def count(self, sender: str, message: Message) -> None:
        """Account for one message `sender` sends."""
        self.count_sends(sender, ((sender, message),))

    def count_sends(self, sender: str, sends: Iterable[tuple[str, Message]]) -> None:
        """Account for the messages `sender` sends at one moment ((destination, message)
        pairs, as in an `Output`): per message by type, per node and slot once."""
        sender_size = _str_size(sender)
        every = self.sample_every
        countdown = self._countdown
        packets_by_type = self.packets_by_type
        bytes_by_type = self.bytes_by_type
        by_id = self._by_id
        sent = total = 0
        for _, message in sends:
            sent += 1
            kind = message.TYPE
            packets_by_type[kind] += 1
            if kind in STREAM_TYPES:
                size = self.size(sender, message)  # never sampled (module docstring)
            else:
                countdown -= 1
                if countdown:
                    continue
                countdown = every
                held = by_id.get(id(message))
                if held is not None:  # the common case, inlined: a relayed gossip item
                    size = (held[1] + sender_size) * every
                else:
                    size = self.size(sender, message) * every
            total += size
            bytes_by_type[kind] += size
        self._countdown = countdown
        self.packets += sent
        if not total:
            return
        self.bytes += total
        self.bytes_by_node[sender] += total
        if self._slot >= 0:
            self.slot_bytes[self._slot] += total
            self._count_second(sender, total)

    def _count_second(self, sender: str, size: int) -> None:
        second = self._slot // SLOTS_PER_SECOND
        current = self._node_second.get(sender)
        sent = size if current is None or current[0] != second else current[1] + size
        self._node_second[sender] = (second, sent)
        if sent > self.node_peak_second[sender]:
            self.node_peak_second[sender] = sent

    def size(self, sender: str, message: Message) -> int:
        """Encoded size of `message` from `sender`, encoding each message once.

        The size depends on the sender only through its id's string (a msgpack
        string's header depends on its length alone), so what is cached is the
        size of the frame with an empty sender, less that empty string's byte.
        """
        held = self._by_id.get(id(message))  # a held id is that message's own
        if held is not None:
            return held[1] + _str_size(sender)
        if type(message) in _BY_VALUE:
            found = self._by_value.get(message)
            fresh = found is None
            rest = self._item_rest(message) if found is None else found
        else:
            fresh = True
            rest = self._measure(message)
        if message.TYPE not in STREAM_TYPES:  # push-pull goes to one peer, once: not held
            if len(self._by_id) >= _CACHE_LIMIT:
                self._by_id.clear()
            self._by_id[id(message)] = (message, rest)
        size = rest + _str_size(sender)
        if fresh:  # first seen: the largest sizes and the budget check
            self.max_packet = max(self.max_packet, size)
            if message.TYPE not in STREAM_TYPES:
                self.max_datagram_message = max(self.max_datagram_message, size)
                if self.budget and size > self.budget:
                    self._note_over_budget(message)
        return size

    def _note_over_budget(self, message: Message) -> None:
        key = message if type(message) in _BY_VALUE else id(message)
        if key in self._over_budget:
            return
        if len(self._over_budget) < _CACHE_LIMIT:
            self._over_budget[key] = message
        else:
            self._over_budget_unheld += 1

    @property
    def over_budget(self) -> int:
        """How many distinct non-push-pull messages were larger than `budget` (past
        `_CACHE_LIMIT` of them, a message sent again may count again)."""
        return len(self._over_budget) + self._over_budget_unheld

    def _item_rest(self, item: Message) -> int:
        """A gossip item's frame size less the sender's id, cached by value."""
        rest = self._by_value.get(item)
        if rest is None:
            if len(self._by_value) >= _CACHE_LIMIT:
                self._by_value.clear()
            rest = self._by_value[item] = len(encode(item, "")) - 1
        return rest

    def _measure(self, message: Message) -> int:
        """Frame size of `message` less the sender's id, computed.

        A probe carrying gossip is sized as the same probe without it plus the
        `gossip` field: its name, the array header and each item as the codec
        tags it, `[type, payload]`, one byte less than the item's own frame
        less the sender's id (a 2- rather than 4-element array, no version).
        The map header stays one byte (a probe has fewer than 16 fields)."""
        if isinstance(message, Digest | Delta):
            return self._push_pull.size("", message) - 1
        if not isinstance(message, Ping | IndirectPing | Ack | Nack) or not message.gossip:
            return len(encode(message, "")) - 1
        gossip = message.gossip
        bare: Message = dataclasses.replace(message, gossip=())
        items = sum(self._item_rest(item) - 1 for item in gossip)
        field = _str_size("gossip") + _container_header(len(gossip)) + items
        return len(encode(bare, "")) - 1 + field

    def peak_rate(self, start: float = 0.0, end: float = math.inf) -> float | None:
        """The most bytes per live node sent in any 1 s window within [start, end).

        Windows are `SLOTS_PER_SECOND` consecutive slots; a range shorter than a
        second is one window scaled to a second. None when nothing was recorded.
        """
        first = max(0, int(start * SLOTS_PER_SECOND + 1e-9))
        last = len(self.slot_bytes)
        if end < math.inf:
            last = min(last, math.ceil(end * SLOTS_PER_SECOND - 1e-9))
        if last <= first:
            return None
        width = min(SLOTS_PER_SECOND, last - first)
        best = 0.0
        window = sum(self.slot_bytes[first : first + width])
        for slot in range(first + width, last + 1):
            nodes = max(1, min(self.slot_nodes[slot - width : slot]))  # the higher rate
            best = max(best, window / nodes)
            if slot < last:
                window += self.slot_bytes[slot] - self.slot_bytes[slot - width]
        return best * SLOTS_PER_SECOND / width

    def mode(self) -> dict[str, Any]:
        """How bytes were measured, for the report."""
        if self.sample_every == 1:
            return {"mode": "exact", "every": 1}
        return {"mode": "sampled", "every": self.sample_every}


class PushPullSizer:
    """The encoded size of a `Digest` or a `Delta`, from the sizes of its parts.

    `codec.encode` writes `[version, type, sender, {field: value}]`, leaving
    out fields at their default. So the size is that of the same message with
    no lines and no records, plus, for each of the two when present, its key,
    its container header and its entries: each line's own encoding (cached
    per line object: the core shares equal lines), and each record entry's
    string and integer (a digest) or each signed record's encoding (a delta).
    """

    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}  # id of a line -> its encoded size
        self._held: list[MemberDigest] = []  # those lines, so their ids stay theirs

    def _line_size(self, line: MemberDigest) -> int:
        if len(self._held) >= _LINE_CACHE_LIMIT:
            self._sizes.clear()
            self._held.clear()
        size = self._sizes[id(line)] = len(pack_struct(line))
        self._held.append(line)
        return size

    def size(self, sender: str, message: Digest | Delta) -> int:
        if isinstance(message, Digest):
            bare: Digest | Delta = dataclasses.replace(message, members=(), records={})
        else:
            bare = dataclasses.replace(message, members=(), records=())
        total = len(encode(bare, sender))  # every other field as it is
        if message.members:
            total += _str_size("members") + _container_header(len(message.members))
            total += self._lines_size(message.members)
        if message.records:
            total += _str_size("records") + _container_header(len(message.records))
            if isinstance(message, Digest):
                total += _records_size(message.records)
            else:
                total += sum(len(pack_struct(record)) for record in message.records)
        return total

    def _lines_size(self, lines: tuple[MemberDigest, ...]) -> int:
        # A cached id is a held line's, so it cannot be another line's: one
        # C-level pass looks them all up; the few misses are encoded.
        found = list(map(self._sizes.get, map(id, lines)))
        if None in found:
            found = [
                self._line_size(line) if size is None else size
                for line, size in zip(lines, found, strict=True)
            ]
        return sum(cast(list[int], found))


def _records_size(records: dict[str, int]) -> int:
    """Bytes of a digest's record versions (keys and values, no header).

    The usual case in C-level passes: ASCII ids shorter than 32 bytes (a one-byte
    string header each) and versions below 128 (one byte each); anything else
    entry by entry."""
    keys_short = max(map(len, records)) < 32 and "".join(records).isascii()
    values = records.values()
    values_small = min(values) >= 0 and max(values) < 128
    if keys_short and values_small:
        return sum(map(len, records)) + 2 * len(records)
    if keys_short:
        return sum(map(len, records)) + len(records) + sum(map(_int_size, values))
    return sum(_str_size(k) + _int_size(v) for k, v in records.items())


_LINE_CACHE_LIMIT = 200_000  # push-pull lines whose size is remembered (the shared ones)


def _container_header(length: int) -> int:
    """Bytes of a msgpack array or map header for `length` entries."""
    return 1 if length < 16 else 3 if length < 65536 else 5


def _str_size(text: str) -> int:
    """Bytes of a msgpack string (header included)."""
    n = len(text.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def _int_size(value: int) -> int:
    """Bytes of a msgpack integer (the smallest form that holds it)."""
    if -32 <= value < 128:
        return 1
    if value >= 0:
        limits = ((2, 1 << 8), (3, 1 << 16), (5, 1 << 32))
        return next((size for size, limit in limits if value < limit), 9)
    limits = ((2, 1 << 7), (3, 1 << 15), (5, 1 << 31))
    return next((size for size, limit in limits if -value <= limit), 9)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def rounded(value: float | None, digits: int = 4) -> float | None:
    """Round for the JSON report so tiny float noise never shows up in diffs."""
    return None if value is None else round(value, digits)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """min / p50 / p99 / max / mean of a list, rounded for reports."""
    if not values:
        return {"n": 0, "min": None, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "min": rounded(min(values)),
        "p50": rounded(percentile(values, 0.5)),
        "p99": rounded(percentile(values, 0.99)),
        "max": rounded(max(values)),
        "mean": rounded(sum(values) / len(values)),
    }
