"""A test guest's heartbeat in a lab host, waited for as long as the guest is running.

The test guest prints `heartbeat N` every 100 ms (simulations/guest.py). On
a loaded machine a TCG guest can go a minute without printing anything, so
a wait measured by the wall clock fails healthy guests. This one follows the
guest instead: it reads the guest's vCPU time, and gives up only when the
guest is shown broken:

- its console shows a panic, an oops or a lockup;
- it has run `SILENT_RUN` vCPU seconds without printing a heartbeat (a
  healthy guest needs a small fraction of that per line; one that spins
  without printing is hung);
- it has not run at all for `STALL` seconds (paused, or not running on the host);
- `LIMIT` seconds have passed: a backstop, whatever the guest does.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from novacron.simulations import guest as guest_files
from novacron.simulations.lab.host import LabHost

BROKEN = re.compile(rb"Kernel panic|Fatal exception|Oops|BUG: ")
"""What a broken guest prints on its console. (A reboot restarts the counter:
callers' checks that it continues catch that.)"""
SILENT_RUN = 10.0  # vCPU seconds a guest may run without printing a heartbeat
STALL = 30.0  # seconds a guest may go without running at all
LIMIT = 600.0  # seconds, however the guest behaves
LOOK_EVERY = 1.0  # seconds between reads of the guest's vCPU time (each is a virsh call)


class GuestNotBeating(Exception):
    """The guest did not print the heartbeat waited for; the message says why, with evidence."""


def vcpu_seconds(host: LabHost, name: str) -> float | None:
    """CPU time VM `name`'s vCPUs have run on `host`, or None while it is not running there."""
    done = host.run(
        ["virsh", "-c", "qemu:///system", "domstats", "--vcpu", "--state", name],
        capture_output=True,
        text=True,
    )
    pairs = dict(line.strip().partition("=")[::2] for line in done.stdout.splitlines())
    if done.returncode != 0 or pairs.get("state.state") != "1":  # 1: VIR_DOMAIN_RUNNING
        return None
    times = [int(value) for key, value in pairs.items() if re.fullmatch(r"vcpu\.\d+\.time", key)]
    return sum(times) / 1e9


def wait_heartbeat_above(host: LabHost, name: str, console: Path, above: int) -> list[int]:
    """Every heartbeat in `console` (a path as `host` sees it) once one is above `above`.

    `GuestNotBeating` when the guest is shown broken (see the module docstring).
    """
    log = host.path(console)
    start = moved_at = time.monotonic()
    looked = start - LOOK_EVERY
    first: float | None = None  # vCPU seconds at the first look that found the guest running
    ran: float | None = None  # vCPU seconds when last seen to grow
    while True:
        text = log.read_bytes() if log.exists() else b""
        series = guest_files.heartbeats(text)
        if series and series[-1] > above:
            return series
        now = time.monotonic()
        if now - looked >= LOOK_EVERY:
            looked, seconds = now, vcpu_seconds(host, name)
            if seconds is not None and (ran is None or seconds > ran):
                first = seconds if first is None else first
                ran, moved_at = seconds, now
        why = _broken(text, now - start, now - moved_at, (ran or 0.0) - (first or 0.0))
        if why:
            raise GuestNotBeating(
                f"{name} on {host.name}: no heartbeat above {above} after {now - start:.0f} s: "
                f"{why}; last heartbeat {series[-1] if series else None}; console ends:\n"
                + text[-800:].decode(errors="replace")
            )
        time.sleep(0.1)


def _broken(console: bytes, waited: float, still: float, run: float) -> str:
    """Why the wait must end now ("" while the guest may still print its heartbeat)."""
    shown = BROKEN.search(console)
    if shown:
        return f"the guest is broken ({shown.group().decode()})"
    if run > SILENT_RUN:
        return f"the guest ran {run:.1f} vCPU seconds without printing one"
    if still > STALL:
        return f"the guest has not run for {still:.0f} s (paused, or not running here)"
    if waited > LIMIT:
        return f"the guest ran {run:.1f} vCPU seconds in {waited:.0f} s, too slowly to wait on"
    return ""
