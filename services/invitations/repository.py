"""The SQL of invites and the connected-patients projection: named, schema-qualified queries and their rows."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Set
from datetime import datetime
from typing import Literal, TypeAlias

import asyncpg

from services.invitations.batch import PendingInvite
from services.invitations.domain import (
    CONNECTED_NOT_DELIVERED,
    PATIENT_CONNECTED,
    Invite,
    InviteStatus,
    Outcome,
    email_key,
)
from services.invitations.identity import Digests

SCHEMA = "invitations"
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool

_COLUMNS = """
    id, practice_id, email, note, status, delivery, delivery_reason, delivered_at, created_by, created_at,
    expires_at, batch_id, line_number, replaces, ssn_digest, dob_digest, phone_digest, failed_attempts,
    locked_at, accepted_at, accepted_by, revoked_at, revoked_by, replaced_by, expired_at
"""

LOCK_PRACTICE = "SELECT pg_advisory_xact_lock(hashtextextended('invitations.practice:' || $1::uuid::text, 0))"

FIND_INVITE = f"SELECT {_COLUMNS} FROM invitations.invites WHERE practice_id = $1 AND id = $2"
LOCK_INVITE = FIND_INVITE + " FOR UPDATE"
LOCK_INVITE_BY_ID = f"SELECT {_COLUMNS}, token_hash FROM invitations.invites WHERE id = $1 FOR UPDATE"

INSERT_INVITE = """
INSERT INTO invitations.invites
    (id, practice_id, email, email_key, note, token_hash, status, delivery, created_by, created_at, expires_at,
     batch_id, line_number, replaces, ssn_digest, dob_digest, phone_digest)
VALUES ($1, $2, $3, $15, $4, $5, 'pending', 'queued', $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""
# Email keys come from domain.email_key, never from PostgreSQL's lower() (see there).

# Only the fields a state change can touch; the rest of an invite never changes after it is created.
UPDATE_INVITE = """
UPDATE invitations.invites
SET status = $2, failed_attempts = $3, locked_at = $4, accepted_at = $5, accepted_by = $6,
    revoked_at = $7, revoked_by = $8, replaced_by = $9, expired_at = $10
WHERE id = $1
"""

HISTORY = f"""
SELECT {_COLUMNS} FROM invitations.invites WHERE practice_id = $1 AND email_key = $2
ORDER BY created_at DESC, id DESC
"""

# Which of these patients are connected (id NULL) or hold a pending, unexpired invite: one round trip, the
# (up to 100,000) addresses sent once. A patient who accepted an invite is connected from that moment, before
# the ConnectionApproved it causes comes back (and however long connections or the broker take).
# A connected patient the platform deleted connects nobody at her address: the next account to register it may be
# invited (and should she register again under her id, she counts again). Anti-joins on the uuid, each in a branch
# of its own: `NOT IN` or a join on text under an OR ran as a scan of deleted_patients per row, past the 60 s
# statement timeout for a large practice once the platform had deleted 150,000 accounts.
_CONNECTED_ALIVE = "NOT EXISTS (SELECT 1 FROM invitations.deleted_patients AS d WHERE d.patient_id = c.patient_id)"
_ACCEPTED_ALIVE = (
    "NOT EXISTS (SELECT 1 FROM invitations.deleted_patients AS d WHERE d.patient_id = i.accepted_by::uuid)"
)
_KNOWN_COLUMNS = """email_key, CASE WHEN status = 'pending' THEN id END, created_at, expires_at, delivery,
       ssn_digest IS NOT NULL OR dob_digest IS NOT NULL AS checks_identity, locked_at IS NOT NULL AS locked"""
_CONNECTED_COLUMNS = """c.email_key, NULL::uuid AS id, NULL::timestamptz AS created_at, NULL::timestamptz AS expires_at,
       NULL::text AS delivery, false AS checks_identity, false AS locked"""

KNOWN = f"""
SELECT {_CONNECTED_COLUMNS}
FROM invitations.connected_patients AS c
WHERE c.practice_id = $1 AND c.email_key = ANY($2::text[]) AND {_CONNECTED_ALIVE}
UNION ALL
SELECT {_KNOWN_COLUMNS} FROM invitations.invites AS i
WHERE practice_id = $1 AND email_key = ANY($2::text[]) AND status = 'accepted' AND {_ACCEPTED_ALIVE}
UNION ALL
SELECT {_KNOWN_COLUMNS} FROM invitations.invites
WHERE practice_id = $1 AND email_key = ANY($2::text[]) AND status = 'pending' AND expires_at > $3
"""

# The same for every patient of the practice, and how many that is: when the practice knows fewer patients
# than the roster has, reading them all beats probing an index 100,000 times.
KNOWN_ALL = f"""
SELECT {_CONNECTED_COLUMNS}
FROM invitations.connected_patients AS c WHERE c.practice_id = $1 AND {_CONNECTED_ALIVE}
UNION ALL
SELECT {_KNOWN_COLUMNS} FROM invitations.invites AS i
WHERE practice_id = $1 AND status = 'accepted' AND {_ACCEPTED_ALIVE}
UNION ALL
SELECT {_KNOWN_COLUMNS} FROM invitations.invites WHERE practice_id = $1 AND status = 'pending' AND expires_at > $2
"""
COUNT_KNOWN = """
SELECT (SELECT count(*) FROM invitations.connected_patients WHERE practice_id = $1)
     + (SELECT count(*) FROM invitations.invites
        WHERE practice_id = $1 AND (status = 'accepted' OR status = 'pending' AND expires_at > $2))
"""
_PROBE_LIMIT = 1000  # up to this many addresses, probing the indexes is always cheap

# The sweeper: several service instances may run it at once, so rows are claimed with SKIP LOCKED.
EXPIRE_DUE = """
WITH due AS (
    SELECT id FROM invitations.invites
    WHERE status = 'pending' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE invitations.invites AS i SET status = 'expired', expired_at = i.expires_at
FROM due WHERE i.id = due.id
RETURNING i.id, i.practice_id, i.expires_at
"""

# Delivery outcomes move only up the ladder (queued < error < not_on_platform < sent; see domain.DELIVERY_RANK),
# and the roster row follows its current invite in the same statement, so the two never disagree.
_RANK = "array_position(ARRAY['queued', 'error', 'not_on_platform', 'sent']::text[], {})"
# A row whose invite was never delivered and whose patient has connected by an approved request (the invite revoked
# by system:patient-connected, $5) says already_connected, with reason $6, as the row of a patient connected before
# the roster does: the outcome may come after the connection (here) or before it (REVOKE_FOR_CONNECTED's rows).
APPLY_OUTCOMES = f"""
WITH outcome AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS o(invite_id, outcome, reason, at)
), changed AS (
    UPDATE invitations.invites AS i
    SET delivery = o.outcome, delivery_reason = o.reason,
        delivered_at = CASE WHEN o.outcome = 'sent' THEN o.at END  -- only a sent email was delivered
    FROM outcome AS o
    WHERE i.id = o.invite_id AND {_RANK.format("o.outcome")} > {_RANK.format("i.delivery")}
    RETURNING i.id, i.batch_id, i.line_number, i.delivery, i.delivery_reason, o.at,
              i.revoked_by IS NOT DISTINCT FROM $5 AND o.outcome <> 'sent' AS connected
), rows AS (
    UPDATE invitations.batch_rows AS r
    SET outcome = CASE WHEN c.connected THEN 'already_connected' ELSE c.delivery END,
        reason = CASE WHEN c.connected THEN $6 ELSE c.delivery_reason END, updated_at = c.at
    FROM changed AS c
    WHERE r.batch_id = c.batch_id AND r.line_number = c.line_number AND r.invite_id = c.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM changed) AS invites, (SELECT count(*) FROM rows) AS rows
"""

ADD_CONNECTED = """
INSERT INTO invitations.connected_patients (practice_id, patient_id, email, email_key, connection_id, connected_at)
SELECT p, pt, e, k, c, t
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[]) AS x(p, pt, e, k, c, t)
ON CONFLICT (practice_id, patient_id) DO NOTHING
"""

# A patient connected by other means (an approved request) no longer needs the practice's pending invite: revoked,
# so that it is neither accepted (an InviteAccepted no connection follows) nor shown as pending in the history. The
# roster row of one whose email was never delivered (its outcome came first) says already_connected, with reason $5.
# An invite past its week is left to the sweeper (expired, not revoked), and its row keeps its outcome.
REVOKE_FOR_CONNECTED = """
WITH revoked AS (
    UPDATE invitations.invites AS i SET status = 'revoked', revoked_at = $3, revoked_by = $4
    FROM unnest($1::uuid[], $2::text[]) AS c(practice_id, email_key)
    WHERE i.practice_id = c.practice_id AND i.email_key = c.email_key AND i.status = 'pending'
      AND i.expires_at > $3  -- one past its week is expired, by the sweeper, not revoked
    RETURNING i.id, i.practice_id, i.email_key, i.revoked_by, i.revoked_at, i.batch_id, i.line_number
), rows AS (
    -- Lets go of the invite, as a resend's flagged row does: a late outcome of it cannot overwrite the row.
    UPDATE invitations.batch_rows AS r SET outcome = 'already_connected', reason = $5, invite_id = NULL, updated_at = $3
    FROM revoked AS v
    WHERE r.batch_id = v.batch_id AND r.line_number = v.line_number AND r.invite_id = v.id
      AND r.outcome IN ('not_on_platform', 'error')
    RETURNING 1
)
SELECT id, practice_id, email_key, revoked_by, revoked_at FROM revoked
"""

# Pending invites of patients the projection knows as connected to the practice: one stored while the approval was
# being projected (its transaction still open, so REVOKE_FOR_CONNECTED did not see it). Its outcome finds it.
CONNECTED_PENDING = f"""
SELECT DISTINCT i.practice_id, i.email_key FROM invitations.invites AS i
WHERE i.id = ANY($1::uuid[]) AND i.status = 'pending'
  AND EXISTS (SELECT 1 FROM invitations.connected_patients AS c
              WHERE c.practice_id = i.practice_id AND c.email_key = i.email_key AND {_CONNECTED_ALIVE})
"""

ANALYZE = "ANALYZE invitations.outbox, invitations.invites, invitations.batch_rows"


def _invite(row: asyncpg.Record) -> Invite:
    values = dict(row)
    values.setdefault("token_hash", b"")
    digests = Digests(values.pop("ssn_digest"), values.pop("dob_digest"), values.pop("phone_digest"))
    values["status"] = InviteStatus(values["status"])
    values["delivery"] = Outcome(values["delivery"])
    return Invite(**values, digests=digests)


async def analyze(db: Executor) -> None:
    await db.execute(ANALYZE)


async def lock_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """Serialise invite creation per practice until the transaction ends, so "already invited" is exact."""
    await db.execute(LOCK_PRACTICE, practice_id)


async def find_invite(db: Executor, practice_id: uuid.UUID, invite_id: uuid.UUID) -> Invite | None:
    row = await db.fetchrow(FIND_INVITE, practice_id, invite_id)
    return _invite(row) if row else None


async def lock_invite(db: asyncpg.Connection, practice_id: uuid.UUID, invite_id: uuid.UUID) -> Invite | None:
    row = await db.fetchrow(LOCK_INVITE, practice_id, invite_id)
    return _invite(row) if row else None


async def lock_invite_by_id(db: asyncpg.Connection, invite_id: uuid.UUID) -> Invite | None:
    """Any practice's invite, with its token digest: acceptance finds the invite from the token alone."""
    row = await db.fetchrow(LOCK_INVITE_BY_ID, invite_id)
    return _invite(row) if row else None


async def insert_invite(db: asyncpg.Connection, invite: Invite, token_hash: bytes) -> None:
    await db.execute(
        INSERT_INVITE,
        invite.id,
        invite.practice_id,
        invite.email,
        invite.note,
        token_hash,
        invite.created_by,
        invite.created_at,
        invite.expires_at,
        invite.batch_id,
        invite.line_number,
        invite.replaces,
        invite.digests.ssn,
        invite.digests.date_of_birth,
        invite.digests.phone,
        invite.email_key,
    )


async def update_invite(db: asyncpg.Connection, invite: Invite) -> None:
    await db.execute(
        UPDATE_INVITE,
        invite.id,
        invite.status.value,
        invite.failed_attempts,
        invite.locked_at,
        invite.accepted_at,
        invite.accepted_by,
        invite.revoked_at,
        invite.revoked_by,
        invite.replaced_by,
        invite.expired_at,
    )


async def history(db: Executor, practice_id: uuid.UUID, email_key: str) -> list[Invite]:
    return [_invite(row) for row in await db.fetch(HISTORY, practice_id, email_key)]


async def known(
    db: Executor, practice_id: uuid.UUID, keys: Collection[str], now: datetime
) -> tuple[set[str], dict[str, PendingInvite]]:
    """(connected patients, patients with a pending unexpired invite) among these email keys.

    `keys` may be any collection; a dict or set makes the membership test of a large roster cheap.
    """
    connected: set[str] = set()
    pending: dict[str, PendingInvite] = {}
    if not keys:
        return connected, pending
    if len(keys) > _PROBE_LIMIT and await db.fetchval(COUNT_KNOWN, practice_id, now) < len(keys):
        wanted = keys if isinstance(keys, Set | Mapping) else set(keys)
        rows = [row for row in await db.fetch(KNOWN_ALL, practice_id, now) if row["email_key"] in wanted]
    else:
        rows = await db.fetch(KNOWN, practice_id, list(keys), now)
    for row in rows:
        if row["id"] is None:
            connected.add(row["email_key"])
        else:
            pending[row["email_key"]] = PendingInvite(
                row["id"], row["created_at"], row["expires_at"], row["delivery"], row["checks_identity"], row["locked"]
            )
    return connected, pending


async def expire_due(db: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    return list(await db.fetch(EXPIRE_DUE, now, limit))


async def apply_outcomes(
    db: asyncpg.Connection,
    invite_ids: list[uuid.UUID],
    outcomes: list[str],
    reasons: list[str | None],
    decided_at: list[datetime],
) -> tuple[int, int]:
    """(invites changed, rows changed)."""
    row = await db.fetchrow(
        APPLY_OUTCOMES, invite_ids, outcomes, reasons, decided_at, PATIENT_CONNECTED, CONNECTED_NOT_DELIVERED
    )
    assert row is not None
    return int(row["invites"]), int(row["rows"])


async def add_connected(
    db: asyncpg.Connection,
    practice_ids: list[uuid.UUID],
    patient_ids: list[uuid.UUID],
    emails: list[str],
    connection_ids: list[uuid.UUID],
    connected_at: list[datetime],
) -> None:
    keys = [email_key(email) for email in emails]
    await db.execute(ADD_CONNECTED, practice_ids, patient_ids, emails, keys, connection_ids, connected_at)


async def connected_pending(db: asyncpg.Connection, invite_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, str]]:
    """(practice, email key) of those of these invites still pending whose patient is connected to the practice."""
    return [(row["practice_id"], row["email_key"]) for row in await db.fetch(CONNECTED_PENDING, invite_ids)]


async def revoke_for_connected(
    db: asyncpg.Connection, practice_ids: list[uuid.UUID], keys: list[str], now: datetime, revoked_by: str
) -> list[asyncpg.Record]:
    """Revoke the pending invites of these (practice, patient email key) pairs; returns the revoked invites."""
    return list(await db.fetch(REVOKE_FOR_CONNECTED, practice_ids, keys, now, revoked_by, CONNECTED_NOT_DELIVERED))


# What the platform deleted (a tombstone), until it registers again: its table and id column.
DeletedKind = Literal["patient", "practice"]
_DELETED: dict[DeletedKind, tuple[str, str]] = {
    "patient": ("deleted_patients", "patient_id"),
    "practice": ("deleted_practices", "practice_id"),
}


async def mark_deleted(db: asyncpg.Connection, kind: DeletedKind, entity_id: uuid.UUID) -> None:
    table, column = _DELETED[kind]
    await db.execute(
        f"INSERT INTO {table} ({column}) VALUES ($1) ON CONFLICT ({column}) DO UPDATE SET deleted_at = now()",
        entity_id,
    )


async def unmark_deleted(db: asyncpg.Connection, kind: DeletedKind, entity_ids: list[uuid.UUID]) -> None:
    table, column = _DELETED[kind]
    await db.execute(f"DELETE FROM {table} WHERE {column} = ANY($1::uuid[])", entity_ids)


async def deleted(db: Executor, patient_id: uuid.UUID, practice_id: uuid.UUID) -> tuple[bool, bool]:
    """Whether the platform deleted the patient, and the practice."""
    row = await db.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM deleted_patients WHERE patient_id = $1) AS patient,"
        " EXISTS (SELECT 1 FROM deleted_practices WHERE practice_id = $2) AS practice",
        patient_id,
        practice_id,
    )
    assert row is not None
    return bool(row["patient"]), bool(row["practice"])
