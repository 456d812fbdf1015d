"""The coordinator's `/v1` API over real HTTP, on SQLite and on a real PostgreSQL.

Every route and role, bad input of every kind, pagination, blocking queries,
operations, the event stream, the audit, rate limits, If-Match, a follower's
redirect, and the site link's refusals and stream rules with a site speaking
the wire.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from novacron.coordinator import openapi
from novacron.coordinator.service import DOCUMENT
from novacron.protocol import sitelink as wire
from novacron.protocol.messages import MemberState

from .coordinator_harness import (
    FakeSite,
    Served,
    enrolled_site,
    enrollment,
    host_state,
    served,
    site_identity,
)
from .postgres import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: Postgres
) -> AsyncIterator[Served]:
    database = postgres.database() if request.param == "postgresql" else ""
    async with served(database, tmp_path / "coordinator") as server:
        yield server


def operations() -> list[tuple[str, str, str]]:
    """(method, path, role) of every operation in the document."""
    doc = json.loads(DOCUMENT.read_text())
    return [
        (method.upper(), path, spec["x-nova-role"])
        for path, item in doc["paths"].items()
        for method, spec in item.items()
        if method != "parameters"
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "lyon:web" if m[0] == "{id}" else "x", path)


# --- the document ---------------------------------------------------------------------


def test_the_checked_in_document_is_the_generated_one() -> None:
    assert json.loads(DOCUMENT.read_text()) == openapi.document(), (
        "regenerate: python -m novacron.coordinator.openapi > coordinator/openapi.json"
    )


async def test_the_served_routes_are_exactly_the_documented_ones(api: Served) -> None:
    app_routes = {
        (route.method, route.resource.canonical)
        for route in api.coordinator.app().router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(method, path) for method, path, _ in operations()}
    undocumented = {("GET", "/v1/openapi.json"), ("GET", wire.PATH), ("GET", "/metrics")}
    assert app_routes - undocumented == documented
    status, served_doc, _ = await api.call("GET", "/v1/openapi.json", role=None)
    assert status == 200 and served_doc == json.loads(DOCUMENT.read_text())


# --- roles ------------------------------------------------------------------------------


async def test_every_route_refuses_a_missing_bad_or_lesser_token(api: Served) -> None:
    ranks = ("reader", "operator", "admin")
    for method, path, role in operations():
        if role == "none":
            continue
        where = f"{method} {path}"
        status, body, _ = await api.call(method, concrete(path), {}, role=None)
        assert status == 401 and body["error"]["code"] == "unauthorized", where
        status, _, _ = await api.call(method, concrete(path), {}, token="nvc_bad_token")
        assert status == 401, where
        for lesser in ranks[: ranks.index(role)]:
            status, body, _ = await api.call(method, concrete(path), {}, role=lesser)
            assert status == 403 and role in body["error"]["message"], (where, lesser)


async def test_a_reader_cannot_mutate_and_a_revoked_token_is_refused(api: Served) -> None:
    status, _, _ = await api.call("POST", "/v1/sites", {"name": "lyon"}, role="reader")
    assert status == 403
    assert (await api.call("GET", "/v1/sites", role="reader"))[0] == 200
    status, made, _ = await api.call("POST", "/v1/tokens", {"name": "temp", "role": "admin"})
    assert status == 201
    assert (await api.call("GET", "/v1/sites", token=made["secret"]))[0] == 200
    status, revoked, _ = await api.call("DELETE", f"/v1/tokens/{made['token']['id']}")
    assert status == 200 and revoked["revoked_at"] is not None
    status, body, _ = await api.call("GET", "/v1/sites", token=made["secret"])
    assert status == 401 and "revoked" in body["error"]["message"]
    listed = (await api.call("GET", "/v1/tokens"))[1]["items"]
    assert all("secret" not in json.dumps(row) for row in listed)  # only hashes are stored


# --- bad input ---------------------------------------------------------------------------


BAD_BODIES = [
    ({"name": "BAD NAME"}, "name"),
    ({"name": 7}, "name"),
    ({"name": "ok", "labels": {"a": 1}}, "labels.a"),
    ({"name": "ok", "cost": -1}, "cost"),
    ({"name": "ok", "colour": "red"}, "colour"),
    ({}, "name"),
    ([], ""),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_bodies_are_refused_naming_the_field_and_change_nothing(
    api: Served, body: Any, field: str
) -> None:
    before = await api.store.index()
    status, answer, _ = await api.call("POST", "/v1/sites", body)
    assert status == 400 and answer["error"]["code"] == "invalid"
    assert (answer["error"]["field"] or "") == field
    assert await api.store.sites() == []
    assert await api.store.index() == before


async def test_a_nul_character_anywhere_in_a_request_is_refused_naming_where(
    api: Served,
) -> None:
    """PostgreSQL cannot hold a NUL in text (SQLite can): refused alike on both, before
    anything reads or changes the store."""
    before = await api.store.index()
    for method, path, body, field in (
        ("GET", "/v1/hosts?site=ly%00on", None, "site"),
        ("GET", "/v1/vms/lyon%00:vm", None, "id"),
        ("POST", "/v1/sites", {"name": "lyon", "labels": {"region": "eu\x00"}}, "labels.region"),
    ):
        raw = None if body is None else json.dumps(body).encode()  # json escapes the NUL
        status, answer, _ = await api.call(method, path, raw=raw)
        assert status == 400 and answer["error"]["code"] == "invalid", (path, answer)
        assert "NUL" in answer["error"]["message"], answer
        assert answer["error"]["field"] == field, answer
    assert await api.store.sites() == []
    assert await api.store.index() == before


async def test_malformed_json_oversized_bodies_and_absurd_queries_get_4xx(api: Served) -> None:
    status, answer, _ = await api.call("POST", "/v1/sites", raw=b"{not json")
    assert status == 400 and answer["error"]["code"] == "malformed_json"
    status, answer, _ = await api.call("POST", "/v1/sites", raw=b'{"name": "' + b"x" * 2_000_000)
    assert status == 413 and answer["error"]["code"] == "too_large"
    for query, field in (
        ("per_page=0", "per_page"),
        ("per_page=100000", "per_page"),
        ("per_page=ten", "per_page"),
        ("per_page=-1", "per_page"),
        ("next_token=garbage!", "next_token"),
        ("index=-5&wait=1s", "index"),
        ("index=1&wait=forever", "wait"),
        ("index=1&wait=99m", "wait"),
        ("label=novalue", "label"),
    ):
        status, answer, _ = await api.call("GET", f"/v1/vms?{query}", role="reader")
        assert (status, answer["error"]["field"]) == (400, field), query
    status, answer, _ = await api.call("GET", "/v1/operations/x/wait?timeout=nan")
    assert status == 400 and answer["error"]["field"] == "timeout"
    status, answer, _ = await api.call("GET", "/v1/vms/no-colon")
    assert status == 400 and answer["error"]["field"] == "id"
    status, answer, _ = await api.call("GET", "/v1/nothing-here")
    assert status == 404 and answer["error"]["code"] == "not_found"


# --- sites, enrollment, If-Match ---------------------------------------------------------


async def test_a_site_is_enrolled_once_with_its_token_and_bad_proofs_are_named(
    api: Served, tmp_path: Path
) -> None:
    status, added, _ = await api.call("POST", "/v1/sites", {"name": "lyon"})
    assert status == 201 and added["site"]["state"] == "pending"
    token = added["enrollment_token"]
    identity = site_identity(tmp_path / "lyon")
    forged = {
        **enrollment(identity, token),
        "signature": enrollment(identity, "other")["signature"],
    }
    status, answer, _ = await api.call("POST", "/v1/enroll", forged, role=None)
    assert (status, answer["error"]["field"]) == (400, "signature")
    stranger = site_identity(tmp_path / "stranger")
    mixed = {
        **enrollment(identity, token),
        "certificate": enrollment(stranger, token)["certificate"],
    }
    status, answer, _ = await api.call("POST", "/v1/enroll", mixed, role=None)
    assert (status, answer["error"]["field"]) == (400, "certificate")
    status, site, _ = await api.call("POST", "/v1/enroll", enrollment(identity, token), role=None)
    assert status == 200 and site["state"] == "enrolled" and site["name"] == "lyon"
    status, answer, _ = await api.call("POST", "/v1/enroll", enrollment(identity, token), role=None)
    assert status == 403 and "already used" in answer["error"]["message"]
    status, answer, _ = await api.call("POST", "/v1/sites", {"name": "lyon"})
    assert status == 409


async def test_if_match_guards_site_updates(api: Served) -> None:
    await api.call("POST", "/v1/sites", {"name": "lyon"})
    status, site, headers = await api.call("GET", "/v1/sites/lyon", role="reader")
    assert status == 200 and headers["ETag"] == f'"{site["revision"]}"'
    etag = headers["ETag"]
    status, updated, _ = await api.call(
        "PATCH", "/v1/sites/lyon", {"labels": {"region": "eu"}}, headers={"If-Match": etag}
    )
    assert status == 200 and updated["labels"] == {"region": "eu"}
    status, answer, _ = await api.call(
        "PATCH", "/v1/sites/lyon", {"cost": 3}, headers={"If-Match": etag}
    )
    assert status == 412 and answer["error"]["code"] == "precondition_failed"
    assert (await api.call("GET", "/v1/sites/lyon"))[1]["cost"] == 0


# --- the site link -------------------------------------------------------------------------


async def test_site_links_are_refused_with_a_reason(api: Served, tmp_path: Path) -> None:
    unknown = FakeSite(api.url, site_identity(tmp_path / "unknown"))
    refused = await unknown.connect()
    assert isinstance(refused, wire.Refused) and refused.code is wire.RefusalCode.UNKNOWN_CA
    await unknown.close()
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon")
    impostor = site_identity(tmp_path / "impostor")
    site = FakeSite(api.url, identity)
    refused = await site.connect(sign_with=impostor)  # the lyon CA key, another CA's node
    assert isinstance(refused, wire.Refused) and refused.code is wire.RefusalCode.BAD_CERTIFICATE
    await site.close()
    await api.call("DELETE", "/v1/sites/lyon")
    site = FakeSite(api.url, identity)
    refused = await site.connect()
    assert isinstance(refused, wire.Refused) and refused.code is wire.RefusalCode.REVOKED_SITE
    await site.close()


async def test_deltas_are_applied_once_in_order_and_a_gap_asks_for_a_resync(
    api: Served, tmp_path: Path
) -> None:
    site = FakeSite(api.url, await enrolled_site(api, "lyon", tmp_path / "lyon"))
    welcome = await site.connect()
    assert (welcome.site, welcome.stream, welcome.applied) == ("lyon", "", 0)
    snapshot = wire.Delta("s1", 1, True, True, hosts=(host_state("h1", 1, 3),))
    assert await site.send(snapshot) == wire.Ack("s1", 1)
    assert await site.send(snapshot) == wire.Ack("s1", 1)  # a duplicate: acked, not applied
    resync = await site.send(wire.Delta("s1", 5, hosts=(host_state("h1", 9),)))
    assert isinstance(resync, wire.Resync) and "gap" in resync.reason
    hosts = (await api.call("GET", "/v1/hosts?site=lyon"))[1]["items"]
    assert [(h["node_id"], h["record_version"], h["vm_count"]) for h in hosts] == [("h1", 1, 3)]
    await site.send(wire.Delta("s1", 2, hosts=(host_state("h2", 1, 1, prefix="x"),)))
    await site.close()
    again = FakeSite(api.url, site.identity)
    assert (await again.connect()).applied == 2  # resumes after what was committed
    await again.send(wire.Delta("s2", 1, True, True, hosts=(host_state("h2", 2),)))
    hosts = (await api.call("GET", "/v1/hosts"))[1]["items"]
    assert [(h["node_id"], h["vm_count"]) for h in hosts] == [("h2", 0)]  # a new snapshot
    await again.close()


async def test_vm_lists_paginate_filter_and_block(api: Served, tmp_path: Path) -> None:
    site = FakeSite(api.url, await enrolled_site(api, "lyon", tmp_path / "lyon"))
    await site.connect()
    hosts = (host_state("h1", 1, 120), host_state("h2", 1, 130, prefix="w", team="blue"))
    await site.send(wire.Delta("s1", 1, True, True, hosts=hosts))
    seen: list[str] = []
    token = ""
    while True:
        status, page, headers = await api.call(
            "GET", f"/v1/vms?per_page=100{'&next_token=' + token if token else ''}", role="reader"
        )
        assert status == 200 and len(page["items"]) <= 100
        seen += [vm["id"] for vm in page["items"]]
        index = int(headers["X-Nova-Index"])
        if page["next_token"] is None:
            break
        token = page["next_token"]
    assert len(seen) == 250 == len(set(seen)) and seen == sorted(seen)
    filtered = (await api.call("GET", "/v1/vms?host=h2&label=team=blue&label=tier=db"))[1]
    assert len(filtered["items"]) == 65 and {v["host"] for v in filtered["items"]} == {"h2"}
    vm = (await api.call("GET", "/v1/vms/lyon:w0001"))[1]
    assert (vm["host"], vm["state"], vm["history"][0]["to_host"]) == ("h2", "running", "h2")

    async def later() -> None:
        await asyncio.sleep(0.5)
        await site.send(wire.Delta("s1", 2, hosts=(host_state("h3", 1, 1, prefix="z"),)))

    change = asyncio.create_task(later())
    status, page, headers = await api.call("GET", f"/v1/vms?index={index}&wait=20s&host=h3")
    await change
    assert int(headers["X-Nova-Index"]) > index
    assert "lyon:z0000" in {vm["id"] for vm in page["items"]}
    status, _, headers = await api.call("GET", "/v1/vms?index=999999999&wait=200ms")
    assert status == 200  # nothing newer: answered when the wait ran out
    await site.close()


async def linked_site(api: Served, tmp_path: Path, *hosts: wire.HostState) -> FakeSite:
    """Site lyon (region eu) enrolled, its link up, its snapshot of `hosts` acknowledged."""
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon", region="eu")
    site = FakeSite(api.url, identity)
    await site.connect()
    await site.send(wire.Delta("s1", 1, True, True, hosts=hosts))
    return site


async def test_a_site_revoked_while_its_link_comes_up_is_cut_off(
    api: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation commits after the link's handshake but before the link is recorded
    (when there is no link yet to drop): the link is closed all the same."""
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon", region="eu")
    site_by_ca = api.store.site_by_ca

    async def revoked_meanwhile(ca_public: bytes) -> Any:
        row = await site_by_ca(ca_public)  # read before the revocation commits
        status, _, _ = await api.call("DELETE", "/v1/sites/lyon")
        assert status == 200
        return row

    monkeypatch.setattr(api.store, "site_by_ca", revoked_meanwhile)
    site = FakeSite(api.url, identity)
    assert isinstance(await site.connect(), wire.Welcome)
    assert await site.next() is None, "the coordinator kept the revoked site's link"
    answer = (await api.call("GET", "/v1/sites/lyon"))[1]
    assert (answer["state"], answer["connected"]) == ("revoked", False)
    await site.close()


async def test_a_delta_with_a_nul_character_closes_the_link_and_changes_nothing(
    api: Served, tmp_path: Path
) -> None:
    """As the API refuses NUL characters, so does the site link: PostgreSQL cannot hold
    them, and a delta that failed its transaction would be sent again and again."""
    identity = await enrolled_site(api, "lyon", tmp_path / "lyon", region="eu")
    site = FakeSite(api.url, identity)
    await site.connect()
    hosts = (host_state("h1", 1, 1, prefix="vm\x00"),)
    assert await site.send(wire.Delta("s1", 1, True, True, hosts=hosts)) is None  # closed
    assert (await api.call("GET", "/v1/hosts?site=lyon"))[1]["items"] == []
    assert (await api.call("GET", "/v1/vms?site=lyon"))[1]["items"] == []
    await site.close()


async def test_a_command_for_a_site_that_is_away_stays_pending_visibly_and_can_be_cancelled(
    api: Served, tmp_path: Path
) -> None:
    site = await linked_site(api, tmp_path, host_state("h1", 1, 1))
    status, op, headers = await api.call("POST", "/v1/vms/lyon:vm0000/stop", {"timeout": 5})
    assert status == 202 and headers["Location"] == f"/v1/operations/{op['id']}"
    command = await site.next(wire.Command)
    assert (command.kind, command.vm, command.stop_timeout) == (wire.CommandKind.STOP, "vm0000", 5)
    await site.close()  # the link goes down before the site pins the command
    await asyncio.sleep(0.2)
    pending = (await api.call("GET", f"/v1/operations/{op['id']}"))[1]
    assert pending["status"] == "running" and "link is down" in pending["detail"]
    status, cancelled, _ = await api.call("DELETE", f"/v1/operations/{op['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    again = FakeSite(api.url, site.identity)
    await again.connect()
    ack = await again.send(wire.Delta("s1", 2, accepted=(wire.Accepted(command.key, "h1"),)))
    assert ack.cancelled == (command.key,)  # a late pin of a cancelled command is refused
    assert again.inbox.empty()  # and the cancelled command was not sent again
    await again.close()


async def test_what_a_lost_link_carried_is_sent_on_the_next_even_after_a_failed_read(
    api: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command sent on a link that went down is sent again on the next link; if that
    link's first read of the unfinished commands fails, it is read again on its own (no
    other command need come to kick it)."""
    site = await linked_site(api, tmp_path, host_state("h1", 1, 2))
    await api.call("POST", "/v1/vms/lyon:vm0000/stop", {"timeout": 5})
    lost = await site.next(wire.Command)
    await site.close()  # the link goes down before the site pins the command

    read = api.store.commands_to_send
    failed: list[str] = []

    async def failing_once(site: str, **how: Any) -> list[wire.Command]:
        if not failed:
            failed.append(site)
            raise sqlite3.OperationalError("database is locked")
        return await read(site, **how)

    monkeypatch.setattr(api.store, "commands_to_send", failing_once)
    again = FakeSite(api.url, site.identity)
    await again.connect()
    await again.send(wire.Delta("s1", 2))
    assert failed == ["lyon"]
    assert (await again.next(wire.Command)).key == lost.key
    await api.call("POST", "/v1/vms/lyon:vm0001/stop", {"timeout": 5})
    assert (await again.next(wire.Command)).key != lost.key  # and the next, once
    await asyncio.sleep(0.5)
    assert again.inbox.empty()
    await again.close()


async def test_every_command_a_delta_pins_is_sent_pinned_however_many(
    api: Served, tmp_path: Path
) -> None:
    site = await linked_site(api, tmp_path, host_state("h1", 1, 40))
    for n in range(40):
        await api.call("POST", f"/v1/vms/lyon:vm{n:04}/stop", {"timeout": 5})
    keys = {(await site.next(wire.Command)).key for _ in range(40)}
    accepted = tuple(wire.Accepted(key, "h1") for key in sorted(keys))
    ack = await site.send(wire.Delta("s1", 2, accepted=accepted))
    assert ack.cancelled == ()
    pinned = [await site.next(wire.Command) for _ in range(40)]
    assert {c.key for c in pinned} == keys and {c.host for c in pinned} == {"h1"}
    await site.close()


async def test_a_sites_room_is_its_roomiest_host_that_takes_new_vms(
    api: Served, tmp_path: Path
) -> None:
    """Draining and failed hosts do not count; a host's room never goes below zero."""
    used = host_state("used", 1, 2)  # 8 cores, 16,384 MiB, two VMs of 1 vCPU and 64 MiB
    draining = host_state("draining", 1, memory=65536)
    draining = replace(draining, record=replace(draining.record, draining=True))
    failed = replace(host_state("failed", 1, memory=65536), state=MemberState.DEAD)
    full = host_state("full", 1, 3, memory=100)  # 192 MiB of VMs on 100
    site = await linked_site(api, tmp_path, used, draining, failed, full)
    body = {"vcpus": 1, "memory_mib": 64}
    status, answer, _ = await api.call("POST", "/v1/placement/explain", body)
    assert status == 200, answer
    (lyon,) = [c for c in answer["candidates"] if c["name"] == "lyon"]
    assert (lyon["free_vcpus"], lyon["free_memory_mib"]) == (8 * 4 - 2, 16384 - 128)

    await site.send(wire.Delta("s1", 2, hosts=(replace(used, state=MemberState.DEAD),)))
    (lyon,) = [
        c
        for c in (await api.call("POST", "/v1/placement/explain", body))[1]["candidates"]
        if c["name"] == "lyon"
    ]
    assert (lyon["free_vcpus"], lyon["free_memory_mib"]) == (8 * 4 - 3, 0)
    assert not lyon["fits"]
    await site.close()


async def test_an_operation_ends_with_the_site_outcome_and_waiters_see_it(
    api: Served, tmp_path: Path
) -> None:
    site = await linked_site(api, tmp_path, host_state("h1", 1))
    body = {"name": "web", "vcpus": 1, "memory_mib": 64, "kernel": "/k",
            "constraints": {"labels": {"region": "eu"}}}  # fmt: skip
    status, op, _ = await api.call("POST", "/v1/vms", body, role="operator")
    assert status == 202 and op["status"] in ("pending", "running")
    command = await site.next(wire.Command)
    assert command.spec.name == "web" and command.host == ""
    waiter = asyncio.create_task(api.call("GET", f"/v1/operations/{op['id']}/wait?timeout=20"))
    ack = await site.send(wire.Delta("s1", 2, accepted=(wire.Accepted(command.key, "h1"),)))
    assert ack.cancelled == ()
    assert (await api.call("GET", f"/v1/operations/{op['id']}"))[1][
        "detail"
    ] == "running on host h1"
    outcome = wire.Outcome(command.key, True, "h1", 201, "created on h1", "web")
    await site.send(wire.Delta("s1", 3, outcomes=(outcome,)))
    status, done, _ = await waiter
    assert done["status"] == "succeeded" and done["result"]["host"] == "h1"
    await site.send(wire.Delta("s1", 4, outcomes=(wire.Outcome(command.key, False, "h1"),)))
    assert (await api.call("GET", f"/v1/operations/{op['id']}"))[1]["status"] == "succeeded"
    await site.close()


async def _operation_once(api: Served, op_id: str, detail: str) -> dict[str, Any]:
    """The operation once its detail starts with `detail` (the store records a send after it)."""
    for _ in range(200):
        op: dict[str, Any] = (await api.call("GET", f"/v1/operations/{op_id}"))[1]
        if op["detail"].startswith(detail):
            return op
        await asyncio.sleep(0.02)
    raise AssertionError(f"operation {op_id} never showed {detail!r}: {op}")


async def test_requests_retried_at_once_with_one_idempotency_key_make_one_operation(
    api: Served, tmp_path: Path
) -> None:
    """A client that times out and retries while its first request is still being served:
    every answer is the same operation, and the site is sent one command."""
    site = await linked_site(api, tmp_path, host_state("h1", 1, 1))
    body = {"name": "web", "vcpus": 1, "memory_mib": 64, "kernel": "/k"}
    for path, key in (("/v1/vms", "create-web"), ("/v1/vms/lyon:vm0000/stop", "stop-vm0000")):
        answers = await asyncio.gather(
            *(api.call("POST", path, body if path == "/v1/vms" else {}, headers={
                "Idempotency-Key": key}) for _ in range(8))
        )  # fmt: skip
        assert {status for status, _, _ in answers} == {202}, answers
        # One operation; an answer given after its command went out shows it as it is then.
        assert {op["id"] for _, op, _ in answers} == {answers[0][1]["id"]}, answers
        command = await site.next(wire.Command)
        assert command.key.endswith(":" + key)
        now = await _operation_once(api, answers[0][1]["id"], "sent to the site")
        status, later, _ = await api.call("POST", path, body if path == "/v1/vms" else {},
                                          headers={"Idempotency-Key": key})  # fmt: skip
        assert (status, later) == (202, now)
    listed = (await api.call("GET", "/v1/operations?per_page=100"))[1]["items"]
    assert len(listed) == 2
    await asyncio.sleep(0.2)
    assert site.inbox.empty()
    stop = answers[0][1]
    # The VM is gone by the time the client retries: the retry still gets its operation.
    await site.send(wire.Delta("s1", 2, hosts=(host_state("h1", 2),)))
    status, again, _ = await api.call(
        "POST", "/v1/vms/lyon:vm0000/stop", {}, headers={"Idempotency-Key": "stop-vm0000"}
    )
    assert (status, again["id"]) == (202, stop["id"])
    assert (await api.call("POST", "/v1/vms/lyon:vm0000/stop", {}))[0] == 404
    await site.close()


# --- events, audit, limits, followers ---------------------------------------------------------


async def test_events_stream_from_an_index_and_resume_after_it(api: Served) -> None:
    await api.call("POST", "/v1/sites", {"name": "lyon"})
    await api.call("POST", "/v1/sites", {"name": "paris"})
    status, text, _ = await api.call("GET", "/v1/events?index=0")
    lines = [json.loads(line) for line in text.splitlines()] if isinstance(text, str) else [text]
    kinds = [e["type"] for e in lines]
    assert "io.novacron.site.added" in kinds and lines[0]["specversion"] == "1.0"
    last = lines[-1]["novaindex"]
    await api.call("POST", "/v1/sites", {"name": "rome"})
    status, text, _ = await api.call("GET", f"/v1/events?index={last}")
    assert status == 200
    newer = [json.loads(line) for line in text.splitlines()] if isinstance(text, str) else [text]
    assert [e["subject"] for e in newer] == ["rome"] and newer[0]["novaindex"] > last


async def test_every_mutation_is_audited_with_who_and_the_result(api: Served) -> None:
    await api.call("POST", "/v1/sites", {"name": "lyon"}, role="admin")
    await api.call("POST", "/v1/sites", {"name": "paris"}, role="reader")
    await api.call("POST", "/v1/sites", {"name": "BAD"}, role="admin")
    status, audit, _ = await api.call("GET", "/v1/audit")
    assert status == 200
    rows = [(r["principal"], r["action"], r["status"]) for r in audit["items"]]
    assert rows[:3] == [
        ("test-admin", "addSite", 400),
        ("test-reader", "addSite", 403),
        ("test-admin", "addSite", 201),
    ]
    assert (await api.call("GET", "/v1/audit", role="operator"))[0] == 403


async def test_too_many_requests_get_429_with_retry_after(tmp_path: Path) -> None:
    async with served("", tmp_path / "c", rate=1.0) as api:
        statuses = [(await api.call("GET", "/v1/sites"))[0] for _ in range(4)]
        assert statuses[:2] == [200, 200] and 429 in statuses
        status, answer, headers = await api.call("GET", "/v1/sites")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert answer["error"]["code"] == "rate_limited"


async def test_a_follower_serves_reads_and_redirects_writes_to_the_leader(tmp_path: Path) -> None:
    async with served("", tmp_path / "c", leader=False, leader_url="https://leader:8443") as api:
        assert (await api.call("GET", "/v1/sites"))[0] == 200
        status, answer, headers = await api.call("POST", "/v1/sites", {"name": "lyon"})
        assert status == 307 and headers["Location"] == "https://leader:8443/v1/sites"
        assert answer["error"]["code"] == "not_leader"
        assert await api.store.sites() == []
    async with served("", tmp_path / "d", leader=False) as api:
        status, answer, _ = await api.call("DELETE", "/v1/tokens/x")
        assert status == 503 and answer["error"]["code"] == "no_leader"
