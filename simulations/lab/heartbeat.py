"""A test guest's heartbeat in a lab host, waited for as long as the guest is trying to run.

The test guest prints `heartbeat N` every 100 ms (simulations/guest.py). On
a loaded machine a TCG guest can go a minute without printing anything, so
a wait measured by the wall clock fails healthy guests. This one follows the
guest instead, through the kernel's accounting of its vCPU threads (how long
they ran, and how long they sat runnable waiting for a core), and gives up
only when the guest is shown broken:

- its console shows a panic, an oops or a lockup;
- its vCPUs ran `SILENT_RUN` seconds without it printing a heartbeat (a
  healthy guest needs a small part of that per line: it spins, hung);
- over the last `STALL` seconds its vCPUs neither ran nor waited to run for
  more than `IDLE_SHARE` of the time (halted after a crash, paused, or not
  running on this host): a guest starved by a loaded machine waits to run;
- `LIMIT` seconds have passed: a backstop, whatever the guest does.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from novacron.simulations import guest as guest_files
from novacron.simulations.lab.host import LabHost

BROKEN = re.compile(
    rb"Kernel panic|Fatal exception|Oops|BUG: |general protection fault|"
    rb"Fixing recursive fault|soft lockup|hard LOCKUP"
)
"""What a broken guest prints on its console. (A reboot restarts the counter:
callers' checks that it continues catch that.)"""
SILENT_RUN = 10.0  # vCPU seconds a guest may run without printing a heartbeat
STALL = 30.0  # seconds over which a guest that does not try to run counts as stuck
IDLE_SHARE = 0.02  # below this share of a core, running or waiting to, it is not trying
LIMIT = 600.0  # seconds, however the guest behaves
LOOK_EVERY = 1.0  # seconds between reads of the vCPU threads' accounting
PIDFILES = Path("/run/libvirt/qemu")  # NAME.pid, in the host's private /run


class GuestNotBeating(Exception):
    """The guest did not print the heartbeat waited for; the message says why, with evidence."""


@dataclass(frozen=True)
class Sample:
    """The guest's vCPU threads' accounting at one moment."""

    at: float  # time.monotonic() of the look
    ran: float  # seconds its vCPUs have run
    waited: float  # seconds its vCPUs have been runnable without a core


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
                f"{why}; last heartbeat {series[-1] if series else None}; console ends:\n"
                + text[-800:].decode(errors="replace")
            )
        time.sleep(0.1)


def verdict(
    console: bytes, waited: float, first: Sample | None, recent: list[Sample], now: float
) -> str:
    """Why the wait must end now ("" while the guest may still print its heartbeat).

    `first` is the first look that found the guest running, `recent` the looks of
    the last `STALL` seconds.
    """
    shown = BROKEN.search(console)
    if shown:
        return f"the guest is broken ({shown.group().decode()})"
    if first and recent and recent[-1].ran - first.ran > SILENT_RUN:
        return f"its vCPUs ran {recent[-1].ran - first.ran:.1f} s without it printing one"
    if waited > STALL:
        if not recent:
            return f"it has not run on this host for {STALL:g} s"
        span = now - recent[0].at
        tried = (recent[-1].ran + recent[-1].waited) - (recent[0].ran + recent[0].waited)
        if span >= STALL - 2 * LOOK_EVERY and tried < IDLE_SHARE * span:
            return (
                f"it did not try to run in the last {span:.0f} s ({tried:.2f} s on or waiting "
                "for a core: halted, hung or paused)"
            )
    if waited > LIMIT:
        return f"it ran too slowly to wait on ({recent[-1].ran if recent else 0:.1f} vCPU s)"
    return ""
