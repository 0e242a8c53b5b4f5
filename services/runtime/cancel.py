"""Stopping tasks within a bound: a task cancelled inside a statement to a database that stopped answering waits
for its rollback (the pool's 60 s command timeout), and waiting for it held shutdowns past their grace period."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_within(timeout: float, *tasks: asyncio.Task[Any]) -> set[asyncio.Task[Any]]:
    """Cancel the tasks and wait up to `timeout` for them to end; returns those still running. Those end once their
    connections do (the service terminates its pool last); whatever they raise then is dropped, not logged as
    never retrieved."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return set()
    _, running = await asyncio.wait(tasks, timeout=timeout)
    forget(*tasks)
    return running


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def forget(*futures: asyncio.Future[Any]) -> None:
    """Futures nobody will await any more: their outcome is retrieved as they end, so that a failure is not logged
    by asyncio as never retrieved."""
    for future in futures:
        if future.done():
            _drop_outcome(future)
        else:
            future.add_done_callback(_drop_outcome)


def being_cancelled() -> bool:
    """Whether the current task is being cancelled, though what it awaited raised something else (a database driver
    cancelled mid-statement may): a retry loop must then stop, not go on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
