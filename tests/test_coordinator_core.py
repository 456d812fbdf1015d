"""The coordinator's and the site's sans-IO decisions, and the command ledger on disk.

Placement across targets (constraints in order, policies, explain), the rate
limiter, and `SiteCommands` running a command at most once across a restart
of the agent (the ledger file), obeying only the site's gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from novacron.agent import site_controls
from novacron.agent.api_requests import MigrateRequest
from novacron.agent.core.refusals import RefusalKind, Refused
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.agent.drain import DrainStatus
from novacron.agent.site_commands import SiteCommands
from novacron.agent.site_controls import SiteControls
from novacron.agent.vms import VmCreated, VmDeleted, VmStarted, VmStopped
from novacron.agent.vmspec import VmSpec
from novacron.coordinator.placement import Request, place
from novacron.coordinator.ratelimit import RateLimiter
from novacron.protocol import codec
from novacron.protocol import sitelink as wire
from novacron.protocol.coordinator_commands import CommandSigner, CoordinatorTrust
from novacron.protocol.messages import (
    MemberState,
    Message,
    MigrationPropose,
    SiteCommandRelay,
    SiteCommandResult,
)
from novacron.simulations.federation import tls_files
from tests.fake_mesh import TEMPLATE, FakeView, labelled_libvirt, migrator


@dataclass(frozen=True)
class Region:
    """A placement target that is not a site (as a cloud region will be)."""

    name: str
    labels: Mapping[str, str]
    free: tuple[float, int] = (64.0, 65536)
    reachable: bool = True
    cost: float = 1.0
    runs: frozenset[str] = field(default_factory=frozenset)
    kind: str = "cloud"

    def room(self) -> tuple[float, int]:
        return self.free

    def groups(self) -> frozenset[str]:
        return self.runs


TARGETS = [
    Region("lyon", {"region": "eu-west", "residency": "fr"}, (8.0, 4096), cost=3.0),
    Region("paris", {"region": "eu-west", "residency": "fr"}, (16.0, 16384), cost=5.0),
    Region("aws-eu-central-1", {"region": "eu-central"}, cost=1.0),
    Region("down", {"region": "eu-west", "residency": "fr"}, reachable=False),
    Region("busy", {"region": "eu-west", "residency": "fr"}, runs=frozenset({"db"})),
]


def test_placement_takes_the_fitting_target_the_policy_prefers_and_explains_the_rest() -> None:
    want = Request(2, 2048, labels={"residency": "fr"}, anti_affinity="db")
    spread = place(TARGETS, want)
    assert spread.chosen == "paris"
    reasons = {c.name: c.reason for c in spread.candidates}
    assert "residency=fr wanted" in reasons["aws-eu-central-1"]
    assert "link down" in reasons["down"] and "anti-affinity" in reasons["busy"]
    assert (
        place(TARGETS, Request(2, 2048, labels={"residency": "fr"}, policy="pack")).chosen == "lyon"
    )
    assert place(TARGETS, Request(2, 2048, policy="cheapest")).chosen == "aws-eu-central-1"
    assert place(TARGETS, Request(2, 8192, target="lyon")).chosen is None  # no room there
    none = place(TARGETS, Request(2, 2048, labels={"region": "mars"}))
    assert none.chosen is None and none.reason.startswith("no target fits: ")
    assert place([], Request(1, 1)).reason == "no targets known"


def test_an_unreachable_target_named_explicitly_is_taken_and_the_command_waits() -> None:
    assert place(TARGETS, Request(1, 64, target="down")).chosen == "down"


def test_the_rate_limiter_allows_bursts_then_the_rate_and_forgets_idle_principals() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)
    assert limiter.take("a", 0.5) == 0.0  # half a second later: one more
    assert limiter.take("b", 0.5) == 0.0  # others are not affected
    assert RateLimiter(0.0, 0.0).take("a", 0.0) == 0.0  # off


# --- commands on the pinned host ------------------------------------------------------


class Vms:
    """The VM controls, counting what they were asked to do."""

    def __init__(self) -> None:
        self.created: list[str] = []

    async def create(self, spec: VmSpec, start: bool = False) -> VmCreated:
        if spec.name == "taken":
            raise Refused(RefusalKind.CONFLICT, "VM taken exists")
        self.created.append(spec.name)
        return VmCreated(spec.name, "u", start, "n1")

    async def start(self, name: str) -> VmStarted:
        return VmStarted(name, True, "n1")

    async def stop(self, name: str, timeout: float) -> VmStopped:
        return VmStopped(name, "shutdown", "n1")

    async def delete(self, name: str, force: bool = False) -> VmDeleted:
        return VmDeleted(name, True, [])


class Nothing:
    async def migrate(self, vm: str, request: MigrateRequest) -> str:
        return "m-1"

    async def drain(self) -> DrainStatus:
        return DrainStatus("h1", draining=True)

    async def undrain(self) -> DrainStatus:
        return DrainStatus("h1", draining=False)


@dataclass(frozen=True)
class Authority:
    """A coordinator's TLS identity (it signs) and a host's trust in it (it checks)."""

    signer: CommandSigner
    trust: CoordinatorTrust
    stranger: CommandSigner  # a certificate of another CA, for the same address


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca, cert, key = tls_files(tmp_path_factory.mktemp("tls"))
    _, other_cert, other_key = tls_files(tmp_path_factory.mktemp("other-tls"))
    return Authority(
        CommandSigner.from_files(str(cert), str(key)),
        CoordinatorTrust.from_config(("https://127.0.0.1:8443",), str(ca)),
        CommandSigner.from_files(str(other_cert), str(other_key)),
    )


def commands(
    tmp_path: Path,
    vms: Vms,
    sent: list[tuple[str, Message]],
    authority: Authority | None,
    gateway: str = "g",
    controls: SiteControls | None = None,
) -> SiteCommands:
    async def send(to: str, message: Message) -> None:
        sent.append((to, message))

    if controls is None:
        controls = SiteControls("h1", vms, Nothing(), Nothing(), dict)  # type: ignore[arg-type]
    return SiteCommands(
        controls,
        tmp_path / "ledger",
        send=send,
        gateway=lambda: gateway,
        member_state=lambda node: MemberState.ALIVE,
        trust=authority.trust if authority else None,
    )


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def create(key: str, name: str = "web", signer: CommandSigner | None = None) -> wire.Command:
    command = wire.Command(
        key, wire.CommandKind.CREATE, host="h1", spec=wire.VmSpec(name, 1, 64, kernel="/k")
    )
    return signer.sign(command, time.time()) if signer else command


async def test_a_command_runs_once_even_after_the_agent_restarts(
    tmp_path: Path, authority: Authority
) -> None:
    vms = Vms()
    first = commands(tmp_path, vms, [], authority)
    k1 = create("k1", signer=authority.signer)
    outcome = await first.run(k1)
    assert outcome.ok and outcome.host == "h1" and vms.created == ["web"]
    assert await first.run(k1) == outcome
    later = commands(tmp_path, vms, [], authority)  # the agent's next life reads the ledger file
    assert await later.run(create("k1", signer=authority.signer)) == outcome
    assert vms.created == ["web"]
    refused = await later.run(create("k2", "taken", authority.signer))
    assert (refused.ok, refused.status) == (False, 409)


async def test_a_command_cut_short_by_a_crash_is_reported_interrupted_not_run_again(
    tmp_path: Path, authority: Authority
) -> None:
    (tmp_path / "ledger").write_text(
        json.dumps({"key": "k1", "at": 1.0, "outcome": None}) + "\n{torn"
    )
    vms = Vms()
    outcome = await commands(tmp_path, vms, [], authority).run(
        create("k1", signer=authority.signer)
    )
    assert not outcome.ok and "interrupted" in outcome.detail and vms.created == []


async def test_a_relayed_command_is_obeyed_only_from_the_sites_gateway(
    tmp_path: Path, authority: Authority
) -> None:
    vms = Vms()
    sent: list[tuple[str, Message]] = []
    here = commands(tmp_path, vms, sent, authority, gateway="g")
    relay = SiteCommandRelay("r1", codec.pack_struct(create("k1", signer=authority.signer)))
    await here.receive("intruder", relay)
    signed = create("k2", "ok", authority.signer)
    await here.receive("g", SiteCommandRelay("r2", codec.pack_struct(signed)))
    await here.receive("g", SiteCommandRelay("r3", b"\xc1garbage"))
    for task in list(here._tasks):
        await task
    answers = {
        m.request_id: codec.unpack_struct(wire.Outcome, m.outcome)
        for _, m in sent
        if isinstance(m, SiteCommandResult)
    }
    assert answers["r1"].status == 403 and "not the site's gateway" in answers["r1"].detail
    assert answers["r2"].ok and vms.created == ["ok"]
    assert answers["r3"].status == 400


async def test_the_pinned_host_runs_only_what_the_coordinator_signed_for_it(
    tmp_path: Path, authority: Authority
) -> None:
    """The gateway relays; it cannot make up, alter, re-pin, stale-date or replay a command."""
    vms = Vms()
    here = commands(tmp_path, vms, [], authority)
    signed = create("k1", "honest", authority.signer)
    forged = {
        "unsigned": create("k2", "made-up"),
        "other CA": create("k3", "made-up", authority.stranger),
        "altered": dataclasses.replace(create("k4", "x", authority.signer), force=True),
        "re-pinned": dataclasses.replace(create("k5", "x", authority.signer), host="h2"),
        "stale": authority.signer.sign(create("k6", "x"), time.time() - 3600),
        "spliced": dataclasses.replace(signed, key="k7"),
    }
    for what, command in forged.items():
        outcome = await here.run_here(command)
        assert (outcome.ok, outcome.status) == (False, 403), what
        assert outcome.detail.startswith("refused: "), (what, outcome.detail)
    assert vms.created == [] and here.refused == len(forged)
    assert (await here.run_here(signed)).ok
    assert (await here.run_here(signed)).ok and vms.created == ["honest"]  # a replay: the ledger


async def test_a_commands_trace_context_is_no_part_of_what_the_coordinator_signs(
    tmp_path: Path, authority: Authority
) -> None:
    """The trace context grants nothing: a relay may lose or change it, and an agent that
    predates the field (which it then ignores) verifies the same signed bytes."""
    vms = Vms()
    here = commands(tmp_path, vms, [], authority)
    traced = authority.signer.sign(
        dataclasses.replace(create("k1", "traced"), traceparent=TRACEPARENT), time.time()
    )
    assert (await here.run_here(dataclasses.replace(traced, traceparent=""))).ok
    untraced = create("k2", "untraced", authority.signer)
    assert (await here.run_here(dataclasses.replace(untraced, traceparent=TRACEPARENT))).ok
    assert vms.created == ["traced", "untraced"]


async def test_a_host_with_no_coordinator_configured_refuses_every_command(
    tmp_path: Path, authority: Authority
) -> None:
    vms = Vms()
    here = commands(tmp_path, vms, [], None)
    outcome = await here.run_here(create("k1", signer=authority.signer))
    assert outcome.status == 403 and "no coordinator configured" in outcome.detail
    assert vms.created == [] and here.refused == 1


# --- a migrate to a host that must fetch the VM's template first ------------------------


class FetchingMesh:
    """h1's real migrator in `FakeView`'s mesh, on libvirt's test driver where vm1 is made
    from `TEMPLATE`, which h2 lacks; asked to fetch it, h2 does if `fetches` (its record
    lists it as fetching, then as held), else it never starts."""

    def __init__(self, tmp_path: Path, fetches: bool) -> None:
        self.view = FakeView()
        self.sent: list[tuple[str, Message]] = []
        uri = labelled_libvirt(tmp_path, {"vm1": {TEMPLATE_LABEL: TEMPLATE}})
        self.driver = migrator(self.sent, self.view, uri)
        self.driver.want_template = self._want
        self.asked: list[tuple[str, str]] = []
        self._fetches = fetches
        self._fetching: set[asyncio.Task[None]] = set()

    def controls(self) -> SiteControls:
        return SiteControls("h1", Vms(), self.driver, Nothing(), self.view.records)  # type: ignore[arg-type]

    def proposals(self) -> list[tuple[str, str]]:
        return [(to, m.vm) for to, m in self.sent if isinstance(m, MigrationPropose)]

    async def _want(self, target: str, ref: str) -> bool:
        self.asked.append((target, ref))
        if self._fetches:
            self._fetching.add(asyncio.create_task(self._fetch(target, ref)))
        return True

    async def _fetch(self, host: str, ref: str) -> None:
        self.view.gossip(host, fetching=(ref,))
        await asyncio.sleep(0.1)
        self.view.gossip(host, templates=(ref,), fetching=())


def migrate(key: str, signer: CommandSigner, target: str = "h2") -> wire.Command:
    command = wire.Command(key, wire.CommandKind.MIGRATE, host="h1", vm="vm1", target=target)
    return signer.sign(command, time.time())


@pytest.fixture
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_controls, "TEMPLATE_LOOK", 0.01)
    monkeypatch.setattr(site_controls, "FETCH_QUIET", 0.3)


@pytest.mark.parametrize("target", ["h2", ""])
async def test_a_migrate_command_waits_for_the_targets_fetch_then_migrates(
    tmp_path: Path, authority: Authority, quick_looks: None, target: str
) -> None:
    """As `nova vm migrate` does: the target fetches the template, then the VM moves there
    (with no target named too: the agents' choice, the only other host, lacks it)."""
    mesh = FetchingMesh(tmp_path, fetches=True)
    here = commands(tmp_path, Vms(), [], authority, controls=mesh.controls())
    outcome = await here.run(migrate("k1", authority.signer, target))
    assert (outcome.ok, outcome.status, outcome.migration != "") == (True, 202, True)
    assert outcome.detail == (
        f"migration {outcome.migration} started from h1 once h2 held template {TEMPLATE}"
    )
    assert mesh.asked == [("h2", TEMPLATE)] and mesh.proposals() == [("h2", "vm1")]
    await mesh.driver.close()


async def test_a_migrate_command_gives_up_on_a_target_that_does_not_fetch(
    tmp_path: Path, authority: Authority, quick_looks: None
) -> None:
    mesh = FetchingMesh(tmp_path, fetches=False)
    here = commands(tmp_path, Vms(), [], authority, controls=mesh.controls())
    outcome = await here.run(migrate("k1", authority.signer))
    assert (outcome.ok, outcome.status) == (False, 409)
    assert outcome.detail.startswith(
        f"h2 lacks template {TEMPLATE} and has not been fetching it for 0 s: no peer may hold"
    )
    assert mesh.asked == [("h2", TEMPLATE)] and mesh.proposals() == []  # never moved
    mesh.driver.want_template = None  # a host that cannot ask h2 to fetch: no wait at all
    refused = await here.run(migrate("k2", authority.signer))
    assert (refused.ok, refused.status) == (False, 409)
    assert "it cannot be asked to fetch it" in refused.detail and mesh.proposals() == []
    await mesh.driver.close()
