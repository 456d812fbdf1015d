"""Probe: does QEMU's dirty-rate sampling (or job-stats polling) during a migration stall it?

Two lab hosts without agents, the idle 128 MiB test guest, raw `virsh migrate
--live --p2p` at 50 ms max downtime with NovaCron's flags, back and forth.
`sample`: a process in each host starts `startDirtyRateCalc` on the guest
every 1.2 s; `poll`: another calls `jobStats()` every 0.5 s (as the agent's
sampler does). A migration not done in 30 s counts as stalled (aborted).

Run as root: `.venv/bin/python -m benchmarks.stall_probe RUNS sample|none [poll]`
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmarks import migration as M
from novacron.simulations import guest as guest_mod
from novacron.simulations.lab import Lab
from novacron.simulations.lab.agents import BIN

SAMPLER = r"""
import time, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open("qemu:///system")
while True:
    try:
        d = c.lookupByName("bench-vm")
        if d.info()[0] == libvirt.VIR_DOMAIN_RUNNING:
            d.startDirtyRateCalc(1, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
    except libvirt.libvirtError:
        pass
    time.sleep(1.2)
"""
POLLER = r"""
import time, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open("qemu:///system")
while True:
    try:
        c.lookupByName("bench-vm").jobStats()
    except libvirt.libvirtError:
        pass
    time.sleep(0.5)
"""


def main() -> None:
    runs = int(sys.argv[1])
    sample = sys.argv[2] == "sample"
    config = M.Config("128MiB-dirty0", 128, max_downtime_ms=50, virsh_timeout=30.0, same_flags=True)
    guest = guest_mod.build()
    with tempfile.TemporaryDirectory() as tmp, Lab("stall", 2) as lab:
        bench = M.Bench(lab, None, guest, Path(tmp))  # type: ignore[arg-type]
        M.agents_agree = lambda *a, **k: True  # no agents to agree here
        M.boot(bench, config)
        python = str(BIN / "python")
        samplers = [h.popen([python, "-c", SAMPLER]) for h in lab.hosts] if sample else []
        if "poll" in sys.argv[3:]:
            samplers += [h.popen([python, "-c", POLLER]) for h in lab.hosts]
        stalls = ok = broke = 0
        try:
            for run in range(runs):
                src, dst = bench.hosts[bench.where], bench.hosts[1 - bench.where]
                row = M.migrate_virsh(bench, config, src, dst, M.SAME_FLAGS)
                if row["ok"]:
                    hb, _ = M.heartbeat_check(src, dst)
                    ok += 1
                    broke += not hb
                    bench.where = 1 - bench.where
                    if not hb:
                        M.boot(bench, config)
                else:
                    stalls += 1
                    print("FAILED", row.get("reason"), flush=True)
                    M.boot(bench, config)
                print(run, row["ok"], row["wall_s"], flush=True)
        finally:
            for p in samplers:
                p.kill()
            M.cleanup(bench)
        result = {"sample": sample, "runs": runs, "ok": ok, "stalled": stalls, "broke": broke}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
