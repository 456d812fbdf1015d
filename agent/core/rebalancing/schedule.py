"""When a host runs its next rebalancing round, sans-IO (the planner is `planner.py`).

A host plans every `interval` seconds, a whole interval after its last round
(or skipped round: a paused or disabled rebalancer only notes where it
stands). It plans sooner, as soon as it hears of it, when an outbound slot is
free and either

- one of its outbound migrations has ended since the last round and its own
  record no longer lists the same VMs (planning on a record that still lists
  the VM that left would count its load here and move too much), or
- a record of its own newer than the last round's puts it above its shedding
  line (each version judged once: the judgement scans the whole view).

A hot host would otherwise leave a freed slot idle, or a new hotspot
unattended, until its next timed round. The agent's rebalancer asks this
class on every wake-up (its record republished, its migrator's change, a
short poll); the rebalancing simulator asks it at the same events, so the
simulated mesh plans when the agent would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from novacron.protocol.messages import NodeRecord


@dataclass(frozen=True, slots=True)
class Seen:
    """What a round planned on: its host's outbound migrations and own record."""

    outbound: int  # outbound migrations running
    vms: frozenset[str]  # the VMs the host's own record listed
    version: int  # that record's version (-1: no record yet)


def seen(own: NodeRecord | None, outbound: int) -> Seen:
    """What a round starting now plans on."""
    if own is None:
        return Seen(outbound, frozenset(), -1)
    return Seen(outbound, frozenset(vm.name for vm in own.vms), own.version)


class RebalanceSchedule:
    """One host's rebalancing timer and the news that makes a round due before it."""

    def __init__(self, interval: float, max_outbound: int, first_round: float = math.inf) -> None:
        if not interval > 0 or max_outbound < 1:
            raise ValueError("interval must be positive and max_outbound at least 1")
        self.interval = interval  # seconds between timed rounds
        self.max_outbound = max_outbound  # a host with no free slot has nothing to plan
        self.next_round = first_round  # when the next timed round falls due
        self._after = Seen(0, frozenset(), -1)  # what the last round left: the slots it filled
        self._judged = (-1, False)  # the latest own version judged, and whether it was hot

    def wait_from(self, now: float) -> None:
        """The next timed round is a whole interval after `now`."""
        self.next_round = now + self.interval

    def timer_due(self, now: float) -> bool:
        """Whether the timed round has come."""
        return now >= self.next_round

    def due_now(self, outbound: int, own: NodeRecord | None, hot: Callable[[], bool]) -> bool:
        """Whether to plan before the timer: a free outbound slot, and a freed slot or a
        newer record of its own that `hot` (asked at most once a version) finds over the line."""
        if outbound >= self.max_outbound:
            return False
        return self.slot_freed(outbound, own) or self.newly_hot(own, hot)

    def slot_freed(self, outbound: int, own: NodeRecord | None) -> bool:
        """An outbound migration ended since the last round, and the host's own record no
        longer lists the same VMs."""
        if outbound >= self._after.outbound:
            return False
        return seen(own, outbound).vms != self._after.vms

    def newly_hot(self, own: NodeRecord | None, hot: Callable[[], bool]) -> bool:
        """A record of its own newer than the last round's puts the host over its line."""
        if own is None or own.version == self._after.version:
            return False
        if self._judged[0] != own.version:
            self._judged = (own.version, hot())
        return self._judged[1]

    def planned(self, now: float, before: Seen, started: int) -> None:
        """A round that planned on `before` ended at `now` and started `started` moves."""
        self._after = Seen(before.outbound + started, before.vms, before.version)
        self.wait_from(now)

    def skipped(self, now: float, current: Seen) -> None:
        """No round ran (paused, or disabled): note the slots as they are, so that news
        already heard does not wake the host again, and wait a whole interval."""
        self._after = current
        self.wait_from(now)
