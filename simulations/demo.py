"""`make demo`: a small mesh of real agents on this machine, narrated.

Brings up 3 lab hosts (network namespaces, each with its own libvirtd and a
`nova-agent`), shows membership converging by mDNS, kills one agent with
SIGKILL, shows the others detect the failure, restarts it, shows it rejoin
with a higher incarnation; then boots a test guest on h1 and migrates it live
to h2 with `nova vm migrate --wait`, showing its heartbeat carrying on; and
removes everything it made, even on Ctrl-C.
Run as root: `python -m novacron.simulations.demo [--hosts N]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from novacron.agent.vmspec import VmSpec, domain_xml
from novacron.simulations import guest as guest_files
from novacron.simulations.lab import Lab
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for
from novacron.simulations.lab.host import LabHost

VM = "demo-vm"
CONSOLE = Path("/var/log/libvirt/qemu") / f"{VM}.console.log"  # per host (private mount)

_START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {text}", flush=True)


def show_members(agents: LabAgents, host: LabHost) -> None:
    rows = agents.members(host)
    say(f"`nova members` on {host.name}:")
    for node, row in sorted(rows.items()):
        line = f"{node:4} {row['address']:18} {row['state']:7} incarnation {row['incarnation']}"
        print(" " * 11 + line)


def states(agents: LabAgents, host: LabHost, node: str) -> str | None:
    return agents.states(host).get(node)


def _reached(want: str, state: str | None) -> bool:
    # A failure can be declared before we look at the suspicion: dead counts too.
    return state in (want, "dead")


def run(hosts: int) -> None:
    with Lab(f"demo{os.getpid() % 100000}", hosts, progress=lambda line: say(line.strip())) as lab:
        agents = LabAgents(lab)
        say(f"starting {hosts} agents (certificates from a fresh cluster CA, no seeds: mDNS only)")
        agents.start_all()
        try:
            agents.wait_for_full_mesh(timeout=60)
            say("every agent sees every host alive")
            show_members(agents, lab.hosts[0])

            victim, observer = lab.hosts[-1], lab.hosts[0]
            say(f"kill -9 the agent on {victim.name}")
            agents.kill(victim, signal.SIGKILL)
            for state in ("suspect", "dead"):
                wait_for(
                    partial(states, agents, observer, victim.name), partial(_reached, state), 60
                )
                now = states(agents, observer, victim.name)
                say(f"{observer.name} now marks {victim.name} {now}")
            show_members(agents, observer)

            say(f"restart the agent on {victim.name}")
            agents.start(victim)
            for host in lab.hosts:
                wait_for(partial(states, agents, host, victim.name), lambda s: s == "alive", 60)
            say(f"{victim.name} rejoined (it refuted its death with a higher incarnation)")
            show_members(agents, observer)
            migrate_a_guest(lab, agents)
        finally:
            say("stopping agents and removing the lab")
            agents.stop_all()
    say("done: no namespaces, processes or files left behind")


def heartbeats(host: LabHost) -> list[int]:
    """The guest's heartbeat counters as logged on `host` (seen through its init's root)."""
    log = host.path(CONSOLE)
    return guest_files.heartbeats(log.read_bytes()) if log.exists() else []


def migrate_a_guest(lab: Lab, agents: LabAgents) -> None:
    source, target = lab.hosts[0], lab.hosts[1]
    say("building the test guest from Debian packages (cached after the first run)")
    guest = guest_files.build()
    spec = VmSpec(VM, 1, 128, guest.kernel, guest.initrd, guest.cmdline())
    xml = agents.host_dir(source) / f"{VM}.xml"
    xml.write_text(domain_xml(spec, domain_type="qemu", overlays=(), console_log=CONSOLE))
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    source.run([*virsh, "define", str(xml)], check=True, capture_output=True)
    source.run([*virsh, "start", VM], check=True, capture_output=True)
    beats = wait_for(partial(heartbeats, source), lambda b: len(b) >= 10, timeout=60, interval=0.2)
    say(f"{VM} boots on {source.name} (TCG); its console says 'heartbeat {beats[-1]}'")
    wait_for(partial(_vm_host, agents, target), lambda h: h == source.name, timeout=30)
    say(f"every agent lists {VM} on {source.name}; now: nova vm migrate {VM} --to {target.name}")
    source.run([str(BIN / "nova"), "vm", "migrate", VM, "--to", target.name, "--wait"], check=True)
    before = heartbeats(source)[-1]
    after = wait_for(partial(heartbeats, target), lambda b: len(b) >= 5, timeout=30, interval=0.2)
    say(f"last heartbeat on {source.name}: {before}; first on {target.name}: {after[0]} "
        f"(no reboot: it would restart from 1)")  # fmt: skip
    wait_for(partial(_vm_host, agents, lab.hosts[-1]), lambda h: h == target.name, timeout=30)
    say(f"every agent now lists {VM} on {target.name}")
    target.run([*virsh, "destroy", VM], capture_output=True)
    target.run([*virsh, "undefine", VM], capture_output=True)


def _vm_host(agents: LabAgents, observer: LabHost) -> str | None:
    rows = agents.nova(observer, "vm", "list").get("vms", [])
    return next((row["host"] for row in rows if row["name"] == VM), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: error: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    run(args.hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
