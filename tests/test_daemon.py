"""`nova-agent` as a process: refuses to start on bad identity or a taken port,
tells systemd it is ready, serves `nova` on a root-only socket, leaves on SIGTERM.

Runs on loopback with libvirt's test driver; the lab tests cover real hosts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.agent.cli import main as nova
from tests.agent_process import (
    BIN,
    agent_args,
    free_port_pair,
    make_ca,
    notifications,
    running_agent,
)

pytestmark = pytest.mark.agents  # real agent processes on loopback


@pytest.mark.parametrize("bad", ["-1", "nan", "0.01", "1e9"])
def test_a_peer_heartbeat_out_of_range_is_refused_by_name(ca: Path, bad: str) -> None:
    error = _start_refused([*agent_args(ca, free_port_pair()), "--peer-heartbeat", bad])
    assert "peer_heartbeat" in error and "0 (off)" in error


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return make_ca(tmp_path)


def _start_refused(args: list[str]) -> str:
    (Path(args[args.index("--config") + 1])).write_text("")
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    return done.stderr


def test_missing_certificate_is_named(ca: Path) -> None:
    (ca / "n1.crt").unlink()
    error = _start_refused(agent_args(ca, free_port_pair()))
    assert "nova-agent: error:" in error and "n1.crt" in error


def test_certificate_of_another_ca_is_refused(ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert nova(["ca", "init", "--dir", str(other / "ca")]) == 0
    assert nova(["ca", "issue", "n1", "--dir", str(other / "ca"), "--out", str(ca), "--force"]) == 0
    error = _start_refused(agent_args(ca, free_port_pair()))
    assert "another CA" in error or "not by this cluster's CA" in error


def test_key_that_does_not_match_the_certificate_is_refused(ca: Path) -> None:
    assert nova(["ca", "issue", "n2", "--dir", str(ca / "ca"), "--out", str(ca)]) == 0
    (ca / "n2.key").rename(ca / "n1.key")
    error = _start_refused(agent_args(ca, free_port_pair()))
    assert "does not belong to certificate" in error


def test_loose_key_permissions_are_refused(ca: Path) -> None:
    os.chmod(ca / "n1.key", 0o644)
    error = _start_refused(agent_args(ca, free_port_pair()))
    assert "chmod 600" in error


def test_port_in_use_is_named(ca: Path) -> None:
    port = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        error = _start_refused(agent_args(ca, port))
    assert f"127.0.0.1:{port}" in error and "in use" in error


@pytest.fixture
def running(ca: Path) -> Iterator[tuple[subprocess.Popen[str], socket.socket, Path]]:
    with running_agent(ca) as agent:
        yield agent


def test_agent_tells_systemd_it_is_ready_and_serves_nova(
    running: tuple[subprocess.Popen[str], socket.socket, Path],
) -> None:
    proc, notify, tmp = running
    assert "READY=1" in notifications(notify, "READY=1")
    sock = tmp / "agent.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # root-only control socket
    out = subprocess.run(
        [str(BIN / "nova"), "--json", "status", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    status = json.loads(out.stdout)["status"]
    assert status["node_id"] == "n1"
    assert status["members"]["alive"] == 1
    shown = subprocess.run(
        [str(BIN / "nova"), "--json", "vm", "show", "test", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    vm = json.loads(shown.stdout)["vm"]  # libvirt's test driver runs a VM named "test"
    assert [(row["host"], row["state"]) for row in vm] == [("n1", "running")]
    missing = subprocess.run(
        [str(BIN / "nova"), "vm", "show", "nope", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "no VM named 'nope'" in missing.stderr
    proc.send_signal(signal.SIGTERM)
    assert any("STOPPING=1" in line for line in notifications(notify, "STOPPING=1"))
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()


def test_nova_says_when_the_agent_is_not_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "nova"), "members", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3
    assert "the agent is not running" in done.stderr


def seeded_pair(ca: Path) -> tuple[list[str], list[str]]:
    """Command lines of n1 and of n2, whose one seed is n1 (no mDNS), in `ca`'s directory."""
    assert nova(["ca", "issue", "n2", "--dir", str(ca / "ca"), "--out", str(ca)]) == 0
    first, second = free_port_pair(), free_port_pair()
    (ca / "absent.toml").write_text("")
    one = agent_args(ca, first)
    two = agent_args(ca, second, node="n2")
    two[two.index("--api-socket") + 1] = str(ca / "agent2.sock")
    two[two.index("--data-dir") + 1] = str(ca / "data2")
    two += ["--seeds", f"127.0.0.1:{first}"]
    return one, two


def members_of(socket: Path) -> dict[str, str]:
    """node id -> state, as `nova members` on the agent at `socket` lists them ({} if none)."""
    out = subprocess.run(
        [str(BIN / "nova"), "--json", "members", "--socket", str(socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        rows = json.loads(out.stdout).get("members", [])
    except json.JSONDecodeError:
        return {}
    return {m["node_id"]: m["state"] for m in rows}


def test_an_agent_started_before_its_seed_meets_it_soon_after_the_seed_starts(ca: Path) -> None:
    """A site powering up: n2 starts first and cannot reach its seed n1; n1 starts a
    moment later. n2 knocks again within seconds, not at its steady interval (10 s)."""
    one, two = seeded_pair(ca)
    log = (ca / "n2.log").open("wb")
    procs = [subprocess.Popen(two, stderr=log)]
    try:
        deadline = time.monotonic() + 30
        while b"introduction failed" not in (ca / "n2.log").read_bytes():
            assert time.monotonic() < deadline, "n2 never tried its seed"
            time.sleep(0.1)
        failed_at = time.monotonic()
        procs.append(subprocess.Popen(one, stderr=subprocess.DEVNULL))
        while members_of(ca / "agent2.sock").get("n1") != "alive":
            assert time.monotonic() < deadline + 30, "n2 never met n1"
            time.sleep(0.2)
        met_after = time.monotonic() - failed_at
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
    print(f"n2 met n1 {met_after:.1f} s after its first try failed")
    # Its tries: 1, 3 and 7 s after the first; the steady interval would be at 10.
    assert met_after < 9, f"n2 met n1 only {met_after:.1f} s after its first try failed"


def test_two_agents_meet_through_a_static_seed_without_mdns(ca: Path) -> None:
    """Where multicast does not pass: --seeds alone builds the mesh."""
    one, two = seeded_pair(ca)
    procs = [subprocess.Popen(args, stderr=subprocess.DEVNULL) for args in (one, two)]
    try:
        for sock in ("agent.sock", "agent2.sock"):
            for _ in range(60):
                states = members_of(ca / sock)
                if states == {"n1": "alive", "n2": "alive"}:
                    break
                time.sleep(0.5)
            assert states == {"n1": "alive", "n2": "alive"}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
