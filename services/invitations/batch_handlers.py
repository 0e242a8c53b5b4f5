"""Use cases for rosters: preview, submit (one transaction, COPY), results, and resending the not-on-platform rows."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.invitations import batch_repository, domain, repository
from services.invitations.batch import (
    ALREADY_CONNECTED_REASON,
    PendingInvite,
    already_invited_reason,
    count_verdicts,
    flag_known,
    settle_replaced,
)
from services.invitations.batch_repository import BatchRecord, RowRecord
from services.invitations.bulk import BatchContext, build_records
from services.invitations.domain import Cause, Outcome
from services.invitations.events import replaced_events
from services.invitations.handlers import Policy, now_utc
from services.invitations.practice_lock import practice_transaction
from services.invitations.roster import Entry, Roster, Verdict
from services.runtime.logging import get_logger
from services.runtime.outbox import add_events

log = get_logger(__name__)
# Entries per COPY round: small enough that a 10,000-line roster is already pipelined (Python builds the next
# chunk while PostgreSQL takes this one), large enough that round trips stay few; bounds memory too.
CHUNK = 2_500
# After this many new outbox rows the planner's statistics are refreshed (DESIGN: a relay keeping a plan made
# on an empty outbox drops from ~35k to ~5k events/s).
ANALYZE_AFTER = 5_000
_background: set[asyncio.Task[None]] = set()


class BatchNotFound(domain.DomainError):
    def __init__(self) -> None:
        super().__init__("No such invite batch.")


class IdempotencyKeyReused(domain.DomainError):
    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used for a different roster; use a new key for a new roster.")


@dataclass(frozen=True)
class Submission:
    batch: BatchRecord
    replayed: bool  # True when an earlier submission with the same Idempotency-Key is returned
    verdicts: dict[str, int]  # entries per verdict (empty when replayed)


@dataclass(frozen=True)
class Resent:
    resent: int
    already_connected: int
    already_invited: int


async def _flag(
    db: asyncpg.Connection | asyncpg.Pool, practice_id: uuid.UUID, roster: Roster, now: datetime
) -> dict[int, uuid.UUID]:
    """Flag connected and invited patients; returns {line: the undelivered invite its new one replaces}."""
    connected, invited = await repository.known(db, practice_id, roster.unique, now)
    return flag_known(roster.unique, connected, invited)


async def preview(pool: asyncpg.Pool, practice_id: uuid.UUID, roster: Roster) -> Roster:
    """The roster's entries with already-connected and already-invited patients flagged; nothing is written."""
    await _flag(pool, practice_id, roster, now_utc())
    return roster


async def find_by_key(db: repository.Executor, practice_id: uuid.UUID, key: str, digest: bytes) -> BatchRecord | None:
    """The practice's batch sent with this Idempotency-Key, if any; the same key with another roster is refused."""
    batch = await batch_repository.find_batch_by_key(db, practice_id, key)
    if batch is not None and batch.request_digest != digest:
        raise IdempotencyKeyReused()
    return batch


async def submit_roster(
    pool: asyncpg.Pool,
    policy: Policy,
    practice_id: uuid.UUID,
    roster: Roster,
    *,
    idempotency_key: str | None,
    digest: bytes,
    actor: str,
    cause: Cause,
) -> Submission:
    """Store the batch, a row per entry, and an invite plus InviteRequested per ready entry: one transaction."""
    # One batch at a time per practice: "already invited" then sees every invite committed before it.
    async with practice_transaction(pool, practice_id) as db:
        now = now_utc()  # after the practice's turn: invites that expired while it waited are expired
        if idempotency_key is not None:
            existing = await find_by_key(db, practice_id, idempotency_key, digest)
            if existing is not None:
                return Submission(existing, replayed=True, verdicts={})
        replaces = await _flag(db, practice_id, roster, now)
        if replaces:  # locked now, not after the seconds a long roster takes to store
            statuses = await batch_repository.lock_replaced(db, list(replaces.values()))
            replaces = settle_replaced(roster.unique, replaces, statuses)
        verdicts = count_verdicts(roster.entries)
        batch = BatchRecord(
            id=uuid.uuid4(),
            practice_id=practice_id,
            created_by=actor,
            created_at=now,
            idempotency_key=idempotency_key,
            request_digest=digest,
            lines=roster.lines,
            total=len(roster.entries),
            invited=verdicts[Verdict.READY.value],
        )
        await batch_repository.insert_batch(db, batch, cause.correlation_id)
        context = BatchContext(batch.id, practice_id, actor, now, now + policy.ttl, policy.base_url, cause)
        replaced = await _store(db, roster.entries, context, replaces)
    log.info(
        "batch.submitted",
        practice_id=str(practice_id),
        batch_id=str(batch.id),
        rows=batch.total,
        invites=batch.invited,
        replaced_undelivered=replaced,
    )
    _after_bulk_soon(pool, batch.invited)
    return Submission(batch, replayed=False, verdicts=verdicts)


def _after_bulk_soon(pool: asyncpg.Pool, invites: int) -> None:
    if invites >= ANALYZE_AFTER:
        task = asyncio.create_task(_after_bulk(pool))
        _background.add(task)
        task.add_done_callback(_background.discard)


async def _after_bulk(pool: asyncpg.Pool) -> None:
    """Off the request path: fresh statistics after a bulk insert, and the roster's memory given back."""
    try:
        await repository.analyze(pool)
    except Exception as error:
        log.warning("batch.analyze_failed", error=repr(error)[:300])
    # By now the request has finished and its roster is garbage; without a trim glibc keeps the freed pages
    # and every large roster would ratchet the process's RSS up.
    gc.collect()
    release_memory()


def release_memory() -> None:
    """Return freed heap pages to the system (glibc only; elsewhere a no-op)."""
    name = ctypes.util.find_library("c")
    if name:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
        if trim is not None:
            trim(0)


async def _store(
    db: asyncpg.Connection, entries: list[Entry], context: BatchContext, replaces: dict[int, uuid.UUID]
) -> int:
    """COPY chunk by chunk, building the next chunk in a thread while PostgreSQL ingests this one; the invites of
    `replaces` (by line) that never reached their patient give way to the chunk's new ones (revoked, pointing at
    them, with their InviteRevoked). Returns how many were replaced.

    The event loop only hands prepared bytes to the socket, so the two cores work at once (Python building,
    PostgreSQL parsing and indexing), and memory holds two chunks' records rather than the whole roster's. So do the
    replacements: all at once, re-sending a roster of 100,000 undelivered invites took 500 MiB (their revocations'
    rows and events), past the pod's memory limit with two such rosters.
    """
    chunks = [entries[start : start + CHUNK] for start in range(0, len(entries), CHUNK)]
    replaced = 0
    if not chunks:
        return replaced
    build = functools.partial(build_records, context=context, replaces=replaces)
    next_records = asyncio.ensure_future(asyncio.to_thread(build, chunks[0]))
    try:
        for index in range(len(chunks)):
            records = await next_records
            if index + 1 < len(chunks):
                next_records = asyncio.ensure_future(asyncio.to_thread(build, chunks[index + 1]))
            await batch_repository.copy_records(db, records)
            pairs = [(replaces[line], new) for line, new in records.invite_ids.items() if line in replaces]
            rows = await batch_repository.replace_invites(db, context.now, context.actor, pairs)
            await add_events(db, repository.SCHEMA, replaced_events(rows, context.cause))
            replaced += len(rows)
    finally:
        next_records.cancel()
    return replaced


async def batch_summary(
    pool: asyncpg.Pool, practice_id: uuid.UUID, batch_id: uuid.UUID
) -> tuple[BatchRecord, dict[str, int]]:
    batch = await batch_repository.find_batch(pool, practice_id, batch_id)
    if batch is None:
        raise BatchNotFound()
    counts = await batch_repository.count_outcomes(pool, batch_id)
    return batch, {outcome.value: counts.get(outcome.value, 0) for outcome in Outcome}


async def list_rows(
    pool: asyncpg.Pool,
    practice_id: uuid.UUID,
    batch_id: uuid.UUID,
    outcomes: Sequence[Outcome] | None,
    after: int,
    limit: int,
) -> list[RowRecord]:
    if await batch_repository.find_batch(pool, practice_id, batch_id) is None:
        raise BatchNotFound()
    wanted = [outcome.value for outcome in outcomes] if outcomes else None
    return await batch_repository.list_rows(pool, batch_id, wanted, after, limit, now_utc())


async def not_on_platform(pool: asyncpg.Pool, practice_id: uuid.UUID, batch_id: uuid.UUID) -> list[str]:
    if await batch_repository.find_batch(pool, practice_id, batch_id) is None:
        raise BatchNotFound()
    return await batch_repository.not_on_platform_emails(pool, batch_id, now_utc())


async def not_on_platform_count(pool: asyncpg.Pool, practice_id: uuid.UUID, batch_id: uuid.UUID) -> int:
    """The rows a resend of the batch would take up now: what it weighs against the roster budget."""
    if await batch_repository.find_batch(pool, practice_id, batch_id) is None:
        raise BatchNotFound()
    return await batch_repository.count_resendable(pool, batch_id)


async def resend_not_on_platform(
    pool: asyncpg.Pool, policy: Policy, practice_id: uuid.UUID, batch_id: uuid.UUID, *, actor: str, cause: Cause
) -> Resent:
    """A new invite (new token, new InviteRequested) for every not-on-platform row; rows go back to queued.

    The old invites are revoked (InviteRevoked, replaced_by the new one; InviteExpired if past their time). Patients
    connected or invited meanwhile are flagged on their row instead. The notifier decides again from its patient
    directory. One transaction; the rows, once locked, are worked through CHUNK at a time, so that memory holds one
    chunk's invites and events however many rows there are (all at once, four resends of 100,000 rows took 1.6 GiB).
    """
    resent = 0
    flags: dict[str, int] = {}
    async with practice_transaction(pool, practice_id) as db:
        now = now_utc()  # after the practice's turn: invites that expired while it waited are expired
        if await batch_repository.find_batch(db, practice_id, batch_id) is None:
            raise BatchNotFound()
        rows = await batch_repository.lock_not_on_platform(db, batch_id)
        context = BatchContext(batch_id, practice_id, actor, now, now + policy.ttl, policy.base_url, cause)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            keys = [domain.email_key(row["email"]) for row in chunk]
            connected, pending = await repository.known(db, practice_id, keys, now)
            entries, flagged, replaces = _resend_plan(chunk, connected, pending)
            records = build_records(entries, context, replaces)
            new_ids = records.invite_ids
            replaced = await batch_repository.replace_invites(
                db, now, actor, [(replaces[line], new_ids[line]) for line in new_ids], resending=batch_id
            )
            records.rows = b""  # the rows exist: they are updated below, not inserted
            await batch_repository.copy_records(db, records)
            changes: list[RowChange] = [(line, Outcome.QUEUED.value, None, new_ids[line], 1) for line in new_ids]
            await batch_repository.update_rows(db, batch_id, now, changes + flagged)
            await add_events(db, repository.SCHEMA, replaced_events(replaced, cause))
            resent += len(new_ids)
            for change in flagged:
                flags[change[1]] = flags.get(change[1], 0) + 1
    result = Resent(resent, *(flags.get(o.value, 0) for o in _FLAGS))
    log.info("batch.resent_not_on_platform", batch_id=str(batch_id), resent=result.resent)
    # As after a submit: statistics that see the rows' new outcomes, and the memory of 100,000 rows given back.
    _after_bulk_soon(pool, result.resent)
    return result


_FLAGS = (Outcome.ALREADY_CONNECTED, Outcome.ALREADY_INVITED)
RowChange = tuple[int, str, str | None, uuid.UUID | None, int]


def _resend_plan(
    rows: Sequence[asyncpg.Record], connected: set[str], pending: dict[str, PendingInvite]
) -> tuple[list[Entry], list[RowChange], dict[int, uuid.UUID]]:
    entries: list[Entry] = []
    flagged: list[RowChange] = []
    replaces: dict[int, uuid.UUID] = {}
    for row in rows:
        key, line = domain.email_key(row["email"]), row["line_number"]
        other = pending.get(key)
        # A flagged row lets go of its old invite, so that a late outcome of that invite cannot overwrite it.
        if key in connected:
            flagged.append((line, Outcome.ALREADY_CONNECTED.value, ALREADY_CONNECTED_REASON, None, 0))
        elif other is not None and other.id != row["invite_id"]:
            # Another invite, newer (another batch's, or one sent on its own), delivered or not: the batch's list
            # leaves the patient out, and so does its resend (it took a newer roster's undelivered invite away).
            # Read unlocked: only the row's own invite is replaced, and it is locked (lock_not_on_platform).
            flagged.append((line, Outcome.ALREADY_INVITED.value, already_invited_reason(other), None, 0))
        else:
            entries.append(Entry(line, row["email"], row["note"], Verdict.READY, key=key))
            replaces[line] = row["invite_id"]
    return entries, flagged, replaces
