"""VMs that several hosts' records claim: checked against libvirt, never simply believed.

A record is its owner's word: it may be stale (a definition a killed libvirtd
left behind, listed "shut off") or a lie (a member listing another host's VM).
Every few seconds this agent finds the VMs listed by more than one record
(`location.claimants`), looks at each in the libvirt of every claimant (the
same looks a reconcile makes), and keeps a `ClaimVerdict`: where it runs and
which claims the claimant's own libvirt denies. The local API shows the VM
where it runs and lists the denied claims as conflicts; a migration in flight
(a migration job holds the domain) is left alone until it ends. A copy on
this very host that a migration left behind while the VM provably runs
elsewhere, the same domain, is retired: "shut off (migrated)" (a killed
libvirtd never undefined it), still paused for a migration that ended (its
libvirtd came back after the saga had decided), or stopped in any way after
this host's own committed migration took the VM where it runs (a restarted
libvirtd may shut the source's half down as "destroyed" or "failed"). A
retire that fails is tried again at the next look, not after `RECHECK`. Any
other copy is left alone; `nova vm start` refuses it
(`recovery.start_refusal`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .core.migration.location import On, Presence, Where, claimants, locate
from .core.migration.saga import ClusterView
from .locator import Locator
from .tasks import cancel_and_wait

log = logging.getLogger("novacron.claims")

INTERVAL = 5.0  # seconds between looks for VMs claimed by several records
RECHECK = 30.0  # seconds a verdict holds while the claims do not change


@dataclass(frozen=True, slots=True)
class ClaimVerdict:
    """What libvirt said about a VM that several records list."""

    vm: str  # the VM
    runs_on: tuple[str, ...]  # hosts whose libvirt runs it (one, unless it runs twice)
    denied: Mapping[str, str]  # host -> why its claim is not believed (its libvirt's words)
    claims: tuple[tuple[str, int], ...]  # the (host, record version) pairs this judged
    checked_at: float  # when (this agent's clock)


class ClaimCheck:
    """Keeps a verdict for every VM that more than one record claims (module docstring)."""

    def __init__(
        self,
        node_id: str,
        mesh: Callable[[], ClusterView],
        locator: Locator,
        *,
        clock: Callable[[], float],
        in_flight: Callable[[str], bool] = lambda vm: False,
        moved_to: Callable[[str], str | None] = lambda vm: None,
    ) -> None:
        self.node_id = node_id
        self._mesh = mesh  # records as this agent holds them
        self._locator = locator  # looks at a VM in each host's libvirt
        self._clock = clock
        self._in_flight = in_flight  # a migration of ours moves it: its saga decides
        self._moved_to = moved_to  # where our last committed migration of a VM took it
        self.verdicts: dict[str, ClaimVerdict] = {}  # VM -> the last verdict
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="claims")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.check()
            except Exception:  # one bad look must not end the checks
                log.exception("checking VMs claimed by several hosts failed")

    async def check(self) -> None:
        """Judge every VM claimed by several records whose claims changed or aged."""
        records = self._mesh().records()
        claimed = claimants(records)
        for vm in list(self.verdicts):
            if vm not in claimed:
                del self.verdicts[vm]  # one claim left: nothing to judge
        now = self._clock()
        for vm, hosts in sorted(claimed.items()):
            claims = tuple((h, records[h].version) for h in hosts)
            known = self.verdicts.get(vm)
            if known is not None and known.claims == claims and now - known.checked_at < RECHECK:
                continue
            if self._in_flight(vm):
                continue
            await self._judge(vm, hosts, claims, now)

    async def _judge(
        self, vm: str, hosts: tuple[str, ...], claims: tuple[tuple[str, int], ...], now: float
    ) -> None:
        seen = await self._locator.look(vm, hosts)
        verdict = locate(seen)
        if not isinstance(verdict, On):
            self.verdicts.pop(vm, None)  # moving, unreachable, or really twice: shown as listed
            if any(p.where is Where.RUNNING for p in seen.values()):
                self._warn_twice(vm, seen)
            return
        uuid = seen[verdict.host].uuid
        denied = {  # no such domain, or a stopped copy of this very one (not a namesake)
            h: f"{h}'s libvirt: {p.detail or p.where.value}"
            for h, p in seen.items()
            if h != verdict.host
            and (p.where is Where.ABSENT or (p.where is Where.STOPPED and p.uuid == uuid))
        }
        fresh = ClaimVerdict(vm, (verdict.host,), denied, claims, now)
        if self.verdicts.get(vm, fresh).denied != denied or vm not in self.verdicts:
            for host, why in denied.items():
                fields = {"vm": vm, "host": host, "runs_on": verdict.host, "why": why}
                log.warning("a host's claim on a VM is not believed", extra={"fields": fields})
        self.verdicts[vm] = fresh
        own = seen.get(self.node_id)
        moved_there = self._moved_to(vm) == verdict.host
        if (
            own is not None
            and self.node_id in verdict.stale
            and _left_behind(own, uuid, moved_there)
        ):
            await self._retire_own(vm, verdict.host, own)

    async def _retire_own(self, vm: str, runs_on: str, own: Presence) -> None:
        done = await self._locator.retire(vm, self.node_id, own.uuid)
        fields = {"vm": vm, "host": self.node_id, "runs_on": runs_on, "done": done}
        log.warning("stale copy of a VM retired", extra={"fields": fields})
        if done.startswith("failed"):
            self.verdicts.pop(vm, None)  # judged again at the next look

    @staticmethod
    def _warn_twice(vm: str, seen: Mapping[str, Presence]) -> None:
        running = sorted(h for h, p in seen.items() if p.where is Where.RUNNING)
        if len(running) > 1:
            fields = {"vm": vm, "hosts": ",".join(running)}
            log.error("a VM runs on several hosts at once", extra={"fields": fields})

    def believed(self, vm: str, host: str) -> str | None:
        """Why `host`'s claim on `vm` is not believed (None: nothing against it)."""
        verdict = self.verdicts.get(vm)
        return verdict.denied.get(host) if verdict is not None else None

    def runs_on(self, vm: str) -> tuple[str, ...]:
        verdict = self.verdicts.get(vm)
        return verdict.runs_on if verdict is not None else ()


def _left_behind(own: Presence, uuid: str, moved_there: bool) -> bool:
    """Whether this host's copy of the domain `uuid` is what a migration left behind
    (`moved_there`: our own committed migration took the VM where it runs)."""
    if own.uuid != uuid:
        return False
    return (
        own.leftover or own.where is Where.MIGRATING or (moved_there and own.where is Where.STOPPED)
    )
