"""Identity while the agents run: revocation spreads, certificates expire and renew,
and one identity cannot run twice.

Real agents on loopback (tests/hostile.py), driven as an operator would:
`nova ca publish`, `nova reload` (and SIGHUP), `nova status`, `nova members`.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import msgpack
import pytest

from novacron.protocol import keyfiles
from novacron.protocol.messages import Ping
from tests.hostile import AgentProcess, Mallory, Mesh, eventually, wait_until

pytestmark = pytest.mark.agents  # real agent processes on loopback


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def mallory(mesh: Mesh) -> AsyncIterator[Mallory]:
    mesh.start(3)
    async with Mallory(mesh) as mallory:
        await mallory.join(*mesh.agents.values())
        await eventually(
            lambda: all(a.state_of("mallory") == "alive" for a in mesh.agents.values()),
            20,
            "every agent lists mallory as a member",
        )
        yield mallory


async def test_a_revocation_published_on_one_host_expels_the_member_everywhere(
    mesh: Mesh, mallory: Mallory
) -> None:
    crl = mesh.ca.revoke(mallory.certificate.serial)
    data = base64.b64encode(keyfiles.read_revocation_list(crl)).decode()
    answer = mesh["n1"].post("/v1/revocations", {"crl": data})
    assert answer["adopted"] is True and answer["revoked_members"] == ["mallory"]

    for agent in mesh.agents.values():  # gossip carries it to the others
        await eventually(
            partial(_expelled, agent, "mallory"), 10, f"{agent.node_id} expels mallory"
        )
        assert agent.status()["revoked_members"] == ["mallory"]
        assert agent.members()["mallory"]["state"] == "left"
    refused = mesh["n2"].status()["transport"]["unauthorized"]
    await mallory.send(mesh["n2"], Ping(1, "n2"))  # a connection made before: refused now
    await eventually(
        lambda: mesh["n2"].status()["transport"]["unauthorized"] > refused,
        10,
        "n2 drops what mallory still sends",
    )
    await asyncio.to_thread(mesh.wait_converged)  # the honest members are untouched
    again = mesh["n3"].post("/v1/revocations", {"crl": data})
    assert again["adopted"] is False  # not newer: nothing to spread


def _expelled(agent: AgentProcess, node_id: str) -> bool:
    return bool(agent.members()[node_id]["note"] == "revoked")


def test_an_agent_warns_before_its_certificate_expires_and_stops_cleanly_at_expiry(
    mesh: Mesh,
) -> None:
    mesh.ca.issue("n1", valid_for=20)  # expires 20 s from now
    agent = mesh.start_agent("n1", certify=False)
    status = agent.status()["certificate"]
    assert status["expiring"] is True and 0 < status["expires_in_s"] <= 20
    code = agent.proc.wait(timeout=60)
    log = agent.log()
    assert code == 1, log
    assert "certificate expires in" in log  # the warning came first
    assert "certificate expired at" in log and "--renew" in log
    assert "Traceback" not in log


async def test_a_renewed_certificate_is_reloaded_and_members_keep_admitting_the_node(
    mesh: Mesh,
) -> None:
    key, old = mesh.ca.issue("n1", valid_for=25)  # would expire during the test
    n1 = mesh.start_agent("n1", certify=False)
    n2 = mesh.start_agent("n2")
    mesh.wait_converged()
    _, renewed = mesh.ca.issue("n1", valid_for=3600, key=key)  # nova ca issue n1 --renew
    n1.proc.send_signal(signal.SIGHUP)  # systemctl reload novacron-agent
    wait_until(
        lambda: n1.status()["certificate"]["serial"] == renewed.serial,
        10,
        "n1 runs with the renewed certificate",
    )
    assert old.not_after - time.time() < 25
    time.sleep(max(0.0, old.not_after - time.time()) + 5)  # past the old certificate's end
    assert n1.running(), n1.log()
    assert n2.state_of("n1") == "alive" and n1.state_of("n2") == "alive"
    assert n2.status()["transport"]["unauthorized"] == 0
    assert n1.post("/v1/reload", {})["serial"] == renewed.serial  # nova reload: the same


def test_a_reload_with_another_key_is_refused_and_changes_nothing(mesh: Mesh) -> None:
    n1 = mesh.start_agent("n1")
    serial = n1.status()["certificate"]["serial"]
    mesh.ca.issue("n1")  # a new key pair: a new identity, not a renewal
    with pytest.raises(Exception, match="the keys changed"):
        n1.post("/v1/reload", {})
    assert n1.status()["certificate"]["serial"] == serial and n1.running()


@pytest.mark.parametrize("seed", ["n1", "n2"], ids=["seeded-by-itself", "seeded-by-a-peer"])
def test_a_second_agent_with_the_same_identity_refuses_to_run(mesh: Mesh, seed: str) -> None:
    n1 = mesh.start_agent("n1")
    mesh.start_agent("n2")
    mesh.wait_converged()
    clone = mesh.start_agent("n1", certify=False, name="n1-clone", wait=False, seed=seed)
    try:
        code = clone.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the clone kept running:\n{clone.log()}")
    assert code == 1
    log = clone.log()
    assert "another agent already runs as node n1" in log and "Traceback" not in log
    assert n1.running() and mesh["n2"].state_of("n1") == "alive"
    if seed == "n2":  # it looked for the n1 that n2 knows, and introduced itself to it
        wait_until(lambda: "n1" in n1.status()["identity_clashes"], 10, "n1 reports the clash")
        reported = n1.status()["identity_clashes"]["n1"]
        assert reported[0] == n1.address and "127.0.0.1" in reported[1]


@pytest.mark.parametrize("moved", [False, True], ids=["same-address", "new-address"])
def test_an_ordinary_restart_is_not_reported_as_an_attack(mesh: Mesh, moved: bool) -> None:
    mesh.start(3)
    n2 = mesh["n2"]
    n2.proc.send_signal(signal.SIGTERM)
    assert n2.proc.wait(timeout=20) == 0
    port = None if moved else n2.port  # a new port stands for a new DHCP lease
    mesh.start_agent("n2", certify=False, port=port, seed="n1")
    mesh.wait_converged()
    time.sleep(3)  # the others' connections to the old n2 retry meanwhile
    for agent in mesh.agents.values():
        if not agent.running():
            continue
        warnings = [
            line
            for line in agent.log().splitlines()
            if "level=warning" in line and "peer refused" in line
        ]
        assert warnings == [], agent.node_id
        assert agent.status()["last_refusal"] is None, agent.node_id


def test_an_agent_killed_just_after_meeting_its_peers_knows_them_when_it_comes_back(
    mesh: Mesh,
) -> None:
    """Killed seconds after it met the mesh (no clean close, long before any periodic
    save), it still holds their certificates when it comes back: it refuses none of
    their reconnections, which libzmq may never retry once refused."""
    mesh.start(3)
    n1 = mesh["n1"]
    time.sleep(2)  # well under a minute after the meeting
    n1.proc.kill()
    n1.proc.wait(timeout=10)
    # No seeds, as the mesh's first agent: it meets the others only when they call.
    mesh.start_agent("n1", certify=False, port=n1.port, seed="")
    mesh.wait_converged()
    restarted = mesh["n1"]
    assert restarted.status()["transport"]["refused_connections"] == 0
    assert "peer refused" not in restarted.log()  # either life


def test_an_agent_alone_rejoins_through_its_kept_members_whatever_else_the_file_holds(
    mesh: Mesh,
) -> None:
    """No seeds, no mDNS: the members' addresses kept from a previous life bring it in;
    entries that are no address (a host the resolver chokes on) are passed over."""
    mesh.start(1)
    data = mesh.root / "n2" / "data"
    data.mkdir(parents=True)
    kept = ["a..b:7946", "under_score:1", "198.18.0.99", mesh["n1"].address]
    (data / "last-members").write_bytes(msgpack.packb(kept))
    n2 = mesh.start_agent("n2", seed="")
    mesh.wait_converged()
    assert n2.running() and "Traceback" not in n2.log()
