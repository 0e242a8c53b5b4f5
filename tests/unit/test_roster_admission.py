"""Admission of roster work: weights, first come first served, bounded waits, and no unit ever lost."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from services.invitations.admission import (
    CHARACTERS_PER_LINE,
    RETRY_AFTER_SECONDS,
    SMALL_ROSTER,
    WAITING_CAPACITIES,
    AdmissionRefused,
    Lane,
    RosterAdmission,
)
from services.invitations.app import build_runtime
from services.invitations.settings import InvitationsSettings

LONG = 60.0  # a wait that never runs out in these tests: they are driven step by step, not by the clock


async def _settle() -> None:
    """Let every task that can run, run (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def _waiting(lane: Lane, weight: int, timeout: float = LONG) -> asyncio.Task[bool]:
    return asyncio.create_task(lane.acquire(weight, timeout))


async def test_weights_add_up_to_the_capacity_and_a_release_lets_the_next_in() -> None:
    lane = Lane(100)
    assert await lane.acquire(60, LONG) and await lane.acquire(40, LONG)
    third = _waiting(lane, 10)
    await _settle()
    assert not third.done() and lane.held == 100 and lane.waiting == 1
    lane.release(40)
    assert await third and lane.held == 70 and lane.waiting == 0


async def test_first_come_first_served_a_large_waiter_is_not_overtaken() -> None:
    lane = Lane(100)
    assert await lane.acquire(60, LONG)
    large, small = _waiting(lane, 50), _waiting(lane, 30)
    await _settle()
    # 60 + 30 would fit, but the 30 came after the 50: letting it in could starve the 50 for ever.
    assert not large.done() and not small.done()
    lane.release(60)
    assert await large and await small and lane.held == 80


async def test_a_wait_is_bounded_and_leaves_nothing_held() -> None:
    lane = Lane(100)
    assert await lane.acquire(100, LONG)
    assert await lane.acquire(1, 0.01) is False
    assert lane.held == 100 and lane.waiting == 0
    lane.release(100)
    assert await lane.acquire(100, 0.01), "the refused waiter took nothing with it"


async def test_waiting_is_bounded_too_past_it_a_roster_is_refused_at_once() -> None:
    lane = Lane(100)
    assert await lane.acquire(100, LONG)
    queued = [_waiting(lane, 60), _waiting(lane, 40), _waiting(lane, 100)]
    await _settle()
    assert WAITING_CAPACITIES == 2 and lane.queued == 200
    # Waiting requests hold their bodies: past so many of them, the next is refused without a wait.
    refused = _waiting(lane, 1)
    await _settle()
    assert refused.done() and refused.result() is False and lane.queued == 200
    lane.release(100)
    assert [await task for task in queued[:2]] == [True, True] and lane.held == 100 and lane.queued == 100
    lane.release(100)
    assert await queued[2] and lane.held == 100 and lane.queued == 0


async def test_a_cancelled_waiter_leaks_no_units_and_unblocks_those_behind_it() -> None:
    lane = Lane(100)
    assert await lane.acquire(60, LONG)
    head, behind = _waiting(lane, 50), _waiting(lane, 30, timeout=5.0)
    await _settle()
    head.cancel()  # its client went away
    with pytest.raises(asyncio.CancelledError):
        await head
    assert await behind, "60 + 30 fit once the 50 ahead of it left"
    assert lane.held == 90 and lane.waiting == 0 and lane.queued == 0


async def test_a_waiter_cancelled_just_after_being_granted_gives_the_units_back() -> None:
    lane = Lane(100)
    assert await lane.acquire(100, LONG)
    waiter = _waiting(lane, 70)
    await _settle()
    lane.release(100)  # grants the 70 to the waiter, which has not run since
    assert lane.held == 70
    waiter.cancel()  # and is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lane.held == 0 and lane.waiting == 0


async def test_work_that_fails_or_is_cancelled_releases_its_lines() -> None:
    admission = RosterAdmission(budget=10_000, wait_seconds=LONG)
    with pytest.raises(RuntimeError):
        async with admission.admit("submit", 8_000):
            assert admission.in_flight == 8_000
            raise RuntimeError("the database went away")
    assert admission.in_flight == 0

    started = asyncio.Event()

    async def work() -> None:
        async with admission.admit("preview", 8_000):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await started.wait()
    assert admission.in_flight == 8_000
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.in_flight == 0


async def test_a_roster_that_finds_no_room_in_time_is_refused_and_counted() -> None:
    admission = RosterAdmission(budget=10_000, wait_seconds=0.01)
    async with admission.admit("submit", 9_000):
        with pytest.raises(AdmissionRefused) as refused:
            async with admission.admit("submit", 5_000):
                pytest.fail("admitted past the budget")
        assert refused.value.retry_after == RETRY_AFTER_SECONDS and refused.value.weight == 5_000
        assert admission.refused == {"preview": 0, "submit": 1, "resend": 0}
    assert admission.in_flight == 0


async def test_a_max_size_roster_always_fits_alone() -> None:
    admission = RosterAdmission(budget=10_000, wait_seconds=0.01)
    async with admission.admit("submit", 100_000) as weight:
        assert weight == 10_000 and admission.in_flight == 10_000


async def test_small_rosters_never_wait_behind_large_ones() -> None:
    admission = RosterAdmission(budget=10_000, wait_seconds=LONG)
    async with admission.admit("submit", 10_000):
        queued = asyncio.create_task(admission.admit("submit", 5_000).__aenter__())
        await _settle()
        assert not queued.done() and admission.large.waiting == 1
        # The large lane is full with a roster waiting: a small one has a lane of its own.
        async with admission.admit("preview", SMALL_ROSTER) as weight:
            assert weight == SMALL_ROSTER and admission.small.held == SMALL_ROSTER
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
    assert admission.in_flight == 0


async def test_the_small_lane_is_bounded_too() -> None:
    admission = RosterAdmission(budget=10_000, wait_seconds=0.01)
    assert admission.small.capacity == SMALL_ROSTER  # a tenth of 10,000, but room for one small roster at least
    async with admission.admit("preview", SMALL_ROSTER):
        with pytest.raises(AdmissionRefused):
            async with admission.admit("preview", 10):
                pytest.fail("admitted past the small lane")
    assert RosterAdmission(budget=200_000, wait_seconds=1).small.capacity == 20_000


def test_a_few_very_long_lines_weigh_what_many_short_ones_do() -> None:
    assert RosterAdmission.weight(100) == 100
    assert RosterAdmission.weight(0) == 1
    assert RosterAdmission.weight(1, 5_000_000) == 5_000_000 // CHARACTERS_PER_LINE
    assert RosterAdmission.weight(100_000, 3_400_000) == 100_000


def test_a_lane_refuses_impossible_weights() -> None:
    with pytest.raises(ValueError):
        Lane(0)
    with pytest.raises(ValueError):
        asyncio.run(Lane(10).acquire(11, 1))


async def test_the_budget_is_a_setting_and_its_series_are_in_metrics_from_the_start() -> None:
    settings = InvitationsSettings(
        database_url="postgresql://docs@localhost/docs",  # type: ignore[arg-type]
        kafka_bootstrap_servers="kafka:9092",
        jwt_secret="documentation-only-secret-32-bytes!",  # type: ignore[arg-type]
        roster_lines_in_flight=50_000,
    )
    runtime = build_runtime(settings)
    transport = httpx.ASGITransport(app=runtime.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        text = (await http.get("/metrics")).text
    series = dict(re.findall(r"^(roster_\S+) (\S+)$", text, re.MULTILINE))
    assert series['roster_lines_budget{lane="large"}'] == "50000.0"
    assert series['roster_lines_budget{lane="small"}'] == "5000.0"
    assert series['roster_lines_in_flight{lane="large"}'] == "0.0"
    for work in ("preview", "submit", "resend"):
        assert series[f'roster_admissions_refused_total{{work="{work}"}}'] == "0.0"
    assert InvitationsSettings.model_fields["roster_lines_in_flight"].default == 200_000
