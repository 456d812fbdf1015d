"""End to end: real `nova-agent` processes in lab hosts (namespaces, own libvirtd).

Needs root (namespaces); CI runs as root. One 5-host lab serves the module;
each test leaves the mesh healthy for the next. Waits poll the agents'
answers with generous limits; timings are measured by benchmarks, not here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.lab import Lab
from novacron.simulations.lab.agents import LabAgents, wait_for
from novacron.simulations.lab.host import LabHost

pytestmark = pytest.mark.lab

HOSTS = 5
VM_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, LabAgents]]:
    lab = Lab(f"e2e{os.getpid() % 100000}", HOSTS)
    with lab:
        agents = LabAgents(lab)
        agents.start_all()
        try:
            agents.wait_for_full_mesh(timeout=60)
            yield lab, agents
        finally:
            agents.stop_all()


def _everyone_sees(agents: LabAgents, observers: list[LabHost], node: str, state: str) -> None:
    for host in observers:
        wait_for(partial(_state_of, agents, host, node), lambda s: s == state, timeout=60)


def _state_of(agents: LabAgents, host: LabHost, node: str) -> str | None:
    return agents.states(host).get(node)


def _row_of(agents: LabAgents, host: LabHost, node: str) -> dict[str, Any]:
    return agents.members(host).get(node, {})


def _vms_of(agents: LabAgents, host: LabHost) -> list[dict[str, Any]]:
    vms: list[dict[str, Any]] = agents.nova(host, "vm", "list").get("vms", [])
    return vms


def _failed_events(agents: LabAgents, host: LabHost) -> list[dict[str, Any]]:
    """MemberFailed events in `host`'s recent history: who was failed, and by whom."""
    status = agents.nova(host, "status").get("status", {})
    return [e for e in status.get("recent_events", []) if e["event"] == "MemberFailed"]


def test_five_hosts_find_each_other_by_mdns_and_agree(mesh: tuple[Lab, LabAgents]) -> None:
    lab, agents = mesh
    views = [agents.nova(host, "members") for host in lab.hosts]
    for view in views:
        assert view["ok"] is True
        rows = {m["node_id"]: m for m in view["members"]}
        assert set(rows) == {h.name for h in lab.hosts}
        assert {m["state"] for m in rows.values()} == {"alive"}
        assert {m["address"] for m in rows.values()} == {f"{h.address}:7946" for h in lab.hosts}


def test_vm_started_on_one_host_appears_in_every_vm_list(mesh: tuple[Lab, LabAgents]) -> None:
    lab, agents = mesh
    owner = lab.hosts[1]
    xml = agents.host_dir(owner) / "e2e-vm.xml"
    xml.write_text(VM_XML.format(name="e2e-vm"))
    virsh = ["virsh", "-c", "qemu:///system"]
    owner.run([*virsh, "define", str(xml)], check=True, capture_output=True)
    owner.run([*virsh, "start", "e2e-vm"], check=True, capture_output=True)
    try:
        for host in lab.hosts:
            rows = wait_for(
                partial(_vms_of, agents, host),
                lambda vms: any(v["name"] == "e2e-vm" and v["state"] == "running" for v in vms),
                timeout=30,
            )
            vm = next(v for v in rows if v["name"] == "e2e-vm")
            assert vm["host"] == owner.name
    finally:
        owner.run([*virsh, "destroy", "e2e-vm"], capture_output=True)
        owner.run([*virsh, "undefine", "e2e-vm"], capture_output=True)


def test_killed_agent_is_failed_then_rejoins_with_higher_incarnation(
    mesh: tuple[Lab, LabAgents],
) -> None:
    lab, agents = mesh
    victim, others = lab.hosts[-1], lab.hosts[:-1]
    before = agents.members(others[0])[victim.name]["incarnation"]
    agents.kill(victim, signal.SIGKILL)
    _everyone_sees(agents, others, victim.name, "dead")
    agents.start(victim)
    for host in lab.hosts:
        row = wait_for(
            partial(_row_of, agents, host, victim.name),
            lambda r: r.get("state") == "alive" and r.get("incarnation", 0) > before,
            timeout=60,
        )
        assert row["incarnation"] > before


def test_agent_restarted_at_once_is_back_in_the_mesh(mesh: tuple[Lab, LabAgents]) -> None:
    """Restarted before anyone noticed: it still knows its peers' certificates and
    addresses (kept in its data directory), so their connections to it are not refused,
    and the mesh is whole and usable both ways again."""
    lab, agents = mesh
    victim = lab.hosts[0]
    agents.kill(victim, signal.SIGKILL)
    agents.start(victim)
    agents.wait_for_full_mesh(timeout=60)
    for host in lab.hosts:
        assert agents.states(host) == {h.name: "alive" for h in lab.hosts}
    # Back in the mesh means usable: the survivors' connections to its previous life
    # must carry their answers to the new one, or a migration it proposes goes unanswered.
    _requests_answered_both_ways(agents, victim, [h for h in lab.hosts if h is not victim])


def test_cut_link_fails_the_host_then_heals_without_operator(mesh: tuple[Lab, LabAgents]) -> None:
    lab, agents = mesh
    cut, others = lab.hosts[3], [h for h in lab.hosts if h is not lab.hosts[3]]
    failed_before = {h.name: _failed_events(agents, h) for h in others}
    cut_at = time.monotonic()
    cut.link_down()
    try:
        _everyone_sees(agents, others, cut.name, "dead")
        time.sleep(max(0.0, 60 - (time.monotonic() - cut_at)))  # TCP backs off to 51 s
    finally:
        cut.link_up()
    agents.wait_for_full_mesh(timeout=120)
    for host in others:  # nobody but the cut host was ever declared failed
        new = _failed_events(agents, host)[len(failed_before[host.name]) :]
        assert {e["node_id"] for e in new} <= {cut.name}, f"{host.name} failed {new}"
    # Healed means usable: once everyone sees everyone alive, a request over the mesh to
    # or from the cut host is answered at the first try, as a migration proposal must be
    # (the connections must not still sit in TCP's retransmission back-off).
    _requests_answered_both_ways(agents, cut, others)


def _requests_answered_both_ways(agents: LabAgents, host: LabHost, others: list[LabHost]) -> None:
    """A request over the mesh from `host` to each of `others`, and back, is answered at
    the first try (`nova host undrain` asks the named host and waits for its answer)."""
    operator = str(agents.operator())
    for asker, asked in [*((h, host) for h in others), *((host, h) for h in others)]:
        answer = agents.nova(asker, "host", "undrain", asked.name, "--operator", operator)
        assert answer["ok"] is True, f"{asker.name} asked {asked.name}: {answer}"


def test_agent_with_another_cas_certificate_never_becomes_member(
    mesh: tuple[Lab, LabAgents],
) -> None:
    lab, agents = mesh
    rogue, others = lab.hosts[2], [h for h in lab.hosts if h is not lab.hosts[2]]
    agents.kill(rogue, signal.SIGTERM)
    _everyone_sees(agents, others, rogue.name, "left")
    agents.create_ca("rogue-ca")
    agents.issue(rogue, ca="rogue-ca")
    agents.start(rogue, ca="rogue-ca")
    try:
        time.sleep(10)  # mDNS finds it at once; give it every chance to get in
        for host in others:
            assert agents.states(host)[rogue.name] == "left"
            assert "another CA" in agents.log(host), f"{host.name}'s log does not say why"
    finally:
        agents.kill(rogue, signal.SIGTERM)
        agents.issue(rogue)
        agents.start(rogue)
    agents.wait_for_full_mesh(timeout=60)


def test_a_second_agent_with_a_members_identity_refuses_to_run(
    mesh: tuple[Lab, LabAgents],
) -> None:
    """A host given another's certificate and key (a copied disk image, a wrong file)
    finds it over mDNS and refuses to run, in one line, while the owner stays a member."""
    lab, agents = mesh
    owner, spare = lab.hosts[0], lab.hosts[4]
    agents.kill(spare, signal.SIGTERM)
    _everyone_sees(agents, lab.hosts[:4], spare.name, "left")
    try:
        twin = _with_identity_of(agents.command(spare), agents.host_dir(owner), owner.name)
        done = spare.run(twin, capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "Traceback" not in output, output
        error = [line for line in output.splitlines() if "error" in line]
        assert error and owner.name in error[-1], output
        for host in lab.hosts[:4]:
            assert agents.states(host)[owner.name] == "alive"
    finally:
        agents.start(spare)
    agents.wait_for_full_mesh(timeout=60)


def _with_identity_of(command: list[str], owner_dir: Path, owner: str) -> list[str]:
    """`command` with `owner`'s certificate and key, and a data directory of its own."""
    swapped = {
        "--cert-file": str(owner_dir / f"{owner}.crt"),
        "--key-file": str(owner_dir / f"{owner}.key"),
        "--data-dir": str(owner_dir.parent / f"twin-of-{owner}"),
    }
    after = zip(["", *command[:-1]], command, strict=True)  # (the flag before, the argument)
    return [swapped.get(flag, arg) for flag, arg in after]


BROWSE = """
import sys, time
from zeroconf import ServiceBrowser, Zeroconf
names = set()
class Listener:
    def add_service(self, zc, type_, name): names.add(name)
    def update_service(self, zc, type_, name): pass
    def remove_service(self, zc, type_, name): pass
zc = Zeroconf(interfaces=[sys.argv[1]])
ServiceBrowser(zc, "_novacron._tcp.local.", Listener())
deadline = time.time() + 20
while time.time() < deadline and len(names) < int(sys.argv[2]):
    time.sleep(0.2)
for name in sorted(names):
    info = zc.get_service_info("_novacron._tcp.local.", name, timeout=3000)
    props = {k.decode(): (v or b"").decode() for k, v in (info.properties if info else {}).items()}
    print(name, info.port if info else None, props.get("id"))
zc.close()
"""


def test_python_zeroconf_browser_finds_every_agent(mesh: tuple[Lab, LabAgents]) -> None:
    """The adverts are valid mDNS: python-zeroconf's own browser, in its own process, reads them."""
    lab, _ = mesh
    browser_host = lab.hosts[0]
    done = browser_host.run(
        [sys.executable, "-c", BROWSE, browser_host.address, str(HOSTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = {line.split()[2]: int(line.split()[1]) for line in done.stdout.splitlines()}
    assert found == {h.name: 7946 for h in lab.hosts}
