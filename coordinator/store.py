"""The coordinator's state: sites, their views, operations, commands, events, in one database.

Every write is a function of a `Batch` (writes.py) run by the store's one
writer, which commits the writes that arrive together in one transaction
that takes the next global index, records their events (CloudEvents 1.0 when
served) under indexes of their own and stamps the tables they changed, so a
list's `X-Nova-Index` and a blocking query's wait (`wait_for`) follow every
change, and `GET /v1/events?index=N` replays them. A write method returns
only once its write committed. Domain methods return plain dicts (a delta's
fate: `Applied`) and raise `StoreError` subclasses; HTTP status codes are the
API's business.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from novacron.agent.tasks import wait_event
from novacron.protocol.sitelink import (
    Command,
    CommandKind,
    Delta,
    Disk,
    HostState,
    Outcome,
    VmSpec,
)

from .db import Connection, Database, Row, placeholders
from .stream import Applied, StreamPosition, Verdict, advance, judge
from .writes import Batch, Work, Writer, WriterCounts

ENROLL_TTL = 24 * 3600.0  # seconds an enrollment token stays valid
ROLES = ("reader", "operator", "admin")  # each includes the ones before it
TERMINAL = ("succeeded", "failed", "cancelled")  # operation states that never change again
UNFINISHED_COMMANDS = ("pending", "sent", "pinned")
KEYS_PER_READ = 32  # command keys looked up in one statement

T = TypeVar("T")


class StoreError(Exception):
    """A request the state refuses; the message is for the operator."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class PreconditionFailed(StoreError):
    """An `If-Match` revision that is no longer the current one."""


class Gone(StoreError):
    """A credential that was valid once and is not any more (used, expired, revoked)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: a token's name, role and tenant (recorded, not yet enforced)."""

    name: str
    role: str
    token_id: str = ""
    tenant: str = ""

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


LOCAL_ADMIN = Principal("local-admin", "admin")  # nova-coordinator's own commands, on the host


def hash_secret(secret: str) -> str:
    """Tokens are 256-bit random secrets: one SHA-256 suffices (no dictionary to attack)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Changes:
    """Wakes blocking queries when a table's index moves (in this process)."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}

    def notify(self, tables: Iterable[str]) -> None:
        for table in tables:
            event = self._waiters.pop(table, None)
            if event is not None:
                event.set()

    def event(self, table: str) -> asyncio.Event:
        if table not in self._waiters:
            self._waiters[table] = asyncio.Event()
        return self._waiters[table]


class Store:
    """Domain reads and writes over a `Database`."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        poll: float | None = None,
    ) -> None:
        self.db = db
        self._clock = clock
        self.changes = Changes()
        self._poll = poll  # seconds between index polls for a follower (others write)
        # Every write goes through the writer, which batches those that arrive together; the
        # database is looked up each batch (the coordinator wraps `db` to time its calls).
        self._writer = Writer(lambda: self.db, clock=clock, committed=self.changes.notify)

    @property
    def writes(self) -> WriterCounts:
        """What the writer did: writes and batches committed, batches run again one by one."""
        return self._writer.counts

    # --- indexes, events, blocking ---------------------------------------------------

    async def index(self, table: str = "index") -> int:
        row = await self.db.fetchone("SELECT value FROM counters WHERE name = ?", table)
        return int(row["value"]) if row else 0

    async def wait_for(self, table: str, after: int, timeout: float) -> int:
        """The table's index once it is above `after`, or when `timeout` passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            current = await self.index(table)
            left = deadline - asyncio.get_running_loop().time()
            if current > after or left <= 0:
                return current
            event = self.changes.event(table)
            step = left if self._poll is None else min(left, self._poll)
            await wait_event(event, step)

    async def _write(self, work: Work[T], *, streamed: bool = False) -> T:
        """Run `work` in the writer's next transaction (writes.py): what it returned, once
        committed. `streamed`: a site link's write, which lets the API's go first."""
        return await self._writer.write(work, streamed=streamed)

    async def events_after(self, index: int, limit: int) -> list[Row]:
        rows = await self.db.fetch(
            "SELECT idx, at, type, subject, site, data FROM events WHERE idx > ? "
            "ORDER BY idx LIMIT ?",
            index,
            limit,
        )
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    # --- sites -------------------------------------------------------------------------

    async def add_site(
        self, name: str, labels: dict[str, str], cost: float, by: Principal
    ) -> tuple[Row, str]:
        """A new site awaiting enrollment, and its one-time enrollment token."""
        token = "nve_" + secrets.token_urlsafe(32)
        now = self._clock()

        async def write(b: Batch) -> None:
            tx = b.tx
            if await tx.fetchone("SELECT name FROM sites WHERE name = ?", name):
                raise Conflict(f"site {name!r} exists")
            index = await b.stamp(("sites",))
            await tx.execute(
                "INSERT INTO sites (name, state, enroll_hash, enroll_expires, labels, cost, "
                "created_at, created_by, modify_index) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                name,
                hash_secret(token),
                now + ENROLL_TTL,
                json.dumps(labels, sort_keys=True),
                cost,
                now,
                by.name,
                index,
            )
            b.event("site.added", name, name, {"by": by.name})

        await self._write(write)
        return await self.site(name), token

    async def new_enrollment(self, name: str, by: Principal) -> str:
        """A fresh one-time token for a site not enrolled yet (the old one expired or was lost)."""
        site = await self.site(name)
        if site["state"] != "pending":
            raise Conflict(f"site {name!r} is {site['state']}: enrollment tokens are for new sites")
        token = "nve_" + secrets.token_urlsafe(32)

        async def write(b: Batch) -> None:
            tx = b.tx
            index = await b.stamp(("sites",))
            await tx.execute(
                "UPDATE sites SET enroll_hash = ?, enroll_expires = ?, modify_index = ? "
                "WHERE name = ?",
                hash_secret(token),
                self._clock() + ENROLL_TTL,
                index,
                name,
            )
            b.event("site.token", name, name, {"by": by.name})

        await self._write(write)
        return token

    async def enroll(self, token: str, ca_public: bytes) -> Row:
        """Bind `ca_public` to the site whose one-time `token` this is (and spend the token)."""
        digest = hash_secret(token)
        now = self._clock()

        async def write(b: Batch) -> str:
            tx = b.tx
            row = await tx.fetchone(
                "SELECT name, enroll_expires FROM sites WHERE enroll_hash = ?", digest
            )
            if row is None:
                raise Gone("enrollment token unknown or already used")
            if row["enroll_expires"] is not None and row["enroll_expires"] < now:
                raise Gone(
                    f"enrollment token for site {row['name']!r} expired: "
                    f"nova-coordinator site token {row['name']}"
                )
            other = await tx.fetchone("SELECT name FROM sites WHERE ca_public = ?", ca_public)
            if other is not None:
                raise Conflict(f"this CA is already enrolled as site {other['name']!r}")
            index = await b.stamp(("sites",))
            await tx.execute(
                "UPDATE sites SET state = 'enrolled', ca_public = ?, enroll_hash = NULL, "
                "enroll_expires = NULL, enrolled_at = ?, modify_index = ?, "
                "revision = revision + 1 WHERE name = ?",
                ca_public,
                now,
                index,
                row["name"],
            )
            b.event("site.enrolled", row["name"], row["name"], {})
            return str(row["name"])

        return await self.site(await self._write(write))

    async def site(self, name: str) -> Row:
        row = await self.db.fetchone("SELECT * FROM sites WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no site {name!r}")
        return _site_row(row)

    async def site_by_ca(self, ca_public: bytes) -> Row | None:
        row = await self.db.fetchone("SELECT * FROM sites WHERE ca_public = ?", ca_public)
        return _site_row(row) if row is not None else None

    async def sites(self) -> list[Row]:
        rows = await self.db.fetch("SELECT * FROM sites ORDER BY name")
        return [_site_row(r) for r in rows]

    async def update_site(
        self,
        name: str,
        labels: dict[str, str] | None,
        cost: float | None,
        revision: int | None,
        by: Principal,
    ) -> Row:
        async def write(b: Batch) -> None:
            tx = b.tx
            row = await tx.fetchone("SELECT revision FROM sites WHERE name = ?", name)
            if row is None:
                raise NotFound(f"no site {name!r}")
            if revision is not None and int(row["revision"]) != revision:
                raise PreconditionFailed(
                    f"site {name!r} is at revision {row['revision']}, not {revision}"
                )
            index = await b.stamp(("sites",))
            if labels is not None:
                await tx.execute(
                    "UPDATE sites SET labels = ? WHERE name = ?", json.dumps(labels), name
                )
            if cost is not None:
                await tx.execute("UPDATE sites SET cost = ? WHERE name = ?", cost, name)
            await tx.execute(
                "UPDATE sites SET revision = revision + 1, modify_index = ? WHERE name = ?",
                index,
                name,
            )
            b.event("site.updated", name, name, {"by": by.name})

        await self._write(write)
        return await self.site(name)

    async def revoke_site(self, name: str, by: Principal) -> Row:
        """The site's link is refused from now on; its last view is kept, marked stale."""

        async def write(b: Batch) -> None:
            tx = b.tx
            if await tx.fetchone("SELECT name FROM sites WHERE name = ?", name) is None:
                raise NotFound(f"no site {name!r}")
            index = await b.stamp(("sites",))
            await tx.execute(
                "UPDATE sites SET state = 'revoked', enroll_hash = NULL, connected = 0, "
                "revision = revision + 1, modify_index = ? WHERE name = ?",
                index,
                name,
            )
            b.event("site.revoked", name, name, {"by": by.name})

        await self._write(write)
        return await self.site(name)

    async def link_changed(self, name: str, connected: bool, gateway: str) -> bool:
        """Record the site's link up or down; False, changing nothing, for a link coming
        up of a site revoked meanwhile (the revocation may commit before this write)."""

        async def write(b: Batch) -> bool:
            tx = b.tx
            if connected:
                row = await tx.fetchone("SELECT state FROM sites WHERE name = ?", name)
                if row is None or row["state"] == "revoked":
                    return False
            index = await b.stamp(("sites",))
            await tx.execute(
                "UPDATE sites SET connected = ?, gateway = ?, last_seen = ?, modify_index = ? "
                "WHERE name = ?",
                int(connected),
                gateway,
                self._clock(),
                index,
                name,
            )
            kind = "site.connected" if connected else "site.disconnected"
            b.event(kind, name, name, {"gateway": gateway})
            return True

        return await self._write(write, streamed=True)

    async def position(self, name: str) -> StreamPosition:
        row = await self.db.fetchone("SELECT stream, applied FROM sites WHERE name = ?", name)
        if row is None:
            return StreamPosition()
        return StreamPosition(row["stream"], int(row["applied"]))

    # --- the site's view ------------------------------------------------------------------

    async def apply_delta(self, site: str, delta: Delta) -> Applied:
        """Judge and apply one delta of `site`'s stream, returning once it is committed (with
        the site's other deltas that arrived meanwhile, in one transaction).

        Says the verdict, why (for a resync) and the keys of pins it refuses
        (their operations were cancelled or gave up before the pin arrived)."""

        async def write(b: Batch) -> Applied:
            tx = b.tx
            row = await tx.fetchone("SELECT stream, applied FROM sites WHERE name = ?", site)
            position = StreamPosition(row["stream"], int(row["applied"])) if row else None
            if position is None:
                return Applied(Verdict.RESYNC, "unknown site")
            verdict, why = judge(position, delta)
            if verdict is not Verdict.APPLY:
                return Applied(verdict, why)
            tables = ("sites", "hosts", "vms", "operations")
            index = await b.stamp(tables)
            if delta.snapshot_start:
                await self._clear_view(tx, site)
            for host in delta.hosts:
                await self._upsert_host(tx, site, host, index)
            for node in delta.gone:
                await self._remove_host(tx, site, node)
            if delta.snapshot_end:
                await self._end_snapshot(tx, site, index)
            refused = []
            for pin in delta.accepted:
                if not await self._pin(tx, pin.key, pin.host, index):
                    refused.append(pin.key)
            for outcome in delta.outcomes:
                await self._finish(b, outcome, index)
            after = advance(position, delta)
            await tx.execute(
                "UPDATE sites SET stream = ?, applied = ?, last_seen = ?, modify_index = ? "
                "WHERE name = ?",
                after.stream,
                after.applied,
                self._clock(),
                index,
                site,
            )
            if delta.hosts or delta.gone:
                subject = f"{site}/{delta.stream}/{delta.seq}"
                data = {"hosts": [h.node_id for h in delta.hosts], "gone": list(delta.gone)}
                b.event("site.view", subject, site, data)
            return Applied(verdict, "", tuple(refused))

        return await self._write(write, streamed=True)

    async def _clear_view(self, tx: Connection, site: str) -> None:
        # Hosts are marked, not deleted: the snapshot's end removes those it did not name.
        await tx.execute("UPDATE hosts SET version = -1 WHERE site = ?", site)

    async def _end_snapshot(self, tx: Connection, site: str, index: int) -> None:
        for row in await tx.fetch(
            "SELECT node_id FROM hosts WHERE site = ? AND version = -1", site
        ):
            await self._remove_host(tx, site, row["node_id"])

    async def _upsert_host(self, tx: Connection, site: str, host: HostState, index: int) -> None:
        record = host.record
        row = await tx.fetchone(
            "SELECT version, state FROM hosts WHERE site = ? AND node_id = ?", site, host.node_id
        )
        same = row is not None and int(row["version"]) == record.version
        if row is not None and int(row["version"]) > record.version and record.version:
            return  # an older record than we hold: the newer one wins, as in the mesh
        await tx.execute(
            "INSERT INTO hosts (site, node_id, state, version, vcpus, memory_mib, used_vcpus, "
            "used_memory_mib, load, labels, draining, address, vm_count, vm_vcpus, vm_memory_mib, "
            "modify_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (site, node_id) DO UPDATE SET state = excluded.state, "
            "version = excluded.version, vcpus = excluded.vcpus, "
            "memory_mib = excluded.memory_mib, used_vcpus = excluded.used_vcpus, "
            "used_memory_mib = excluded.used_memory_mib, load = excluded.load, "
            "labels = excluded.labels, draining = excluded.draining, "
            "address = excluded.address, vm_count = excluded.vm_count, "
            "vm_vcpus = excluded.vm_vcpus, vm_memory_mib = excluded.vm_memory_mib, "
            "modify_index = excluded.modify_index",
            site,
            host.node_id,
            host.state.value,
            record.version,
            record.capacity.vcpus,
            record.capacity.memory_mib,
            record.usage.vcpus,
            record.usage.memory_mib,
            record.load,
            json.dumps(record.labels, sort_keys=True),
            int(record.draining),
            record.addresses[0] if record.addresses else "",
            len(record.vms),
            sum(vm.vcpus for vm in record.vms),
            sum(vm.memory_mib for vm in record.vms),
            index,
        )
        if same:
            return  # only the member state changed: its VMs are as they were
        await self._replace_vms(tx, site, host, index)

    async def _replace_vms(self, tx: Connection, site: str, host: HostState, index: int) -> None:
        node = host.node_id
        old = {
            r["name"]: r
            for r in await tx.fetch(
                "SELECT name, state, uuid, vcpus, memory_mib, labels FROM vms "
                "WHERE site = ? AND host = ?",
                site,
                node,
            )
        }
        new = {vm.name: vm for vm in host.record.vms}
        for name in set(old) - set(new):
            await tx.execute(
                "DELETE FROM vms WHERE site = ? AND host = ? AND name = ?", site, node, name
            )
            await tx.execute(
                "DELETE FROM vm_labels WHERE site = ? AND host = ? AND name = ?", site, node, name
            )
        for name, vm in new.items():
            labels = json.dumps(vm.labels, sort_keys=True)
            before = old.get(name)
            unchanged = before is not None and (
                before["state"],
                before["uuid"],
                before["vcpus"],
                before["memory_mib"],
                before["labels"],
            ) == (vm.state, vm.uuid, vm.vcpus, vm.memory_mib, labels)
            if unchanged:
                continue
            await tx.execute(
                "INSERT INTO vms (site, host, name, uuid, state, vcpus, memory_mib, cpu_load, "
                "labels, modify_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (site, name, host) DO UPDATE SET uuid = excluded.uuid, "
                "state = excluded.state, vcpus = excluded.vcpus, "
                "memory_mib = excluded.memory_mib, cpu_load = excluded.cpu_load, "
                "labels = excluded.labels, modify_index = excluded.modify_index",
                site,
                node,
                name,
                vm.uuid,
                vm.state,
                vm.vcpus,
                vm.memory_mib,
                vm.cpu_load,
                labels,
                index,
            )
            if before is None or before["labels"] != labels:  # a state change keeps them
                await self._replace_labels(tx, site, node, name, vm.labels)
            if vm.state == "running":
                await self._note_home(tx, site, name, node)

    async def _replace_labels(
        self, tx: Connection, site: str, node: str, name: str, labels: dict[str, str]
    ) -> None:
        await tx.execute(
            "DELETE FROM vm_labels WHERE site = ? AND host = ? AND name = ?", site, node, name
        )
        for key, value in labels.items():
            await tx.execute(
                "INSERT INTO vm_labels (site, host, name, key, value) VALUES (?, ?, ?, ?, ?)",
                site,
                node,
                name,
                key,
                value,
            )

    async def _note_home(self, tx: Connection, site: str, name: str, node: str) -> None:
        """A VM running on `node`: if it ran elsewhere before, it moved (history)."""
        home = await tx.fetchone(
            "SELECT host FROM vm_homes WHERE site = ? AND name = ?", site, name
        )
        if home is not None and home["host"] == node:
            return
        await tx.execute(
            "INSERT INTO vm_homes (site, name, host) VALUES (?, ?, ?) "
            "ON CONFLICT (site, name) DO UPDATE SET host = excluded.host",
            site,
            name,
            node,
        )
        await tx.execute(
            "INSERT INTO vm_history (site, name, at, from_host, to_host, how) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            site,
            name,
            self._clock(),
            home["host"] if home is not None else "",
            node,
            "observed",
        )

    async def _remove_host(self, tx: Connection, site: str, node: str) -> None:
        await tx.execute("DELETE FROM hosts WHERE site = ? AND node_id = ?", site, node)
        await tx.execute("DELETE FROM vms WHERE site = ? AND host = ?", site, node)
        await tx.execute("DELETE FROM vm_labels WHERE site = ? AND host = ?", site, node)

    async def hosts(self, site: str | None) -> list[Row]:
        if site:
            rows = await self.db.fetch("SELECT * FROM hosts WHERE site = ? ORDER BY node_id", site)
        else:
            rows = await self.db.fetch("SELECT * FROM hosts ORDER BY site, node_id")
        return [_host_row(r) for r in rows]

    async def placement_sites(self, overcommit: float) -> list[tuple[Row, tuple[float, int]]]:
        """Every enrolled site with the room of its roomiest host that takes new VMs (alive,
        not draining) as (vCPUs, MiB) free: memory its capacity less its VMs' (at least 0),
        vCPUs its cores times `overcommit` less its VMs' (at least 0), the most memory
        first, then vCPUs; (0, 0) for a site with no such host. The rooms come one row a
        site from the database, not one a host: placement asks on every create. Two
        queries: the same joined to the sites in one took about 20 ms a create on
        PostgreSQL under the load benchmark, against 2 ms for both."""
        free_vcpus = f"vcpus * {float(overcommit)!r} - vm_vcpus"
        free_memory = "memory_mib - vm_memory_mib"
        rows = await self.db.fetch(
            "SELECT site, free_vcpus, free_memory FROM ("
            " SELECT site, free_vcpus, free_memory, ROW_NUMBER() OVER ("
            "  PARTITION BY site ORDER BY free_memory DESC, free_vcpus DESC) AS nth FROM ("
            f"  SELECT site, CASE WHEN {free_vcpus} > 0 THEN {free_vcpus} ELSE 0 END"
            "   AS free_vcpus,"
            f"  CASE WHEN {free_memory} > 0 THEN {free_memory} ELSE 0 END AS free_memory"
            "  FROM hosts WHERE state = 'alive' AND draining = 0) AS rooms) AS ranked "
            "WHERE nth = 1"
        )
        rooms = {r["site"]: (float(r["free_vcpus"]), int(r["free_memory"])) for r in rows}
        return [
            (site, rooms.get(site["name"], (0.0, 0)))
            for site in await self.sites()
            if site["state"] == "enrolled"
        ]

    async def host(self, site: str, node: str) -> Row:
        row = await self.db.fetchone(
            "SELECT * FROM hosts WHERE site = ? AND node_id = ?", site, node
        )
        if row is None:
            raise NotFound(f"no host {node!r} in site {site!r}")
        return _host_row(row)

    # --- VMs --------------------------------------------------------------------------------

    async def vms(
        self,
        *,
        site: str = "",
        host: str = "",
        state: str = "",
        labels: dict[str, str] | None = None,
        per_page: int = 100,
        after: tuple[str, str, str] | None = None,
    ) -> tuple[list[Row], tuple[str, str, str] | None]:
        """One page of VMs in (site, name, host) order, and where the next page starts."""
        where, args = [], []
        for column, value in (("site", site), ("host", host), ("state", state)):
            if value:
                where.append(f"v.{column} = ?")
                args.append(value)
        for key, value in (labels or {}).items():
            where.append(
                "EXISTS (SELECT 1 FROM vm_labels l WHERE l.site = v.site AND l.host = v.host "
                "AND l.name = v.name AND l.key = ? AND l.value = ?)"
            )
            args += [key, value]
        if after is not None:
            where.append(
                "(v.site > ? OR (v.site = ? AND (v.name > ? OR (v.name = ? AND v.host > ?))))"
            )
            args += [after[0], after[0], after[1], after[1], after[2]]
        sql = "SELECT v.* FROM vms v"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY v.site, v.name, v.host LIMIT ?"
        rows = await self.db.fetch(sql, *args, per_page + 1)
        more = len(rows) > per_page
        rows = rows[:per_page]
        last = (rows[-1]["site"], rows[-1]["name"], rows[-1]["host"]) if more and rows else None
        return [_vm_row(r) for r in rows], last

    async def vm(self, site: str, name: str) -> Row:
        """One VM (the running copy, if a migration shows it on two hosts) and its history."""
        rows = await self.db.fetch(
            "SELECT * FROM vms WHERE site = ? AND name = ? ORDER BY host", site, name
        )
        if not rows:
            raise NotFound(f"no VM {name!r} in site {site!r}")
        row = next((r for r in rows if r["state"] == "running"), rows[0])
        vm = _vm_row(row)
        history = await self.db.fetch(
            "SELECT at, from_host, to_host, how, operation FROM vm_history "
            "WHERE site = ? AND name = ? ORDER BY id",
            site,
            name,
        )
        vm["history"] = history
        vm["copies"] = [{"host": r["host"], "state": r["state"]} for r in rows]
        return vm

    async def groups(self, key: str, value: str) -> set[str]:
        """Sites running a VM labelled `key`=`value`."""
        rows = await self.db.fetch(
            "SELECT DISTINCT site FROM vm_labels WHERE key = ? AND value = ?", key, value
        )
        return {r["site"] for r in rows}

    async def vm_exists(self, site: str, name: str) -> bool:
        """Whether `site` runs a VM named `name` (on any of its hosts)."""
        row = await self.db.fetchone(
            "SELECT 1 AS found FROM vms WHERE site = ? AND name = ? LIMIT 1", site, name
        )
        return row is not None

    # --- operations and commands ------------------------------------------------------------

    async def start_operation(
        self,
        kind: str,
        site: str,
        target: str,
        request: dict[str, Any],
        command: dict[str, Any] | None,
        by: Principal,
    ) -> Row:
        """A new operation (and the command that carries it to `site`, if any); or, when a
        command with the same idempotency key exists already, the operation that command
        carries. The API answers a retry without a write when it finds the key first; this
        is for requests with one key served at once, each past that check."""
        op_id = str(uuid.uuid4())
        now = self._clock()

        async def write(b: Batch) -> Row:
            tx = b.tx
            if command is not None:
                added = await tx.execute(
                    "INSERT INTO commands (key, operation, site, body, state, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    command["key"],
                    op_id,
                    site,
                    json.dumps(command, sort_keys=True),
                    now,
                    now,
                )
                if not added:
                    existing = await tx.fetchone(_OPERATION_FOR_KEY, command["key"])
                    assert existing is not None  # written with its command; neither is deleted
                    return existing
            index = await b.stamp(("operations",))
            row = await tx.fetchone(
                "INSERT INTO operations (id, kind, status, site, target, request, created_by, "
                "created_at, updated_at, modify_index, detail) "
                "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                op_id,
                kind,
                site,
                target,
                json.dumps(request, sort_keys=True),
                by.name,
                now,
                now,
                index,
                f"waiting to be sent to site {site}",
            )
            assert row is not None
            b.event("operation.created", op_id, site, {"kind": kind, "target": target})
            return row

        return _operation_row(await self._write(write))

    async def operation(self, op_id: str) -> Row:
        row = await self.db.fetchone("SELECT * FROM operations WHERE id = ?", op_id)
        if row is None:
            raise NotFound(f"no operation {op_id!r}")
        return _operation_row(row)

    async def operation_for_key(self, key: str) -> Row | None:
        """The operation whose command has idempotency key `key`, if there is one."""
        row = await self.db.fetchone(_OPERATION_FOR_KEY, key)
        return _operation_row(row) if row is not None else None

    async def operations(self, per_page: int, after: str | None) -> tuple[list[Row], str | None]:
        """Newest first, by (created_at, id)."""
        args: list[Any] = []
        sql = "SELECT * FROM operations"
        if after:
            stamp, _, op_id = after.partition("|")
            sql += " WHERE (created_at < ? OR (created_at = ? AND id < ?))"
            args += [float(stamp), float(stamp), op_id]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self.db.fetch(sql, *args, per_page + 1)
        more = len(rows) > per_page
        rows = rows[:per_page]
        last = f"{rows[-1]['created_at']!r}|{rows[-1]['id']}" if more and rows else None
        return [_operation_row(r) for r in rows], last

    async def cancel_operation(self, op_id: str, by: Principal) -> Row:
        """Cancel an operation whose command no host has started yet."""

        async def write(b: Batch) -> None:
            tx = b.tx
            row = await tx.fetchone("SELECT status FROM operations WHERE id = ?", op_id)
            if row is None:
                raise NotFound(f"no operation {op_id!r}")
            if row["status"] in TERMINAL:
                raise Conflict(f"operation {op_id} already {row['status']}")
            command = await tx.fetchone(
                "SELECT key, state, host FROM commands WHERE operation = ?", op_id
            )
            if command is not None and command["state"] == "pinned":
                raise Conflict(
                    f"operation {op_id} already runs on {command['host']}: it cannot be cancelled"
                )
            index = await b.stamp(("operations",))
            await self._end_operation(
                b, op_id, "cancelled", index, error=f"cancelled by {by.name}", code="cancelled"
            )
            if command is not None:
                await tx.execute(
                    "UPDATE commands SET state = 'cancelled', updated_at = ? WHERE key = ?",
                    self._clock(),
                    command["key"],
                )

        await self._write(write)
        return await self.operation(op_id)

    async def fail_operation(self, op_id: str, code: str, error: str) -> None:
        """End an operation that cannot be carried out (placement found nothing, ...)."""

        async def write(b: Batch) -> None:
            tx = b.tx
            index = await b.stamp(("operations",))
            await self._end_operation(b, op_id, "failed", index, error=error, code=code)
            await tx.execute("UPDATE commands SET state = 'failed' WHERE operation = ?", op_id)

        await self._write(write)

    async def _end_operation(
        self,
        b: Batch,
        op_id: str,
        status: str,
        index: int,
        *,
        error: str = "",
        code: str = "",
        result: dict[str, Any] | None = None,
        detail: str = "",
    ) -> None:
        await b.tx.execute(
            "UPDATE operations SET status = ?, error = ?, error_code = ?, result = ?, "
            "progress = ?, detail = ?, updated_at = ?, modify_index = ? WHERE id = ?",
            status,
            error,
            code,
            json.dumps(result or {}, sort_keys=True),
            100 if status == "succeeded" else 0,
            detail or error,
            self._clock(),
            index,
            op_id,
        )
        b.event(f"operation.{status}", op_id, "", {"error": error})

    async def commands_to_send(
        self,
        site: str,
        *,
        states: tuple[str, ...] = UNFINISHED_COMMANDS,
        keys: Iterable[str] = (),
    ) -> list[Command]:
        """The site's commands in `states` (every unfinished one unless told), oldest
        first, each with its pin if it has one; only those among `keys` if any are given.
        A link reads what it has not sent yet, not the whole backlog, on each kick: a site
        slow to finish its commands must not make every new one cost more."""
        sql = (
            "SELECT key, body, host, created_at FROM commands "
            f"WHERE site = ? AND state IN ({placeholders(len(states))})"
        )
        order = " ORDER BY created_at, key"
        wanted = sorted(set(keys))
        if not wanted:
            rows = await self.db.fetch(sql + order, site, *states)
        else:
            # Keys in chunks of one size (the last padded with its own last key): one
            # statement shape however many keys a delta names, and none too long to run.
            rows = []
            for start in range(0, len(wanted), KEYS_PER_READ):
                chunk = wanted[start : start + KEYS_PER_READ]
                chunk += chunk[-1:] * (KEYS_PER_READ - len(chunk))
                rows += await self.db.fetch(
                    f"{sql} AND key IN ({placeholders(len(chunk))}){order}", site, *states, *chunk
                )
            rows.sort(key=lambda r: (r["created_at"], r["key"]))
        return [command_from({**json.loads(r["body"]), "host": r["host"]}) for r in rows]

    async def unfinished_commands(self) -> dict[tuple[str, str], int]:
        """How many commands each site has not finished, by (site, state)."""
        rows = await self.db.fetch(
            "SELECT site, state, COUNT(*) AS n FROM commands WHERE state IN (?, ?, ?) "
            "GROUP BY site, state",
            *UNFINISHED_COMMANDS,
        )
        return {(r["site"], r["state"]): int(r["n"]) for r in rows}

    async def command_sent(self, key: str) -> None:
        async def write(b: Batch) -> None:
            tx = b.tx
            row = await tx.fetchone("SELECT operation, state FROM commands WHERE key = ?", key)
            if row is None or row["state"] not in ("pending", "sent"):
                return
            index = await b.stamp(("operations",))
            await tx.execute(
                "UPDATE commands SET state = 'sent', attempts = attempts + 1, updated_at = ? "
                "WHERE key = ?",
                self._clock(),
                key,
            )
            await tx.execute(
                "UPDATE operations SET status = 'running', detail = ?, updated_at = ?, "
                "modify_index = ? WHERE id = ? AND status = 'pending'",
                "sent to the site; waiting for the site to accept it",
                self._clock(),
                index,
                row["operation"],
            )

        await self._write(write, streamed=True)

    async def _pin(self, tx: Connection, key: str, host: str, index: int) -> bool:
        """Record the host a command runs on; False if its operation no longer wants it."""
        row = await tx.fetchone("SELECT operation, state, host FROM commands WHERE key = ?", key)
        if row is None or row["state"] in ("cancelled", "failed"):
            return False
        if row["state"] in ("pinned", "done"):
            return bool(row["host"] == host)  # a pin seen again (a resent delta) stays as it was
        await tx.execute(
            "UPDATE commands SET state = 'pinned', host = ?, updated_at = ? WHERE key = ?",
            host,
            self._clock(),
            key,
        )
        await tx.execute(
            "UPDATE operations SET status = 'running', progress = 10, detail = ?, "
            "updated_at = ?, modify_index = ? WHERE id = ?",
            f"running on host {host}",
            self._clock(),
            index,
            row["operation"],
        )
        return True

    async def _finish(self, b: Batch, outcome: Outcome, index: int) -> None:
        tx = b.tx
        row = await tx.fetchone(
            "SELECT operation, state, site FROM commands WHERE key = ?", outcome.key
        )
        if row is None or row["state"] == "done":
            return  # reported again (a new stream, a new gateway): the first report stands
        await tx.execute(
            "UPDATE commands SET state = 'done', host = ?, updated_at = ? WHERE key = ?",
            outcome.host,
            self._clock(),
            outcome.key,
        )
        result = {"host": outcome.host, "vm": outcome.vm, "migration": outcome.migration}
        op = await tx.fetchone("SELECT status FROM operations WHERE id = ?", row["operation"])
        if op is None or op["status"] in TERMINAL:
            return
        if outcome.ok:
            await self._end_operation(
                b, row["operation"], "succeeded", index, result=result, detail=outcome.detail
            )
        else:
            code = {404: "not_found", 409: "conflict", 503: "unavailable"}.get(
                outcome.status, "failed"
            )
            await self._end_operation(
                b,
                row["operation"],
                "failed",
                index,
                error=outcome.detail,
                code=code,
                result=result,
            )
        if outcome.ok and outcome.migration:
            await tx.execute(
                "INSERT INTO vm_history (site, name, at, from_host, to_host, how, operation) "
                "VALUES (?, ?, ?, ?, ?, 'migration', ?)",
                row["site"],
                outcome.vm,
                self._clock(),
                outcome.host,
                "",
                row["operation"],
            )

    # --- tokens -------------------------------------------------------------------------------

    async def create_token(
        self, name: str, role: str, tenant: str, by: Principal
    ) -> tuple[Row, str]:
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)

        async def write(b: Batch) -> None:
            tx = b.tx
            index = await b.stamp(("tokens",))
            await tx.execute(
                "INSERT INTO tokens (id, name, role, tenant, secret_hash, created_at, created_by, "
                "modify_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                token_id,
                name,
                role,
                tenant,
                hash_secret(secret),
                self._clock(),
                by.name,
                index,
            )
            b.event("token.created", token_id, "", {"role": role})

        await self._write(write)
        return await self.token(token_id), f"nvc_{token_id}_{secret}"

    async def token(self, token_id: str) -> Row:
        row = await self.db.fetchone(
            "SELECT id, name, role, tenant, created_at, created_by, revoked_at FROM tokens "
            "WHERE id = ?",
            token_id,
        )
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return row

    async def tokens(self) -> list[Row]:
        return await self.db.fetch(
            "SELECT id, name, role, tenant, created_at, created_by, revoked_at FROM tokens "
            "ORDER BY created_at, id"
        )

    async def revoke_token(self, token_id: str, by: Principal) -> Row:
        async def write(b: Batch) -> None:
            tx = b.tx
            row = await tx.fetchone("SELECT revoked_at FROM tokens WHERE id = ?", token_id)
            if row is None:
                raise NotFound(f"no token {token_id!r}")
            if row["revoked_at"] is None:
                index = await b.stamp(("tokens",))
                await tx.execute(
                    "UPDATE tokens SET revoked_at = ?, modify_index = ? WHERE id = ?",
                    self._clock(),
                    index,
                    token_id,
                )
                b.event("token.revoked", token_id, "", {"by": by.name})

        await self._write(write)
        return await self.token(token_id)

    async def authenticate(self, bearer: str) -> Principal | None:
        """The principal a bearer token stands for, or None (unknown, malformed or revoked)."""
        prefix, _, rest = bearer.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != "nvc" or not token_id or not secret or len(bearer) > 200:
            return None
        row = await self.db.fetchone(
            "SELECT name, role, tenant, secret_hash, revoked_at FROM tokens WHERE id = ?",
            token_id,
        )
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
            return None
        return Principal(row["name"], row["role"], token_id, row["tenant"])

    # --- audit ---------------------------------------------------------------------------------

    async def audit(
        self,
        principal: Principal,
        method: str,
        path: str,
        action: str,
        target: str,
        status: int,
        detail: str = "",
        request_id: str = "",
    ) -> None:
        await self.db.execute(
            "INSERT INTO audit (at, principal, role, method, path, action, target, status, "
            "detail, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self._clock(),
            principal.name,
            principal.role,
            method,
            path[:512],
            action,
            target[:256],
            status,
            detail[:1024],
            request_id,
        )

    async def audit_entries(
        self, per_page: int, before: int | None
    ) -> tuple[list[Row], int | None]:
        """Newest first."""
        if before is None:
            rows = await self.db.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT ?", per_page + 1)
        else:
            rows = await self.db.fetch(
                "SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?", before, per_page + 1
            )
        more = len(rows) > per_page
        rows = rows[:per_page]
        return rows, (int(rows[-1]["id"]) if more and rows else None)


# --- rows as the API shows them -------------------------------------------------------------


def _site_row(row: Row) -> Row:
    ca = row["ca_public"]
    return {
        "name": row["name"],
        "state": row["state"],
        "ca_public": base64.b64encode(bytes(ca)).decode() if ca else None,
        "labels": json.loads(row["labels"]),
        "cost": row["cost"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "enrolled_at": row["enrolled_at"],
        "connected": bool(row["connected"]),
        "gateway": row["gateway"],
        "last_seen": row["last_seen"],
        "revision": int(row["revision"]),
    }


def _host_row(row: Row) -> Row:
    return {
        "site": row["site"],
        "node_id": row["node_id"],
        "state": row["state"],
        "record_version": int(row["version"]),
        "capacity": {"vcpus": row["vcpus"], "memory_mib": int(row["memory_mib"])},
        "usage": {"vcpus": row["used_vcpus"], "memory_mib": int(row["used_memory_mib"])},
        "load": row["load"],
        "labels": json.loads(row["labels"]),
        "draining": bool(row["draining"]),
        "address": row["address"],
        "vm_count": int(row["vm_count"]),
        "vms": {"vcpus": int(row["vm_vcpus"]), "memory_mib": int(row["vm_memory_mib"])},
    }


def _vm_row(row: Row) -> Row:
    return {
        "id": f"{row['site']}:{row['name']}",
        "site": row["site"],
        "host": row["host"],
        "name": row["name"],
        "uuid": row["uuid"],
        "state": row["state"],
        "vcpus": int(row["vcpus"]),
        "memory_mib": int(row["memory_mib"]),
        "cpu_load": row["cpu_load"],
        "labels": json.loads(row["labels"]),
    }


_OPERATION_FOR_KEY = (
    "SELECT o.* FROM commands c JOIN operations o ON o.id = c.operation WHERE c.key = ?"
)


def _operation_row(row: Row) -> Row:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "site": row["site"],
        "target": row["target"],
        "progress": int(row["progress"]),
        "detail": row["detail"],
        "error": {"code": row["error_code"], "message": row["error"]} if row["error"] else None,
        "request": json.loads(row["request"]),
        "result": json.loads(row["result"]),
        "created_by": row["created_by"],
        # float(): SQLite's RETURNING gives a whole REAL as an int, where SELECT gives a float.
        "created_at": float(row["created_at"]),
        "updated_at": float(row["updated_at"]),
    }


def encode_cursor(parts: tuple[str, ...] | str) -> str:
    raw = json.dumps(list(parts) if isinstance(parts, tuple) else [parts])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str, size: int) -> tuple[str, ...] | None:
    """The cursor in a `next_token`, or None if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parts, list) or len(parts) != size:
        return None
    if not all(isinstance(p, str) for p in parts):
        return None
    return tuple(parts)


def command_from(body: dict[str, Any]) -> Command:
    """The wire command for a stored command body (with its pin, if any): the store keeps
    bodies as JSON, and hands out commands."""
    spec = body.get("spec") or {}
    return Command(
        body["key"],
        CommandKind(body["kind"]),
        host=body.get("host", ""),
        vm=body.get("vm", ""),
        target=body.get("target", ""),
        spec=VmSpec(
            name=spec.get("name", ""),
            vcpus=spec.get("vcpus", 0),
            memory_mib=spec.get("memory_mib", 0),
            kernel=spec.get("kernel", ""),
            initrd=spec.get("initrd", ""),
            cmdline=spec.get("cmdline", ""),
            disks=tuple(Disk(d["base"], d.get("size_mib", 0)) for d in spec.get("disks", [])),
            labels=dict(spec.get("labels", {})),
            start=spec.get("start", True),
        )
        if spec
        else VmSpec(),
        force=bool(body.get("force", False)),
        stop_timeout=float(body.get("stop_timeout", 30.0)),
        traceparent=str(body.get("traceparent", "")),
    )
