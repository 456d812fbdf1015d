"""The coordinator's write path: one writer commits the writes that arrive together.

Every write stamps the one global index, so writes are serial whatever we do.
Rather than each taking its turn with a transaction of its own (on
PostgreSQL several round trips each, its fence check, index and commit
included), the writes waiting when the writer comes free go into one
transaction, with one index stamp and their events inserted together:

- A write is a function of the `Batch` (the transaction, the batch's index,
  its events); the writes of a batch run one after another in the order they
  arrived, each seeing what the ones before it wrote.
- What a write returns reaches its caller only once the transaction holding
  it committed: a site's delta is acknowledged only after that, so a site
  that resumes from its last acknowledged sequence loses nothing.
- A batch that fails (a write raised, the commit failed, the database went
  away) is rolled back whole and its writes are run again one by one, each in
  a transaction of its own: only a write that fails on its own fails, with
  its own error; the others commit as if they had been alone.
- A write whose caller stopped waiting before the writer took it is not run;
  one taken already runs to its end (a delta committed but not acknowledged
  is sent again by the site and judged a duplicate).
- Writes asked for through the API go first: a batch takes them before the
  site links' writes (deltas, sends, link state), each kind in its order of
  arrival, but keeps half its room for the site links while any of theirs
  wait. A hundred sites streaming keep up to a hundred deltas waiting, and an
  operator's create must not wait behind all of them; a flood of API writes
  must not hold a site's deltas back for good either.

The writer is a task that exists while writes wait: the first write to find
none starts it, and it ends when no write is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .db import Connection, Database, placeholders

log = logging.getLogger("novacron.coordinator.writes")

T = TypeVar("T")

# Writes in one transaction at most (the first of a batch waits for the last, and a batch's
# callers all resume at once). SQLite runs in the process: a batch holds the event loop from
# BEGIN to COMMIT. On PostgreSQL, batches of 8 served the load benchmark better than 64
# (create p99, deltas applied, requests served), at some cost in the store's throughput.
MAX_BATCH = {"sqlite": 16, "postgresql": 8}
# Events go in with multi-row INSERTs of these sizes (the largest that fit, then smaller):
# a handful of statement shapes, so PostgreSQL's prepared statements (asyncpg caches 100 a
# connection) are not pushed out by one shape per batch size.
EVENT_CHUNKS = (64, 16, 4, 1)
TABLES = ("sites", "hosts", "vms", "operations", "tokens")  # the tables with an index of their own


class Batch:
    """What a write sees: the batch's transaction, its global index and its events."""

    def __init__(self, tx: Connection, clock: Callable[[], float]) -> None:
        self.tx = tx
        self._clock = clock
        self._index: int | None = None
        self._tables: set[str] = set()
        self._events: list[tuple[float, str, str, str, str]] = []

    async def stamp(self, tables: Iterable[str]) -> int:
        """The batch's global index, which rows it changes carry, and the tables it changed
        (each stamped at the commit). The index is taken once a batch, on the first call."""
        if self._index is None:
            row = await self.tx.fetchone(
                "UPDATE counters SET value = value + 1 WHERE name = 'index' RETURNING value"
            )
            assert row is not None
            self._index = int(row["value"])
        self._tables.update(tables)
        return self._index

    def event(self, kind: str, subject: str, site: str, data: dict[str, Any]) -> None:
        """Record an event; each gets an index of its own, above the batch's, in order."""
        if self._index is None:
            raise RuntimeError("an event before the write's stamp")
        at = self._clock()
        self._events.append((at, kind, subject, site, json.dumps(data, sort_keys=True)))

    async def finish(self) -> frozenset[str]:
        """Insert the events and stamp the changed tables (before the commit); the tables."""
        if self._index is None:
            return frozenset()
        start = 0
        while start < len(self._events):
            size = next(c for c in EVENT_CHUNKS if c <= len(self._events) - start)
            values = ", ".join(f"({placeholders(6)})" for _ in range(size))
            args: list[Any] = []
            for n, row in enumerate(self._events[start : start + size], start=start):
                args += [self._index + 1 + n, *row]
            await self.tx.execute(
                f"INSERT INTO events (idx, at, type, subject, site, data) VALUES {values}", *args
            )
            start += size
        last = self._index + len(self._events)
        unknown = self._tables.difference(TABLES)
        if unknown:
            raise ValueError(f"no index is kept for {sorted(unknown)}")
        # One statement shape whatever the tables: the ones not changed are named as "index".
        names = [t if t in self._tables else "index" for t in TABLES]
        await self.tx.execute(
            f"UPDATE counters SET value = ? WHERE name IN ({placeholders(1 + len(names))})",
            last,
            "index",
            *names,
        )
        return frozenset(self._tables)


Work = Callable[[Batch], Awaitable[T]]


@dataclass(slots=True)
class _Write(Generic[T]):
    work: Work[T]
    done: asyncio.Future[T]


@dataclass(slots=True)
class WriterCounts:
    """What the writer did (tests and benchmarks read it)."""

    writes: int = 0  # writes committed
    batches: int = 0  # transactions committed
    failed_batches: int = 0  # batches of several writes rolled back and run again one by one
    failed_writes: int = 0  # writes that failed on their own


class Writer:
    """Commits the writes submitted to it in batches (see the module's rules)."""

    def __init__(
        self,
        database: Callable[[], Database],
        *,
        clock: Callable[[], float],
        committed: Callable[[frozenset[str]], None],
        max_batch: dict[str, int] | None = None,
    ) -> None:
        self._database = database  # called each batch: the store's database may be wrapped later
        self._clock = clock
        self._committed = committed  # the tables a committed batch changed
        self._max_batch = max_batch or MAX_BATCH
        self._asked: deque[_Write[Any]] = deque()  # writes an API request waits on
        self._streamed: deque[_Write[Any]] = deque()  # writes of the site links
        self._task: asyncio.Task[None] | None = None
        self.counts = WriterCounts()

    async def write(self, work: Work[T], *, streamed: bool = False) -> T:
        """What `work` returned, once the transaction it ran in committed; or what it raised
        (or the commit raised) when it ran alone. `streamed`: a site link's write, which
        waits behind those the API asked for."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        (self._streamed if streamed else self._asked).append(_Write(work, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="coordinator-writer")
        return await done

    async def _drain(self) -> None:
        batch: list[_Write[Any]] = []
        try:
            while self._asked or self._streamed:
                batch = []
                most = self._max_batch[self._database().dialect]
                # The site links keep half of a batch while any of theirs wait: however
                # many API writes queue, a delta is never held back for good.
                kept = min(len(self._streamed), most // 2)
                _take(self._asked, batch, most - kept)
                _take(self._streamed, batch, most)
                if batch:
                    await self._run(batch)
                batch = []
        finally:  # cancelled (the loop stops): nobody is left waiting forever
            for item in (*batch, *self._asked, *self._streamed):
                if not item.done.done():
                    item.done.cancel()
            if not (self._asked or self._streamed):
                self._task = None

    async def _run(self, batch: list[_Write[Any]]) -> None:
        try:
            results = await self._commit(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            self.counts.failed_batches += 1
            log.warning(
                "a batch of writes failed; running them one by one",
                extra={"fields": {"writes": len(batch), "why": repr(exc)[:200]}},
            )
            for item in batch:
                if item.done.done():
                    continue
                try:
                    (result,) = await self._commit([item])
                except Exception as alone:
                    self._fail(item, alone)
                else:
                    _resolve(item, result)
            return
        for item, result in zip(batch, results, strict=True):
            _resolve(item, result)

    async def _commit(self, batch: list[_Write[Any]]) -> list[Any]:
        async with self._database().transaction() as tx:
            changes = Batch(tx, self._clock)
            results = [await item.work(changes) for item in batch]
            tables = await changes.finish()
        self.counts.batches += 1
        self.counts.writes += len(batch)
        if tables:
            self._committed(tables)
        return results

    def _fail(self, item: _Write[Any], exc: Exception) -> None:
        self.counts.failed_writes += 1
        if not item.done.done():
            item.done.set_exception(exc)


def _take(waiting: deque[_Write[Any]], batch: list[_Write[Any]], most: int) -> None:
    """Move writes from `waiting` into `batch` until it holds `most`; those whose caller
    stopped waiting are dropped, not run."""
    while waiting and len(batch) < most:
        item = waiting.popleft()
        if not item.done.done():
            batch.append(item)


def _resolve(item: _Write[Any], result: Any) -> None:
    if not item.done.done():
        item.done.set_result(result)
