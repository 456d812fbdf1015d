"""Agents in the lab: a cluster CA, a certificate per host, `nova-agent` in each host.

Everything lives in the lab's state directory (CA, keys, agent data, logs),
and every agent runs inside its host's namespaces, so `down` removes it all.
Tests and the demo drive agents through `LabAgents`; `nova` runs inside a
host to see the mesh as that host sees it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from novacron.simulations.lab import agent_record, processes
from novacron.simulations.lab.agent_record import AgentRecord
from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.host import LabHost
from novacron.simulations.lab.instance import Lab

T = TypeVar("T")

BIN = Path(sys.executable).parent  # nova and nova-agent live beside this Python
GOSSIP_PORT = 7946
START_TIMEOUT = 30.0  # seconds for nsenter to enter a host and exec the agent
DISK_DIR = "/var/lib/libvirt/novacron-disks"
"""Where lab agents put VM disks: /var/lib/libvirt is private to each lab host, so every
host has its own disks at the same path, as separate machines would (local storage)."""


class LabAgents:
    """Starts, stops and queries one `nova-agent` per lab host."""

    def __init__(
        self,
        lab: Lab,
        *,
        mdns: bool = True,
        seeds: bool = False,
        inventory_interval: float = 2.0,
        rebalance: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.lab = lab
        self.root = lab.state_dir / "agents"
        self.mdns = mdns  # discover peers by multicast DNS
        self.seeds = seeds  # also give every agent h1 as a static seed
        self.inventory_interval = inventory_interval
        self.rebalance = rebalance  # off unless asked: tests place their VMs on purpose
        self.extra_args = list(extra_args)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # --- identities ----------------------------------------------------------------

    def ca_dir(self, name: str = "ca") -> Path:
        return self.root / name

    def create_ca(self, name: str = "ca") -> Path:
        """A cluster CA (an operator's `nova ca init`)."""
        ca = self.ca_dir(name)
        if not (ca / "ca.key").exists():
            _nova("ca", "init", "--dir", str(ca))
        return ca

    def issue(self, host: LabHost, ca: str = "ca") -> None:
        """A certificate for `host` from CA `ca` (an operator's `nova ca issue`)."""
        out = self.host_dir(host)
        _nova("ca", "issue", host.name, "--dir", str(self.ca_dir(ca)), "--out", str(out), "--force")

    def operator(self, name: str = "ops", ca: str = "ca") -> Path:
        """An operator's certificate from CA `ca` (`nova ca issue NAME --role operator`); its
        key lies beside it, where `nova --operator CERT` looks."""
        out = self.root / "operators"
        cert = out / f"{name}.crt"
        if not cert.exists():
            _nova("ca", "issue", name, "--role", "operator", "--dir", str(self.ca_dir(ca)),
                  "--out", str(out))  # fmt: skip
        return cert

    def host_dir(self, host: LabHost) -> Path:
        path = self.root / host.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- processes -----------------------------------------------------------------

    def start_all(self) -> None:
        self.create_ca()
        for host in self.lab.hosts:
            self.issue(host)
            self.start(host)

    def command(self, host: LabHost, ca: str = "ca") -> list[str]:
        """The `nova-agent` command line for `host`, trusting CA `ca`."""
        data = self.host_dir(host)
        args = [
            str(BIN / "nova-agent"),
            "--config", str(data / "none.toml"),
            "--ca-file", str(self.ca_dir(ca) / "ca.pub"),
            "--cert-file", str(data / f"{host.name}.crt"),
            "--key-file", str(data / f"{host.name}.key"),
            "--bind-address", host.address,
            "--port", str(GOSSIP_PORT),
            "--interface", "eth0",
            "--data-dir", str(data / "data"),
            "--libvirt-uri", "qemu:///system" if self.lab.libvirt else "test:///default",
            "--inventory-interval", str(self.inventory_interval),
            "--mdns" if self.mdns else "--no-mdns",
            # TCG, set explicitly: `auto` would pick KVM here (libvirt offers it and
            # /dev/kvm answers), but KVM guests hang early in boot on these machines.
            "--domain-type", "qemu",
            "--disk-dir", DISK_DIR,
            "--rebalance" if self.rebalance else "--no-rebalance",
        ]  # fmt: skip
        if self.seeds and host.name != "h1":
            args += ["--seeds", f"{self.lab.hosts[0].address}:{GOSSIP_PORT}"]
        return args + self.extra_args

    def start(
        self, host: LabHost, ca: str = "ca", argv: Sequence[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `host`'s agent in the background (`argv`, or `command`), logging to its
        directory; agent.json there names it for `lab agent` and `lab status`."""
        data = self.host_dir(host)
        if self.running_pid(host) is not None:
            raise LabError(f"{host.name}: an agent already runs (pid {self.running_pid(host)})")
        (data / "none.toml").write_text("# settings come from flags\n")
        command = list(argv) if argv else self.command(host, ca)
        log = open(data / "agent.log", "ab")  # noqa: SIM115 - the child owns it
        proc = host.popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[host.name] = proc
        agent_record.save(data, AgentRecord(command, proc.pid))
        self._wait_running(host, proc)
        return proc

    def _wait_running(self, host: LabHost, proc: subprocess.Popen[bytes]) -> None:
        """Until `proc` runs the agent inside `host` (nsenter has entered it and exec'd the
        agent), so that `running_pid`, `lab status` and `lab agent` see it from now on."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.running_pid(host) != proc.pid:
            if proc.poll() is not None:
                log = self.host_dir(host) / "agent.log"
                raise LabError(f"{host.name}: nova-agent exited at once ({proc.returncode}); {log}")
            if time.monotonic() > deadline:
                raise LabError(f"{host.name}: nova-agent not running after {START_TIMEOUT:g} s")
            time.sleep(0.02)

    def kill(self, host: LabHost, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to `host`'s agent and wait for it to end; its PID."""
        proc = self.processes.pop(host.name, None)
        if proc is not None:  # our child: wait() also reaps it
            pid = proc.pid
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # a wedged agent must not wedge the lab too
                proc.kill()
                proc.wait(timeout=10)
        else:  # started by another command (`lab up --agents`): found through agent.json
            found = self.running_pid(host)
            if found is None:
                raise LabError(f"{host.name}: no agent is running")
            pid = found
            os.kill(pid, sig)
            if processes.wait_gone([pid], 20):
                processes.terminate([pid], grace=0)
        record = agent_record.load(self.host_dir(host))
        if record is not None:
            agent_record.save(self.host_dir(host), AgentRecord(record.argv, None))
        return pid

    def restart(self, host: LabHost) -> subprocess.Popen[bytes]:
        """Stop `host`'s agent (SIGTERM: it leaves the mesh) if it runs, and start it again
        with the command line it had."""
        record = agent_record.load(self.host_dir(host))
        if record is None:
            raise LabError(f"{host.name} never ran an agent (start the lab with `up --agents`)")
        if host.name in self.processes or self.running_pid(host) is not None:
            self.kill(host, signal.SIGTERM)
        return self.start(host, argv=record.argv)

    def running_pid(self, host: LabHost) -> int | None:
        """The PID of `host`'s agent while it runs, whoever started it."""
        return agent_record.running_pid(self.host_dir(host), host.netns)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(self.lab.host(name), signal.SIGTERM)

    def log(self, host: LabHost) -> str:
        return (self.host_dir(host) / "agent.log").read_text(errors="replace")

    # --- queries ---------------------------------------------------------------------

    def nova(self, host: LabHost, *args: str, timeout: float = 15) -> Any:
        """Run `nova --json ARGS` inside `host` and return its JSON answer."""
        done = host.run(
            [str(BIN / "nova"), "--json", *args], capture_output=True, text=True, timeout=timeout
        )
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {"ok": False, "error": done.stderr.strip() or "no output"}

    def members(self, host: LabHost) -> dict[str, dict[str, Any]]:
        """`host`'s view: node id -> member row (empty when the agent does not answer)."""
        answer = self.nova(host, "members")
        return {m["node_id"]: m for m in answer.get("members", [])}

    def states(self, host: LabHost) -> dict[str, str]:
        return {node: row["state"] for node, row in self.members(host).items()}

    def all_alive(self, host: LabHost) -> bool:
        """Whether `host`'s agent sees every lab host, itself included, alive."""
        return self.states(host) == self._everyone_alive()

    def _everyone_alive(self) -> dict[str, str]:
        """The view of a full mesh: every lab host, alive."""
        return {h.name: "alive" for h in self.lab.hosts}

    def wait_for_full_mesh(self, timeout: float, interval: float = 0.5) -> None:
        """Wait until every agent sees every host alive (TimeoutError names the laggard)."""
        everyone = self._everyone_alive()
        for host in self.lab.hosts:
            try:
                wait_for(partial(self.states, host), everyone.__eq__, timeout, interval)
            except TimeoutError as exc:
                raise TimeoutError(f"{host.name}'s view: {exc}") from None


def _nova(*args: str) -> None:
    subprocess.run([str(BIN / "nova"), *args], check=True, capture_output=True, text=True)


def wait_for(
    probe: Callable[[], T], accept: Callable[[T], bool], timeout: float, interval: float = 0.5
) -> T:
    """Call `probe` until `accept` likes its answer; return it, or raise with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g}s; last answer: {value!r}")
        time.sleep(interval)
