"""The send-rate limiter, on a fake clock: the rate holds on average, bursts are bounded, nobody spins."""

from __future__ import annotations

import asyncio

import pytest

from services.notifier.mailer import TokenBucket


class FakeClock:
    """Time moves only when someone sleeps; sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_unlimited_never_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        assert await bucket.acquire() == 0.0
    assert clock.sleeps == []


async def test_rate_holds_after_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=5, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(25):
        await bucket.acquire()
    assert len(clock.sleeps) == 20, "the first five go at once"
    assert clock.now - start == pytest.approx(2.0), "20 more at 10/s take two seconds"
    assert all(s == pytest.approx(0.1) for s in clock.sleeps)


async def test_default_burst_is_one_seconds_worth() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3.5, clock=clock, sleep=clock.sleep)
    assert bucket.capacity == 4
    for _ in range(4):
        assert await bucket.acquire() == 0.0
    assert await bucket.acquire() == pytest.approx(1 / 3.5)


async def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, burst=2, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    await bucket.acquire()
    clock.now += 3600  # an hour idle buys two tokens, not 7200
    assert [await bucket.acquire() for _ in range(2)] == [0.0, 0.0]
    assert await bucket.acquire() == pytest.approx(0.5)


async def test_concurrent_callers_are_spaced_in_arrival_order() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)  # the reservation each caller got; the clock stands still meanwhile

    bucket = TokenBucket(4, burst=1, clock=clock, sleep=record)
    await asyncio.gather(*(bucket.acquire() for _ in range(5)))
    assert waits == pytest.approx([0.25, 0.5, 0.75, 1.0])


async def test_a_cancelled_caller_gives_its_reservation_back() -> None:
    clock = FakeClock()
    blocked = asyncio.Event()

    async def forever(_: float) -> None:
        blocked.set()
        await asyncio.Event().wait()

    bucket = TokenBucket(1, burst=1, clock=clock, sleep=forever)
    await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await blocked.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.now += 1.0
    bucket._sleep = clock.sleep  # the next caller finds the token the cancelled one did not use
    assert await bucket.acquire() == 0.0
