"""Keeping a sender run's claims its own, beside its sending: the leases of what it holds renewed, the claims it
dropped unsent given back, and what a dead process left `sending` put back in the queue once its lease ran out.
Also the backlog gauge, on the same beat."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Protocol

import asyncpg

from services.notifier import handlers, repository
from services.notifier.domain import Claimed
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.runtime.logging import get_logger

log = get_logger(__name__)
_BACKLOG_REPORT_SECONDS = 5.0


class Holder(Protocol):
    """What of a sender run (sender._Run) the reaper reads and updates."""

    settings: NotifierSettings
    pool: asyncpg.Pool
    metrics: NotifierMetrics
    owner: uuid.UUID
    held: dict[uuid.UUID, tuple[Claimed, float]]  # each delivery held: the claim, when ownership was last confirmed
    dropped: list[Claimed]  # dropped unsent since the reaper last gave them back
    revoked: set[uuid.UUID]  # held deliveries whose invite was revoked since their claim
    wake: asyncio.Event  # the claimer's


async def reap(run: Holder) -> None:
    """Every few seconds the backlog gauge; three times per freshness window, this run's leases renewed, the claims
    it dropped given back, then deliveries a dead process left `sending` put back in the queue.

    After the database was away, leases are expired only once it has answered for a renewal interval again: the
    other processes renew what they hold (and record what they sent meanwhile) first, instead of losing it to
    whichever reaper comes back first."""
    lease = run.settings.sending_lease_seconds
    reap_every = min(60.0, max(0.5, run.settings.lease_renew_seconds))
    answering_since = time.monotonic()  # when the database last began to answer this loop again
    next_reap = answering_since + reap_every
    next_report = answering_since + _BACKLOG_REPORT_SECONDS
    while True:
        # Each at its own time: sleeping the report's 5 s steps renewed every 10 s, not every third of the window.
        await asyncio.sleep(max(0.0, min(next_report, next_reap) - time.monotonic()))
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + _BACKLOG_REPORT_SECONDS
            try:
                run.metrics.backlog.set(await repository.open_count(run.pool))
            except Exception as error:  # the database is away: the gauge keeps its last value, the claimer says so
                log.debug("sender.backlog_count_failed", error=repr(error)[:200])
                answering_since = math.inf
        if time.monotonic() < next_reap:
            continue
        next_reap = time.monotonic() + reap_every
        try:
            await renew(run)
            await _give_back_dropped(run)
            answering_since = min(answering_since, time.monotonic())
            if time.monotonic() - answering_since < reap_every:
                continue
            expired = await handlers.expire_leases(run.pool, lease)
        except Exception as error:
            log.warning("sender.lease_check_failed", error=repr(error)[:300])
            answering_since = math.inf
            continue
        if expired:
            log.warning("delivery.lease_expired", count=expired)
            run.metrics.reclaimed.labels("lease_expired").inc(expired)
            run.wake.set()


async def renew(run: Holder) -> None:
    """Confirm this run still owns what it holds (each confirmed from now on), and learn which were revoked."""
    asked = time.monotonic()
    owned = await handlers.renew_leases(run.pool, run.owner, list(run.held))
    for delivery_id, revoked in owned.items():
        if (entry := run.held.get(delivery_id)) is not None:  # not recorded meanwhile
            run.held[delivery_id] = (entry[0], max(entry[1], asked))
            if revoked:
                run.revoked.add(delivery_id)


async def _give_back_dropped(run: Holder) -> None:
    """Dropped claims this run still owns go back to the queue now, their attempt not counted (it never was one);
    one held again by a newer claim stays, and one another sender took over is not ours to give."""
    dropped, run.dropped = run.dropped, []  # on failure their leases expire instead
    dropped = [claimed for claimed in dropped if claimed.delivery.id not in run.held]
    if dropped:
        log.warning("sender.claims_dropped", count=len(dropped), reason="ownership not confirmed in time")
        await handlers.release(run.pool, dropped, run.owner, "given back unsent: ownership not confirmed in time")
