"""Draining a host (`agent/drain.py`) without a lab: the flag, the moves, the retries,
and drains asked from another host of the mesh (the messages, the API, `nova`).

The migrator runs against a fake two-host view (tests/test_migrator.py), so
a drain's proposals are observed as sent messages; the real moves happen in
tests/test_vm_control_lab.py and tests/test_drain_lab.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from novacron.agent import drain as drain_mod
from novacron.agent.api import ApiServer, http_status
from novacron.agent.cli import build_parser
from novacron.agent.cli import drain as cli_drain
from novacron.agent.cli.common import Output
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.placement.targets import AFFINITY_LABEL
from novacron.agent.core.refusals import Refused
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.agent.drain import Drain, DrainRequests, DrainStatus, RemoteDrainStatus
from novacron.agent.migration_row import MigrationRow
from novacron.agent.migrator import Migrator
from novacron.agent.tracing import Tracing
from novacron.protocol.messages import (
    DrainAnswer,
    DrainRequest,
    MemberState,
    Message,
    MigrationPropose,
    VmSummary,
)
from novacron.protocol.operators import OperatorCommand
from tests.api_client import call, until
from tests.fake_mesh import (
    TEMPLATE,
    FakeView,
    Fixed,
    HolderView,
    NoView,
    labelled_libvirt,
    migrator,
)
from tests.operators import Operator


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


async def test_a_drain_moves_running_vms_retries_failures_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_mod, "INTERVAL", 0.01)
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    published: list[bool] = []
    now = [100.0]
    state = tmp_path / "draining"

    def make() -> Drain:
        async def publish() -> None:
            published.append(drain.draining)

        drain = Drain(driver, state, publish=publish, clock=lambda: now[0])
        return drain

    drain = make()
    assert drain.status().draining is False

    await drain.drain()
    await settle()
    assert state.exists() and published == [True]
    proposals = [m for d, m in sent if isinstance(m, MigrationPropose)]
    assert [(p.vm, p.target) for p in proposals] == [("vm1", "h2")]
    status = drain.status()
    assert status.moving[0].vm == "vm1" and status.moving[0].target == "h2"
    assert (status.running, status.not_moved, status.done) == (
        ("vm1",),
        {"off": "shutoff"},
        False,
    )
    row = driver.migration(proposals[0].migration_id)
    assert row is not None and row.info.purpose == "drain"

    await driver.cancel(proposals[0].migration_id)
    await settle()
    blocked = drain.status().blocked
    assert blocked == {
        "vm1": f"migration {proposals[0].migration_id} aborted: cancelled by operator"
    }
    assert len([m for _, m in sent if isinstance(m, MigrationPropose)]) == 1  # waits to retry
    now[0] += drain_mod.RETRY_AFTER + 1
    await settle()
    assert len([m for _, m in sent if isinstance(m, MigrationPropose)]) == 2

    await drain.close()  # the agent stops mid-drain ...
    again = make()  # ... and a new life resumes it from the flag file
    assert again.draining is True
    await again.undrain()
    assert not state.exists() and again.status().draining is False
    assert published[-1] is False
    await driver.close()


class ShopView(FakeView):
    """h1 also runs an affinity pair, `app` and `db`, that must stay on one host."""

    def __init__(self) -> None:
        super().__init__()
        shop = {AFFINITY_LABEL: "shop"}
        pair = tuple(
            VmSummary(name, state="running", vcpus=1, memory_mib=128, labels=shop)
            for name in ("app", "db")
        )
        h1 = self._records["h1"]
        self._records["h1"] = dataclasses.replace(h1, vms=(*pair, *h1.vms))


async def test_a_drain_moves_an_affinity_group_whole_to_one_host(tmp_path: Path) -> None:
    sent: list[tuple[str, Message]] = []

    async def send(destination: str, message: Message) -> None:
        sent.append((destination, message))

    driver = Migrator(
        "h1", ShopView(), host="198.18.0.1", libvirt_uri="test:///default", send=send,
        clock=lambda: 100.0, rng=random.Random(1),
    )  # fmt: skip
    drain = Drain(driver, tmp_path / "draining", publish=_nothing, clock=lambda: 100.0)
    await drain.drain()
    await settle()
    (proposal,) = [m for _, m in sent if isinstance(m, MigrationPropose)]
    assert (proposal.vm, [g.vm for g in proposal.group]) == ("app", ["db"])
    assert {row.vm: row.target for row in drain.status().moving} == {
        "app": "h2",
        "db": "h2",
    }  # both slots: vm1 waits for the next free one
    await drain.close()
    await driver.close()


async def test_a_drain_sends_a_vm_to_a_host_that_holds_its_template(tmp_path: Path) -> None:
    """h2 and h3 are alike but for h3 holding vm1's template (its domain names it): vm1
    goes there, so no image has to travel first."""
    sent: list[tuple[str, Message]] = []
    uri = labelled_libvirt(tmp_path, {"vm1": {TEMPLATE_LABEL: TEMPLATE}})
    driver = migrator(sent, HolderView(), uri)
    drain = Drain(driver, tmp_path / "draining", publish=_nothing, clock=lambda: 100.0)
    await drain.drain()
    await settle()
    assert [(d, m.vm) for d, m in sent if isinstance(m, MigrationPropose)] == [("h3", "vm1")]
    await drain.close()
    await driver.close()


class Collected:
    """An exporter that keeps the spans it is given."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def add(self, spans: Any) -> None:
        self.spans += list(spans)


async def test_a_drain_is_one_span_and_its_migrations_are_its_children(tmp_path: Path) -> None:
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    collected = Collected()
    driver.tracing = Tracing("h1", collected, rng=random.Random(3))  # type: ignore[arg-type]
    drain = Drain(driver, tmp_path / "draining", publish=_nothing, clock=lambda: 100.0)
    await drain.drain()
    await settle()
    (proposal,) = [m for _, m in sent if isinstance(m, MigrationPropose)]
    await driver.cancel(proposal.migration_id)  # the move ends: its spans are exported
    await drain.undrain()  # before the host was empty: the drain's span ends in error
    by_name = {span.name: span for span in collected.spans}
    root = by_name["drain h1"]
    assert root.error == "undrained before the host was empty" and root.parent_span_id == b""
    move = by_name["migrate vm1"]
    assert move.parent_span_id == root.context.span_id
    assert move.context.trace_id == root.context.trace_id
    await drain.close()
    await driver.close()


async def test_a_vm_the_drain_moved_is_not_moved_again_while_the_record_still_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's record lists a VM until the next inventory refresh after it left; a
    second move started in that window finds no domain here and ends in doubt, and the
    drain's summary lost the first move. The core is freed (cancel) and its row reads
    committed, as the real one does once the VM runs on the target."""
    monkeypatch.setattr(drain_mod, "INTERVAL", 0.01)
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    drain = Drain(driver, tmp_path / "draining", publish=_nothing, clock=lambda: 100.0)
    await drain.drain()
    await settle()
    (first,) = [m for _, m in sent if isinstance(m, MigrationPropose)]
    real_rows = driver.migrations

    def rows() -> list[MigrationRow]:
        return [
            dataclasses.replace(
                r, info=dataclasses.replace(r.info, outcome="committed", phase="committed")
            )
            if r.info.migration_id == first.migration_id
            else r
            for r in real_rows()
        ]

    def row(migration_id: str) -> MigrationRow | None:
        return next((r for r in rows() if r.info.migration_id == migration_id), None)

    monkeypatch.setattr(driver, "migrations", rows)
    monkeypatch.setattr(driver, "migration", row)
    await driver.cancel(first.migration_id)  # the core no longer holds vm1
    await settle()
    assert [m.vm for _, m in sent if isinstance(m, MigrationPropose)] == ["vm1"]
    status = drain.status()
    assert (status.moved, status.blocked) == (("vm1",), {})
    await drain.close()
    await driver.close()


async def _nothing() -> None:
    return None


# --- a drain asked from another host of the mesh ---------------------------------------


class Mesh(FakeView):
    """The fake two-host view, shared by both hosts (gossip has converged): h1 runs vm1.

    Member states can be changed, and a host's published drain flag lands in its record
    with a new version, as the agent's record would carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.states = {"h1": MemberState.ALIVE, "h2": MemberState.ALIVE}

    def member(self, node_id: str) -> MemberInfo | None:
        found = super().member(node_id)
        if found is None:
            return None
        return dataclasses.replace(found, state=self.states[node_id])

    def publish(self, node_id: str, draining: bool) -> None:
        record = self._records[node_id]
        self._records[node_id] = dataclasses.replace(
            record, version=record.version + 1, draining=draining
        )

    def vm_gone(self, node_id: str, vm: str) -> None:
        record = self._records[node_id]
        vms = tuple(v for v in record.vms if v.name != vm)
        self._records[node_id] = dataclasses.replace(record, version=record.version + 1, vms=vms)


class Net:
    """Carries messages between the hosts' `DrainRequests`; `lost` ones never arrive, and
    `forge` makes h3 (a member) answer instead of the host asked."""

    def __init__(self) -> None:
        self.hosts: dict[str, DrainRequests] = {}
        self.sent: list[tuple[str, str, Message]] = []  # (from, to, message)
        self.lost = False
        self.forge = False

    def sender(self, node_id: str) -> Callable[[str, Message], Awaitable[None]]:
        async def send(destination: str, message: Message) -> None:
            self.sent.append((node_id, destination, message))
            if self.forge and isinstance(message, DrainRequest):
                answer = DrainAnswer(message.request_id, accepted=True, draining=True)
                await self.hosts[node_id].receive("h3", answer)
            elif not self.lost and destination in self.hosts:
                await self.hosts[destination].receive(node_id, message)

        return send

    def answers(self) -> list[DrainAnswer]:
        return [m for _, _, m in self.sent if isinstance(m, DrainAnswer)]


@dataclasses.dataclass
class Host:
    requests: DrainRequests
    drain: Drain
    driver: Migrator
    sent: list[tuple[str, Message]]  # what its migrator sent
    operator: Operator  # alice, whom every host's CA certified as an operator

    def command(self, drain: bool, node: str = "h1") -> OperatorCommand:
        return self.operator.command("drain" if drain else "undrain", node)

    @property
    def flags(self) -> tuple[str, str]:
        """`nova`'s flags that sign a remote command as alice."""
        return ("--operator", str(self.operator.cert_file))


@contextlib.asynccontextmanager
async def two_hosts(
    tmp_path: Path, timeout: float = 5.0
) -> AsyncIterator[tuple[Mesh, Net, Host, Host]]:
    """h1 (runs vm1) and h2, each with its drain and its `DrainRequests`, over `Net`."""
    mesh, net = Mesh(), Net()
    operator = Operator(tmp_path / "operator")
    hosts = []
    for node in ("h1", "h2"):
        sent: list[tuple[str, Message]] = []

        async def send(destination: str, message: Message, sent: list[Any] = sent) -> None:
            sent.append((destination, message))

        driver = Migrator(
            node,
            mesh,
            host="198.18.0." + node[1:],
            libvirt_uri="test:///default",
            send=send,
            clock=lambda: 100.0,
            rng=random.Random(1),
        )

        async def publish(node: str = node) -> None:
            mesh.publish(node, (tmp_path / node / "draining").exists())

        drain = Drain(driver, tmp_path / node / "draining", publish=publish, clock=lambda: 100.0)
        requests = DrainRequests(
            drain,
            node,
            lambda: mesh,
            send=net.sender(node),
            authority=operator.authority,
            timeout=timeout,
        )
        net.hosts[node] = requests
        hosts.append(Host(requests, drain, driver, sent, operator))
    try:
        yield mesh, net, hosts[0], hosts[1]
    finally:
        for host in hosts:
            await host.requests.close()
            await host.drain.close()
            await host.driver.close()


async def test_a_drain_asked_from_another_host_is_carried_out_by_the_drained_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(drain_mod, "INTERVAL", 0.01)
    caplog.set_level(logging.INFO, logger="novacron.drain")
    async with two_hosts(tmp_path) as (mesh, _, h1, h2):
        answer = await h2.requests.ask("h1", True, "alice", h2.command(True))

        assert (answer.node_id, answer.draining, answer.done) == ("h1", True, False)
        assert answer.running == ("vm1",) and isinstance(answer, RemoteDrainStatus)
        assert answer.record_version == mesh.records()["h1"].version == 2
        assert h1.drain.draining and (tmp_path / "h1" / "draining").exists()
        assert not h2.drain.draining
        await settle()
        # h1 is the source of the move; h2 only asked.
        proposals = [(d, m) for d, m in h1.sent if isinstance(m, MigrationPropose)]
        assert [(d, m.vm, m.reason) for d, m in proposals] == [("h2", "vm1", "drain")]
        assert h2.sent == []
        asked = [r for r in caplog.records if r.getMessage() == "drain requested over the mesh"]
        assert [r.fields for r in asked] == [  # type: ignore[attr-defined]
            {"from": "h2", "by": "alice", "node": "h1", "drain": True}
        ]

        status = h2.requests.status_of("h1")  # what the mesh shows h2
        assert (status.draining, status.running, status.done) == (True, ("vm1",), False)
        assert isinstance(status, RemoteDrainStatus)
        assert status.seen_from == "h2" and status.not_moved == {"off": "shutoff"}
        mesh.vm_gone("h1", "vm1")
        assert h2.requests.status_of("h1").done is True
        assert h1.requests.status_of("h1") == h1.drain.status()  # its own: the local status

        again = await h2.requests.ask("h1", True, "bob", h2.command(True))  # changes nothing
        assert isinstance(again, RemoteDrainStatus)
        assert again.draining is True and again.record_version == 3

        undrained = await h2.requests.ask("h1", False, "alice", h2.command(False))
        assert (undrained.draining, undrained.node_id) == (False, "h1")
        assert not h1.drain.draining and not (tmp_path / "h1" / "draining").exists()
        assert h2.requests.status_of("h1").draining is False


async def test_asking_this_host_itself_is_the_local_drain(tmp_path: Path) -> None:
    async with two_hosts(tmp_path) as (_, net, h1, _h2):
        answer = await h1.requests.ask("h1", True)
        assert answer == h1.drain.status() and answer.draining is True
        assert isinstance(answer, DrainStatus) and net.sent == []
        assert (await h1.requests.ask("h1", False)).draining is False


async def test_a_request_naming_another_host_or_from_a_non_member_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with two_hosts(tmp_path) as (mesh, net, h1, _):
        await h1.requests.receive("h2", DrainRequest("r1", "h2", True, "alice"))
        await h1.requests.receive("h9", DrainRequest("r2", "h1", True, "mallory"))
        mesh.states["h2"] = MemberState.LEFT
        await h1.requests.receive("h2", DrainRequest("r3", "h1", True, "alice"))
        await settle()

        assert [(to, m) for _, to, m in net.sent] == [
            ("h2", DrainAnswer("r1", accepted=False, reason="this is h1, not h2")),
            ("h9", DrainAnswer("r2", False, "h9 is not a member in h1's view of the mesh")),
            ("h2", DrainAnswer("r3", False, "h2 is not a member in h1's view of the mesh")),
        ]
        assert not h1.drain.draining and not (tmp_path / "h1" / "draining").exists()
        assert "drain request refused" in caplog.text


@pytest.mark.parametrize(
    ("node", "trouble", "status", "reason"),
    [
        ("h9", None, 404, "unknown host: h9 is not in h2's view of the mesh"),
        ("h1", "suspect", 409, "host not alive: h1 is suspect in h2's view of the mesh"),
        ("h1", "dead", 409, "host not alive: h1 is dead in h2's view of the mesh"),
        ("h1", "lost", 504, "no answer from h1 within 0.05 s"),
        ("h1", "forged", 504, "no answer from h1 within 0.05 s"),  # h3 answered for h1
    ],
)
async def test_unknown_dead_or_silent_hosts_are_clear_refusals_and_change_nothing(
    tmp_path: Path, node: str, trouble: str | None, status: int, reason: str
) -> None:
    async with two_hosts(tmp_path, timeout=0.05) as (mesh, net, h1, h2):
        if trouble in ("suspect", "dead"):
            mesh.states["h1"] = MemberState(trouble)
        net.lost = trouble == "lost"
        net.forge = trouble == "forged"
        for drain in (True, False):
            with pytest.raises(Refused) as refused:
                await h2.requests.ask(node, drain, "alice", h2.command(drain, node))
            assert http_status(refused.value) == status
            assert str(refused.value).startswith(reason)
        assert not h1.drain.draining and not h2.drain.draining
        assert mesh.records()["h1"].version == 1  # nothing was published
        if trouble in (None, "suspect", "dead"):
            assert net.sent == []  # not even asked


async def test_a_refusal_from_the_asked_host_is_passed_on(tmp_path: Path) -> None:
    async with two_hosts(tmp_path) as (_, _net, h1, h2):
        h1.requests.node_id = "h1-renamed"  # it now refuses requests naming h1
        with pytest.raises(Refused) as refused:
            await h2.requests.ask("h1", True, "", h2.command(True))
        assert (http_status(refused.value), str(refused.value)) == (
            409,
            "h1 refused: this is h1-renamed, not h1",
        )
        assert not h1.drain.draining


# --- the API's routes -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_of(
    requests: DrainRequests, tmp_path: Path, view: NoView | None = None
) -> AsyncIterator[str]:
    """A local API (view: `NoView` unless given) whose remote drains go through `requests`;
    yields its socket."""
    server = ApiServer(view or NoView(), str(tmp_path / "api.sock"), host_drain=requests)
    await server.start()
    try:
        yield str(server.socket_path)
    finally:
        await server.close()


async def test_api_drains_and_undrains_any_host_and_shows_its_drain(tmp_path: Path) -> None:
    async with (
        two_hosts(tmp_path, timeout=0.05) as (_, net, h1, h2),
        api_of(h2.requests, tmp_path) as sock,
    ):
        alice = h2.operator
        status, started = await call(
            sock,
            "POST",
            "/v1/hosts/h1/drain",
            json={"requested_by": "al", "operator": alice.body("drain", "h1")},
        )
        assert status == 202 and (started["draining"], started["running"]) == (True, ["vm1"])
        assert h1.drain.draining
        request = next(m for _, _, m in net.sent if isinstance(m, DrainRequest))
        assert (request.node, request.drain, request.requested_by) == ("h1", True, "al")

        status, seen = await call(sock, "GET", "/v1/hosts/h1/drain")
        assert (status, seen["draining"], seen["remote"], seen["seen_from"]) == (
            200,
            True,
            True,
            "h2",
        )
        status, own = await call(sock, "GET", "/v1/hosts/h2/drain")
        assert (status, own) == (200, h2.drain.status().to_json())

        assert (await call(sock, "GET", "/v1/hosts/h9/drain")) == (
            404,
            {"error": "unknown host: h9 is not in h2's view of the mesh"},
        )
        signed = {"operator": alice.body("drain", "h9")}
        assert (await call(sock, "POST", "/v1/hosts/h9/drain", json=signed)) == (
            404,
            {"error": "unknown host: h9 is not in h2's view of the mesh"},
        )
        assert (await call(sock, "POST", "/v1/hosts/h1/undrain", json={"requested_by": 7})) == (
            400,
            {"error": "requested_by must be a string"},
        )
        assert h1.drain.draining  # the bad request changed nothing
        net.lost = True
        undrain = {"operator": alice.body("undrain", "h1")}
        status, silent = await call(sock, "POST", "/v1/hosts/h1/undrain", json=undrain)
        assert status == 504 and silent["error"].startswith("no answer from h1 within 0.05 s")
        net.lost = False
        undrain = {"operator": alice.body("undrain", "h1")}
        status, undrained = await call(sock, "POST", "/v1/hosts/h1/undrain", json=undrain)
        assert (status, undrained["draining"]) == (200, False)
        assert not h1.drain.draining


# --- `nova host drain HOST` on another host -----------------------------------------------


def nova(sock: str, *argv: str) -> tuple[int, str, str]:
    """`nova ARGV` against the agent at `sock`: exit code, stdout, stderr."""
    args = build_parser().parse_args([*argv, "--socket", sock])
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(json=getattr(args, "json", False), stdout=stdout, stderr=stderr)
    code = args.handler(args, out)
    return code, stdout.getvalue(), stderr.getvalue()


class StatusView(NoView):
    def status(self) -> Fixed:
        return Fixed({"node_id": "h2"})


async def test_nova_drains_another_host_and_waits_for_its_record_to_show_it_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_drain, "WAIT_POLL", 0.01)
    async with (
        two_hosts(tmp_path) as (mesh, _, h1, h2),
        api_of(h2.requests, tmp_path, StatusView()) as sock,
    ):
        waiting = asyncio.create_task(
            asyncio.to_thread(nova, sock, "host", "drain", "h1", "--wait", "--json", *h2.flags)
        )
        await until(lambda: h1.drain.draining)
        # Gossip lags: an older record of h1 (no flag yet) is not a cancelled drain.
        record = mesh.records()["h1"]
        mesh._records["h1"] = dataclasses.replace(record, version=1, draining=False)
        await asyncio.sleep(0.1)
        assert not waiting.done()
        mesh._records["h1"] = record
        await asyncio.sleep(0.1)
        assert not waiting.done()  # vm1 still runs on h1
        mesh.vm_gone("h1", "vm1")
        code, stdout, _ = await asyncio.wait_for(waiting, 10)
        answer = json.loads(stdout)
        assert (code, answer["ok"], answer["drain"]["done"]) == (0, True, True)
        assert (answer["drain"]["node_id"], answer["drain"]["running"]) == ("h1", [])

        code, text, _ = await asyncio.to_thread(nova, sock, "host", "drain", "h1", "--status")
        assert (code, text.splitlines()) == (
            0,
            [
                "h1 drained: no VM runs there (as h2 sees it)",
                "  left off: shutoff (only running VMs move)",
            ],
        )

        code, text, _ = await asyncio.to_thread(nova, sock, "host", "undrain", "h1", *h2.flags)
        assert (code, text) == (0, "h1 takes new VMs again\n")
        assert not h1.drain.draining

        code, stdout, stderr = await asyncio.to_thread(nova, sock, "host", "drain", "h9", "--json")
        assert code == 1 and json.loads(stdout)["error"] == stderr.split("error: ")[1][:-1]
        assert "unknown host: h9 is not in h2's view of the mesh" in stderr


async def test_nova_wait_ends_with_an_error_when_another_host_undrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_drain, "WAIT_POLL", 0.01)
    async with (
        two_hosts(tmp_path) as (_, _net, h1, h2),
        api_of(h2.requests, tmp_path, StatusView()) as sock,
    ):
        waiting = asyncio.create_task(
            asyncio.to_thread(nova, sock, "host", "drain", "h1", "--wait", *h2.flags)
        )
        await until(lambda: h1.drain.draining)
        await h1.drain.undrain()  # someone on h1 undrains it
        code, _, stderr = await asyncio.wait_for(waiting, 10)
        assert code == 1
        assert "the drain of h1 was cancelled (nova host undrain)" in stderr
        assert "h1 draining: 1 VM(s) still running there (vm1)" in stderr  # the progress


# --- who may drain another host ------------------------------------------------------


async def test_a_member_without_an_operators_command_cannot_drain_a_host(tmp_path: Path) -> None:
    async with two_hosts(tmp_path) as (_, net, h1, h2):
        with pytest.raises(Refused) as refused:
            await h2.requests.ask("h1", True, "alice")  # no signed command: not even sent
        assert http_status(refused.value) == 403 and "operator" in str(refused.value)
        assert net.sent == []
        await h1.requests.receive("h2", DrainRequest("r1", "h1", True, "h2 itself"))
        await settle()
        ((_, _, answer),) = net.sent
        assert isinstance(answer, DrainAnswer) and not answer.accepted
        assert answer.reason.startswith("not authorized: ")
        assert not h1.drain.draining


async def test_a_node_certificate_an_old_or_a_replayed_command_is_refused(tmp_path: Path) -> None:
    async with two_hosts(tmp_path) as (_, net, h1, h2):
        node_cert = Operator(tmp_path / "node", name="h2", role="node", ca=h2.operator.ca)
        bad = [
            node_cert.command("drain", "h1"),  # a member's own key and certificate
            h2.operator.command("drain", "h1", issued_at=time.time() - 3600),
            h2.operator.command("undrain", "h1"),  # signed for another action
        ]
        for command in bad:
            request = DrainRequest(
                command.request_id,
                "h1",
                True,
                issued_at=command.issued_at,
                operator_certificate=command.certificate,
                signature=command.signature,
            )
            await h1.requests.receive("h2", request)
        good = h2.command(True)
        signed = DrainRequest(
            good.request_id,
            "h1",
            True,
            issued_at=good.issued_at,
            operator_certificate=good.certificate,
            signature=good.signature,
        )
        await h1.requests.receive("h2", signed)
        await settle()
        await h1.drain.undrain()
        await h1.requests.receive("h2", signed)  # the same command again: a replay
        await settle()
        answers = [m for _, _, m in net.sent if isinstance(m, DrainAnswer)]
        reasons = [a.reason for a in answers]
        assert [a.accepted for a in answers] == [False, False, False, True, False], reasons
        assert "no operator role" in reasons[0]
        assert "from this host's clock" in reasons[1]
        assert "signature does not verify" in reasons[2]
        assert "already used" in reasons[4]
        assert not h1.drain.draining
