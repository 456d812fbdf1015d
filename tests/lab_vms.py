"""Helpers for the lab tests that run guests under agents: `nova` in a host, heartbeats, views.

Shared by the lab tests that run guests (test_hypervisor, test_migration_lab,
test_migration_faults_lab, test_vm_control_lab, ...). Guests are the TCG test guest
(simulations/guest.py); libvirt connections to a lab host are opened inside
its namespace (`opener_in`), never from the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import libvirt

from novacron.agent.hypervisor import Hypervisor
from novacron.agent.vmspec import VmSpec
from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost, heartbeat
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for

MEMORY_MIB = 128

CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace
_libc = ctypes.CDLL(None, use_errno=True)


def opener_in(host: LabHost) -> Callable[[str], Any]:
    """A libvirt opener whose connections are made from inside `host`'s network.

    setns(CLONE_NEWNET) affects only the calling thread, and a socket stays in
    the namespace it was created in, so a short-lived thread joins the host's
    namespace, opens the connection and ends; the connection is then usable
    from any thread.
    """

    def open_in_host(uri: str) -> Any:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                fd = os.open(f"/proc/{host.init_pid}/ns/net", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {host.name}")
                finally:
                    os.close(fd)
                box["conn"] = libvirt.open(uri)
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"libvirt-open-{host.name}")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["conn"]

    return open_in_host


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
    lab: Lab, agents: LabAgents, disk_dir: Path, guest: Guest, name: str, **kw: Any
) -> int:
    """Define and start `name` on h1; wait for its heartbeat and every agent to see it."""
    h1 = lab.hosts[0]
    spec = VmSpec(name, 1, MEMORY_MIB, guest.kernel, guest.initrd, guest.cmdline(**kw))
    adapter = hv(h1, disk_dir)

    async def create() -> None:
        await adapter.create(spec)
        await adapter.start(name)
        await adapter.close()

    asyncio.run(create())
    first = wait_beat_above(h1, name, 5)[-1]
    everyone_sees(agents, lab, name, h1.name, timeout=30)
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
    """When QEMU last started measuring `vm`'s dirty rate (its monotonic seconds; 0: never)."""
    return int(dirty_rate_stats(host, vm).get("dirtyrate.calc_start_time", 0))


def wait_measured_idle(host: LabHost, vm: str, timeout: float = 40) -> None:
    """Until the agent's inventory has measured `vm` writing at most 8 MiB/s (a guest is
    measured at its start, booting and busy, then every 10 s)."""
    wait_for(
        partial(dirty_rate_stats, host, vm),
        lambda stats: (
            stats.get("dirtyrate.calc_status") == "2"
            and int(stats.get("dirtyrate.megabytes_per_second", "99")) <= 8
        ),
        timeout=timeout,
        interval=0.5,
    )


def running_on(lab: Lab, vm: str) -> list[str]:
    """The hosts whose libvirtd runs `vm` now (exactly one, after any migration)."""
    return [host.name for host in lab.hosts if vm in domains(host)]


def remove_everywhere(lab: Lab, vm: str) -> None:
    """Destroy and undefine `vm` on every host (cleanup after a test, whatever happened)."""
    for host in lab.hosts:
        for verb in ("destroy", "undefine"):
            host.run(["virsh", "-c", "qemu:///system", verb, vm], capture_output=True)


def console_log(vm: str) -> Path:
    """Where `vm`'s serial console is logged on the host it runs on (use `host.path`)."""
    return Hypervisor(domain_type="qemu").console_log(vm)


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
            for vm in vms:
                remove_everywhere(lab, vm)
            agents.stop_all()


@contextlib.contextmanager
def scratch_dir(run: str) -> Iterator[Path]:
    """A directory for one test module's files, removed afterwards."""
    path = Path("/var/lib/novacron-test") / run
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
