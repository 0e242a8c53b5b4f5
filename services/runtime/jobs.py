"""Background jobs (the notifier's sender, the invitations' expiry sweeper) kept running for the service's life.

A job is meant to run until the service stops. One that returns or raises anyway is logged and started again
after a pause that doubles while it keeps failing; meanwhile /readyz says `"jobs": false`. Without this a
notifier whose sender had died kept answering its API and /readyz while never sending another email.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.runtime.logging import get_logger

log = get_logger(__name__)

FIRST_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 30.0
HEALTHY_SECONDS = 60.0  # a run that lasted this long resets the pause to the first one


class Jobs:
    """Which jobs are running now, by name."""

    def __init__(self) -> None:
        self.running: dict[str, bool] = {}

    async def ready(self) -> bool:
        return all(self.running.values())

    async def keep_running(
        self,
        name: str,
        run: Callable[[], Awaitable[Any]],
        *,
        pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Run `run()` again whenever it ends, until cancelled (the service stopping)."""
        failures = 0
        while True:
            self.running[name] = True
            started = clock()
            try:
                await run()
                log.error("job.ended", job=name)
            except Exception:  # not CancelledError: that is the service stopping, and ends this loop
                log.exception("job.failed", job=name)
            self.running[name] = False
            failures = 1 if clock() - started >= HEALTHY_SECONDS else failures + 1
            delay = min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2 ** (failures - 1))
            log.warning("job.restarting", job=name, in_seconds=delay)
            await pause(delay)
