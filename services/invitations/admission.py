"""Admission control for roster work: a budget of roster lines worked on at once, so that however many staff send
large rosters together the process's memory stays bounded (pure asyncio, no I/O)."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

# Rosters up to this many lines have a lane of their own: a 100-line roster never waits behind 100,000-line ones.
SMALL_ROSTER = 2_000
# A line in memory (its entry, its address and key, its verdict) costs about as much as this many characters of
# roster text (the body, its decoded copy, the split lines): a few very long lines weigh what many short ones do.
CHARACTERS_PER_LINE = 100
RETRY_AFTER_SECONDS = 5
# A waiting request holds its body (about a tenth of what working on it costs): at most this many capacities' worth
# of lines wait, so that waiting requests are bounded too, and enough wait that the budget is never idle meanwhile.
WAITING_CAPACITIES = 2
WORK = ("preview", "submit", "resend")  # what a roster is admitted for: refusals are counted per kind


class AdmissionRefused(Exception):
    """No room for this roster within the bounded wait; nothing was done, the client may try again."""

    def __init__(self, weight: int, retry_after: int) -> None:
        super().__init__(f"no room for {weight:,} roster lines")
        self.weight = weight
        self.retry_after = retry_after


@dataclass
class _Waiter:
    weight: int
    granted: asyncio.Future[None]


class Lane:
    """A weighted semaphore: first come, first served (a large waiter is not overtaken by smaller ones behind it,
    so it cannot starve), each wait bounded, and at most WAITING_CAPACITIES' worth of units waiting."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a lane needs room for at least one unit")
        self.capacity = capacity
        self.held = 0
        self.queued = 0  # units waiting
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def acquire(self, weight: int, timeout: float) -> bool:
        """Take `weight` units within `timeout` seconds; False (nothing held) if there was no room by then."""
        if not 1 <= weight <= self.capacity:
            raise ValueError(f"weight {weight} outside 1-{self.capacity}")
        if not self._queue and self.held + weight <= self.capacity:
            self.held += weight
            return True
        if self.queued + weight > self.capacity * WAITING_CAPACITIES:
            return False  # refused at once: it would hardly get in within its wait behind so many
        waiter = _Waiter(weight, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.queued += weight
        try:
            async with asyncio.timeout(timeout):
                # Shielded: whether the units were granted is read from this future, never lost to a cancel.
                await asyncio.shield(waiter.granted)
        except TimeoutError:
            if waiter.granted.done():
                return True  # granted as the time ran out: the units are held, so go ahead
            self._leave(waiter)
            return False
        except asyncio.CancelledError:
            # The request was cancelled (its client went away): never keep units nobody would release.
            if waiter.granted.done():
                self.release(weight)
            else:
                self._leave(waiter)
            raise
        return True

    def release(self, weight: int) -> None:
        if not 0 < weight <= self.held:
            raise RuntimeError(f"releasing {weight} units, {self.held} held")
        self.held -= weight
        self._grant()

    def _leave(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self.queued -= waiter.weight
        # It may have been the head of the queue, holding back smaller waiters that fit now.
        self._grant()

    def _grant(self) -> None:
        while self._queue and self.held + self._queue[0].weight <= self.capacity:
            waiter = self._queue.popleft()
            self.queued -= waiter.weight
            self.held += waiter.weight
            waiter.granted.set_result(None)


class RosterAdmission:
    """The process's budget of roster lines in flight: large rosters share `budget`, small ones a tenth of it
    on top (at least SMALL_ROSTER), so that memory is bounded by 1.1 budgets' worth of lines."""

    def __init__(self, budget: int, wait_seconds: float) -> None:
        self.large = Lane(budget)
        self.small = Lane(max(budget // 10, SMALL_ROSTER))
        self.wait_seconds = wait_seconds
        self.refused = dict.fromkeys(WORK, 0)

    @property
    def in_flight(self) -> int:
        """Lines being worked on now, both lanes."""
        return self.large.held + self.small.held

    @staticmethod
    def weight(lines: int, characters: int = 0) -> int:
        """A roster's weight: its lines, or its characters' worth of lines when that is more."""
        return max(lines, math.ceil(characters / CHARACTERS_PER_LINE), 1)

    @asynccontextmanager
    async def admit(self, work: str, lines: int, characters: int = 0) -> AsyncIterator[int]:
        """Hold the roster's weight while the block runs (released however it ends); AdmissionRefused when there
        is no room within `wait_seconds`. Yields the weight held (a max-size roster's is capped at the budget)."""
        weight = self.weight(lines, characters)
        lane = self.small if weight <= SMALL_ROSTER else self.large
        weight = min(weight, lane.capacity)
        if not await lane.acquire(weight, self.wait_seconds):
            self.refused[work] = self.refused.get(work, 0) + 1
            raise AdmissionRefused(weight, RETRY_AFTER_SECONDS)
        try:
            yield weight
        finally:
            lane.release(weight)
