"""A test guest's heartbeat in a lab host, waited for as long as the guest is trying to run.

The test guest prints `heartbeat N` every 100 ms (simulations/guest.py). On
a loaded machine a TCG guest can go a minute without printing anything, so
a wait measured by the wall clock fails healthy guests. This one follows the
guest instead, through the kernel's accounting of its vCPU threads (how long
they ran, and how long they sat runnable waiting for a core), and gives up
only when the guest is shown broken (simulations/guest_health.py says when).
"""

from __future__ import annotations

import time
from pathlib import Path

from novacron.simulations import guest as guest_files
from novacron.simulations.guest_health import BROKEN, LOOK_EVERY, STALL, Sample, verdict
from novacron.simulations.lab.host import LabHost

PIDFILES = Path("/run/libvirt/qemu")  # NAME.pid, in the host's private /run


class GuestNotBeating(Exception):
    """The guest did not print the heartbeat waited for; the message says why, with evidence."""


def console_evidence(text: bytes) -> str:
    """What of a console explains a broken guest: its first report of trouble and what
    followed (the oops' first lines name the fault), or the last lines of a silent one."""
    shown = BROKEN.search(text)
    start = max(0, shown.start() - 400 if shown else len(text) - 800)
    picked = text[start : start + 3000]
    return picked.decode(errors="replace") + ("\n[...]" if start + 3000 < len(text) else "")


def vcpu_threads(host: LabHost, name: str) -> list[Path]:
    """/proc/PID/task/TID of VM `name`'s vCPU threads on `host` (QEMU names them "CPU 0/TCG",
    "CPU 0/KVM"); none when it does not run there."""
    try:
        pid = int(host.path(PIDFILES / f"{name}.pid").read_text().split()[0])
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (OSError, ValueError, IndexError):
        return []
    found = []
    for task in tasks:
        try:
            if (task / "comm").read_text().startswith("CPU "):
                found.append(task)
        except OSError:
            continue
    return found


def sample(host: LabHost, name: str) -> Sample | None:
    """The guest's vCPU accounting now, or None when it does not run on `host`."""
    ran = waited = 0
    threads = vcpu_threads(host, name)
    for task in threads:
        try:  # schedstat: nanoseconds on a CPU, nanoseconds runnable on a run queue, slices
            on_cpu, queued, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        ran, waited = ran + int(on_cpu), waited + int(queued)
    return Sample(time.monotonic(), ran / 1e9, waited / 1e9) if threads else None


def wait_heartbeat_above(host: LabHost, name: str, console: Path, above: int) -> list[int]:
    """Every heartbeat in `console` (a path as `host` sees it) once one is above `above`.

    `GuestNotBeating` when the guest is shown broken (see the module docstring).
    """
    log = host.path(console)
    start = time.monotonic()
    looked = start - LOOK_EVERY
    samples: list[Sample] = []  # the last STALL seconds of looks (None: not running)
    first: Sample | None = None
    while True:
        text = log.read_bytes() if log.exists() else b""
        series = guest_files.heartbeats(text)
        if series and series[-1] > above:
            return series
        now = time.monotonic()
        if now - looked >= LOOK_EVERY:
            looked, seen = now, sample(host, name)
            first = first or seen
            samples = [s for s in samples if now - s.at <= STALL] + ([seen] if seen else [])
        why = verdict(text, now - start, first, samples, now)
        if why:
            raise GuestNotBeating(
                f"{name} on {host.name}: no heartbeat above {above} after {now - start:.0f} s: "
                f"{why}; last heartbeat {series[-1] if series else None}; console:\n"
                + console_evidence(text)
            )
        time.sleep(0.1)
