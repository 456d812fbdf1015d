"""What a draining host moves next, when it tries again, and what it has done, sans-IO.

A drain empties its host by live migration: each look (every `interval`
seconds) it offers the running (or paused) VMs, the heaviest first (each
goes to the least loaded host that takes it, so the big ones get the
coolest), one move at a time,
while outbound slots are free; its driver places each move and starts it,
and tells the core what came of it. VMs of one affinity group move as one:
the move offered is every movable VM of the group here, placed on one host
with room for all and started as one group migration, so a drain never
splits what must stay together (a group larger than the outbound limit
could never go whole: its VMs go one by one, and the rebalancer brings them
together again). A VM that found no target,
whose migration was refused or failed, or whose location is in doubt waits
`retry_after` seconds before it is offered again; one that found no target
only because a target does not show this host's last migration there yet
waits one `interval` (that target opens within seconds).

The same class runs in the agent (`agent/drain.py`, which places with
`MigrationCore.place` and starts through the migrator) and in the
rebalancing simulator (which places on its view of the mesh and starts
through the host's own `MigrationCore`), so the simulated drain is the agent's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..migration.saga import MOVABLE

STAYING = ("running", "paused", "blocked", "unknown")
"""VM states that keep a drain from being done (stopped VMs are not moved: no memory)."""

COMMITTED = "committed"  # the outcome of a migration that moved its VM
LOOK_INTERVAL = 1.0  # seconds between a drain's looks at what is left to move
RETRY_DELAY = 10.0  # seconds before a VM that could not be moved is tried again


@dataclass(frozen=True, slots=True)
class DrainTiming:
    """How often a drain looks, and how long a VM that could not move waits."""

    interval: float = LOOK_INTERVAL  # seconds between looks (and a closed target's wait)
    retry_after: float = RETRY_DELAY  # seconds before a VM that could not move is tried again

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.retry_after > 0:
            raise ValueError("interval and retry_after must be positive")


@dataclass(frozen=True, slots=True)
class Ended:
    """A migration's end, as the host's migration records hold it."""

    vm: str  # the VM it moved (or tried to)
    outcome: str  # "committed", or why it did not move the VM ("aborted", "refused", ...)
    reason: str = ""  # the migration's own explanation


class DrainedHost(Protocol):
    """What the drain core reads of its host (the agent's migrator, the simulator's cluster)."""

    def vm_states(self) -> Mapping[str, str]:
        """VM name -> state, as this host's hypervisor reports them."""
        ...

    def busy(self, vm: str) -> bool:
        """Whether an outbound migration of `vm` is running."""
        ...

    def arriving(self, vm: str) -> bool:
        """Whether `vm` is still arriving here (it cannot be moved on yet)."""
        ...

    def doubt(self, vm: str) -> str | None:
        """Why `vm`'s location is the operator's call (None: it is not in doubt)."""
        ...

    def outbound(self) -> int:
        """Outbound migrations running now."""
        ...

    def ended(self, migration_id: str) -> Ended | None:
        """How `migration_id` ended (None: still running, or no longer remembered)."""
        ...

    def group_of(self, vm: str) -> str:
        """`vm`'s affinity group ("" for none)."""
        ...

    def load(self, vm: str) -> float:
        """`vm`'s CPU load (cores), as the host last measured it."""
        ...


class DrainCore:
    """One host's drain decisions: which VM next, why the rest wait, what has moved.

    A look begins with `look(now, host)`; then `next_move(now, host)` is asked
    until it answers None, and every move it offers (one VM, or an affinity
    group's VMs here) is answered with exactly one of `started`, `no_target` or
    `refused`. A VM is offered at most once a look.
    """

    def __init__(self, max_outbound: int, timing: DrainTiming | None = None) -> None:
        self.max_outbound = max_outbound  # migrations this host may run at once
        self.timing = timing or DrainTiming()
        self._moves: dict[str, str] = {}  # VM -> id of the drain migration moving it (latest)
        # The ids of every migration this drain started: `_moves` holds only each VM's
        # latest attempt, and what the drain moved is every one of them that committed.
        self._started: set[str] = set()
        self._blocked: dict[str, tuple[str, float]] = {}  # VM -> (why it waits, retry time)
        self._offered: set[str] = set()  # VMs offered in the current look

    def begin(self) -> None:
        """A new drain: forget what an earlier one did."""
        self._moves.clear()
        self._started.clear()
        self._blocked.clear()
        self._offered.clear()

    # --- a look --------------------------------------------------------------------

    def look(self, now: float, host: DrainedHost) -> None:
        """Start a look: a drain migration that failed since the last one makes its VM wait."""
        self._offered.clear()
        for vm, migration_id in list(self._moves.items()):
            end = host.ended(migration_id)
            if end is not None and end.outcome and end.outcome != COMMITTED:
                why = f"migration {migration_id} {end.outcome}: {end.reason or 'no reason given'}"
                self._wait(vm, why, now, self.timing.retry_after)
                del self._moves[vm]

    def next_move(self, now: float, host: DrainedHost) -> tuple[str, ...] | None:
        """The next VMs to move now, together (None: nothing left to start in this look).

        The heaviest first (CPU load), then by name: a heavy VM placed late finds the
        cool hosts already warmed by light ones. A VM that runs (or is paused) here, is
        not migrating or arriving,
        was not moved by this drain already (the record lists it until the next
        refresh), is not in doubt and is not waiting to retry, while an outbound
        slot is free; with it, the other VMs of its affinity group here, all of
        which must be movable now, and a slot for each."""
        states = host.vm_states()
        moved = self.moved(host)
        for vm in sorted(states, key=lambda name: (-host.load(name), name)):
            if vm in self._offered or not self._movable(vm, states, moved, now, host):
                continue
            move = self._with_group(vm, states, moved, now, host)
            if move is None:
                continue
            if host.outbound() + len(move) > self.max_outbound:
                return None
            self._offered.update(move)
            return move
        return None

    def _movable(
        self, vm: str, states: Mapping[str, str], moved: set[str], now: float, host: DrainedHost
    ) -> bool:
        if states.get(vm) not in MOVABLE or host.busy(vm) or host.arriving(vm) or vm in moved:
            return False
        doubt = host.doubt(vm)
        if doubt is not None:
            self._wait(vm, doubt, now, self.timing.retry_after)
            return False
        return not (vm in self._blocked and now < self._blocked[vm][1])

    def _with_group(
        self, vm: str, states: Mapping[str, str], moved: set[str], now: float, host: DrainedHost
    ) -> tuple[str, ...] | None:
        """`vm` and the other VMs of its affinity group still here, or None while one of
        them cannot move now (the group waits for it)."""
        group = host.group_of(vm)
        if not group:
            return (vm,)
        members = sorted(
            other
            for other, state in states.items()
            if state in MOVABLE and other not in moved and host.group_of(other) == group
        )
        if len(members) > self.max_outbound:
            return (vm,)  # it could never go whole: one by one, rejoined by the rebalancer
        if any(not self._movable(m, states, moved, now, host) for m in members):
            return None
        return tuple(members)

    def started(self, move: Sequence[str], migration_ids: Sequence[str]) -> None:
        """The offered move's migrations started, one id per VM in the order offered."""
        for vm, migration_id in zip(move, migration_ids, strict=True):
            self._blocked.pop(vm, None)
            self._moves[vm] = migration_id
            self._started.add(migration_id)

    def no_target(
        self, move: Sequence[str], why: str, now: float, closed: Collection[str] = ()
    ) -> None:
        """No host takes the offered move now; `closed`: targets that only wait to show this
        host's last migration there (they open within seconds: look again soon)."""
        delay = self.timing.interval if closed else self.timing.retry_after
        for vm in move:
            self._wait(vm, why, now, delay)

    def refused(self, move: Sequence[str], why: str, now: float) -> None:
        """The offered move was refused before it started."""
        for vm in move:
            self._wait(vm, why, now, self.timing.retry_after)

    def _wait(self, vm: str, why: str, now: float, delay: float) -> None:
        self._blocked[vm] = (why, now + delay)

    # --- what the drain has done -------------------------------------------------------

    def moved(self, host: DrainedHost) -> set[str]:
        """The VMs a migration of this drain moved away (committed)."""
        ends = (host.ended(migration_id) for migration_id in self._started)
        return {end.vm for end in ends if end is not None and end.outcome == COMMITTED}

    def moving(self) -> dict[str, str]:
        """VM -> id of the latest drain migration started for it."""
        return dict(self._moves)

    def blocked(self, present: Collection[str]) -> dict[str, str]:
        """Why each VM still here waits (a VM no longer here waits for nothing)."""
        return {vm: why for vm, (why, _) in sorted(self._blocked.items()) if vm in present}


def staying(vm_states: Mapping[str, str]) -> list[str]:
    """The VMs that keep a drain from being done, by name."""
    return sorted(name for name, state in vm_states.items() if state in STAYING)


def not_moved(vm_states: Mapping[str, str]) -> dict[str, str]:
    """The VMs a drain leaves where they are (stopped), with their states."""
    return {name: state for name, state in sorted(vm_states.items()) if state not in STAYING}
