"""A practice's turns within one process: one at a time per practice, others not held up, nothing left behind."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from services.invitations.practice_lock import _Turns


async def test_one_at_a_time_per_practice_and_forgotten_once_nobody_waits() -> None:
    turns = _Turns()
    busy, other = uuid.uuid4(), uuid.uuid4()
    inside: Counter[uuid.UUID] = Counter()
    most: Counter[uuid.UUID] = Counter()

    release = asyncio.Event()  # the first holder keeps its turn until the test has looked (no timing involved)

    async def work(practice: uuid.UUID, hold: asyncio.Event | None = None) -> None:
        async with turns.turn(practice):
            inside[practice] += 1
            most[practice] = max(most[practice], inside[practice])
            await (hold.wait() if hold else asyncio.sleep(0.01))
            inside[practice] -= 1

    first = asyncio.create_task(work(busy, release))
    queued = [asyncio.create_task(work(busy)) for _ in range(5)]
    await asyncio.sleep(0.05)
    await asyncio.wait_for(work(other), 10)  # another practice goes straight in
    assert not first.done() and len(turns) == 1  # the other practice's entry is gone already
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    assert most[busy] == 1
    assert len(turns) == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    turns = _Turns()
    practice = uuid.uuid4()

    async def wait_turn() -> None:
        async with turns.turn(practice):
            raise AssertionError("never gets in: cancelled while waiting")

    async with turns.turn(practice):
        waiter = asyncio.create_task(wait_turn())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
    assert len(turns) == 0
