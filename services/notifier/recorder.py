"""Recording what the sender's SMTP attempts gave, a batch per transaction: final outcomes with their
DeliveryOutcome events, retries rescheduled, and the metrics and log lines of each.

The emails are sent: a result is never dropped. A batch the database does not take is tried again, with backoff,
until it does or the sender stops (then the rows stay `sending` and their lease decides). A batch refused for what
it holds is tried a result at a time, so that one result holds neither the others nor itself for ever.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from services.notifier import domain, handlers
from services.notifier.domain import Attempt, Claimed, SendResult
from services.notifier.handlers import RetryPolicy
from services.notifier.metrics import NotifierMetrics
from services.runtime.cancel import being_cancelled
from services.runtime.logging import get_logger

log = get_logger(__name__)
# A recording refused this often for what it holds (below) is tried a result at a time.
_REFUSALS_BEFORE_ALONE = 3


def _refused_for_its_data(error: Exception) -> bool:
    """Python refusing a value (a pydantic ValidationError is a ValueError; so is asyncpg's for a query argument), or
    PostgreSQL a row (SQLSTATE classes 22 and 23): the results', not an outage's or a missing grant's, which no
    result's outcome should be rewritten for."""
    return isinstance(error, (ValueError, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError))


async def record(
    pool: asyncpg.Pool,
    batch: list[tuple[Claimed, SendResult]],
    policy: RetryPolicy,
    owner: uuid.UUID,
    metrics: NotifierMetrics,
    *,
    quiet: bool = False,
    recording: asyncio.Event | None = None,
) -> None:
    """Record `batch`, claimed by `owner`. `quiet`: the SMTP server is known to be unusable (logged once, as
    smtp.unavailable), so the retries it causes are not logged again. `recording` is cleared while it keeps failing
    (the sender sends nothing more meanwhile) and set once it succeeds."""
    failures = refused = 0
    while True:
        try:
            finals, retries = await handlers.record_attempts(pool, batch, policy, owner)
            break
        except Exception as error:
            if being_cancelled():
                raise  # stopping: the rows stay `sending` and their lease decides (the documented window)
            failures += 1
            if recording is not None:
                recording.clear()
            log.warning(
                "sender.record_failed",
                error=repr(error)[:300],
                attempt=failures,
                count=len(batch),
                effect="nothing more is sent until it is recorded",
            )
            refused = refused + 1 if _refused_for_its_data(error) else 0
            if refused >= _REFUSALS_BEFORE_ALONE:
                # Refused for what it holds (a reply over the contract's bound was): each recorded alone, a refused
                # one with UNRECORDABLE.
                if len(batch) > 1:
                    for one in batch:
                        await record(pool, [one], policy, owner, metrics, quiet=quiet, recording=recording)
                    return
                claimed, result = batch[0]
                if result.reply != domain.UNRECORDABLE:
                    log.error("sender.result_unrecordable", delivery_id=str(claimed.delivery.id))
                    batch, refused = [(claimed, SendResult(Attempt.PERMANENT, domain.UNRECORDABLE))], 0
                    continue
            await asyncio.sleep(min(10.0, 0.1 * 2**failures))
    if recording is not None:
        recording.set()
    for final in finals:
        metrics.email(final.claimed.delivery.kind, final.outcome)
        if final.outcome == "error":
            log.warning(
                "delivery.failed",
                delivery_id=str(final.claimed.delivery.id),
                attempts=final.attempts,
                smtp_reply=(final.reply or "")[:300],  # emails in a reply are masked by the log pipeline
            )
    for retry in retries:
        metrics.retry(retry.claimed.delivery.kind)
    if retries and not quiet:
        # A 4xx or a timeout: retried later.
        log.info("delivery.retrying", count=len(retries), smtp_reply=retries[0].last_error[:300])
    log.debug("delivery.recorded", final=len(finals), retries=len(retries))
