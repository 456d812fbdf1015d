"""Agents in the lab: a cluster CA, a certificate per host, `nova-agent` in each host.

Everything lives in the lab's state directory (CA, keys, agent data, logs),
and every agent runs inside its host's namespaces, so `down` removes it all.
Tests and the demo drive agents through `LabAgents`; `nova` runs inside a
host to see the mesh as that host sees it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from novacron.simulations.lab.host import LabHost
from novacron.simulations.lab.instance import Lab

T = TypeVar("T")

BIN = Path(sys.executable).parent  # nova and nova-agent live beside this Python
GOSSIP_PORT = 7946
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

    def start(self, host: LabHost, ca: str = "ca") -> subprocess.Popen[bytes]:
        """Start `host`'s agent in the background, logging to its directory."""
        data = self.host_dir(host)
        (data / "none.toml").write_text("# settings come from flags\n")
        log = open(data / "agent.log", "ab")  # noqa: SIM115 - the child owns it
        proc = host.popen(self.command(host, ca), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[host.name] = proc
        return proc

    def kill(self, host: LabHost, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to `host`'s agent and wait for it to end."""
        proc = self.processes.pop(host.name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a wedged agent must not wedge the lab too
            proc.kill()
            proc.wait(timeout=10)

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
        return self.states(host) == {h.name: "alive" for h in self.lab.hosts}

    def wait_for_full_mesh(self, timeout: float, interval: float = 0.5) -> None:
        """Wait until every agent sees every host alive (TimeoutError names the laggard)."""
        everyone = {h.name: "alive" for h in self.lab.hosts}
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
