"""The coordinator's batched write path (coordinator/writes.py), on SQLite and a real PostgreSQL.

Deltas from many sites at once are committed once each, in fewer transactions
than writes, with events and indexes as if written one by one; a batch with
one bad write commits the others and fails only that one; a delta is
acknowledged (its call returns) only after its transaction committed: the
database closed in the middle of a batch loses nothing acknowledged, applies
nothing unacknowledged, and the sites resuming from their last acknowledged
sequence end with their whole stream applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from novacron.coordinator.db import Connection, Database, Row, SqliteDatabase, open_database
from novacron.coordinator.postgres import PostgresDatabase
from novacron.coordinator.store import LOCAL_ADMIN, Conflict, Store
from novacron.coordinator.stream import Applied, Verdict
from novacron.coordinator.writes import MAX_BATCH
from novacron.protocol import sitelink as wire
from novacron.protocol.messages import MemberState, NodeRecord, Resources, VmSummary

from .postgres import Postgres

HOSTS = 2
VMS_PER_HOST = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's URL ("" is SQLite in the test's directory)."""
    if request.param == "postgresql":
        postgres: Postgres = request.getfixturevalue("postgres")
        return postgres.database()
    return ""


@pytest.fixture
async def store(database: str, tmp_path: Path) -> AsyncIterator[Store]:
    db = await open_database(database, tmp_path)
    try:
        yield Store(db)
    finally:
        await db.close()


class Site:
    """A site's stream reduced to what the coordinator sees: its view and the next delta."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stream = f"{name}-stream"
        self.seq = 0
        self.acked = 0  # the last sequence the coordinator acknowledged
        self.records = {
            f"h{h}": NodeRecord(
                f"h{h}",
                1,
                capacity=Resources(vcpus=8, memory_mib=16384),
                vms=tuple(
                    VmSummary(f"{name}-h{h}-vm{v}", f"u-{name}-{h}-{v}", "running", 1, 64)
                    for v in range(VMS_PER_HOST)
                ),
            )
            for h in range(HOSTS)
        }
        self.sent: list[wire.Delta] = []

    def snapshot(self) -> wire.Delta:
        hosts = tuple(wire.HostState(n, MemberState.ALIVE, r) for n, r in self.records.items())
        return self._delta(snapshot_start=True, snapshot_end=True, hosts=hosts)

    def change(self) -> wire.Delta:
        """The next delta: one VM of one host flips between running and paused."""
        n = self.seq
        host = f"h{n % HOSTS}"
        old = self.records[host]
        vms = list(old.vms)
        flip = vms[n % len(vms)]
        state = "paused" if flip.state == "running" else "running"
        vms[n % len(vms)] = VmSummary(flip.name, flip.uuid, state, 1, 64)
        self.records[host] = NodeRecord(
            host, old.version + 1, capacity=old.capacity, vms=tuple(vms)
        )
        return self._delta(hosts=(wire.HostState(host, MemberState.ALIVE, self.records[host]),))

    def _delta(self, **fields: Any) -> wire.Delta:
        self.seq += 1
        delta = wire.Delta(self.stream, self.seq, **fields)
        self.sent.append(delta)
        return delta

    def states(self) -> dict[str, str]:
        return {vm.name: vm.state for r in self.records.values() for vm in r.vms}


async def enrolled(store: Store, count: int) -> list[Site]:
    sites = [Site(f"s{n:02}") for n in range(count)]
    for n, site in enumerate(sites):
        _, token = await store.add_site(site.name, {}, 0.0, LOCAL_ADMIN)
        await store.enroll(token, n.to_bytes(32, "big"))
        assert (await store.apply_delta(site.name, site.snapshot())).verdict is Verdict.APPLY
        site.acked = 1
    return sites


async def stream(store: Store, site: Site, deltas: int) -> None:
    """What a site link does: each delta sent once the one before it was acknowledged."""
    for _ in range(deltas):
        delta = site.change()
        applied = await store.apply_delta(site.name, delta)
        assert applied == Applied(Verdict.APPLY), applied
        site.acked = delta.seq


async def view_states(store: Store, site: str) -> dict[str, str]:
    vms, _ = await store.vms(site=site, per_page=1000)
    return {vm["name"]: vm["state"] for vm in vms}


async def test_deltas_from_many_sites_at_once_are_committed_once_in_fewer_transactions(
    store: Store,
) -> None:
    sites = await enrolled(store, 16)
    start = store.writes.batches, store.writes.writes
    index_before = await store.index()

    async def operations() -> None:
        for n in range(20):
            command = {"key": f"op-{n}", "kind": "start", "vm": "s00-h0-vm0"}
            await store.start_operation("start", "s00", "s00-h0-vm0", {}, command, LOCAL_ADMIN)

    await asyncio.gather(*(stream(store, site, 12) for site in sites), operations())

    batches, writes = store.writes.batches - start[0], store.writes.writes - start[1]
    assert writes == 16 * 12 + 20
    assert batches < writes, "writes arriving together share transactions"
    for site in sites:
        assert (await store.position(site.name)).applied == 13
        assert await view_states(store, site.name) == site.states()
    # Each write has its event, numbered in commit order above the index before; the index
    # stands at the last one, a table's stamp at the last batch that changed it.
    events = await store.events_after(index_before, 10_000)
    assert len(events) == 16 * 12 + 20
    numbers = [e["idx"] for e in events]
    assert numbers == sorted(set(numbers))
    views = [e for e in events if e["type"] == "site.view"]
    for site in sites:
        seqs = [int(e["subject"].rsplit("/", 1)[1]) for e in views if e["site"] == site.name]
        assert seqs == list(range(2, 14)), "a site's deltas applied once each, in order"
    assert await store.index() == numbers[-1]
    assert views[-1]["idx"] <= await store.index("vms") <= numbers[-1]
    assert await store.index("operations") == numbers[-1]
    # Sent again (a site that never heard the acks): duplicates, nothing changes.
    again = await asyncio.gather(*(store.apply_delta(s.name, d) for s in sites for d in s.sent[1:]))
    assert {a.verdict for a in again} == {Verdict.DUPLICATE}
    assert await store.events_after(numbers[-1], 10) == []


async def test_a_bad_write_in_a_batch_fails_alone_and_the_others_commit(store: Store) -> None:
    sites = await enrolled(store, 8)
    command = {"key": "taken", "kind": "start", "vm": "s00-h0-vm0"}
    first = await store.start_operation("start", "s00", "s00-h0-vm0", {}, command, LOCAL_ADMIN)
    failed_before = store.writes.failed_batches

    def operation(key: str, kind: str = "start") -> Awaitable[Row]:
        body = {"key": key, "kind": "start", "vm": "s00-h0-vm0"}
        return store.start_operation(kind, "s00", "s00-h0-vm0", {}, body, LOCAL_ADMIN)

    # Submitted together, before the writer runs: one batch, with an operation of no kind
    # (the database refuses it), a site that exists (the store refuses it), and a command
    # key already taken (a retry: answered with the operation that has it).
    calls: list[Awaitable[Any]] = [store.apply_delta(s.name, s.change()) for s in sites[:4]]
    calls += [operation("fresh-1"), operation("bad", cast(str, None))]
    calls += [store.add_site("s03", {}, 0, LOCAL_ADMIN), operation("taken")]
    calls += [store.apply_delta(s.name, s.change()) for s in sites[4:]]
    calls += [operation("fresh-2"), operation("twice"), operation("twice")]
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert store.writes.failed_batches == failed_before + 1
    refused, existing, retried = results[5], results[6], results[7]
    assert isinstance(refused, sqlite3.IntegrityError | asyncpg.NotNullViolationError)
    assert isinstance(existing, Conflict)
    assert retried == first
    ok = results[:5] + results[7:]
    assert not [r for r in ok if isinstance(r, BaseException)], ok
    for site in sites:
        assert (await store.position(site.name)).applied == 2
        assert await view_states(store, site.name) == site.states()
    assert (await store.operation_for_key("fresh-1")) is not None
    assert (await store.operation_for_key("fresh-2")) is not None
    assert results[-1] == results[-2], "a key given twice at once: one operation"
    assert await store.db.fetch("SELECT key FROM commands WHERE key IN ('bad', 'twice')") == [
        {"key": "twice"}
    ], "the refused operation's command went with it"
    assert (await store.operation_for_key("taken")) == first, "the first keeps its key"
    assert len(await store.sites()) == 8


class Dying:
    """The store's database, closed by `kill` before the `statement`-th statement of the
    next transaction once armed (as if the database server or its disk went away)."""

    def __init__(self, inner: Database, kill: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self._kill = kill
        self.armed_at: int | None = None
        self.statements_before_kill = 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self.inner.fetch(sql, *args)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return await self.inner.fetchone(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self.inner.execute(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        statement = self.armed_at
        self.armed_at = None
        async with self.inner.transaction() as tx:
            yield _DyingTx(tx, self, statement)

    async def close(self) -> None:
        await self.inner.close()

    async def before(self, count: int, at: int | None) -> None:
        if count == at:
            self.statements_before_kill = count - 1
            await self._kill()


class _DyingTx:
    def __init__(self, tx: Connection, db: Dying, at: int | None) -> None:
        self._tx, self._db, self._at, self._count = tx, db, at, 0

    async def _next(self) -> None:
        self._count += 1
        await self._db.before(self._count, self._at)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        await self._next()
        return await self._tx.fetch(sql, *args)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        await self._next()
        return await self._tx.fetchone(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        await self._next()
        return await self._tx.execute(sql, *args)


async def kill(db: Database) -> None:
    """Close the database under the store, mid-transaction, with no goodbye."""
    if isinstance(db, PostgresDatabase):
        db._pool.terminate()  # every connection closed at once, the transaction's included
    else:
        assert isinstance(db, SqliteDatabase)
        db._conn.close()


async def test_the_database_closed_mid_batch_loses_nothing_acknowledged(
    database: str, tmp_path: Path
) -> None:
    db = await open_database(database, tmp_path)
    store = Store(db)
    sites = await enrolled(store, 10)
    await asyncio.gather(*(stream(store, site, 5) for site in sites))
    dying = Dying(db, lambda: kill(db))
    store.db = dying
    # The next round arrives together: one batch (of ten deltas; eight on PostgreSQL), the
    # database closed in the middle of its second delta (the first ran all its statements,
    # and was not committed).
    dying.armed_at = 12
    results = await asyncio.gather(
        *(store.apply_delta(s.name, s.change()) for s in sites), return_exceptions=True
    )
    assert dying.statements_before_kill == 11
    assert all(isinstance(r, Exception) for r in results), "nothing acknowledged"
    for site in sites:  # the link drops; whatever follows fails too
        with pytest.raises(Exception):  # noqa: B017 (the backend's own errors)
            await store.apply_delta(site.name, site.change())
    acknowledged = {site.name: site.acked for site in sites}
    assert set(acknowledged.values()) == {6}
    with contextlib.suppress(Exception):
        await db.close()

    # A coordinator restarted on the same database: each site stands exactly at its last
    # acknowledged sequence, with the view as acknowledged, and resumes from there.
    db = await open_database(database, tmp_path)
    try:
        store = Store(db)
        for site in sites:
            assert (await store.position(site.name)).applied == acknowledged[site.name]
            expected = await replay(site, acknowledged[site.name])
            assert await view_states(store, site.name) == expected
        resumed = await asyncio.gather(
            *(
                store.apply_delta(site.name, delta)
                for site in sites
                for delta in site.sent[acknowledged[site.name] :]
            )
        )
        assert {r.verdict for r in resumed} == {Verdict.APPLY}
        views = [e for e in await store.events_after(0, 100_000) if e["type"] == "site.view"]
        for site in sites:
            assert (await store.position(site.name)).applied == site.seq == 8
            assert await view_states(store, site.name) == site.states()
            seqs = [int(e["subject"].rsplit("/", 1)[1]) for e in views if e["site"] == site.name]
            assert seqs == list(range(1, 9)), "every delta applied once"
    finally:
        await db.close()


async def replay(site: Site, upto: int) -> dict[str, str]:
    """The VM states a site's first `upto` deltas describe."""
    states: dict[str, str] = {}
    for delta in site.sent[:upto]:
        for host in delta.hosts:
            states.update({vm.name: vm.state for vm in host.record.vms})
    return states


async def test_an_operators_write_goes_before_the_deltas_waiting_ahead_of_it(
    store: Store, database: str
) -> None:
    """A hundred streaming sites keep a delta each waiting; a create asked through the
    API must not wait behind all of them (the deltas only wait longer for their acks)."""
    sites = await enrolled(store, 64)
    index_before = await store.index()
    deltas = [asyncio.create_task(store.apply_delta(site.name, site.change())) for site in sites]
    await asyncio.sleep(0)  # every delta is waiting for the writer
    command = {"key": "op-late", "kind": "start", "vm": "s00-h0-vm0"}
    await store.start_operation("start", "s00", "s00-h0-vm0", {}, command, LOCAL_ADMIN)
    assert {a.verdict for a in await asyncio.gather(*deltas)} == {Verdict.APPLY}

    events = await store.events_after(index_before, 10_000)
    order = [e["type"] for e in events]
    assert order.count("site.view") == 64, "every delta applied"
    operation = next(i for i, e in enumerate(events) if not e["type"].startswith("site."))
    most = MAX_BATCH["postgresql" if database else "sqlite"]
    assert operation <= 2 * most, (
        f"the operation committed after {operation} of the 64 deltas queued before it"
    )


async def test_a_flood_of_api_writes_never_holds_a_sites_delta_back_for_good(
    store: Store, database: str
) -> None:
    (site,) = await enrolled(store, 1)
    index_before = await store.index()
    most = MAX_BATCH["postgresql" if database else "sqlite"]
    flood = 8 * most

    async def operation(n: int) -> None:
        command = {"key": f"flood-{n}", "kind": "start", "vm": "s00-h0-vm0"}
        await store.start_operation("start", "s00", "s00-h0-vm0", {}, command, LOCAL_ADMIN)

    operations = [asyncio.create_task(operation(n)) for n in range(flood)]
    await asyncio.sleep(0)
    applied = await store.apply_delta(site.name, site.change())
    assert applied.verdict is Verdict.APPLY
    await asyncio.gather(*operations)

    events = await store.events_after(index_before, 10_000)
    delta = next(i for i, e in enumerate(events) if e["type"] == "site.view")
    assert delta <= 2 * most, f"the delta waited for {delta} of {flood} API writes"


async def test_a_site_revoked_while_its_link_comes_up_stays_disconnected(store: Store) -> None:
    (site,) = await enrolled(store, 1)
    await store.link_changed(site.name, True, "gw")
    await store.revoke_site(site.name, LOCAL_ADMIN)
    index = await store.index()
    # The link's own write, queued before the revocation, commits after it.
    assert not await store.link_changed(site.name, True, "gw")
    row = await store.site(site.name)
    assert (row["state"], row["connected"]) == ("revoked", False)
    assert [e["type"] for e in await store.events_after(index, 10)] == []
