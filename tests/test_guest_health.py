"""When a heartbeat wait gives up: only on evidence that the guest is broken, never because a
loaded machine made it slow (the decision is a pure function; the lab tests use the wait)."""

from __future__ import annotations

from novacron.simulations.guest_health import LIMIT, SILENT_RUN, STALL, Sample, verdict


def looks(ran_per_s: float, waited_per_s: float, seconds: float = STALL) -> list[Sample]:
    """One look a second over `seconds`, the vCPUs running and queued at these rates."""
    count = int(seconds) + 1
    return [Sample(float(t), 5 + ran_per_s * t, 2 + waited_per_s * t) for t in range(count)]


def test_a_starved_guest_is_waited_for() -> None:
    # Two minutes without a line: it ran little, but sat runnable waiting for a core.
    recent = looks(ran_per_s=0.01, waited_per_s=0.5)
    assert verdict(b"heartbeat 41\n", 120, recent[0], recent, recent[-1].at) == ""


def test_a_panic_on_the_console_ends_the_wait_at_once() -> None:
    console = b"heartbeat 41\n[ 12.3] Kernel panic - not syncing: Fatal exception in interrupt\n"
    assert "broken (Kernel panic)" in verdict(console, 0.5, None, [], 0.5)


def test_an_oops_on_the_console_ends_the_wait_at_once() -> None:
    console = b"[ 15.0] general protection fault, probably for non-canonical address\n"
    assert "broken (general protection fault)" in verdict(console, 0.5, None, [], 0.5)


def test_a_guest_that_runs_without_printing_is_hung() -> None:
    recent = looks(ran_per_s=0.5, waited_per_s=0.1)
    first = Sample(-60, recent[0].ran - SILENT_RUN, 0)
    assert "without it printing one" in verdict(b"", 60, first, recent, recent[-1].at)


def test_a_halted_guest_is_stuck() -> None:
    # After an oops the guest halts: its vCPU wakes for a tick now and then, nothing more.
    recent = looks(ran_per_s=0.002, waited_per_s=0.0005)
    why = verdict(b"", STALL + 5, recent[0], recent, recent[-1].at)
    assert "did not try to run" in why


def test_a_guest_that_is_not_on_the_host_is_stuck() -> None:
    assert "has not run on this host" in verdict(b"", STALL + 1, None, [], STALL + 1)
    assert verdict(b"", STALL - 1, None, [], STALL - 1) == ""


def test_the_backstop() -> None:
    recent = looks(ran_per_s=0.01, waited_per_s=0.5)
    assert "too slowly" in verdict(b"", LIMIT + 1, recent[0], recent, recent[-1].at)
