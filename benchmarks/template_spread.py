"""One template image to many lab hosts at once: through the mesh, against one source.

A lab of N+1 hosts (no libvirtd: the agents use libvirt's test driver), every
host's link capped at `--rate-mbit` in both directions (tbf on both ends of its
veth), h1 holding template bench:1 (an image of `--size-mib`). Then, in the same
run, on the same links:

- **mesh**: the N other hosts run `nova template pull bench` at once; their
  agents fetch pieces from h1 and from each other;
- **one source**: the stores are emptied and the N hosts pull the same
  template at once from a catalogue that h1 serves over HTTP
  (`python -m http.server`), as every host would from one mirror.

Each host's time runs from the common start to its `nova` process exiting 0
(the image verified and in its store). The bound is what the links allow:
every host must receive the whole image through its own link, so no method
can beat size / rate; the figures are the slowest host against that bound, and
the one-source time against the mesh's.

Run as root: `.venv/bin/python -m benchmarks.template_spread --hosts 10 --size-mib 1024
--rate-mbit 400 --json benchmarks/results/template_spread_10.json`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.lab_soak import machine
from novacron.agent.cli import main as nova
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for

WORK = Path("/var/lib/novacron-test")
HTTP_PORT = 8080
NAME = "bench"


def make_template(work: Path, size_mib: int) -> tuple[Path, Path]:
    """A random image of `size_mib` signed as bench:1 into `work`/catalogue; (catalogue,
    publisher public key)."""
    image = work / "image.qcow2"
    with open(image, "wb") as out:
        out.write(b"QFI\xfb")
        for _ in range(size_mib):
            out.write(os.urandom(1024 * 1024))
    assert nova(["template", "keygen", "bench", "--out", str(work), "--force"]) == 0
    publish = ["template", "publish", str(image), "--name", NAME, "--version", "1"]
    publish += ["--key", str(work / "bench.key"), "--to", str(work / "catalogue")]
    assert nova([*publish, "--memory", "128"]) == 0
    image.unlink()
    return work / "catalogue", work / "bench.pub"


def shape(lab: Lab, host: LabHost, rate_mbit: float) -> None:
    """Cap `host`'s link at `rate_mbit` both ways: its eth0, and its port on the switch."""
    tbf = ["tbf", "rate", f"{rate_mbit}mbit", "burst", "256kb", "latency", "50ms"]
    host.run(["tc", "qdisc", "replace", "dev", "eth0", "root", *tbf], check=True)
    subprocess.run(
        ["ip", "netns", "exec", host.switch_netns, "tc", "qdisc", "replace", "dev",
         host.switch_port, "root", *tbf],
        check=True,
    )  # fmt: skip


def store(work: Path, host: LabHost) -> Path:
    return work / "stores" / host.name


def pull_all(
    receivers: list[LabHost], argv: list[str], work: Path, timeout: float
) -> dict[str, float]:
    """Start `nova ARGV` on every receiver at once (ARGV may name {store}); each one's
    seconds until it exited 0."""
    start = time.monotonic()
    procs = {}
    for host in receivers:
        command = [a.format(store=store(work, host)) for a in argv]
        procs[host.name] = subprocess.Popen(
            host.command([str(BIN / "nova"), *command]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    done: dict[str, float] = {}
    while len(done) < len(procs):
        for name, proc in procs.items():
            if name not in done and proc.poll() is not None:
                if proc.returncode != 0:
                    _, err = proc.communicate()
                    raise RuntimeError(f"{name}: {' '.join(argv)} failed: {err}")
                done[name] = time.monotonic() - start
        if time.monotonic() - start > timeout:
            for proc in procs.values():
                proc.kill()
            raise RuntimeError(f"not every host finished within {timeout:.0f} s")
        time.sleep(0.05)
    return done


def empty_stores(work: Path, receivers: list[LabHost]) -> None:
    for host in receivers:
        shutil.rmtree(store(work, host), ignore_errors=True)
        store(work, host).mkdir(parents=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / f"spread-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        catalogue, public = make_template(work, args.size_mib)
        with Lab(f"sp{os.getpid() % 100000}", args.hosts + 1, libvirt=False) as lab:
            return measure(args, lab, work, catalogue, public)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace, lab: Lab, work: Path, catalogue: Path, public: Path
) -> dict[str, Any]:
    source, receivers = lab.hosts[0], lab.hosts[1:]
    agents = LabAgents(lab, mdns=False, seeds=True, inventory_interval=1.0)
    agents.create_ca()
    for host in lab.hosts:
        store(work, host).mkdir(parents=True)
        agents.issue(host)
        extra = ["--template-dir", str(store(work, host)), "--trusted-publishers", str(public)]
        if args.serve_mib_s:
            extra += ["--image-serve-mib-s", str(args.serve_mib_s)]
        agents.start(host, argv=[*agents.command(host), *extra])
    try:
        agents.wait_for_full_mesh(timeout=120)
        for host in lab.hosts:
            shape(lab, host, args.rate_mbit)
        hold = ["template", "pull", NAME, "--from", str(catalogue), "--store"]
        assert nova([*hold, str(store(work, source)), "--trust", str(public)]) == 0
        for receiver in receivers:  # every one hears h1 offer it before any pull starts
            wait_for(
                partial(agents.nova, receiver, "host", "show", source.name),
                lambda a: a["host"]["record"]["templates"] == [f"{NAME}:1"],
                60,
                0.5,
            )
        print(f"mesh: {len(receivers)} hosts pulling from the mesh", file=sys.stderr)
        mesh = pull_all(receivers, ["template", "pull", NAME, "--json"], work, args.timeout)
        served = {h.name: agents.nova(h, "status")["status"]["templates"] for h in lab.hosts}
        one = {} if args.mesh_only else one_source(receivers, source, work, catalogue, public, args)
    finally:
        agents.stop_all()
    size = (args.size_mib * 1024 * 1024) + 4
    bound = size * 8 / (args.rate_mbit * 1e6)
    mesh_slowest = max(mesh.values())
    report: dict[str, Any] = {
        "hosts": len(receivers),
        "size_bytes": size,
        "rate_mbit": args.rate_mbit,
        "bound_s": round(bound, 2),
        "mesh_s": {k: round(v, 2) for k, v in sorted(mesh.items())},
        "mesh_slowest_s": round(mesh_slowest, 2),
        "mesh_over_bound": round(mesh_slowest / bound, 2),
        "served_pieces": {k: v["served_pieces"] for k, v in served.items()},
    }
    if one:
        one_slowest = max(one.values())
        report["one_source_s"] = {k: round(v, 2) for k, v in sorted(one.items())}
        report["one_source_slowest_s"] = round(one_slowest, 2)
        report["one_source_over_mesh"] = round(one_slowest / mesh_slowest, 2)
    return report


def one_source(
    receivers: list[LabHost],
    source: LabHost,
    work: Path,
    catalogue: Path,
    public: Path,
    args: argparse.Namespace,
) -> dict[str, float]:
    """The stores emptied, every receiver pulls the template from h1 over HTTP at once."""
    empty_stores(work, receivers)
    print(f"one source: {len(receivers)} hosts pulling from h1 over HTTP", file=sys.stderr)
    http = subprocess.Popen(
        source.command(
            [sys.executable, "-m", "http.server", "--bind", source.address, str(HTTP_PORT),
             "--directory", str(catalogue)]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        url = f"http://{source.address}:{HTTP_PORT}"
        argv = ["template", "pull", NAME, "--from", url, "--store", "{store}"]
        return pull_all(receivers, [*argv, "--trust", str(public), "--json"], work, args.timeout)
    finally:
        http.kill()
        http.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.template_spread")
    parser.add_argument("--hosts", type=int, default=10, help="hosts receiving the image")
    parser.add_argument("--size-mib", type=int, default=1024, help="image size")
    parser.add_argument("--rate-mbit", type=float, default=400.0, help="every link's cap")
    parser.add_argument("--serve-mib-s", type=float, default=0.0, help="agents' serving cap")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per phase")
    parser.add_argument(
        "--mesh-only", action="store_true", help="skip the one-source phase (trying mesh changes)"
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    report = {
        "command": " ".join([sys.executable, "-m", "benchmarks.template_spread", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg()[0],
        **run(args),
        "load_after": os.getloadavg()[0],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
