"""Automatic rebalancing on one host: runs the planner, starts its moves, explains them.

Every `interval` seconds the agent asks `core/rebalance.plan_round` what
this host should do, from its own gossiped view, and starts the moves it
gets (purpose "rebalance") through the migrator, which applies every limit
and reservation as for a manual migration; an affinity group's move starts
all its VMs with one proposal, the target reserving room for all or none. It
plans sooner, as soon as it hears of it (the daemon's `poke` when this
host's record is republished, the migrator's next change), when an outbound
slot is free and either one of its outbound migrations has ended and its
record shows the VM gone, or a new record of its own shows the host above
its shedding line: a hot host would otherwise leave a freed slot idle, or a
new hotspot unattended, until the next tick (the simulator: the 100-host
hotspot took 1-2 s longer).

The planner's cooldown needs to know which VMs moved lately: a VM's last
move is the end of the committed migration that brought it here (or took it
from here), from the migration core's history.

Pause and resume are mesh-wide: the setting travels as a label in every
host's record, `novacron/rebalance` = "paused@<unix time>" or
"active@<unix time>"; each agent adopts the newest it sees and republishes
it, so one `nova rebalance pause` on any host stops every host within a
gossip round, and the setting survives the host it was given on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from novacron.protocol.messages import MemberState, NodeRecord

from .core.members import MemberInfo
from .core.rebalance import (
    Decision,
    Move,
    RebalanceConfig,
    Standing,
    over_line,
    plan_round,
    standing,
)
from .core.refusals import Refused
from .migrator import Migrator

log = logging.getLogger("novacron.rebalance")

SETTING_LABEL = "novacron/rebalance"
"""Record label carrying the mesh-wide setting: "active@<unix time>" or "paused@<unix time>"."""

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
        self._publish = publish  # republishes this host's record (with the setting label)
        self._clock = clock  # the cores' clock (migration history uses it)
        self._wall = wall_clock  # orders pause/resume across hosts
        self.enabled = enabled  # this agent's configuration: False never plans
        self.interval = interval
        limits = migrator.core.config.limits
        self.config = config or RebalanceConfig(
            max_outbound=limits.max_outbound, max_inbound=limits.max_inbound
        )
        self._rng = rng or random.Random()
        self.setting = f"active@{0:.3f}"  # until the mesh says otherwise
        self.last: Decision | None = None  # the latest round's decision
        self.moves: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.counts = RebalanceCounts()  # since start, for metrics
        self._task: asyncio.Task[None] | None = None
        self._outbound_after = 0  # outbound migrations running after the last round
        self._vms_after: frozenset[str] = frozenset()  # this host's VMs as its record then said
        self._version_after = -1  # this host's record version then
        self._judged = (-1, False)  # the latest version `_newly_hot` looked at, and its verdict
        self._poked = asyncio.Event()  # this host's record was republished

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="rebalance")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def record_labels(self) -> dict[str, str]:
        return {SETTING_LABEL: self.setting}

    @property
    def paused(self) -> bool:
        return self.setting.startswith("paused@")

    # --- the local API's side ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Recent moves with reasons and outcomes, and what the last round decided."""
        rows = {m["migration_id"]: m for m in self._migrator.migrations()}
        moves = []
        for move in self.moves:
            row = rows.get(move["migration_id"], {})
            outcome = row.get("outcome") or ("running" if row else "unknown")
            moves.append({**move, "outcome": outcome, "outcome_reason": row.get("reason", "")})
        last = self.last
        return {
            "node_id": self._migrator.node_id,
            "enabled": self.enabled,
            "paused": self.paused,
            "setting": self.setting,
            "last_decision": _decision_dict(last) if last is not None else None,
            "moves": moves,
        }

    def preview(self) -> dict[str, Any]:
        """What this host would do now, without doing it (a copy of the RNG: no side effect)."""
        rng = random.Random()
        rng.setstate(self._rng.getstate())
        moves, decision = self._decide(rng)
        answer = _decision_dict(decision)
        answer["moves"] = [dataclasses.asdict(m) for m in moves]
        if moves:  # the first move explains the round; the last decision why it stopped
            answer["move"], answer["reason"] = answer["moves"][0], moves[0].reason
        return answer

    async def pause(self) -> dict[str, Any]:
        await self._set(f"paused@{self._wall():.3f}")
        return self.status()

    async def resume(self) -> dict[str, Any]:
        await self._set(f"active@{self._wall():.3f}")
        return self.status()

    # --- the loop ------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wait()
            await self.adopt_mesh_setting()
            if self.enabled and not self.paused:
                await self.round()
            else:
                self._note_slots()

    def poke(self) -> None:
        """This host's record was republished: look at once whether to plan now."""
        self._poked.set()

    async def _wait(self) -> None:
        """Until the next round: `interval` seconds, or less once planning is due now."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.interval
        while (left := end - loop.time()) > 0:
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
        """Whether to plan before the interval is up: a free outbound slot, and a freed
        slot or a new record of this host's showing it above its shedding line."""
        if self._migrator.core.outbound() >= self.config.max_outbound:
            return False
        return self.slot_freed() or self._newly_hot()

    def slot_freed(self) -> bool:
        """Whether to plan now: an outbound migration ended since the last round, and this
        host's record no longer lists the same VMs (planning on a record that still lists
        the VM that left would count its load here and move too much)."""
        if self._migrator.core.outbound() >= self._outbound_after:
            return False
        return self._own_vms() != self._vms_after

    def _newly_hot(self) -> bool:
        """A record of this host newer than the last round's puts it above its line (each
        version judged once: the view's scan is not for every wake-up)."""
        own = self._own()
        if own is None or own.version == self._version_after:
            return False
        if self._judged[0] != own.version:
            core = self._membership()
            alive = {m.node_id for m in core.members() if m.state is MemberState.ALIVE}
            hot = over_line(
                self._migrator.node_id, core.records(), alive, self._busy(), self.config
            )
            self._judged = (own.version, hot)
        return self._judged[1]

    def _own(self) -> NodeRecord | None:
        return self._membership().records().get(self._migrator.node_id)

    def _own_vms(self) -> frozenset[str]:
        own = self._own()
        return frozenset(vm.name for vm in own.vms) if own is not None else frozenset()

    async def round(self) -> None:
        """One planning round: decide, and start every move the free slots allow."""
        seen = self._snapshot()  # what this round plans on; news during its awaits is news
        moves, decision = self._decide(self._rng)
        self.last = decision
        self.counts.rounds += 1
        self.counts.planned += len(moves)
        started = 0
        for move in moves:
            try:
                # An affinity group's VMs go as one: room for all of them, or none moves.
                mids = await self._migrator.start_group_migration(
                    move.vms, move.target, {}, "rebalance"
                )
            except Refused as exc:
                self.counts.refused += 1
                self.last = dataclasses.replace(decision, reason=f"{move.reason}; refused: {exc}")
                log.info(
                    "rebalance move refused",
                    extra={"fields": {"vm": "+".join(move.vms), "why": str(exc)}},
                )
                continue
            for vm, mid in zip(move.vms, mids, strict=True):
                self.moves.appendleft(
                    {
                        "migration_id": mid,
                        "vm": vm,
                        "source": move.source,
                        "target": move.target,
                        "reason": move.reason,
                        "benefit": round(move.benefit, 6),
                        "cost_mib": round(move.cost, 1),
                        "wall_time": round(self._wall(), 3),
                    }
                )
            fields = {"vm": "+".join(move.vms), "to": move.target, "why": move.reason}
            log.info("rebalance move", extra={"fields": fields})
            started += len(mids)
        self.counts.started += started
        outbound, self._vms_after, self._version_after = seen
        self._outbound_after = outbound + started

    def _note_slots(self) -> None:
        self._outbound_after, self._vms_after, self._version_after = self._snapshot()

    def _snapshot(self) -> tuple[int, frozenset[str], int]:
        """Outbound migrations, this host's VMs and its record's version, as now."""
        own = self._own()
        version = own.version if own is not None else -1
        return self._migrator.core.outbound(), self._own_vms(), version

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
        """VM -> when it last moved to or from this host (committed migrations)."""
        moved: dict[str, float] = {}
        for info in self._migrator.core.migrations():
            if info.outcome == "committed" and info.ended is not None:
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
        newest = newest_setting(self._membership().records(), self.setting)
        if newest != self.setting:
            log.info("rebalance setting from the mesh", extra={"fields": {"setting": newest}})
            self.setting = newest
            await self._publish()

    async def _set(self, setting: str) -> None:
        self.setting = setting
        log.info("rebalance setting changed here", extra={"fields": {"setting": setting}})
        await self._publish()


def newest_setting(records: Mapping[str, NodeRecord], own: str) -> str:
    """The most recent pause/resume setting among `records` and `own` (garbled ones ignored)."""
    best, best_time = own, _setting_time(own)
    for record in records.values():
        value = record.labels.get(SETTING_LABEL, "")
        stamp = _setting_time(value)
        if stamp > best_time:
            best, best_time = value, stamp
    return best


def _setting_time(value: str) -> float:
    state, _, stamp = value.partition("@")
    if state not in ("active", "paused"):
        return -1.0
    try:
        return float(stamp)
    except ValueError:
        return -1.0


def _decision_dict(decision: Decision) -> dict[str, Any]:
    move = decision.move
    return {
        "move": dataclasses.asdict(move) if move is not None else None,
        "reason": decision.reason,
        "utilization": round(decision.utilization, 4),
        "mean": round(decision.mean, 4),
    }
