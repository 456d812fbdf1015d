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
