"""Background tasks of a component, stopped together when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task and wait until each has ended.

    Their outcomes are dropped: at close a task's own error was already
    logged by whoever watched it, and one failure must not keep the others
    from being waited for.
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False).

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that returns
    normally when the event is set in the instant its task is cancelled, and
    the cancellation is lost; a loop waiting that way then runs on, and the
    close that cancelled it waits for ever. `asyncio.timeout` keeps it.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
