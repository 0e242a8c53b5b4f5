"""Long loops that share the event loop: a slice of items, then a turn for the service's other tasks.

A batch of hundreds of events parsed, serialised or handed to the producer costs tens of milliseconds of CPU without
ever awaiting anything that waits; every SMTP connection, HTTP request and heartbeat of the process waits behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")
SLICE = 64  # items between two yields: a few milliseconds of work at most


async def in_slices(items: Iterable[T], size: int = SLICE) -> AsyncIterator[T]:
    """Each item in turn, yielding to the event loop after every `size` of them."""
    for index, item in enumerate(items, 1):
        yield item
        if index % size == 0:
            await asyncio.sleep(0)
