"""Draining a host: no new VMs, then every running VM moved away live.

`nova host drain` first tells the migration core (`set_draining`): from that
moment the host admits no migration, and the source of every migration still
arriving in pre-copy is asked to stop it (reserved a moment before, or
already copying); one already in post-copy can only land, and is then moved
on like any other VM. Then the flag is written and published: the host's
record carries `draining`, so every other agent stops proposing VMs to it
and this agent refuses creates. A loop starts a migration for each running
(or paused) VM (target chosen by `MigrationCore.place_group`, purpose
"drain"; an affinity group's VMs go together, to one host) as long as the
per-host outbound limit allows, and retries VMs that found no
target or whose migration failed, after `RETRY_AFTER` seconds. The flag is
kept in a file under the data directory, so a drain survives an agent
restart; `undrain` clears it (migrations already running finish).

A drain is done when no VM runs or is paused here and none is arriving: an
operator who powers the host off after `--wait` loses nothing. Stopped VMs
are not moved (they have no memory to move live); the status lists them, so
the operator knows what is left on the host. A VM in doubt (its location is
the operator's call, `nova vm recover`) is not moved either, and blocks the
end of the drain until it is settled.

An operator may drain a host from any host of the mesh: `DrainRequests`
sends a `DrainRequest` over the mesh's authenticated transport to the host
named, whose agent starts (or ends) its own drain exactly as a local
`nova host drain` does and answers with a `DrainAnswer`. While it runs, the
asking host follows it in what the mesh knows: the drained host's gossiped
record (its `draining` flag and the VMs it still runs).

What a drain answers is typed: `DrainStatus` for this host's own drain,
`RemoteDrainStatus` for another's as the mesh shows it; the local API turns
them into JSON (`to_json`), nothing else does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from novacron.protocol.messages import DrainAnswer, DrainRequest, MemberState, Message
from novacron.protocol.operators import MAX_AGE, CommandRefused, OperatorCommand

from .core.migration.policy import PolicyOverrides
from .core.migration.saga import ClusterView, MigrationInfo
from .core.observability.cloud_events import DrainChanged
from .core.observability.tracing import Span, SpanKind
from .core.placement.targets import AFFINITY_LABEL
from .core.rebalancing.drain import (
    LOOK_INTERVAL,
    RETRY_DELAY,
    DrainCore,
    DrainTiming,
    Ended,
    not_moved,
    staying,
)
from .core.refusals import RefusalKind, Refused
from .migrator import Migrator
from .tasks import cancel_and_wait

log = logging.getLogger("novacron.drain")

INTERVAL = LOOK_INTERVAL  # seconds between looks at what is left to move
RETRY_AFTER = RETRY_DELAY  # seconds before a VM that could not be moved is tried again
ANSWER_TIMEOUT = 5.0  # seconds a drain asked over the mesh waits for the host's answer
MAX_REQUESTER = 64  # characters of a request's `requested_by` kept (it is only logged)

Send = Callable[[str, Message], Awaitable[None]]
Authority = Callable[[OperatorCommand], str]
"""Checks an operator's signed command: the operator's name, or raises `CommandRefused`."""


@dataclass(frozen=True, slots=True)
class Arriving:
    """A VM migrating here while the host drains (it is moved on once it lands)."""

    vm: str
    source: str  # the host it comes from
    phase: str  # the reservation's phase: reserved, precopy, postcopy, landed

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "source": self.source, "phase": self.phase}


@dataclass(frozen=True, slots=True)
class Moving:
    """A VM this drain is moving away right now."""

    vm: str
    migration_id: str
    target: str  # the host it goes to
    phase: str  # the migration's phase
    percent: float  # its last progress, 0..100

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "migration_id": self.migration_id,
            "target": self.target,
            "phase": self.phase,
            "percent": self.percent,
        }


@dataclass(frozen=True, slots=True)
class DrainStatus:
    """This host's drain: what it has done and what is left, for `nova host drain`."""

    node_id: str
    draining: bool
    done: bool = False  # nothing runs, is paused or arrives here: it may be powered off
    running: tuple[str, ...] = ()  # VMs still here that keep the drain from being done
    arriving: tuple[Arriving, ...] = ()
    moving: tuple[Moving, ...] = ()
    moved: tuple[str, ...] = ()  # VMs this drain moved away
    blocked: Mapping[str, str] = field(default_factory=dict)  # VM -> why it waits
    not_moved: Mapping[str, str] = field(default_factory=dict)  # stopped VM -> its state

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "draining": self.draining,
            "done": self.done,
            "running": list(self.running),
            "arriving": [a.to_json() for a in self.arriving],
            "moving": [m.to_json() for m in self.moving],
            "moved": list(self.moved),
            "blocked": dict(self.blocked),
            "not_moved": dict(self.not_moved),
        }


@dataclass(frozen=True, slots=True)
class RemoteDrainStatus:
    """Another host's drain as this agent knows it: that host's gossiped record, or its
    answer to a request. What only the drained host knows (what it is moving, why VMs
    wait) is not here."""

    node_id: str
    seen_from: str  # the agent that tells
    state: str | None  # the host's member state (None if not a member)
    draining: bool
    done: bool
    running: tuple[str, ...]
    not_moved: Mapping[str, str]  # stopped VM -> its state
    migrations_out: int
    migrations_in: int
    record_version: int  # of the record (or answer) it was read from

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "remote": True,  # seen through the mesh, from `seen_from`
            "seen_from": self.seen_from,
            "state": self.state,
            "draining": self.draining,
            "done": self.done,
            "running": list(self.running),
            "not_moved": dict(self.not_moved),
            "migrations_out": self.migrations_out,
            "migrations_in": self.migrations_in,
            "record_version": self.record_version,
        }


class _Host:
    """This host as the drain core reads it: the migrator's view of its VMs and migrations."""

    def __init__(self, migrator: Migrator) -> None:
        self._migrator = migrator

    def vm_states(self) -> dict[str, str]:
        return self._migrator.local_vms()

    def busy(self, vm: str) -> bool:
        return self._migrator.core.busy(vm)

    def arriving(self, vm: str) -> bool:
        return self._migrator.core.arriving(vm)

    def doubt(self, vm: str) -> str | None:
        doubt = self._migrator.core.doubt(vm)
        return doubt.reason if doubt is not None else None

    def outbound(self) -> int:
        return self._migrator.core.outbound()

    def group_of(self, vm: str) -> str:
        summary = self._migrator.core.own_vm(vm)
        return summary.labels.get(AFFINITY_LABEL, "") if summary is not None else ""

    def load(self, vm: str) -> float:
        summary = self._migrator.core.own_vm(vm)
        return summary.cpu_load if summary is not None else 0.0

    def ended(self, migration_id: str) -> Ended | None:
        row = self._migrator.migration(migration_id)
        if row is None or not row.info.outcome:
            return None
        return Ended(row.info.vm, row.info.outcome, row.info.reason)


class Drain:
    """One host's drain: the persisted flag and the loop that empties the host."""

    def __init__(
        self,
        migrator: Migrator,
        state_file: Path,
        *,
        publish: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self._migrator = migrator
        self._host = _Host(migrator)
        self._state_file = state_file  # exists while the host is draining
        self._publish = publish  # republishes this host's record (with the flag)
        self._clock = clock
        self.draining = state_file.exists()
        self._task: asyncio.Task[None] | None = None
        limits = migrator.core.config.limits
        self._core = DrainCore(limits.max_outbound, DrainTiming(INTERVAL, RETRY_AFTER))
        self.on_event: Callable[[object], None] = lambda event: None  # the event stream's
        self._span: Span | None = None  # the drain's trace span, with traces on, until done

    async def start(self) -> None:
        """Resume a drain that was under way when the agent stopped."""
        if self.draining:
            log.info("resuming drain", extra={"fields": {"node": self._migrator.node_id}})
            await self._migrator.set_draining(True)
            self._begin_span("resumed")
            self._spawn()

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def drain(self) -> DrainStatus:
        if not self.draining:
            await self._migrator.set_draining(True)  # before anything else: nothing lands
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_file.write_text("draining\n")
            self.draining = True
            self._core.begin()
            await self._publish()
            log.info("drain started", extra={"fields": {"node": self._migrator.node_id}})
            self.on_event(DrainChanged(self._migrator.node_id, "started"))
            self._begin_span("started")
        if self._task is None or self._task.done():
            self._spawn()
        return self.status()

    async def undrain(self) -> DrainStatus:
        if self.draining:
            self._state_file.unlink(missing_ok=True)
            self.draining = False
            await self._migrator.set_draining(False)
            await self.close()
            self._task = None
            await self._publish()
            log.info("drain ended", extra={"fields": {"node": self._migrator.node_id}})
            self.on_event(DrainChanged(self._migrator.node_id, "ended"))
            self._end_span("undrained before the host was empty")
        return self.status()

    # --- the drain's span: its migrations are its children ---------------------------------

    def _begin_span(self, how: str) -> None:
        tracing = self._migrator.tracing
        if tracing is not None and self._span is None:
            attributes = {"novacron.node": self._migrator.node_id, "novacron.drain": how}
            name = f"drain {self._migrator.node_id}"
            self._span = tracing.begin(name, "", attributes, SpanKind.INTERNAL)

    def _join(self, move: Sequence[str]) -> None:
        """The migrations of `move`, about to start, go into the drain's trace."""
        tracing = self._migrator.tracing
        if tracing is not None and self._span is not None:
            tracing.adopt(self._span, move)

    def _end_span(self, error: str | None) -> None:
        tracing, span, self._span = self._migrator.tracing, self._span, None
        if tracing is not None and span is not None:
            span.attributes["novacron.moved"] = len(self._core.moved(self._host))
            tracing.end(span, error)

    def _empty(self, vms: dict[str, str]) -> bool:
        """Nothing keeps the host from being powered off: no VM runs, is paused or arrives."""
        return not staying(vms) and not self._migrator.core.reservations()

    def status(self) -> DrainStatus:
        """What a drain has done and what is left, for `nova host drain`."""
        vms = self._migrator.local_vms()
        held = sorted(self._migrator.core.reservations(), key=lambda held: held.vm)
        return DrainStatus(
            node_id=self._migrator.node_id,
            draining=self.draining,
            done=self.draining and self._empty(vms),
            running=tuple(staying(vms)),
            arriving=tuple(Arriving(h.vm, h.source, h.phase) for h in held),
            moving=self._moving(),
            moved=tuple(sorted(self._core.moved(self._host))),
            blocked=self._core.blocked(vms),
            not_moved=not_moved(vms),
        )

    def _moving(self) -> tuple[Moving, ...]:
        """The drain's migrations still running, by VM."""
        migrations = {m.info.migration_id: m.info for m in self._migrator.migrations()}
        return tuple(
            _moving(vm, migrations[mid])
            for vm, mid in sorted(self._core.moving().items())
            if mid in migrations and not migrations[mid].outcome
        )

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="drain")

    async def _loop(self) -> None:
        while self.draining:
            await self._step()
            if self._span is not None and self._empty(self._migrator.local_vms()):
                self._end_span(None)
            await asyncio.sleep(self._core.timing.interval)

    async def _step(self) -> None:
        """One look: start what the outbound limit allows; the core notes why the rest wait."""
        now = self._clock()
        core, migrations = self._core, self._migrator.core
        core.look(now, self._host)
        while (move := core.next_move(now, self._host)) is not None:
            placement = migrations.place_group(move, await self._migrator.vm_templates(move))
            if placement.target is None:
                core.no_target(move, placement.reason, now, migrations.targets_full_from_here())
                continue
            self._join(move)
            try:
                mids = await self._migrator.start_group_migration(
                    move, placement.target, PolicyOverrides(), purpose="drain"
                )
            except Refused as exc:
                core.refused(move, str(exc), now)
                continue
            core.started(move, mids)


def _moving(vm: str, migration: MigrationInfo) -> Moving:
    return Moving(vm, migration.migration_id, migration.target, migration.phase, migration.percent)


class DrainRequests:
    """Drains asked across the mesh: this agent asks another host, or answers one's request.

    Asking: `ask` sends a `DrainRequest` to the host named and waits up to
    `timeout` seconds for its `DrainAnswer`; a host this agent does not know,
    or does not see alive, is not asked at all. Answering: a request from a
    member that names this host starts (or ends) this host's `Drain`, and is
    logged with who asked; one that names another host is refused. `status_of`
    shows another host's drain as the mesh knows it. For this host itself
    every call goes straight to the local `Drain`.
    """

    def __init__(
        self,
        drain: Drain,
        node_id: str,
        mesh: Callable[[], ClusterView],
        *,
        send: Send,
        authority: Authority,
        clock: Callable[[], float] = time.time,
        timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self._drain = drain  # this host's drain, which requests from peers start and end
        self.node_id = node_id
        self._mesh = mesh  # members and their gossiped records, as this agent sees them
        self._send = send  # hands a message to the transport
        self._authority = authority  # checks an operator's signed command (raises if none)
        self._clock = clock  # wall clock: commands are dated in unix seconds
        self._used: dict[str, float] = {}  # command ids already obeyed -> when (no replays)
        self._timeout = timeout
        self._pending: dict[str, tuple[str, asyncio.Future[DrainAnswer]]] = {}  # id -> asked
        self._lock = asyncio.Lock()  # one peer's request at a time changes the drain
        self._tasks: set[asyncio.Task[None]] = set()  # requests being answered

    # --- the daemon's side -----------------------------------------------------------

    @staticmethod
    def handles(message: Message) -> bool:
        """Whether `message` belongs to drains asked over the mesh."""
        return isinstance(message, DrainRequest | DrainAnswer)

    async def receive(self, sender: str, message: Message) -> None:
        """A message from `sender`, a certified member (the transport admits no one else)."""
        if isinstance(message, DrainAnswer):
            self._settle(sender, message)
        elif isinstance(message, DrainRequest):
            # In a task: starting a drain reads libvirt; the receive loop must not wait for it.
            task = asyncio.create_task(self._answer(sender, message), name="drain-request")
            self._tasks.add(task)
            task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("answering a drain request failed", exc_info=task.exception())

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for _, future in self._pending.values():
            future.cancel()

    # --- the local API's side --------------------------------------------------------

    async def ask(
        self,
        node: str,
        drain: bool,
        requested_by: str = "",
        command: OperatorCommand | None = None,
    ) -> DrainStatus | RemoteDrainStatus:
        """Start (`drain`) or end `node`'s drain; its status, or `Refused` saying why not.

        Another host obeys only an operator's signed `command` (this agent
        relays it; the drained host checks it); this host itself obeys its
        local socket, whose caller is root here.
        """
        if node == self.node_id:
            return await (self._drain.drain() if drain else self._drain.undrain())
        self._check_alive(node)
        command = self._check_command(command, node, drain)
        request_id = command.request_id
        future: asyncio.Future[DrainAnswer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (node, future)
        request = DrainRequest(
            request_id,
            node,
            drain,
            requested_by[:MAX_REQUESTER],
            issued_at=command.issued_at,
            operator_certificate=command.certificate,
            signature=command.signature,
        )
        try:
            await self._send(node, request)
            answer = await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            verb = "drain" if drain else "undrain"
            raise Refused(
                RefusalKind.NO_ANSWER,
                f"no answer from {node} within {self._timeout:g} s: its agent may be down or "
                f"unreachable; if the request reached it, it may {verb} all the same "
                f"(see 'nova host drain {node} --status')",
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if not answer.accepted:
            raise Refused(RefusalKind.CONFLICT, f"{node} refused: {answer.reason}")
        log.info(
            "drain asked over the mesh",
            extra={"fields": {"node": node, "drain": drain, "draining": answer.draining}},
        )
        return replace(
            self._seen(node),
            draining=answer.draining,
            done=answer.draining and not answer.running,
            running=tuple(answer.running),
            record_version=answer.record_version,
        )

    def status_of(self, node: str) -> DrainStatus | RemoteDrainStatus:
        """`node`'s drain: this host's own status, or another's as its gossiped record shows it."""
        if node == self.node_id:
            return self._drain.status()
        return self._seen(node)

    # --- asking --------------------------------------------------------------------

    def _check_command(
        self, command: OperatorCommand | None, node: str, drain: bool
    ) -> OperatorCommand:
        """Refuse here, before anything is sent, what the drained host would refuse."""
        if command is None:
            raise Refused(
                RefusalKind.FORBIDDEN,
                f"draining {node} from {self.node_id} needs an operator's signed command: "
                "pass --operator CERT (a certificate from 'nova ca issue NAME --role "
                f"operator'), or run 'nova host drain' on {node} itself",
            )
        action = "drain" if drain else "undrain"
        if command.action != action or command.target != node:
            raise Refused(
                RefusalKind.INVALID, f"the signed command is for {command.action} {command.target}"
            )
        try:
            self._authority(command)
        except CommandRefused as exc:
            raise Refused(RefusalKind.FORBIDDEN, str(exc)) from None
        return command

    def _check_alive(self, node: str) -> None:
        member = self._mesh().member(node)
        if member is None:
            raise Refused(RefusalKind.UNKNOWN, self._unknown(node))
        if member.state != MemberState.ALIVE:
            raise Refused(
                RefusalKind.CONFLICT,
                f"host not alive: {node} is {member.state.value} in {self.node_id}'s view of the "
                "mesh; a drain needs its agent, which moves its VMs away",
            )

    def _unknown(self, node: str) -> str:
        return f"unknown host: {node} is not in {self.node_id}'s view of the mesh"

    def _seen(self, node: str) -> RemoteDrainStatus:
        """`node`'s drain as its gossiped record shows it."""
        mesh = self._mesh()
        member = mesh.member(node)
        record = mesh.records().get(node)
        if member is None and record is None:
            raise Refused(RefusalKind.UNKNOWN, self._unknown(node))
        vms = {vm.name: vm.state for vm in record.vms} if record is not None else {}
        running = staying(vms)
        draining = record.draining if record is not None else False
        arriving = record.migrations_in if record is not None else 0
        return RemoteDrainStatus(
            node_id=node,
            seen_from=self.node_id,
            state=member.state.value if member is not None else None,
            draining=draining,
            done=draining and not running and not arriving,
            running=tuple(running),
            not_moved=not_moved(vms),
            migrations_out=record.migrations_out if record is not None else 0,
            migrations_in=arriving,
            record_version=record.version if record is not None else 0,
        )

    def _settle(self, sender: str, answer: DrainAnswer) -> None:
        pending = self._pending.get(answer.request_id)
        if pending is None or pending[0] != sender or pending[1].done():
            log.info(
                "drain answer not awaited; ignored",
                extra={"fields": {"from": sender, "id": answer.request_id[:32]}},
            )
            return
        pending[1].set_result(answer)

    # --- answering -----------------------------------------------------------------

    async def _answer(self, sender: str, request: DrainRequest) -> None:
        fields = {
            "from": sender,
            "by": request.requested_by[:MAX_REQUESTER],
            "node": request.node[:MAX_REQUESTER],
            "drain": request.drain,
        }
        why = self._refusal(sender, request)
        if why:
            log.warning("drain request refused", extra={"fields": {**fields, "why": why}})
            await self._send(sender, DrainAnswer(request.request_id, accepted=False, reason=why))
            return
        log.info("drain requested over the mesh", extra={"fields": fields})
        try:
            async with self._lock:
                status = await (self._drain.drain() if request.drain else self._drain.undrain())
        except OSError as exc:  # the flag file could not be written or removed
            why = f"{self.node_id} could not change its drain flag: {exc}"
            log.error("drain request failed", extra={"fields": {**fields, "why": why}})
            await self._send(sender, DrainAnswer(request.request_id, accepted=False, reason=why))
            return
        own = self._mesh().records().get(self.node_id)
        arriving = tuple(a.vm for a in status.arriving)  # here too, in a moment
        answer = DrainAnswer(
            request.request_id,
            accepted=True,
            draining=status.draining,
            running=tuple(dict.fromkeys((*status.running, *arriving))),
            record_version=own.version if own is not None else 0,
        )
        await self._send(sender, answer)

    def _refusal(self, sender: str, request: DrainRequest) -> str:
        """Why this host will not act on `request` ("" if it will)."""
        if request.node != self.node_id:
            return f"this is {self.node_id}, not {request.node[:MAX_REQUESTER]}"
        member = self._mesh().member(sender)
        if member is None or member.state in (MemberState.DEAD, MemberState.LEFT):
            return f"{sender} is not a member in {self.node_id}'s view of the mesh"
        command = OperatorCommand(
            "drain" if request.drain else "undrain",
            request.node,
            request.request_id,
            request.issued_at,
            request.operator_certificate,
            request.signature,
        )
        try:
            operator = self._authority(command)
        except CommandRefused as exc:
            return f"not authorized: {exc}"
        now = self._clock()
        self._used = {k: t for k, t in self._used.items() if now - t <= 2 * MAX_AGE}
        if request.request_id in self._used:
            return f"not authorized: command {request.request_id[:32]!r} was already used"
        self._used[request.request_id] = now
        log.info("operator command checked", extra={"fields": {"operator": operator}})
        return ""
