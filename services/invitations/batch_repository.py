"""The SQL of roster batches and their rows: bulk writes with COPY, set-based reads and updates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.invitations.batch import replaced_reason
from services.invitations.bulk import INVITE_COLUMNS, ROW_COLUMNS, Records
from services.invitations.repository import SCHEMA, Executor
from services.runtime.outbox import add_records

_BATCH_COLUMNS = "id, practice_id, created_by, created_at, idempotency_key, request_digest, lines, total, invited"

FIND_BATCH = f"SELECT {_BATCH_COLUMNS} FROM invitations.batches WHERE practice_id = $1 AND id = $2"
FIND_BATCH_BY_KEY = f"SELECT {_BATCH_COLUMNS} FROM invitations.batches WHERE practice_id = $1 AND idempotency_key = $2"

INSERT_BATCH = """
INSERT INTO invitations.batches
    (id, practice_id, created_by, created_at, idempotency_key, request_digest, lines, total, invited, correlation_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

COUNT_OUTCOMES = "SELECT outcome, count(*) AS n FROM invitations.batch_rows WHERE batch_id = $1 GROUP BY outcome"

# Keyset pagination by line number: stable while outcomes arrive, cheap on the primary key at any depth.
# With the status of the row's invite as it stands now (a pending one past its expiry is expired): the outcome says
# what became of the email, the status what became of the invite (revoked by staff, accepted, expired since).
LIST_ROWS = """
SELECT r.line_number, r.email, r.note, r.outcome, r.reason, r.duplicate_of, r.invite_id, r.attempts, r.updated_at,
       CASE WHEN i.status = 'pending' AND i.expires_at <= $5 THEN 'expired' ELSE i.status END AS invite_status
FROM invitations.batch_rows AS r LEFT JOIN invitations.invites AS i ON i.id = r.invite_id
WHERE r.batch_id = $1 AND ($2::text[] IS NULL OR r.outcome = ANY($2::text[])) AND r.line_number > $3
ORDER BY r.line_number
LIMIT $4
"""

# The invites a resend of not-on-CollabKare rows takes up: pending or expired, not accepted meanwhile nor revoked by
# staff (a resend does not bring back an invite they withdrew). The list, the resend's lock and its count share it.
_RESENDABLE = "i.status IN ('pending', 'expired')"

# The addresses to ask to register: a patient who has since connected to the practice (by a request) is on
# CollabKare, and left out, though the row keeps the outcome its invite had; so is one whose invite staff revoked,
# and one whose invite expired and who holds a newer one (another batch's row or the access history tells of it).
NOT_ON_PLATFORM = f"""
SELECT r.email FROM invitations.batch_rows AS r JOIN invitations.invites AS i ON i.id = r.invite_id
WHERE r.batch_id = $1 AND r.outcome = 'not_on_platform' AND {_RESENDABLE}
  AND NOT EXISTS (SELECT 1 FROM invitations.connected_patients AS c
                  WHERE c.practice_id = i.practice_id AND c.email_key = i.email_key
                    AND NOT EXISTS (SELECT 1 FROM invitations.deleted_patients AS d WHERE d.patient_id = c.patient_id))
  AND NOT EXISTS (SELECT 1 FROM invitations.invites AS o
                  WHERE o.practice_id = i.practice_id AND o.email_key = i.email_key AND o.id <> i.id
                    AND o.status = 'pending' AND o.expires_at > $2)
ORDER BY r.line_number
"""

# Rows to resend and the invites they point at, locked so two resends of one batch take turns: the invites first,
# the order the outcome write-back locks in too, so the two cannot deadlock. Two statements, not one joining the
# rows to a CTE of the locked invites: a CTE has no index, and when the statistics still saw no not_on_platform row
# (they are taken as the batch is stored, every row queued) that join ran as a nested loop, quadratic: more than
# 60 s for 100,000 rows, and the resend failed with a 503.
LOCK_NOT_ON_PLATFORM_INVITES = f"""
SELECT i.id FROM invitations.invites AS i
WHERE i.id IN (SELECT invite_id FROM invitations.batch_rows WHERE batch_id = $1 AND outcome = 'not_on_platform')
  AND {_RESENDABLE}
ORDER BY i.id
FOR UPDATE
"""
LOCK_NOT_ON_PLATFORM_ROWS = """
SELECT line_number, email, note, invite_id FROM invitations.batch_rows
WHERE batch_id = $1 AND outcome = 'not_on_platform'
ORDER BY line_number
FOR UPDATE
"""

# What a resend would take up: its lock's rows, counted.
COUNT_RESENDABLE = f"""
SELECT count(*) FROM invitations.batch_rows AS r JOIN invitations.invites AS i ON i.id = r.invite_id
WHERE r.batch_id = $1 AND r.outcome = 'not_on_platform' AND {_RESENDABLE}
"""

UPDATE_ROWS = """
UPDATE invitations.batch_rows AS r
SET outcome = u.outcome, reason = u.reason, invite_id = u.invite_id,
    attempts = r.attempts + u.added, updated_at = $2
FROM unnest($3::int[], $4::text[], $5::text[], $6::uuid[], $7::int[])
    AS u(line_number, outcome, reason, invite_id, added)
WHERE r.batch_id = $1 AND r.line_number = u.line_number
"""

# The undelivered invites a roster's new ones are to replace, locked before the roster is stored (in id order, as the
# resend locks them): a patient accepting one meanwhile waits, then finds it replaced.
LOCK_REPLACED = "SELECT id, status FROM invitations.invites WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"

# The old invites new ones replace: pending ones are revoked, the others only point at their successor. Both callers
# have locked them already (lock_replaced, lock_not_on_platform); read as locked all the same: one revoked or accepted
# before that (staff and patients do not wait for the practice's lock) is revoked by nobody here (`revoked_now`
# false: its InviteRevoked went out already), and an accepted or already replaced one is left alone. One still pending
# but past its time (the sweeper has not come by: a resend takes such invites up) expired: it is expired, not revoked
# by the staff member (`expired_now`; it was, with an InviteRevoked naming them).
REPLACE_INVITES = """
WITH old AS (
    SELECT i.id, i.status AS was, i.status = 'pending' AND i.expires_at <= $1 AS overdue, i.batch_id, i.line_number,
           u.new_id
    FROM invitations.invites AS i JOIN unnest($3::uuid[], $4::uuid[]) AS u(old_id, new_id) ON i.id = u.old_id
    WHERE i.replaced_by IS NULL AND i.status <> 'accepted'
    FOR UPDATE OF i
), rows AS (
    -- The roster row of a replaced invite lets go of it ($5 says by what): it leaves its batch's not-on-CollabKare
    -- list, a resend of that batch leaves it alone, and a late outcome of the old invite cannot overwrite it. The
    -- rows of the batch being resent ($6) are not: the resend gives them their new invites.
    UPDATE invitations.batch_rows AS r SET outcome = 'already_invited', reason = $5, invite_id = NULL, updated_at = $1
    FROM old
    WHERE r.batch_id = old.batch_id AND r.line_number = old.line_number AND r.invite_id = old.id
      AND r.batch_id IS DISTINCT FROM $6
    RETURNING 1
)
UPDATE invitations.invites AS i
SET replaced_by = old.new_id,
    status = CASE WHEN old.overdue THEN 'expired' WHEN old.was = 'pending' THEN 'revoked' ELSE i.status END,
    expired_at = CASE WHEN old.overdue THEN i.expires_at ELSE i.expired_at END,
    revoked_at = CASE WHEN old.was = 'pending' AND NOT old.overdue THEN $1 ELSE i.revoked_at END,
    revoked_by = CASE WHEN old.was = 'pending' AND NOT old.overdue THEN $2 ELSE i.revoked_by END
FROM old
WHERE i.id = old.id
RETURNING i.id, i.practice_id, i.status, i.revoked_at, i.revoked_by, i.replaced_by, i.expires_at,
          old.was = 'pending' AND NOT old.overdue AS revoked_now, old.overdue AS expired_now
"""


@dataclass(frozen=True)
class BatchRecord:
    id: uuid.UUID
    practice_id: uuid.UUID
    created_by: str
    created_at: datetime
    idempotency_key: str | None
    request_digest: bytes
    lines: int
    total: int
    invited: int


@dataclass(frozen=True)
class RowRecord:
    line_number: int
    email: str
    note: str | None
    outcome: str
    reason: str | None
    duplicate_of: int | None
    invite_id: uuid.UUID | None
    attempts: int
    updated_at: datetime
    invite_status: str | None


async def find_batch(db: Executor, practice_id: uuid.UUID, batch_id: uuid.UUID) -> BatchRecord | None:
    row = await db.fetchrow(FIND_BATCH, practice_id, batch_id)
    return BatchRecord(**dict(row)) if row else None


async def find_batch_by_key(db: Executor, practice_id: uuid.UUID, key: str) -> BatchRecord | None:
    row = await db.fetchrow(FIND_BATCH_BY_KEY, practice_id, key)
    return BatchRecord(**dict(row)) if row else None


async def insert_batch(db: asyncpg.Connection, batch: BatchRecord, correlation_id: str) -> None:
    await db.execute(
        INSERT_BATCH,
        batch.id,
        batch.practice_id,
        batch.created_by,
        batch.created_at,
        batch.idempotency_key,
        batch.request_digest,
        batch.lines,
        batch.total,
        batch.invited,
        correlation_id,
    )


async def copy_records(db: asyncpg.Connection, records: Records) -> None:
    """One chunk of a batch: COPY for rows, invites and their InviteRequested (never a statement per row)."""
    if records.rows:
        await db.copy_to_table("batch_rows", schema_name=SCHEMA, columns=ROW_COLUMNS, source=_once(records.rows))
    if records.invites:
        await db.copy_to_table("invites", schema_name=SCHEMA, columns=INVITE_COLUMNS, source=_once(records.invites))
    await add_records(db, SCHEMA, records.events)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """COPY data as an async iterable: asyncpg would take bare bytes for a file name, and reads file objects
    through a thread pool."""
    yield data


async def count_outcomes(db: Executor, batch_id: uuid.UUID) -> dict[str, int]:
    return {row["outcome"]: int(row["n"]) for row in await db.fetch(COUNT_OUTCOMES, batch_id)}


async def list_rows(
    db: Executor, batch_id: uuid.UUID, outcomes: Sequence[str] | None, after_line: int, limit: int, now: datetime
) -> list[RowRecord]:
    """Rows after `after_line`, in line order; with `outcomes`, only rows with one of them."""
    found = await db.fetch(LIST_ROWS, batch_id, list(outcomes) if outcomes else None, after_line, limit, now)
    return [RowRecord(**dict(row)) for row in found]


async def not_on_platform_emails(db: Executor, batch_id: uuid.UUID, now: datetime) -> list[str]:
    return [row["email"] for row in await db.fetch(NOT_ON_PLATFORM, batch_id, now)]


async def count_resendable(db: Executor, batch_id: uuid.UUID) -> int:
    return int(await db.fetchval(COUNT_RESENDABLE, batch_id))


async def lock_not_on_platform(db: asyncpg.Connection, batch_id: uuid.UUID) -> list[asyncpg.Record]:
    """The batch's not-on-platform rows whose invite a resend takes up (_RESENDABLE), locked with their invites. A
    row that turned not_on_platform between the two statements has its invite unlocked: it waits for the next
    resend."""
    locked = {row["id"] for row in await db.fetch(LOCK_NOT_ON_PLATFORM_INVITES, batch_id)}
    rows = await db.fetch(LOCK_NOT_ON_PLATFORM_ROWS, batch_id)
    return [row for row in rows if row["invite_id"] in locked]


async def update_rows(
    db: asyncpg.Connection,
    batch_id: uuid.UUID,
    now: datetime,
    changes: Sequence[tuple[int, str, str | None, uuid.UUID | None, int]],
) -> None:
    """(line_number, outcome, reason, the row's invite from now on or None, attempts to add) per row."""
    if not changes:
        return
    columns = list(zip(*changes, strict=True))
    await db.execute(UPDATE_ROWS, batch_id, now, *(list(column) for column in columns))


async def lock_replaced(db: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Lock these invites until the transaction ends; returns each one's status as it is now."""
    if not ids:
        return {}
    return {row["id"]: row["status"] for row in await db.fetch(LOCK_REPLACED, list(ids))}


async def replace_invites(
    db: asyncpg.Connection,
    now: datetime,
    actor: str,
    pairs: Sequence[tuple[uuid.UUID, uuid.UUID]],
    resending: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    """Point each old invite at its successor, revoking it if still pending (expiring it if past its time); returns
    the updated invites, each with `revoked_now` and `expired_now` (what this call did: the events are the caller's
    to publish, events.replaced_events). The roster rows of the old invites let go of them, but those of the batch
    `resending`, which its caller updates."""
    if not pairs:
        return []
    old, new = zip(*pairs, strict=True)
    reason = replaced_reason(now)
    return list(await db.fetch(REPLACE_INVITES, now, actor, list(old), list(new), reason, resending))


FOLLOW_RESEND = """
UPDATE invitations.batch_rows
SET invite_id = $4, outcome = 'queued', reason = NULL, attempts = attempts + 1, updated_at = $5
WHERE batch_id = $1 AND line_number = $2 AND invite_id = $3
"""


async def follow_resend(
    db: asyncpg.Connection, batch_id: uuid.UUID, line_number: int, old: uuid.UUID, new: uuid.UUID, now: datetime
) -> None:
    """A roster invite resent on its own: its row follows the new invite, if the row still points at the old one."""
    await db.execute(FOLLOW_RESEND, batch_id, line_number, old, new, now)
