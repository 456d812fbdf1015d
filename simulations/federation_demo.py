"""`make demo-federation`: two sites and a coordinator on this machine, narrated.

Two sites, lyon and paris, each a mesh of three `nova-agent`s with its own
cluster CA (processes on loopback with libvirt's test driver: no root, no
lab), enroll with one-time tokens and link to one `nova-coordinator` over
TLS. A VM created through the API lands on the site its constraints select;
the coordinator is SIGKILLed and the sites carry on (a VM created locally
meanwhile); it restarts and its view agrees with the sites' again. Removes
everything it made, even on Ctrl-C.
Run: `python -m novacron.simulations.federation_demo`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from novacron.simulations.federation import (
    BIN,
    Api,
    CoordinatorProcess,
    Site,
    tls_files,
    wait_until,
)

_START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {text}", flush=True)


def site_vms(site: Site, node: str) -> set[str]:
    out = subprocess.run(
        [str(BIN / "nova"), "--json", "vm", "list", "--socket", str(site.socket(node))],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return {f"{vm['host']}/{vm['name']}" for vm in json.loads(out.stdout).get("vms", [])}


def coordinator_vms(api: Api, site: str) -> set[str]:
    return {
        f"{vm['host']}/{vm['name']}"
        for vm in api.get(f"/v1/vms?site={site}&per_page=1000")["items"]
    }


def show_sites(api: Api) -> None:
    for site in api.get("/v1/sites")["items"]:
        link = f"link up through {site['gateway']}" if site["connected"] else "link down"
        say(f"  {site['name']:6} {site['state']:9} {link:24} labels {site['labels']}")


def run(root: Path) -> None:
    tls = tls_files(root / "tls")
    coordinator = CoordinatorProcess(root / "coordinator", tls)
    coordinator.directory.mkdir()
    say("a coordinator (SQLite, TLS on loopback), two sites of three agents, a CA each")
    tokens = {
        name: coordinator.admin("site", "add", name, "--label", f"region={region}")[
            "enrollment_token"
        ]
        for name, region in (("lyon", "eu-west"), ("paris", "eu-central"))
    }
    secret = coordinator.admin("token", "create", "demo", "--role", "admin")["secret"]
    coordinator.start()
    api = Api(coordinator.url, secret, tls[0])
    sites = {
        "lyon": Site(root / "lyon", "lyon", ("l1", "l2", "l3")),
        "paris": Site(root / "paris", "paris", ("p1", "p2", "p3")),
    }
    try:
        for name, site in sites.items():
            code, answer = site.enroll(coordinator, tokens[name])
            assert code == 0, answer
            say(
                f"nova site enroll on {site.nodes[0]}: the coordinator knows this CA as site {name}"
            )
            for node in site.nodes:
                site.start(node, (coordinator.url,), tls[0])
        wait_until(
            "six hosts at the coordinator",
            lambda: (
                len(api.get("/v1/hosts")["items"]) == 6
                and all(s["connected"] for s in api.get("/v1/sites")["items"])
            ),
            90,
        )
        say("both sites linked (each through the gateway its mesh elected):")
        show_sites(api)

        (root / "vmlinuz").write_bytes(b"kernel")
        body: dict[str, Any] = {
            "name": "web-1", "vcpus": 1, "memory_mib": 128, "kernel": str(root / "vmlinuz"),
            "constraints": {"labels": {"region": "eu-central"}},
        }  # fmt: skip
        question = {k: body[k] for k in ("vcpus", "memory_mib", "constraints")}
        status, explain, _ = api.call("POST", "/v1/placement/explain", question)
        say("POST /v1/placement/explain for region=eu-central:")
        for candidate in explain["candidates"]:
            verdict = "fits" if candidate["fits"] else "refused"
            say(f"  {candidate['name']:6} {verdict}: {candidate['reason']}")
        status, op, _ = api.call("POST", "/v1/vms", body)
        assert status == 202, op
        done = api.wait_operation(op["id"])
        say(f"POST /v1/vms web-1: {done['status']} on {done['site']}/{done['result'].get('host')}")

        say("SIGKILL the coordinator; the sites carry on without it")
        coordinator.kill()
        paris = sites["paris"]
        subprocess.run(
            [str(BIN / "nova"), "vm", "create", "local-1", "--memory", "64",
             "--kernel", str(root / "vmlinuz"), "--start", "--socket", str(paris.socket("p2"))],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        say("  nova vm create local-1 on p2 while the coordinator is away: done by the site alone")
        seen = paris.status("p1")
        link = seen["site_link"]["last_error"] or "retrying"
        say(f"  p1 sees {seen['members']['alive']} members alive; its link: {link}")

        say("restart the coordinator: the sites reconnect and resume their streams")
        coordinator.start()
        wait_until(
            "the views to agree",
            lambda: all(
                coordinator_vms(api, name) == site_vms(site, site.nodes[-1])
                for name, site in sites.items()
            ),
            90,
        )
        for name in sites:
            view = sorted(coordinator_vms(api, name))
            say(f"  {name}: the coordinator's view equals the site's: {view}")
        show_sites(api)
        say("done")
    finally:
        for site in sites.values():
            site.stop()
        coordinator.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="novacron-federation-") as root:
        run(Path(root))


if __name__ == "__main__":
    main()
