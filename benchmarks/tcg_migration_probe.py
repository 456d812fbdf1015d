"""Probe: does plain QEMU (no libvirt, no NovaCron) break TCG guests by live-migrating them?

Two `qemu-system-x86_64` processes on loopback, driven over QMP unix sockets:
the source runs the lab's test guest (simulations/guest.py: heartbeat every
100 ms on the serial console, `dirty_mib=... dirty_rate=...` rewriting memory
with non-zero data), the target waits with `-S -incoming tcp:127.0.0.1:PORT`.
Each move sets what NovaCron's policy and raw `virsh migrate --auto-converge
--postcopy` set (auto-converge, the postcopy-ram capability without ever
starting post-copy, libvirt's unlimited bandwidth) and a low `downtime-limit`
(50 ms) that forces several pre-copy passes, migrates, then:

1. compares guest RAM on both sides while both are stopped (the source in
   `postmigrate`, the target not yet continued): `pmemsave` of all of RAM on
   each, page by page. Any page that differs is a page the migration lost
   (nothing runs on either side then, the guest has no devices doing DMA);
   the legacy 640K-1M hole is counted apart (ROM/MMIO reads);
2. `cont`s the target, quits the source, and watches the target's console for
   `--settle` s: broken = a kernel panic/oops/BUG/segfault line, the target
   QEMU gone, or the heartbeat not continuing above the source's last count;
3. migrates back the other way (ping-pong). A broken guest is replaced by a
   freshly booted one on a new source.

Per move: passes (`ram.dirty-sync-count`), downtime, total time, highest
auto-converge throttle, RAM pages differing, broken or not (first panic line
and the console tail). `stress-ng --cpu 1 --cpu-method matrixprod` runs beside
unless `--no-stress`; the host's load average and CPU use are recorded.

Run as root (the guest is built like the lab's, into --guest-dir):

    .venv/bin/python -m benchmarks.tcg_migration_probe --label q72-default \\
        --moves 36 --json benchmarks/results/tcg_probe/results_q72-default.json

A newer QEMU extracted with `dpkg -x` (no install), e.g. bookworm-backports' 10.0
(`apt-get download qemu-system-x86 qemu-system-common qemu-system-data seabios` with
a private APT_CONFIG naming bookworm-backports, then `dpkg -x` each into /tmp/tcgx/qemu10):

    .venv/bin/python -m benchmarks.tcg_migration_probe --label q10-default \\
        --qemu /tmp/tcgx/qemu10/usr/bin/qemu-system-x86_64 \\
        --datadir /tmp/tcgx/qemu10/usr/share/qemu \\
        --module-dir /tmp/tcgx/qemu10/usr/lib/x86_64-linux-gnu/qemu \\
        --moves 36 --json benchmarks/results/tcg_probe/results_q10-default.json

Settings to vary: `--accel-thread single|multi`, `--no-auto-converge`,
`--no-postcopy-cap`, `--vcpus 2`, `--cpu MODEL`, `--downtime-ms`, `--memory`,
`--dirty-mib/--dirty-rate`, `--no-ram-compare` (skip the RAM dumps; the
target is still started with -S and continued once it has loaded, as libvirt
does). `--ram-control` dumps each stopped side twice (the dumps must agree).

First results (2026-12-04, 2 vCPUs, load average 3-4 from other work plus
stress-ng): QEMU 7.2.22 broke 11 of 36 guests (every broken one had RAM pages
differing between source and target, no healthy one did); 10.0.2 from
bookworm-backports 0 of 36, no page differing. The fix is upstream QEMU
03bfc2188f (9.0), "physmem: Fix migration dirty bitmap coherency with TCG
memory access".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEARTBEAT = re.compile(rb"^heartbeat (\d+)\n", re.MULTILINE)
DIRTY_REPORT = re.compile(rb"^dirty mib=(\d+) rate=([0-9.]+) MiB/s", re.MULTILINE)
# What counts as a broken guest on the console (the lab's make test treats panic,
# oops and BUG as a crash); stalls/lockups are recorded apart as warnings.
BROKEN = re.compile(
    rb"(Kernel panic|Oops|BUG:|general protection fault|stack-protector|Fatal exception"
    rb"|NX-protected|invalid opcode|segfault at|Bad page|Unable to handle|double fault"
    rb"|traps: \S+ general protection|Attempted to kill)",
)
SOFT_BUG = re.compile(rb"BUG: soft lockup|rcu_sched self-detected|rcu: INFO")
WARNING = re.compile(rb"(soft lockup|rcu_.*stall|rcu: INFO|hung_task|WARNING:|clocksource)")
PAGE = 4096
HOLE = (0xA0000, 0x100000)  # legacy VGA/ROM hole: reads there are not plain RAM
LIBVIRT_UNLIMITED = 8796093022207 << 20  # libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX, bytes/s


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- QMP -----------------------------------------------------------------------------


class QMPError(RuntimeError):
    pass


class QMP:
    """A minimal synchronous QMP client over a unix socket (events are kept, not used)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"no QMP socket at {path}") from None
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        self.version = greeting.get("QMP", {}).get("version", {}).get("qemu", {})
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise QMPError("QMP connection closed")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def cmd(self, name: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QMPError(f"{name}: {reply['error'].get('desc')}")
            return reply.get("return")

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


# --- QEMU processes ------------------------------------------------------------------


class Probe:
    """Owns every process it starts (by PID) and the work directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.serial = 0
        self.env = dict(os.environ)
        if args.module_dir:
            self.env["QEMU_MODULE_DIR"] = args.module_dir
        if args.ld_library_path:
            self.env["LD_LIBRARY_PATH"] = args.ld_library_path
        guest_dir = Path(args.guest_dir)
        self.kernel = guest_dir / "vmlinuz"
        self.initrd = guest_dir / "initrd.gz"
        self.cmdline = "console=ttyS0 quiet"
        if args.dirty_mib > 0:
            self.cmdline += f" dirty_mib={args.dirty_mib} dirty_rate={args.dirty_rate:g}"

    def qemu_args(self, console: Path, qmp: Path, incoming: int | None) -> list[str]:
        a = self.args
        accel = "tcg" + (f",thread={a.accel_thread}" if a.accel_thread else "")
        command = [a.qemu]
        if a.datadir:
            command += ["-L", a.datadir]
        command += [
            "-machine", a.machine, "-accel", accel,
            "-m", str(a.memory), "-smp", str(a.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
            "-rtc", "base=utc", "-no-shutdown",
            "-serial", f"file:{console}",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline,
        ]  # fmt: skip
        if a.cpu:
            command += ["-cpu", a.cpu]
        if incoming is not None:
            command += ["-S", "-incoming", f"tcp:127.0.0.1:{incoming}"]
        return command

    def start(self, incoming: int | None) -> dict[str, Any]:
        self.serial += 1
        tag = f"q{self.serial}"
        console = self.workdir / f"{tag}.console"
        qmp_path = self.workdir / f"{tag}.qmp"
        command = self.qemu_args(console, qmp_path, incoming)
        with open(self.workdir / f"{tag}.stderr", "wb") as errlog:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog, env=self.env
            )
        self.procs[proc.pid] = proc
        try:
            qmp = QMP(qmp_path)
        except QMPError:
            self.kill(proc.pid)
            raise QMPError(
                f"QEMU {command} did not start: "
                + (self.workdir / f"{tag}.stderr").read_text(errors="replace")[-2000:]
            ) from None
        return {"tag": tag, "pid": proc.pid, "console": console, "qmp": qmp, "command": command}

    def alive(self, pid: int) -> bool:
        proc = self.procs.get(pid)
        return proc is not None and proc.poll() is None

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, vm: dict[str, Any] | None) -> None:
        if not vm:
            return
        with contextlib.suppress(QMPError, OSError):
            vm["qmp"].cmd("quit")
        vm["qmp"].close()
        proc = self.procs.get(vm["pid"])
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.kill(vm["pid"])

    def kill_all(self) -> None:
        for pid in list(self.procs):
            self.kill(pid)


def console_bytes(vm: dict[str, Any]) -> bytes:
    try:
        data: bytes = vm["console"].read_bytes()
        return data
    except OSError:
        return b""


def beats(data: bytes) -> list[int]:
    return [int(m) for m in HEARTBEAT.findall(data.replace(b"\r", b""))]


def first_line(
    pattern: re.Pattern[bytes], data: bytes, unless: re.Pattern[bytes] | None = None
) -> str | None:
    for line in data.replace(b"\r", b"").split(b"\n"):
        if pattern.search(line) and not (unless and unless.search(line)):
            return line.decode(errors="replace").strip()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CpuMeter:
    """Host CPU use (all cores) between calls, from /proc/stat."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    def percent(self) -> float:
        total, idle = self._read()
        dt, di = total - self.last[0], idle - self.last[1]
        self.last = (total, idle)
        return round(100.0 * (1 - di / dt), 1) if dt else 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# --- the experiment ------------------------------------------------------------------


def boot(probe: Probe) -> dict[str, Any]:
    """A fresh source guest, running and dirtying memory."""
    vm = probe.start(None)
    deadline = time.monotonic() + probe.args.boot_timeout
    while time.monotonic() < deadline:
        data = console_bytes(vm)
        b = beats(data)
        rates = DIRTY_REPORT.findall(data)
        if b and b[-1] > 10 and (probe.args.dirty_mib == 0 or len(rates) >= 2):
            vm["boot_dirty_rates"] = [float(r) for _m, r in rates]
            return vm
        if not probe.alive(vm["pid"]):
            break
        time.sleep(0.2)
    tail = console_bytes(vm)[-1500:].decode(errors="replace")
    probe.stop(vm)
    raise RuntimeError(f"guest did not come up (heartbeat > 10 and 2 dirty reports):\n{tail}")


def configure(qmp: QMP, args: argparse.Namespace, source: bool) -> None:
    caps = [{"capability": "auto-converge", "state": bool(args.auto_converge)}]
    if args.postcopy_cap:
        caps.append({"capability": "postcopy-ram", "state": True})
    qmp.cmd("migrate-set-capabilities", capabilities=caps)
    if source:
        qmp.cmd(
            "migrate-set-parameters",
            **{"downtime-limit": args.downtime_ms, "max-bandwidth": LIBVIRT_UNLIMITED},
        )


def ram_compare(
    src: dict[str, Any], dst: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Dump guest RAM on both stopped sides and count the 4 KiB pages that differ."""
    import numpy as np

    size = args.memory << 20
    out = Path(args.dump_dir)
    stem = f"tcgprobe-{os.getpid()}"  # two probes at once must not share dump files
    a_path, b_path = out / f"{stem}-{src['tag']}.ram", out / f"{stem}-{dst['tag']}.ram"
    t0 = time.monotonic()

    def dump(vm: dict[str, Any], path: Path) -> Any:
        vm["qmp"].cmd("pmemsave", val=0, size=size, filename=str(path))
        try:
            return np.fromfile(path, dtype=np.uint64).reshape(-1, PAGE // 8)
        finally:
            path.unlink(missing_ok=True)

    a, b = dump(src, a_path), dump(dst, b_path)
    result: dict[str, Any] = {}
    if args.ram_control:
        # control: a second dump of each stopped side must equal the first
        a2, b2 = dump(src, a_path), dump(dst, b_path)
        result["control_src_pages_changed"] = int((a != a2).any(axis=1).sum())
        result["control_dst_pages_changed"] = int((b != b2).any(axis=1).sum())
        del a2, b2
    differ = np.nonzero((a != b).any(axis=1))[0]
    in_hole = [int(p) for p in differ if HOLE[0] // PAGE <= p < HOLE[1] // PAGE]
    ram = [int(p) for p in differ if not HOLE[0] // PAGE <= p < HOLE[1] // PAGE]
    pages = []
    for p in ram[:64]:
        pages.append(classify_page(a[p], b[p], p))
    result.update(
        pages_differ=len(ram),
        pages_differ_hole=len(in_hole),
        differ_zero_on_target=sum(int(not b[p].any()) for p in ram),
        differ_stale_dirtier_pattern=sum(1 for x in pages if x["kind"] == "dirtier-stale"),
        pages=pages[:16],
        seconds=round(time.monotonic() - t0, 2),
    )
    return result


DIRTY_STEP = 0xBF58476D1CE4E5B9  # the guest helper's per-word step (simulations/guest.py)


def is_dirtier(words: Any) -> bool:
    """Whether a page holds the guest helper's pattern: words (seed + i*STEP) | 1."""
    w = [int(x) for x in words[:8]]
    base = w[0] & ~1
    return all(
        (x | 1) == (((base + i * DIRTY_STEP) & (2**64 - 1)) | 1)
        or (x & ~1) == (((base | 1) + i * DIRTY_STEP) & (2**64 - 2))
        for i, x in enumerate(w)
    )


def classify_page(src: Any, dst: Any, page: int) -> dict[str, Any]:
    """How one page differs between source and target."""
    words_differ = int((src != dst).sum())
    info: dict[str, Any] = {"gpa": hex(page * PAGE), "words_differ": words_differ}
    s_d, d_d = is_dirtier(src), is_dirtier(dst)
    if s_d and d_d:
        x = int(src[0]) ^ int(dst[0])
        info["kind"] = "dirtier-stale" if x & ((1 << 40) - 2) == 0 else "dirtier-other"
        info["pass_xor"] = x >> 40
    elif not dst.any():
        info["kind"] = "zero-on-target"
    else:
        info["kind"] = f"other(src_dirtier={s_d},dst_dirtier={d_d})"
    return info


def one_move(
    probe: Probe, src: dict[str, Any], number: int, cpu: CpuMeter
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Migrate `src` to a new target; return the row and the VM now holding the guest
    (None when the guest is broken and gone)."""
    args = probe.args
    port = free_port()
    row: dict[str, Any] = {"move": number, "start": now_utc(), "load_before": loadavg()}
    cpu.percent()
    dst = probe.start(port)
    configure(dst["qmp"], args, source=False)
    configure(src["qmp"], args, source=True)
    src_beats_before = beats(console_bytes(src))
    t0 = time.monotonic()
    src["qmp"].cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    throttle = 0
    info: dict[str, Any] = {}
    while True:
        info = src["qmp"].cmd("query-migrate")
        throttle = max(throttle, int(info.get("cpu-throttle-percentage", 0) or 0))
        status = info.get("status")
        if status in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() - t0 > args.move_timeout:
            src["qmp"].cmd("migrate_cancel")
            row["stalled"] = True
            break
        time.sleep(0.1)
    ram = info.get("ram", {})
    row.update(
        status=info.get("status"),
        error=info.get("error-desc"),
        passes=ram.get("dirty-sync-count"),
        downtime_ms=info.get("downtime"),
        total_ms=info.get("total-time"),
        setup_ms=info.get("setup-time"),
        transferred_mib=round(ram.get("transferred", 0) / 2**20, 1),
        throttle_max_pct=throttle,
        wall_s=round(time.monotonic() - t0, 2),
        src_last_beat=(beats(console_bytes(src)) or [0])[-1],
    )
    if row["status"] != "completed":
        # the guest stays on the source; drop the target and go on from there
        probe.stop(dst)
        row["broken"] = False
        row["note"] = "migration did not complete; guest left on the source"
        row["cpu_pct"] = cpu.percent()
        row["load_after"] = loadavg()
        return row, src
    # wait for the target to have loaded everything (it stays paused: -S)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not probe.alive(dst["pid"]):
            break
        try:
            dst_state = dst["qmp"].cmd("query-migrate").get("status")
            run_state = dst["qmp"].cmd("query-status").get("status")
        except QMPError:
            break
        if dst_state == "completed" and run_state in ("paused", "prelaunch"):
            break
        time.sleep(0.05)
    if args.ram_compare and probe.alive(dst["pid"]):
        try:
            row["ram"] = ram_compare(src, dst, args)
        except (QMPError, OSError, ValueError) as exc:
            row["ram"] = {"error": str(exc)}
    if probe.alive(dst["pid"]):
        try:
            dst["qmp"].cmd("cont")
        except QMPError as exc:
            row["cont_error"] = str(exc)
    probe.stop(src)
    # watch the target
    settle_end = time.monotonic() + args.settle
    data = b""
    while time.monotonic() < settle_end:
        data = console_bytes(dst)
        if first_line(BROKEN, data, unless=SOFT_BUG):
            time.sleep(1.0)  # let the rest of the oops reach the console
            data = console_bytes(dst)
            break
        if not probe.alive(dst["pid"]):
            break
        time.sleep(0.25)
    after = beats(data)
    last_before = max(row["src_last_beat"], (src_beats_before or [0])[-1])
    panic = first_line(BROKEN, data, unless=SOFT_BUG)
    soft = first_line(SOFT_BUG, data)
    warn = first_line(WARNING, data)
    hb_ok = bool(after) and after[0] > last_before - 5 and after[-1] >= after[0] + 10
    qemu_alive = probe.alive(dst["pid"])
    row.update(
        target_first_beat=after[0] if after else None,
        target_last_beat=after[-1] if after else None,
        heartbeat_ok=hb_ok,
        qemu_alive=qemu_alive,
        panic_line=panic,
        soft_lockup_line=soft,
        warning_line=warn,
        dirty_reports_after=len(DIRTY_REPORT.findall(data)),
    )
    broken = bool(panic) or not hb_ok or not qemu_alive
    row["broken"] = broken
    row["cpu_pct"] = cpu.percent()
    row["load_after"] = loadavg()
    if broken:
        if not panic and qemu_alive and args.late_watch > 0:
            # a silent guest: watch a little longer for a late oops, and see where it is
            end = time.monotonic() + args.late_watch
            while time.monotonic() < end and not first_line(BROKEN, data, unless=SOFT_BUG):
                time.sleep(0.5)
                data = console_bytes(dst)
            row["late_panic_line"] = first_line(BROKEN, data, unless=SOFT_BUG)
            row["late_beats"] = len(beats(data))
            try:
                regs = dst["qmp"].cmd("human-monitor-command", **{"command-line": "info registers"})
                row["target_regs"] = " ".join(
                    w for w in regs.split() if w.startswith(("RIP=", "CR0=", "CR2=", "HLT="))
                )
            except (QMPError, OSError) as exc:
                row["target_regs"] = f"error: {exc}"
        row["console_tail"] = data[-6000:].decode(errors="replace").splitlines()[-60:]
        probe.stop(dst)
        return row, None
    return row, dst


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r.get("status") == "completed"]
    broken = [r for r in done if r.get("broken")]
    healthy = [r for r in done if not r.get("broken")]

    def hist(rs: list[dict[str, Any]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rs:
            out[str(r.get("passes"))] = out.get(str(r.get("passes")), 0) + 1
        return dict(sorted(out.items()))

    lost = [r for r in done if (r.get("ram") or {}).get("pages_differ")]
    downtimes = sorted(r["downtime_ms"] for r in done if isinstance(r.get("downtime_ms"), int))
    loads = [r["load_before"][0] for r in rows if r.get("load_before")]
    cpus = [r["cpu_pct"] for r in rows if isinstance(r.get("cpu_pct"), float)]
    four_plus = [r for r in done if (r.get("passes") or 0) >= 4]
    return {
        "moves": len(rows),
        "completed": len(done),
        "not_completed": [r.get("status") for r in rows if r.get("status") != "completed"],
        "broken": len(broken),
        "broken_moves": [
            {
                "move": r["move"],
                "passes": r.get("passes"),
                "panic_line": r.get("panic_line"),
                "heartbeat_ok": r.get("heartbeat_ok"),
                "qemu_alive": r.get("qemu_alive"),
                "ram_pages_differ": (r.get("ram") or {}).get("pages_differ"),
            }
            for r in broken
        ],
        "passes_broken": hist(broken),
        "passes_healthy": hist(healthy),
        "moves_4plus_passes": len(four_plus),
        "broken_4plus_passes": sum(bool(r.get("broken")) for r in four_plus),
        "moves_with_ram_pages_differing": len(lost),
        "ram_pages_differing_by_move": {str(r["move"]): r["ram"]["pages_differ"] for r in lost},
        "broken_with_ram_differing": sum(bool(r.get("broken")) for r in lost),
        "healthy_with_ram_differing": sum(not r.get("broken") for r in lost),
        "downtime_ms_median": downtimes[len(downtimes) // 2] if downtimes else None,
        "load1_median": sorted(loads)[len(loads) // 2] if loads else None,
        "load1_max": max(loads) if loads else None,
        "host_cpu_pct_median": sorted(cpus)[len(cpus) // 2] if cpus else None,
        "soft_lockups": sum(bool(r.get("soft_lockup_line")) for r in done),
    }


def write(path: str | None, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarise(rows)
    if path:
        Path(path).write_text(json.dumps(result | {"summary": summary, "moves": rows}, indent=1))
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="run", help="name of this configuration")
    p.add_argument("--moves", type=int, default=36)
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--datadir", help="QEMU -L (firmware dir) for an extracted QEMU")
    p.add_argument("--module-dir", help="QEMU_MODULE_DIR for an extracted QEMU")
    p.add_argument("--ld-library-path", help="LD_LIBRARY_PATH for an extracted QEMU")
    p.add_argument(
        "--guest-dir",
        default="/var/lib/novacron-guest",
        help="built test guest (python -m novacron.simulations.guest build --out DIR)",
    )
    p.add_argument("--machine", default="pc", help="-machine (the lab's XML says pc)")
    p.add_argument("--accel-thread", choices=["single", "multi"], help="-accel tcg,thread=")
    p.add_argument("--cpu", help="-cpu MODEL (default: QEMU's, qemu64, as libvirt gives)")
    p.add_argument("--vcpus", type=int, default=1, help="-smp (the lab's guests have 1)")
    p.add_argument("--memory", type=int, default=128, help="guest MiB")
    p.add_argument("--dirty-mib", type=int, default=32, help="guest working set rewritten")
    p.add_argument("--dirty-rate", type=float, default=30, help="guest MiB/s")
    p.add_argument("--downtime-ms", type=int, default=50, help="migrate downtime-limit")
    p.add_argument("--no-auto-converge", dest="auto_converge", action="store_false")
    p.add_argument(
        "--no-postcopy-cap",
        dest="postcopy_cap",
        action="store_false",
        help="do not set the postcopy-ram capability (virsh --postcopy sets it)",
    )
    p.add_argument("--no-ram-compare", dest="ram_compare", action="store_false")
    p.add_argument(
        "--ram-control",
        action="store_true",
        help="dump each stopped side twice: the two dumps must be equal",
    )
    p.add_argument("--dump-dir", default="/dev/shm", help="where RAM dumps go (deleted at once)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds to watch the target")
    p.add_argument(
        "--late-watch",
        type=float,
        default=20.0,
        help="after a silent broken guest, watch this much longer (diagnosis only)",
    )
    p.add_argument("--move-timeout", type=float, default=120.0)
    p.add_argument("--boot-timeout", type=float, default=90.0)
    p.add_argument(
        "--no-stress",
        dest="stress",
        action="store_false",
        help="do not run stress-ng --cpu 1 beside",
    )
    p.add_argument("--until", help="stop starting moves at this UTC time, HH:MM")
    p.add_argument("--workdir", help="keep consoles here (default: a temp dir, removed)")
    p.add_argument("--json", help="write the moves and the summary here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    until = None
    if args.until:
        hh, mm = (int(x) for x in args.until.split(":"))
        today = datetime.now(UTC)
        until = today.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tcgprobe-"))
    workdir.mkdir(parents=True, exist_ok=True)
    probe = Probe(args, workdir)
    version = subprocess.run(
        [args.qemu, "--version"], capture_output=True, text=True, env=probe.env, check=False
    ).stdout.splitlines()[:1]
    result: dict[str, Any] = {
        "label": args.label,
        "date": now_utc(),
        "command": " ".join([sys.executable, *sys.argv]),
        "qemu": args.qemu,
        "qemu_version": version[0] if version else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "guest_cmdline": probe.cmdline,
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
    }
    stress = None
    rows: list[dict[str, Any]] = []
    cpu = CpuMeter()
    try:
        if args.stress:
            stress = subprocess.Popen(
                ["stress-ng", "--cpu", "1", "--cpu-method", "matrixprod", "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            result["stress_pid"] = stress.pid
        booted = boot(probe)
        vm: dict[str, Any] | None = booted
        result["qemu_command"] = booted["command"]
        result["boot_dirty_rates"] = booted.get("boot_dirty_rates")
        result["machine_resolved"] = booted["qmp"].cmd("query-target")
        for number in range(args.moves):
            if until and time.time() > until:
                result["stopped_early"] = f"--until {args.until} reached after {number} moves"
                break
            if vm is None:
                vm = boot(probe)
            row, vm = one_move(probe, vm, number, cpu)
            rows.append(row)
            ram = row.get("ram") or {}
            print(
                f"[{args.label}] #{number} {row.get('status')} passes={row.get('passes')} "
                f"downtime={row.get('downtime_ms')}ms throttle={row.get('throttle_max_pct')}% "
                f"ram_differ={ram.get('pages_differ')} "
                f"{'BROKEN ' + str(row.get('panic_line')) if row.get('broken') else 'ok'} "
                f"load={row['load_before'][0]}",
                flush=True,
            )
            write(args.json, result, rows)
    finally:
        result["end"] = now_utc()
        probe.kill_all()
        if stress is not None:
            # stress-ng forks workers into its own session: signal that group only
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stress.pid, signal.SIGTERM)
            try:
                stress.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(stress.pid, signal.SIGKILL)
                stress.wait()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = write(args.json, result, rows)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
