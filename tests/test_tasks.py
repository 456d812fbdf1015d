"""Stopping an agent's loops: a cancellation is never lost, so a close always ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable

import pytest

from novacron.agent import tasks
from novacron.agent.tasks import cancel_and_wait, wait_event


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """The way the loops waited before: `asyncio.wait_for` on the event."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def cancelled_as_the_event_is_set(
    wait: Callable[[asyncio.Event, float], Awaitable[bool]],
) -> bool:
    """A loop waits on an event; another task sets it and, in the same instant, closing
    cancels the loop (what an agent stopping at start-up did while a seed answered).
    Whether the loop ended, rather than going on to wait again."""
    event = asyncio.Event()
    rounds: list[int] = []

    async def loop() -> None:
        while True:
            event.clear()
            await wait(event, 10.0)
            rounds.append(1)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()  # what a close that waited for ever would need
        await asyncio.gather(task, return_exceptions=True)
        return False
    return task.cancelled() and not rounds


async def test_a_loop_cancelled_as_its_event_is_set_ends() -> None:
    assert await cancelled_as_the_event_is_set(wait_event)


async def test_the_old_wait_lost_that_cancellation_on_python_3_11() -> None:
    """Why `wait_event` exists: on Python 3.11 `wait_for` loses it (gh-86296; kept from
    3.12 on), and the agent's close waited for ever (a fresh-clone suite: the clone that
    should have stopped kept running)."""
    kept = await cancelled_as_the_event_is_set(wait_for_event)
    assert kept == (sys.version_info >= (3, 12))


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_a_task_that_swallows_its_cancellation_does_not_hang_the_close(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that lost its cancellation once is cancelled again, and named in the log,
    so a stopping agent costs a log line, not a hang; one that never ends is left behind."""
    monkeypatch.setattr(tasks, "CANCEL_GRACE", 0.2)
    swallowed: list[int] = []
    release = asyncio.Event()

    async def loses_one_cancel() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)

    async def released() -> None:
        await release.wait()

    async def never_ends() -> None:  # until the test releases it
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released()

    async def fails() -> None:
        raise RuntimeError("logged by whoever watched it")

    lost = asyncio.create_task(loses_one_cancel(), name="loses-one-cancel")
    stuck = asyncio.create_task(never_ends(), name="never-ends")
    failed = asyncio.create_task(fails(), name="fails")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="novacron.agent.tasks"):
        closing = asyncio.create_task(cancel_and_wait([lost, stuck, failed]))
        closed, _ = await asyncio.wait({closing}, timeout=5)
    lost_ended, left_behind = lost.cancelled(), not stuck.done()
    lost.cancel()  # the clean-up ends both tasks, and a close still waiting for them
    release.set()
    await asyncio.gather(closing, lost, stuck, return_exceptions=True)
    assert closed, "the close waited for a task that never ended"
    assert lost_ended and swallowed == [1]
    assert left_behind  # after the last try
    lines = [r.getMessage() for r in caplog.records]
    assert sum("loses-one-cancel" in line for line in lines) == 1
    assert sum("never-ends" in line for line in lines) == tasks.CANCEL_TRIES
    assert any("in never_ends" in line and "in released" in line for line in lines)  # where
    failures = [r for r in caplog.records if r.getMessage() == "fails had failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None  # not raised, not lost
