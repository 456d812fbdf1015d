"""The one adapter between coordinator commands and this agent's own controls.

A command from the coordinator runs through exactly the code the local CLI
runs (`VmControl` for `nova vm create/start/stop/delete`, `Migrator.migrate`
for `nova vm migrate`, `Drain` for `nova host drain` on the host itself), so
it gets the same checks and refusals. Nothing else in the site link touches
those controls: when they change, only this module does.

A migrate to a host that lacks the VM's template waits, as `nova vm migrate`
does, while that host fetches it from its peers, then migrates there
(`core/images/target_fetch.py` decides when the wait ends, for both).

A drain or undrain from the coordinator runs here, on the pinned host, as
this host's own local command (`DrainControl`, what `nova host drain` on the
host itself calls), not as a request from another member (`DrainRequests`,
which needs an operator's signed command). What authorizes it is the
coordinator's signature on the command, checked by this host before it gets
here (`SiteCommands`, `protocol/coordinator_commands.py`): the gateway that
relayed it can neither make one up nor alter one. The operator behind it
holds a coordinator token with the operator role (checked and audited there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novacron.protocol.messages import NodeRecord
from novacron.protocol.sitelink import Command, CommandKind, Outcome

from .api import DrainControl, MigrationControl, VmLifecycle, http_status
from .api_requests import MigrateRequest, create_request, stop_timeout
from .core.images.target_fetch import (
    FETCH_QUIET,
    TEMPLATE_ASKS,
    TEMPLATE_LOOK,
    AwaitedFetch,
    FetchState,
    FetchWatch,
    awaited_fetch,
)
from .core.observability.tracing import format_traceparent
from .core.refusals import RefusalKind, Refused

if TYPE_CHECKING:  # the annotation only: the daemon decides whether traces are loaded
    from .tracing import Tracing

log = logging.getLogger("novacron.site_controls")


@dataclass(frozen=True)
class SiteControls:
    """This host's controls, as the local API has them."""

    node_id: str
    vms: VmLifecycle
    migrations: MigrationControl
    drain: DrainControl
    records: Callable[[], Mapping[str, NodeRecord]]  # the mesh's records, as this host has them
    tracing: Tracing | None = None

    async def execute(self, command: Command) -> Outcome:
        """Run `command` here; its outcome (a refusal is an outcome, not an error)."""
        if self.tracing is None:
            return await self._refused_or_done(command, command.traceparent)
        span = self.tracing.begin(
            f"site command {command.kind.value}",
            command.traceparent,
            {"novacron.command": command.key, "novacron.vm": command.vm or command.spec.name},
        )
        outcome = await self._refused_or_done(command, format_traceparent(span.context))
        self.tracing.end(span, None if outcome.ok else outcome.detail)
        return outcome

    async def _refused_or_done(self, command: Command, traceparent: str) -> Outcome:
        try:
            return await self._execute(command, traceparent)
        except Refused as exc:
            return Outcome(
                command.key,
                ok=False,
                host=self.node_id,
                status=http_status(exc),
                detail=str(exc),
                vm=command.vm or command.spec.name,
            )

    async def _execute(self, command: Command, traceparent: str) -> Outcome:
        key, here = command.key, self.node_id
        kind = command.kind
        if kind is CommandKind.CREATE:
            create = create_request(create_body(command))  # checked as the API checks it
            result = await self.vms.create(create.spec, create.start)
            started = " and started" if result.started else ""
            return Outcome(key, True, here, 201, f"created on {here}{started}", command.spec.name)
        if kind is CommandKind.START:
            await self.vms.start(command.vm)
            return Outcome(key, True, here, 200, f"started on {here}", command.vm)
        if kind is CommandKind.STOP:
            timeout = stop_timeout({"timeout": command.stop_timeout})
            stopped = await self.vms.stop(command.vm, timeout)
            return Outcome(key, True, here, 200, f"stopped ({stopped.stopped})", command.vm)
        if kind is CommandKind.DELETE:
            await self.vms.delete(command.vm, command.force)
            return Outcome(key, True, here, 200, f"deleted from {here}", command.vm)
        if kind is CommandKind.MIGRATE:
            # No target: the best host now. The migration's spans join the command's.
            move = MigrateRequest(command.target or None, traceparent=traceparent)
            migration, fetched = await self._migrate(command.vm, move)
            after = f" once {fetched.host} held template {fetched.ref}" if fetched else ""
            detail = f"migration {migration} started from {here}{after}"
            return Outcome(key, True, here, 202, detail, command.vm, migration)
        status = await (self.drain.drain() if kind is CommandKind.DRAIN else self.drain.undrain())
        what = "draining" if status.draining else "not draining"
        return Outcome(key, True, here, 200, f"{here} {what}")

    async def _migrate(self, vm: str, move: MigrateRequest) -> tuple[str, AwaitedFetch | None]:
        """Start moving `vm` as `nova vm migrate` does: a target that lacks its template
        and fetches it is waited for, then asked again. The migration id, and the fetch
        waited for (None if none); `Refused` if it will not start."""
        fetched = None
        for _ in range(TEMPLATE_ASKS):
            try:
                return await self.migrations.migrate(vm, move), fetched
            except Refused as exc:
                fetched = awaited_fetch(exc.details)
                if fetched is None:
                    raise
                await self._await_template(fetched)
                # That host by name: "auto" could now choose another, one that lacks it.
                move = dataclasses.replace(move, target=fetched.host)
        return await self.migrations.migrate(vm, move), fetched

    async def _await_template(self, awaited: AwaitedFetch) -> None:
        """Return once the target's record lists the template as held whole; `Refused`
        once it has been neither fetching nor holding it for a while."""
        fields = {"host": awaited.host, "template": awaited.ref}
        log.info("waiting for the target to fetch the template", extra={"fields": fields})
        watch = FetchWatch(awaited, time.monotonic(), FETCH_QUIET)
        while True:
            record = self.records().get(awaited.host)
            held, fetching = (record.templates, record.fetching) if record else ((), ())
            state = watch.look(held, fetching, time.monotonic())
            if state is FetchState.HELD:
                return
            if state is FetchState.QUIET:
                raise Refused(RefusalKind.CONFLICT, watch.gave_up())
            await asyncio.sleep(TEMPLATE_LOOK)


def create_body(command: Command) -> dict[str, Any]:
    """The body `nova vm create` would send for the command's spec."""
    spec = command.spec
    body: dict[str, Any] = {
        "name": spec.name,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "labels": dict(spec.labels),
        "start": spec.start,
    }
    for name in ("kernel", "initrd", "cmdline"):
        if getattr(spec, name):
            body[name] = getattr(spec, name)
    if spec.disks:
        body["disks"] = [
            {"base": d.base, **({"size_mib": d.size_mib} if d.size_mib else {})} for d in spec.disks
        ]
    return body
