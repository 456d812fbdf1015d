"""An introduction-port flood against a three-host lab: does the flooded agent stay whole?

Lab hosts h1..h3 run `nova-agent` as shipped (libvirt's test driver: the flood
is about the agent, not its VMs). A fourth lab host, h4, runs no agent: it is
the stranger's machine, with `--addresses` addresses of its own on its cable
(198.18.9.1 onwards). From h4 one process floods h1's introduction port for
`--seconds` as fast as it can (`simulations/stranger.py`: forged certificates
of this cluster's CA, each with its own signature, 128 connections in flight,
each from the next address).

Measured in the same run, during the flood and in the baseline before it:

- false suspicions of h1: MemberSuspected or MemberFailed about h1 in h2's and
  h3's logs, and h1's state in `nova members` on h2 and h3 (every 5 s);
- h1's agent: resident memory (every 0.5 s; growth over the baseline's median),
  CPU share, and the lines it logged;
- its API: the round trip of GET /v1/status on h1's socket (a probe inside h1,
  every 0.25 s) and the wall time of `nova status` on h1 (the CLI as a user
  runs it, with its interpreter start-up, every 5 s);
- honest introductions: a newcomer's certificate introduced to h1 from h2
  every 3 s (a probe inside h2);
- the stranger's own count: connections and introductions sent per second.

Run as root: `.venv/bin/python -m benchmarks.intro_flood --seconds 60 --json FILE`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from novacron.agent import client
from novacron.agent.identity import load_identity
from novacron.agent.introduction import IntroductionFailed, introduce
from novacron.agent.security import TrustStore
from novacron.protocol import keyfiles
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, GOSSIP_PORT, LabAgents, wait_for
from novacron.simulations.lab.naming import HOST_IFACE, LAB_NET
from novacron.simulations.stranger import Stranger, forged_certificates

REPO = Path(__file__).resolve().parent.parent
API_PROBE_EVERY = 0.25  # seconds between two GET /v1/status inside h1
INTRO_PROBE_EVERY = 3.0  # seconds between two honest introductions from h2
LOOK_EVERY = 5.0  # seconds between two `nova` runs (members on h2 and h3, status on h1)
SAMPLE_EVERY = 0.5  # seconds between two reads of h1's memory and CPU


def stranger_addresses(count: int) -> list[str]:
    """The stranger's addresses: 198.18.9.1 onwards, clear of the hosts' 198.18.0.x."""
    first = LAB_NET.network_address + 9 * 256 + 1
    return [str(first + i) for i in range(count)]


# --- the processes that run inside lab hosts ---------------------------------------------


def probe_api(seconds: float) -> None:
    """Inside h1: GET /v1/status every API_PROBE_EVERY; one JSON line per look."""
    until = time.monotonic() + seconds
    while (started := time.monotonic()) < until:
        try:
            client.get("/v1/status", timeout=10)
            row: dict[str, Any] = {"t": started, "s": time.monotonic() - started}
        except (client.AgentUnavailable, client.AgentRequestFailed) as exc:
            row = {"t": started, "error": str(exc)}
        print(json.dumps(row), flush=True)
        time.sleep(max(0.0, API_PROBE_EVERY - (time.monotonic() - started)))


def probe_introductions(target: str, ca: Path, cert: Path, key: Path, seconds: float) -> None:
    """Inside h2: introduce the newcomer to `target` every INTRO_PROBE_EVERY."""
    identity = load_identity(ca, cert, key, None, time.time())
    until = time.monotonic() + seconds
    while (started := time.monotonic()) < until:
        trust = TrustStore(identity.ca_public)
        try:
            asyncio.run(introduce(identity.certificate_bytes, trust, target, GOSSIP_PORT))
            row: dict[str, Any] = {"t": started, "s": time.monotonic() - started}
        except IntroductionFailed as exc:
            row = {"t": started, "error": str(exc)}
        print(json.dumps(row), flush=True)
        time.sleep(max(0.0, INTRO_PROBE_EVERY - (time.monotonic() - started)))


def flood(target: str, genuine: Path, addresses: int, seconds: float) -> None:
    """Inside h4: the stranger's flood; its count as one JSON line."""
    stranger = Stranger(target, GOSSIP_PORT, stranger_addresses(addresses))
    certificates = forged_certificates(keyfiles.read_certificate(genuine))
    started = time.monotonic()
    count = stranger.flood(certificates, seconds)
    print(json.dumps({**asdict(count), "s": time.monotonic() - started}), flush=True)


# --- the run -------------------------------------------------------------------------------


def _inside(host: LabHost, *args: str) -> subprocess.Popen[str]:
    """This module, run with `args` inside `host`, its JSON lines on stdout."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]  # nsenter resets the cwd
    return host.popen(command, stdout=subprocess.PIPE, text=True)


def _lines(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Sampler:
    """h1's agent's memory and CPU, and the `nova` looks, from the root namespace."""

    def __init__(self, agents: LabAgents, lab: Lab) -> None:
        self.agents = agents
        self.lab = lab
        self.process = psutil.Process(agents.processes["h1"].pid)
        self.memory: list[tuple[float, int]] = []  # (t, RSS bytes)
        self.cpu: list[tuple[float, float]] = []  # (t, CPU seconds so far)
        self.views: list[tuple[float, str, str]] = []  # (t, watcher, h1's state)
        self.status_s: list[tuple[float, float | None]] = []  # (t, `nova status` seconds)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample, daemon=True),
            threading.Thread(target=self._look, daemon=True),
        ]

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            now = time.monotonic()
            times = self.process.cpu_times()
            self.memory.append((now, self.process.memory_info().rss))
            self.cpu.append((now, times.user + times.system))

    def _look(self) -> None:
        h1, h2, h3 = self.lab.hosts[:3]
        while not self._stop.wait(LOOK_EVERY):
            started = time.monotonic()
            answer = self.agents.nova(h1, "status", timeout=60)
            took = time.monotonic() - started if "status" in answer else None
            self.status_s.append((started, took))
            for watcher in (h2, h3):
                state = self.agents.members(watcher).get("h1", {}).get("state", "unknown")
                self.views.append((time.monotonic(), watcher.name, str(state)))


def _in(rows: list[Any], start: float, end: float) -> list[Any]:
    return [row for row in rows if start <= row[0] < end]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 4),
        "p99": round(p99, 4),
        "max": round(ordered[-1], 4),
    }


def _suspicions_of_h1(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if re.search(r"msg=Member(Suspected|Failed)\b", line) and "node_id=h1" in line
    ]


def phase(
    sampler: Sampler,
    api: list[dict[str, Any]],
    intros: list[dict[str, Any]],
    start: float,
    end: float,
) -> dict[str, Any]:
    """The figures of one phase, [start, end) on the monotonic clock."""
    api_rows = [r for r in api if start <= r["t"] < end]
    intro_rows = [r for r in intros if start <= r["t"] < end]
    cpu = _in(sampler.cpu, start, end)
    cpu_share = (cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]) if len(cpu) > 1 else None
    memory = [rss for _, rss in _in(sampler.memory, start, end)]
    status = [s for _, s in _in(sampler.status_s, start, end)]
    return {
        "seconds": round(end - start, 1),
        "api_status_s": _percentiles([r["s"] for r in api_rows if "s" in r]),
        "api_errors": [r["error"] for r in api_rows if "error" in r][:5],
        "nova_status_s": _percentiles([s for s in status if s is not None]),
        "nova_status_failed": sum(1 for s in status if s is None),
        "h1_views": sorted({state for _, _, state in _in(sampler.views, start, end)}),
        "rss_median_mib": round(statistics.median(memory) / 2**20, 1) if memory else None,
        "rss_peak_mib": round(max(memory) / 2**20, 1) if memory else None,
        "cpu_share": round(cpu_share, 3) if cpu_share is not None else None,
        "introductions_ok": sum(1 for r in intro_rows if "s" in r),
        "introductions_failed": [r["error"] for r in intro_rows if "error" in r],
        "introduction_s": _percentiles([r["s"] for r in intro_rows if "s" in r]),
    }


def run(seconds: float, baseline: float, addresses: int) -> dict[str, Any]:
    with Lab(f"if{os.getpid()}", 4, libvirt=False) as lab:
        h1, h2, h3, h4 = lab.hosts
        agents = LabAgents(lab, seeds=True)
        ca = agents.create_ca()
        for host in (h1, h2, h3):
            agents.issue(host)
            agents.start(host)
        newcomer = agents.root / "newcomer"
        issue = ["ca", "issue", "newcomer", "--dir", str(ca), "--out", str(newcomer)]
        subprocess.run([str(BIN / "nova"), *issue], check=True, capture_output=True)
        for host in (h1, h2, h3):
            wait_for(partial(agents.states, host), _whole, timeout=120, interval=1.0)
        for address in stranger_addresses(addresses):
            subprocess.run(
                ["ip", "-n", h4.netns, "addr", "add", f"{address}/{LAB_NET.prefixlen}",
                 "dev", HOST_IFACE],
                check=True, capture_output=True,
            )  # fmt: skip
        total = baseline + seconds + 10
        api_probe = _inside(h1, "probe-api", "--seconds", str(total))
        intro_probe = _inside(
            h2, "probe-introductions", "--target", h1.address, "--ca", str(ca / "ca.pub"),
            "--cert", str(newcomer / "newcomer.crt"), "--key", str(newcomer / "newcomer.key"),
            "--seconds", str(total),
        )  # fmt: skip
        with Sampler(agents, lab) as sampler:
            begun = time.monotonic()
            lines_before = len(agents.log(h1).splitlines())
            time.sleep(baseline)
            flood_start = time.monotonic()
            lines_at_flood = len(agents.log(h1).splitlines())
            stranger = _inside(
                h4, "flood", "--target", h1.address, "--genuine", str(agents.host_dir(h2) /
                "h2.crt"), "--addresses", str(addresses), "--seconds", str(seconds),
            )  # fmt: skip
            counted = _lines(stranger, timeout=seconds + 120)
            flood_end = time.monotonic()
            lines_after_flood = len(agents.log(h1).splitlines())
            time.sleep(max(0.0, begun + total - time.monotonic()))
        api = _lines(api_probe, timeout=120)
        intros = _lines(intro_probe, timeout=120)
        status = agents.nova(h1, "status", timeout=60).get("status", {})
        suspicions = {h.name: _suspicions_of_h1(agents.log(h)) for h in (h2, h3)}
        base = phase(sampler, api, intros, begun, flood_start)
        during = phase(sampler, api, intros, flood_start, flood_end)
        grown = max((rss for _, rss in _in(sampler.memory, flood_start, flood_end)), default=0)
        base_rss = statistics.median(rss for _, rss in _in(sampler.memory, begun, flood_start))
        agents.stop_all()
    return {
        "stranger": counted[0] if counted else None,
        "baseline": base,
        "flood": during,
        "rss_growth_mib": round((grown - base_rss) / 2**20, 1),
        "false_suspicions": suspicions,
        "h1_log_lines": {
            "baseline": lines_at_flood - lines_before,
            "flood": lines_after_flood - lines_at_flood,
        },
        "h1_introductions": status.get("introductions"),
    }


def _whole(states: dict[str, str]) -> bool:
    return all(states.get(name) == "alive" for name in ("h1", "h2", "h3"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    sub.add_parser("probe-api").add_argument("--seconds", type=float, required=True)
    intro = sub.add_parser("probe-introductions")
    for name in ("--target", "--ca", "--cert", "--key"):
        intro.add_argument(name, required=True)
    intro.add_argument("--seconds", type=float, required=True)
    stranger = sub.add_parser("flood")
    stranger.add_argument("--target", required=True)
    stranger.add_argument("--genuine", required=True, help="a member's certificate to forge")
    stranger.add_argument("--addresses", type=int, required=True)
    stranger.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="of flood")
    parser.add_argument("--baseline", type=float, default=30.0, help="seconds before it")
    parser.add_argument("--addresses", type=int, default=254, help="the stranger's (1-254)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.what == "probe-api":
        probe_api(args.seconds)
        return 0
    if args.what == "probe-introductions":
        probe_introductions(
            args.target, Path(args.ca), Path(args.cert), Path(args.key), args.seconds
        )
        return 0
    if args.what == "flood":
        flood(args.target, Path(args.genuine), args.addresses, args.seconds)
        return 0
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = run(args.seconds, args.baseline, args.addresses)
    print(json.dumps(results, indent=1))
    if args.json:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        report = {
            "command": " ".join(["python -m benchmarks.intro_flood", *sys.argv[1:]]),
            "started": started,
            "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
            "commit": commit,
            **results,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
