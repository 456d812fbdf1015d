"""Two coordinators on one PostgreSQL: one leads, the other serves reads and takes over.

Real processes: a PostgreSQL started by the test, two `nova-coordinator`
processes over TLS, a site of two agents that knows both URLs. The leader is
SIGKILLed right after accepting a create; the other must lead within 10 s,
the site must find it, and the operation must end exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.simulations.federation import Api, CoordinatorProcess, Site, tls_files, wait_until

from .postgres import Postgres

pytestmark = pytest.mark.agents  # real agent processes on loopback

TAKEOVER = 10.0  # seconds the issue allows for another coordinator to lead


@pytest.fixture
def pair(
    tmp_path: Path, postgres: Postgres
) -> Iterator[tuple[CoordinatorProcess, CoordinatorProcess, str]]:
    tls = tls_files(tmp_path / "tls")
    database = postgres.database()
    one = CoordinatorProcess(tmp_path / "c1", tls, database)
    two = CoordinatorProcess(tmp_path / "c2", tls, database)
    for c in (one, two):
        c.directory.mkdir()
    try:
        yield one, two, database
    finally:
        one.stop()
        two.stop()


def named(api: Api, name: str) -> list[dict[str, str]]:
    return [vm for vm in api.get("/v1/vms?per_page=1000")["items"] if vm["name"] == name]


def leads(api: Api) -> bool:
    status, body, _ = api.call("GET", "/v1/status")
    return status == 200 and bool(body["leader"])


def test_the_leader_killed_mid_operation_another_leads_and_the_operation_ends_once(
    pair: tuple[CoordinatorProcess, CoordinatorProcess, str], tmp_path: Path
) -> None:
    one, two, _ = pair
    token = one.admin("site", "add", "lyon", "--label", "region=eu")["enrollment_token"]
    secret = one.admin("token", "create", "ops", "--role", "admin")["secret"]
    one.start("c1")
    first = Api(one.url, secret, one.tls[0])
    wait_until("c1 to lead", lambda: leads(first), 15)
    two.start("c2")
    second = Api(two.url, secret, two.tls[0])
    assert not leads(second)
    assert second.get("/v1/sites")["items"][0]["name"] == "lyon"  # a follower serves reads
    status, body, headers = second.call("POST", "/v1/sites", {"name": "paris"})
    assert status == 307 and headers["Location"] == f"{one.url}/v1/sites", body

    site = Site(tmp_path / "lyon", "lyon", ("n1", "n2"))
    assert site.enroll(one, token)[0] == 0
    try:
        for node in site.nodes:
            site.start(node, (two.url, one.url), one.tls[0])  # the follower listed first
        wait_until("lyon linked to c1", lambda: first.get("/v1/sites/lyon")["connected"], 60)
        wait_until("lyon's hosts", lambda: len(first.get("/v1/hosts")["items"]) == 2, 30)
        (tmp_path / "vmlinuz").write_bytes(b"kernel")
        body = {"name": "web-1", "vcpus": 1, "memory_mib": 64, "kernel": str(tmp_path / "vmlinuz")}
        status, op, _ = first.call("POST", "/v1/vms", body, {"Idempotency-Key": "web-1"})
        assert status == 202
        one.kill()
        killed = time.monotonic()
        wait_until("c2 to lead", lambda: leads(second), TAKEOVER + 5)
        assert time.monotonic() - killed <= TAKEOVER
        status, again, _ = second.call("POST", "/v1/vms", body, {"Idempotency-Key": "web-1"})
        assert (status, again["id"]) == (202, op["id"])  # the retry finds the same operation
        wait_until("lyon linked to c2", lambda: second.get("/v1/sites/lyon")["connected"], 60)
        done = second.wait_operation(op["id"], 60)
        assert done["status"] in ("succeeded", "failed"), done
        if done["status"] == "failed":
            assert done["error"]["message"]  # visibly, with a reason
        if done["status"] == "succeeded":
            found = wait_until("web-1 in the view", lambda: named(second, "web-1"))
            assert len(found) == 1
        else:
            assert named(second, "web-1") == []
    finally:
        site.stop()
