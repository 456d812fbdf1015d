"""Looking at one VM in the libvirt of several hosts: the evidence `core.location` decides on.

A look opens a host's libvirt (this host's own URI, or a peer's as its record
names it, else `qemu+tcp://ADDRESS/system`), reads the domain's state, its
reason and whether a migration job holds it, and closes. The core's
`location.locate` decides from the answers; this module only reads and, when
told, removes a stale copy (`retire`).

libvirt calls block and a libvirtd can wedge (it held a domain's state lock
for minutes in the lab after being killed mid-post-copy): each look runs in
the host's `LibvirtAdapter` threads (this host's libvirtd on its shared
connection, a peer's on a connection opened for the look), counts as
"unknown" after `LOOK_TIMEOUT` seconds, and a host whose previous look is
still blocked is not asked again until it returns, so blocked calls never
pile up in the threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlparse

import libvirt

from .core.migration.location import Presence, Where
from .core.migration.saga import ClusterView
from .inventory import in_job
from .libvirt_adapter import LibvirtAdapter

log = logging.getLogger("novacron.locator")

T = TypeVar("T")

LOOK_TIMEOUT = 10.0  # seconds a libvirt look may take before it counts as "unknown"
PEER_URI = "qemu+tcp://{host}/system"  # a peer's libvirt when its record names a local URI

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
_PAUSED_FOR_MIGRATION = {
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migrating",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "post-copy",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "post-copy failed",
}
_RUNNING_FOR_MIGRATION = {  # the target of a post-copy migration runs before it has every page
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY: "post-copy",
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED: "post-copy failed",
}
_SHUTOFF = {
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "killed by libvirtd",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
}


class Locator:
    """Looks at VMs in the libvirt of this host and its peers (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        view: ClusterView,
        *,
        libvirt: LibvirtAdapter,
        timeout: float = LOOK_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.libvirt = libvirt  # this host's libvirt connection and threads
        self.libvirt_uri = libvirt.uri  # this host's libvirtd
        self._view = view  # records and members: where peers' libvirtd are
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[Any]] = {}  # host -> a look still blocked

    def uri(self, host: str, record_uri: str = "") -> str:
        """How to reach `host`'s libvirt: ours, its record's URI if remote, else its address."""
        if host == self.node_id:
            return self.libvirt_uri
        if not record_uri:
            record = self._view.records().get(host)
            record_uri = record.libvirt_uri if record is not None else ""
        if record_uri and urlparse(record_uri).hostname:
            return record_uri
        member = self._view.member(host)
        address = member.address if member is not None else host
        return PEER_URI.format(host=address.rpartition(":")[0] or address)

    async def look(self, vm: str, hosts: Iterable[str]) -> dict[str, Presence]:
        """What each host's libvirt says about `vm` (looked at in parallel)."""
        hosts = list(dict.fromkeys(hosts))
        answers = await asyncio.gather(*(self._look_one(vm, host) for host in hosts))
        return dict(zip(hosts, answers, strict=True))

    async def _look_one(self, vm: str, host: str) -> Presence:
        if host in self._pending:
            return Presence(Where.UNKNOWN, f"{host}'s libvirt has not answered an earlier look")
        uri = self.uri(host)
        future = asyncio.ensure_future(self.libvirt.read(domain_presence, vm, uri=uri))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            self._pending[host] = future
            future.add_done_callback(lambda done: self._answered_late(host, done))
            return Presence(
                Where.UNKNOWN, f"{host}'s libvirt did not answer in {self._timeout:g} s"
            )
        except libvirt.libvirtError as exc:
            return Presence(Where.UNKNOWN, f"{host}'s libvirt: {exc}")

    def _answered_late(self, host: str, done: asyncio.Future[Any]) -> None:
        """A look given up on has returned: `host` may be asked again."""
        self._pending.pop(host, None)
        if not done.cancelled():
            done.exception()  # retrieved: it was reported as "unknown" already

    async def retire(self, vm: str, host: str, uuid: str, force: bool = False) -> str:
        """Remove the copy of `vm` (domain `uuid`; "" for any) on `host`, unless it runs there
        (`force`: even then): what was done, for the log."""
        return await self._act(host, retire_copy, vm, uuid, force)

    async def boot(self, vm: str, host: str) -> str:
        """Start `vm` afresh on `host` (whatever half-copy is active there is destroyed)."""
        return await self._act(host, cold_boot, vm)

    async def read(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` on `host`'s libvirt, given up on (TimeoutError) after the look
        timeout; libvirt errors are raised as they are. For reads."""
        return await self.libvirt.read(fn, *args, uri=self.uri(host), timeout=self._timeout)

    async def call(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        """As `read`, for changes (not retried)."""
        return await self.libvirt.call(fn, *args, uri=self.uri(host), timeout=self._timeout)

    async def _act(self, host: str, fn: Callable[..., str], *args: Any) -> str:
        try:
            return await self.libvirt.call(fn, *args, uri=self.uri(host), timeout=self._timeout * 3)
        except TimeoutError:
            return f"failed: {host}'s libvirt did not answer"
        except libvirt.libvirtError as exc:
            return f"failed: {exc}"


# --- blocking helpers (worker threads) ----------------------------------------------------


def find(conn: Any, vm: str) -> Any | None:
    """The domain `vm` on `conn`, or None if there is none."""
    try:
        return conn.lookupByName(vm)
    except libvirt.libvirtError as exc:
        if int(exc.get_error_code() or 0) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def domain_presence(conn: Any, vm: str) -> Presence:
    """What the libvirtd of `conn` says about `vm` (blocking)."""
    dom = find(conn, vm)
    return _presence(dom) if dom is not None else Presence(Where.ABSENT, "not defined")


def _presence(dom: Any) -> Presence:
    state, reason = (int(x) for x in dom.state())
    uuid = dom.UUIDString()
    name = _STATES.get(state, "unknown state")
    persistent = bool(dom.isPersistent())
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED) or not dom.isActive():
        why = _SHUTOFF.get(reason, "")
        detail = f"{name} ({why})" if why else name
        leftover = reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED
        return Presence(Where.STOPPED, detail, uuid, leftover, persistent)
    if state == libvirt.VIR_DOMAIN_PAUSED and reason in _PAUSED_FOR_MIGRATION:
        detail = f"paused ({_PAUSED_FOR_MIGRATION[reason]})"
        split = reason != libvirt.VIR_DOMAIN_PAUSED_MIGRATION
        return Presence(Where.MIGRATING, detail, uuid, persistent=persistent, split=split)
    if state == libvirt.VIR_DOMAIN_RUNNING and reason in _RUNNING_FOR_MIGRATION:
        detail = f"running ({_RUNNING_FOR_MIGRATION[reason]})"
        return Presence(Where.MIGRATING, detail, uuid, persistent=persistent, split=True)
    if in_job(dom):
        detail = f"{name}, a libvirt job holds it"
        return Presence(Where.MIGRATING, detail, uuid, persistent=persistent)
    where = Where.PAUSED if state == libvirt.VIR_DOMAIN_PAUSED else Where.RUNNING
    return Presence(where, name, uuid, persistent=persistent)


def retire_copy(conn: Any, vm: str, uuid: str, force: bool = False) -> str:
    """Destroy and undefine `vm` if it is domain `uuid` ("": any) and does not run
    (`force`: even if it runs) (blocking)."""
    dom = find(conn, vm)
    if dom is None:
        return "already gone"
    presence = _presence(dom)
    if uuid and presence.uuid != uuid:
        return f"left alone: another domain of that name (uuid {presence.uuid})"
    if presence.where is Where.RUNNING and not force:
        return "left alone: it runs there"
    done = []
    if dom.isActive():
        dom.destroy()
        done.append(f"destroyed ({presence.detail})")
    if dom.isPersistent():
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        )
        dom.undefineFlags(flags)
        done.append("undefined")
    return " and ".join(done) or "nothing to do"


def cold_boot(conn: Any, vm: str) -> str:
    """Start `vm` from its definition, destroying any active half-copy first (blocking)."""
    dom = conn.lookupByName(vm)
    done = []
    if dom.isActive():
        dom.destroy()
        done.append("destroyed what was left")
    dom.create()
    return " and ".join([*done, "started"])
