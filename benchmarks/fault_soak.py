"""Fault soak: libvirtd, agents and links killed at random during migrations; is any VM lost
or run twice, and how long until the mesh settles?

A three-host lab with `nova-agent` as shipped (10 s inventory) and `--guests`
TCG test guests. Each round starts `nova vm migrate` of a random guest to a
random other host (capped at 8 MiB/s, or in 40 % of the rounds at 4 MiB/s and
escalated to post-copy after 8 s), waits a random moment (0.5-15 s) into the
migration, and breaks one thing at random: the source's
or the target's libvirtd killed (started again 0-5 s later), its agent killed
with SIGKILL (started again 0-5 s later), its link cut (for 2-20 s), or
nothing (the control). Then everything is healed and the round waits until the
mesh settles: every guest runs on exactly one host, no other host holds a
definition of it, no migration is running, and every agent lists every guest
once, where it runs.

Per round and in total it counts VMs

- lost: running nowhere, and no migration says "in doubt";
- duplicated: running (not paused) on two hosts at any look after the fault, and
  still at a second look (hosts are read one by one: a switchover between two
  reads is not two copies);
- in doubt: a migration ended "in-doubt" (visible, with the command that
  settles it); the soak then runs that command (`nova vm recover`) and goes on;
- restarted: the guest's heartbeat started over without an in-doubt report;

and the time from healing to settled (`--settle` seconds at most: unsettled).

Run as root: `.venv/bin/python -m benchmarks.fault_soak --minutes 30 --json FILE`
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import migration as M
from novacron.agent.config import AgentConfig
from novacron.agent.history import iso
from novacron.agent.hypervisor import Hypervisor
from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents

FAULTS = (
    "none",
    "source-libvirtd",
    "target-libvirtd",
    "source-agent",
    "target-agent",
    "source-link",
    "target-link",
)
MEMORY_MIB = 128
CAPPED = ("--bandwidth", "8")  # about 15 s of pre-copy: faults land mid-migration
POSTCOPY = ("--bandwidth", "4", "--post-copy", "--completion-timeout", "8")


@dataclass
class Soak:
    """The lab, its agents and the guests, with what each guest's heartbeat last showed."""

    lab: Lab
    agents: LabAgents
    guests: list[str]
    rng: random.Random
    beats: dict[str, int] = field(default_factory=dict)  # guest -> last heartbeat seen
    rows: list[dict[str, Any]] = field(default_factory=list)


def nova(host: LabHost, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """`nova --json ARGS` in `host`: exit code and answer ({} when it gave none)."""
    try:
        done = host.run(
            [str(BIN / "nova"), "--json", *args], capture_output=True, text=True, timeout=timeout
        )
    except Exception as exc:  # a wedged agent: the soak goes on
        return 1, {"error": str(exc)}
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, {"error": done.stderr.strip()}


def states(lab: Lab, vm: str) -> dict[str, str]:
    """host -> libvirt's state of `vm` there ("" where it has none or libvirtd is down)."""
    found = {}
    for host in lab.hosts:
        done = M.virsh(host, "domstate", vm, timeout=30)
        found[host.name] = done.stdout.strip() if done.returncode == 0 else ""
    return found


def running(lab: Lab, vm: str) -> list[str]:
    return sorted(h for h, s in states(lab, vm).items() if s == "running")


def twice(lab: Lab, vm: str, seen: dict[str, str]) -> bool:
    """Whether `vm` runs on two hosts: the hosts are read one after the other, so a
    pre-copy switchover between two reads shows the source and then the target
    running; a second look at the same hosts tells that from two live copies."""
    if list(seen.values()).count("running") < 2:
        return False
    return list(states(lab, vm).values()).count("running") > 1


def heartbeat(host: LabHost, vm: str) -> int:
    log = host.path(Hypervisor(domain_type="qemu").console_log(vm))
    series = guest_mod.heartbeats(log.read_bytes()) if log.exists() else []
    return series[-1] if series else 0


def boot(soak: Soak, guest: Guest) -> None:
    """Create and start the guests, spread over the hosts."""
    boot_args = ("--kernel", str(guest.kernel), "--initrd", str(guest.initrd))
    for i, vm in enumerate(soak.guests):
        host = soak.lab.hosts[i % len(soak.lab.hosts)]
        cmdline = guest.cmdline(dirty_mib=16, dirty_rate=2)
        memory = ("--memory", str(MEMORY_MIB), "--cmdline", cmdline)
        code, answer = nova(host, "vm", "create", vm, *memory, *boot_args, "--start")
        if code != 0:
            raise RuntimeError(f"cannot create {vm} on {host.name}: {answer}")
    M.poll(lambda: all(running(soak.lab, vm) for vm in soak.guests), bool, 120)


def fault(soak: Soak, kind: str, source: LabHost, target: LabHost) -> str:
    """Break one thing, then heal it; what was done, for the record."""
    if kind == "none":
        return "none"
    host = source if kind.startswith("source") else target
    if kind.endswith("libvirtd"):
        host.kill_libvirtd()
        time.sleep(soak.rng.uniform(0, 5))
        host.start_libvirtd(timeout=120)
    elif kind.endswith("agent"):
        soak.agents.kill(host)
        time.sleep(soak.rng.uniform(0, 5))
        soak.agents.start(host)
    else:
        host.link_down()
        time.sleep(soak.rng.uniform(2, 20))
        host.link_up()
    return f"{kind} ({host.name})"


def settled(soak: Soak, seen: dict[str, dict[str, str]]) -> tuple[bool, str]:
    """Whether the mesh has settled (see the module docstring), and what is still off;
    `seen`: each guest's libvirt state on each host, just read."""
    lab = soak.lab
    for vm in soak.guests:
        where = [h for h, s in seen[vm].items() if s]
        if len(where) != 1 or seen[vm][where[0]] != "running":
            return False, f"{vm}: {seen[vm]}"
    for host in lab.hosts:
        if not soak.agents.all_alive(host):
            return False, f"{host.name} does not see every host alive"
        code, rows = nova(host, "migrations")
        if code != 0 or any(not m["outcome"] for m in rows.get("migrations", [])):
            return False, f"{host.name}: a migration is running"
        code, listing = nova(host, "vm", "list")
        names = Counter(v["name"] for v in listing.get("vms", []))
        if code != 0 or any(names[vm] != 1 for vm in soak.guests):
            return False, f"{host.name} lists {dict(names)}"
        for v in listing.get("vms", []):
            if v["name"] in soak.guests and seen[v["name"]].get(v["host"]) != "running":
                return False, f"{host.name} lists {v['name']} on {v['host']}"
    return True, ""


def in_doubt(soak: Soak, vm: str, since: str) -> dict[str, Any] | None:
    """A migration of `vm` started since `since` (ISO time) that ended in doubt, on any host."""
    for host in soak.lab.hosts:
        for m in nova(host, "migrations")[1].get("migrations", []):
            if m["vm"] == vm and m["outcome"] == "in-doubt" and (m["started"] or "") >= since:
                return dict(m)
    return None


def recover(soak: Soak, vm: str) -> str:
    """Settle a VM in doubt as an operator would: on a host holding its definition."""
    for host in soak.lab.hosts:
        if vm in M.virsh(host, "list", "--all", "--name").stdout.split():
            code, answer = nova(soak.lab.hosts[0], "vm", "recover", vm, "--on", host.name)
            return f"recovered on {host.name}" if code == 0 else f"recover failed: {answer}"
    return "no definition left anywhere"


def round_(soak: Soak, number: int, settle: float) -> dict[str, Any]:
    rng, lab = soak.rng, soak.lab
    placed = {vm: running(lab, vm) for vm in soak.guests}
    vm = rng.choice([g for g, hosts in placed.items() if len(hosts) == 1])
    source = lab.host(placed[vm][0])
    target = rng.choice([h for h in lab.hosts if h is not source])
    kind = rng.choice(FAULTS)
    flags = POSTCOPY if rng.random() < 0.4 else CAPPED
    before = heartbeat(source, vm)
    started = iso(time.time() - 1) or ""
    code, answer = nova(source, "vm", "migrate", vm, "--to", target.name, *flags)
    row: dict[str, Any] = {
        "round": number,
        "vm": vm,
        "source": source.name,
        "target": target.name,
        "postcopy": flags is POSTCOPY,
        "fault": kind,
        "started": code == 0,
        "refused": None if code == 0 else answer.get("error"),
    }
    time.sleep(rng.uniform(0.5, 15))
    row["phase_at_fault"] = _phase(source, answer.get("migration_id", ""))
    row["done"] = fault(soak, kind, source, target)
    healed = time.monotonic()
    duplicated = False
    doubt = None
    while time.monotonic() - healed < settle:
        seen = {g: states(lab, g) for g in soak.guests}
        if any(twice(lab, g, s) for g, s in seen.items()):
            duplicated = True
        ok, why = settled(soak, seen)
        if ok:
            break
        doubt = doubt or in_doubt(soak, vm, started)
        if doubt is not None and "recovery" not in row and "running" not in seen[vm].values():
            row["recovery"] = recover(soak, vm)
        row["waiting_for"] = why
        time.sleep(3)
    else:
        row["unsettled"] = True
    row["settle_s"] = round(time.monotonic() - healed, 1)
    row.update(_verdicts(soak, vm, before, doubt, duplicated))
    print(_line(row), flush=True)
    return row


def _phase(source: LabHost, migration_id: str) -> str:
    if not migration_id:
        return "refused"
    found = nova(source, "migrations")[1].get("migrations", [])
    return next((m["phase"] for m in found if m["migration_id"] == migration_id), "?")


def _verdicts(
    soak: Soak, vm: str, before: int, doubt: dict[str, Any] | None, duplicated: bool
) -> dict[str, Any]:
    where = running(soak.lab, vm)
    lost = not where and doubt is None
    restarted = False
    if len(where) == 1:
        now = heartbeat(soak.lab.host(where[0]), vm)
        restarted = now < before and doubt is None
    return {
        "ends_on": where,
        "lost": lost,
        "duplicated": duplicated or len(where) > 1,
        "in_doubt": doubt is not None,
        "doubt_reason": doubt["reason"] if doubt else None,
        "restarted": restarted,
    }


def _line(row: dict[str, Any]) -> str:
    flags = [k for k in ("lost", "duplicated", "in_doubt", "restarted", "unsettled") if row.get(k)]
    return (
        f"#{row['round']} {row['vm']} {row['source']}->{row['target']}"
        f"{' post-copy' if row['postcopy'] else ''} fault {row['done']} at {row['phase_at_fault']}"
        f": settled in {row['settle_s']} s, on {row['ends_on']} {' '.join(flags)}"
    )


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["settle_s"] for r in rows if not r.get("unsettled")]
    return {
        "rounds": len(rows),
        "faults": dict(Counter(r["fault"] for r in rows)),
        "migrations_started": sum(r["started"] for r in rows),
        "lost": sum(r["lost"] for r in rows),
        "duplicated": sum(r["duplicated"] for r in rows),
        "in_doubt": sum(r["in_doubt"] for r in rows),
        "restarted": sum(r["restarted"] for r in rows),
        "unsettled": sum(bool(r.get("unsettled")) for r in rows),
        "settle_s_median": statistics.median(times) if times else None,
        "settle_s_p90": statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else None,
        "settle_s_max": max(times, default=None),
        "settle_s_by_fault": {
            kind: statistics.median(ts)
            for kind in FAULTS
            if (
                ts := [r["settle_s"] for r in rows if r["fault"] == kind and not r.get("unsettled")]
            )
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--guests", type=int, default=3)
    parser.add_argument("--settle", type=float, default=300.0, help="longest wait to settle, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lab", default="fsoak", help="lab name (two soaks need two)")
    parser.add_argument("--json", help="write the rounds and the report here")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.fault_soak " + " ".join(sys.argv[1:]),
        "machine": M.machine(),
        "code": M.code_version(),
    }
    guest = guest_mod.build()
    with Lab(args.lab, 3) as lab:
        interval = AgentConfig().inventory_interval
        agents = LabAgents(lab, seeds=True, inventory_interval=interval)
        agents.start_all()
        soak = Soak(lab, agents, [f"soak{i}" for i in range(args.guests)], random.Random(args.seed))
        try:
            agents.wait_for_full_mesh(timeout=60)
            boot(soak, guest)
            deadline = time.monotonic() + args.minutes * 60
            number = 0
            while time.monotonic() < deadline:
                soak.rows.append(round_(soak, number, args.settle))
                number += 1
                write(args.json, result | {"complete": False}, soak.rows)
        finally:
            agents.stop_all()
    print(json.dumps(write(args.json, result | {"complete": True}, soak.rows), indent=1))


def write(path: str | None, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = report(rows)
    if path:
        Path(path).write_text(json.dumps(result | {"report": summary, "rounds": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
