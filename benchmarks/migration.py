"""Benchmark: NovaCron live migration against raw `virsh migrate --live --p2p`, in the lab.

Two lab hosts, each with its own libvirtd, run `nova-agent`. One TCG test
guest at a time (simulations/guest.py) boots on h1 and then moves back and
forth between h1 and h2, NovaCron and raw virsh taking turns (interleaved,
the order swapped every run), so both see the same guest in the same state
and the same noise on the shared machine. Per migration:

- wall time of the whole command: `nova --json vm migrate VM --to HOST --wait`
  run inside the source host (CLI start, proposal, reservation, libvirt job,
  commit, and the CLI's held wait for the end), and `virsh migrate --live --p2p
  --persistent --undefinesource VM qemu+tcp://TARGET/system --migrateuri
  tcp://TARGET` (the peer and migration URIs the agent uses);
- for NovaCron also the agent's own elapsed time (proposal to commit);
- from libvirt's completed-job statistics on the target, the same source for
  both: job time, downtime, data moved;
- the guest's heartbeat on the target continues from the source's last value,
  without gaps, panics or a reboot.

Settings are the same for both: the max downtime is set on the domain before
each virsh run to the value NovaCron uses (its policy's default unless the
config overrides it), the bandwidth cap where a config sets one, and the
flags NovaCron's policy sets on every job (`--auto-converge --postcopy`:
post-copy enabled; NovaCron starts it only after its completion timeout,
virsh never unless a config adds `--postcopy-after-precopy`).

Ratios: per config, medians of each method, and the paired ratios of the two
methods of the same run (mean with a 95% bootstrap interval), which cancel
most of what a shared machine does to both.

Run as root:
`.venv/bin/python -m benchmarks.migration --runs 3 --json benchmarks/results/migration.json`
(`--quick`: one run per config, idle 128 MiB only for the downtime study;
`--only NAME,...` runs some configs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from novacron.agent.config import AgentConfig
from novacron.agent.core.migration.policy import MigrationPolicy, switchover_limit_ms
from novacron.agent.hypervisor import DEFAULT_CONSOLE_DIR
from novacron.agent.locator import PEER_URI
from novacron.agent.vmspec import VmSpec, domain_xml
from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents

VIRSH = ("virsh", "-c", "qemu:///system")
# NovaCron's default policy enables auto-converge and post-copy on every job
# (post-copy is only *started* when the completion timeout passes); virsh gets
# the same flags, so that both runs differ only in who drives the job.
SAME_FLAGS = (
    *(("--auto-converge",) if MigrationPolicy().auto_converge else ()),
    *(("--postcopy",) if MigrationPolicy().post_copy else ()),
)
MIB = 1024 * 1024
VM = "bench-vm"
SETTLE_BEATS = 15  # heartbeats (1.5 s) the guest must show on the target after a migration
LANDED_HOLD_WAIT = 45.0  # seconds to retry a target's "already arriving" refusal
NOVA_TIMEOUT = 600.0  # seconds before a `nova vm migrate --wait` is given up on

# Inside a lab host: the completed job's statistics of `VM` as JSON (kept for a second read).
JOB_STATS = """
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
dom = libvirt.open("qemu:///system").lookupByName(sys.argv[1])
completed = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
print(json.dumps(dom.jobStats(completed if sys.argv[2] == "completed" else 0)))
"""


@dataclass(frozen=True)
class Config:
    """One row of the benchmark: a guest, a workload, the migration settings."""

    name: str
    memory_mib: int
    dirty_rate: float = 0.0  # MiB/s the guest dirties (non-zero data)
    dirty_mib: int = 0  # working set it dirties over
    bandwidth: int = 0  # MiB/s cap for both; 0 = none (libvirt's default)
    max_downtime_ms: int | None = None  # None: NovaCron's policy default (set on virsh too)
    runs: int = 3
    virsh_timeout: float = 180.0  # seconds before a virsh run is aborted (domjobabort)
    virsh_extra: tuple[str, ...] = ()  # extra `virsh migrate` flags, after SAME_FLAGS
    same_flags: bool = True  # give virsh NovaCron's policy flags (False: plain pre-copy)
    virsh_variants: tuple[tuple[str, ...], ...] = ()  # more virsh runs with these flags
    nova: bool = True  # run NovaCron too
    note: str = ""

    @property
    def downtime_ms(self) -> int:
        # What NovaCron's policy picks for this guest (it measures the dirty rate itself;
        # the row's `max_downtime_ms` says what it picked), given to virsh as well.
        policy = MigrationPolicy(self.bandwidth, self.max_downtime_ms)
        return switchover_limit_ms(policy, [self.dirty_rate])


def matrix(runs: int, quick: bool) -> list[Config]:
    """The goals' guests (size by dirty rate), then the downtime and escalation studies."""
    rows: list[Config] = []
    for memory in (128, 512):
        for rate in (0, 20, 100):
            runs_here = max(runs, 5) if (memory, rate) == (128, 0) and not quick else runs
            rows.append(
                Config(
                    f"{memory}MiB-dirty{rate}",
                    memory,
                    dirty_rate=rate,
                    dirty_mib=(32 if memory == 128 else 256) if rate else 0,
                    runs=runs_here,
                )
            )
    rows.append(
        Config(
            "128MiB-idle-downtime50",
            128,
            max_downtime_ms=50,
            runs=2 if quick else 10,
            note="max downtime 50 ms, no bandwidth cap: is a lower default reliable?",
        )
    )
    rows.append(
        Config(
            "128MiB-idle-downtime50-cap8",
            128,
            max_downtime_ms=50,
            bandwidth=8,
            runs=1 if quick else 3,
            note="the combination an earlier session saw panic TCG guests",
        )
    )
    rows.append(
        Config(
            "128MiB-idle-cap8",
            128,
            bandwidth=8,
            runs=1 if quick else 3,
            note="control: the same cap at the default max downtime",
        )
    )
    rows.append(
        Config(
            "512MiB-dirty100-cap30",
            512,
            dirty_rate=100,
            dirty_mib=256,
            bandwidth=30,
            runs=1,
            virsh_timeout=60.0,
            same_flags=False,
            virsh_variants=(("--postcopy", "--postcopy-after-precopy"),),
            note="dirties faster than the cap: plain pre-copy never converges",
        )
    )
    return rows


@dataclass
class Bench:
    """The lab, its agents, the guest and where the VM runs now."""

    lab: Lab
    agents: LabAgents
    guest: Guest
    workdir: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    where: int = 0  # index of the host the VM runs on

    @property
    def hosts(self) -> tuple[LabHost, LabHost]:
        return self.lab.hosts[0], self.lab.hosts[1]


def virsh(host: LabHost, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return host.run([*VIRSH, *args], capture_output=True, text=True, timeout=timeout)


def console(host: LabHost) -> bytes:
    path = host.path(DEFAULT_CONSOLE_DIR / f"{VM}.console.log")
    try:
        return path.read_bytes()
    except OSError:
        return b""


def poll(probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def vm_rows(bench: Bench, observer: LabHost) -> list[tuple[str, str]]:
    answer = bench.agents.nova(observer, "vm", "list")
    return sorted((r["host"], r["state"]) for r in answer.get("vms", []) if r["name"] == VM)


def agents_agree(bench: Bench, host: LabHost, timeout: float = 30) -> bool:
    """Wait until both agents list the VM running on `host` only."""
    want = [(host.name, "running")]
    return all(
        poll(partial(vm_rows, bench, observer), lambda rows: rows == want, timeout) == want
        for observer in bench.hosts
    )


def boot(bench: Bench, config: Config) -> None:
    """Define and start the guest on h1; wait for its heartbeat (and dirtying)."""
    h1 = bench.hosts[0]
    cleanup(bench)
    spec = VmSpec(
        VM,
        1,
        config.memory_mib,
        bench.guest.kernel,
        bench.guest.initrd,
        bench.guest.cmdline(dirty_mib=config.dirty_mib, dirty_rate=config.dirty_rate),
    )
    xml = domain_xml(
        spec,
        domain_type="qemu",
        overlays=[],
        console_log=DEFAULT_CONSOLE_DIR / f"{VM}.console.log",
    )
    path = bench.workdir / f"{VM}.xml"
    path.write_text(xml)
    for step in (("define", str(path)), ("start", VM)):
        done = virsh(h1, *step)
        if done.returncode != 0:
            raise RuntimeError(f"virsh {step[0]}: {done.stderr.strip()}")
    bench.where = 0
    beats = poll(lambda: guest_mod.heartbeats(console(h1)), lambda b: bool(b) and b[-1] > 10, 60)
    if not beats or beats[-1] <= 10:
        raise RuntimeError(f"the guest shows no heartbeat on {h1.name}")
    if config.dirty_rate:
        rates = poll(lambda: guest_mod.dirty_rates(console(h1)), lambda r: len(r) >= 2, 30)
        if len(rates) < 2:
            raise RuntimeError("the guest does not report dirtying memory")


def cleanup(bench: Bench) -> None:
    for host in bench.hosts:
        virsh(host, "destroy", VM)
        virsh(host, "undefine", VM)


def completed_job(host: LabHost) -> dict[str, Any]:
    """libvirt's completed-job statistics of the VM on `host` (its incoming migration)."""
    done = host.run(
        [str(BIN / "python"), "-c", JOB_STATS, VM, "completed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return {}
    stats: dict[str, Any] = json.loads(done.stdout)
    return stats


def heartbeat_check(source: LabHost, target: LabHost) -> tuple[bool, str]:
    """Whether the guest kept running across the move: beats continue, no gap, no reboot."""
    before = guest_mod.heartbeats(console(source))
    after = poll(
        lambda: guest_mod.heartbeats(console(target)),
        lambda b: len(b) >= SETTLE_BEATS,
        30,
    )
    log = console(target)
    if b"Kernel panic" in log or b"Oops" in log or b"Linux version" in log:
        return False, "panic or reboot on the target: " + log[-300:].decode(errors="replace")
    if not after:
        return False, "no heartbeat on the target"
    last = before[-1] if before else -1
    if not last < after[0] <= last + 3:
        return False, f"heartbeat jumped from {last} on the source to {after[0]} on the target"
    if after != list(range(after[0], after[0] + len(after))):
        return False, "gaps in the heartbeat on the target"
    return True, f"..{last} | {after[0]}..{after[-1]}"


def migrate_nova(bench: Bench, config: Config, source: LabHost, target: LabHost) -> dict[str, Any]:
    if not agents_agree(bench, source):
        return {"ok": False, "note": "agents never agreed the VM runs on the source"}
    args = ["vm", "migrate", VM, "--to", target.name, "--wait"]
    if config.bandwidth:
        args += ["--bandwidth", str(config.bandwidth)]
    if config.max_downtime_ms is not None:
        args += ["--max-downtime", str(config.max_downtime_ms)]
    # The target holds a landed reservation until its record shows the VM, or
    # for `landed_hold` (30 s) when the VM left again before that (here: virsh
    # took it back); it refuses the same VM meanwhile. Wait that out, untimed.
    held_since = time.monotonic()
    while True:
        started = time.monotonic()
        done = source.run(
            [str(BIN / "nova"), "--json", *args],
            capture_output=True,
            text=True,
            timeout=NOVA_TIMEOUT,
        )
        wall = time.monotonic() - started
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            answer = {"ok": False, "error": done.stderr.strip()}
        refused = "already arriving" in str(answer.get("error", ""))
        if not refused or time.monotonic() - held_since > LANDED_HOLD_WAIT:
            break
        time.sleep(2)
    migration = answer.get("migration") or {}
    return {
        "waited_for_landed_hold_s": round(started - held_since, 1),
        "ok": done.returncode == 0 and migration.get("outcome") == "committed",
        "wall_s": round(wall, 3),
        "agent_elapsed_s": migration.get("elapsed_s"),
        "escalation": migration.get("escalation"),
        "outcome": migration.get("outcome"),
        "reason": migration.get("reason") or answer.get("error"),
        "max_downtime_ms": migration.get("max_downtime_ms"),
    }


def migrate_virsh(
    bench: Bench, config: Config, source: LabHost, target: LabHost, extra: Sequence[str]
) -> dict[str, Any]:
    # Start, as NovaCron does, once both agents have taken in the last move (untimed).
    if not agents_agree(bench, source):
        return {"ok": False, "note": "agents never agreed the VM runs on the source"}
    virsh(source, "migrate-setmaxdowntime", VM, str(config.downtime_ms))
    cmd = [
        *VIRSH,
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        *extra,
        VM,
        PEER_URI.format(host=target.address),
        "--migrateuri",
        f"tcp://{target.address}",
    ]
    if config.bandwidth:
        cmd += ["--bandwidth", str(config.bandwidth)]
    started = time.monotonic()
    proc = source.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timed_out = False
    try:
        _out, err = proc.communicate(timeout=config.virsh_timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stats = source.run(
            [str(BIN / "python"), "-c", JOB_STATS, VM, "current"],
            capture_output=True,
            text=True,
        )
        virsh(source, "domjobabort", VM)
        _out, err = proc.communicate(timeout=120)
    wall = time.monotonic() - started
    row: dict[str, Any] = {
        "ok": proc.returncode == 0 and not timed_out,
        "wall_s": round(wall, 3),
        "reason": err.strip() or None,
    }
    if timed_out:
        row["reason"] = f"did not complete in {config.virsh_timeout:g} s; domjobabort"
        with contextlib.suppress(ValueError):
            row["job_at_abort"] = summarise_job(json.loads(stats.stdout), completed=False)
    return row


def summarise_job(stats: dict[str, Any], completed: bool = True) -> dict[str, Any]:
    """The figures of a job; of a running one (`completed` False) `downtime` is expected."""
    data = stats.get("data_processed", stats.get("memory_processed", 0))
    return {
        "job_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime") if completed else None,
        "data_mib": round(int(data) / MIB, 1) if data else None,
        "memory_mib": round(int(stats.get("memory_processed", 0)) / MIB, 1),
        "iterations": stats.get("memory_iteration"),
        "expected_downtime_ms": None if completed else stats.get("downtime"),
        "postcopy_requests": stats.get("memory_postcopy_requests"),
        "dirty_rate_mib_s": round(
            int(stats.get("memory_dirty_rate", 0)) * int(stats.get("memory_page_size", 4096)) / MIB,
            1,
        ),
    }


def one_migration(bench: Bench, config: Config, method: str, run: int) -> dict[str, Any]:
    source = bench.hosts[bench.where]
    target = bench.hosts[1 - bench.where]
    rates = guest_mod.dirty_rates(console(source))
    if method == "novacron":
        row = migrate_nova(bench, config, source, target)
    else:
        variant = config.virsh_extra if method == "virsh" else tuple(method.split()[1:])
        same = SAME_FLAGS if config.same_flags else ()
        extra = same + tuple(flag for flag in variant if flag not in same)
        row = migrate_virsh(bench, config, source, target, extra)
    landed = target if row["ok"] else source
    if row["ok"]:
        row |= summarise_job(completed_job(target))
        row["heartbeat_ok"], row["heartbeat"] = heartbeat_check(source, target)
        bench.where = 1 - bench.where
    else:
        active = virsh(target, "domstate", VM).stdout.strip()
        if active == "running":  # e.g. NovaCron escalated but reported a failure
            bench.where, landed = 1 - bench.where, target
    row |= {
        "config": config.name,
        "method": method,
        "run": run,
        "source": source.name,
        "target": target.name,
        "landed_on": landed.name,
        # the guest reports every 5 s: a guest that arrived moments ago has not yet
        "guest_dirty_mib_s": round(statistics.median(rates[-5:]), 1) if rates else None,
    }
    bench.results.append(row)
    print(format_row(row), flush=True)
    return row


def format_row(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str = "{:.2f}") -> str:
        value = row.get(key)
        return fmt.format(value) if isinstance(value, int | float) else "-"

    status = "ok" if row["ok"] else f"FAILED ({row.get('reason')})"
    hb = "" if row.get("heartbeat_ok", True) else f" HEARTBEAT: {row.get('heartbeat')}"
    esc = f" escalation: {row['escalation']}" if row.get("escalation") else ""
    return (
        f"{row['config']:<28} {row['method']:<40} #{row['run']} {row['source']}->{row['target']}"
        f" wall {num('wall_s')} s agent {num('agent_elapsed_s')} s job {num('job_ms', '{}')} ms"
        f" downtime {num('downtime_ms', '{}')} ms data {num('data_mib', '{}')} MiB"
        f" guest dirty {num('guest_dirty_mib_s', '{}')} MiB/s {status}{hb}{esc}"
    )


def run_config(bench: Bench, config: Config) -> None:
    methods = ["virsh", *(" ".join(("virsh", *v)) for v in config.virsh_variants)]
    if config.nova:
        methods.insert(0, "novacron")
    print(f"== {config.name}: {config.note}".rstrip(": "), flush=True)
    boot(bench, config)
    try:
        for run in range(config.runs):
            order = methods if run % 2 == 0 else methods[::-1]
            for method in order:
                try:
                    one_migration(bench, config, method, run)
                except (subprocess.TimeoutExpired, RuntimeError) as exc:
                    row = {"config": config.name, "method": method, "run": run, "ok": False}
                    row["reason"] = str(exc)
                    bench.results.append(row)
                    print(f"{config.name} {method} #{run}: {exc}", flush=True)
                row = bench.results[-1]
                if row.get("heartbeat_ok") is False:
                    print(f"{config.name}: the guest broke; rebooting it", flush=True)
                    boot(bench, config)
                elif virsh(bench.hosts[bench.where], "domstate", VM).stdout.strip() != "running":
                    print(f"{config.name}: the guest is gone; rebooting it", flush=True)
                    boot(bench, config)
    finally:
        cleanup(bench)


def median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 3) if numbers else None


def summary(results: list[dict[str, Any]], configs: list[Config]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        methods = sorted({r["method"] for r in results if r["config"] == config.name})
        per: dict[str, dict[str, Any]] = {}
        for method in methods:
            mine = [r for r in results if r["config"] == config.name and r["method"] == method]
            good = [r for r in mine if r["ok"]]
            per[method] = {
                "runs": len(mine),
                "completed": len(good),
                "heartbeat_ok": sum(1 for r in good if r.get("heartbeat_ok")),
                "wall_s": median([r.get("wall_s") for r in good]),
                "agent_elapsed_s": median([r.get("agent_elapsed_s") for r in good]),
                "job_ms": median([r.get("job_ms") for r in good]),
                "downtime_ms": median([r.get("downtime_ms") for r in good]),
                "downtime_ms_all": [r.get("downtime_ms") for r in good],
                "data_mib": median([r.get("data_mib") for r in good]),
                "guest_dirty_mib_s": median([r.get("guest_dirty_mib_s") for r in mine]),
            }
        row: dict[str, Any] = {"config": config.name, "settings": config_settings(config)}
        row["methods"] = per
        nova, raw = per.get("novacron", {}), per.get("virsh", {})
        if nova.get("wall_s") and raw.get("wall_s"):
            row["ratio_wall"] = round(nova["wall_s"] / raw["wall_s"], 3)
            if nova.get("agent_elapsed_s"):
                row["ratio_agent"] = round(nova["agent_elapsed_s"] / raw["wall_s"], 3)
        if nova.get("job_ms") and raw.get("job_ms"):
            row["ratio_job"] = round(nova["job_ms"] / raw["job_ms"], 3)
        mine = [r for r in results if r["config"] == config.name]
        for key, numerator in (("paired_agent", "agent_elapsed_s"), ("paired_wall", "wall_s")):
            paired = paired_ratios(mine, numerator)
            if paired:
                row[key] = ratio_summary(paired)
        rows.append(row)
    return rows


def paired_ratios(runs: list[dict[str, Any]], numerator: str) -> list[float]:
    """Per run index: NovaCron's `numerator` over virsh's wall time of the same run.

    The two methods of one run follow each other within seconds, so a ratio
    of the pair cancels most of what the shared machine does to both.
    """
    by_run: dict[int, dict[str, dict[str, Any]]] = {}
    for row in runs:
        if row.get("ok") and row["method"] in ("novacron", "virsh"):
            by_run.setdefault(row["run"], {})[row["method"]] = row
    ratios = []
    for pair in by_run.values():
        nova, raw = pair.get("novacron", {}), pair.get("virsh", {})
        if isinstance(nova.get(numerator), int | float) and raw.get("wall_s"):
            ratios.append(nova[numerator] / raw["wall_s"])
    return ratios


def ratio_summary(ratios: list[float], resamples: int = 4000) -> dict[str, Any]:
    """Median and mean of paired ratios, with a 95% bootstrap interval of the mean."""
    rng = random.Random(0)  # the interval is the same for the same runs
    means = sorted(statistics.fmean(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {
        "n": len(ratios),
        "median": round(statistics.median(ratios), 3),
        "mean": round(statistics.fmean(ratios), 3),
        "mean_ci95": [round(means[int(q * resamples)], 3) for q in (0.025, 0.975)],
    }


def config_settings(config: Config) -> dict[str, Any]:
    return {
        "memory_mib": config.memory_mib,
        "dirty_rate_mib_s": config.dirty_rate,
        "dirty_mib": config.dirty_mib,
        "bandwidth_mib_s": config.bandwidth,
        "max_downtime_ms": config.downtime_ms,
        "max_downtime_source": "override" if config.max_downtime_ms else "policy default",
        "virsh_timeout_s": config.virsh_timeout,
        "virsh_flags": [*(SAME_FLAGS if config.same_flags else ()), *config.virsh_extra],
        "note": config.note,
    }


def machine() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "host": platform.node(),
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "qemu": first_line(["qemu-system-x86_64", "--version"]),
        "libvirt": first_line(["libvirtd", "--version"]),
        "python": platform.python_version(),
    }


def code_version() -> dict[str, str]:
    """Which NovaCron code ran: its folder, and the commit (NOVACRON_COMMIT or git's HEAD)."""
    import novacron.agent

    folder = str(Path(next(iter(novacron.agent.__path__))).resolve().parent)
    done = subprocess.run(
        ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True
    )
    commit = os.environ.get("NOVACRON_COMMIT") or done.stdout.strip() or "?"
    return {"folder": folder, "commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per config and method")
    parser.add_argument("--quick", action="store_true", help="one run per config")
    parser.add_argument("--only", help="comma-separated config names")
    parser.add_argument("--json", help="write results here too")
    args = parser.parse_args()
    configs = matrix(1 if args.quick else args.runs, args.quick)
    if args.only:
        wanted = args.only.split(",")
        configs = [c for c in configs if c.name in wanted]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.migration " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "code": code_version(),
        "policy_default": {
            "max_downtime_ms_idle": switchover_limit_ms(MigrationPolicy(), [0.0]),
            "max_downtime_ms": switchover_limit_ms(MigrationPolicy(), []),
            "bandwidth_mib_s": MigrationPolicy().bandwidth_mib_s,
        },
    }
    print(json.dumps(result["machine"]))
    guest = guest_mod.build()
    with tempfile.TemporaryDirectory(prefix="novacron-bench-") as tmp, Lab("migbench", 2) as lab:
        # The agent as shipped: its default inventory interval (libvirt events do the rest).
        agents = LabAgents(lab, seeds=True, inventory_interval=AgentConfig().inventory_interval)
        agents.start_all()
        bench = Bench(lab, agents, guest, Path(tmp))
        try:
            agents.wait_for_full_mesh(timeout=60)
            for config in configs:
                run_config(bench, config)
                if args.json:  # keep what we have if a later config breaks
                    write(args.json, result, bench.results, configs)
        finally:
            agents.stop_all()
    rows = write(args.json, result, bench.results, configs)
    print_table(rows)


def write(
    path: str | None, result: dict[str, Any], runs: list[dict[str, Any]], configs: list[Config]
) -> list[dict[str, Any]]:
    rows = summary(runs, configs)
    if path:
        Path(path).write_text(json.dumps(result | {"summary": rows, "runs": runs}, indent=1))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'config':<28} {'method':<40} {'ok':>5} {'wall s':>7} {'agent s':>7} {'job ms':>7}"
        f" {'down ms':>7} {'MiB':>7}"
    )
    for row in rows:
        for method, m in row["methods"].items():
            print(
                f"{row['config']:<28} {method:<40} {m['completed']:>2}/{m['runs']:<2}"
                f" {m['wall_s'] or '-':>7} {m['agent_elapsed_s'] or '-':>7} {m['job_ms'] or '-':>7}"
                f" {m['downtime_ms'] or '-':>7} {m['data_mib'] or '-':>7}"
            )
        if "ratio_wall" in row:
            print(
                f"{'':<28} NovaCron/virsh: wall {row['ratio_wall']},"
                f" agent {row.get('ratio_agent')}, job {row.get('ratio_job')};"
                f" paired agent {row.get('paired_agent')}, paired wall {row.get('paired_wall')}"
            )


if __name__ == "__main__":
    main()
