"""`MembershipNode`: the public entry point of the membership and state-gossip core.

One instance per host. It composes the pieces, each in its own module:
`members` (the table), `transitions` (the rules), `suspicion` (timeouts),
`awareness` (Lifeguard health), `broadcast` (the retransmit queue), `probe`
(SWIM bookkeeping), `records` (signed records), `pushpull` (anti-entropy).

Sans-IO: the driver calls `receive(sender, message, now)` for every message,
`tick(now)` whenever `next_deadline()` has come, and the lifecycle methods
(`join`, `leave`, `update_record`); each returns an `Output` of sends (by
destination node id) and events. Nothing here reads a clock, sleeps, or draws
randomness except from the injected `random.Random`.

How gossip travels (a design choice the driver should know):

- *Piggybacking*: every probe message (`Ping`, `IndirectPing`, `Ack`, `Nack`)
  carries queued gossip items in its `gossip` field, within `packet_budget`.
- *Gossip rounds*: every `gossip_interval`, when the queue is not empty, the
  node picks `gossip_nodes` random members and sends each a packet's worth of
  items *as individual messages* (`Alive`, `Suspect`, `Dead`, `Leave`,
  `RecordUpdate`), consecutively in `Output.sends`. No carrier message, so a
  gossip round never triggers replies; a driver may coalesce consecutive sends
  to one destination into a single datagram.

What is re-gossiped: every accepted claim heard by gossip (Alive, Suspect,
Dead, Leave, a newer record) is queued again, which is how infection-style
dissemination works. What a push-pull `Delta` teaches is re-gossiped only when
it *changes* something we knew (a refutation, a failure, a newer version of a
record we had): a node catching up on a whole cluster must not flood it with
thousands of items everyone already has. The handlers' `announce_new` flag
carries that choice.

Who may talk to us: a sender that is not a member (in any state) nor a join
seed is admitted only for what introduces members: `Ping` and `Digest` (a
newcomer must be answered before anyone gossiped about it), `Alive` claims
(how members are learnt at all), its own record (held until it is a
member) and certificate requests and answers (certificates are public).
Anything else from an unknown sender (Suspect, Dead, Leave, others'
records, IndirectPing, Ack, Nack, Delta), on its own or piggybacked, is
dropped and counted in `stats.messages_from_unknown`.

Whom we believe (the driver authenticated the sender; the claims it relays
are another matter): an Alive or a Leave only if signed by the node it is
about, a Suspect or a Dead only if signed by its accuser, within the
accuser's budget and at an incarnation the accused signed (`claims.py`,
`accusations.py`). A node we never heard of is checked against its
certificate, which push-pull lines carry and which gossip does not: we ask
whoever told us (`CertificateRequest`), once. Records must be signed by their
owner and within `RecordBounds`. Every refusal is a counter in `stats`.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from novacron.protocol.claims import line_claim
from novacron.protocol.messages import (
    MAX_CERTIFICATES,
    MAX_COUNTER,
    Ack,
    Alive,
    CertificateRequest,
    Certificates,
    Dead,
    Delta,
    Digest,
    Gossip,
    IndirectPing,
    Leave,
    MemberDigest,
    MemberState,
    Message,
    Nack,
    NodeRecord,
    Ping,
    RecordUpdate,
    Revocations,
    SignedRecord,
    Suspect,
)

from ..events import (
    IdentityClash,
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRevoked,
    MemberSuspected,
    Output,
    ReachedIndirectly,
    RecordRejected,
    RecordUpdated,
)
from .accusations import AccusationBudget
from .awareness import Awareness
from .bandwidth import GossipBudget
from .broadcast import (
    MIN_ITEM_SIZE,
    BroadcastKey,
    BroadcastQueue,
    estimate_size,
    retransmit_limit,
)
from .config import MembershipConfig
from .heal import HealPulls, sweep_order
from .joining import JoinAsks
from .keyring import Keyring
from .members import Member, MemberInfo, MemberTable, ProbeOrder
from .probe import PendingProbe, ProbeTracker, RelayedProbe
from .pushpull import (
    LineCache,
    build_deltas,
    build_digest,
    deltas_size,
    digest_size,
    only,
    plan_parts,
    push_pull_scale,
)
from .records import RecordStore, RecordVerdict, admit
from .snapshot import ClusterSnapshot
from .stats import NodeStats
from .suspicion import Suspicion, suspicion_timeout
from .transitions import Verdict, on_alive, on_dead, on_leave, on_suspect, supersedes

__all__ = [
    "Keyring",
    "MemberInfo",
    "MembershipNode",
    "NodeStats",
]

INF = float("inf")
# Module constants: reading an enum member through its class costs a descriptor call.
ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
PROBE_OVERHEAD = 64  # bytes of a probe message besides its piggybacked gossip
_LIVE = (ALIVE, SUSPECT)  # states worth probing

Handler = Callable[["MembershipNode", str, Any, float, Output], None]


class MembershipNode:
    """SWIM + Lifeguard membership, gossip dissemination and signed-record state."""

    __slots__ = (
        "_accusations",
        "_announce",
        "_answered",
        "_asked_rejoining",
        "_asked_reply",
        "_awaiting",
        "_awareness",
        "_born",
        "_budget",
        "_corrected",
        "_cut_off_seen",
        "_digest_lines",
        "_exchange_answered",
        "_forwarded",
        "_heal_pulls",
        "_heard",
        "_held_records",
        "_join_asks",
        "_keyring",
        "_last_push_pull",
        "_left",
        "_line_cache",
        "_members",
        "_moves",
        "_next_announce_at",
        "_next_gossip_at",
        "_next_part_at",
        "_next_probe_at",
        "_next_push_pull_at",
        "_next_recheck_at",
        "_next_reconnect_at",
        "_own_record",
        "_part_answered",
        "_parts",
        "_parts_asked",
        "_parts_to",
        "_probe_order",
        "_probes",
        "_pull_from",
        "_pulled_by",
        "_pulls_due_at",
        "_queue",
        "_recheck",
        "_records",
        "_refuted_clone_at",
        "_rejoining_until",
        "_rng",
        "_seeds",
        "_suspicion_heap",
        "_suspicions",
        "_told",
        "_undamped_left",
        "_version_floor",
        "address",
        "config",
        "node_id",
        "stats",
    )

    def __init__(
        self,
        node_id: str,
        *,
        address: str,
        config: MembershipConfig,
        rng: random.Random,
        keyring: Keyring,
        now: float,
        line_cache: LineCache | None = None,
    ) -> None:
        """A node that knows only itself; `join` introduces it to seeds. `line_cache`:
        push-pull lines shared with the other nodes of one process (a simulator's)."""
        self._setup(
            node_id,
            address,
            config,
            rng,
            keyring,
            MemberTable(),
            RecordStore(),
            {},
            line_cache if line_cache is not None else LineCache(),
            now,
        )
        self._members.put(self._own_member(1, now))
        self._start_timers(now)

    @classmethod
    def from_snapshot(
        cls,
        node_id: str,
        snapshot: ClusterSnapshot,
        *,
        address: str,
        config: MembershipConfig,
        rng: random.Random,
        keyring: Keyring,
        now: float,
    ) -> MembershipNode:
        """A node that starts converged, sharing `snapshot` copy-on-write."""
        node = cls.__new__(cls)
        members = MemberTable(
            snapshot.members,
            snapshot.node_ids,
            snapshot.state_counts,
            snapshot.dead_ids,
            base_sorted=True,  # a snapshot's ids are sorted
        )
        records = RecordStore(snapshot.signed_records, snapshot.records)
        node._setup(
            node_id,
            address,
            config,
            rng,
            keyring,
            members,
            records,
            snapshot.member_digests,
            snapshot.line_cache,
            now,
        )
        me = node._members.get(node_id)
        if me is None or me.address != address:
            incarnation = me.incarnation if me is not None else 1
            node._members.put(node._own_member(incarnation, now))
        node._own_record = snapshot.records.get(node_id)
        node._start_timers(now)
        return node

    def _setup(
        self,
        node_id: str,
        address: str,
        config: MembershipConfig,
        rng: random.Random,
        keyring: Keyring,
        members: MemberTable,
        records: RecordStore,
        digest_lines: Mapping[str, MemberDigest],
        line_cache: LineCache,
        now: float,
    ) -> None:
        self.node_id = node_id  # our id: the key of everything we own
        self.address = address  # where others reach us (announced in Alive)
        self.config = config  # protocol tunables
        self.stats = NodeStats()  # counters
        self._rng = rng  # the only source of randomness
        self._keyring = keyring  # signs what we say, checks what others say
        self._members = members  # who we know (copy-on-write over a snapshot's base)
        self._records = records  # verified records (copy-on-write likewise)
        self._digest_lines = digest_lines  # the snapshot's shared push-pull lines
        self._line_cache = line_cache  # lines of members changed since (shared likewise)
        self._queue = BroadcastQueue()  # gossip waiting to go out
        burst = config.gossip_nodes * config.packet_budget  # one full gossip round
        self._budget = GossipBudget(config.gossip_rate, burst, now)  # bytes of gossip we may send
        self._awareness = Awareness(config.awareness_max_multiplier)  # Lifeguard health
        self._suspicions: dict[str, Suspicion] = {}  # open suspicions by member id
        self._suspicion_heap: list[tuple[float, str]] = []  # (deadline, id), lazily pruned
        self._probes = ProbeTracker()  # our probe and the probes we relay
        self._probe_order = ProbeOrder()  # shuffled round-robin over members
        self._heard: dict[str, float] = {}  # id -> last direct protocol message from it
        self._seeds: dict[str, str] = {}  # join seeds: id -> address (admitted before known)
        self._join_asks = JoinAsks(JOIN_ANSWER_WAIT)  # which seed is asked for the mesh
        self._own_record: NodeRecord | None = None  # our record's contents, for re-issue
        self._version_floor = 0  # highest version of our record seen from an older life
        self._left = False  # we left gracefully: no probing, no refuting
        self._born = now  # when this life began: a clone newer than this one must yield
        rate = config.accusations_per_probe / config.probe_interval
        self._accusations = AccusationBudget(rate, config.accusation_burst)  # per accuser
        self._refuted_clone_at = 0  # incarnation we set against a self-claim from elsewhere
        self._moves: dict[str, tuple[str, float]] = {}  # id -> (address it left, when)
        self._held_records: dict[str, SignedRecord] = {}  # records that came before their owner
        self._forwarded: dict[str, int] = {}  # id -> incarnation whose second address we passed on
        # id -> (its Alive, when we last asked for its certificate, whom, how often)
        self._awaiting: dict[str, tuple[Alive, float, str, int]] = {}
        self._told: dict[str, float] = {}  # failed member -> when we last told it so
        self._corrected: dict[str, float] = {}  # id -> when it may next get a stale claim corrected
        self._answered: dict[str, float] = {}  # id -> when it may next get our Alive or Leave
        self._asked_reply: dict[str, float] = {}  # id -> when we sent it a digest asking one
        self._pulled_by: dict[str, float] = {}  # id -> when we last answered its pull
        # id -> when its allowance of answered parts, or whole exchanges, is next spent
        self._part_answered: dict[str, float] = {}
        self._exchange_answered: dict[str, float] = {}
        self._pulls_due_at = -INF  # when our allowance of answered pulls is next spent
        self._last_push_pull = -INF  # when we last sent a push-pull digest
        self._pull_from: str | None = None  # peer our next push-pull goes to, if chosen
        self._parts: list[tuple[str, str]] = []  # id ranges of the exchange still to send
        self._parts_to = ""  # the member they go to
        self._next_part_at = INF  # when the next of them goes
        # (member, first, end) -> when we sent it that part of the exchange under way
        self._parts_asked: dict[tuple[str, str, str], float] = {}
        self._heal_pulls = HealPulls()  # push-pulls with members that came back
        self._recheck: list[str] = []  # failed members to try again, the next one last
        self._next_recheck_at = INF  # when the next of them is tried
        self._cut_off_seen = -INF  # when we last learnt we had been cut off (`_rejoin`)
        self._rejoining_until = -INF  # until when we take others' view of whom we failed
        self._undamped_left = 0  # heal pulls this rejoining may still plan undamped
        self._asked_rejoining: dict[str, float] = {}  # id -> when we sent it such a digest
        self._announce: list[str] = []  # members still to be sent our new life's Alive
        self._next_announce_at = INF  # when the next batch of them goes

    def _own_member(self, incarnation: int, now: float) -> Member:
        """Our own table entry, with our signed Alive as its proof."""
        proof = self._keyring.sign_claim(Alive(self.node_id, incarnation, self.address))
        return Member(self.node_id, self.address, incarnation, ALIVE, now, proof)

    def _start_timers(self, now: float) -> None:
        """Stagger the periodic work so a fleet started together does not beat in step."""
        cfg, rng = self.config, self._rng
        self._next_probe_at = now + rng.random() * cfg.probe_interval
        self._next_gossip_at = now + rng.random() * cfg.gossip_interval
        push_pull = push_pull_scale(cfg.push_pull_interval, len(self._members))
        self._next_push_pull_at = now + rng.random() * push_pull
        self._next_reconnect_at = now + rng.random() * cfg.reconnect_interval

    # --- public API -------------------------------------------------------------

    def join(self, peers: Iterable[tuple[str, str]], now: float) -> Output:
        """Join through seed `(node id, address)` pairs: one is asked for the mesh by
        push-pull, the others are introduced to us (`joining.py`)."""
        out = Output()
        me = self._me()
        self._queue.queue(_member_key(self.node_id), self._own_alive(me), urgent=True)
        for node_id, address in peers:
            if node_id == self.node_id:
                continue
            self._seeds[node_id] = address
            if self._join_asks.ask(node_id, now):
                self._ask_for_mesh(node_id, now, out)
            else:  # a part holding our id only: how it holds us, not the mesh
                part = self._digest(now, reply=True, within=only(me.node_id))
                self._send_digest(node_id, part, now, out)
        return out

    def _ask_for_mesh(self, peer: str, now: float, out: Output) -> None:
        """A whole exchange with `peer`: our digest, its answer and its digest."""
        self._remember(self._asked_reply, peer, now)
        self._send_digest(peer, self._digest(now, reply=True), now, out)

    def _pull(self, peer: str, now: float, out: Output) -> None:
        """Ask `peer` for what it holds newer than we do (its answer only, not its
        digest), paid from the gossip budget: gossip waits while the answer brings
        what it would have."""
        digest = self._digest(now, reply=False)
        self._budget.spend(digest_size(digest))
        self._send_digest(peer, digest, now, out)

    def _tick_join(self, now: float, out: Output) -> None:
        """The seed asked for the mesh did not answer in time: ask the next one. Or the
        mesh came a moment ago: pull what came since from another member."""
        seed = self._join_asks.next_seed(now)
        if seed is not None:
            self._ask_for_mesh(seed, now, out)
        answered_by = self._join_asks.catch_up(now)
        if answered_by is None:
            return
        other = self._push_pull_partner(besides=answered_by)
        if other is not None:
            self.stats.catch_up_pulls_sent += 1
            self._pull(other.node_id, now, out)
        self._plan_announce(answered_by, now)

    def _plan_announce(self, seed: str, now: float) -> None:
        """Once a life, as we catch up: every live member but the seed that sent us the
        mesh is to be sent our Alive by us (`_tick_announce`). Gossip reaches nearly every
        member, not surely every one (each hears an item about 16 times at 1,000 members,
        so about one in e^16 hears it not at all): a host back from a restart stays failed
        for whom gossip missed, until a probe or exchange comes round, minutes at scale."""
        self._announce = [m.node_id for m in self._members if self._is_other(seed, m)]
        self._rng.shuffle(self._announce)
        self._next_announce_at = now

    def _tick_announce(self, now: float, out: Output) -> None:
        """The next `ANNOUNCE_BATCH` of the members to be told of our life, one gossip
        interval after the last: the Alive alone, without our certificate (whoever lacks it
        asks), outside the gossip budget (once a life: the budget would owe it for seconds,
        holding back the gossip a newcomer has to pass on)."""
        alive = self._own_alive(self._me())
        for _ in range(min(ANNOUNCE_BATCH, len(self._announce))):
            member = self._live_member(self._announce.pop())
            if member is not None:
                self.stats.announced += 1
                out.sends.append((member.node_id, alive))
        self._next_announce_at = now + self.config.gossip_interval if self._announce else INF

    def receive(self, sender: str, message: Message, now: float) -> Output:
        """Handle one message from `sender` (a node id)."""
        out = Output()
        self.stats.messages_received += 1
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self.stats.messages_unhandled += 1
        elif not sender or sender == self.node_id:
            self.stats.messages_invalid += 1
        elif not self._admits(sender, message):
            self.stats.messages_from_unknown += 1
        else:
            handler(self, sender, message, now, out)
            self._tell_if_failed(sender, now, out)
        return out

    def tick(self, now: float) -> Output:
        """Do whatever is due at `now`; see `next_deadline`."""
        out = Output()
        self._tick_probe(now, out)
        self._tick_relays(now, out)
        self._tick_suspicions(now, out)
        if self._awaiting:
            self._tick_certificates(now, out)
        if not self._left:
            if now >= self._join_asks.due:
                self._tick_join(now, out)
            self._tick_push_pull(now, out)
            if now >= self._heal_pulls.due:
                self._tick_heal_pull(now, out)
            self._tick_reconnect(now, out)
            self._tick_recheck(now, out)
            if now >= self._next_announce_at:
                self._tick_announce(now, out)
        if now >= self._next_gossip_at and self._queue:
            self._gossip_round(now, out)
            self._next_gossip_at = now + self.config.gossip_interval
        return out

    def next_deadline(self) -> float:
        """The earliest time at which `tick` has something to do (inf: nothing)."""
        deadline = INF
        pending = self._probes.pending
        if pending is not None:
            deadline = pending.deadline if pending.indirect_sent else pending.timeout_at
        # Comparisons rather than min(): the engine asks after every message.
        if not self._left:
            if self._next_probe_at < deadline:
                deadline = self._next_probe_at
            if self._next_push_pull_at < deadline:
                deadline = self._next_push_pull_at
            if self._next_part_at < deadline:
                deadline = self._next_part_at
            if self._next_reconnect_at < deadline:
                deadline = self._next_reconnect_at
            if self._heal_pulls.due < deadline:
                deadline = self._heal_pulls.due
            if self._recheck and self._next_recheck_at < deadline:
                deadline = self._next_recheck_at
            if self._join_asks.due < deadline:
                deadline = self._join_asks.due
            if self._next_announce_at < deadline:
                deadline = self._next_announce_at
        if self._queue and self._next_gossip_at < deadline:
            deadline = self._next_gossip_at
        if self._suspicion_heap and self._suspicion_heap[0][0] < deadline:
            deadline = self._suspicion_heap[0][0]
        if self._awaiting:
            deadline = min(deadline, next(iter(self._awaiting.values()))[1] + CERTIFICATE_WAIT)
        if self._probes.relays:
            deadline = min(deadline, self._probes.next_relay_deadline())
        return deadline

    def leave(self, now: float) -> Output:
        """Leave on purpose: gossip a Leave (starting now) and stop probing."""
        out = Output()
        if self._left:
            return out
        self._left = True
        self._probes.pending = None
        leave = self._say_leave(self._me().incarnation, now)
        self._gossip_round(now, out)
        # A seed we asked to join has not answered yet, so gossip cannot reach it,
        # yet it may already hold us alive (it took our Alive from the join).
        out.sends.extend((seed, leave) for seed in self._seeds if seed not in self._members)
        self._next_gossip_at = now + self.config.gossip_interval
        return out

    def _say_leave(self, incarnation: int, since: float) -> Leave:
        """Our Leave at `incarnation`, signed, held as our own line (left since `since`)
        and queued for gossip first."""
        leave = self._sign(Leave(self.node_id, incarnation))
        me = dataclasses.replace(
            self._me(), incarnation=incarnation, state=LEFT, state_since=since,
            proof=leave.signature,
        )  # fmt: skip
        self._members.put(me)
        self._queue.queue(_member_key(self.node_id), leave, urgent=True)
        return leave

    def update_record(self, record: NodeRecord, now: float) -> Output:
        """Publish new contents for our record: next version, signed, stored, gossiped."""
        if record.node_id != self.node_id:
            raise ValueError(f"{self.node_id} cannot publish a record of {record.node_id}")
        version = max(self._records.version(self.node_id), self._version_floor) + 1
        out = Output()
        self._publish(dataclasses.replace(record, version=version), out)
        return out

    def adopt_revocations(self, data: bytes, now: float) -> Output:
        """A revocation list from the operator (a file, the API): adopt it if newer, spread
        it, and expel whom it revokes (see `_handle_revocations`)."""
        out = Output()
        self._handle_revocations(Revocations(data), now, out)
        return out

    def members(self) -> list[MemberInfo]:
        """Every member this node knows, in any state (O(N): not for hot paths)."""
        return [self._info(m) for m in self._members]

    def member(self, node_id: str) -> MemberInfo | None:
        """What this node knows about one member, or None."""
        member = self._members.get(node_id)
        return self._info(member) if member is not None else None

    def address_of(self, node_id: str) -> str | None:
        """Where to send to `node_id` (a member's or a join seed's address), O(1)."""
        member = self._members.get(node_id)
        if member is not None and member.address:
            return member.address
        return self._seeds.get(node_id)

    def records(self) -> Mapping[str, NodeRecord]:
        """Verified records by owner id (our own included): a live read-only view."""
        return self._records.view()

    def record_ages(self, now: float) -> dict[str, float]:
        """Seconds since the record we hold of each other member arrived here: how stale
        this host's view of it may be (owners publish when their contents change, which a
        host's load does within an inventory refresh or two)."""
        return {owner: max(0.0, now - at) for owner, at in self._records.received().items()}

    def record_version(self, node_id: str) -> int:
        """The version of `node_id`'s record we hold, 0 if none."""
        return self._records.version(node_id)

    @property
    def incarnation(self) -> int:
        """Our own incarnation number."""
        return self._me().incarnation

    @property
    def awareness(self) -> int:
        """Our Lifeguard health score (0 = healthy)."""
        return self._awareness.score

    @property
    def has_left(self) -> bool:
        """Whether `leave` was called."""
        return self._left

    def pending_gossip(self) -> int:
        """How many gossip items wait in the broadcast queue."""
        return len(self._queue)

    def private_entries(self) -> int:
        """Member and record entries held privately (not shared with a snapshot)."""
        return self._members.overlay_size() + self._records.overlay_size()

    # --- admission ----------------------------------------------------------------

    def _admits(self, sender: str, message: Message) -> bool:
        """Whether a message from `sender` may be processed (see module docstring)."""
        if sender in self._members or sender in self._seeds:
            return True
        if isinstance(message, RecordUpdate):
            return message.signed.node_id == sender  # its own: held until it is a member
        # Certificates are public and asked for by whoever heard of a node from
        # us, newcomers we do not know yet included; only answers to our own
        # requests are checked.
        return isinstance(message, Ping | Digest | Alive | CertificateRequest | Certificates)

    # --- failure detection: our probes ----------------------------------------------

    def _tick_probe(self, now: float, out: Output) -> None:
        pending = self._probes.pending
        if pending is not None and not pending.indirect_sent and now >= pending.timeout_at:
            self._send_indirect(pending, now, out)
        if pending is not None and now >= pending.deadline:
            self._probes.pending = None
            self._probe_failed(pending, now, out)
        if not self._left and now >= self._next_probe_at:
            if self._probes.pending is None:
                self._start_probe(now, out)
            self._next_probe_at = now + self._scaled(self.config.probe_interval)

    def _start_probe(self, now: float, out: Output) -> None:
        attempt, target = 1, None
        retry = self._probes.retry
        self._probes.retry = None
        if retry is not None:
            target = self._live_member(retry)
            attempt = 2
        if target is None:
            attempt = 1
            check = self._probes.next_check()
            target = self._live_member(check) if check is not None else None
        if target is None:
            target = self._next_probe_target()
        if target is None:
            return
        seq = self._probes.next_seq()
        self._probes.pending = PendingProbe(
            target=target.node_id,
            incarnation=target.incarnation,
            seq=seq,
            started=now,
            timeout_at=now + self._scaled(self.config.probe_timeout),
            deadline=now + self._scaled(self.config.probe_interval),
            attempt=attempt,
        )
        self.stats.probes_sent += 1
        gossip = self._piggyback(now)
        if target.state is SUSPECT:
            # Lifeguard's buddy system: a suspect we probe hears of the suspicion from
            # us, in our name, so it can refute even if the gossip never reached it.
            buddy = self._sign(Suspect(target.node_id, target.incarnation, self.node_id))
            gossip = (buddy, *gossip)
        out.sends.append((target.node_id, Ping(seq, target.node_id, gossip)))

    def _live_member(self, node_id: str) -> Member | None:
        """`node_id`'s entry if it is another member worth probing (alive or suspect)."""
        member = self._members.get(node_id)
        if member is None or member.node_id == self.node_id or member.state not in _LIVE:
            return None
        return member

    def _next_probe_target(self) -> Member | None:
        """The next alive or suspect member in this round's shuffled order."""
        table = self._members
        size = len(table)
        for _ in range(size):
            member = table.get(table.id_at(self._probe_order.next_index(self._rng, size)))
            if member is not None and member.node_id != self.node_id and member.state in _LIVE:
                return member
        return None

    def _send_indirect(self, pending: PendingProbe, now: float, out: Output) -> None:
        """The target did not answer in time: ask k relays to try for us."""
        pending.indirect_sent = True
        target = self._members.get(pending.target)
        address = target.address if target is not None else ""

        def is_relay(member: Member) -> bool:
            return member.state is ALIVE and member.node_id not in (
                self.node_id,
                pending.target,
            )

        relays = self._members.sample(self._rng, self.config.indirect_checks, is_relay)
        pending.relays = tuple(relay.node_id for relay in relays)
        want_nack = self.config.lifeguard
        pending.expected_nacks = len(relays) if want_nack else 0
        for relay in relays:
            message = IndirectPing(
                pending.seq, pending.target, self.node_id, address, want_nack, self._piggyback(now)
            )
            out.sends.append((relay.node_id, message))
        self.stats.indirect_probes_sent += len(relays)
        out.sends.append((pending.target, Ping(pending.seq, pending.target)))  # once more, direct

    def _probe_failed(self, pending: PendingProbe, now: float, out: Output) -> None:
        """No Ack at all within the probe interval: adjust health; probe the target once
        more, or suspect it if this was the second attempt (see `probe.py`)."""
        self.stats.probes_failed += 1
        if pending.expected_nacks > 0:
            # Relays that did not even Nack point at our own network, not the target.
            self._health(pending.expected_nacks - pending.nacks)
        else:
            self._health(1)
        if pending.attempt == 1:
            self._probes.retry = pending.target
            self._next_probe_at = now  # the repeat goes out in this same tick
            return
        accusation = self._sign(Suspect(pending.target, pending.incarnation, self.node_id))
        self._handle_suspect(accusation, now, out)

    def _on_ack(self, sender: str, message: Ack, now: float, out: Output) -> None:
        self._heard[sender] = now
        pending = self._probes.pending
        directly = pending is not None and sender == pending.target
        if (
            pending is not None
            and message.seq == pending.seq
            and (
                directly or sender in pending.relays  # no one else may answer for it
            )
        ):
            self._probes.pending = None
            self.stats.acks_received += 1
            if not pending.indirect_sent:
                self._health(-1)
            if self._probes.answered(pending.target, directly):
                out.events.append(ReachedIndirectly(pending.target, sender))
        elif message.seq in self._probes.relays:
            relay = self._probes.relays.pop(message.seq)
            self.stats.acks_relayed += 1
            ack = Ack(relay.requester_seq, self._piggyback(now))
            out.sends.append((relay.requester, ack))
        else:
            self.stats.acks_unexpected += 1
        self._handle_gossip(sender, message.gossip, now, out)

    def _on_nack(self, sender: str, message: Nack, now: float, out: Output) -> None:
        self._heard[sender] = now
        pending = self._probes.pending
        if pending is not None and message.seq == pending.seq:
            pending.nacks += 1
            self.stats.nacks_received += 1
        self._handle_gossip(sender, message.gossip, now, out)

    # --- failure detection: answering and relaying ------------------------------------

    def _on_ping(self, sender: str, message: Ping, now: float, out: Output) -> None:
        if message.target != self.node_id:
            self.stats.messages_invalid += 1  # meant for someone else (stale address)
            return
        self._heard[sender] = now
        out.sends.append((sender, Ack(message.seq, self._piggyback(now))))
        self._handle_gossip(sender, message.gossip, now, out)

    def _on_indirect_ping(
        self, sender: str, message: IndirectPing, now: float, out: Output
    ) -> None:
        if message.requester != sender or message.target in (self.node_id, sender):
            self.stats.messages_invalid += 1
            return
        self._heard[sender] = now
        if message.target in self._members:
            seq = self._probes.next_seq()
            self._probes.relays[seq] = RelayedProbe(
                requester=sender,
                requester_seq=message.seq,
                want_nack=message.want_nack,
                nack_at=now + self.config.probe_timeout,
            )
            out.sends.append((message.target, Ping(seq, message.target, self._piggyback(now))))
        else:
            self.stats.gossip_about_unknown += 1
        self._handle_gossip(sender, message.gossip, now, out)

    def _tick_relays(self, now: float, out: Output) -> None:
        if not self._probes.relays:
            return
        for relay in self._probes.expired_relays(now):
            if relay.want_nack:
                self.stats.nacks_sent += 1
                out.sends.append((relay.requester, Nack(relay.requester_seq, self._piggyback(now))))

    # --- suspicion ----------------------------------------------------------------------

    def _start_suspicion(self, node_id: str, incarnation: int, accuser: str, now: float) -> None:
        cfg = self.config
        n = len(self._members)
        k = cfg.suspicion_mult - 2 if cfg.lifeguard else 0
        if n - 2 < k:
            k = 0  # too few members to expect independent confirmations
        min_timeout = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        max_timeout = min_timeout * cfg.suspicion_max_timeout_mult if cfg.lifeguard else min_timeout
        suspicion = Suspicion(accuser, incarnation, now, k, min_timeout, max_timeout)
        self._suspicions[node_id] = suspicion
        heapq.heappush(self._suspicion_heap, (suspicion.deadline(), node_id))
        self.stats.suspicions_started += 1

    def _tick_suspicions(self, now: float, out: Output) -> None:
        heap = self._suspicion_heap
        while heap and heap[0][0] <= now:
            _, node_id = heapq.heappop(heap)
            suspicion = self._suspicions.get(node_id)
            if suspicion is None or suspicion.deadline() > now:
                continue  # refuted, already dead, or a newer suspicion with its own entry
            del self._suspicions[node_id]
            member = self._members.get(node_id)
            if member is not None and member.state is SUSPECT:
                self._declare_failed(member, now, out)

    def _declare_failed(self, member: Member, now: float, out: Output) -> None:
        """Our suspicion ran out: the member is failed, and we say so in our name."""
        dead = self._sign(Dead(member.node_id, member.incarnation, self.node_id))
        self._set_gone(member, member.incarnation, DEAD, now)
        self._queue.queue(_member_key(member.node_id), dead)
        self.stats.members_failed += 1
        out.events.append(MemberFailed(member.node_id, member.incarnation, self.node_id))

    # --- membership claims ----------------------------------------------------------------
    #
    # Every claim is judged in the same order: its shape, then the table
    # (`transitions`: most claims are old news and stop here), then the
    # accuser's budget, and only then its signature, the one costly check.

    def _handle_gossip(
        self, sender: str, items: tuple[Gossip, ...], now: float, out: Output
    ) -> None:
        """Apply piggybacked gossip, item by item (admission re-checked per item)."""
        for item in items:
            if self._admits(sender, item):
                self._on_gossip_message(sender, item, now, out)
            else:
                self.stats.messages_from_unknown += 1

    def _on_gossip_message(self, sender: str, message: Gossip, now: float, out: Output) -> None:
        if isinstance(message, Alive):
            self._handle_alive(message, now, out, True, sender)
            return
        accusation = (
            message
            if isinstance(message, _ACCUSATIONS) and message.node_id == self.node_id
            else None
        )
        incarnation = self._me().incarnation if accusation is not None else 0
        _GOSSIP_HANDLERS[type(message)](self, message, now, out, True)
        if accusation is not None:
            self._answer_accusation(sender, accusation, incarnation, now, out)
        elif isinstance(message, _ACCUSATIONS):
            self._correct_stale(sender, message, now, out)

    def _handle_alive(
        self,
        message: Alive,
        now: float,
        out: Output,
        announce_new: bool,
        sender: str = "",
        *,
        from_line: bool = False,
    ) -> None:
        """Alive: a join, a refutation, or old news (see `transitions.on_alive`).

        Believed only when signed by the node it is about. A member we never
        heard of cannot be checked without its certificate: the Alive waits
        while we ask `sender` (who believed it, so holds the certificate).
        `from_line`: built here from a push-pull line, so passed on as the
        member's new table entry (`BroadcastQueue`), not as a copy of its own.
        """
        if not _valid_claim(message.node_id, message.incarnation) or not message.address:
            self.stats.messages_invalid += 1  # an Alive names where its node is
            return
        current = self._members.get(message.node_id)
        about_self = message.node_id == self.node_id
        verdict = on_alive(current, message.incarnation, about_self)
        if verdict is Verdict.IGNORE and _two_addresses(current, message):
            self._two_places(current, message, now, out)
        elif verdict is Verdict.IGNORE:
            self.stats.gossip_ignored += 1
        elif current is None and not message.certificate:
            self._await_certificate(message, sender, now, out)
        elif current is None and not self._learn(message.node_id, message.certificate):
            self.stats.claims_without_certificate += 1
        elif not self._keyring.verify_claim(message):
            self.stats.claims_bad_signature += 1
        elif verdict is Verdict.REFUTE:
            self._note_claim_from_elsewhere(message, out)
            self._refute(message.incarnation, now)
        else:
            self._note_move(current, message, now, out)
            self._set_alive(current, message, now, out, direct=sender == message.node_id)
            if announce_new or current is not None:
                # Passed on without the certificate: who lacks it asks for it, once.
                gossip: Alive | Member | None
                if from_line:
                    gossip = self._members.get(message.node_id)  # what `_set_alive` put
                elif message.certificate:
                    gossip = dataclasses.replace(message, certificate=b"")
                else:
                    gossip = message
                if gossip is not None:
                    self._queue.queue(_member_key(message.node_id), gossip)

    def _learn(self, node_id: str, certificate: bytes) -> bool:
        return bool(certificate) and self._keyring.learn_certificate(node_id, certificate)

    def _set_alive(
        self,
        current: Member | None,
        message: Alive,
        now: float,
        out: Output,
        *,
        back: bool = True,
        direct: bool = False,
    ) -> None:
        """Hold the member alive, as `message` says; `back`: a member we held failed came
        back to us (its own refutation or a direct word), which plans a heal pull;
        `direct`: the member itself sent it."""
        node_id, incarnation, address = message.node_id, message.incarnation, message.address
        held = None
        if current is None:
            out.events.append(MemberJoined(node_id, incarnation, address))
            since = now
            held = self._held_records.pop(node_id, None)
        elif current.state is not ALIVE:
            out.events.append(MemberAlive(node_id, incarnation, was_failed=current.state is DEAD))
            since = now
        else:
            since = current.state_since
        self._suspicions.pop(node_id, None)
        proof = message.signature
        self._members.put(Member(node_id, address, incarnation, ALIVE, since, proof))
        if current is not None and current.state is DEAD and back:
            # counted alive already: it is not "still failed"
            self._on_return(node_id, now, direct=direct)
        if held is not None:
            self._offer_record(held, now, out, announce_new=True)

    def _handle_suspect(
        self,
        message: Suspect,
        now: float,
        out: Output,
        announce_new: bool = True,
        *,
        signed: bool = True,
    ) -> None:
        """Suspect: start a suspicion, confirm one, or refute it if it is about us.

        `signed=False` is a suspicion a push-pull peer vouches for in its own
        name (the sender is authenticated): applied here, never re-gossiped.
        """
        if not _valid_claim(message.node_id, message.incarnation) or not message.by:
            self.stats.messages_invalid += 1
            return
        node_id = message.node_id
        current = self._members.get(node_id)
        if current is not None and message.incarnation > current.incarnation:
            # Only the accused raises its incarnation (by a signed Alive); an
            # accusation above it is either ahead of that Alive or a forgery
            # meant to push the accused out of reach. Either way: not yet.
            self.stats.claims_ahead_of_member += 1
            return
        suspicion = self._suspicions.get(node_id)
        verdict = on_suspect(
            current, message.incarnation, node_id == self.node_id, suspicion is not None
        )
        if verdict in (Verdict.IGNORE, Verdict.UNKNOWN):
            self._count_ignored(verdict)
        elif not self._accusation_allowed(message, verdict, now, signed):
            return
        elif verdict is Verdict.REFUTE:
            self._refute(message.incarnation, now)
        elif verdict is Verdict.CONFIRM:
            assert suspicion is not None
            if suspicion.confirm(message.by):
                self.stats.suspicions_confirmed += 1
                heapq.heappush(self._suspicion_heap, (suspicion.deadline(), node_id))
                if signed:
                    self._queue.queue(_member_key(node_id), message)
        else:
            assert current is not None
            self._suspect(current, message.incarnation, message.by, now, out)
            if signed:
                self._queue.queue(_member_key(node_id), message)

    def _suspect(self, current: Member, incarnation: int, by: str, now: float, out: Output) -> None:
        node_id = current.node_id
        address, proof = current.address, current.proof
        self._members.put(Member(node_id, address, current.incarnation, SUSPECT, now, proof))
        self._start_suspicion(node_id, incarnation, by, now)
        out.events.append(MemberSuspected(node_id, incarnation, by))

    def _accusation_allowed(
        self, claim: Suspect | Dead, verdict: Verdict, now: float, signed: bool
    ) -> bool:
        """Budget (for what costs someone something), then signature; counted when refused."""
        if claim.by == self.node_id:
            return True  # our own, made and signed here
        costly = verdict is not Verdict.CONFIRM  # a confirmation only shortens a timeout
        if costly and not self._accusations.allow(claim.by, now):
            self.stats.accusations_over_budget += 1
            return False
        if signed and not self._keyring.verify_claim(claim):
            self.stats.claims_bad_signature += 1
            return False
        return True

    def _handle_dead(
        self,
        message: Dead,
        now: float,
        out: Output,
        announce_new: bool = True,
    ) -> None:
        """Dead: declare the member failed, or refute it if it is about us."""
        if not _valid_claim(message.node_id, message.incarnation) or not message.by:
            self.stats.messages_invalid += 1
            return
        current = self._members.get(message.node_id)
        if current is not None and message.incarnation > current.incarnation:
            self.stats.claims_ahead_of_member += 1  # as for Suspect
            return
        verdict = on_dead(current, message.incarnation, message.node_id == self.node_id)
        if verdict in (Verdict.IGNORE, Verdict.UNKNOWN):
            self._count_ignored(verdict)
        elif not self._accusation_allowed(message, verdict, now, signed=True):
            return
        elif verdict is Verdict.REFUTE:
            self._refute(message.incarnation, now)
        elif verdict is Verdict.SUSPECT_FIRST:
            # Held alive here: suspect it (so it can refute) and pass the Dead on,
            # signed as its accuser made it; every receiver applies this same rule.
            assert current is not None
            self._suspect(current, message.incarnation, message.by, now, out)
            self._queue.queue(_member_key(message.node_id), message)
        else:
            # Suspected here: one more accuser, never the verdict (`transitions.py`).
            assert current is not None
            suspicion = self._suspicions.get(message.node_id)
            if suspicion is None:  # not expected (every suspicion has a timer): start one
                self._suspect(current, message.incarnation, message.by, now, out)
            elif suspicion.confirm(message.by):
                self.stats.suspicions_confirmed += 1
                heapq.heappush(self._suspicion_heap, (suspicion.deadline(), message.node_id))
                self._queue.queue(_member_key(message.node_id), message)

    def _handle_leave(
        self, message: Leave, now: float, out: Output, announce_new: bool = True
    ) -> None:
        """Leave: the member is gone on purpose (not a failure); only it can say so."""
        if not _valid_claim(message.node_id, message.incarnation):
            self.stats.messages_invalid += 1
            return
        current = self._members.get(message.node_id)
        verdict = on_leave(current, message.incarnation, message.node_id == self.node_id)
        if verdict in (Verdict.IGNORE, Verdict.UNKNOWN):
            self._count_ignored(verdict)
        elif not self._keyring.verify_claim(message):
            self.stats.claims_bad_signature += 1
        elif verdict is Verdict.REFUTE:
            self._refute(message.incarnation, now)
        else:
            assert current is not None
            self._set_gone(current, message.incarnation, LEFT, now, message.signature)
            self._queue.queue(_member_key(message.node_id), message)
            out.events.append(MemberLeft(message.node_id, message.incarnation))

    def _set_gone(
        self,
        current: Member,
        incarnation: int,
        state: MemberState,
        now: float,
        proof: bytes | None = None,
    ) -> None:
        self._suspicions.pop(current.node_id, None)
        proof = current.proof if proof is None else proof
        self._members.put(Member(current.node_id, current.address, incarnation, state, now, proof))

    def _refute(self, accused: int, now: float) -> None:
        """Someone believes something false about us: out-number it with a new incarnation."""
        me = self._me()
        incarnation = max(me.incarnation, accused) + 1
        if incarnation > MAX_COUNTER:
            # Unreachable by honest means (one step per refutation, and no one
            # may accuse above what we signed); refuting would send an invalid frame.
            self.stats.incarnation_exhausted += 1
            return
        member = self._own_member(incarnation, me.state_since)
        self._members.put(member)
        alive = Alive(self.node_id, incarnation, self.address, signature=member.proof)
        self._queue.queue(_member_key(self.node_id), alive, urgent=True)
        self.stats.refutations += 1
        self._health(1)

    def _refute_held_gone(self, sender: str, line: MemberDigest, now: float) -> None:
        """A push-pull peer holds us suspect, failed or left at the line's incarnation.

        That is what it believes, whoever signed it: a Leave of ours signed by the
        key we held before a re-issued certificate, or an incarnation from a life
        before a restart, which we no longer know. Only our Alive above it changes
        its mind. A line we cannot check may move us at most MAX_UNPROVEN_LEAP
        ahead per refutation, so no member can exhaust our incarnations with one.

        A member holding this life of ours failed means we were cut off from it,
        as its signed Dead would (`_cut_off`): after a split, the first a node
        hears of it may be the other side's heal pull, and a node that does not
        rejoin then pulls views that do not yet hold the other side's refutations,
        and waits for each member it holds failed to answer its Pings, five a
        second.
        """
        me = self._me()
        if self._left or line.incarnation < me.incarnation:
            return  # we said goodbye; or our newer Alive, in this exchange, answers it
        self._refute(min(line.incarnation, me.incarnation + MAX_UNPROVEN_LEAP), now)
        this_life = line.incarnation == me.incarnation  # above it: a life before a restart
        # As a signed Dead counts: only a member we hold alive, within its accusations.
        held_failed = line.state is DEAD and this_life
        if held_failed and self._live_member(sender) and self._accusations.allow(sender, now):
            self._cut_off(sender, now)

    def _two_places(self, current: Member | None, message: Alive, now: float, out: Output) -> None:
        """The node signed two addresses at one incarnation: two processes hold its key
        (or it restarted elsewhere and its old life is silent). If it is us, the other
        one must hear from us; if not, the node at the address we hold must see the other
        claim. Either way, the two then out-number each other and show themselves."""
        assert current is not None
        if not self._keyring.verify_claim(message):
            self.stats.claims_bad_signature += 1
        elif current.node_id == self.node_id:
            self._note_claim_from_elsewhere(message, out)
            self._refute(message.incarnation, now)
        elif self._forwarded.get(current.node_id) != current.incarnation:
            if len(self._forwarded) > MAX_TRACKED_MOVES:
                self._forwarded.clear()
            self._forwarded[current.node_id] = current.incarnation
            out.sends.append((current.node_id, message))

    def _note_claim_from_elsewhere(self, message: Alive, out: Output) -> None:
        """An Alive about us, signed with our key, that we did not make.

        Once, after a restart, it is our previous life. When it comes again
        above the incarnation we refuted it with, another process holds our
        key and refutes us back: two agents with one identity.
        """
        if message.address == self.address:
            return
        if self._refuted_clone_at and message.incarnation > self._refuted_clone_at:
            out.events.append(
                IdentityClash(self.node_id, (self.address, message.address), self._born)
            )
        self._refuted_clone_at = max(message.incarnation, self._me().incarnation) + 1

    def _note_move(self, current: Member | None, message: Alive, now: float, out: Output) -> None:
        """A member's address flipping back and forth means one id is in two places."""
        if current is None or not message.address or message.address == current.address:
            return
        moved = self._moves.get(message.node_id)
        if moved is not None and moved[0] == message.address and now - moved[1] < CLASH_WINDOW:
            out.events.append(
                IdentityClash(message.node_id, (current.address, message.address), None)
            )
        if len(self._moves) > MAX_TRACKED_MOVES:
            self._moves.clear()
        self._moves[message.node_id] = (current.address, now)

    def _tell_if_failed(self, sender: str, now: float, out: Output) -> None:
        """A member we hold failed just spoke to us: it is reachable and believes it is
        alive. It learns what we hold (our signed Dead, directly), refutes, and sends
        its refutation back to us (`_answer_accusation`): the two see each other again
        without waiting for anyone's luck. Once per member per probe interval."""
        member = self._members.get(sender)
        if member is None or member.state is not DEAD or self._left:
            return
        if now - self._told.get(sender, -INF) < self.config.probe_interval:
            return
        self._remember(self._told, sender, now)
        self.stats.failed_members_told += 1
        self._send_directly(sender, self._sign(Dead(sender, member.incarnation, self.node_id)), out)

    def _correct_stale(self, sender: str, claim: Suspect | Dead, now: float, out: Output) -> None:
        """`sender` passed on an accusation of a life we hold refuted, or restarted
        past: it gets that member's signed Alive directly. The Alive's gossip reaches
        nearly every node within a second or two, but not surely every one; a node it
        missed that is then told the old life's Dead (declared late by a node it
        also missed) holds the member failed, and spreads that, until it next
        probes it. Once per sender per gossip interval, and never more than a
        second of our gossip owed for it: a stale claim is not checked for its
        signature (old news stops before that), so anyone admitted can ask."""
        if self._left or not _valid_claim(claim.node_id, claim.incarnation) or not claim.by:
            return
        member = self._members.get(claim.node_id)
        if member is None or member.state is not ALIVE or not member.proof:
            return
        if member.incarnation <= claim.incarnation:
            return
        if not self._paced(self._corrected, sender, now, self.config.gossip_interval, 1):
            return
        self.stats.stale_claims_corrected += 1
        alive = Alive(member.node_id, member.incarnation, member.address, signature=member.proof)
        self._send_directly(sender, alive, out, floor=-self._budget.rate)

    def _answer_accusation(
        self, sender: str, claim: Suspect | Dead, incarnation: int, now: float, out: Output
    ) -> None:
        """`sender` told us someone accuses us. Whether we just refuted it or had
        already (the claim is about an older incarnation), the sender holds a wrong
        belief about us: it gets our current Alive directly, not by chance of gossip.
        A Dead about us means we were cut off from someone: we rejoin (`_rejoin`) and
        pull the sender's view soon, as a heal pull goes (within a reconnect interval
        of our last push-pull, spread over `HEAL_PULL_SPREAD`). Once per sender per
        gossip interval."""
        if self._left or claim.incarnation > incarnation:
            return  # we left (stay gone), or an accusation ahead of us (not believed)
        if not self._paced(self._answered, sender, now, self.config.gossip_interval, 1):
            return
        self._send_directly(sender, self._own_alive(self._me()), out)
        if isinstance(claim, Dead) and self._me().incarnation > incarnation:
            self._cut_off(sender, now)

    def _cut_off(self, sender: str, now: float) -> None:
        """`sender` held this life of ours failed: we rejoin (`_rejoin`), pull its view
        soon, as a heal pull goes (within a reconnect interval of our last push-pull,
        spread over `HEAL_PULL_SPREAD`), and sweep whom we hold failed."""
        self._rejoin(now)
        gap = self.config.reconnect_interval  # as for a heal pull: rejoining waits on it
        self._push_pull_soon(sender, now, gap=gap, spread=HEAL_PULL_SPREAD)
        self._recheck_failed(now)

    def _rejoin(self, now: float) -> None:
        """A member's signed Dead (or digest line) about this life of ours: we were cut
        off, so those we hold failed we probably failed ourselves while cut off, and
        each would have to refute to change our mind, one Ping of ours at a time (a
        node cut off alone holds everyone failed). Instead we rejoin as a newcomer
        joins: for the next two push-pull intervals (the exchange with whoever told us
        is planned within them), our digests ask for ALIVE lines of whom we hold failed
        (`Digest.rejoining`), and the answer of a member we asked, in its members' own
        signed lines, makes them alive here (`_merge_line`). Only members failed
        before we learnt it and within `reconnect_timeout` (those we would still
        retry): a failure we see after is news. The window does not slide: a member
        that keeps telling us we are failed does not keep us rejoining."""
        if now >= self._rejoining_until:
            self._cut_off_seen = now
            self._rejoining_until = now + 2 * self.config.push_pull_interval
            self._undamped_left = MAX_UNDAMPED_PULLS

    def _on_return(self, node_id: str, now: float, *, direct: bool = False) -> None:
        """A member we held failed is alive again: the network between us has probably
        healed, and the others we hold failed may be as wrong. We plan a push-pull
        with a member that came back (`heal.py`), and sweep whom we still hold failed
        (`_recheck_failed`): each answers our Ping with its refutation, so the last
        few pairs need no one's luck. `direct`: the member told us itself."""
        self._recheck_failed(now)
        rejoining = self._rejoining(now)
        # While we rejoin, each answer brings back one side: once we pulled since we
        # learnt we were cut off, the next pull, to a member of a side still held
        # failed, need not wait a reconnect interval, nor the spread that keeps a
        # healed side's first pulls apart. A member we held failed telling us itself
        # that it is alive (answering a sweep's Ping, announcing a new life) shows that
        # it, and likely what it holds alive, was there all along: an answer leaves
        # some of a side failed when its sender had not heard them refute, and with a
        # few left among thousands alive the damping's coin would leave them to the
        # sweep, one Ping at a time. At most `MAX_UNDAMPED_PULLS` a rejoining: members
        # we hold failed could otherwise draw a whole digest every few seconds.
        followed = rejoining and self._last_push_pull > self._cut_off_seen
        undamped = followed and direct and self._undamped_left > 0
        planned = self._heal_pulls.on_return(
            node_id,
            now,
            self._rng,
            failed=self._members.count(MemberState.DEAD),
            alive=self._members.count(MemberState.ALIVE),
            gap=REJOIN_PULL_GAP if rejoining else self.config.reconnect_interval,
            spread=REJOIN_PULL_GAP if followed else HEAL_PULL_SPREAD,
            damped=not undamped,
            since=self._last_push_pull if rejoining else -INF,
        )
        if planned and undamped:
            self._undamped_left -= 1

    def _recheck_failed(self, now: float) -> None:
        """We were held failed, so we were probably cut off, and so may be wrong about
        whom we suspect or hold failed: each of them gets a Ping carrying our claim (at
        most `MAX_RECHECKS`, the suspects and the most recently failed first, one per
        gossip interval). Reconnects alone, random and damped, may take minutes to come
        round to the few a cut-off node holds failed; and a suspicion it started while
        cut off would time out and fail a member that never heard of it."""
        if self._recheck:
            return  # a sweep is under way
        self._recheck = sweep_order(list(self._suspicions), self._reconnectable(now), MAX_RECHECKS)
        self._next_recheck_at = now

    def _reconnectable(self, now: float) -> list[str]:
        """Members held failed for less than `reconnect_timeout`, the most recent last:
        those longer gone are not tried again (Serf reaps them)."""
        timeout = self.config.reconnect_timeout
        return [
            node_id
            for node_id in self._members.dead_ids()
            if now - self._state_since(node_id) < timeout
        ]

    def _send_directly(self, peer: str, item: Gossip, out: Output, *, floor: float = -INF) -> None:
        """A gossip item for one peer only: sent now, paid from the gossip budget (whose
        debt it deepens no further than `floor`)."""
        self._budget.spend(estimate_size(item), floor=floor)
        out.sends.append((peer, item))

    def _remember(self, times: dict[str, float], node_id: str, now: float) -> None:
        """Note when we last did something for `node_id`, in a bounded map."""
        times.pop(node_id, None)
        times[node_id] = now
        if len(times) > MAX_TRACKED_MOVES:
            del times[next(iter(times))]

    def _count_ignored(self, verdict: Verdict) -> None:
        if verdict is Verdict.UNKNOWN:
            self.stats.gossip_about_unknown += 1
        else:
            self.stats.gossip_ignored += 1

    def _sign(self, claim: ClaimT) -> ClaimT:
        """`claim` with our signature."""
        return dataclasses.replace(claim, signature=self._keyring.sign_claim(claim))

    def _own_alive(self, me: Member) -> Alive:
        return Alive(self.node_id, me.incarnation, self.address, signature=me.proof)

    # --- certificates on demand ---------------------------------------------------------

    def _await_certificate(self, message: Alive, sender: str, now: float, out: Output) -> None:
        """Keep an Alive about a node we cannot check yet, and ask `sender` for its certificate.

        One request per node per `CERTIFICATE_WAIT`; the newest Alive wins;
        at most `MAX_AWAITED` nodes wait (a flood of invented ones pushes out
        the oldest, which costs nothing: they are asked for again if real).
        """
        waiting = self._awaiting
        held = waiting.get(message.node_id)
        if held is not None:
            if message.incarnation > held[0].incarnation:
                waiting[message.node_id] = (message, *held[1:])
            return  # asked already; `_tick_certificates` asks again if need be
        if not sender or (sender == message.node_id and sender not in self._members):
            self.stats.claims_without_certificate += 1  # nobody we can ask
            return
        waiting[message.node_id] = (message, now, sender, 1)
        if len(waiting) > MAX_AWAITED:
            del waiting[next(iter(waiting))]
        self.stats.certificates_requested += 1
        out.sends.append((sender, CertificateRequest((message.node_id,))))

    def _tick_certificates(self, now: float, out: Output) -> None:
        """Certificates asked for and not come within `CERTIFICATE_WAIT` (a request or
        its answer lost): ask another member, which holds it if it took the node in, up
        to `CERTIFICATE_ATTEMPTS` times. Gossip about a newcomer lasts about a second;
        without this, one lost datagram kept it unknown here until the next push-pull."""
        waiting = self._awaiting
        while waiting:
            node_id, (alive, asked, whom, attempts) = next(iter(waiting.items()))
            if now - asked < CERTIFICATE_WAIT:
                return
            del waiting[node_id]
            peers = self._members.sample(self._rng, 1, functools.partial(self._is_other, whom))
            if attempts >= CERTIFICATE_ATTEMPTS or not peers:
                self.stats.claims_without_certificate += 1
                continue
            waiting[node_id] = (alive, now, peers[0].node_id, attempts + 1)
            self.stats.certificates_requested += 1
            out.sends.append((peers[0].node_id, CertificateRequest((node_id,))))

    def _is_other(self, besides: str, member: Member) -> bool:
        """Whether `member` is alive and neither us nor `besides`."""
        return member.state is ALIVE and member.node_id not in (self.node_id, besides)

    def _on_certificate_request(
        self, sender: str, message: CertificateRequest, now: float, out: Output
    ) -> None:
        """Hand out the certificates we hold of the nodes asked for (public documents)."""
        found = {}
        for node_id in message.node_ids[:MAX_CERTIFICATES]:
            certificate = self._keyring.certificate(node_id)
            if certificate and node_id in self._members:
                found[node_id] = certificate
        if found:
            out.sends.append((sender, Certificates(found)))

    def _on_certificates(self, sender: str, message: Certificates, now: float, out: Output) -> None:
        """Certificates we asked for: the Alives that waited for them are judged now."""
        for node_id, certificate in list(message.certificates.items())[:MAX_CERTIFICATES]:
            held = self._awaiting.pop(node_id, None)
            if held is None:
                continue  # not asked for (or already answered): not worth checking
            alive = dataclasses.replace(held[0], certificate=certificate)
            self._handle_alive(alive, now, out, True)

    # --- revocation -------------------------------------------------------------------

    def _handle_revocations(
        self, message: Revocations, now: float, out: Output, announce_new: bool = True
    ) -> None:
        """A signed revocation list: adopt it if newer, pass it on, expel whom it revokes."""
        if not self._keyring.adopt_revocations(message.crl):
            self.stats.gossip_ignored += 1
            return
        self.stats.revocations_adopted += 1
        self._queue.queue(_REVOCATIONS_KEY, message)
        self._expel_revoked(now, out)

    def _expel_revoked(self, now: float, out: Output) -> None:
        for member in list(self._members):
            if member.state is LEFT or not self._keyring.revoked(member.node_id):
                continue
            if member.node_id != self.node_id:
                self._set_gone(member, member.incarnation, LEFT, now)
            out.events.append(MemberRevoked(member.node_id))

    # --- records --------------------------------------------------------------------------

    def _handle_record(
        self, message: RecordUpdate, now: float, out: Output, announce_new: bool = True
    ) -> None:
        self._offer_record(message.signed, now, out, announce_new, message)

    def _offer_record(
        self,
        signed: SignedRecord,
        now: float,
        out: Output,
        announce_new: bool,
        message: RecordUpdate | None = None,
    ) -> None:
        """Store a newer verified record and re-gossip it (rules in `records.py`)."""
        if not signed.node_id or signed.version < 1:
            self.stats.messages_invalid += 1
            return
        if signed.node_id == self.node_id:
            self._own_record_seen(signed, out)
            return
        had_one = self._records.version(signed.node_id) > 0
        owner = self._owner_address(signed, now)
        bounds = self.config.record_bounds
        admission = admit(self._records, signed, self._keyring.verify_record, owner, bounds)
        verdict = admission.verdict
        if verdict is RecordVerdict.ACCEPT:
            assert admission.record is not None
            self._records.put(signed, admission.record, now)
            self.stats.records_accepted += 1
            out.events.append(RecordUpdated(admission.record))
            if announce_new or had_one:
                self._queue.queue(_record_key(signed.node_id), message or RecordUpdate(signed))
        elif verdict is RecordVerdict.STALE:
            self.stats.records_rejected_stale += 1
        else:
            if verdict is RecordVerdict.NOT_MEMBER:
                self.stats.records_rejected_not_member += 1
                self._hold_for_member(signed)
            elif verdict is RecordVerdict.OUT_OF_BOUNDS:
                self.stats.records_rejected_out_of_bounds += 1
            elif verdict is RecordVerdict.MALFORMED:
                self.stats.records_rejected_malformed += 1
            else:
                self.stats.records_rejected_bad_signature += 1
            reason = admission.reason or verdict.value
            out.events.append(RecordRejected(signed.node_id, signed.version, reason))

    def _owner_address(self, signed: SignedRecord, now: float) -> str | None:
        """The address the record's owner signed, if it is a member whose records we take."""
        member = self._members.get(signed.node_id)
        if member is None or member.state is LEFT:
            return None
        expired = now - member.state_since > self.config.reconnect_timeout
        return None if member.state is DEAD and expired else member.address

    def _hold_for_member(self, signed: SignedRecord) -> None:
        """Keep a record that outran its owner's Alive, until the owner joins.

        Gossip does not keep order: a newcomer's record can reach us before
        the news that it exists, and then only the next push-pull (minutes, in
        a large mesh) would bring it again. Unverified and bounded: a flood of
        invented owners only pushes older held records out.
        """
        if signed.node_id in self._members:
            return  # a member we no longer take records from
        held = self._held_records
        held.pop(signed.node_id, None)
        held[signed.node_id] = signed
        if len(held) > MAX_HELD_RECORDS:
            del held[next(iter(held))]

    def _own_record_seen(self, signed: SignedRecord, out: Output) -> None:
        """A copy of our record came back; if a past life of ours published a higher
        version, re-issue our contents above it so the cluster takes them."""
        if signed.version <= self._records.version(self.node_id):
            return
        self._version_floor = max(self._version_floor, signed.version)
        if self._own_record is not None:
            self._publish(dataclasses.replace(self._own_record, version=signed.version + 1), out)

    def _publish(self, record: NodeRecord, out: Output) -> None:
        signed = self._keyring.sign_record(record)
        self._records.put(signed, record)
        self._own_record = record
        self._queue.queue(_record_key(self.node_id), RecordUpdate(signed))
        out.events.append(RecordUpdated(record))

    # --- anti-entropy ----------------------------------------------------------------------

    def _digest(self, now: float, *, reply: bool, within: tuple[str, str] = ("", "")) -> Digest:
        """What we know, with our own line signed and certified (a newcomer's introduction)."""
        me = self._me()
        cert = self._keyring.certificate(self.node_id)
        own = MemberDigest(self.node_id, me.incarnation, me.state, me.address, me.proof, cert)
        crl_issued_at = self._keyring.revocations()[0]
        return build_digest(
            self._members,
            self._records,
            self._digest_lines,
            own,
            crl_issued_at,
            cache=self._line_cache,
            reply=reply,
            rejoining=self._rejoining(now),
            within=within,
        )

    def _rejoining(self, now: float) -> bool:
        return now < self._rejoining_until

    def _send_digest(self, peer: str, digest: Digest, now: float, out: Output) -> None:
        """Send a push-pull digest; a rejoining one makes `peer`'s answer count (`_rejoin`)."""
        if digest.rejoining:
            self._remember(self._asked_rejoining, peer, now)
        out.sends.append((peer, digest))

    def _tick_push_pull(self, now: float, out: Output) -> None:
        if now >= self._next_part_at:
            self._send_part(now, out)
        if now < self._next_push_pull_at:
            return
        interval = push_pull_scale(self.config.push_pull_interval, len(self._members))
        self._next_push_pull_at = now + interval
        chosen, self._pull_from = self._pull_from, None
        peer = self._live_member(chosen) if chosen is not None else None
        if peer is None:
            peer = self._push_pull_partner()
        if peer is None:
            return
        self.stats.push_pulls_sent += 1
        self._last_push_pull = now
        part_bytes = self.config.push_pull_part_bytes
        if chosen is None and part_bytes and not self._rejoining(now):
            # The periodic exchange, in parts; one with a member chosen for it (whoever
            # told us we were held failed) or while rejoining is needed whole, now.
            ids = self._members.ids_in("", "")
            size, parts = part_bytes, plan_parts(ids, part_bytes)
            most = _most_parts(interval)
            while len(parts) > most:  # a mesh too large for the part size: larger parts
                size = math.ceil(size * len(parts) / most) + 1
                parts = plan_parts(ids, size)
            self._parts, self._parts_to = parts[::-1], peer.node_id
            self._parts_asked.clear()  # answers to the last exchange's parts are late now
            self._send_part(now, out)
            return
        self._parts.clear()
        self._next_part_at = INF
        if self._rejoining(now):
            # A pull, as a heal pull is: what we need is the peer's view; its side
            # pulls ours if it too was cut off from us.
            self._pull(peer.node_id, now, out)
        else:
            self._ask_for_mesh(peer.node_id, now, out)

    def _push_pull_partner(self, besides: str = "") -> Member | None:
        """A live member drawn at random, neither us nor `besides`."""
        peers = self._members.sample(self._rng, 1, functools.partial(self._is_other, besides))
        return peers[0] if peers else None

    def _send_part(self, now: float, out: Output) -> None:
        """The next part of the exchange under way (`plan_parts`). If its member is no
        longer alive here, the rest goes to another: the exchange covers every id. A
        part carries our own line only if our id is in its range; a member that holds
        us failed needs none of them to tell us so (`_tell_if_failed`)."""
        current = self._members.get(self._parts_to)
        if current is None or current.state is not ALIVE:
            # Suspected already: its failure may take a suspicion timeout to declare,
            # longer than the exchange. The ranges it left unanswered go again first.
            partner = self._push_pull_partner()
            if partner is None:
                self._parts.clear()
                self._next_part_at = INF
                return
            gone = self._parts_to
            unanswered = [key for key in self._parts_asked if key[0] == gone]
            for key in unanswered:
                del self._parts_asked[key]
            self._parts.extend((first, end) for _, first, end in reversed(unanswered))
            self._parts_to = partner.node_id
        part = self._parts.pop()
        self._next_part_at = now + PART_GAP if self._parts else INF
        self._parts_asked[(self._parts_to, *part)] = now
        self._send_digest(self._parts_to, self._digest(now, reply=True, within=part), now, out)

    def _tick_heal_pull(self, now: float, out: Output) -> None:
        """A push-pull with a member that came back (`heal.py`). Only its answer is
        asked for (`reply=False`): its side's news comes to us, ours goes to it when
        its side pulls; half the bytes of a two-way exchange. The digest is paid from
        the gossip budget: gossip waits while a pull brings what it would have."""

        def is_live(node_id: str) -> bool:
            return self._live_member(node_id) is not None

        peer = self._heal_pulls.take(now, self._rng, is_live)
        if peer is not None:
            self.stats.heal_pulls_sent += 1
            self._pull(peer, now, out)
            # It counts as our push-pull: a partner chosen for a sooner one (whoever
            # told us we were held failed) is dropped, and the timer starts afresh.
            self._pull_from = None
            self._last_push_pull = now
            interval = push_pull_scale(self.config.push_pull_interval, len(self._members))
            self._next_push_pull_at = max(self._next_push_pull_at, now + interval)

    def _push_pull_soon(self, peer: str, now: float, *, gap: float, spread: float) -> None:
        """Make `peer` our next push-pull partner, no sooner than `gap` after our last
        push-pull, at a random moment within `spread` of that (so that a healed side
        does not send all its digests in the same second)."""
        self._pull_from = peer
        soonest = max(now, self._last_push_pull + gap) + self._rng.random() * spread
        self._next_push_pull_at = min(self._next_push_pull_at, soonest)

    def _tick_reconnect(self, now: float, out: Output) -> None:
        """Serf-style: try one failed member, so healed partitions find each other.

        The attempt is a Ping carrying our signed Dead about it: if it is
        reachable it refutes and sends us its refutation, and, holding us
        failed too, tells us so (`_tell_if_failed`), and we do the same. A few
        hundred bytes, where Serf pushes its whole state; so it can be tried
        every few seconds, and every healed pair finds each other on a clock,
        not by luck.
        """
        if now < self._next_reconnect_at:
            return
        self._next_reconnect_at = now + self.config.reconnect_interval
        if now - self._heal_pulls.returned_at < self.config.reconnect_interval:
            # A heal is under way (members we held failed keep coming back): every
            # one we still hold failed is tried, not one at random, so that the last
            # pairs wait at most an interval rather than for a damped coin.
            self._recheck_failed(now)
            return
        # Serf's damping: try with probability failed/alive, so that a mesh
        # does not hammer its few dead hosts, while a healed side (many
        # "failed") tries at every interval.
        failed = self._members.count(MemberState.DEAD)
        alive = max(1, self._members.count(MemberState.ALIVE))
        if failed == 0 or self._rng.random() > failed / alive:
            return
        candidates = self._reconnectable(now)
        target = self._members.get(self._rng.choice(candidates)) if candidates else None
        if target is not None:
            self._reconnect(target, now, out)

    def _tick_recheck(self, now: float, out: Output) -> None:
        """The next member of a sweep (`_recheck_failed`), if it is due and still doubted.
        While we rejoin, a sweep that ends starts again: an answer to our rejoining pull
        brings back the members its sender's side holds alive, and those of a third side
        it holds failed too are then the few we still hold failed, each of which
        answers our Ping at once, rather than at the next reconnect tick."""
        while self._recheck and now >= self._next_recheck_at:
            member = self._members.get(self._recheck.pop())
            if member is not None and member.state in (SUSPECT, DEAD):
                self._reconnect(member, now, out)
                self._next_recheck_at = now + self.config.gossip_interval
        if not self._recheck and self._rejoining(now):
            self._recheck = sweep_order(
                list(self._suspicions), self._reconnectable(now), MAX_RECHECKS
            )
            # One Ping per gossip interval still, whatever the last of the sweep was.
            self._next_recheck_at = max(self._next_recheck_at, now + self.config.gossip_interval)

    def _reconnect(self, target: Member, now: float, out: Output) -> None:
        """A Ping to a member we hold failed (or suspect), carrying our signed claim."""
        self.stats.reconnects_attempted += 1
        self._remember(self._told, target.node_id, now)
        claim: Suspect | Dead
        if target.state is DEAD:
            claim = self._sign(Dead(target.node_id, target.incarnation, self.node_id))
        else:
            claim = self._sign(Suspect(target.node_id, target.incarnation, self.node_id))
        ping = Ping(self._probes.next_seq(), target.node_id, (claim,))
        out.sends.append((target.node_id, ping))

    def _on_digest(self, sender: str, message: Digest, now: float, out: Output) -> None:
        """Answer a push-pull: Deltas of what we know newer, and our Digest if asked.

        Before answering, two lines of the digest are applied: the sender's own
        (a newcomer introducing itself) and the one about us (so a failure
        claim is refuted first and the Delta already carries our new Alive).
        """
        self._heard[sender] = now
        if not (message.first or message.end):
            self._join_asks.heard_from(sender, now)  # a whole digest: the mesh came
        self.stats.digests_received += 1
        # The sender's own line first, whatever the ids' order: whether it is alive
        # decides how its word about us counts (`_refute_held_gone`).
        lines = [line for line in message.members if line.node_id in (sender, self.node_id)]
        lines.sort(key=lambda line: line.node_id != sender)
        for line in lines:
            if line.node_id == sender:
                self._note_return(line)
            self._merge_line(sender, line, now, out, announce_new=True)
        if sender not in self._members:
            self.stats.messages_from_unknown += 1  # it did not introduce itself: no answer
            return
        if message.reply or self._part_asked(sender, message, now):
            pull = False  # an exchange begun, or the answer to a part of ours
        elif message.first or message.end:
            self.stats.unasked_parts += 1  # we pull whole digests only: not a pull
            return
        else:
            pull = not self._asked_within(sender, now)
        if pull and now - self._pulled_by.get(sender, -INF) < self.config.reconnect_interval:
            self.stats.pulls_ignored += 1  # a member pulls once per heal pull gap at most
            return
        if pull:
            # Every side draws its pull partners from the few members back first, so
            # without a bound those few answer dozens of pulls a second (megabytes);
            # a puller left unanswered asks another a second later (`heal.ANSWER_WAIT`).
            due = allowance(self._pulls_due_at, now, PULL_ANSWER_GAP, PULL_BURST)
            if due is None:
                self.stats.pulls_busy += 1
                return
            self._pulls_due_at = due
        if message.reply and not self._may_answer(sender, message, now):
            self.stats.exchanges_ignored += 1
            return
        issued_at, crl = self._keyring.revocations()
        newer_crl = crl if issued_at > message.crl_issued_at else b""
        part = bool(message.first or message.end)
        limit = self.config.max_delta_bytes
        if part:  # small answers, one a part: the rest waits for the next exchange
            limit = min(limit, PART_ANSWER_PARTS * self._part_bytes_answered())
        deltas = build_deltas(
            message,
            self._members,
            self._records,
            self._keyring.certificate,
            newer_crl,
            limit,
            cache=self._line_cache,
        )
        if part:
            deltas = deltas[:1]
        elif pull and not deltas:
            deltas = [Delta()]  # nothing newer: said, so that the puller asks nobody else
        out.sends.extend((sender, delta) for delta in deltas)
        if message.reply:
            within = (message.first, message.end)
            out.sends.append((sender, self._digest(now, reply=False, within=within)))
        elif pull:
            # A pull (`_tick_heal_pull`), not the second half of an exchange we began:
            # after a heal, its answer is most of one side's refutations, paid from the
            # gossip budget, whose items it makes redundant, so that pulls and gossip
            # together stay within the node's bandwidth; but never more than a second
            # of gossip is owed for it, so pulls cannot silence our gossip for long.
            self._remember(self._pulled_by, sender, now)
            self._budget.spend(deltas_size(deltas), floor=-self._budget.rate)

    def _may_answer(self, sender: str, message: Digest, now: float) -> bool:
        """Whether a push-pull `sender` starts gets an answer: parts at a member's honest
        pace, one a part gap, with a burst of `PART_BURST` for jitter; a whole digest
        (or a "part" of more than twice the ids a part may hold) one per reconnect
        interval, with a burst of `EXCHANGE_BURST`: an agent restarted soon after its
        last exchange joins again, and must learn the mesh from the answer. A member
        asking faster, which costs it a few bytes each time, would have us send it our
        state again and again (and a part's answer is at most one Delta of a few
        parts, `_on_digest`)."""
        if message.first or message.end:
            held = len(self._members.ids_in(message.first, message.end))
            if held <= 2 * self._part_ids_allowed():
                return self._paced(self._part_answered, sender, now, PART_GAP, PART_BURST)
        gap = self.config.reconnect_interval
        return self._paced(self._exchange_answered, sender, now, gap, EXCHANGE_BURST)

    def _paced(
        self, due_at: dict[str, float], sender: str, now: float, gap: float, burst: int
    ) -> bool:
        """One answer per `gap`, `burst` back to back at most (`allowance`), where
        `due_at` holds when each sender's allowance is next spent."""
        due = allowance(due_at.get(sender, -INF), now, gap, burst)
        if due is None:
            return False
        self._remember(due_at, sender, due)
        return True

    def _part_ids_allowed(self) -> int:
        """The ids a member's part may hold at most: a part's bytes of lines, or, in a
        mesh too large for that within half the interval, the larger share that the
        sender's `_tick_push_pull` plans then."""
        members = len(self._members)
        interval = push_pull_scale(self.config.push_pull_interval, members)
        by_size = self._part_bytes_answered() // MIN_PART_LINE
        return max(by_size, math.ceil(members / _most_parts(interval)))

    def _part_bytes_answered(self) -> int:
        """The part size we answer others' parts by: ours, or the default if we send
        none (a node with parts off still answers a mesh that uses them)."""
        return self.config.push_pull_part_bytes or DEFAULT_PART_BYTES

    def _asked_within(self, sender: str, now: float) -> bool:
        """Whether a digest from `sender` answers one we sent it asking for a reply, within
        a push-pull interval. The ask is forgotten either way: one answer per ask."""
        asked = self._asked_reply.pop(sender, None)
        return asked is not None and now - asked < self.config.push_pull_interval

    def _part_asked(self, sender: str, message: Digest, now: float) -> bool:
        """Whether a part from `sender` answers one of the exchange under way that we
        sent it, within a push-pull interval: matched by range, so an answer that comes
        after we sent the next part still counts. One answer per part. A whole digest
        answers every part we sent it (a node without parts answers with one)."""
        if message.first or message.end:
            asked = self._parts_asked.pop((sender, message.first, message.end), None)
        else:
            keys = [key for key in self._parts_asked if key[0] == sender]
            asked = max((self._parts_asked.pop(key) for key in keys), default=None)
        return asked is not None and now - asked < self.config.push_pull_interval

    def _on_delta(self, sender: str, message: Delta, now: float, out: Output) -> None:
        """Apply what a push-pull peer knew newer: revocations, members, then records.
        If it held us failed, it gets our refutation at once, not by chance of gossip."""
        self._heard[sender] = now
        self._heal_pulls.answered(sender)
        incarnation = self._me().incarnation
        if message.crl:
            self._handle_revocations(Revocations(message.crl), now, out)
        for line in message.members:
            self._merge_line(sender, line, now, out, announce_new=line.node_id == sender)
        for signed in message.records:
            self._offer_record(signed, now, out, announce_new=False)
        if self._me().incarnation > incarnation:
            self._send_directly(sender, self._own_alive(self._me()), out)

    def _note_return(self, line: MemberDigest) -> None:
        """A member we hold left or failed speaks to us from a new address, at the
        incarnation we hold (a restart elsewhere: a new port, a new DHCP lease).

        Its old life is gone, so its own signed line says where it is now: our
        answers go there, and it learns from them what we hold and refutes it.
        Otherwise they would go to the old address, and it would never rejoin.
        """
        current = self._members.get(line.node_id)
        if (
            current is not None
            and current.state in (LEFT, DEAD)
            and line.state is ALIVE
            and line.incarnation == current.incarnation
            and line.address
            and line.address != current.address
            and self._keyring.verify_claim(line_claim(line))
        ):
            # A Leave's signature does not cover the address; a failed member's proof
            # is its Alive, now the one at the new address.
            proof = current.proof if current.state is LEFT else line.signature
            self._members.put(dataclasses.replace(current, address=line.address, proof=proof))

    def _merge_line(
        self, sender: str, line: MemberDigest, now: float, out: Output, *, announce_new: bool
    ) -> None:
        """Apply one push-pull line with the gossip rules (memberlist `mergeState`).

        What the line says of liveness, address and leaving is the member's
        own signed claim (`claims.line_claim`) and goes through the same
        handlers as gossip. A suspicion or failure is the sender's word: it
        starts a suspicion in the sender's name (DEAD too, so a peer's stale
        belief, typically the other side of a healed partition, makes the
        member refute instead of killing it), applied here and not passed on.
        A line holding us gone is refuted whoever signed it (`_refute_held_gone`).
        """
        current = self._members.get(line.node_id)
        if (
            current is not None
            and line.node_id != self.node_id
            and not supersedes(line.incarnation, line.state, current.incarnation, current.state)
        ):
            if self._asked_rejoining and self._doubts(current, line, sender, now):
                self._withdraw_failure(current, line, now, out)
            return  # the common case: nothing new, no message objects built
        ahead = current is not None and line.incarnation > current.incarnation
        about_us = line.node_id == self.node_id
        if about_us and self._left:
            self._repeat_leave(sender, line, now, out)
            return
        if about_us and line.state is ALIVE and not ahead:
            return  # what we say of ourselves, echoed back
        if about_us and line.state is not ALIVE:
            self._refute_held_gone(sender, line, now)
            return
        if line.state in (ALIVE, LEFT) or ahead:
            if not line.signature:
                self.stats.lines_unsigned += 1
                return
            claim = line_claim(line)
            if isinstance(claim, Leave):
                self._handle_leave(claim, now, out)
                return
            self._handle_alive(
                claim, now, out, announce_new and line.state is ALIVE, from_line=True
            )
            if line.state is ALIVE:
                return
        if current is not None and current.state is ALIVE and line.node_id != self.node_id:
            # Hearsay: the peer cannot reach it, or missed its refutation. We do
            # not suspect it silently (the member would never hear of it, and
            # our timer would fail it); we probe it ourselves, next.
            self._probes.check(line.node_id)
            return
        suspect = Suspect(line.node_id, line.incarnation, sender)
        self._handle_suspect(suspect, now, out, signed=False)

    def _repeat_leave(self, sender: str, line: MemberDigest, now: float, out: Output) -> None:
        """We left, and `sender` holds us otherwise: our Leave has not reached it, or it
        holds a life of ours from before a restart at a higher incarnation, where a
        Leave at ours is ignored. It gets our Leave directly, signed again at the
        incarnation it holds if that is higher (a line we cannot check moves us at most
        MAX_UNPROVEN_LEAP). Once per sender per gossip interval."""
        if line.state is LEFT:
            return  # it holds us gone, whichever life it saw leave
        me = self._me()
        leave = Leave(self.node_id, me.incarnation, me.proof)
        if line.incarnation > me.incarnation:
            incarnation = min(line.incarnation, me.incarnation + MAX_UNPROVEN_LEAP, MAX_COUNTER)
            leave = self._say_leave(incarnation, me.state_since)
        if self._paced(self._answered, sender, now, self.config.gossip_interval, 1):
            self._send_directly(sender, leave, out)

    def _doubts(self, current: Member, line: MemberDigest, sender: str, now: float) -> bool:
        """Whether `line`, from a member we asked while rejoining, says ALIVE of a member
        we failed before we learnt we had been cut off, at the incarnation we failed it
        (`_rejoin`)."""
        cut_off = self._cut_off_seen
        return (
            current.state is DEAD
            and line.state is ALIVE
            and line.incarnation == current.incarnation
            and cut_off - self.config.reconnect_timeout < current.state_since < cut_off
            and now - self._asked_rejoining.get(sender, -INF) < self.config.push_pull_interval
            and not self._left
        )

    def _withdraw_failure(
        self, current: Member, line: MemberDigest, now: float, out: Output
    ) -> None:
        """Take a member's own signed ALIVE line over the failure we declared while cut
        off, and stop spreading our Dead about it. The line is not passed on: the
        others' view is theirs (they hear the member's own refutation if they too
        hold it failed)."""
        claim = Alive(line.node_id, line.incarnation, line.address, signature=line.signature)
        if not line.signature:
            self.stats.lines_unsigned += 1
        elif not claim.address:
            self.stats.messages_invalid += 1
        elif not self._keyring.verify_claim(claim):
            self.stats.claims_bad_signature += 1
        else:
            self.stats.failures_withdrawn += 1
            self._queue.drop(_member_key(line.node_id))
            # Not a return: its side's view we have; as a pull partner it would bring
            # the same again, where one that comes back by itself brings a side we lack.
            self._set_alive(current, claim, now, out, back=False)

    # --- dissemination ---------------------------------------------------------------------

    def _gossip_round(self, now: float, out: Output) -> None:
        """Send a packet's worth of queued items to each of a few random members, as far
        as the gossip budget allows (`bandwidth.py`)."""
        if not self._queue or self._budget.available(now) < MIN_ITEM_SIZE:
            return
        dead_time = self.config.gossip_to_the_dead_time

        def is_target(member: Member) -> bool:
            if member.node_id == self.node_id:
                return False
            return member.state in _LIVE or now - member.state_since < dead_time

        targets = self._members.sample(self._rng, self.config.gossip_nodes, is_target)
        limit = self._retransmit_limit()
        for target in targets:
            budget = min(self.config.packet_budget, int(self._budget.available(now)))
            if budget < MIN_ITEM_SIZE:
                self.stats.gossip_deferred += 1
                break
            items, size = self._queue.take_sized(budget, limit)
            if not items:
                break
            self._budget.spend(size)
            self.stats.gossip_sent += len(items)
            node_id = target.node_id
            out.sends.extend([(node_id, item) for item in items])

    def _piggyback(self, now: float) -> tuple[Gossip, ...]:
        """Gossip items for one probe message, as far as the gossip budget allows
        (empty when nothing is queued or the budget is spent)."""
        if not self._queue:
            return ()
        budget = min(self.config.packet_budget - PROBE_OVERHEAD, int(self._budget.available(now)))
        if budget < MIN_ITEM_SIZE:
            return ()
        items, size = self._queue.take_sized(budget, self._retransmit_limit())
        self._budget.spend(size)
        self.stats.piggybacked += len(items)
        return tuple(items)

    def _retransmit_limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self._members))

    # --- small helpers -----------------------------------------------------------------------

    def _me(self) -> Member:
        me = self._members.get(self.node_id)
        assert me is not None  # we are always in our own table
        return me

    def _state_since(self, node_id: str) -> float:
        member = self._members.get(node_id)
        return member.state_since if member is not None else -INF

    def _scaled(self, timeout: float) -> float:
        """A probe timing stretched by our health score (Lifeguard only)."""
        return self._awareness.scale(timeout) if self.config.lifeguard else timeout

    def _health(self, delta: int) -> None:
        if self.config.lifeguard:
            self._awareness.apply_delta(delta)

    def _info(self, member: Member) -> MemberInfo:
        return MemberInfo(
            node_id=member.node_id,
            address=member.address,
            incarnation=member.incarnation,
            state=member.state,
            state_since=member.state_since,
            last_heard=self._heard.get(member.node_id, member.state_since),
        )


def _member_key(node_id: str) -> BroadcastKey:
    return node_id  # the member's own id: nothing allocated per queued item


def _record_key(node_id: str) -> BroadcastKey:
    return ("record", node_id)


def _two_addresses(current: Member | None, message: Alive) -> bool:
    """An Alive at the incarnation we hold, from another address (the rest is old news)."""
    return (
        current is not None
        and current.state is not LEFT
        and message.incarnation == current.incarnation
        and message.address != current.address
    )


def _valid_claim(node_id: str, incarnation: int) -> bool:
    return bool(node_id) and 0 <= incarnation <= MAX_COUNTER


_ACCUSATIONS = (Suspect, Dead)  # claims that the accused answers (`_answer_accusation`)
_REVOCATIONS_KEY: BroadcastKey = ("revocations", "")  # one list: a newer one replaces it
ClaimT = TypeVar("ClaimT", Alive, Suspect, Dead, Leave)
MAX_UNPROVEN_LEAP = 64  # incarnations a refutation may jump over a line it cannot check
CLASH_WINDOW = 60.0  # seconds: an address flipping back within this is two nodes, not a move
MAX_TRACKED_MOVES = 4096  # members whose last address change is remembered
MAX_HELD_RECORDS = 1024  # records kept while their owner is not yet a member
MAX_AWAITED = 1024  # Alives kept while their node's certificate is asked for
REJOIN_PULL_GAP = 2.0  # seconds between our heal pulls while we rejoin (`_on_return`)
HEAL_PULL_SPREAD = 10.0  # seconds within which a push-pull with a returned member goes out
PART_GAP = 1.0  # seconds between the parts of a push-pull exchange
DEFAULT_PART_BYTES = MembershipConfig().push_pull_part_bytes
MIN_PART_LINE = 40  # bytes a member takes in a part at least (`pushpull.plan_parts`)
PART_ANSWER_PARTS = 4  # a part's answer is at most one Delta of this many parts' bytes
PART_BURST = 2  # a member's parts answered back to back at most (jitter), then one a gap
PULL_ANSWER_GAP = 0.25  # seconds between the heal pulls we answer, all members together ...
PULL_BURST = 4  # ... with this many back to back at most
EXCHANGE_BURST = 3  # a member's whole exchanges answered back to back at most (its joins)
MAX_RECHECKS = 64  # failed members tried again after we learn we were held failed
ANNOUNCE_BATCH = 50  # members sent our new life's Alive per gossip interval
MAX_UNDAMPED_PULLS = 6  # heal pulls a rejoining may plan on a direct word, whatever the coin
JOIN_ANSWER_WAIT = 2.0  # seconds the seed asked for the mesh has to answer (`joining.py`)
CERTIFICATE_WAIT = 1.0  # seconds before the same certificate is asked for again
CERTIFICATE_ATTEMPTS = 3  # members asked for one certificate before we give up


GossipHandler = Callable[[MembershipNode, Any, float, Output, bool], None]

_GOSSIP_HANDLERS: dict[type, GossipHandler] = {
    Alive: MembershipNode._handle_alive,
    Suspect: MembershipNode._handle_suspect,
    Dead: MembershipNode._handle_dead,
    Leave: MembershipNode._handle_leave,
    RecordUpdate: MembershipNode._handle_record,
    Revocations: MembershipNode._handle_revocations,
}

_HANDLERS: dict[type, Handler] = {
    Ping: MembershipNode._on_ping,
    IndirectPing: MembershipNode._on_indirect_ping,
    Ack: MembershipNode._on_ack,
    Nack: MembershipNode._on_nack,
    Digest: MembershipNode._on_digest,
    Delta: MembershipNode._on_delta,
    CertificateRequest: MembershipNode._on_certificate_request,
    Certificates: MembershipNode._on_certificates,
    Alive: MembershipNode._on_gossip_message,
    Suspect: MembershipNode._on_gossip_message,
    Dead: MembershipNode._on_gossip_message,
    Leave: MembershipNode._on_gossip_message,
    RecordUpdate: MembershipNode._on_gossip_message,
    Revocations: MembershipNode._on_gossip_message,
}


def allowance(due_at: float, now: float, gap: float, burst: int) -> float | None:
    """A virtual token bucket (GCRA) of one answer per `gap`, `burst` back to back at
    most: when the allowance is next spent if one more is answered at `now` (`due_at`:
    when it was next spent before), or None if it is spent."""
    due = max(due_at, now)
    if due - now > (burst - 1) * gap:
        return None
    return due + gap


def _most_parts(interval: float) -> int:
    """The parts an exchange may have: sent one a `PART_GAP`, within half `interval`."""
    return max(1, int(interval / (2 * PART_GAP)))
