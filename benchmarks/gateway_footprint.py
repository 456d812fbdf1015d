"""What holding the site link costs an agent: the gateway against its peers, same site, same run.

    .venv/bin/python -m benchmarks.gateway_footprint [--seconds 60]

A site of three agents on loopback (libvirt's test driver), all configured
with the coordinator: g1 is elected and holds the link, g2 is a candidate
that does not, and a third agent, x1, has no coordinator at all (the
baseline: an agent of a site without one). The coordinator streams nothing
special: the site's own record changes (every agent refreshes its inventory
every second) are what the gateway sends. RSS after the warm-up and CPU over
`--seconds` are measured for each agent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import psutil

from novacron.simulations.federation import Api, CoordinatorProcess, Site, tls_files, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-footprint-") as root_name:
        root = Path(root_name)
        tls = tls_files(root / "tls")
        coordinator = CoordinatorProcess(root / "coordinator", tls)
        coordinator.directory.mkdir()
        token = coordinator.admin("site", "add", "lyon")["enrollment_token"]
        secret = coordinator.admin("token", "create", "bench", "--role", "reader")["secret"]
        coordinator.start()
        api = Api(coordinator.url, secret, tls[0])
        site = Site(root / "lyon", "lyon", ("g1", "g2", "x1"))
        assert site.enroll(coordinator, token)[0] == 0
        try:
            site.start("g1", (coordinator.url,), tls[0])
            site.start("g2", (coordinator.url,), tls[0])
            site.start("x1", (), tls[0])
            wait_until(
                "g1 holding the link", lambda: api.get("/v1/sites/lyon")["gateway"] == "g1", 60
            )
            wait_until("three hosts", lambda: len(api.get("/v1/hosts")["items"]) == 3, 60)
            time.sleep(10)  # warm-up: every agent past its start
            procs = {node: psutil.Process(site.procs[node].pid) for node in site.nodes}
            before = {node: p.cpu_times() for node, p in procs.items()}
            time.sleep(args.seconds)
            figures = {}
            for node, proc in procs.items():
                after = proc.cpu_times()
                used = (after.user + after.system) - (before[node].user + before[node].system)
                figures[node] = {
                    "role": {"g1": "gateway", "g2": "candidate", "x1": "no coordinator"}[node],
                    "rss_mib": round(proc.memory_info().rss / 2**20, 1),
                    "cpu_percent_of_a_core": round(100 * used / args.seconds, 2),
                }
        finally:
            site.stop()
            coordinator.stop()
    report = {
        "command": "python -m benchmarks.gateway_footprint --seconds " + f"{args.seconds:g}",
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "agents": figures,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
