"""The lab on real namespaces: network, multicast, libvirtd per host, clean teardown.

These tests create real network namespaces, veths, mounts and daemons, so they
need root. They fail (never skip) without it: a CI run that silently skipped
them would claim the lab works when nothing checked it. Lab names embed this
process's PID so parallel or leftover runs never collide.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.simulations.lab import (
    DEFAULT_STATE_ROOT,
    Lab,
    LabError,
    LabHost,
    host_init,
    preflight,
    processes,
    tear_down,
)
from novacron.simulations.lab.agents import wait_for
from novacron.simulations.lab.cli import main
from novacron.simulations.lab.naming import owns_netns, validate_lab_name
from novacron.simulations.lab.netns import list_netns, netns_pids
from novacron.simulations.lab.processes import MARKER_VAR, is_running
from novacron.simulations.lab.state import HostRecord

pytestmark = pytest.mark.lab

RUN = f"t{os.getpid()}"
LAB_CLI = [sys.executable, "-m", "novacron.simulations.lab"]

RECEIVER = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("224.0.0.251", 5353))
group = socket.inet_aton("224.0.0.251") + socket.inet_aton(sys.argv[1])
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
s.settimeout(10)
print("ready", flush=True)
data, sender = s.recvfrom(1500)
print(data.decode(), sender[0], flush=True)
"""

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(sys.argv[1].encode(), ("224.0.0.251", 5353))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One three-host lab with libvirtd, shared by the read-mostly tests."""
    lab = Lab(f"{RUN}m", hosts=3).up()
    try:
        yield lab
    finally:
        lab.down()


def lab_leftovers(name: str) -> tuple[list[str], bool]:
    """Namespaces still named for lab `name`, and whether its state dir remains."""
    namespaces = [ns for ns in list_netns() if owns_netns(name, ns)]
    return namespaces, (DEFAULT_STATE_ROOT / name).exists()


def all_pids(names: list[str]) -> set[int]:
    return {pid for ns in names for pid in netns_pids(ns)}


def assert_gone(name: str, pids: set[int]) -> None:
    assert lab_leftovers(name) == ([], False)
    assert pids, "the test should have seen some processes"
    assert [pid for pid in pids if processes.is_running(pid)] == []


def ping(source: LabHost, address: str) -> int:
    return source.run(["ping", "-c1", "-W2", address], capture_output=True).returncode


def host_uuid_seen_from(client: LabHost, target: LabHost) -> str:
    """The <host><uuid> in target's capabilities, fetched over TCP from client."""
    result = client.run(
        ["virsh", "-c", target.libvirt_uri, "capabilities"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    match = re.search(r"<host>\s*<uuid>([0-9a-f-]+)</uuid>", result.stdout)
    assert match, result.stdout[:500]
    return match.group(1)


# -- the running lab --------------------------------------------------------


def test_hosts_have_lab_addresses_and_own_hostnames(lab: Lab) -> None:
    assert [h.name for h in lab.hosts] == ["h1", "h2", "h3"]
    assert [h.address for h in lab.hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    names = [h.run(["hostname"], capture_output=True, text=True).stdout.strip() for h in lab.hosts]
    assert names == ["h1", "h2", "h3"]
    assert lab.hosts[0].libvirt_uri == "qemu+tcp://198.18.0.1/system"


def test_hosts_ping_each_other_over_the_bridge(lab: Lab) -> None:
    for source in lab.hosts:
        for target in lab.hosts:
            if source is not target:
                assert ping(source, target.address) == 0, f"{source.name} -> {target.name}"


def test_host_names_resolve_inside_the_lab(lab: Lab) -> None:
    result = lab.hosts[0].run(["getent", "hosts", "h3"], capture_output=True, text=True)
    assert result.stdout.split()[0] == "198.18.0.3"


def test_addresses_outside_the_lab_are_unreachable(lab: Lab) -> None:
    # A route lookup only: nothing is sent.
    result = lab.hosts[0].run(["ip", "route", "get", "192.0.2.1"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "unreachable" in result.stderr.lower()


def test_multicast_datagram_reaches_every_other_host(lab: Lab) -> None:
    sender, *receivers = lab.hosts
    procs = [
        r.popen([sys.executable, "-c", RECEIVER, r.address], stdout=subprocess.PIPE, text=True)
        for r in receivers
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        sender.run([sys.executable, "-c", SENDER, "hello-mdns"], check=True)
        outputs = [proc.communicate(timeout=15)[0].split() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert outputs == [["hello-mdns", sender.address]] * len(receivers)


def test_each_libvirtd_answers_over_tcp_with_its_own_host_uuid(lab: Lab) -> None:
    seen = {}
    for i, target in enumerate(lab.hosts):
        client = lab.hosts[(i + 1) % len(lab.hosts)]
        seen[target.name] = host_uuid_seen_from(client, target)
    assert seen == {h.name: h.host_uuid for h in lab.hosts}
    assert len(set(seen.values())) == len(lab.hosts)


def test_link_down_cuts_a_host_off_and_link_up_restores_it(lab: Lab) -> None:
    h1, _, h3 = lab.hosts
    h3.link_down()
    try:
        assert h3.link_state() == "down"
        assert ping(h1, h3.address) != 0
    finally:
        h3.link_up()
    assert h3.link_state() == "up"
    # The neighbour entry that failed while the link was down is retried, not instant.
    wait_for(lambda: ping(h1, h3.address), lambda code: code == 0, timeout=15)


def test_status_json_lists_running_hosts(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--name", lab.name, "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)["labs"]
    assert status["phase"] == "up"
    assert [(h["name"], h["running"], h["link"], h["libvirtd"]) for h in status["hosts"]] == [
        ("h1", True, "up", True),
        ("h2", True, "up", True),
        ("h3", True, "up", True),
    ]


def test_cli_exec_runs_inside_the_host(lab: Lab) -> None:
    argv = [*LAB_CLI, "exec", "h2", "--name", lab.name, "--", "sh", "-c", "hostname; exit 3"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (3, "h2\n")


def test_a_lab_name_in_use_is_refused_and_left_alone(lab: Lab) -> None:
    with pytest.raises(LabError, match="in use"):
        Lab(lab.name, hosts=1).up()
    assert ping(lab.hosts[0], lab.hosts[1].address) == 0


# -- teardown ---------------------------------------------------------------


def test_the_teardown_says_what_it_stops(tmp_path: Path) -> None:
    """The seconds a lab takes to go (the demo's last) are narrated: which processes,
    how many."""
    lab = f"{RUN}t"
    marked = {**os.environ, MARKER_VAR: lab}
    sleeper = subprocess.Popen(["sleep", "600"], env=marked)
    lines: list[str] = []
    try:
        report = tear_down(lab, tmp_path, lines.append)
        assert report.killed == [sleeper.pid] and not is_running(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    assert lines == ["stopping 1 process (1 sleep)"]


def test_down_removes_namespaces_processes_and_state() -> None:
    lab = Lab(f"{RUN}d", hosts=2).up()
    names = [ns for ns in list_netns() if owns_netns(lab.name, ns)]
    assert len(names) == 3
    pids = all_pids(names)
    assert {h.init_pid for h in lab.hosts} <= pids
    assert len(pids) >= 6  # per host: init, virtlogd, libvirtd
    lab.down()
    assert_gone(lab.name, pids)


def started_hosts(state_file: Path) -> int:
    """How many hosts state.json says have an init process (0 if unreadable)."""
    try:
        hosts = json.loads(state_file.read_text())["hosts"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for h in hosts if h["init_pid"] is not None)


def test_down_after_the_lab_process_was_killed_mid_up() -> None:
    name = f"{RUN}c"
    state_file = DEFAULT_STATE_ROOT / name / "state.json"
    up = subprocess.Popen(
        [*LAB_CLI, "up", "--hosts", "2", "--name", name], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while started_hosts(state_file) == 0:
            assert time.monotonic() < deadline, "up never started a host"
            time.sleep(0.01)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    names, has_state = lab_leftovers(name)
    assert len(names) == 3 and has_state
    pids = all_pids(names)
    assert main(["down", "--name", name]) == 0
    assert_gone(name, pids)


def test_down_without_state_json_finds_the_lab_by_its_names() -> None:
    lab = Lab(f"{RUN}s", hosts=2, libvirt=False).up()
    names, _ = lab_leftovers(lab.name)
    pids = all_pids(names)
    (lab.state_dir / "state.json").unlink()
    report = tear_down(lab.name, DEFAULT_STATE_ROOT)
    assert sorted(report.namespaces) == sorted(names)
    assert_gone(lab.name, pids)
    lab.down()  # reaps the init processes it started; finds nothing left to remove


def test_libvirtd_that_fails_to_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    original = host_init.libvirtd_conf

    def broken(host: HostRecord) -> dict[str, str | int]:
        return {**original(host), "listen_tcp": "yes"}  # libvirtd wants an integer

    monkeypatch.setattr(host_init, "libvirtd_conf", broken)
    lab = Lab(f"{RUN}f", hosts=1)
    with pytest.raises(LabError, match=r"h1 failed to start[\s\S]*listen_tcp"):
        lab.up()
    assert lab_leftovers(lab.name) == ([], False)


# -- checks before touching the system -------------------------------------


def test_not_root_is_a_clear_error() -> None:
    with pytest.raises(LabError, match="needs root"):
        preflight.require_root(euid=1000)


def test_missing_binaries_name_their_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(LabError) as caught:
        preflight.require_binaries(libvirt=True)
    message = str(caught.value)
    for text in ("libvirtd (Debian package libvirt-daemon)", "ip (Debian package iproute2)"):
        assert text in message
    assert "install-system-deps.sh" in message


def test_lab_names_are_validated_and_never_claim_another_labs_namespaces() -> None:
    with pytest.raises(LabError):
        validate_lab_name("Bad/Name")
    assert owns_netns("a", "nclab-a-h1") and owns_netns("a", "nclab-a-sw")
    assert not owns_netns("a", "nclab-a-b-h1")
    assert not owns_netns("a", "nclab-ab-h1")
