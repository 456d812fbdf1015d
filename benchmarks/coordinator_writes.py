"""The coordinator's write path, without HTTP: what one site delta and one new operation
cost the store, on SQLite and on PostgreSQL, against a one-row read in the same run.

    .venv/bin/python -m benchmarks.coordinator_writes --database postgresql --json FILE

`--sites` sites of 10 hosts each send a snapshot of `--vms` VMs in all; then
`--deltas` deltas, round robin over the sites, each a host's record in which
one VM changed state (the load benchmark's churn), applied one after
another; then `--operations` operations started (what `POST /v1/vms`
writes); and, as the baseline, as many reads of one VM. Then the same writes
arriving together, as they do in a coordinator: every site sends `--rounds`
deltas (each after the one before it was acknowledged, as a site link does)
at once, while `--clients` clients each start operations one after another
until `--operations` are started; what each write waited, and how many
writes a second were committed. The store is the
coordinator's own (`coordinator/store.py`) on a database made for the run
(PostgreSQL started as the tests start it, with fsync off: round trips and
locks are what is measured, not the disk). Run it on two builds in turn
(one of them from a `git archive` first on `PYTHONPATH`) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from novacron.coordinator.db import open_database
from novacron.coordinator.store import LOCAL_ADMIN, Store
from novacron.protocol import sitelink as wire
from novacron.protocol.messages import MemberState, NodeRecord, Resources, VmSummary
from tests.postgres import running_postgres

HOSTS_PER_SITE = 10


def record(host: str, version: int, vms: tuple[VmSummary, ...]) -> NodeRecord:
    capacity = Resources(vcpus=64, memory_mib=512 * 1024)
    return NodeRecord(host, version, capacity=capacity, vms=vms)


async def timed(times: list[float], call: Awaitable[Any]) -> None:
    started = time.perf_counter()
    await call
    times.append(time.perf_counter() - started)


async def flipped(
    store: Any, records: dict[tuple[str, str], NodeRecord], site: str, host: str, n: int
) -> wire.Delta:
    """The site's next delta: host's record with its n-th VM's state flipped."""
    old = records[site, host]
    vms_now = list(old.vms)
    flip = vms_now[n % len(vms_now)]
    state = "paused" if flip.state == "running" else "running"
    vms_now[n % len(vms_now)] = VmSummary(
        flip.name, flip.uuid, state, flip.vcpus, flip.memory_mib, labels=flip.labels
    )
    records[site, host] = record(host, old.version + 1, tuple(vms_now))
    position = await store.position(site)
    return wire.Delta(
        position.stream,
        position.applied + 1,
        hosts=(wire.HostState(host, MemberState.ALIVE, records[site, host]),),
    )


async def run(
    database: str,
    sites: int,
    vms: int,
    deltas: int,
    operations: int,
    rounds: int,
    clients: int,
) -> dict[str, Any]:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as directory:
        url = database
        if database == "postgresql":
            url = stack.enter_context(running_postgres()).url()
        db = await open_database(url if database == "postgresql" else "", Path(directory))
        store = Store(db)
        per_host = max(1, vms // (sites * HOSTS_PER_SITE))
        records: dict[tuple[str, str], NodeRecord] = {}
        seeding = time.perf_counter()
        for s in range(sites):
            site = f"s{s}"
            _, token = await store.add_site(site, {}, 0.0, LOCAL_ADMIN)
            await store.enroll(token, s.to_bytes(32, "big"))
            hosts = []
            for h in range(HOSTS_PER_SITE):
                summaries = tuple(
                    VmSummary(f"{site}-h{h}-vm{v}", f"u{s}.{h}.{v}", "running", 1, 512,
                              labels={"app": "web"})
                    for v in range(per_host)
                )  # fmt: skip
                records[site, f"h{h}"] = record(f"h{h}", 1, summaries)
                hosts.append(wire.HostState(f"h{h}", MemberState.ALIVE, records[site, f"h{h}"]))
            snapshot = wire.Delta(f"{site}-1", 1, True, True, tuple(hosts))
            await store.apply_delta(site, snapshot)
        seeded = time.perf_counter() - seeding
        applied: list[float] = []
        for n in range(deltas):
            site, host = f"s{n % sites}", f"h{(n // sites) % HOSTS_PER_SITE}"
            delta = await flipped(store, records, site, host, n)
            await timed(applied, store.apply_delta(site, delta))
        started: list[float] = []
        for n in range(operations):
            command = {"key": f"k{n}", "kind": "start", "vm": "s0-h0-vm0"}
            call = store.start_operation("start", "s0", "s0-h0-vm0", {}, command, LOCAL_ADMIN)
            await timed(started, call)
        read: list[float] = []
        for n in range(max(deltas, operations)):
            await timed(read, store.vm(f"s{n % sites}", f"s{n % sites}-h0-vm0"))
        together = await concurrent(store, records, sites, rounds, clients, operations)
        await db.close()
    return {
        "database": database,
        "sites": sites,
        "vms": per_host * sites * HOSTS_PER_SITE,
        "seeding_s": round(seeded, 2),
        "apply_delta": summary(applied),
        "start_operation": summary(started),
        "baseline_read": summary(read),
        "delta_over_read": round(statistics.median(applied) / statistics.median(read), 1),
        "operation_over_read": round(statistics.median(started) / statistics.median(read), 1),
        "together": together,
    }


async def concurrent(
    store: Store,
    records: dict[tuple[str, str], NodeRecord],
    sites: int,
    rounds: int,
    clients: int,
    operations: int,
) -> dict[str, Any]:
    """Every site streaming deltas and `clients` clients starting operations, all at once."""
    applied: list[float] = []
    started: list[float] = []

    async def site_stream(s: int) -> None:
        site = f"s{s}"
        for n in range(rounds):
            host = f"h{n % HOSTS_PER_SITE}"
            delta = await flipped(store, records, site, host, n)
            await timed(applied, store.apply_delta(site, delta))

    async def client(c: int) -> None:
        for n in range(c, operations, clients):
            command = {"key": f"together-{n}", "kind": "start", "vm": "s0-h0-vm0"}
            call = store.start_operation("start", "s0", "s0-h0-vm0", {}, command, LOCAL_ADMIN)
            await timed(started, call)

    counts = getattr(store, "writes", None)  # the batching writer's, where there is one
    batches_before = counts.batches if counts is not None else 0
    began = time.perf_counter()
    await asyncio.gather(
        *(site_stream(s) for s in range(sites)), *(client(c) for c in range(clients))
    )
    wall = time.perf_counter() - began
    return {
        "deltas": len(applied),
        "operations": len(started),
        "clients": clients,
        "wall_s": round(wall, 2),
        "writes_per_s": round((len(applied) + len(started)) / wall, 1),
        "apply_delta": summary(applied),
        "start_operation": summary(started),
        "transactions": counts.batches - batches_before if counts is not None else None,
    }


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coordinator_writes")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--deltas", type=int, default=1000)
    parser.add_argument("--operations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.database,
            args.sites,
            args.vms,
            args.deltas,
            args.operations,
            args.rounds,
            args.clients,
        )
    )
    result["machine"] = f"{platform.node()}, {platform.processor() or platform.machine()}"
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
