"""The coordinator's Prometheus metrics, served at `GET /metrics` to a bearer token.

Requests and database calls are observed as they happen (histograms of a
registry of this coordinator's own); site links and unfinished commands are
read when Prometheus scrapes. Labels carry only what bounds itself and what
any reader token may already list: the route's template (never the URL, so
a VM or host name never becomes a series), the method, the status code, the
names of enrolled sites. No tenant, token, VM or host appears. docs/metrics.md
lists the families; `/metrics` takes the API's bearer tokens (role reader),
so an unauthenticated scrape gets 401 and nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .db import Connection, Database, Row

if TYPE_CHECKING:
    from .service import Coordinator

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what `generate_latest` writes
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Methods the API serves; any other a client sends is counted as "other" (a label value
# per invented method would let a client grow the series without bound).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matched (404, 405)
# Seconds: an indexed read answers in milliseconds; blocking queries and operation waits
# (`wait`, up to MAX_WAIT) and the site link's WebSocket (its whole life) sit far above.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Seconds: SQLite answers in microseconds; PostgreSQL over a LAN in about a millisecond.
DATABASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1)


class CoordinatorMetrics:
    """One coordinator's families: its request and database histograms, read live."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "novacron_coordinator_http_request_duration_seconds",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "code"],
            registry=self.registry,
            buckets=REQUEST_BUCKETS,
        )
        self.database = Histogram(
            "novacron_coordinator_database_duration_seconds",
            "Database calls: a statement outside a transaction (query, execute) or a whole "
            "transaction, begin to commit.",
            ["operation"],
            registry=self.registry,
            buckets=DATABASE_BUCKETS,
        )
        ProcessCollector(registry=self.registry)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Time every request, under its route's template and the status it ended with."""
        started = time.perf_counter()
        code = 500  # a handler that raised something aiohttp turns into a 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            self.requests.labels(_method(request), route_of(request), str(code)).observe(
                time.perf_counter() - started
            )

    def observe_database(self, operation: str, seconds: float) -> None:
        self.database.labels(operation).observe(seconds)

    async def exposition(self, coordinator: Coordinator) -> bytes:
        """Every family in Prometheus' text format; links and commands as of now."""
        sites = await coordinator.store.sites()
        unfinished = await coordinator.store.unfinished_commands()
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(_Scraped(list(_federation(coordinator, sites, unfinished))))
        return generate_latest(scraped) + generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        coordinator: Coordinator = request.app[COORDINATOR]
        body = await self.exposition(coordinator)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator")


def route_of(request: web.Request) -> str:
    """The matched route's template (`/v1/vms/{id}`), never the URL itself."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _method(request: web.Request) -> str:
    return request.method if request.method in METHODS else "other"


def _federation(
    coordinator: Coordinator, sites: Sequence[Row], unfinished: dict[tuple[str, str], int]
) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "novacron_coordinator_leader",
        "1 while this coordinator leads (only the leader holds site links and writes).",
        value=int(coordinator.is_leader()),
    )
    up = GaugeMetricFamily(
        "novacron_coordinator_site_link_up",
        "1 while an enrolled site's link is connected to this coordinator, 0 while it is "
        "not (a follower holds none: take the max over coordinators).",
        labels=["site"],
    )
    for site in sites:
        if site["state"] == "enrolled":
            up.add_metric([site["name"]], int(coordinator.links.connected(site["name"])))
    yield up
    pending = GaugeMetricFamily(
        "novacron_coordinator_commands_pending",
        "Commands for each site not yet done, by state: pending (not sent yet), sent (not "
        "yet accepted), pinned (accepted by a host, running).",
        labels=["site", "state"],
    )
    for (name, state), count in sorted(unfinished.items()):
        pending.add_metric([name, state], count)
    yield pending


class _Scraped(Collector):
    """Families read for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class TimedDatabase:
    """A `Database` whose calls are timed into the coordinator's metrics; the rest passes
    through (the store and the leadership use it as they use the database itself)."""

    def __init__(self, inner: Database, observe: Callable[[str, float], None]) -> None:
        self._inner = inner
        self._observe = observe
        self.dialect = inner.dialect

    @property
    def fence(self) -> str | None:
        """PostgreSQL's leader fence (AttributeError on SQLite, which has none)."""
        fence: str | None = getattr(self._inner, "fence")  # noqa: B009
        return fence

    @fence.setter
    def fence(self, value: str | None) -> None:
        setattr(self._inner, "fence", value)  # noqa: B010

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        started = time.perf_counter()
        try:
            return await self._inner.fetch(sql, *args)
        finally:
            self._observe("query", time.perf_counter() - started)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        started = time.perf_counter()
        try:
            return await self._inner.fetchone(sql, *args)
        finally:
            self._observe("query", time.perf_counter() - started)

    async def execute(self, sql: str, *args: Any) -> int:
        started = time.perf_counter()
        try:
            return await self._inner.execute(sql, *args)
        finally:
            self._observe("execute", time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        started = time.perf_counter()
        try:
            async with self._inner.transaction() as tx:
                yield tx
        finally:
            self._observe("transaction", time.perf_counter() - started)

    async def close(self) -> None:
        await self._inner.close()
