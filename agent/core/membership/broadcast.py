"""The retransmit-limited broadcast queue: what to piggyback on the next packet.

SWIM disseminates by infection: every member that learns something news-worthy
queues it and hands it to a few random members on each packet it sends, a
bounded number of times (`retransmit_mult * ceil(log10(N + 1))`), which is
enough for it to reach everyone with high probability. (memberlist `queue.go`.)

Rules, after memberlist's `TransmitLimitedQueue`, with three differences:

- the next packet takes the least-transmitted items first and, among equals,
  the *oldest* first (memberlist: newest), as many as fit in the byte budget.
  Under a rate limit the queue can back up; newest-first then starves the
  oldest untransmitted items for as long as new ones keep coming, so the
  slowest item's delay, the tail, grows without bound. Oldest-first bounds it;
- items `urgent` when queued (news about this node itself: its refutations,
  which no one else can send) go before all others of their transmit count,
  and always start afresh;
- each taken item counts one transmission; at the limit it is dropped;
- queuing an item under a key (one per member, one per record owner) replaces
  whatever was queued under that key: newer news about a node makes older news
  about it worthless (Alive inc 5 makes Suspect inc 4 moot). A replacement of
  the *same kind* (a newer record for a record, an Alive for an Alive, one more
  accuser's Suspect for a Suspect) continues its predecessor's spread, keeping
  its transmit count; a change of kind (Suspect to Alive: a refutation) starts
  afresh. Otherwise a member that re-publishes as fast as it can would stay at
  zero transmissions and ride at the head of every packet in the mesh.

News that a member is alive may be queued as the member's table entry
(`Member`) rather than as an `Alive`: it stands for the Alive it was learnt
from, without certificate, and becomes one when first sent. A node that learns
thousands of members back from one push-pull answer (a healed partition) then
holds no message per member for the many it never gets to send.

Sizes are cheap estimates of the msgpack encoding (no encoding on the hot
path); `estimate_size` errs on the large side by a few bytes.
"""

from __future__ import annotations

import bisect
import math
import operator
from typing import cast

from novacron.protocol.messages import Alive, Dead, Gossip, Leave, Revocations, Suspect

from .members import Member

BroadcastKey = str | tuple[str, str]
"""A member's own id for membership news (the id the table holds: no key object
per item), ("record", node id) for records, ("revocations", "") for the list."""

MIN_ITEM_SIZE = 32  # below this much free budget no gossip item can fit
MAX_MISFITS = 8  # items too large for what is left of a packet before we stop looking

# Per-type constant part of the encoding: tag, map header, field names, small
# ints (incarnations and versions up to 2**32 fit; larger ones cost 4 bytes more).
_ALIVE_OVERHEAD = 80
_SUSPECT_OVERHEAD = 56
_LEAVE_OVERHEAD = 48
_RECORD_OVERHEAD = 70
_REVOCATIONS_OVERHEAD = 32


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one item is sent in a cluster of `n` members."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


Queued = Gossip | Member
"""What the queue holds: a gossip item, or a member standing for its Alive."""


def alive_of(member: Member) -> Alive:
    """The Alive a queued member stands for (passed on without certificate)."""
    return Alive(member.node_id, member.incarnation, member.address, b"", member.proof)


def estimate_size(item: Queued) -> int:
    """Bytes this item adds to a packet, estimated from its variable-length parts."""
    if isinstance(item, Member):
        return _ALIVE_OVERHEAD + len(item.node_id) + len(item.address) + len(item.proof)
    if isinstance(item, Alive):
        variable = len(item.address) + len(item.certificate) + len(item.signature)
        return _ALIVE_OVERHEAD + len(item.node_id) + variable
    if isinstance(item, Suspect | Dead):
        return _SUSPECT_OVERHEAD + len(item.node_id) + len(item.by) + len(item.signature)
    if isinstance(item, Leave):
        return _LEAVE_OVERHEAD + len(item.node_id) + len(item.signature)
    if isinstance(item, Revocations):
        return _REVOCATIONS_OVERHEAD + len(item.crl)
    signed = item.signed
    return _RECORD_OVERHEAD + len(signed.node_id) + len(signed.record) + len(signed.signature)


class _Item:
    """One queued gossip item and how often it went out."""

    __slots__ = ("key", "message", "seq", "size", "transmits")

    def __init__(self, key: BroadcastKey, message: Queued, seq: int, size: int) -> None:
        self.key = key  # what it is about; a newer item with the same key replaces it
        self.message = message  # the gossip item, sent as is (a Member: its Alive)
        self.seq = seq  # queue order: higher is newer
        self.size = size  # estimated encoded bytes
        self.transmits = 0  # how many packets carried it so far


_seq = operator.attrgetter("seq")


def _kind(message: Queued) -> type:
    """What a replacement must match to keep its predecessor's transmit count."""
    return Alive if type(message) is Member else type(message)


class BroadcastQueue:
    """Gossip items waiting to be piggybacked, bucketed by transmit count.

    `_buckets[t]` holds the items sent `t` times in ascending sequence order,
    so the next packet scans bucket 0 oldest-first, then bucket 1, and so on.
    Urgent items get negative sequence numbers (the most recent the lowest),
    so they sort first. Keeping each bucket sorted costs a binary search and a
    memmove per promotion; no sorting on the hot path. An item is held by its
    bucket and by its key, nothing else: a healing node queues news of every
    member that came back, thousands of items at once.
    """

    __slots__ = ("_buckets", "_by_key", "_next_seq", "_next_urgent")

    def __init__(self) -> None:
        self._buckets: list[list[_Item]] = []  # index = transmits so far; sorted by seq
        self._by_key: dict[BroadcastKey, _Item] = {}  # the one live item per key
        self._next_seq = 1  # sequence number of the next queued item
        self._next_urgent = -1  # sequence number of the next urgent item (decreasing)

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def queue(self, key: BroadcastKey, message: Queued, *, urgent: bool = False) -> None:
        """Queue `message`, replacing any older item about the same key (see the module
        docstring for what a replacement of the same kind keeps)."""
        transmits = 0
        old = self._by_key.get(key)
        if old is not None:
            self._unlink(old)
            if _kind(old.message) is _kind(message) and not urgent:
                transmits = old.transmits
        if urgent:
            seq, self._next_urgent = self._next_urgent, self._next_urgent - 1
        else:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
        item = _Item(key, message, seq, estimate_size(message))
        item.transmits = transmits
        self._by_key[key] = item
        bucket = self._bucket(transmits)
        if urgent:
            bucket.insert(0, item)  # the lowest sequence number of all
        elif not bucket or bucket[-1].seq < seq:
            bucket.append(item)  # the newest ordinary item: appending keeps the order
        else:
            bisect.insort(bucket, item, key=_seq)

    def drop(self, key: BroadcastKey) -> None:
        """Forget the item about `key`, if one is queued (a claim we took back)."""
        item = self._by_key.get(key)
        if item is not None:
            self._unlink(item)

    def take(self, budget: int, limit: int) -> list[Gossip]:
        """Items for one packet of `budget` bytes, counting one transmission each.

        Items already sent `limit` times are dropped first. An item larger than
        the whole budget still goes out, alone, so a big record is never stuck.
        """
        return self.take_sized(budget, limit)[0]

    def take_sized(self, budget: int, limit: int) -> tuple[list[Gossip], int]:
        """`take`, with the estimated bytes of what it took."""
        buckets = self._buckets
        if len(buckets) > limit:
            self._drop_over(limit)
        chosen = self._choose(budget)
        size = 0
        for item in chosen:
            if type(item.message) is Member:
                item.message = alive_of(item.message)  # one object for all its sends
            size += item.size
            bucket = buckets[item.transmits]
            del bucket[bisect.bisect_left(bucket, item.seq, key=_seq)]
            transmits = item.transmits = item.transmits + 1
            if transmits >= limit:
                del self._by_key[item.key]
            elif transmits < len(buckets):
                bisect.insort(buckets[transmits], item, key=_seq)
            else:
                buckets.append([item])  # the first item sent this often
        return [cast(Gossip, item.message) for item in chosen], size

    def _choose(self, budget: int) -> list[_Item]:
        chosen: list[_Item] = []
        free = budget
        misfits = 0
        for bucket in self._buckets:
            for item in bucket:
                if item.size <= free:
                    chosen.append(item)
                    free -= item.size
                    if free < MIN_ITEM_SIZE:
                        return chosen
                elif not chosen:
                    return [item]  # oversized: goes out on a packet of its own
                else:
                    misfits += 1
                    if misfits > MAX_MISFITS:
                        return chosen  # the packet is as good as full: stop looking
        return chosen

    def _unlink(self, item: _Item) -> None:
        bucket = self._buckets[item.transmits]
        del bucket[bisect.bisect_left(bucket, item.seq, key=_seq)]
        del self._by_key[item.key]

    def _drop_over(self, limit: int) -> None:
        """Forget items that reached a (possibly lowered) retransmit limit."""
        while len(self._buckets) > max(limit, 0):
            for item in self._buckets.pop():
                del self._by_key[item.key]

    def _bucket(self, transmits: int) -> list[_Item]:
        while len(self._buckets) <= transmits:
            self._buckets.append([])
        return self._buckets[transmits]

    def items(self) -> list[tuple[Gossip, int]]:
        """Queued items with their transmit counts (for tests and diagnostics)."""
        return [
            (alive_of(m) if isinstance(m := item.message, Member) else m, item.transmits)
            for item in self._by_key.values()
        ]
