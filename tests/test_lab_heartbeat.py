"""When a heartbeat wait gives up: only on evidence that the guest is broken, never because a
loaded machine made it slow (the decision is a pure function; the lab tests use the wait)."""

from __future__ import annotations

from novacron.simulations.lab.heartbeat import LIMIT, SILENT_RUN, STALL, _broken


def test_a_slow_guest_that_still_runs_is_waited_for() -> None:
    # Two minutes without a line, but the guest got only a few vCPU seconds: starved, not broken.
    assert _broken(b"heartbeat 41\n", waited=120, still=1, run=SILENT_RUN / 2) == ""


def test_a_panic_on_the_console_ends_the_wait_at_once() -> None:
    console = b"heartbeat 41\n[ 12.3] Kernel panic - not syncing: Fatal exception in interrupt\n"
    assert "broken (Kernel panic)" in _broken(console, waited=0.5, still=0, run=0)


def test_a_guest_that_runs_without_printing_is_hung() -> None:
    assert "without printing" in _broken(b"", waited=20, still=0, run=SILENT_RUN + 1)


def test_a_guest_that_does_not_run_is_stuck() -> None:
    assert "has not run for" in _broken(b"", waited=STALL + 5, still=STALL + 1, run=0)


def test_the_backstop() -> None:
    assert "too slowly" in _broken(b"", waited=LIMIT + 1, still=0, run=1)
