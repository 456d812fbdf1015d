"""Automatic rebalancing on one host: runs the planner, starts its moves, explains them.

Every `interval` seconds the agent asks `core/rebalance.plan_round` what this
host should do, from its own gossiped view, and starts the moves it gets
(purpose "rebalance") through the migrator, which applies every limit and
reservation as for a manual migration; an affinity group's move starts all
its VMs with one proposal, the target reserving room for all or none. When a
round is due, sooner than the interval when one of its migrations ended or a
new record of its own shows it hot, is `core/rebalance_schedule.RebalanceSchedule`'s
call; this loop asks it whenever it hears news (the daemon's `poke` when this
host's record is republished, the migrator's next change) or its short poll comes.

The planner's cooldown needs to know which VMs moved lately: a VM's last
move is the end of the committed migration that brought it here (or took it
from here), from the migration core's history, or now while one is still
arriving.

Pause and resume are mesh-wide: the setting travels in every host's record
(its typed `rebalance` field: paused or not, since when, wall clock); each
agent adopts the newest it sees and republishes it, so one `nova rebalance
pause` on any host stops every host within a gossip round, and the setting
survives the host it was given on.

What the rebalancer answers is typed (`RebalanceStatus`, `RebalancePlan`); the
local API alone turns them into JSON (`to_json`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from novacron.protocol.messages import MemberState, NodeRecord, RebalanceSetting

from .core.membership.members import MemberInfo
from .core.migration.policy import PolicyOverrides
from .core.observability.cloud_events import RebalanceMoved, RebalanceRefused
from .core.observability.tracing import Span, SpanKind
from .core.rebalancing.planner import (
    Decision,
    Move,
    RebalanceConfig,
    Standing,
    over_line,
    plan_round,
    standing,
)
from .core.rebalancing.schedule import RebalanceSchedule, Seen, seen
from .core.refusals import Refused
from .migrator import Migrator
from .tasks import cancel_and_wait

log = logging.getLogger("novacron.rebalance")

INTERVAL = 5.0  # seconds between planning rounds
POLL = 0.25  # seconds between looks for a freed outbound slot when no news wakes the loop
HISTORY = 50  # moves kept for `nova rebalance status`


class MeshState(Protocol):
    """What the rebalancer reads of the membership core (`MembershipNode` fits)."""

    def records(self) -> Mapping[str, NodeRecord]: ...

    def members(self) -> Sequence[MemberInfo]: ...


@dataclass(slots=True)
class RebalanceCounts:
    """What the rebalancing loop did since the agent started."""

    rounds: int = 0  # planning rounds run (not paused, not disabled)
    planned: int = 0  # moves the rounds chose
    started: int = 0  # of those, migrations started
    refused: int = 0  # of those, refused when starting (limits, reservations, a VM busy)


@dataclass(frozen=True, slots=True)
class StartedMove:
    """One VM's migration a round started, with the numbers that chose it."""

    migration_id: str
    vm: str
    source: str
    target: str
    reason: str  # why the host shed this VM (the planner's words)
    benefit: float  # drop in the sum of squared utilization deviations
    cost_mib: float  # the planner's migration cost, MiB-equivalents
    wall_time: float  # when it started (unix seconds, wall clock)

    def to_json(self) -> dict[str, Any]:
        # Rounded here, not when kept: the numbers stay exact inside the agent.
        return {
            "migration_id": self.migration_id,
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "benefit": round(self.benefit, 6),
            "cost_mib": round(self.cost_mib, 1),
            "wall_time": round(self.wall_time, 3),
        }


@dataclass(frozen=True, slots=True)
class MoveRow:
    """A started move as `nova rebalance status` lists it: with how its migration went."""

    move: StartedMove
    outcome: str  # the migration's outcome, "running", or "unknown" once it is forgotten
    outcome_reason: str  # why it ended so ("" when running, committed or forgotten)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.move.to_json(),
            "outcome": self.outcome,
            "outcome_reason": self.outcome_reason,
        }


@dataclass(frozen=True, slots=True)
class RebalanceStatus:
    """This host's rebalancing: switched on or not, the mesh-wide setting, the last round's
    decision and the recent moves (newest first)."""

    node_id: str
    enabled: bool  # this agent's configuration: False never plans
    setting: RebalanceSetting  # the mesh-wide pause or resume this host follows
    last_decision: Decision | None  # None before the first round
    moves: tuple[MoveRow, ...] = ()

    @property
    def paused(self) -> bool:
        return self.setting.paused

    def to_json(self) -> dict[str, Any]:
        last = self.last_decision
        return {
            "node_id": self.node_id,
            "enabled": self.enabled,
            "paused": self.paused,
            "setting": setting_text(self.setting),
            "last_decision": decision_json(last) if last is not None else None,
            "moves": [row.to_json() for row in self.moves],
        }


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """What this host would do now (`nova rebalance plan`): the moves a round would start,
    and the planner's last decision, which says why the round stopped there."""

    decision: Decision
    moves: tuple[Move, ...] = ()

    @property
    def move(self) -> Move | None:
        """The round's first move (it explains the round), else the decision's."""
        return self.moves[0] if self.moves else self.decision.move

    @property
    def reason(self) -> str:
        """Why the host sheds load when it moves; why it moves nothing otherwise."""
        return self.moves[0].reason if self.moves else self.decision.reason

    def to_json(self) -> dict[str, Any]:
        # The decision's keys in its order, the first move's in place of the decision's own.
        move = self.move
        return {
            **decision_json(self.decision),
            "move": dataclasses.asdict(move) if move is not None else None,
            "reason": self.reason,
            "moves": [dataclasses.asdict(m) for m in self.moves],
        }


class Rebalancer:
    """One host's rebalancing loop, its history, and the mesh-wide pause setting."""

    def __init__(
        self,
        migrator: Migrator,
        membership: Callable[[], MeshState],
        *,
        publish: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
        enabled: bool = True,
        interval: float = INTERVAL,
        config: RebalanceConfig | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._migrator = migrator
        self._membership = membership
        self._publish = publish  # republishes this host's record (with the setting)
        self._clock = clock  # the cores' clock (migration history uses it)
        self._wall = wall_clock  # orders pause/resume across hosts
        self.enabled = enabled  # this agent's configuration: False never plans
        limits = migrator.core.config.limits
        self.config = config or RebalanceConfig(
            max_outbound=limits.max_outbound, max_inbound=limits.max_inbound
        )
        # When rounds are due, on the event loop's clock (set when the loop starts).
        self._schedule = RebalanceSchedule(interval, self.config.max_outbound)
        self._rng = rng or random.Random()
        self.setting = RebalanceSetting()  # active, never set: until the mesh says otherwise
        self.last: Decision | None = None  # the latest round's decision
        self.moves: deque[StartedMove] = deque(maxlen=HISTORY)  # newest first
        self.counts = RebalanceCounts()  # since start, for metrics
        self.on_event: Callable[[object], None] = lambda event: None  # the event stream's
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()  # this host's record was republished

    # --- lifecycle -----------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between timed rounds."""
        return self._schedule.interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._schedule.interval = seconds

    def start(self) -> None:
        self._schedule.wait_from(asyncio.get_running_loop().time())
        self._task = asyncio.create_task(self._loop(), name="rebalance")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    @property
    def paused(self) -> bool:
        return self.setting.paused

    # --- the local API's side ------------------------------------------------------

    def status(self) -> RebalanceStatus:
        """Recent moves with reasons and outcomes, and what the last round decided."""
        rows = {m.info.migration_id: m.info for m in self._migrator.migrations()}
        moves = []
        for move in self.moves:
            row = rows.get(move.migration_id)
            outcome = (row.outcome or "running") if row is not None else "unknown"
            reason = row.reason if row is not None else ""
            moves.append(MoveRow(move, outcome, reason))
        return RebalanceStatus(
            self._migrator.node_id, self.enabled, self.setting, self.last, tuple(moves)
        )

    def preview(self) -> RebalancePlan:
        """What this host would do now, without doing it (a copy of the RNG: no side effect)."""
        rng = random.Random()
        rng.setstate(self._rng.getstate())
        moves, decision = self._decide(rng)
        return RebalancePlan(decision, tuple(moves))

    async def pause(self) -> RebalanceStatus:
        await self._set(RebalanceSetting(paused=True, since=self._wall()))
        return self.status()

    async def resume(self) -> RebalanceStatus:
        await self._set(RebalanceSetting(paused=False, since=self._wall()))
        return self.status()

    # --- the loop ------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wait()
            await self.adopt_mesh_setting()
            if self.enabled and not self.paused:
                await self.round()
            else:
                self._schedule.skipped(asyncio.get_running_loop().time(), self._snapshot())

    def poke(self) -> None:
        """This host's record was republished: look at once whether to plan now."""
        self._poked.set()

    async def _wait(self) -> None:
        """Until the next round: its timer, or sooner once planning is due now."""
        loop = asyncio.get_running_loop()
        while (left := self._schedule.next_round - loop.time()) > 0:
            await self._news(min(POLL, left))
            if self.due_now():
                return

    async def _news(self, timeout: float) -> None:
        """Until this host's record is republished, its migrator changes, or `timeout`."""
        if self._poked.is_set():
            self._poked.clear()
            return
        waits = {
            asyncio.ensure_future(self._poked.wait()),
            asyncio.ensure_future(self._migrator.wait_change(timeout)),
        }
        try:
            await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:  # also when the loop is cancelled: leave no waiter behind
            for task in waits:
                task.cancel()
        self._poked.clear()

    def due_now(self) -> bool:
        """Whether to plan before the timer (the schedule's rule, on this host's state)."""
        return self._schedule.due_now(self._migrator.core.outbound(), self._own(), self._hot)

    def slot_freed(self) -> bool:
        """Whether an outbound migration ended since the last round and this host's record
        no longer lists the same VMs."""
        return self._schedule.slot_freed(self._migrator.core.outbound(), self._own())

    def _hot(self) -> bool:
        """Whether this host is above its shedding line in its view of the mesh now."""
        core = self._membership()
        alive = {m.node_id for m in core.members() if m.state is MemberState.ALIVE}
        return over_line(self._migrator.node_id, core.records(), alive, self._busy(), self.config)

    def _own(self) -> NodeRecord | None:
        return self._membership().records().get(self._migrator.node_id)

    async def round(self) -> None:
        """One planning round: decide, and start every move the free slots allow."""
        before = self._snapshot()  # what this round plans on; news during its awaits is news
        moves, decision = self._decide(self._rng)
        self.last = decision
        self.counts.rounds += 1
        self.counts.planned += len(moves)
        span = self._round_span(moves)
        started = 0
        for move in moves:
            self._join(span, move.vms)
            try:
                # An affinity group's VMs go as one: room for all of them, or none moves.
                mids = await self._migrator.start_group_migration(
                    move.vms, move.target, PolicyOverrides(), "rebalance"
                )
            except Refused as exc:
                self.on_event(RebalanceRefused(tuple(move.vms), move.target, str(exc)))
                self.counts.refused += 1
                self.last = dataclasses.replace(decision, reason=f"{move.reason}; refused: {exc}")
                log.info(
                    "rebalance move refused",
                    extra={"fields": {"vm": "+".join(move.vms), "why": str(exc)}},
                )
                continue
            for vm, mid in zip(move.vms, mids, strict=True):
                self.moves.appendleft(
                    StartedMove(
                        mid,
                        vm,
                        move.source,
                        move.target,
                        move.reason,
                        move.benefit,
                        move.cost,
                        self._wall(),
                    )
                )
            moved = RebalanceMoved(
                tuple(move.vms), move.source, move.target, move.reason, tuple(mids)
            )
            self.on_event(moved)
            fields = {"vm": "+".join(move.vms), "to": move.target, "why": move.reason}
            log.info("rebalance move", extra={"fields": fields})
            started += len(mids)
        self.counts.started += started
        self._schedule.planned(asyncio.get_running_loop().time(), before, started)
        if span is not None and self._migrator.tracing is not None:
            span.attributes["novacron.started"] = started
            self._migrator.tracing.end(span, None if started else "every move refused")

    def _round_span(self, moves: Sequence[Move]) -> Span | None:
        """A round that plans moves is a span (with traces on); its moves are its children."""
        tracing = self._migrator.tracing
        if tracing is None or not moves:
            return None
        node = self._migrator.node_id
        attributes: dict[str, Any] = {"novacron.node": node, "novacron.planned": len(moves)}
        attributes["novacron.reason"] = moves[0].reason  # why the host sheds load
        return tracing.begin(f"rebalance {node}", "", attributes, SpanKind.INTERNAL)

    def _join(self, span: Span | None, vms: Sequence[str]) -> None:
        if span is not None and self._migrator.tracing is not None:
            self._migrator.tracing.adopt(span, vms)

    def _snapshot(self) -> Seen:
        """Outbound migrations, this host's VMs and its record's version, as now."""
        return seen(self._own(), self._migrator.core.outbound())

    def _decide(self, rng: random.Random) -> tuple[list[Move], Decision]:
        core = self._membership()
        records = core.records()
        alive = {m.node_id for m in core.members() if m.state is MemberState.ALIVE}
        return plan_round(
            self._migrator.node_id,
            records,
            alive,
            self._recent_moves(),
            self._busy(),
            self._clock(),
            rng,
            self.config,
            self._migrator.core.targets_full_from_here(),  # they would refuse a proposal now
        )

    def _recent_moves(self) -> dict[str, float]:
        """VM -> when it last moved to or from this host: the end of a committed migration,
        or now for one still arriving. An arriving VM may run here already (the switchover
        is done, the source's Commit not yet come), and it has moved all the same; so has
        one that runs here after an inbound migration that ended otherwise (its Commit
        lost, the reservation expired; or in doubt)."""
        now = self._clock()
        own = self._own()
        here = {vm.name for vm in own.vms} if own is not None else set()
        moved: dict[str, float] = {}
        for info in self._migrator.core.migrations():
            inbound = info.direction == "inbound"
            if inbound and not info.outcome:
                moved[info.vm] = now
            elif info.ended is not None and (
                info.outcome == "committed" or (inbound and info.vm in here)
            ):
                moved[info.vm] = max(moved.get(info.vm, info.ended), info.ended)
        return moved

    def standing(self) -> Standing | None:
        """Where this host stands against its shedding line now, as a round would judge it
        (None where balancing does not apply: no record yet, draining, no other host)."""
        core = self._membership()
        alive = {m.node_id for m in core.members() if m.state is MemberState.ALIVE}
        return standing(self._migrator.node_id, core.records(), alive, self._busy(), self.config)

    def _busy(self) -> set[str]:
        return {
            info.vm
            for info in self._migrator.core.migrations()
            if info.direction == "outbound" and not info.outcome
        }

    # --- the mesh-wide setting -------------------------------------------------------

    async def adopt_mesh_setting(self) -> None:
        newest = newest_setting(self._membership().records(), self.setting, self._wall())
        if newest != self.setting:
            text = setting_text(newest)
            log.info("rebalance setting from the mesh", extra={"fields": {"setting": text}})
            self.setting = newest
            await self._publish()

    async def _set(self, setting: RebalanceSetting) -> None:
        self.setting = setting
        text = setting_text(setting)
        log.info("rebalance setting changed here", extra={"fields": {"setting": text}})
        await self._publish()


SETTING_SKEW = 300.0
"""Seconds a peer's setting may be dated ahead of this host's wall clock and still count.

The newest setting wins, so one dated years ahead would win against every
later pause or resume; hosts' clocks agree far better than this (operator
commands are held to the same five minutes). A setting dated further ahead
counts once this host's clock comes within the skew of it.
"""


def newest_setting(
    records: Mapping[str, NodeRecord], own: RebalanceSetting, now: float
) -> RebalanceSetting:
    """The most recent pause/resume setting among `records` and `own` (own wins a tie),
    leaving out those dated more than `SETTING_SKEW` after `now` (wall clock)."""
    best = own
    for record in records.values():
        setting = record.rebalance
        if best.since < setting.since <= now + SETTING_SKEW:
            best = setting
    return best


def setting_text(setting: RebalanceSetting) -> str:
    """The setting as `nova rebalance status` shows it: "paused@<unix time>" or "active@..."."""
    return f"{'paused' if setting.paused else 'active'}@{setting.since:.3f}"


def decision_json(decision: Decision) -> dict[str, Any]:
    """A planner's decision as the local API shows it (its numbers rounded)."""
    move = decision.move
    return {
        "move": dataclasses.asdict(move) if move is not None else None,
        "reason": decision.reason,
        "utilization": round(decision.utilization, 4),
        "mean": round(decision.mean, 4),
    }
