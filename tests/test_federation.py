"""Sites federated by a coordinator, all real processes on loopback (libvirt's test driver).

Two sites (lyon: two agents, paris: one) with their own cluster CAs enroll
with one-time tokens and hold TLS site links to a `nova-coordinator`; the
coordinator's view follows theirs; a VM created through the API lands where
its constraints say, exactly once, across a coordinator killed mid-create
and a gateway killed mid-link; a stranger CA, a spent token and an agent
that does not trust the coordinator's certificate are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.federation import (
    BIN,
    Api,
    Cable,
    CoordinatorProcess,
    Site,
    tls_files,
    views_agree,
    wait_until,
)

pytestmark = pytest.mark.agents  # real agent processes on loopback


class Federation:
    def __init__(self, root: Path, database: str) -> None:
        self.root = root
        self.tls = tls_files(root / "tls")
        self.coordinator = CoordinatorProcess(root / "coordinator", self.tls, database)
        self.coordinator.directory.mkdir()
        self.sites: dict[str, Site] = {}
        self.api: Api | None = None
        self.cable: Cable | None = None  # paris's uplink

    def hosts(self, site: str) -> dict[str, str]:
        assert self.api is not None
        rows = self.api.get(f"/v1/hosts?site={site}")["items"]
        return {h["node_id"]: h["state"] for h in rows}

    def site(self, name: str) -> dict[str, Any]:
        assert self.api is not None
        return self.api.get(f"/v1/sites/{name}")  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """The two sites and a coordinator on SQLite, then on the suite's PostgreSQL."""
    database = ""
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres").database()
    fed = Federation(tmp_path_factory.mktemp("federation"), database)
    c = fed.coordinator
    lyon_token = c.admin("site", "add", "lyon", "--label", "region=eu-west")["enrollment_token"]
    paris_token = c.admin("site", "add", "paris", "--label", "region=eu-central")[
        "enrollment_token"
    ]
    admin = c.admin("token", "create", "ops", "--role", "admin")["secret"]
    c.start()
    fed.api = Api(c.url, admin, fed.tls[0])
    fed.cable = Cable(c.port)
    fed.sites["lyon"] = Site(fed.root / "lyon", "lyon", ("n1", "n2"))
    fed.sites["paris"] = Site(fed.root / "paris", "paris", ("p1",))
    assert fed.sites["lyon"].enroll(c, lyon_token)[0] == 0
    assert fed.sites["paris"].enroll(c, paris_token)[0] == 0
    try:
        for site in fed.sites.values():
            url = fed.cable.url if site.name == "paris" else c.url
            for node in site.nodes:
                site.start(node, (url,), fed.tls[0])
        wait_until(
            "both sites' views at the coordinator",
            lambda: (
                fed.hosts("lyon") == {"n1": "alive", "n2": "alive"}
                and fed.hosts("paris") == {"p1": "alive"}
            ),
        )
        wait_until("n1 holding lyon's link", lambda: _linked(fed, "lyon", "n1"))
        yield fed
    finally:
        for site in fed.sites.values():
            site.stop()
        c.stop()
        fed.cable.close()


def _linked(fed: Federation, site: str, gateway: str) -> bool:
    row = fed.site(site)
    return bool(row["connected"]) and row["gateway"] == gateway


def test_enrolled_sites_connect_through_their_gateway_and_show_their_hosts(
    fed: Federation,
) -> None:
    lyon = fed.site("lyon")
    assert (lyon["state"], lyon["connected"], lyon["gateway"]) == ("enrolled", True, "n1")
    status = fed.sites["lyon"].status("n2")
    assert status["site_link"]["gateway"] == "n1" and not status["site_link"]["connected"]
    assert fed.sites["lyon"].status("n1")["site_link"]["site"] == "lyon"


def test_a_spent_enrollment_token_is_refused(fed: Federation) -> None:
    other = Site(fed.root / "stranger-enroll", "x", ("s1",))
    token = fed.coordinator.admin("site", "add", "spent")["enrollment_token"]
    assert other.enroll(fed.coordinator, token)[0] == 0
    code, answer = other.enroll(fed.coordinator, token)
    assert code == 1 and "unknown or already used" in answer["error"]


def test_a_site_with_an_unenrolled_ca_is_refused_with_the_reason(fed: Federation) -> None:
    stranger = Site(fed.root / "stranger", "stranger", ("z1",))
    try:
        stranger.start("z1", (fed.coordinator.url,), fed.tls[0])
        error = wait_until(
            "the stranger's refusal",
            lambda: (stranger.status("z1").get("site_link") or {}).get("last_error"),
        )
        assert "unknown-ca" in error and "enroll" in error
        assert {s["name"] for s in fed.api.get("/v1/sites")["items"]} >= {"lyon", "paris"}  # type: ignore[union-attr]
    finally:
        stranger.stop()


def test_an_agent_that_does_not_trust_the_coordinator_certificate_does_not_connect(
    fed: Federation,
) -> None:
    wrong = tls_files(fed.root / "other-tls")[0]
    lonely = Site(fed.root / "lonely", "lonely", ("l1",))
    try:
        lonely.start("l1", (fed.coordinator.url,), wrong)
        error = wait_until(
            "a certificate error",
            lambda: (lonely.status("l1").get("site_link") or {}).get("last_error"),
        )
        assert "certificate" in error.lower()
    finally:
        lonely.stop()


def create(
    fed: Federation, name: str, region: str, key: str = "", site: str = ""
) -> tuple[int, Any]:
    """`POST /v1/vms` for a small VM in `region` (`site`: that site, named explicitly,
    which is taken even while its link is down)."""
    assert fed.api is not None
    constraints: dict[str, Any] = {"labels": {"region": region}}
    if site:
        constraints["site"] = site
    body = {
        "name": name,
        "vcpus": 1,
        "memory_mib": 64,
        "kernel": str(fed.root / "vmlinuz"),
        "constraints": constraints,
    }
    (fed.root / "vmlinuz").write_bytes(b"kernel")
    headers = {"Idempotency-Key": key} if key else {}
    status, answer, _ = fed.api.call("POST", "/v1/vms", body, headers)
    return status, answer


def copies(fed: Federation, name: str) -> list[dict[str, Any]]:
    assert fed.api is not None
    return [vm for vm in fed.api.get("/v1/vms?per_page=1000")["items"] if vm["name"] == name]


def test_a_vm_created_through_the_api_runs_on_the_site_its_constraints_select(
    fed: Federation,
) -> None:
    assert fed.api is not None
    status, op = create(fed, "web-1", "eu-central", key="web-1")
    assert status == 202 and op["site"] == "paris"
    done = fed.api.wait_operation(op["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["host"] == "p1"
    found = wait_until("web-1 in the coordinator's view", lambda: copies(fed, "web-1"))
    assert [(vm["site"], vm["host"], vm["state"]) for vm in found] == [("paris", "p1", "running")]
    again, same = create(fed, "web-1", "eu-central", key="web-1")
    assert (again, same["id"]) == (202, op["id"])  # the same request, not a second VM
    status, conflict = create(fed, "web-1", "eu-central")
    assert status == 409 and "already runs" in conflict["error"]["message"]


UPLINK_CUT = float(os.environ.get("NOVACRON_UPLINK_CUT", "10"))  # seconds; the 300


def views_of_paris(fed: Federation) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(the coordinator's, the site's own) {(VM, host, state)} of paris."""
    assert fed.api is not None
    coordinator = fed.api.get("/v1/vms?site=paris&per_page=1000")["items"]
    code, local, _ = local_nova(fed, "p1", "vm", "list")
    site = local["vms"] if code == 0 else []
    return (
        {(vm["name"], vm["host"], vm["state"]) for vm in coordinator},
        {(vm["name"], vm["host"], vm["state"]) for vm in site},
    )


def test_an_uplink_cut_the_site_goes_on_a_command_waits_visibly_and_runs_once_on_heal(
    fed: Federation,
) -> None:
    assert fed.api is not None and fed.cable is not None
    wait_until("paris connected", lambda: fed.site("paris")["connected"])
    fed.cable.cut()
    wait_until("paris seen away", lambda: not fed.site("paris")["connected"], timeout=30)
    kernel = str(fed.root / "vmlinuz")
    (fed.root / "vmlinuz").write_bytes(b"kernel")
    code, made, err = local_nova(
        fed, "p1", "vm", "create", "alone-1", "--memory", "64", "--kernel", kernel
    )
    assert code == 0, (made, err)  # the site's own CLI goes on without the coordinator
    for action, draining in (("drain", True), ("undrain", False)):
        code, answer, err = local_nova(fed, "p1", "host", action)
        assert code == 0 and answer["drain"]["draining"] is draining, (answer, err)
    status, refused = create(fed, "late-0", "eu-central")
    assert status == 409 and "link down" in refused["error"]["message"]  # placement looks away
    status, op, _ = fed.api.call(
        "POST",
        "/v1/vms",
        {"name": "late-1", "vcpus": 1, "memory_mib": 64, "kernel": kernel,
         "constraints": {"site": "paris"}},
    )  # fmt: skip
    assert status == 202 and op["site"] == "paris"  # a site named explicitly: it waits for it
    try:
        time.sleep(UPLINK_CUT)  # the cut itself: the scenario, not a wait for a condition
        pending = fed.api.get(f"/v1/operations/{op['id']}")
        assert pending["status"] == "pending" and "link is down" in pending["detail"], pending
        assert not copies(fed, "late-1") and not copies(fed, "alone-1")
    finally:
        fed.cable.heal()
    site, _ = views_agree(
        partial(views_of_paris, fed),
        lambda site: {"alone-1", "late-1"} <= {name for name, _, _ in site},
        since=time.monotonic(),
    )
    assert ("late-1", "p1", "running") in site
    done = fed.api.wait_operation(op["id"])
    assert done["status"] == "succeeded", done
    assert len(copies(fed, "late-1")) == 1
    code, listed, _ = local_nova(fed, "p1", "vm", "list")
    assert [vm["name"] for vm in listed["vms"]].count("late-1") == 1  # it ran once


def test_explain_shows_every_site_and_why(fed: Federation) -> None:
    assert fed.api is not None
    status, answer, _ = fed.api.call(
        "POST",
        "/v1/placement/explain",
        {"vcpus": 1, "memory_mib": 64, "constraints": {"labels": {"region": "eu-west"}}},
    )
    assert status == 200 and answer["chosen"] == "lyon"
    verdicts = {c["name"]: (c["fits"], c["reason"]) for c in answer["candidates"]}
    assert verdicts["lyon"][0] and not verdicts["paris"][0]
    assert "region=eu-west" in verdicts["paris"][1]


def test_coordinator_killed_mid_create_then_restarted_leaves_exactly_one_vm(
    fed: Federation,
) -> None:
    assert fed.api is not None
    status, op = create(fed, "db-1", "eu-west", key="db-1")
    assert status == 202
    fed.coordinator.kill()
    fed.coordinator.start()
    status, again = create(fed, "db-1", "eu-west", key="db-1")  # the client retries
    assert (status, again["id"]) == (202, op["id"])
    done = fed.api.wait_operation(op["id"])
    assert done["status"] == "succeeded", done
    found = wait_until("db-1 in the view", lambda: copies(fed, "db-1"))
    assert len(found) == 1 and found[0]["site"] == "lyon"
    wait_until("lyon connected again", lambda: fed.site("lyon")["connected"])


def test_the_gateway_killed_another_host_holds_the_link_within_15_s_and_no_command_is_lost(
    fed: Federation,
) -> None:
    """A create asked for lyon while its gateway lies dead: n2 takes the link within 15 s
    of the kill, and the command, stored while no gateway could take it, runs there once."""
    assert fed.api is not None
    lyon = fed.sites["lyon"]
    assert fed.site("lyon")["gateway"] == "n1"
    lyon.kill("n1")
    killed = time.monotonic()
    status, op = create(fed, "cache-1", "eu-west", site="lyon")
    assert status == 202
    wait_until(
        "n2 holding lyon's link",
        lambda: (site := fed.site("lyon"))["gateway"] == "n2" and site["connected"],
        timeout=30,
    )
    took = time.monotonic() - killed
    assert took <= 15, f"n2 held lyon's link {took:.1f} s after n1 was killed"
    done = fed.api.wait_operation(op["id"])
    assert done["status"] == "succeeded" and done["result"]["host"] == "n2", done
    found = wait_until("cache-1 in the coordinator's view", lambda: copies(fed, "cache-1"))
    assert [vm["host"] for vm in found] == ["n2"]
    wait_until("n1 dead in the coordinator's view", lambda: fed.hosts("lyon").get("n1") == "dead")


def local_nova(fed: Federation, node: str, *args: str) -> tuple[int, Any, str]:
    """`nova --json ARGS` on a host of paris, asking its own agent (no coordinator)."""
    site = fed.sites["paris"]
    return cli(fed, *args, "--socket", str(site.socket(node)), config=fed.root / "xdg-local")


def cli(fed: Federation, *args: str, config: Path | None = None) -> tuple[int, Any, str]:
    """`nova --json ARGS` as a field engineer runs it; (exit code, JSON answer, stderr)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config or fed.root / "xdg")}
    env.pop("NOVACRON_COORDINATOR", None)
    done = subprocess.run(
        [str(BIN / "nova"), "--json", *args], capture_output=True, text=True, timeout=120, env=env
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else None, done.stderr


def test_nova_talks_to_the_coordinator_through_a_context(fed: Federation) -> None:
    assert fed.api is not None
    c = fed.coordinator
    code, _, err = cli(
        fed, "context", "add", "prod", c.url, "--token", fed.api.token, "--ca", str(fed.tls[0])
    )
    assert code == 0, err
    assert (fed.root / "xdg" / "novacron" / "config.toml").stat().st_mode & 0o077 == 0
    code, listed, _ = cli(fed, "context", "list")
    assert listed["contexts"] == [{"name": "prod", "url": c.url, "current": True}]
    code, sites, _ = cli(fed, "sites")
    assert code == 0 and {s["name"] for s in sites["sites"]} >= {"lyon", "paris"}
    (fed.root / "vmlinuz").write_bytes(b"kernel")
    code, made, err = cli(
        fed, "vm", "create", "api-1", "--memory", "64", "--kernel", str(fed.root / "vmlinuz"),
        "--where", "region=eu-central", "--wait",
    )  # fmt: skip
    assert code == 0, err
    assert made["operation"]["status"] == "succeeded" and made["operation"]["site"] == "paris"
    wait_until("api-1 in the view", lambda: copies(fed, "api-1"))
    code, vms, _ = cli(fed, "vm", "list", "--site", "paris")
    assert code == 0 and "api-1" in {vm["name"] for vm in vms["vms"]}
    assert {vm["site"] for vm in vms["vms"]} == {"paris"}
    code, ops, _ = cli(fed, "operations")
    assert code == 0 and ops["operations"][0]["target"] == "api-1"
    code, answer, err = cli(
        fed, "vm", "create", "x", "--memory", "64", "--kernel", "/k", "--where", "region=mars"
    )
    assert code == 1 and "no target fits" in answer["error"]
    code, answer, _ = cli(fed, "--coordinator", "https://127.0.0.1:1", "sites")
    assert code == 3 and "cannot reach the coordinator" in answer["error"]


def test_nova_drains_and_migrates_through_the_coordinator(fed: Federation) -> None:
    """`nova host drain/undrain SITE/HOST` and `nova vm migrate VM --site S` with a context:
    each an operation the site carries out, or refuses with its reason."""
    assert fed.api is not None
    c = fed.coordinator
    config = fed.root / "xdg-ops"
    code, _, err = cli(
        fed, "context", "add", "ops", c.url, "--token", fed.api.token, "--ca", str(fed.tls[0]),
        config=config,
    )  # fmt: skip
    assert code == 0, err

    def p1_draining(expected: bool) -> bool:
        assert fed.api is not None
        rows = fed.api.get("/v1/hosts?site=paris")["items"]
        return bool(next(h for h in rows if h["node_id"] == "p1")["draining"]) is expected

    for action, draining in (("drain", True), ("undrain", False)):
        code, answer, err = cli(fed, "host", action, "paris/p1", config=config)
        assert code == 0, err
        done = fed.api.wait_operation(answer["operation"]["id"])
        assert done["status"] == "succeeded", done
        assert done["detail"] == f"p1 {'draining' if draining else 'not draining'}", done
        wait_until(f"p1 {action}ed in the view", partial(p1_draining, draining))

    status, op = create(fed, "mover", "eu-central")
    assert status == 202 and fed.api.wait_operation(op["id"])["status"] == "succeeded"
    code, answer, err = cli(
        fed, "vm", "migrate", "mover", "--auto", "--site", "paris", config=config
    )
    assert code == 0, err  # accepted: the site judges it
    done = fed.api.wait_operation(answer["operation"]["id"])
    assert done["status"] == "failed", done
    assert done["error"]["message"] == "no other host in the mesh", done
    assert [vm["host"] for vm in copies(fed, "mover")] == ["p1"]
