"""Two lab sites and a coordinator, end to end: real lab hosts, libvirtd, QEMU guests.

lyon (h1-h3) and paris (h4-h6) are meshes of three `nova-agent`s with
their own cluster CAs, seeded within the site. The coordinator runs on this
machine's loopback (SQLite, TLS); each lab host reaches it only through its
own cable (a relay listening on the host's 127.0.0.1), and a site's uplink
is its three cables, cut and healed as one. Guests are the TCG test guest,
so "runs" means its heartbeat shows on the host's console.

`NOVACRON_UPLINK_CUT=300` makes the uplink cut last the issue's five
minutes (by default it lasts as long as its scenario: 18 s in one run).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.federation import (
    Api,
    CoordinatorProcess,
    Uplink,
    View,
    agent_status,
    cables_into,
    tls_files,
    views_agree,
    wait_until,
)
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents
from tests.lab_vms import (
    MEMORY_MIB,
    beats,
    keep_logs,
    migration_under_way,
    migrations,
    nova,
    rebalance_paused,
    remove_everywhere,
    running_on,
    wait_beat_above,
)

pytestmark = pytest.mark.lab

RUN = f"f{os.getpid() % 100000}"
SITES = {"lyon": ("h1", "h2", "h3"), "paris": ("h4", "h5", "h6")}
REGIONS = {"lyon": "eu-west", "paris": "eu-central"}
UPLINK_PORT = 8443  # each host's cable listens on its own 127.0.0.1 here
UPLINK = f"https://127.0.0.1:{UPLINK_PORT}"
HOT = ("hot-1", "hot-2", "hot-3", "hot-4")
VMS = ("edge-1", "db-1", "web-1", "late-1", "cache-1", *HOT)
UPLINK_CUT = float(os.environ.get("NOVACRON_UPLINK_CUT", "0"))  # seconds, at least


@dataclass
class LabFederation:
    lab: Lab
    agents: LabAgents
    coordinator: CoordinatorProcess
    api: Api
    guest: Guest
    uplinks: dict[str, Uplink] = field(default_factory=dict)

    def host(self, name: str) -> LabHost:
        return self.lab.host(name)

    def site(self, name: str) -> dict[str, Any]:
        return self.api.get(f"/v1/sites/{name}")  # type: ignore[no-any-return]

    def hosts(self, site: str) -> dict[str, str]:
        rows = self.api.get(f"/v1/hosts?site={site}")["items"]
        return {h["node_id"]: h["state"] for h in rows}

    def copies(self, vm: str) -> list[tuple[str, str, str]]:
        """(site, host, state) of each VM called `vm` in the coordinator's view."""
        rows = self.api.get("/v1/vms?per_page=1000")["items"]
        return [(r["site"], r["host"], r["state"]) for r in rows if r["name"] == vm]

    def wait_running(self, vm: str, site: str, host: str) -> None:
        """Until the coordinator's view holds `vm` once, running on `site`/`host`."""
        want = [(site, host, "running")]
        wait_until(f"{vm} running once on {site}/{host}", lambda: self.copies(vm) == want)

    def create(self, name: str, site: str = "", region: str = "", key: str = "") -> Any:
        """`POST /v1/vms` of a test guest; the operation (202 asserted)."""
        constraints: dict[str, Any] = {"labels": {"region": region}} if region else {}
        if site:
            constraints["site"] = site
        body = {
            "name": name,
            "vcpus": 1,
            "memory_mib": MEMORY_MIB,
            "kernel": str(self.guest.kernel),
            "initrd": str(self.guest.initrd),
            "cmdline": self.guest.cmdline(),
            "constraints": constraints,
        }
        headers = {"Idempotency-Key": key} if key else {}
        status, op, _ = self.api.call("POST", "/v1/vms", body, headers)
        assert status == 202, (status, op)
        return op

    def views(self, site: str) -> tuple[View, View]:
        """(the coordinator's, the site's own) {(VM, host, state)} of `site`."""
        rows = self.api.get(f"/v1/vms?site={site}&per_page=1000")["items"]
        code, local = nova(self.host(SITES[site][0]), "vm", "list")
        return (
            {(r["name"], r["host"], r["state"]) for r in rows},
            {(r["name"], r["host"], r["state"]) for r in local["vms"]} if code == 0 else set(),
        )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[LabFederation]:
    root = tmp_path_factory.mktemp("federation-lab")
    tls = tls_files(root / "tls")
    coordinator = CoordinatorProcess(root / "coordinator", tls)
    coordinator.directory.mkdir()
    tokens = {
        site: coordinator.admin("site", "add", site, "--label", f"region={region}")[
            "enrollment_token"
        ]
        for site, region in REGIONS.items()
    }
    secret = coordinator.admin("token", "create", "ops", "--role", "admin")["secret"]
    api = Api(coordinator.url, secret, tls[0])
    try:
        coordinator.start()
        with Lab(RUN, 6) as lab:
            agents = LabAgents(
                lab,
                mdns=False,  # one bridge, two sites: each finds its own through its seed
                inventory_interval=1.0,
                rebalance=True,
                extra_args=["--rebalance-interval", "2"],
            )
            fed = LabFederation(lab, agents, coordinator, api, guest)
            try:
                for site, names in SITES.items():
                    _bring_up(fed, site, names, tokens[site], tls[0])
                yield fed
            finally:
                for uplink in fed.uplinks.values():
                    uplink.close()
                remove_everywhere(lab, *VMS)
                agents.stop_all()
                keep_logs(lab, agents, RUN)
    finally:
        coordinator.stop()
        _keep_coordinator_log(coordinator)


def _bring_up(fed: LabFederation, site: str, names: tuple[str, ...], token: str, ca: Path) -> None:
    """The site's CA, its three agents seeded to the first and linked through their cables,
    enrolled from its first host; until the coordinator sees all three and the link is up."""
    agents, hosts = fed.agents, [fed.host(n) for n in names]
    fed.uplinks[site] = cables_into([h.init_pid for h in hosts], fed.coordinator.port, UPLINK_PORT)
    agents.create_ca(site)
    for host in hosts:
        agents.issue(host, site)
    data = agents.host_dir(hosts[0])
    config = data / "enroll.toml"
    config.write_text(
        f'ca_file = "{agents.ca_dir(site) / "ca.pub"}"\n'
        f'cert_file = "{data / f"{hosts[0].name}.crt"}"\n'
        f'key_file = "{data / f"{hosts[0].name}.key"}"\n'
    )
    code, enrolled = nova(
        hosts[0], "site", "enroll", UPLINK, token, "--config", str(config),
        "--coordinator-ca", str(ca),
    )  # fmt: skip
    assert code == 0, enrolled
    seed = f"{hosts[0].address}:7946"
    for host in hosts:
        argv = [*agents.command(host, site), "--coordinator", UPLINK, "--coordinator-ca", str(ca)]
        agents.start(host, argv=argv + (["--seeds", seed] if host is not hosts[0] else []))
    wait_until(
        f"{site}'s hosts alive at the coordinator and its link up",
        lambda: fed.hosts(site) == dict.fromkeys(names, "alive") and fed.site(site)["connected"],
        timeout=90,
    )
    code, paused = nova(hosts[0], "rebalance", "pause")  # resumed by the test that wants it
    assert code == 0, paused
    for host in hosts:  # the pause is the mesh's: every agent holds it
        wait_until(f"{host.name} paused", partial(rebalance_paused, host), timeout=30)


def _keep_coordinator_log(coordinator: CoordinatorProcess) -> None:
    keep = os.environ.get("NOVACRON_LAB_LOGS")
    if keep and coordinator.log.exists():
        (Path(keep) / RUN).mkdir(parents=True, exist_ok=True)
        (Path(keep) / RUN / "coordinator.log").write_text(coordinator.log.read_text())


def test_a_vm_created_through_the_api_boots_on_the_site_its_constraints_select(
    fed: LabFederation,
) -> None:
    lyon = fed.site("lyon")
    assert lyon["state"] == "enrolled" and lyon["gateway"] in SITES["lyon"], lyon
    op = fed.create("edge-1", region="eu-west", key="edge-1")
    assert op["site"] == "lyon"
    done = fed.api.wait_operation(op["id"], timeout=120)
    assert done["status"] == "succeeded", done
    host = done["result"]["host"]
    assert host in SITES["lyon"]
    assert running_on(fed.lab, "edge-1") == [host]
    wait_beat_above(fed.host(host), "edge-1", 3)  # the guest really boots and runs
    fed.wait_running("edge-1", "lyon", host)
    remove_everywhere(fed.lab, "edge-1")


def test_the_coordinator_killed_mid_create_then_restarted_leaves_exactly_one_vm(
    fed: LabFederation,
) -> None:
    op = fed.create("db-1", region="eu-west", key="db-1")
    fed.coordinator.kill()
    fed.coordinator.start()
    again = fed.create("db-1", region="eu-west", key="db-1")  # the client retries
    assert again["id"] == op["id"]
    done = fed.api.wait_operation(op["id"], timeout=120)
    assert done["status"] == "succeeded", done
    host = done["result"]["host"]
    wait_until("lyon linked again", lambda: fed.site("lyon")["connected"], timeout=60)
    fed.wait_running("db-1", "lyon", host)
    assert running_on(fed.lab, "db-1") == [host]  # one QEMU, on the host the site named
    remove_everywhere(fed.lab, "db-1")


def test_an_uplink_cut_the_site_migrates_and_rebalances_and_a_command_runs_once_on_heal(
    fed: LabFederation,
) -> None:
    """paris's uplink cut: inside the site a live migration and automatic rebalancing go
    on; a create asked meanwhile is pending and says why; once healed it runs exactly
    once, and within 10 s the coordinator's view of paris equals the site's."""
    done = fed.api.wait_operation(fed.create("web-1", region="eu-central")["id"], timeout=120)
    assert done["status"] == "succeeded" and done["result"]["host"] in SITES["paris"], done
    web_host = fed.host(done["result"]["host"])
    wait_beat_above(web_host, "web-1", 3)

    fed.uplinks["paris"].cut()
    cut_at = time.monotonic()
    wait_until("paris seen away", lambda: not fed.site("paris")["connected"], timeout=30)
    late = fed.create("late-1", site="paris")  # a site named explicitly waits for it

    target = next(fed.host(n) for n in SITES["paris"] if n != web_host.name)
    before = beats(web_host, "web-1")[-1]
    code, moved = nova(web_host, "vm", "migrate", "web-1", "--to", target.name, "--wait")
    assert code == 0 and moved["migration"]["outcome"] == "committed", moved
    wait_beat_above(target, "web-1", before)  # the same guest, still running

    hot_host = web_host  # web-1 has left it
    _rebalance_while_cut(fed, hot_host)

    time.sleep(max(0.0, UPLINK_CUT - (time.monotonic() - cut_at)))  # the cut's length
    pending = fed.api.get(f"/v1/operations/{late['id']}")
    assert pending["status"] == "pending" and "link is down" in pending["detail"], pending
    assert running_on(fed.lab, "late-1") == []
    fed.uplinks["paris"].heal()
    healed_at = time.monotonic()

    site, took = views_agree(
        partial(fed.views, "paris"), lambda site: "late-1" in {n for n, _, _ in site}, healed_at
    )
    assert ("web-1", target.name, "running") in site
    print(
        f"paris cut off {healed_at - cut_at:.0f} s; views equal "
        f"{took:.1f} s after the heal: {sorted(site)}"
    )
    done = fed.api.wait_operation(late["id"])
    assert done["status"] == "succeeded", done
    assert running_on(fed.lab, "late-1") == [done["result"]["host"]]  # it ran once
    remove_everywhere(fed.lab, "web-1", "late-1", *HOT)


def _rebalance_while_cut(fed: LabFederation, hot_host: LabHost) -> None:
    """Pile guests that dirty memory onto `hot_host`, let the site rebalance until it has
    moved at least one of them away, then pause it again and wait for quiet."""
    boot = ("--kernel", str(fed.guest.kernel), "--initrd", str(fed.guest.initrd))
    hot = fed.guest.cmdline(dirty_mib=8, dirty_rate=200)  # as hot as the rebalancing test's
    for vm in HOT:
        args = ("vm", "create", vm, "--memory", str(MEMORY_MIB), *boot, "--cmdline", hot)
        code, created = nova(hot_host, *args, "--start")
        assert code == 0 and created["host"] == hot_host.name, created
    for vm in HOT:
        wait_beat_above(hot_host, vm, 3)
    paris = [fed.host(n) for n in SITES["paris"]]
    code, answer = nova(hot_host, "rebalance", "resume")
    assert code == 0, answer
    moved = wait_until(
        f"the site rebalancing a guest away from {hot_host.name}",
        lambda: [
            m for m in migrations(hot_host)
            if m["vm"] in HOT and m["direction"] == "outbound" and m["outcome"] == "committed"
        ],
        timeout=240,
    )  # fmt: skip
    print(f"rebalanced while cut off: {[(m['vm'], m['target']) for m in moved]}")
    code, answer = nova(hot_host, "rebalance", "pause")
    assert code == 0, answer
    for host in paris:  # no agent may start a move after this
        wait_until(f"{host.name} paused", partial(rebalance_paused, host), timeout=30)
    wait_until(
        "no migration in flight in paris",
        lambda: not migration_under_way(paris),
        timeout=120,
    )


def test_the_gateway_host_killed_another_holds_the_link_within_15_s_and_no_command_is_lost(
    fed: LabFederation,
) -> None:
    gateway = fed.host(fed.site("lyon")["gateway"])
    fed.agents.kill(gateway)
    killed = time.monotonic()
    try:
        op = fed.create("cache-1", site="lyon")  # asked while no gateway is alive
        successor = wait_until(
            "another host of lyon holding its link",
            lambda: (s := fed.site("lyon"))["connected"] and s["gateway"] != gateway.name and s,
            timeout=30,
        )["gateway"]
        took = time.monotonic() - killed
        assert took <= 15, f"{successor} held lyon's link {took:.1f} s after the kill"
        done = fed.api.wait_operation(op["id"], timeout=120)
        assert done["status"] == "succeeded", done
        host = done["result"]["host"]
        assert host != gateway.name and running_on(fed.lab, "cache-1") == [host]
        wait_beat_above(fed.host(host), "cache-1", 3)
        fed.wait_running("cache-1", "lyon", host)
    finally:
        fed.agents.restart(gateway)
        remove_everywhere(fed.lab, "cache-1")


def test_a_site_with_an_unenrolled_ca_is_refused_with_the_reason(fed: LabFederation) -> None:
    """An agent of a third cluster CA, never enrolled, on h3 beside lyon's agent."""
    agents, h3 = fed.agents, fed.host("h3")
    ca = agents.create_ca("rome")
    out = agents.root / "rome-z1"
    subprocess.run(
        [str(BIN / "nova"), "ca", "issue", "z1", "--dir", str(ca), "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    (out / "none.toml").write_text("")
    argv = [
        str(BIN / "nova-agent"), "--config", str(out / "none.toml"),
        "--ca-file", str(ca / "ca.pub"),
        "--cert-file", str(out / "z1.crt"), "--key-file", str(out / "z1.key"),
        "--bind-address", h3.address, "--port", "7950", "--no-mdns",
        "--libvirt-uri", "test:///default", "--data-dir", str(out / "data"),
        "--disk-dir", str(out / "disks"), "--api-socket", str(out / "z1.sock"),
        "--no-rebalance", "--coordinator", UPLINK,
        "--coordinator-ca", str(fed.coordinator.tls[0]),
    ]  # fmt: skip
    with open(out / "agent.log", "ab") as log:
        stranger = h3.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        error = wait_until(
            "the stranger's refusal",
            lambda: (agent_status(out / "z1.sock").get("site_link") or {}).get("last_error"),
        )
        assert "unknown-ca" in error and "enroll" in error, error
        assert {s["name"] for s in fed.api.get("/v1/sites")["items"]} == set(SITES)
    finally:
        stranger.terminate()
        stranger.wait(timeout=30)
