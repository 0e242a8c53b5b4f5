"""Long loops hand the event loop to the service's other tasks between slices, and lose or reorder nothing."""

from __future__ import annotations

import asyncio

from services.runtime.cooperative import in_slices


async def test_every_item_in_order_with_the_other_tasks_running_between_slices() -> None:
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    items, ticks_seen = [], []
    async for item in in_slices(range(10), size=3):
        items.append(item)
        ticks_seen.append(ticks)
    other.cancel()
    assert items == list(range(10))
    # Within a slice nothing else ran; between two slices the other task did.
    assert ticks_seen[0] == ticks_seen[1] == ticks_seen[2] < ticks_seen[3] == ticks_seen[4] == ticks_seen[5]
    assert ticks_seen[5] < ticks_seen[6] == ticks_seen[8] < ticks_seen[9]


async def test_nothing_and_a_generator_are_sliced_too() -> None:
    assert [item async for item in in_slices([])] == []
    assert [item async for item in in_slices(str(n) for n in range(130))] == [str(n) for n in range(130)]
