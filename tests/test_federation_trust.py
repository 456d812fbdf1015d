"""A member that wins its site's gateway election is a relay, not the coordinator.

Real processes on loopback: a coordinator over TLS and one site, rome, whose
agents are r1 (honest) and a0, a certified member running a hostile build
(tests/rogue_gateway.py). a0's id sorts first, so it is the site's gateway
and holds the real site link. It relays commands it made up (drain r1,
delete r1's VM, create a VM on r1) and alters every genuine command it
carries (re-pinned to r1, the VM renamed). r1 runs none of them: each lacks
the coordinator's signature for r1, and it says so.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.federation import (
    BIN,
    Api,
    CoordinatorProcess,
    Site,
    tls_files,
    wait_until,
)

pytestmark = pytest.mark.agents  # real agent processes on loopback

ROGUE = Path(__file__).with_name("rogue_gateway.py")


@dataclass
class Rome:
    root: Path
    site: Site
    api: Api

    @property
    def go(self) -> Path:
        return self.root / "rogue-go"

    @property
    def out(self) -> Path:
        return self.root / "rogue-out.jsonl"

    def r1(self, *args: str) -> Any:
        """`nova --json ARGS` against r1's own agent."""
        done = subprocess.run(
            [str(BIN / "nova"), "--json", *args, "--socket", str(self.site.socket("r1"))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def vms_on_r1(self) -> set[str]:
        return {vm["name"] for vm in self.r1("vm", "list")["vms"]}


@pytest.fixture(scope="module")
def rome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rome]:
    root = tmp_path_factory.mktemp("trust")
    tls = tls_files(root / "tls")
    coordinator = CoordinatorProcess(root / "coordinator", tls)
    coordinator.directory.mkdir()
    token = coordinator.admin("site", "add", "rome", "--label", "region=eu-south")
    admin = coordinator.admin("token", "create", "ops", "--role", "admin")["secret"]
    coordinator.start()
    rome = Rome(
        root, Site(root / "rome", "rome", ("a0", "r1")), Api(coordinator.url, admin, tls[0])
    )
    try:
        assert rome.site.enroll(coordinator, token["enrollment_token"])[0] == 0
        rome.site.start("r1", (coordinator.url,), tls[0])
        attack = {"ROGUE_VICTIM": "r1", "ROGUE_OUT": str(rome.out), "ROGUE_GO": str(rome.go)}
        rogue = (str(BIN / "python"), str(ROGUE))
        rome.site.start("a0", (coordinator.url,), tls[0], program=rogue, env=attack)
        wait_until("a0 holding rome's link", lambda: _linked_through_a0(rome))
        wait_until(
            "r1 seeing a0 as rome's gateway",
            lambda: (rome.site.status("r1").get("site_link") or {}).get("gateway") == "a0",
        )
        yield rome
    finally:
        rome.site.stop()
        coordinator.stop()


def _linked_through_a0(rome: Rome) -> bool:
    site = rome.api.get("/v1/sites/rome")
    return bool(site["connected"]) and site["gateway"] == "a0"


def test_commands_the_gateway_made_up_are_refused_by_the_host_they_target(rome: Rome) -> None:
    assert "test" in rome.vms_on_r1()  # libvirt's test driver's own VM, to be deleted
    rome.go.touch()
    lines = wait_until(
        "the rogue's three outcomes",
        lambda: (
            len(text := rome.out.read_text().splitlines() if rome.out.exists() else []) == 3
            and text
        ),
    )
    outcomes = {o["key"]: o for o in map(json.loads, lines)}
    for key in ("rogue-drain", "rogue-delete", "rogue-create"):
        outcome = outcomes[key]
        assert (outcome["ok"], outcome["status"], outcome["host"]) == (False, 403, "r1"), outcome
        assert "not signed by the coordinator" in outcome["detail"], outcome
    assert rome.vms_on_r1() >= {"test"} and "planted" not in rome.vms_on_r1()
    assert not (rome.site.directory / "data-r1" / "draining").exists()  # r1's drain mark
    assert rome.site.status("r1")["site_commands_refused"] >= 3


def test_a_genuine_command_the_gateway_alters_is_refused_and_the_operation_says_why(
    rome: Rome,
) -> None:
    (rome.root / "vmlinuz").write_bytes(b"kernel")
    body = {
        "name": "web-r",
        "vcpus": 1,
        "memory_mib": 64,
        "kernel": str(rome.root / "vmlinuz"),
        "constraints": {"labels": {"region": "eu-south"}},
    }
    status, op, _ = rome.api.call("POST", "/v1/vms", body)
    assert status == 202 and op["site"] == "rome", op
    done = rome.api.wait_operation(op["id"])
    assert done["status"] == "failed" and "refused" in done["detail"], done
    assert not {"web-r", "altered"} & rome.vms_on_r1()
