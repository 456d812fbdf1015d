"""The coordinator's /metrics: a real aiohttp coordinator on loopback, scraped as
Prometheus would (with a bearer token), after the requests, links and commands that
move each family. `promtool check metrics` lints every exposition."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from novacron.coordinator.db import open_database
from novacron.coordinator.metrics import TimedDatabase
from novacron.protocol import sitelink as wire

from .coordinator_harness import FakeSite, Served, enrolled_site, host_state, served
from .postgres import Postgres
from .prometheus_server import promtool, running_prometheus

REQUESTS = "novacron_coordinator_http_request_duration_seconds"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Served]:
    async with served("", tmp_path / "coordinator") as server:
        yield server


async def scrape(api: Served, token: str | None) -> tuple[int, str, str]:
    """(status, content type, body) of GET /metrics with `token` as the bearer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(api.url + "/metrics", headers=headers) as answer,
    ):
        return answer.status, answer.headers["Content-Type"], await answer.text()


async def metrics(api: Served) -> str:
    status, content_type, body = await scrape(api, api.tokens["reader"])
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), body
    assert promtool("check", "metrics", stdin=body.encode()).strip() == ""
    return body


def value(body: str, series: str) -> float:
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the exposition")


def requests(body: str, method: str, route: str, code: int) -> float:
    return value(body, f'{REQUESTS}_count{{code="{code}",method="{method}",route="{route}"}}')


async def test_a_scrape_needs_a_token_and_leaks_nothing_without_one(api: Served) -> None:
    status, _, body = await scrape(api, None)
    assert status == 401 and "novacron_" not in body
    status, _, body = await scrape(api, "nvc_not_a_token")
    assert status == 401 and "novacron_" not in body
    assert "novacron_coordinator_leader 1.0" in await metrics(api)  # a reader may scrape


async def test_requests_are_counted_under_their_route_template_never_the_url(
    api: Served,
) -> None:
    await api.call("GET", "/v1/sites")
    await api.call("GET", "/v1/sites")
    await api.call("GET", "/v1/vms/lyon:secret-vm-name")  # no such VM: 404
    await api.call("GET", "/v1/nowhere/secret-path")  # no such route
    await api.call("PROPFIND", "/v1/sites")  # a method the API does not serve
    await scrape(api, None)
    body = await metrics(api)
    assert requests(body, "GET", "/v1/sites", 200) == 2
    assert requests(body, "GET", "/v1/vms/{id}", 404) == 1
    assert requests(body, "GET", "unmatched", 404) == 1
    assert requests(body, "other", "unmatched", 404) == 1
    assert requests(body, "GET", "/metrics", 401) == 1
    assert "secret" not in body  # no URL, VM or host name becomes a label
    bucket = f'{REQUESTS}_bucket{{code="200",le="+Inf",method="GET",route="/v1/sites"}}'
    assert value(body, bucket) == 2


async def test_database_calls_are_timed_by_kind(api: Served) -> None:
    before = await metrics(api)
    transactions = 'novacron_coordinator_database_duration_seconds_count{operation="transaction"}'
    queries = 'novacron_coordinator_database_duration_seconds_count{operation="query"}'
    status, _, _ = await api.call("POST", "/v1/sites", {"name": "lyon"})
    assert status == 201
    after = await metrics(api)
    assert value(after, transactions) >= value(before, transactions) + 1  # the site's insert
    assert value(after, queries) > value(before, queries)  # the token, the site read back


async def test_site_link_up_and_commands_pending_follow_the_link(
    api: Served, tmp_path: Path
) -> None:
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon")
    await api.call("POST", "/v1/sites", {"name": "paris"})  # added, never enrolled
    body = await metrics(api)
    assert value(body, 'novacron_coordinator_site_link_up{site="lyon"}') == 0
    assert 'site="paris"' not in body  # a site that never enrolled has no link to miss

    site = FakeSite(api.url, identity)
    assert isinstance(await site.connect(), wire.Welcome)
    await site.send(wire.Delta("s1", 1, True, True, hosts=(host_state("h1", 1, 1),)))
    assert value(await metrics(api), 'novacron_coordinator_site_link_up{site="lyon"}') == 1
    status, _, _ = await api.call("POST", "/v1/vms/lyon:vm0000/stop", {"timeout": 5})
    assert status == 202
    await site.next(wire.Command)
    await site.close()

    async def link_down() -> str:
        while True:
            body = await metrics(api)
            if value(body, 'novacron_coordinator_site_link_up{site="lyon"}') == 0:
                return body
            await asyncio.sleep(0.05)

    body = await asyncio.wait_for(link_down(), 10)
    assert value(body, 'novacron_coordinator_commands_pending{site="lyon",state="sent"}') == 1


async def test_the_leader_fence_passes_through_the_timed_database(
    tmp_path: Path, postgres: Postgres
) -> None:
    inner = await open_database(postgres.database(), tmp_path)
    timed = TimedDatabase(inner, lambda operation, seconds: None)
    try:
        timed.fence = "coordinator-a"
        assert getattr(inner, "fence") == "coordinator-a"  # noqa: B009
    finally:
        await timed.close()
    sqlite = TimedDatabase(await open_database("", tmp_path), lambda operation, seconds: None)
    assert not hasattr(sqlite, "fence")  # the service sets a fence only where one exists
    await sqlite.close()


async def test_prometheus_scrapes_the_coordinator_and_sees_a_site_link_go_down(
    api: Served, tmp_path: Path
) -> None:
    """A real Prometheus, configured as docs/metrics.md says (a reader token), with the
    rules loaded: the link's series follows the site, and the alert is pending while down.
    Prometheus is driven from threads: the coordinator answers on this test's loop."""
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon")
    target = api.url.removeprefix("http://")
    site_up = 'novacron_coordinator_site_link_up{site="lyon"}'
    with running_prometheus(tmp_path, [], [target], api.tokens["reader"]) as prometheus:

        async def until(expr: str, expected: dict[str, float], what: str) -> None:
            def holds() -> bool:
                return prometheus.values(expr) == expected

            await asyncio.to_thread(prometheus.wait_for, holds, 30, what)

        job = f"instance={target},job=novacron-coordinator"
        await until('up{job="novacron-coordinator"}', {job: 1.0}, "scraping")
        await until(site_up, {f"{job},site=lyon": 0.0}, "lyon's link down")
        pending = 'ALERTS{alertname="NovaCronSiteLinkDown",alertstate="pending"}'
        alert = "alertname=NovaCronSiteLinkDown,alertstate=pending,severity=warning,site=lyon"
        await until(pending, {alert: 1.0}, "the alert pending")
        site = FakeSite(api.url, identity)
        assert isinstance(await site.connect(), wire.Welcome)
        await until(site_up, {f"{job},site=lyon": 1.0}, "lyon's link up")
        await until(pending, {}, "the alert gone")
        await site.close()
