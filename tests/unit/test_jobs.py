"""A background job that ends or fails is started again, with a pause that doubles while it keeps failing."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.jobs import FIRST_PAUSE_SECONDS, HEALTHY_SECONDS, MAX_PAUSE_SECONDS, Jobs


async def test_a_failing_job_is_restarted_with_growing_pauses_until_it_stays_up() -> None:
    jobs = Jobs()
    now = [0.0]
    pauses: list[float] = []
    seen_running: list[bool] = []
    runs = 0
    stays_up = asyncio.Event()

    async def pause(seconds: float) -> None:
        seen_running.append(await jobs.ready())
        pauses.append(seconds)
        now[0] += seconds

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs <= 8:
            raise RuntimeError("boom")
        if runs == 9:
            now[0] += HEALTHY_SECONDS  # ran a long while, then ended
            return
        stays_up.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(jobs.keep_running("sender", job, pause=pause, clock=lambda: now[0]))
    async with asyncio.timeout(10):
        await stays_up.wait()
    assert await jobs.ready() and jobs.running == {"sender": True}
    doubling = [min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2**i) for i in range(8)]
    assert pauses == [*doubling, FIRST_PAUSE_SECONDS]  # after a long healthy run, back to the first pause
    assert seen_running == [False] * 9  # /readyz said so during every pause
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
