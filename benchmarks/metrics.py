"""Benchmark: what Prometheus metrics cost the agent.

1. Idle footprint, metrics on against off, same run, same mesh: N agents on
   loopback (libvirt's test driver), every other one started with
   `--no-metrics` (which never imports the metrics module); the agents with
   metrics are scraped over their socket every second (Prometheus' default is
   every 15 s: this is the harsher case). After the mesh converged, RSS and USS
   at the end of an idle window and CPU share over it, per agent.
2. Scrape time with 100 VMs: one agent whose libvirt (the test driver, from a
   node file) runs 100 domains; sequential GET /metrics over the API socket, a
   new connection each, against GET /v1/status (a JSON route of the same server)
   as the baseline of the same run, the two requests in turn.
3. The serializer alone, in process: the 100 VMs' families through
   `agent.metrics.exposition` against prometheus_client's `generate_latest`
   (same bytes; interleaved rounds).

Run: `.venv/bin/python -m benchmarks.metrics --agents 6 --idle 30 --scrapes 300
--json benchmarks/results/metrics.json` (no root needed).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import generate_latest

from novacron.agent.metrics import exposition, vm_families
from novacron.agent.prometheus import CollectorRegistry, Metric
from novacron.protocol.messages import NodeRecord, VmSummary
from tests.hostile import AgentProcess, Mesh, wait_until

MIB = 1024 * 1024


def get(agent: AgentProcess, path: str) -> bytes:
    """One GET over the agent's socket on a new connection; the raw answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket_file)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {data[:200]!r}")
    return data


def footprint(root: Path, count: int, idle: float) -> dict[str, Any]:
    mesh = Mesh(root)
    try:
        on: list[AgentProcess] = []
        off: list[AgentProcess] = []
        for i in range(1, count + 1):
            metrics = i % 2 == 1
            agent = mesh.start_agent(f"n{i}", [] if metrics else ["--no-metrics"])
            (on if metrics else off).append(agent)
        mesh.wait_converged(timeout=120)
        stop = threading.Event()
        scraper = threading.Thread(target=_scrape_every_second, args=(on, stop), daemon=True)
        scraper.start()
        try:
            usage = _idle_usage([a.proc.pid for a in on + off], idle)
        finally:
            stop.set()
            scraper.join()
    finally:
        mesh.stop()
    pids_on = {a.proc.pid for a in on}
    split: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    for pid, row in usage.items():
        side = split["on" if pid in pids_on else "off"]
        for key, value in row.items():
            side.setdefault(key, []).append(value)
    medians = {s: {k: statistics.median(v) for k, v in rows.items()} for s, rows in split.items()}
    return {
        "agents": count,
        "idle_seconds": idle,
        "per_agent": split,
        "median": medians,
        "rss_ratio_on_off": round(medians["on"]["rss_mib"] / medians["off"]["rss_mib"], 3),
        "rss_difference_mib": round(medians["on"]["rss_mib"] - medians["off"]["rss_mib"], 2),
    }


def _scrape_every_second(agents: list[AgentProcess], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for agent in agents:
            get(agent, "/metrics")


def _idle_usage(pids: list[int], idle: float) -> dict[int, dict[str, float]]:
    processes = {pid: psutil.Process(pid) for pid in pids}
    before = {pid: p.cpu_times() for pid, p in processes.items()}
    time.sleep(idle)
    usage = {}
    for pid, process in processes.items():
        after = process.cpu_times()
        cpu = (after.user + after.system - before[pid].user - before[pid].system) / idle
        memory = process.memory_full_info()
        usage[pid] = {
            "rss_mib": round(memory.rss / MIB, 2),
            "uss_mib": round(memory.uss / MIB, 2),
            "cpu_percent": round(100 * cpu, 2),
        }
    return usage


def node_file(directory: Path, vms: int) -> Path:
    """A libvirt test-driver node with `vms` running domains."""
    domains = "".join(
        f"<domain type='test'><name>vm-{i:03d}</name>"
        f"<uuid>00000000-0000-0000-0000-{i:012d}</uuid><memory>262144</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        for i in range(vms)
    )
    cpu = (
        "<cpu><nodes>1</nodes><sockets>1</sockets><cores>64</cores><threads>1</threads>"
        "<active>64</active><mhz>2000</mhz><model>x86_64</model></cpu>"
    )
    path = directory / "node.xml"
    path.write_text(f"<node>{cpu}<memory>268435456</memory>{domains}</node>")
    return path


def scrape_time(root: Path, vms: int, scrapes: int) -> dict[str, Any]:
    mesh = Mesh(root)
    try:
        uri = f"test://{node_file(root, vms)}"
        agent = mesh.start_agent("n1", ["--libvirt-uri", uri])
        running = f'novacron_vmis{{phase="running"}} {float(vms)}'.encode()
        wait_until(lambda: running in get(agent, "/metrics"), 60, f"{vms} VMs in the exposition")
        size = len(get(agent, "/metrics"))
        timings = _timed(agent, {"metrics": "/metrics", "status": "/v1/status"}, scrapes)
    finally:
        mesh.stop()
    summary = {path: _summary(ms) for path, ms in timings.items()}
    return {
        "vms": vms,
        "scrapes": scrapes,
        "exposition_bytes": size,
        "ms": summary,
        "median_ratio_metrics_status": round(
            summary["metrics"]["median"] / summary["status"]["median"], 2
        ),
    }


def serializer(vms: int, rounds: int) -> dict[str, Any]:
    records = NodeRecord(
        "n1",
        1,
        vms=tuple(
            VmSummary(f"vm-{i:03d}", state="running", vcpus=1, memory_mib=256, cpu_load=0.1)
            for i in range(vms)
        ),
    )

    class Families:
        def collect(self) -> Iterator[Metric]:
            yield from vm_families(records)

    registry = CollectorRegistry()
    registry.register(Families())
    assert exposition(registry) == generate_latest(registry)  # type: ignore[arg-type]
    spent: dict[str, list[float]] = {"exposition": [], "generate_latest": []}
    for _ in range(rounds):
        writers: tuple[tuple[str, Any], ...] = (
            ("exposition", exposition),
            ("generate_latest", generate_latest),
        )
        for name, write in writers:
            started = time.perf_counter()
            write(registry)
            spent[name].append(1000 * (time.perf_counter() - started))
    summary = {name: _summary(ms) for name, ms in spent.items()}
    ratio = summary["exposition"]["median"] / summary["generate_latest"]["median"]
    return {"vms": vms, "rounds": rounds, "ms": summary, "median_ratio": round(ratio, 2)}


def _timed(agent: AgentProcess, paths: dict[str, str], count: int) -> dict[str, list[float]]:
    """`count` GETs of each path, interleaved (one of each in turn) so that a burst of
    the machine's other work falls on both alike: milliseconds each, by name."""
    spent: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(count):
        for name, path in paths.items():
            started = time.perf_counter()
            get(agent, path)
            spent[name].append(1000 * (time.perf_counter() - started))
    return spent


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "max": round(ordered[-1], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=6, help="half with metrics, half without")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idling measured")
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(),
            "footprint": footprint(Path(tmp) / "idle", args.agents, args.idle),
            "scrape": scrape_time(Path(tmp) / "scrape", args.vms, args.scrapes),
            "serializer": serializer(args.vms, args.scrapes),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
