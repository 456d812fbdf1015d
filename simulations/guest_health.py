"""When a wait for the test guest's heartbeat must give up: on evidence that the guest is
broken, never because a loaded machine made it slow.

A pure decision over the guest's console and samples of its vCPU threads'
accounting (how long they ran, and how long they sat runnable waiting for a
core); simulations/lab/heartbeat.py takes the samples in a lab host. The wait
ends when:

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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Sample:
    """The guest's vCPU threads' accounting at one moment."""

    at: float  # time.monotonic() of the look
    ran: float  # seconds its vCPUs have run
    waited: float  # seconds its vCPUs have been runnable without a core


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
