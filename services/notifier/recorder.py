"""Recording what the sender's SMTP attempts gave, a batch per transaction: final outcomes with their
DeliveryOutcome events, retries rescheduled, and the metrics and log lines of each.

The emails are sent: a result is not dropped. A batch the database does not take is tried again, with backoff,
until it does or the sender stops (then the rows stay `sending` and their lease decides). A batch refused for what
it holds is tried a result at a time, so that one result holds neither the others nor itself for ever; one refused
even as UNRECORDABLE (a bug) is given up, its row left `sending` under the sender's lease.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from services.notifier import domain, handlers
from services.notifier.domain import Attempt, Claimed, Final, Retry, SendResult
from services.notifier.handlers import RetryPolicy
from services.notifier.metrics import NotifierMetrics
from services.runtime.cancel import being_cancelled, forget
from services.runtime.logging import get_logger

log = get_logger(__name__)
# A recording refused this often for what it holds (below) is tried a result at a time.
_REFUSALS_BEFORE_ALONE = 3
# A recording that has not answered within this long (a database that stopped answering takes the 60 s command
# timeout to fail) pauses the sender as a failure does.
_SLOW_RECORDING_SECONDS = 1.0


async def _attempt(
    pool: asyncpg.Pool,
    batch: list[tuple[Claimed, SendResult]],
    policy: RetryPolicy,
    owner: uuid.UUID,
    recording: asyncio.Event | None,
) -> tuple[list[Final], list[Retry]]:
    attempt = asyncio.ensure_future(handlers.record_attempts(pool, batch, policy, owner))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=_SLOW_RECORDING_SECONDS)
        if not done and recording is not None and recording.is_set():
            recording.clear()
            log.warning("sender.record_slow", count=len(batch), effect="nothing more is sent until it is recorded")
        return await attempt
    except BaseException:
        attempt.cancel()  # stopping: the statement is cancelled with it (its own error, if any, goes unreported)
        forget(attempt)
        raise


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
) -> list[Claimed]:
    """Record `batch`, claimed by `owner`; the claims it gave up recording (none, barring a bug: see below).
    `quiet`: the SMTP server is known to be unusable (logged once, as smtp.unavailable), so the retries it causes are
    not logged again. `recording` is cleared while recording fails or is slow to answer (the sender sends nothing
    more meanwhile) and set once it is done."""
    stuck = await _record(pool, batch, policy, owner, metrics, quiet=quiet, recording=recording)
    if recording is not None:
        recording.set()
    return stuck


async def _record(
    pool: asyncpg.Pool,
    batch: list[tuple[Claimed, SendResult]],
    policy: RetryPolicy,
    owner: uuid.UUID,
    metrics: NotifierMetrics,
    *,
    quiet: bool,
    recording: asyncio.Event | None,
) -> list[Claimed]:
    failures = refused = 0
    while True:
        try:
            finals, retries = await _attempt(pool, batch, policy, owner, recording)
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
                # one with UNRECORDABLE; sending resumes once all of them are.
                if len(batch) > 1:
                    stuck: list[Claimed] = []
                    for one in batch:
                        stuck += await _record(pool, [one], policy, owner, metrics, quiet=quiet, recording=recording)
                    return stuck
                claimed, result = batch[0]
                if result.reply != domain.UNRECORDABLE:
                    log.error("sender.result_unrecordable", delivery_id=str(claimed.delivery.id))
                    batch, refused = [(claimed, SendResult(Attempt.PERMANENT, domain.UNRECORDABLE))], 0
                    continue
                # Refused even so (a bug, not an outage): given up, so that it stops no other email. Its row stays
                # `sending` under this run's renewed lease; a restart takes it back and sends it again.
                log.error("sender.result_given_up", delivery_id=str(claimed.delivery.id), error=repr(error)[:300])
                return [claimed]
            await asyncio.sleep(min(10.0, 0.1 * 2**failures))
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
    return []
