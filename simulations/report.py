"""One run of one scenario, as a JSON-ready report and a human summary.

A report has two parts on purpose:

- everything except `runtime` is a pure function of the parameters: the same
  seed gives byte-identical JSON (floats are rounded, dicts sorted, nothing
  depends on PYTHONHASHSEED);
- `runtime` holds what the machine measured (wall-clock seconds, RSS), which
  differs from run to run; `--no-runtime` leaves it out so files can be diffed.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

from .cluster import Cluster
from .metrics import rounded, summary
from .scenarios import SCENARIOS, Params, Results, build

MIB = 1024 * 1024


def rss() -> int:
    """Resident set size of this process, in bytes."""
    return int(psutil.Process().memory_info().rss)


def run(
    name: str,
    params: Params,
    *,
    with_runtime: bool = True,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 30.0,
) -> dict[str, Any]:
    """Build a converged cluster, run scenario `name` on it, and report; `progress`
    gets a line about every `progress_every` seconds of wall clock."""
    scenario = SCENARIOS[name]
    began, rss_before = time.perf_counter(), rss()
    cluster = build(params)
    built, rss_built = time.perf_counter(), rss()
    ticks = [0] if progress is None else report_progress(cluster, progress, progress_every, began)
    results = scenario(cluster, params)
    finished, rss_after = time.perf_counter(), rss()
    report: dict[str, Any] = {
        "scenario": name,
        "params": dataclasses.asdict(params),
        "membership": dataclasses.asdict(cluster.settings.membership),
        "results": results,
        "traffic_total": traffic_total(cluster),
        "simulation": simulation_stats(cluster, not_counted=ticks[0]),
    }
    if with_runtime:
        nodes = max(1, params.nodes)
        report["runtime"] = {
            "wall_clock_s": round(finished - began, 2),
            "build_s": round(built - began, 2),
            "run_s": round(finished - built, 2),
            "simulated_s": rounded(cluster.engine.now, 2),
            "rss_mib": round(rss_after / MIB, 1),
            "memory_per_node_kib_after_build": round((rss_built - rss_before) / nodes / 1024, 2),
            "memory_per_node_kib_after_run": round((rss_after - rss_before) / nodes / 1024, 2),
            "python": platform.python_version(),
        }
    return report


def report_progress(
    cluster: Cluster, say: Callable[[str], None], every: float, began: float
) -> list[int]:
    """Once a simulated second, tell `say` how far the run is, when `every` seconds of
    wall clock passed since the last line: a 10,000-node heal runs for an hour.

    A pure observer: it reads the clock and the process, never a node, so the
    report is the same with or without it once the heap entries it scheduled
    (the returned count, kept up to date) are left out."""
    engine = cluster.engine
    last = time.perf_counter()
    ticks = [1]

    def tick() -> None:
        nonlocal last
        ticks[0] += 1
        wall = time.perf_counter()
        if wall - last >= every:
            last = wall
            say(
                f"simulated {engine.now:.0f} s, wall clock {wall - began:.0f} s, "
                f"RSS {rss() / MIB:,.0f} MiB"
            )
        engine.at(engine.now + 1.0, tick)

    engine.at(engine.now + 1.0, tick)
    return ticks


def traffic_total(cluster: Cluster) -> Results:
    """Whole-run traffic: per node per second, by message type, largest packet."""
    meter, seconds = cluster.meter, max(cluster.engine.now, 1e-9)
    nodes = max(1, len(cluster.ids))
    return {
        "accounting": meter.mode(),
        "bytes_per_node_s": rounded(meter.bytes / nodes / seconds, 1),
        "packets_per_node_s": rounded(meter.packets / nodes / seconds, 2),
        "bytes_per_node_s_spread": summary(
            [meter.bytes_by_node.get(n, 0) / seconds for n in cluster.ids]
        ),
        "peak_1s_bytes_per_node_s": rounded(meter.peak_rate(), 1),
        "busiest_second_of_each_node_bytes": summary(
            [float(meter.node_peak_second.get(n, 0)) for n in cluster.ids]
        ),
        "bytes_by_type": dict(sorted(meter.bytes_by_type.items())),
        "packets_by_type": dict(sorted(meter.packets_by_type.items())),
        "datagrams_per_node_s": rounded(cluster.engine.datagrams / nodes / seconds, 2),
        "largest_message_bytes": meter.max_packet,
        "largest_datagram_message_bytes": meter.max_datagram_message,
        "datagram_messages_over_budget": meter.over_budget,
    }


def simulation_stats(cluster: Cluster, not_counted: int = 0) -> Results:
    """What the engine did: ticks, deliveries, drops, verification cache use, leaving
    out `not_counted` heap entries (the progress lines')."""
    engine, network = cluster.engine, cluster.network
    return {
        "simulated_s": rounded(engine.now, 4),
        "engine": dict(sorted(engine.stats.items())),
        "heap_entries_pushed": engine.clock.pushed - not_counted,
        "drops": dict(sorted(network.drops.items())),
        "delivered": network.delivered,
        "verification": {
            "shared_cache": cluster.verifier.enabled,
            "verified": cluster.verifier.misses,
            "cache_hits": cluster.verifier.hits,
            "claims_verified": cluster.claims.misses if cluster.claims else None,
            "claim_cache_hits": cluster.claims.hits if cluster.claims else None,
        },
        "core_counters": core_counters(cluster),
    }


def core_counters(cluster: Cluster) -> dict[str, int]:
    """The cores' own counters (`NodeStats`), summed over the processes running at the end."""
    totals: Counter[str] = Counter()
    for node in cluster.members.values():
        totals.update(node.stats.as_dict())
    return {name: count for name, count in sorted(totals.items()) if count}


def to_json(report: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human-readable account of a report."""
    params = report["params"]
    lines = [
        f"scenario {report['scenario']}: {params['nodes']} nodes, loss {params['loss']:.1%}, "
        f"seed {params['seed']}, lifeguard {'on' if params['lifeguard'] else 'off'}"
        + (
            f", {params['slow_fraction']:.0%} slow (+{params['slow_delay']} s)"
            if params["slow_fraction"]
            else ""
        )
    ]
    lines += [f"  {key}: {_show(value)}" for key, value in report["results"].items()]
    traffic = report["traffic_total"]
    lines.append(
        f"  whole run: {traffic['bytes_per_node_s']} B/node/s "
        f"(busiest 1 s window {traffic['peak_1s_bytes_per_node_s']} B/node/s; "
        f"busiest node's busiest second {traffic['busiest_second_of_each_node_bytes']['max']} B), "
        f"{traffic['packets_per_node_s']} packets/node/s "
        f"(bytes {traffic['accounting']['mode']}, every {traffic['accounting']['every']}), "
        f"largest message {traffic['largest_message_bytes']} B "
        f"(non-push-pull {traffic['largest_datagram_message_bytes']} B)"
    )
    runtime = report.get("runtime")
    if runtime:
        lines.append(
            f"  wall clock {runtime['wall_clock_s']} s for {runtime['simulated_s']} simulated s "
            f"(build {runtime['build_s']} s); RSS {runtime['rss_mib']} MiB, "
            f"~{runtime['memory_per_node_kib_after_run']} KiB per node"
        )
    return lines


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items() if k != "formula")
    return "-" if value is None else str(value)
