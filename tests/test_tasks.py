"""Stopping an agent's loops: a cancellation is never lost, so a close always ends."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from novacron.agent.tasks import wait_event


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
