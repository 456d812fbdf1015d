"""Background tasks of a component, stopped together when it closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

CANCEL_GRACE = 2.0  # seconds a cancelled task gets to end before it is cancelled again
CANCEL_TRIES = 3  # cancellations before a task is left behind, so a close always ends
MAX_AWAITS = 12  # frames of a stuck task's await chain named in the log


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task and wait until each has ended.

    One failure must not keep the others from being waited for: a task that
    had failed is logged with its error, not raised. A task still running
    after `CANCEL_GRACE` lost its cancellation (a swallowed `CancelledError`,
    or Python 3.11's `wait_for`): it is named in the log with the awaits it
    sits in and cancelled again; after `CANCEL_TRIES` it is left behind, so a
    stopping agent never hangs on one bug.
    """
    pending = set(tasks)
    for attempt in range(1, CANCEL_TRIES + 1):
        for task in pending:
            task.cancel()
        if not pending:
            return
        done, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:  # nobody else may have looked: say it once, here
                log.error("%s had failed", _name(task), exc_info=error)
        for task in pending:
            log.error(
                "a task did not end when cancelled (%d of %d)%s",
                attempt,
                CANCEL_TRIES,
                _where(task),
            )


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


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


def _where(task: asyncio.Future[Any]) -> str:
    """`task`'s name and the awaits it sits in, innermost last, for a log line."""
    lines = [f": {_name(task)}"]
    if not isinstance(task, asyncio.Task):
        return lines[0]
    awaiting: Any = task.get_coro()
    for _ in range(MAX_AWAITS):
        frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    return "\n".join(lines)
