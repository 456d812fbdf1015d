"""Soak: many NovaCron migrations of one guest back and forth; does any stall or break it?

Two lab hosts running `nova-agent` as shipped (10 s inventory, dirty-rate
measurements on), one test guest, `nova vm migrate --wait` from whichever host
holds it to the other, a random pause of up to `--pause` s between moves so
that migrations start at every phase of the inventory's refresh. Each move is
checked as the benchmark does (heartbeat continues on the target, no panic) and
records the switchover limit the policy picked. A move not done in `--stall`
seconds is a stall: both hosts' domain states and job statistics are saved,
the job is aborted, and a guest left paused is rebooted before going on.

Run as root: `.venv/bin/python -m benchmarks.migration_soak --moves 300 --json FILE`
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import migration as M
from novacron.agent.config import AgentConfig
from novacron.simulations import guest as guest_mod
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents


def state_of(host: LabHost) -> dict[str, Any]:
    """The guest's domain state, libvirt's job and QEMU's own migration state on `host`."""
    done = host.run(
        [str(BIN / "python"), "-c", M.JOB_STATS, M.VM, "current"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    job = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}
    return {
        "domstate": M.virsh(host, "domstate", "--reason", M.VM).stdout.strip(),
        "job": M.summarise_job(job, completed=False) if job else None,
        "job_raw": job,
    }


def qemu_threads() -> dict[str, list[str]]:
    """Every bench-vm QEMU's threads: name, state and kernel wait channel (libvirt holds the
    monitor during a migration job, so this is what can be seen of a stuck QEMU)."""
    found: dict[str, list[str]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if f"guest={M.VM}".encode() not in (proc / "cmdline").read_bytes():
                continue
            threads = []
            for task in sorted((proc / "task").iterdir()):
                name = (task / "comm").read_text().strip()
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text().strip()
                threads.append(f"{name} {state} {wchan}")
            found[proc.name] = threads
        except OSError:
            continue
    return found


def stalled(bench: M.Bench, config: M.Config, number: int, workdir: Path) -> dict[str, Any]:
    """Report a stalled move, abort it, and say where the guest ended up."""
    source, target = bench.hosts[bench.where], bench.hosts[1 - bench.where]
    row: dict[str, Any] = {
        "ok": False,
        "stalled": True,
        "run": number,
        "source": source.name,
        "target": target.name,
        "states": {h.name: state_of(h) for h in bench.hosts},
        "qemu_threads": qemu_threads(),
    }
    print(f"#{number} STALLED {source.name}->{target.name}: {row['states']}", flush=True)
    for host in bench.hosts:  # the agents' own account, kept beside the results
        log = bench.agents.log(host)
        (workdir / f"stall{number}-{host.name}-agent.log").write_text(log[-200_000:])
    M.virsh(source, "domjobabort", M.VM)
    time.sleep(10)
    row["after_abort"] = {
        h.name: M.virsh(h, "domstate", "--reason", M.VM).stdout.strip() for h in bench.hosts
    }
    print(f"#{number} after domjobabort: {row['after_abort']}", flush=True)
    bench.results.append(row)
    M.boot(bench, config)  # whatever the abort left, start over from a fresh guest
    return row


def move(bench: M.Bench, config: M.Config, number: int, workdir: Path) -> dict[str, Any]:
    """One migration; a stall is reported, aborted and recovered from."""
    try:
        return M.one_migration(bench, config, "novacron", number)
    except subprocess.TimeoutExpired:
        return stalled(bench, config, number, workdir)


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and medians over the moves."""
    done = [r for r in rows if r.get("ok")]
    downtimes = [r["downtime_ms"] for r in done if isinstance(r.get("downtime_ms"), int)]
    return {
        "moves": len(rows),
        "committed": len(done),
        "stalled": sum(bool(r.get("stalled")) for r in rows),
        "failed": [r.get("reason") for r in rows if not r.get("ok") and not r.get("stalled")],
        "heartbeat_broken": sum(not r.get("heartbeat_ok", True) for r in done),
        "max_downtime_ms_picked": dict(Counter(str(r.get("max_downtime_ms")) for r in done)),
        "iterations": dict(Counter(str(r.get("iterations")) for r in done)),
        "downtime_ms_median": statistics.median(downtimes) if downtimes else None,
        "downtime_ms_p90": (
            statistics.quantiles(downtimes, n=10)[-1] if len(downtimes) >= 10 else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--memory", type=int, default=128, help="guest MiB")
    parser.add_argument("--dirty-rate", type=int, default=0, help="guest MiB/s (0: idle)")
    parser.add_argument("--pause", type=float, default=3.0, help="longest random pause, s")
    parser.add_argument("--stall", type=float, default=90.0, help="seconds that make a stall")
    parser.add_argument("--max-downtime", type=int, help="ms, for every move (default: policy)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lab", default="soak", help="lab name (two soaks need two)")
    parser.add_argument("--json", help="write the moves and the report here")
    parser.add_argument("--logs", default=".", help="where a stall's agent logs go")
    args = parser.parse_args()
    M.NOVA_TIMEOUT = args.stall  # `nova --wait` is given up on (and reported) after this
    rng = random.Random(args.seed)
    dirty_mib = (32 if args.memory == 128 else 256) if args.dirty_rate else 0
    name = f"{args.memory}MiB-dirty{args.dirty_rate}"
    config = M.Config(
        name,
        args.memory,
        dirty_rate=args.dirty_rate,
        dirty_mib=dirty_mib,
        max_downtime_ms=args.max_downtime,
    )
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.migration_soak " + " ".join(sys.argv[1:]),
        "machine": M.machine(),
        "code": M.code_version(),
    }
    guest = guest_mod.build()
    with tempfile.TemporaryDirectory(prefix="novacron-soak-") as tmp, Lab(args.lab, 2) as lab:
        agents = LabAgents(lab, seeds=True, inventory_interval=AgentConfig().inventory_interval)
        agents.start_all()
        bench = M.Bench(lab, agents, guest, Path(tmp))
        try:
            agents.wait_for_full_mesh(timeout=60)
            M.boot(bench, config)
            for number in range(args.moves):
                move(bench, config, number, Path(args.logs))
                if args.json and number % 10 == 9:
                    write(args.json, result, bench.results)
                time.sleep(rng.uniform(0, args.pause))
        finally:
            agents.stop_all()
            M.cleanup(bench)
    print(json.dumps(write(args.json, result, bench.results), indent=1))


def write(path: str | None, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = report(rows)
    if path:
        Path(path).write_text(json.dumps(result | {"report": summary, "moves": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
