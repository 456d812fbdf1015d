"""The migration driver: carries `MigrationCore`'s decisions to libvirt and the mesh.

The saga itself (who may move what, when to escalate, how a fault ends) lives
in the sans-IO `core/migration/saga.py`. This module only performs what it asks:
Migration* messages from the transport go into `core.receive`, the clock goes
into `core.tick` when `core.next_deadline()` comes, and the core's *actions*
become libvirt calls:

- `StartLibvirtMigration`: `migrateToURI3` (LIVE | PEER2PEER | PERSIST_DEST |
  UNDEFINE_SOURCE, + NON_SHARED_INC for local disks, + AUTO_CONVERGE and
  POSTCOPY as the policy allows) in a worker thread, while a poller reads
  `jobStats()` every `POLL_INTERVAL` seconds and reports each sample with
  `migration_progress`; the call's return or error is `migration_finished`, with
  the job's final statistics (`JobTotals`: bytes sent, the guest's pause).
- `SwitchToPostCopy`: `migrateStartPostCopy`; `AbortLibvirtMigration`: `abortJob`.
- `ReconcileVm`: looks at the domain in the libvirt of every host named
  (`locator.Locator`) and reports what each said with `vm_presence`;
  `RetireStaleCopy`: removes a copy left where the VM provably does not run.

libvirt calls block, so each runs in a thread of the host's `LibvirtAdapter`,
on its shared connection; `migrateToURI3` runs in the adapter's job threads on
a connection of its own, so a long migration starves neither the inventory
nor the samples and aborts of the job itself. The
local API reads and drives migrations through the `MigrationControl` methods
(`migrate`, `cancel`, `migrations`, `migration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from novacron.protocol.messages import (
    JobPhase,
    Message,
    MigrationAbort,
    MigrationAccept,
    MigrationCommit,
    MigrationProgress,
    MigrationPropose,
    MigrationRefuse,
    NodeRecord,
)

from .api_requests import MigrateRequest
from .core.events import (
    AbortLibvirtMigration,
    MigrationAction,
    MigrationCancelRefused,
    MigrationCompleted,
    MigrationFailed,
    MigrationOutput,
    MigrationProgressed,
    MigrationProposed,
    MigrationRefused,
    ReconcileVm,
    RetireStaleCopy,
    StartLibvirtMigration,
    SwitchToPostCopy,
)
from .core.images.holders import lacking
from .core.images.target_fetch import refusal_details
from .core.migration.policy import MigrationPolicy, PolicyOverrides, switchover_limit_ms
from .core.migration.saga import (
    ClusterView,
    JobTotals,
    MigrationConfig,
    MigrationCore,
    MigrationInfo,
)
from .core.refusals import RefusalKind, Refused
from .core.templates import template_of
from .disks import (
    LocalDisk,
    incremental,
    local_disks,
    prepare_on_target,
    remove_source_copies,
    remove_target_copies,
)
from .history import HistoryEntry, HistoryRow, VmHistory
from .hypervisor import COMPLETED_JOB_KEPT, job_stats
from .inventory import domain_labels, in_job, recent_dirty_rate
from .journal import JournalEntry, MigrationJournal
from .libvirt_adapter import LibvirtAdapter, Opener, Unreachable
from .locator import Locator, find
from .migration_row import MigrationRow
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("novacron.migrator")

T = TypeVar("T")

POLL_INTERVAL = 0.5  # seconds between jobStats() samples of a running migration
# Seconds the end of a job waits for its final statistics: they feed metrics only, and a
# libvirtd that hangs must not hold back the commit of a VM that already moved.
TOTALS_TIMEOUT = 2.0
MIGRATION_MESSAGES = (
    MigrationPropose,
    MigrationAccept,
    MigrationRefuse,
    MigrationProgress,
    MigrationCommit,
    MigrationAbort,
)

BASE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)

Send = Callable[[str, Message], Awaitable[None]]


class Migrator:
    """Drives one host's `MigrationCore` against libvirt and the transport."""

    def __init__(
        self,
        node_id: str,
        view: ClusterView,
        *,
        host: str,
        libvirt_uri: str,
        send: Send,
        clock: Callable[[], float],
        on_change: Callable[[], None] = lambda: None,
        config: MigrationConfig | None = None,
        opener: Opener = libvirt.open,
        libvirt_adapter: LibvirtAdapter | None = None,
        rng: random.Random | None = None,
        journal: MigrationJournal | None = None,
        dirty_rates: Callable[[str], Sequence[float]] = lambda vm: (),
    ) -> None:
        """`host`: this host's address as QEMU on a source must reach it (tcp://host);
        `dirty_rates`: the inventory's measurements of a local VM in the last minute (MiB/s);
        `libvirt_adapter`: the host's libvirt connection and threads (one of its own at
        `libvirt_uri`, opened by `opener`, if not given)."""
        self.core = MigrationCore(
            node_id,
            view=view,
            rng=rng or random.Random(),
            config=config,
            migration_uri=f"tcp://{host}",
            wall=lambda now: time.time() - clock() + now,
        )
        self.node_id = node_id
        self.libvirt_uri = libvirt_uri  # this host's libvirtd
        self._view = view  # members and records: where peers' libvirtd are
        self._send = send  # hands a message to the transport
        self._clock = clock  # the core's clock
        self._on_change = on_change  # the core's next deadline may have moved earlier
        self._journal = journal  # outbound jobs in flight, for the next life of the agent
        self._dirty_rates = dirty_rates  # the last minute's measurements: the switchover limit
        self._limits: dict[str, int] = {}  # migration id -> max downtime given to QEMU
        self.on_event: Callable[[object], None] = lambda event: None  # the event stream's
        self.tracing: Tracing | None = None  # spans of migrations, when traces are on
        # Asks a target to fetch a template (image transport); False if it cannot be told.
        self.want_template: Callable[[str, str], Awaitable[bool]] | None = None
        self._owns_libvirt = libvirt_adapter is None  # closed with the driver if so
        self.libvirt = libvirt_adapter or LibvirtAdapter(libvirt_uri, opener=opener)
        self.locator = Locator(node_id, view, libvirt=self.libvirt)
        self.history = VmHistory(node_id, view, self.locator, self.migrations)
        self._jobs: set[str] = set()  # migration ids whose libvirt job started (their history)
        self._tasks: set[asyncio.Task[None]] = set()
        self._change: asyncio.Future[None] | None = None  # resolved at the next `_apply`
        self._postcopy: set[str] = set()  # migration ids switched to post-copy by us
        # Aborts asked for: one asked before libvirt's job began must still stop it.
        self._aborts: dict[str, bool] = {}  # migration id -> asked again once the job ran
        self._progress: dict[str, MigrationProgressed] = {}  # last sample per migration id

    # --- the daemon's side ---------------------------------------------------------------

    @staticmethod
    def handles(message: Message) -> bool:
        """Whether `message` belongs to the migration core rather than to membership."""
        return isinstance(message, MIGRATION_MESSAGES)

    async def receive(self, sender: str, message: Message) -> None:
        if self.tracing is not None:
            self.tracing.incoming(message)
        await self._apply(self.core.receive(sender, message, self._clock()))

    def next_deadline(self) -> float:
        return self.core.next_deadline()

    async def tick(self) -> None:
        await self._apply(self.core.tick(self._clock()))

    async def set_draining(self, draining: bool) -> None:
        """This host begins or ends a drain: inbound migrations are refused from now on, and
        those still in pre-copy are asked to stop."""
        await self._apply(self.core.set_draining(draining, self._clock()))

    def with_counts(self, record: NodeRecord) -> NodeRecord:
        """This host's `record` with its migration counters, so peers can respect the limits."""
        return self.core.with_counts(record)

    async def adopt_unfinished(self) -> None:
        """Take charge of outbound jobs an earlier life of this agent left running.

        Each journal entry goes to `core.adopt_job`: a job still in pre-copy is
        aborted, one in post-copy can only finish. Either way this driver follows
        the job until libvirt says it has ended (one that ended while no agent
        ran, at once) and reports that end like any job's: the evidence of both
        hosts' libvirt then decides, so every one ends with a reported outcome.
        """
        if self._journal is None:
            return
        for entry in self._journal.take_all():
            postcopy = await self.libvirt.read(_in_postcopy, entry.vm)
            log.warning(
                "adopting a migration left by an earlier agent",
                extra={"fields": {"vm": entry.vm, "id": entry.migration_id, "to": entry.target}},
            )
            out = self.core.adopt_job(entry.vm, entry.target, postcopy, self._clock())
            await self._apply(out)
            for event in out.events:
                self._jobs.add(event.migration_id)
                self._spawn(self._follow(event.migration_id, entry.vm), f"adopted:{entry.vm}")

    async def _follow(self, migration_id: str, vm: str) -> None:
        """Watch a job an earlier agent started (sampling it) until libvirt says it has ended;
        its end goes to the core as a failed job's does: the evidence decides the outcome."""
        poller = asyncio.ensure_future(self._poll(migration_id, vm))
        try:
            while await self.libvirt.read(_job_running, vm):
                await asyncio.sleep(POLL_INTERVAL)
        except libvirt.libvirtError as exc:
            log.warning("cannot follow an adopted job", extra={"fields": {"why": str(exc)}})
        finally:
            poller.cancel()
            await self._clean_up(poller)
        why = "the job an earlier agent started has ended"
        await self._apply(self.core.migration_finished(migration_id, False, why, self._clock()))

    async def close(self) -> None:
        """Stop polling and waiting; running libvirt jobs go on under libvirtd."""
        await cancel_and_wait(self._tasks)
        if self._owns_libvirt:
            await self.libvirt.close()

    # --- the local API's side --------------------------------------------------------------

    async def migrate(self, vm: str, request: MigrateRequest) -> str:
        """Start moving `vm` as `request` says; the migration id, or `Refused` with the reason."""
        if self.tracing is not None:
            self.tracing.expect(vm, request.traceparent)
        target = request.target
        if target is None:
            placement = self.core.place(vm, await self.vm_templates((vm,)))
            if placement.target is None:
                raise Refused(placement.kind, placement.reason)
            target = placement.target
        return await self.start_migration(vm, target, request.overrides)

    async def start_migration(
        self, vm: str, target: str, overrides: PolicyOverrides, purpose: str = "manual"
    ) -> str:
        """Propose moving `vm` to `target`; the migration id, or `Refused` with the reason."""
        (migration_id,) = await self.start_group_migration((vm,), target, overrides, purpose)
        return migration_id

    async def start_group_migration(
        self,
        vms: Sequence[str],
        target: str,
        overrides: PolicyOverrides,
        purpose: str = "manual",
    ) -> list[str]:
        """Propose moving VMs that must stay together (an affinity group) to `target`, room
        for all of them reserved at once; their migration ids, in the order of `vms`, or
        `Refused` with the reason (then none of them moves)."""
        await self._target_holds_templates(vms, target)
        out = self.core.request_group_migration(
            vms, target, overrides, self._clock(), purpose=purpose
        )
        refused = next((e for e in out.events if isinstance(e, MigrationRefused)), None)
        proposed = [e.migration_id for e in out.events if isinstance(e, MigrationProposed)]
        await self._apply(out)
        if refused is not None:
            raise Refused(refused.kind, refused.reason)
        if len(proposed) != len(vms):
            raise Refused(RefusalKind.CONFLICT, "refused")
        return proposed

    async def vm_templates(self, vms: Sequence[str]) -> dict[str, str]:
        """The template each of `vms` was made from, by its domain's labels (records carry
        only the placement labels, not the template): placement prefers a host that holds
        it."""
        labels = await self._vm_labels(vms)
        return {vm: ref for vm, vm_labels in labels.items() if (ref := template_of(vm_labels))}

    async def _vm_labels(self, vms: Sequence[str]) -> dict[str, dict[str, str]]:
        labels = {}
        for vm in vms:
            try:
                labels[vm] = await self.libvirt.call(_labels_of, vm)
            except libvirt.libvirtError:
                continue  # no such VM here, or no libvirt: the core's refusal says so
        return labels

    async def _target_holds_templates(self, vms: Sequence[str], target: str) -> None:
        """`Refused` when `target` lacks the template of one of `vms` (its disk's base would
        be missing there); the target is asked to fetch it from the mesh meanwhile."""
        labels = await self._vm_labels(vms)
        missing = lacking(self._view.records().get(target), labels)
        if not missing:
            return
        vm, ref = missing[0]
        told = self.want_template is not None and await self.want_template(target, ref)
        doing = (
            "it is fetching it from its peers now; migrate again once it holds it "
            f"(nova host show {target})"
            if told
            else "it cannot be asked to fetch it (no image transport known)"
        )
        raise Refused(
            RefusalKind.CONFLICT,
            f"{target} lacks template {ref}, the base of {vm}'s disk: {doing}",
            refusal_details(target, ref, told),
        )

    async def cancel(self, migration_id: str) -> None:
        """Cancel a running outbound migration, or `Refused` saying why not."""
        out = self.core.cancel(migration_id, self._clock())
        refused = next((e for e in out.events if isinstance(e, MigrationCancelRefused)), None)
        await self._apply(out)
        if refused is not None:
            raise Refused(refused.kind, f"cannot cancel {migration_id}: {refused.reason}")

    def migrations(self) -> list[MigrationRow]:
        """Running and recent migrations, with their latest job statistics."""
        return [self._row(info) for info in self.core.migrations()]

    async def vm_history(self, vm: str) -> list[HistoryRow]:
        """Every migration of `vm`: what it carries from host to host, and this host's own."""
        return await self.history.of(vm)

    def local_vms(self) -> dict[str, str]:
        """This host's VMs and their states, as its own latest record lists them."""
        record = self._view.records().get(self.node_id)
        return {vm.name: vm.state for vm in record.vms} if record is not None else {}

    def migration(self, migration_id: str) -> MigrationRow | None:
        info = self.core.migration(migration_id)
        return self._row(info) if info is not None else None

    def _row(self, info: MigrationInfo) -> MigrationRow:
        end = info.ended if info.ended is not None else self._clock()
        return MigrationRow(
            info,
            round(end - info.started, 3),
            self._limits.get(info.migration_id),
            self._progress.get(info.migration_id),
        )

    # --- output of the core ----------------------------------------------------------------

    async def _apply(self, out: MigrationOutput) -> None:
        """Send the core's messages, note its events, and start its actions."""
        for event in out.events:  # first: a proposal's span exists before it is sent
            self.on_event(event)
            if self.tracing is not None:
                self.tracing.on_event(event)
        for destination, message in out.sends:
            if self.tracing is not None:
                message = self.tracing.outgoing(message)
            await self._send(destination, message)
        for event in out.events:
            self._note(event)
        for action in out.actions:
            self._spawn(self._perform(action), f"{type(action).__name__}:{action.migration_id}")
        self._on_change()
        if out.sends or out.events or out.actions:  # news for held `?wait=` requests
            change, self._change = self._change, None
            if change is not None and not change.done():
                change.set_result(None)

    async def wait_change(self, timeout: float) -> None:
        """Return at this host's next migration change (a sample, a reply, an end) or after
        `timeout` s: a held API request wakes when there is news, not on a timer."""
        if self._change is None:
            self._change = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._change), timeout)

    def _note(self, event: Any) -> None:
        if isinstance(event, MigrationProgressed):
            self._progress[event.migration_id] = event
            self._forget_old_progress()
            return  # frequent: shown by the API, not logged
        if isinstance(event, MigrationCompleted):
            self._carry(event.migration_id, event.target)
        elif isinstance(event, MigrationFailed):
            self._carry(event.migration_id, event.source)
        fields = dataclasses.asdict(event)
        level = logging.WARNING if "Failed" in type(event).__name__ else logging.INFO
        log.log(level, type(event).__name__, extra={"fields": fields})

    def _forget_old_progress(self) -> None:
        known = {info.migration_id for info in self.core.migrations()}
        for migration_id in [m for m in self._progress if m not in known]:
            del self._progress[migration_id]
        # list(): `_run_job` adds limits from a worker thread (one C-level copy holds the GIL)
        for migration_id in [m for m in list(self._limits) if m not in known]:
            del self._limits[migration_id]

    def _carry(self, migration_id: str, host: str) -> None:
        """A migration that ran a libvirt job ended: the VM carries it in its history (on
        `host`, where the VM is now)."""
        info = self.core.migration(migration_id)
        if migration_id not in self._jobs or info is None or info.ended_at is None:
            return
        self._jobs.discard(migration_id)
        entry = HistoryEntry(
            migration_id,
            info.source,
            info.target,
            info.outcome,
            info.started_at,
            info.ended_at,
            info.reason,
            info.purpose,
        )
        self._spawn(self.history.record(entry, info.vm, host), f"history:{migration_id}")

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    # --- actions -------------------------------------------------------------------------

    async def _perform(self, action: MigrationAction) -> None:
        if isinstance(action, StartLibvirtMigration):
            self._jobs.add(action.migration_id)
            await self._migrate(action)
        elif isinstance(action, SwitchToPostCopy):
            await self._on_domain(action.vm, "migrateStartPostCopy", 0)
            self._postcopy.add(action.migration_id)
        elif isinstance(action, AbortLibvirtMigration):
            self._aborts.setdefault(action.migration_id, False)
            await self._on_domain(action.vm, "abortJob")
        elif isinstance(action, ReconcileVm):
            seen = await self.locator.look(action.vm, action.hosts)
            await self._apply(self.core.vm_presence(action.vm, seen, self._clock()))
        elif isinstance(action, RetireStaleCopy):
            done = await self.locator.retire(action.vm, action.host, action.uuid)
            fields = {"vm": action.vm, "host": action.host, "runs_on": action.runs_on, "done": done}
            log.warning("stale copy of a VM retired", extra={"fields": fields})

    async def _migrate(self, action: StartLibvirtMigration) -> None:
        """Run one libvirt migration job to its end, sampling it while it runs.

        The end is reported before the sampler is cleaned up: that can wait for a
        last job-statistics call to return, and the commit must not (it cost ~0.2 s
        per migration when it did).
        """
        ok, reason = False, ""
        prepared: list[LocalDisk] = []  # disks created on the target, filled by _run_job
        poller: asyncio.Future[None] | None = None
        totals: JobTotals | None = None
        try:
            await self.libvirt.read(_lookup, action.vm)
            poller = asyncio.ensure_future(self._poll(action.migration_id, action.vm))
            if self._journal is not None:
                self._journal.record(JournalEntry(action.vm, action.migration_id, action.target))
            await self.libvirt.job(self._run_job, action, prepared)
            ok = True
        except Exception as exc:  # any failure is the job's failure: reconcile decides
            reason = str(exc) or type(exc).__name__
        finally:
            if self._journal is not None:
                self._journal.forget(action.vm, action.migration_id)
            if poller is not None:
                poller.cancel()
            self._postcopy.discard(action.migration_id)
            self._aborts.pop(action.migration_id, None)
        if ok:  # the source's domain is gone (UNDEFINE_SOURCE): the target's libvirt keeps
            # the job's statistics, the source's sent in the migration cookie
            uri = self.locator.uri(action.target, action.target_uri)
            totals = await self.job_totals(final_totals, action.vm, uri=uri)
        elif poller is not None:  # the domain was there: its libvirt kept the job's end
            totals = await self.job_totals(final_totals, action.vm)
        await self._apply(
            self.core.migration_finished(action.migration_id, ok, reason, self._clock(), totals)
        )
        await self._clean_up(poller)
        if prepared and ok:
            await asyncio.to_thread(remove_source_copies, prepared)  # files, not libvirt
        elif prepared:
            uri = self.locator.uri(action.target, action.target_uri)
            await self.libvirt.run(self._remove_target_copies, action.vm, uri, prepared, uri=uri)

    async def job_totals(
        self, read: Callable[..., JobTotals | None], *args: Any, uri: str | None = None
    ) -> JobTotals | None:
        """A finished job's statistics by `read(conn, *args)` (a worker thread; `uri`: the
        libvirtd it asks, this host's if None), or None if libvirt cannot say or does not
        answer within `TOTALS_TIMEOUT` (the thread is left to finish on its own)."""
        try:
            return await self.libvirt.read(read, *args, uri=uri, timeout=TOTALS_TIMEOUT)
        except libvirt.libvirtError as exc:
            log.debug("no final job statistics: %s", exc)
            return None
        except TimeoutError:
            log.warning(
                "no final job statistics: libvirt did not answer in time",
                extra={"fields": {"timeout_s": TOTALS_TIMEOUT}},
            )
            return None

    async def _clean_up(self, poller: asyncio.Future[None] | None) -> None:
        """After a job: stop its sampler."""
        if poller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    def _run_job(self, conn: Any, action: StartLibvirtMigration, prepared: list[LocalDisk]) -> None:
        """The blocking `migrateToURI3` call (a job thread, on the job's own connection);
        the local disks it copies are added to `prepared` once their images exist on the
        target."""
        dom = conn.lookupByName(action.vm)
        target_uri = self.locator.uri(action.target, action.target_uri)
        disks = local_disks(dom.XMLDesc(0))
        if disks:
            self._prepare_disks(dom, disks, action.target, target_uri)
            prepared.extend(disks)
        flags = migration_flags(action.policy, disks)
        params = migration_params(action.policy, action.migration_uri)
        # The measurement the inventory started last (waited for if still running), with
        # the others of the last minute.
        last = recent_dirty_rate(conn, dom)
        dirty = [*self._dirty_rates(action.vm), *([] if last is None else [last])]
        limit = switchover_limit_ms(action.policy, dirty)
        self._limits[action.migration_id] = limit
        _set_max_downtime(dom, limit)
        if action.migration_id in self._aborts:  # cancelled or revoked while it was prepared
            raise RuntimeError("abort asked for before libvirt's job began")
        fields = {
            "vm": action.vm,
            "to": target_uri,
            "disks": len(disks),
            "max_downtime_ms": limit,
            "dirty_mib_s": max(dirty, default=None),
        }
        log.info("libvirt migration starting", extra={"fields": fields})
        dom.migrateToURI3(target_uri, params, flags)

    def _remove_target_copies(self, vm: str, uri: str, disks: list[LocalDisk]) -> None:
        """After a failed job: delete the images prepared on the target (a worker thread).

        Only when the target has no domain of that name: if the VM got there after
        all (the job failed after the switchover), the images are its disks.
        An unreachable target keeps them until the next attempt replaces them.
        """
        try:
            with self.libvirt.peer(uri) as conn:
                remove_target_copies(conn, vm, disks)
        except Unreachable as exc:
            log.warning(
                "cannot remove the target's copies of a failed migration's disks",
                extra={"fields": {"vm": vm, "why": str(exc)}},
            )

    def _prepare_disks(self, dom: Any, disks: list[LocalDisk], target: str, uri: str) -> None:
        """Create the target's copies of `dom`'s local disks (a worker thread)."""
        capacities = [int(dom.blockInfo(disk.path)[0]) for disk in disks]
        try:
            with self.libvirt.peer(uri) as conn:
                prepare_on_target(conn, disks, capacities)
        except Unreachable as exc:
            raise RuntimeError(f"cannot reach {target}'s libvirt to prepare disks: {exc}") from None
        except libvirt.libvirtError as exc:
            raise RuntimeError(f"cannot prepare the VM's disks on {target}: {exc}") from None

    async def _poll(self, migration_id: str, vm: str) -> None:
        """Sample the job every `POLL_INTERVAL` s and report it to the core.

        On the shared connection, by the VM's name: the job blocks a connection of its
        own, and a libvirtd restarted mid-job answers again at the next sample.
        """
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self._report(migration_id, vm)

    async def _report(self, migration_id: str, vm: str) -> None:
        """One job sample, to the core (a failed sample is skipped: the next may work)."""
        try:
            raw, paused = await self.libvirt.read(_sample, vm)
        except libvirt.libvirtError as exc:
            log.debug("job sample failed: %s", exc)
            return
        if not paused and migration_id in self._postcopy:
            paused = JobPhase.POSTCOPY  # requested: the source pauses for it in a moment
        sample = progress_sample(migration_id, raw, paused or JobPhase.PRECOPY)
        if sample is not None and self._aborts.get(migration_id) is False:
            # Asked before this job began (the abortJob found none): ask the job itself.
            self._aborts[migration_id] = True
            with contextlib.suppress(libvirt.libvirtError):
                await self.libvirt.call(_on_job, vm, "abortJob")
        if sample is not None:
            await self._apply(self.core.migration_progress(migration_id, sample, self._clock()))

    async def _on_domain(self, vm: str, method: str, *args: Any) -> None:
        """Call `method` on the domain of a running job."""
        try:
            await self.libvirt.call(_on_job, vm, method, *args)
        except libvirt.libvirtError as exc:
            log.warning("%s failed", method, extra={"fields": {"vm": vm, "why": str(exc)}})


# --- pure helpers (no I/O) ---------------------------------------------------------------


def migration_flags(policy: MigrationPolicy, disks: list[LocalDisk]) -> int:
    """migrateToURI3 flags for `policy` and the disks to copy; post-copy is only *enabled*,
    started on demand. Overlays on known bases copy incrementally, other disks whole."""
    flags: int = BASE_FLAGS
    if disks:
        flags |= (
            libvirt.VIR_MIGRATE_NON_SHARED_INC
            if incremental(disks)
            else libvirt.VIR_MIGRATE_NON_SHARED_DISK
        )
    if policy.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


def migration_params(policy: MigrationPolicy, migration_uri: str) -> dict[str, Any]:
    """migrateToURI3 typed parameters: where QEMU connects, and the bandwidth cap, which holds
    in post-copy too (QEMU's post-copy is otherwise unlimited: a capped link would be
    flooded the moment a migration escalates).

    A dict because it is libvirt's own wire format (`VIR_MIGRATE_PARAM_*` names to values):
    it goes straight to `migrateToURI3` and to nothing else of ours."""
    params: dict[str, Any] = {}
    if migration_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
    if policy.bandwidth_mib_s > 0:
        cap = max(1, round(policy.bandwidth_mib_s))
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = cap
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = cap
    return params


def progress_sample(
    migration_id: str, raw: dict[str, Any], phase: JobPhase
) -> MigrationProgress | None:
    """A `MigrationProgress` from libvirt's jobStats(), or None when no job runs."""
    stats = job_stats(raw)
    if stats is None or stats.kind not in ("bounded", "unbounded"):
        return None
    total = stats.data_total
    percent = 100.0 * (total - stats.data_remaining) / total if total > 0 else 0.0
    return MigrationProgress(
        migration_id=migration_id,
        percent=max(0.0, min(100.0, percent)),
        data_remaining=stats.data_remaining,
        bandwidth=float(stats.memory_bps),
        dirty_rate=float(raw.get("memory_dirty_rate", 0)),
        iteration=stats.iteration,
        expected_downtime_ms=stats.downtime_ms,
        phase=phase,
    )


def job_totals(raw: dict[str, Any]) -> JobTotals | None:
    """What a finished job cost, from libvirt's jobStats(COMPLETED); None when it kept none.

    libvirt reports the pause only for a job that switched over (`downtime`, ms);
    `data_processed` counts memory and local disks together.
    """
    stats = job_stats(raw)
    if stats is None or stats.kind in ("bounded", "unbounded"):
        return None  # no finished job, or one still running
    downtime = raw.get("downtime")
    return JobTotals(
        data_bytes=max(0, stats.data_processed),
        downtime_s=None if downtime is None else max(0, int(downtime)) / 1000,
    )


# --- blocking helpers (worker threads) ----------------------------------------------------


def _completed_totals(dom: Any) -> JobTotals | None:
    """The finished job's totals from `dom`'s libvirt; None if it cannot say."""
    try:
        return job_totals(dom.jobStats(COMPLETED_JOB_KEPT))
    except libvirt.libvirtError as exc:
        log.debug("no final job statistics: %s", exc)
        return None


def final_totals(conn: Any, vm: str) -> JobTotals | None:
    """The finished job's totals as `conn`'s libvirt kept them (the target's after a job
    that moved the VM, the source's after one that did not)."""
    dom = find(conn, vm)
    return None if dom is None else _completed_totals(dom)


def _set_max_downtime(dom: Any, milliseconds: int) -> None:
    """Set the switchover pause limit before the job starts (libvirt has no migrateToURI3
    parameter for it here). Set before, not during: changing it mid-job is a second
    moving part in QEMU's convergence, and the value must hold from the first iteration.

    Caution, measured on the development machines (QEMU 7.2, TCG guests): a 50 ms limit
    with a bandwidth cap of 8 MiB/s ended with the guest's kernel panicking on the target;
    300 ms (QEMU's default) and no limit at all did not.
    """
    try:
        dom.migrateSetMaxDowntime(milliseconds, 0)
    except libvirt.libvirtError as exc:
        log.warning("cannot set the max downtime", extra={"fields": {"why": str(exc)}})


PAUSES = {
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: JobPhase.POSTCOPY,
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: JobPhase.SWITCHOVER,
}


def _lookup(conn: Any, vm: str) -> None:
    """Raises libvirtError if `vm` is not defined on `conn`."""
    conn.lookupByName(vm)


def _labels_of(conn: Any, vm: str) -> dict[str, str]:
    return domain_labels(conn.lookupByName(vm))


def _on_job(conn: Any, vm: str, method: str, *args: Any) -> None:
    """Call `method` (abortJob, migrateStartPostCopy) on `vm`'s domain."""
    getattr(conn.lookupByName(vm), method)(*args)


def _sample(conn: Any, vm: str) -> tuple[dict[str, Any], JobPhase | None]:
    """jobStats() and why the source is paused for the migration: post-copy, switchover
    (the final copy with the guest stopped) or None (it runs)."""
    dom = conn.lookupByName(vm)
    raw = dom.jobStats()
    state, reason = dom.state()
    return raw, PAUSES.get(reason) if state == libvirt.VIR_DOMAIN_PAUSED else None


def _job_running(conn: Any, vm: str) -> bool:
    """Whether a libvirt job still holds `vm` (False once it is gone from there)."""
    dom = find(conn, vm)
    return dom is not None and bool(in_job(dom))


def _in_postcopy(conn: Any, vm: str) -> bool:
    """Whether `vm` is paused for post-copy (its memory is split)."""
    try:
        state, reason = conn.lookupByName(vm).state()
    except libvirt.libvirtError:
        return False
    return bool(state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)
