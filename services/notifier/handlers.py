"""Use cases of the notifier: keep the directories, queue deliveries, claim them, record outcomes with their events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from schemas import Envelope, InviteRevoked, PatientRegistered, PracticeRegistered
from services.notifier import directory, directory_repository, domain, repository
from services.notifier.domain import Claimed, Final, Retry, SendResult
from services.runtime.cooperative import in_slices
from services.runtime.database import TRANSIENT_ERRORS, transaction
from services.runtime.logging import get_logger
from services.runtime.outbox import add_events

log = get_logger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


async def record_patients(db: asyncpg.Connection, events: list[PatientRegistered]) -> None:
    """Consumer handler: the patient directory (who is on the platform, and their language)."""
    await directory_repository.upsert_patients(db, directory.patient_entries(events))


async def record_practices(db: asyncpg.Connection, events: list[PracticeRegistered]) -> None:
    """Consumer handler: the practice directory (the name each email gives, where replies go)."""
    await directory_repository.upsert_practices(db, directory.practice_entries(events))


async def forget_patient(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the patient's account (their name and addresses leave with it)."""
    await directory_repository.delete_patient(db, patient_id)


async def forget_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the practice."""
    await directory_repository.delete_practice(db, practice_id)


@dataclass(frozen=True)
class QueueDeliveries:
    """Consumer handler for the events that ask for an email: one pending delivery per event, nothing more.

    No SMTP here: this runs inside the inbox transaction. The sender job picks the rows up after the commit.
    """

    directory_grace_seconds: float
    message_id_domain: str

    async def __call__(self, db: asyncpg.Connection, events: list[Envelope]) -> None:
        deliveries = [domain.delivery_for(event, self.message_id_domain) for event in events]
        queued = await repository.insert_deliveries(db, deliveries, self.directory_grace_seconds)
        if queued < len(deliveries):
            # The inbox already filters replays; this is the second guard (e.g. an inbox row pruned or lost).
            log.info("delivery.already_queued", count=len(deliveries) - queued)


async def cancel_revoked(db: asyncpg.Connection, events: list[InviteRevoked]) -> None:
    """Consumer handler: the email of a revoked invite is not sent if it has not gone yet (a resend would otherwise
    send two). InviteRevoked follows its InviteRequested on the invite's partition, so the delivery is usually
    queued by then; the revoke is remembered either way, so a delivery queued after it (its InviteRequested
    republished after a failed publish) ends unsent too. One a sender holds goes out if that attempt succeeds; if
    it does not, the next claim ends it."""
    pending = await repository.revoke_invites(db, [event.payload.invite_id for event in events])
    now = _now()
    await _finish(db, [domain.revoked(c, now) for c in pending])


@dataclass(frozen=True)
class Backpressure:
    """Throttle of the subscription: hold consumption while the sender's backlog is above the high-water mark.

    Waiting happens outside any transaction and before the batch is applied, so the backlog exceeds the
    mark by at most one consumed batch per process; Kafka keeps the rest. Invites waiting out the directory's
    grace are not counted (repository.sender_backlog): for DIRECTORY_GRACE_SECONDS they may go beyond it. The
    wait per batch is bounded so the consumer stays within Kafka's max poll interval; an SMTP outage longer
    than that lets the backlog grow one batch per `max_wait_seconds`.
    """

    high_water: int
    max_wait_seconds: float
    poll_seconds: float = 0.1
    # The events that queue emails; directory updates and revocations never wait: deliveries are decided by them.
    holds: frozenset[str] = frozenset(domain.KIND_OF_EVENT)

    async def __call__(self, pool: asyncpg.Pool, events: list[Envelope]) -> None:
        deadline = time.monotonic() + self.max_wait_seconds
        waited = False
        try:
            while await repository.sender_backlog(pool) >= self.high_water:
                if time.monotonic() >= deadline:
                    log.warning("delivery.backpressure_timeout", high_water=self.high_water)
                    return
                waited = True
                await asyncio.sleep(self.poll_seconds)
        except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as error:
            # Counting failed: let the batch through; applying it will meet the same database problem.
            log.warning("delivery.backpressure_check_failed", error=repr(error)[:200])
        if waited:
            log.debug("delivery.backpressure_released", high_water=self.high_water)


# A claim or a recording holds its rows' locks until it ends; one whose process froze (SIGSTOP, a stalled VM: the
# kernel still answers keepalives) would hold them for ever, its rows out of every other sender's reach.
_IDLE_IN_SENDING_TRANSACTION_MS = 15_000


@asynccontextmanager
async def _sending_transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction of the sender's, which PostgreSQL ends should it sit idle past the bound above."""
    async with transaction(pool) as db:
        await db.execute(f"SET LOCAL idle_in_transaction_session_timeout = {_IDLE_IN_SENDING_TRANSACTION_MS}")
        yield db


async def claim_deliveries(
    pool: asyncpg.Pool, limit: int, owner: uuid.UUID, max_attempts: int
) -> tuple[list[Claimed], list[Final]]:
    """Claim due deliveries for sending; invites the directories say must not go out (domain.not_to_send) and
    deliveries claimed too often (domain.abandoned) end here, with their DeliveryOutcome, in the same transaction.
    Returns (to send, finished)."""
    async with _sending_transaction(pool) as db:
        claimed = await repository.claim_due(db, limit, owner)
        now = _now()
        stopped = [
            final
            for c in claimed
            if (final := domain.not_to_send(c, now) or domain.abandoned(c, max_attempts, now)) is not None
        ]
        finals = await _finish(db, stopped, owner)
    _log_not_sent(finals)
    stopped_ids = {final.claimed.delivery.id for final in stopped}
    return [c for c in claimed if c.delivery.id not in stopped_ids], finals


def _log_not_sent(finals: list[Final]) -> None:
    """One line per reason for the emails a claim ended unsent (to nobody on the platform, revoked, connected
    meanwhile, an unknown practice), with how many and the first few delivery ids: a line each would flood the log
    with a 100,000-row roster of a practice the directory does not know. The reasons' fixed wording only."""
    by_reason: dict[tuple[str, str | None], list[str]] = {}
    for final in finals:
        by_reason.setdefault((final.outcome, final.reason), []).append(str(final.claimed.delivery.id))
    for (outcome, reason), ids in by_reason.items():
        # `why`: the log pipeline drops every `reason` (a producer's free text elsewhere); these are our own words.
        log.info("delivery.not_sent", outcome=outcome, why=reason, count=len(ids), delivery_ids=ids[:10])


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float


async def record_attempts(
    pool: asyncpg.Pool, attempts: Sequence[tuple[Claimed, SendResult]], policy: RetryPolicy, owner: uuid.UUID
) -> tuple[list[Final], list[Retry]]:
    """One transaction for a batch of SMTP results: final outcomes with their events, and retries."""
    now = _now()
    finals: list[Final] = []
    retries: list[Retry] = []
    for claimed, result in attempts:
        decision = domain.decide(
            claimed,
            result,
            max_attempts=policy.max_attempts,
            now=now,
            retry_base=policy.base_seconds,
            retry_cap=policy.max_seconds,
        )
        if isinstance(decision, Final):
            finals.append(decision)
        else:
            retries.append(decision)
    async with _sending_transaction(pool) as db:
        finished = await _finish(db, finals, owner)
        await repository.reschedule(db, retries, owner)
    return finished, retries


async def release(pool: asyncpg.Pool, claimed: Sequence[Claimed], owner: uuid.UUID, why: str) -> None:
    """Give back claims never attempted (shutting down, or dropped): due now, and the attempt not counted."""
    now = _now()
    retries = [Retry(c, c.attempts - 1, now, why) for c in claimed]
    async with _sending_transaction(pool) as db:
        await repository.reschedule(db, retries, owner)


async def renew_leases(pool: asyncpg.Pool, owner: uuid.UUID, held: Sequence[uuid.UUID]) -> dict[uuid.UUID, bool]:
    return await repository.renew_leases(pool, owner, held)


async def hold_slot(pool: asyncpg.Pool, instance: str, wait_seconds: float) -> asyncpg.Connection | None:
    return await repository.hold_slot(pool, domain.slot_lock_key(instance), wait_seconds)


async def take_back_from_earlier_runs(pool: asyncpg.Pool, instance: str, owner: uuid.UUID) -> int:
    return await repository.take_back_from_earlier_runs(pool, domain.instance_runs(instance), owner)


async def expire_leases(pool: asyncpg.Pool, lease_seconds: float) -> int:
    return await repository.expire_leases(pool, lease_seconds)


async def _finish(db: asyncpg.Connection, finals: list[Final], owner: uuid.UUID | None = None) -> list[Final]:
    """Record outcomes and stage their DeliveryOutcome events; a row already final, or another sender's now,
    publishes nothing."""
    if not finals:
        return []
    staged: list[tuple[Final, Envelope | None]] = [_with_event(final) async for final in in_slices(finals)]
    finals = [final for final, _ in staged]
    finished = await repository.finish(db, finals, owner)
    done = [(final, event) for final, event in staged if final.claimed.delivery.id in finished]
    await add_events(db, repository.SCHEMA, [event for _, event in done if event is not None])
    return [final for final, _ in done]


def _with_event(final: Final) -> tuple[Final, Envelope | None]:
    """The final and its DeliveryOutcome; one the contract refuses (a bug) ends `error` with UNRECORDABLE instead,
    and should even that be refused, ends as it is with no event. Raised, it failed the whole transaction, again at
    every try: a recording held its row for ever, and a claim ending it as abandoned failed with it, so that no email
    at all went out."""
    try:
        return final, domain.outcome_event(final)
    except ValueError as error:
        log.error(
            "delivery.outcome_unpublishable",
            delivery_id=str(final.claimed.delivery.id),
            outcome=final.outcome,
            error=repr(error)[:300],
        )
    fallback = Final(final.claimed, "error", domain.UNRECORDABLE, domain.UNRECORDABLE, final.attempts, final.decided_at)
    try:
        return fallback, domain.outcome_event(fallback)
    except ValueError:
        return final, None  # the row then shows what happened (a `sent` stays sent), with no event
