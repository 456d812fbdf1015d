"""Helpers for the lab tests that run guests under agents: `nova` in a host, heartbeats, views.

Shared by the lab tests that run guests (test_hypervisor, test_migration_lab,
test_migration_faults_lab, test_vm_control_lab, ...). Guests are the TCG test guest
(simulations/guest.py); libvirt connections to a lab host are opened inside
its namespace (`opener_in`), never from the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
import psutil
import pytest

from novacron.agent.hypervisor import Hypervisor
from novacron.agent.inventory import DIRTY_RATE_MAX_AGE
from novacron.agent.vmspec import VmSpec
from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost, heartbeat, netns
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for

MEMORY_MIB = 128
# A guest that cannot converge in pre-copy (10 MiB/s dirtied, 4 MiB/s sent) switches to
# post-copy after 8 s; the cap holds in post-copy too, so that phase lasts seconds.
POSTCOPY = ("--bandwidth", "4", "--max-downtime", "300", "--post-copy", "--completion-timeout", "8")
# Pre-copy that cannot converge (10 MiB/s dirtied, 4 MiB/s sent) and never escalates.
SLOW = (
    *("--bandwidth", "4", "--max-downtime", "300"),
    *("--no-post-copy", "--completion-timeout", "600"),
)


def opener_in(host: LabHost) -> Callable[[str], Any]:
    """A libvirt opener whose connections are made from inside `host`'s network."""
    return lambda uri: netns.call_in(host.init_pid, partial(libvirt.open, uri))


def host_path(host: LabHost, path: Path) -> Path:
    """`path` as `host` sees it (its private mounts), readable from this process."""
    return host.path(path)


def hv(host: LabHost, disk_dir: Path) -> Hypervisor:
    return Hypervisor(
        host.libvirt_uri, domain_type="qemu", disk_dir=disk_dir, opener=opener_in(host)
    )


def beats(host: LabHost, name: str) -> list[int]:
    """Heartbeat counters in VM `name`'s console log on `host`."""
    log = host_path(host, Hypervisor(domain_type="qemu").console_log(name))
    return guest_mod.heartbeats(log.read_bytes()) if log.exists() else []


WAITS_ENV = "NOVACRON_LAB_WAITS"  # a file to append one JSON line per heartbeat wait to


def wait_beat_above(host: LabHost, name: str, above: int) -> list[int]:
    """Until VM `name`'s console on `host` shows a heartbeat above `above`; its heartbeats.

    For as long as the guest runs (simulations/lab/heartbeat.py): a loaded
    machine slows a guest, it does not fail a test; a broken guest fails it,
    with its console's tail.
    """
    started = time.monotonic()
    console = Hypervisor(domain_type="qemu").console_log(name)
    series = heartbeat.wait_heartbeat_above(host, name, console, above)
    _note_wait(host, name, time.monotonic() - started)
    return series


def _note_wait(host: LabHost, name: str, seconds: float) -> None:
    """Record how long a heartbeat took, for benchmarks/lab_soak.py (when it asks)."""
    path = os.environ.get(WAITS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"host": host.name, "vm": name, "seconds": round(seconds, 2)}))
            out.write("\n")


def nova(host: LabHost, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """`nova --json ARGS` inside `host`: exit code and JSON answer."""
    done = host.run(
        [str(BIN / "nova"), "--json", *args], capture_output=True, text=True, timeout=timeout
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, {"ok": False, "error": done.stderr.strip() or "no output"}


SCRAPE = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect("/run/novacron/agent.sock")
    sock.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: agent\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
sys.stdout.write(data.decode().partition("\\r\\n\\r\\n")[2])
"""


def agent_metrics(host: LabHost) -> str:
    """The exposition of `host`'s agent, read from its API socket inside the host."""
    done = host.run([str(BIN / "python"), "-c", SCRAPE], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def metric(exposition: str, series: str) -> float:
    """The value of one series line (`name{labels}`) in an exposition."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the exposition")


def hosts_of(agents: LabAgents, observer: LabHost, vm: str) -> list[tuple[str, str]]:
    """(host, state) of every row for `vm` in `observer`'s `nova vm list`."""
    rows = agents.nova(observer, "vm", "list").get("vms", [])
    return sorted((r["host"], r["state"]) for r in rows if r["name"] == vm)


def everyone_sees(agents: LabAgents, lab: Lab, vm: str, host: str, timeout: float = 15) -> None:
    for observer in lab.hosts:
        wait_for(
            partial(hosts_of, agents, observer, vm), lambda r: r == [(host, "running")], timeout
        )


def migrations(host: LabHost) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = nova(host, "migrations")[1].get("migrations", [])
    return rows


def start_guest(
    lab: Lab,
    agents: LabAgents,
    disk_dir: Path,
    guest: Guest,
    name: str,
    on: LabHost | None = None,
    **kw: Any,
) -> int:
    """Define and start `name` on `on` (h1); wait for its heartbeat and every agent to see it."""
    return start_guests(lab, agents, disk_dir, guest, {name: on or lab.hosts[0]}, **kw)[name]


def start_guests(
    lab: Lab,
    agents: LabAgents,
    disk_dir: Path,
    guest: Guest,
    where: dict[str, LabHost],
    **kw: Any,
) -> dict[str, int]:
    """Define and start each guest on its host, all booting at once; wait for their
    heartbeats and every agent to see them; each one's heartbeat then."""
    for name, host in where.items():
        spec = VmSpec(name, 1, MEMORY_MIB, guest.kernel, guest.initrd, guest.cmdline(**kw))
        adapter = hv(host, disk_dir)

        async def create(adapter: Hypervisor = adapter, spec: VmSpec = spec) -> None:
            await adapter.create(spec)
            await adapter.start(spec.name)
            await adapter.close()

        asyncio.run(create())
    first = {name: wait_beat_above(host, name, 5)[-1] for name, host in where.items()}
    for name, host in where.items():
        everyone_sees(agents, lab, name, host.name, timeout=30)
    return first


def delete_guest(host: LabHost, disk_dir: Path, name: str) -> None:
    async def delete() -> None:
        adapter = hv(host, disk_dir)
        await adapter.delete(name)
        await adapter.close()

    asyncio.run(delete())


def domains(host: LabHost, *flags: str) -> list[str]:
    """Names of the domains `host`'s libvirtd has (`virsh list --name FLAGS`)."""
    done = host.run(
        ["virsh", "-c", "qemu:///system", "list", "--name", *flags],
        capture_output=True,
        text=True,
    )
    return [line for line in done.stdout.split() if line]


def dirty_rate_stats(host: LabHost, vm: str) -> dict[str, str]:
    """libvirt's dirty-rate statistics of `vm` on `host` (`virsh domstats --dirtyrate`)."""
    done = host.run(
        ["virsh", "-c", "qemu:///system", "domstats", "--dirtyrate", vm],
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (line.strip().partition("=") for line in done.stdout.splitlines())
    return {key: value for key, sep, value in pairs if sep}


def dirty_rate_started(host: LabHost, vm: str) -> int:
    """When QEMU last started measuring `vm`'s dirty rate (its own clock's seconds; 0: never)."""
    return int(dirty_rate_stats(host, vm).get("dirtyrate.calc_start_time", 0))


def wait_measured_idle(host: LabHost, vm: str, timeout: float = 150) -> None:
    """Until the agent calls `vm` idle: every measurement of the last minute at most
    8 MiB/s (a guest is measured at its start, booting and busy, then every 10 s), i.e. a
    minute of idle readings from the first one on."""
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while True:
        stats = dirty_rate_stats(host, vm)
        if stats.get("dirtyrate.calc_status") == "2":  # finished (else: one is running)
            if int(stats.get("dirtyrate.megabytes_per_second", "99")) > 8:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
        if idle_since is not None and time.monotonic() - idle_since > DIRTY_RATE_MAX_AGE + 1:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{vm} on {host.name} not measured idle for a minute: {stats}")
        time.sleep(0.5)


def rebalance_paused(host: LabHost) -> bool:
    """Whether `host`'s agent holds the mesh's rebalancing pause (False while it does not
    answer)."""
    code, answer = nova(host, "rebalance", "status")
    return code == 0 and bool(answer["rebalance"]["paused"])


def migration_under_way(hosts: Sequence[LabHost]) -> bool:
    """Whether any of `hosts` has a migration under way (one without an outcome yet)."""
    return any(not m["outcome"] for host in hosts for m in migrations(host))


def running_on(lab: Lab, vm: str) -> list[str]:
    """The hosts whose libvirtd runs `vm` now (exactly one, after any migration)."""
    return [host.name for host in lab.hosts if vm in domains(host)]


def remove_everywhere(lab: Lab, *vms: str) -> None:
    """Destroy and undefine each of `vms` on every host (cleanup after a test, whatever
    happened). Only the ones a host lists are touched: a module names many guests and a test
    leaves few, and each virsh call is a process entering the host's namespaces. A host whose
    libvirtd does not answer the listing gets every name tried, as it would without one."""
    for host in lab.hosts:
        listed = host.run(
            ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
            capture_output=True,
            text=True,
        )
        present = set(listed.stdout.split()) if listed.returncode == 0 else set(vms)
        for vm in (vm for vm in vms if vm in present):
            for verb in ("destroy", "undefine"):
                host.run(["virsh", "-c", "qemu:///system", verb, vm], capture_output=True)


def console_log(vm: str) -> Path:
    """Where `vm`'s serial console is logged on the host it runs on (use `host.path`)."""
    return Hypervisor(domain_type="qemu").console_log(vm)


def migrating(lab: Lab, agents: LabAgents, disk_dir: Path, guest: Guest, vm: str, to: str) -> int:
    """Start `vm` on h1, migrate it slowly to `to`; the heartbeat just before the fault."""
    h1 = lab.hosts[0]
    start_guest(lab, agents, disk_dir, guest, vm, dirty_mib=32, dirty_rate=10)
    code, started = nova(h1, "vm", "migrate", vm, "--to", to, *SLOW)
    assert (code, started["ok"]) == (0, True), started
    wait_for(
        lambda: outbound_row(h1, vm),
        lambda m: m is not None and m["phase"] == "migrating" and m["percent"] > 0,
        timeout=60,
        interval=0.2,
    )
    return beats(h1, vm)[-1]


def ended(host: LabHost, vm: str, timeout: float) -> dict[str, Any]:
    """`host`'s latest outbound migration of `vm`, once it has an outcome."""
    row = wait_for(
        lambda: outbound_row(host, vm), lambda m: m is not None and m["outcome"], timeout
    )
    assert row is not None
    return row


def outbound_row(host: LabHost, vm: str) -> dict[str, Any] | None:
    rows = [m for m in migrations(host) if m["vm"] == vm and m["direction"] == "outbound"]
    return rows[0] if rows else None


def settled_on(lab: Lab, agents: LabAgents, vm: str, host: LabHost, before: int) -> None:
    """`vm` runs on `host` alone, its heartbeat unbroken since boot, and everyone agrees."""
    dead = {name: p.poll() for name, p in agents.processes.items() if p.poll() is not None}
    assert not dead, f"agents exited: {dead}"
    wait_for(lambda: running_on(lab, vm), lambda hosts: hosts == [host.name], 90)
    series = wait_beat_above(host, vm, before + 10)
    assert series == list(range(series[0], series[0] + len(series))), "the guest restarted"
    everyone_sees(agents, lab, vm, host.name, timeout=90)


def defined_on(lab: Lab, vm: str) -> list[str]:
    """The hosts whose libvirtd holds `vm` in any state, definitions included."""
    return [host.name for host in lab.hosts if vm in domains(host, "--all")]


def domstate(host: LabHost, vm: str) -> str:
    """`virsh domstate --reason VM` on `host` ("" if it has no such domain)."""
    done = host.run(
        ["virsh", "-c", "qemu:///system", "domstate", "--reason", vm],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return str(done.stdout).strip()


@contextlib.contextmanager
def running_mesh(
    run: str, vms: Sequence[str] = (), hosts: int = 3, **agent_options: Any
) -> Iterator[tuple[Lab, LabAgents]]:
    """`hosts` lab hosts with agents (h1 everyone's seed, inventory every second), up and
    meshed; on the way out the VMs named are removed from every host."""
    with Lab(run, hosts) as lab:
        agents = LabAgents(lab, seeds=True, inventory_interval=1.0, **agent_options)
        agents.start_all()
        try:
            agents.wait_for_full_mesh(timeout=60)
            yield lab, agents
        finally:
            remove_everywhere(lab, *vms)
            agents.stop_all()
            keep_logs(lab, agents, run)


def keep_logs(lab: Lab, agents: LabAgents, run: str) -> None:
    """Copy the agents' logs to $NOVACRON_LAB_LOGS/<run>/ (set it to study a failed run)."""
    keep = os.environ.get("NOVACRON_LAB_LOGS")
    if not keep:
        return
    target = Path(keep) / run
    target.mkdir(parents=True, exist_ok=True)
    for host in lab.hosts:
        if (agents.host_dir(host) / "agent.log").exists():  # a host may never have run one
            (target / f"{host.name}.log").write_text(agents.log(host))


def lab_fixtures(run: str, vms: Sequence[str] = (), **agent_options: Any) -> tuple[Any, Any]:
    """The module-scoped fixtures a lab test module with guests uses: `mesh` (three hosts
    with agents, `running_mesh`) and `disk_dir` (`scratch_dir`). In the module:
    `mesh, disk_dir = lab_fixtures(RUN, VMS)`."""

    @pytest.fixture(scope="module")
    def mesh() -> Iterator[tuple[Lab, LabAgents]]:
        with running_mesh(run, vms, **agent_options) as built:
            yield built

    @pytest.fixture(scope="module")
    def disk_dir() -> Iterator[Path]:
        with scratch_dir(run) as path:
            yield path

    return mesh, disk_dir


def removed_after(vms: Sequence[str]) -> Any:
    """An autouse fixture that removes `vms` from every host after each test (an idle TCG
    guest still costs CPU; a later test must not find an earlier one's guests)."""

    @pytest.fixture(autouse=True)
    def removed(mesh: tuple[Lab, LabAgents]) -> Iterator[None]:
        yield
        remove_everywhere(mesh[0], *vms)

    return removed


def offering(memory_mib: int) -> list[str]:
    """Agent options that make every lab host offer VMs `memory_mib` (they share this
    machine's memory; the rest is reserved for "the host")."""
    reserved = psutil.virtual_memory().total // 2**20 - memory_mib
    return ["--reserved-memory-mib", str(reserved)]


@contextlib.contextmanager
def scratch_dir(run: str) -> Iterator[Path]:
    """A directory for one test module's files, removed afterwards."""
    path = Path("/var/lib/novacron-test") / run
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
