"""How soon after a cut link returns can the hosts talk to the cut host again?

Lab hosts running `nova-agent` as shipped; the last host's cable is unplugged
for `--downs` seconds and plugged back in. From that moment the benchmark
polls every 0.25 s (each look in its own thread) for two things an operator
would check: every agent sees every host alive again (`nova members`), and
every other host gets an answer from the cut host over the mesh (`nova host
undrain HOST`: a request the cut host's agent answers over the hosts' direct
connections, as it answers a migration proposal; the host is not draining,
so it changes nothing). An answer counts when it came, not when it was asked.

Both are measured with ZMTP heartbeats on peer connections (`--peer-heartbeat
2`, the default) and off (`0`, TCP's own retransmission back-off alone: the
behaviour before heartbeats) in the same run, alternating, with the agents
restarted between settings.

Run as root: `.venv/bin/python -m benchmarks.link_heal --downs 10,30,60,90 --reps 2 --json FILE`
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import LabAgents

POLL = 0.25  # seconds between looks after the link returns
GIVE_UP = 180.0  # a heal not seen by then is recorded as this (and flagged)


def answers_from(agents: LabAgents, asker: LabHost, cut: LabHost) -> bool:
    """Whether `asker` gets the cut host's own answer to a request over the mesh."""
    answer = agents.nova(asker, "host", "undrain", cut.name, timeout=30)
    return bool(answer.get("ok"))


def heal(agents: LabAgents, lab: Lab, cut: LabHost, down: float) -> dict[str, Any]:
    """Cut `cut` off for `down` seconds; the seconds from link-up to mesh and to answers.

    Each look runs in its own thread, so a request that waits for its answer (up to the
    agent's 5 s) delays neither the mesh's look nor the other host's.
    """
    others = [h for h in lab.hosts if h is not cut]
    cut.link_down()
    try:
        time.sleep(down)
    finally:
        cut.link_up()
    up = time.monotonic()

    def first(ok: Callable[[], bool]) -> float | None:
        """Seconds from link-up to the end of the first look that `ok` liked."""
        while time.monotonic() - up < GIVE_UP:
            if ok():
                return time.monotonic() - up  # an answer counts when it came
            time.sleep(POLL)
        return None

    with ThreadPoolExecutor(len(others) + 1) as pool:
        mesh = pool.submit(first, lambda: all(agents.all_alive(h) for h in lab.hosts))
        asks = [pool.submit(first, partial(answers_from, agents, h, cut)) for h in others]
        mesh_s, answers = mesh.result(), [a.result() for a in asks]
    answered_s = None if None in answers else max(a for a in answers if a is not None)
    return {
        "down_s": down,
        "mesh_s": round(mesh_s if mesh_s is not None else GIVE_UP, 2),
        "answered_s": round(answered_s if answered_s is not None else GIVE_UP, 2),
        "gave_up": mesh_s is None or answered_s is None,
    }


def settle(agents: LabAgents, lab: Lab, cut: LabHost) -> None:
    """Full mesh and every host answered by the cut host before the next trial."""
    agents.wait_for_full_mesh(timeout=GIVE_UP)
    deadline = time.monotonic() + GIVE_UP
    for host in (h for h in lab.hosts if h is not cut):
        while not answers_from(agents, host, cut):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host.name} gets no answer from {cut.name}")
            time.sleep(POLL)


def run(hosts: int, downs: list[float], reps: int, heartbeats: list[float]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with Lab("lh", hosts, libvirt=False) as lab:
        cut = lab.hosts[-1]
        for rep in range(reps):
            for down in downs:
                for beat in heartbeats:
                    agents = LabAgents(lab, seeds=True, extra_args=["--peer-heartbeat", str(beat)])
                    agents.start_all()
                    try:
                        settle(agents, lab, cut)
                        row = {"peer_heartbeat_s": beat, "rep": rep, **heal(agents, lab, cut, down)}
                    finally:
                        agents.stop_all()
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return results


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median seconds per (down, heartbeat), and heartbeats-off over on."""
    table = []
    for down in sorted({r["down_s"] for r in results}):
        row: dict[str, Any] = {"down_s": down}
        for beat in sorted({r["peer_heartbeat_s"] for r in results}, reverse=True):
            mine = [r for r in results if r["down_s"] == down and r["peer_heartbeat_s"] == beat]
            for what in ("mesh_s", "answered_s"):
                row[f"{what}@{beat:g}"] = statistics.median(r[what] for r in mine)
            row[f"gave_up@{beat:g}"] = sum(r["gave_up"] for r in mine)
        table.append(row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--downs", default="10,30,60,90", help="seconds the link is down")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--heartbeats", default="2,0", help="--peer-heartbeat values to compare")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    downs = [float(d) for d in args.downs.split(",")]
    beats = [float(b) for b in args.heartbeats.split(",")]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = run(args.hosts, downs, args.reps, beats)
    table = summary(results)
    for row in table:
        print(json.dumps(row))
    if args.json:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        report = {
            "command": " ".join(["python -m benchmarks.link_heal", *sys.argv[1:]]),
            "started": started,
            "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
            "commit": commit,
            "results": results,
            "summary": table,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
