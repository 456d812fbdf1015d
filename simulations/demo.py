"""`make demo`: a small mesh of real agents on this machine, narrated.

Brings up 3 lab hosts (network namespaces, each with its own libvirtd and a
`nova-agent`), shows membership converging by mDNS, kills one agent with
SIGKILL, shows the others detect the failure, restarts it, shows it rejoin
with a higher incarnation; then signs the test guest as template test-guest:1,
creates a VM from it on h1 and migrates it live to h2, which never had the
template: h2 fetches it from h1 over the mesh first, then `nova vm migrate
--wait` moves the VM, its heartbeat carrying on; and
removes everything it made, even on Ctrl-C. Every line says when (wall clock,
and seconds since the start), and every wait says what it waits for.
Run as root: `python -m novacron.simulations.demo [--hosts N] [--name LAB]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from novacron.agent.cli import main as nova_main
from novacron.simulations import guest as guest_files
from novacron.simulations.lab import Lab, LabError
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for
from novacron.simulations.lab.heartbeat import GuestNotBeating, wait_heartbeat_above
from novacron.simulations.lab.host import LabHost

VM = "demo-vm"
CONSOLE = Path("/var/log/libvirt/qemu") / f"{VM}.console.log"  # per host (private mount)
MESH_TIMEOUT = 60.0  # seconds for the agents to find each other
TEMPLATES = Path("/var/lib/libvirt/novacron-templates")  # each host's own store (private)
TEMPLATE = f"{guest_files.TEMPLATE_NAME}:1"

_START = time.monotonic()


def say(text: str) -> None:
    """One line, stamped with the wall clock and the seconds since the demo began."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp} {time.monotonic() - _START:+6.1f}s] {text}", flush=True)


def show_members(agents: LabAgents, host: LabHost) -> None:
    rows = agents.members(host)
    say(f"`nova members` on {host.name}:")
    for node, row in sorted(rows.items()):
        say(f"    {node:4} {row['address']:18} {row['state']:7} incarnation {row['incarnation']}")


def states(agents: LabAgents, host: LabHost, node: str) -> str | None:
    return agents.states(host).get(node)


def _reached(want: str, state: str | None) -> bool:
    # A failure can be declared before we look at the suspicion: dead counts too.
    return state in (want, "dead")


def watch_mesh(agents: LabAgents, lab: Lab) -> None:
    """Until every agent sees every host alive, saying each time an agent's view grows."""
    seen: dict[str, list[str]] = {}
    deadline = time.monotonic() + MESH_TIMEOUT
    while True:
        for host in lab.hosts:
            alive = sorted(n for n, s in agents.states(host).items() if s == "alive")
            if alive != seen.get(host.name):
                seen[host.name] = alive
                say(f"{host.name} sees alive: {', '.join(alive) or 'nobody yet'}")
        if all(len(alive) == len(lab.hosts) for alive in seen.values()):
            return
        if time.monotonic() > deadline:
            raise LabError(f"the agents did not all meet within {MESH_TIMEOUT:g} s: {seen}")
        time.sleep(0.5)


def run(hosts: int, name: str) -> None:
    with Lab(name, hosts, progress=lambda line: say(line.strip())) as lab:
        publisher = lab.state_dir / "publisher"
        assert nova_main(["template", "keygen", "demo", "--out", str(publisher)]) == 0
        trust = ["--trusted-publishers", str(publisher / "demo.pub")]
        agents = LabAgents(lab, extra_args=["--template-dir", str(TEMPLATES), *trust])
        say(f"starting {hosts} agents (certificates from a fresh cluster CA, no seeds: mDNS only)")
        agents.start_all()
        try:
            say("waiting for the agents to find each other by mDNS and gossip")
            watch_mesh(agents, lab)
            say("every agent sees every host alive")
            show_members(agents, lab.hosts[0])

            victim, observer = lab.hosts[-1], lab.hosts[0]
            say(f"kill -9 the agent on {victim.name}; waiting for the others to notice")
            agents.kill(victim, signal.SIGKILL)
            for state in ("suspect", "dead"):
                wait_for(
                    partial(states, agents, observer, victim.name), partial(_reached, state), 60
                )
                now = states(agents, observer, victim.name)
                say(f"{observer.name} now marks {victim.name} {now}")
            show_members(agents, observer)

            say(f"restart the agent on {victim.name}; waiting for every host to see it alive")
            agents.start(victim)
            for host in lab.hosts:
                wait_for(partial(states, agents, host, victim.name), lambda s: s == "alive", 60)
            say(f"{victim.name} rejoined (it refuted its death with a higher incarnation)")
            show_members(agents, observer)
            migrate_a_guest(lab, agents, publisher)
        finally:
            stop_agents(lab, agents)
            say("removing the lab: host inits, libvirtd and virtlogd, then the namespaces")
    say("done: no namespaces, processes or files left behind")


def stop_agents(lab: Lab, agents: LabAgents) -> None:
    """Each agent gets SIGTERM, leaves the mesh (it tells its peers) and exits."""
    for host in lab.hosts:
        if host.name in agents.processes:
            say(f"stopping the agent on {host.name} (SIGTERM: it leaves the mesh, then exits)")
            started = time.monotonic()
            agents.kill(host, signal.SIGTERM)
            say(f"  {host.name}'s agent exited after {time.monotonic() - started:.1f} s")


def heartbeats(host: LabHost) -> list[int]:
    """The guest's heartbeat counters as logged on `host` (seen through its init's root)."""
    log = host.path(CONSOLE)
    return guest_files.heartbeats(log.read_bytes()) if log.exists() else []


def narrated(host: LabHost, command: list[str]) -> None:
    """Run `command` in `host`, each line of its output stamped as it comes."""
    proc = host.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        say(f"    {line.rstrip()}")
    if proc.wait() != 0:
        raise LabError(f"`{' '.join(command)}` failed (exit {proc.returncode})")


def migrate_a_guest(lab: Lab, agents: LabAgents, publisher: Path) -> None:
    source, target = lab.hosts[0], lab.hosts[1]
    nova = str(BIN / "nova")
    say("building the test guest from Debian packages (cached after the first run)")
    guest = guest_files.build()
    catalogue = publisher / "catalogue"
    say(f"signing it as template {TEMPLATE} into a catalogue ({catalogue})")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        guest_files.publish_template(guest, publisher / "demo.key", catalogue)
    for line in printed.getvalue().splitlines():
        say(f"    {line}")
    say(f"{source.name} pulls the template from the catalogue, then creates {VM} from it")
    narrated(
        source,
        [nova, "template", "pull", TEMPLATE, "--from", str(catalogue), "--store", str(TEMPLATES),
         "--trust", str(publisher / "demo.pub")],
    )  # fmt: skip
    narrated(source, [nova, "vm", "create", VM, "--template", TEMPLATE, "--start"])
    say(f"{VM} started on {source.name} (TCG, no KVM); waiting for its console's heartbeats")
    beats = wait_heartbeat_above(source, VM, CONSOLE, 9)
    say(f"{VM} boots on {source.name}; its console says 'heartbeat {beats[-1]}'")
    say(f"waiting until the agents' gossip lists {VM} on {source.name}")
    wait_for(partial(_vm_host, agents, target), lambda h: h == source.name, timeout=30)
    say(f"{target.name} has never held {TEMPLATE}: nova vm migrate {VM} --to {target.name} "
        f"--wait ({target.name} fetches it from its peers first, every piece checked)")  # fmt: skip
    narrated(source, [nova, "vm", "migrate", VM, "--to", target.name, "--wait"])
    say(f"{target.name} now holds {TEMPLATE}: {', '.join(_templates(agents, source, target.name))}")
    before = heartbeats(source)[-1]
    say(f"waiting for {VM}'s heartbeat on {target.name} (for as long as the guest runs)")
    after = wait_heartbeat_above(target, VM, CONSOLE, before)
    say(f"last heartbeat on {source.name}: {before}; first on {target.name}: {after[0]} "
        f"(no reboot: it would restart from 1)")  # fmt: skip
    wait_for(partial(_vm_host, agents, lab.hosts[-1]), lambda h: h == target.name, timeout=30)
    say(f"every agent now lists {VM} on {target.name}")
    say(f"removing {VM} (nova vm delete --force on {target.name})")
    target.run([nova, "vm", "delete", VM, "--force"], capture_output=True)


def _templates(agents: LabAgents, observer: LabHost, host: str) -> list[str]:
    """The templates `host` holds whole, as `observer` hears it gossip."""
    answer = agents.nova(observer, "host", "show", host)
    return list(answer.get("host", {}).get("record", {}).get("templates", []))


def _vm_host(agents: LabAgents, observer: LabHost) -> str | None:
    rows = agents.nova(observer, "vm", "list").get("vms", [])
    return next((row["host"] for row in rows if row["name"] == VM), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3, help="lab hosts (default: 3)")
    parser.add_argument(
        "--name",
        default=f"demo{os.getpid() % 100000}",
        help="lab name, for its namespaces and /var/lib/novacron-lab/NAME (default: demo<pid>)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: error: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        run(args.hosts, args.name)
    except (LabError, GuestNotBeating, TimeoutError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
