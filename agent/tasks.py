"""Background tasks of a component, stopped together when it closes."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

CANCEL_GRACE = 2.0  # seconds a cancelled task gets to end before it is cancelled again
CANCEL_TRIES = 3  # cancellations before a task is left behind, so a close always ends


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task and wait until each has ended.

    Their outcomes are dropped: at close a task's own error was already
    logged by whoever watched it, and one failure must not keep the others
    from being waited for. A task still running after `CANCEL_GRACE` lost
    its cancellation (a swallowed `CancelledError`, or Python 3.11's
    `wait_for`): it is named in the log with where it waits and cancelled
    again; after `CANCEL_TRIES` it is left behind, so a stopping agent never
    hangs on one bug.
    """
    pending = set(tasks)
    for attempt in range(1, CANCEL_TRIES + 1):
        for task in pending:
            task.cancel()
        if not pending:
            return
        done, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as forgotten
        for task in pending:
            log.error(
                "a task did not end when cancelled (%d of %d)%s",
                attempt,
                CANCEL_TRIES,
                _where(task),
            )


def _where(task: asyncio.Future[Any]) -> str:
    """`task`'s name and stack, for a log line."""
    if not isinstance(task, asyncio.Task):
        return f": {task!r}"
    stack = io.StringIO()
    task.print_stack(limit=8, file=stack)
    return f": {task.get_name()}\n{stack.getvalue()}"


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
