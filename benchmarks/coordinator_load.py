"""The coordinator under load: API latency with sites streaming, RSS, and a site's resync.

    .venv/bin/python -m benchmarks.coordinator_load --database sqlite --vms 10000
    .venv/bin/python -m benchmarks.coordinator_load --database postgresql --vms 100000

A real `nova-coordinator` process (plain HTTP on loopback: TLS is the same
for every request and not what is measured here), on SQLite or on a
PostgreSQL started for the run. `--sites` simulated sites speak the real
site link (`protocol/sitelink.py`, enrolled with real CA keys): each sends a
snapshot of its hosts and VMs, then one delta a second during the load
(the sites' deltas spread evenly over each second, or with `--deltas
together` all in the same instant). Locust (`benchmarks/locustfile.py`) runs
`--users` independent clients, each at `--rate` requests a second on
average, over `GET /v1/vms` (one site, 100 a page), `GET /v1/vms/{id}`,
`POST /v1/vms` and the baseline `GET /v1/status`; beside it, one lone
client (`benchmarks/latency_probe.py`) times `GET /v1/status` one request at
a time. `--pin` keeps the sites and the clients off the coordinator's core,
as if they ran on other machines (PostgreSQL, started before, is not
pinned: its backends may run on any core). Percentiles come from every
request's own time (not locust's rounded histogram), over the whole load and
over its steady state: the requests started `WARM_UP` seconds or more after
the first, leaving out the 50 clients connecting at once. Failed requests
count with their time; requests still under way when locust stops are not
counted. Then: the
coordinator's RSS, and the time a site of 1,000 VMs takes to resynchronize
(reconnect, new stream, snapshot applied and acknowledged). Figures go to
stdout and `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from novacron.protocol import sitelink as wire
from novacron.protocol.certificates import issue_certificate
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.protocol.messages import MemberState, NodeRecord, Resources, VmSummary
from novacron.simulations.federation import wait_until
from novacron.simulations.metrics import percentile, rounded
from novacron.simulations.ports import free_port
from tests.postgres import running_postgres

BIN = Path(sys.executable).parent
HOSTS_PER_SITE = 10
# Seconds from the first request left out of the steady-state figures (50 clients
# connecting at once). The lone client waits as long from locust's launch, which comes
# about a second before locust's first request.
WARM_UP = 3
BIG_SITE_VMS = 1000


def _request(url: str, method: str, path: str, token: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


# --- simulated sites ------------------------------------------------------------------


class SimSite:
    """One site's gateway: a CA, a node certificate, hosts with VMs, and the link."""

    def __init__(self, name: str, vms: int) -> None:
        self.name = name
        self.ca = Ed25519PrivateKey.generate()
        self.key = NodeKey.generate()
        now = time.time()
        self.cert = issue_certificate(
            self.ca, "gw", self.key.signing_public, self.key.curve_public,
            not_before=now - 60, not_after=now + 86400, serial=1,
        ).encoded  # fmt: skip
        self.version = 1
        per_host = [
            vms // HOSTS_PER_SITE + (1 if i < vms % HOSTS_PER_SITE else 0)
            for i in range(HOSTS_PER_SITE)
        ]
        self.records = [self._record(h, n) for h, n in enumerate(per_host)]
        self.stream = 0
        self.seq = 0

    def _record(self, host: int, vms: int, version: int = 1) -> NodeRecord:
        summaries = tuple(
            VmSummary(f"vm-{host}-{i}", uuid=f"{self.name}-{host}-{i}", state="running",
                      vcpus=1, memory_mib=256, labels={"tier": "web" if i % 2 else "db"})
            for i in range(vms)
        )  # fmt: skip
        return NodeRecord(
            f"h{host}", version, capacity=Resources(vcpus=64, memory_mib=512 * 1024), vms=summaries
        )

    def enrollment(self, token: str) -> dict[str, str]:
        ca = self.ca.public_key().public_bytes_raw()
        return {
            "token": token,
            "ca_public": base64.b64encode(ca).decode(),
            "certificate": base64.b64encode(self.cert).decode(),
            "signature": base64.b64encode(
                self.key.signing.sign(wire.enroll_bytes(token, ca))
            ).decode(),
        }

    async def connect(
        self, session: aiohttp.ClientSession, url: str
    ) -> aiohttp.ClientWebSocketResponse:
        ws = await session.ws_connect(url.replace("http", "ws") + wire.PATH, max_msg_size=8 << 20)
        challenge = wire.decode((await ws.receive()).data)[1]
        assert isinstance(challenge, wire.Challenge), challenge
        ca = self.ca.public_key().public_bytes_raw()
        hello = wire.Hello(
            ca, self.cert, self.key.signing.sign(wire.hello_bytes(challenge.nonce, ca))
        )
        await ws.send_bytes(wire.encode(hello, "gw"))
        welcome = wire.decode((await ws.receive()).data)[1]
        assert isinstance(welcome, wire.Welcome), welcome
        # Read all the time: aiohttp answers the coordinator's pings only while reading.
        self.acks: asyncio.Queue[int] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read(ws))
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                message = wire.decode(msg.data)[1]
                if isinstance(message, wire.Ack):
                    self.acks.put_nowait(message.seq)
        self.acks.put_nowait(-1)

    async def snapshot(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A new stream: every host, in deltas, then wait for the last ack."""
        self.stream += 1
        self.seq = 0
        hosts = [wire.HostState(r.node_id, MemberState.ALIVE, r) for r in self.records]
        groups = [hosts[i : i + 2] for i in range(0, len(hosts), 2)]
        for i, group in enumerate(groups):
            self.seq += 1
            delta = wire.Delta(
                f"{self.name}-{self.stream}", self.seq,
                snapshot_start=i == 0, snapshot_end=i == len(groups) - 1, hosts=tuple(group),
            )  # fmt: skip
            await ws.send_bytes(wire.encode(delta, "gw"))
        await self._acked(ws, self.seq)

    async def _acked(self, ws: aiohttp.ClientWebSocketResponse, seq: int) -> None:
        while True:
            acked = await self.acks.get()
            if acked < 0:
                raise RuntimeError(f"{self.name}: the coordinator closed the link")
            if acked >= seq:
                return

    async def churn(self, ws: aiohttp.ClientWebSocketResponse, stop: float, offset: float) -> int:
        """One delta a second, the first after `offset` seconds: a host's record moves on
        (one VM changes state)."""
        await asyncio.sleep(offset)
        sent = 0
        while time.monotonic() < stop:
            host = sent % HOSTS_PER_SITE
            record = self.records[host]
            vms = list(record.vms)
            if vms:
                flip = vms[sent % len(vms)]
                state = "paused" if flip.state == "running" else "running"
                vms[sent % len(vms)] = VmSummary(
                    flip.name, flip.uuid, state, flip.vcpus, flip.memory_mib, labels=flip.labels
                )
            record = NodeRecord(record.node_id, record.version + 1, record.capacity, vms=tuple(vms))
            self.records[host] = record
            self.seq += 1
            delta = wire.Delta(
                f"{self.name}-{self.stream}",
                self.seq,
                hosts=(wire.HostState(record.node_id, MemberState.ALIVE, record),),
            )
            await ws.send_bytes(wire.encode(delta, "gw"))
            await self._acked(ws, self.seq)
            sent += 1
            await asyncio.sleep(1.0)
        return sent


async def _sites_main(
    url: str,
    token: str,
    vms: int,
    sites: int,
    ready: Any,
    go: Any,
    duration: float,
    out: Any,
    together: bool,
) -> None:
    per_site = vms // sites
    sims = [SimSite(f"site{i:03}", per_site) for i in range(sites)]
    big = SimSite("big", BIG_SITE_VMS)
    connector = aiohttp.TCPConnector(limit=0)  # one link per site, all at once
    async with aiohttp.ClientSession(connector=connector) as session:
        for sim in [*sims, big]:
            added = await _call(
                session,
                url,
                token,
                "POST",
                "/v1/sites",
                {"name": sim.name, "labels": {"region": f"r{hash(sim.name) % 4}"}},
            )
            await _call(
                session, url, "", "POST", "/v1/enroll", sim.enrollment(added["enrollment_token"])
            )
        links = []
        started = time.monotonic()
        for sim in [*sims, big]:
            ws = await sim.connect(session, url)
            await sim.snapshot(ws)
            links.append(ws)
        seeded = time.monotonic() - started
        ready.set()
        go.wait()
        stop = time.monotonic() + duration
        sent = await asyncio.gather(
            *(
                sim.churn(ws, stop, 0.0 if together else i / sites)
                for i, (sim, ws) in enumerate(zip(sims, links, strict=False))
            )
        )
        await links[-1].close()  # the big site's link drops; it comes back with a new stream
        began = time.monotonic()
        ws = await big.connect(session, url)
        await big.snapshot(ws)
        resync = time.monotonic() - began
        out.put(
            {
                "seed_s": round(seeded, 1),
                "deltas_during_load": sum(sent),
                "resync_1000_vms_s": round(resync, 3),
            }
        )
        for ws in links:
            await ws.close()


async def _call(
    session: aiohttp.ClientSession, url: str, token: str, method: str, path: str, body: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url + path, json=body, headers=headers) as answer:
        assert answer.status < 300, await answer.text()
        return await answer.json()


def _sites_process(*args: Any) -> None:
    asyncio.run(_sites_main(*args))


# --- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace, database: str, directory: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = [str(BIN / "nova-coordinator"), "--data-dir", str(directory)]
    if database:
        base += ["--database", database]
    token = json.loads(
        subprocess.run(
            [*base, "token", "create", "bench", "--role", "admin", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["secret"]
    log = open(directory / "coordinator.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [*base, "serve", "--listen", f"127.0.0.1:{port}", "--rate", "0", "--log-level", "warning"],
        stdout=log,
        stderr=log,
    )
    if args.pin:  # the coordinator on the first core; this process and its children on the rest
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(server.pid, cores[:1])
        os.sched_setaffinity(0, cores[1:])
    try:
        wait_until("the coordinator", lambda: _up(url), 30)
        ready, go = multiprocessing.Event(), multiprocessing.Event()
        together = args.deltas == "together"
        out: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
        sites = multiprocessing.Process(
            target=_sites_process,
            args=(url, token, args.vms, args.sites, ready, go, args.duration + 10, out, together),
        )
        sites.start()
        while not ready.wait(timeout=5):
            if not sites.is_alive():
                raise RuntimeError("the simulated sites failed before their snapshots were in")
        ids = [f"site{i:03}:vm-0-{j}" for i in range(args.sites) for j in range(3)]
        env = {
            **os.environ,
            "NOVA_TOKEN": token,
            "NOVA_SITES": str(args.sites),
            "NOVA_VM_IDS": ",".join(ids),
        }
        samples = directory / "samples.json"
        env["NOVA_SAMPLES"] = str(samples)
        go.set()
        time.sleep(2)  # the churn is under way
        locust = [
            str(BIN / "locust"), "-f", str(Path(__file__).with_name("locustfile.py")),
            "--headless", "-u", str(args.users), "-r", str(args.users),
            "-t", f"{args.duration}s", "--host", url, "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        env["NOVA_RATE"] = str(args.rate)
        coordinator = psutil.Process(server.pid)
        before, began = coordinator.cpu_times(), time.monotonic()
        window = (str(args.duration - WARM_UP), str(WARM_UP))  # seconds, and from when
        probe = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency_probe", url, token, *window],
            stdout=subprocess.PIPE,
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        ran = subprocess.run(locust, env=env, capture_output=True, timeout=args.duration + 120)
        if not samples.exists():  # failed requests are counted; a locust that did not run is not
            raise RuntimeError(f"locust ended with {ran.returncode}: {ran.stderr[-2000:]!r}")
        after, ended = coordinator.cpu_times(), time.monotonic()
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # locust's, the one child reaped
        generator = waited.ru_utime + waited.ru_stime - children.ru_utime - children.ru_stime
        lone = json.loads(probe.communicate(timeout=60)[0])
        busy = (after.user + after.system - before.user - before.system) / (ended - began)
        result = out.get(timeout=600)
        sites.join(timeout=60)
        rss = psutil.Process(server.pid).memory_info().rss
        taken = json.loads(samples.read_text())
        return {
            **result,
            "coordinator_rss_mib": round(rss / 2**20, 1),
            "coordinator_cpu_percent_of_a_core": round(100 * busy, 1),
            "locust_cpu_percent_of_a_core": round(100 * generator / (ended - began), 1),
            "load_average_1min": round(os.getloadavg()[0], 1),
            "requests": _stats(taken, 0.0),
            "requests_steady": _stats(taken, WARM_UP),
            "lone_client_status": lone,
        }
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
        if args.keep_log:
            shutil.copyfile(directory / "coordinator.log", args.keep_log)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/openapi.json", timeout=2):
            return True
    except OSError:
        return False


def _stats(samples: list[list[Any]], after: float) -> dict[str, Any]:
    """Count, failures, p50, p99 and rate of each kind of request and of all of them,
    over the requests started `after` seconds or more into the load."""
    start = min(at for at, *_ in samples) + after
    end = max(at + took / 1000 for at, _, took, _ in samples)
    kept = [s for s in samples if s[0] >= start]
    kinds: dict[str, list[list[Any]]] = {"all": kept}
    for sample in kept:
        kinds.setdefault(sample[1], []).append(sample)
    return {name: _summary(rows, end - start) for name, rows in kinds.items()}


def _summary(rows: list[list[Any]], seconds: float) -> dict[str, Any]:
    took = [took for _, _, took, _ in rows]
    return {
        "count": len(rows),
        "failures": sum(1 for *_, failed in rows if failed),
        "p50_ms": rounded(percentile(took, 0.5), 2),
        "p99_ms": rounded(percentile(took, 0.99), 2),
        "rps": round(len(rows) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s per user")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument(
        "--deltas",
        choices=("spread", "together"),
        default="spread",
        help="the sites' deltas spread evenly over each second, or all sent at once",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the coordinator on the first core, the sites and the clients on the others "
        "(PostgreSQL is not pinned)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep-log", type=Path, help="copy the coordinator's log here")
    args = parser.parse_args()
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coord-bench-")))
        database = ""
        if args.database == "postgresql":
            database = stack.enter_context(running_postgres()).database()
        started = time.time()
        figures = run(args, database, directory)
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "database": args.database,
        "vms": args.vms,
        "sites": args.sites,
        "users": args.users,
        "rate_per_user": args.rate,
        "deltas": args.deltas,
        "pinned": args.pin,
        **figures,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
