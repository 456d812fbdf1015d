"""The discrete-event engine: drives sans-IO nodes with a virtual clock and network.

A node is anything with `receive(sender, message, now)`, `tick(now)` and
`next_deadline()` returning an `Output` (the real `MembershipNode` or a
stand-in in tests). The engine never looks inside a node; it only

- delivers packets: `receive(...)` at the time the network says they arrive;
- wakes nodes: `tick(now)` at the node's `next_deadline()`;
- turns each `Output` into packets (through the network and the byte meter)
  and hands its events to listeners (the scenario's measurements).

Datagrams: the core sends a gossip round as consecutive messages to the same
peer and lets the driver coalesce them. The engine does the same: consecutive
sends to one destination in one `Output` form one datagram, which the network
loses or delivers as a whole, with one latency, as one heap entry (so they
arrive in order, and a gossip round costs one heap operation per peer).
The byte meter still counts each message's own encoding.

One pending wake-up per node, lazily invalidated: each node has a generation
number stamped on its wake-up entry. After a `receive`, the engine re-reads
`next_deadline()` and pushes a new wake-up only if it is earlier than the
pending one (bumping the generation, so the old entry is skipped when it pops).
A wake-up that turns out to be early is harmless: `tick` finds nothing due and
the node is rescheduled. This keeps the heap at about one entry per node plus
the packets in flight, instead of one entry per timer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Protocol

from novacron.agent.core.events import Event, Output
from novacron.protocol.messages import Message

from .clock import VirtualClock
from .metrics import ByteMeter
from .network import Network

DELIVER = 0  # a datagram arrives: a=destination, b=sender, c=list of messages
WAKE = 1  # a node's deadline: a=node id, b=generation
ACTION = 2  # a scenario action: a=callable taking no arguments

INF = float("inf")
DEADLINE_EPSILON = 1e-6  # nudge for a node whose deadline did not move past now

Listener = Callable[[float, str, Event], None]
"""Called as listener(now, observer node id, event) for every event a node reports."""


class SimNode(Protocol):
    """What the engine needs from a node: the sans-IO core's driving surface."""

    def receive(self, sender: str, message: Message, now: float) -> Output: ...

    def tick(self, now: float) -> Output: ...

    def next_deadline(self) -> float: ...


class Engine:
    """Runs nodes on one virtual clock; owns which nodes exist and are up."""

    def __init__(self, network: Network, meter: ByteMeter, clock: VirtualClock | None = None):
        self.clock = clock or VirtualClock()
        self.network = network
        self.meter = meter
        self.nodes: dict[str, SimNode] = {}  # live (not crashed) nodes by id
        self.listeners: list[Listener] = []  # measurement callbacks for events
        self.stats: Counter[str] = Counter()  # ticks, receives, dropped-on-arrival, ...
        self.datagrams = 0  # datagrams sent: consecutive sends to one destination coalesced
        self._generation: dict[str, int] = {}  # node -> generation of its valid wake-up
        self._wake_at: dict[str, float] = {}  # node -> time of its valid wake-up
        self._stopped = False

    @property
    def now(self) -> float:
        """Current simulated time."""
        return self.clock.now

    # --- membership of the simulation ---------------------------------------

    def add(self, node_id: str, node: SimNode, output: Output | None = None) -> None:
        """Start driving `node` (new, or a restart of a crashed id) from now on."""
        self.nodes[node_id] = node
        self.network.restore(node_id)
        self._generation[node_id] = self._generation.get(node_id, 0) + 1
        self._wake_at[node_id] = INF
        if output is not None:
            self.apply(node_id, output)
        self._reschedule(node_id, node.next_deadline(), after_tick=False)

    def crash(self, node_id: str) -> None:
        """Stop `node_id` dead: no more ticks, packets to it are dropped."""
        self.nodes.pop(node_id, None)
        self.network.crash(node_id)
        self._generation[node_id] = self._generation.get(node_id, 0) + 1
        self._wake_at[node_id] = INF

    def feed(self, node_id: str, output: Output) -> None:
        """Apply the output of a call the scenario made itself (update_record, leave)."""
        self.apply(node_id, output)
        node = self.nodes.get(node_id)
        if node is not None:
            self._reschedule_if_earlier(node_id, node)

    def at(self, time: float, action: Callable[[], None]) -> None:
        """Run `action()` at simulated `time` (crashes, partitions, updates...)."""
        self.clock.push(time, ACTION, action)

    def stop(self) -> None:
        """Ask `run` to return after the current entry (a scenario reached its goal)."""
        self._stopped = True

    # --- driving ---------------------------------------------------------------

    def apply(self, node_id: str, output: Output) -> None:
        """Send what a node asked to send and report what it says happened."""
        clock = self.clock
        now = clock.now
        if output.sends:
            meter = self.meter
            meter.at(now, len(self.nodes))
            meter.count_sends(node_id, output.sends)
            route = self.network.route
            heap = clock.heap
            previous: str | None = None
            datagram: list[Message] | None = None
            for dest, message in output.sends:
                if dest == previous:  # consecutive sends to one peer share a datagram
                    if datagram is not None:
                        datagram.append(message)
                    continue
                previous = dest
                self.datagrams += 1
                arrival = route(node_id, dest, now)
                if arrival is None:
                    datagram = None
                    continue
                # Inlined clock.push (arrival is never before now). The list is
                # filled after the push; the heap never compares it (seq is unique).
                datagram = [message]
                clock.seq += 1
                heappush(heap, (arrival, clock.seq, DELIVER, dest, node_id, datagram))
        if output.events and self.listeners:
            for event in output.events:
                for listener in self.listeners:
                    listener(now, node_id, event)

    def run(self, until: float) -> float:
        """Process everything up to simulated time `until` (or a `stop()`); return now.

        The hot loop of the simulator: heap access, dispatch and rescheduling
        are inlined on purpose (a method call per packet is measurable here).
        """
        self._stopped = False
        clock = self.clock
        heap = clock.heap
        nodes = self.nodes
        generation = self._generation
        wake_at = self._wake_at
        apply = self.apply
        reschedule = self._reschedule
        receives = ticks = 0
        try:
            while heap and heap[0][0] <= until and not self._stopped:
                now, _, kind, a, b, c = heappop(heap)
                clock.now = now
                if kind == DELIVER:
                    node = nodes.get(a)
                    if node is None:
                        self.stats["dropped-on-arrival"] += 1
                        continue
                    for message in c:
                        receives += 1
                        apply(a, node.receive(b, message, now))
                    deadline = node.next_deadline()
                    if deadline < wake_at[a]:
                        reschedule(a, deadline, after_tick=False)
                elif kind == WAKE:
                    if generation.get(a) != b:
                        continue  # superseded by an earlier wake-up, or the node crashed
                    node = nodes[a]
                    wake_at[a] = INF
                    ticks += 1
                    apply(a, node.tick(now))
                    reschedule(a, node.next_deadline(), after_tick=True)
                else:
                    a()
        finally:
            self.stats["receives"] += receives
            self.stats["ticks"] += ticks
        if not self._stopped and clock.now < until:
            clock.now = until
        return clock.now

    def _reschedule_if_earlier(self, node_id: str, node: SimNode) -> None:
        deadline = node.next_deadline()
        if deadline < self._wake_at[node_id]:
            self._reschedule(node_id, deadline, after_tick=False)

    def _reschedule(self, node_id: str, deadline: float, *, after_tick: bool) -> None:
        """Make `deadline` the node's one valid wake-up (older entries go stale)."""
        if deadline == INF:
            return
        now = self.clock.now
        if after_tick and deadline <= now:
            # Right after a tick the deadline should have moved past now; if not,
            # nudge it so a core bug cannot spin the simulation forever.
            self.stats["deadline-not-advanced"] += 1
            deadline = now + DEADLINE_EPSILON
        generation = self._generation[node_id] + 1
        self._generation[node_id] = generation
        self._wake_at[node_id] = deadline
        self.clock.push(deadline, WAKE, node_id, generation)
