"""The SQL of the connections schema: named, schema-qualified queries and the rows they map to."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.connections.model import AuditEntry, Connection, ConnectionRequest, Position, Status

SCHEMA = "connections"

_REQUEST_COLUMNS = """
    id, practice_id, patient_id, patient_email, display_name, message, status, created_at,
    decided_by, decided_at, reason, connection_id
"""
_CONNECTION_COLUMNS = (
    "id, practice_id, patient_id, patient_email, connected_at, via, approved_by, request_id, invite_id"
)

LOCK_REQUEST = f"""
SELECT {_REQUEST_COLUMNS} FROM connections.connection_requests
WHERE practice_id = $1 AND id = $2
FOR UPDATE
"""

# Everything that may connect a patient to a practice, or ask for it, takes turns per patient: an ask, a decision
# and an accepted invite each read the connection and then write (the unique index alone made the later writer fail,
# a 500 to the approving staff, or let an ask slip in beside a connection not yet committed), and her events share
# one key on connections.v1, their occurred_at following their order there only if her changes at every practice
# take turns. Then the (practice, patient) lock, the one pods of the release before take (alone) while a rollout
# runs. Two statements: the order matters, and PostgreSQL does not promise one for the calls of one select list.
LOCK_PATIENT_EVERYWHERE = "SELECT pg_advisory_xact_lock(hashtextextended('connections.patient:' || $1::uuid::text, 0))"
LOCK_PATIENT = """
SELECT pg_advisory_xact_lock(hashtextextended('connections.patient:' || $1::uuid::text || ':' || $2::uuid::text, 0))
"""

REQUEST_PATIENT = "SELECT patient_id FROM connections.connection_requests WHERE practice_id = $1 AND id = $2"

PATIENTS_REQUEST = f"SELECT {_REQUEST_COLUMNS} FROM connections.connection_requests WHERE id = $1 AND patient_id = $2"

# FOR UPDATE: an invite accepted at the same moment as a staff decision waits for it (and vice versa).
LOCK_PENDING_REQUEST = f"""
SELECT {_REQUEST_COLUMNS} FROM connections.connection_requests
WHERE practice_id = $1 AND patient_id = $2 AND status = 'pending'
FOR UPDATE
"""

FIND_PENDING_REQUEST = f"""
SELECT {_REQUEST_COLUMNS} FROM connections.connection_requests
WHERE practice_id = $1 AND patient_id = $2 AND status = 'pending'
"""

# A concurrent twin of the same request loses on the one-pending index and returns nothing.
INSERT_REQUEST = """
INSERT INTO connections.connection_requests
    (id, practice_id, patient_id, patient_email, display_name, message, status, created_at)
VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
ON CONFLICT (practice_id, patient_id) WHERE status = 'pending' DO NOTHING
RETURNING id
"""

RECORD_DECISION = """
UPDATE connections.connection_requests
SET status = $3, decided_by = $4, decided_at = $5, reason = $6, connection_id = $7
WHERE practice_id = $1 AND id = $2 AND status = 'pending'
"""

# Locked (KEY SHARE) until the asking transaction ends: the practice's deletion waits for it, then withdraws the
# request it made (a request committed after the deletion's withdrawal would stay pending at no practice).
PRACTICE_KNOWN = "SELECT 1 FROM connections.practices WHERE practice_id = $1 FOR KEY SHARE"

# A practice registered again (a re-publish, a replay) keeps one row; an older event never overwrites a newer one.
UPSERT_PRACTICES = """
INSERT INTO connections.practices (practice_id, registered_at)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
ON CONFLICT (practice_id) DO UPDATE SET registered_at = EXCLUDED.registered_at
    WHERE connections.practices.registered_at < EXCLUDED.registered_at
"""

FIND_CONNECTION = f"""
SELECT {_CONNECTION_COLUMNS} FROM connections.connections WHERE practice_id = $1 AND patient_id = $2
"""

INSERT_CONNECTION = """
INSERT INTO connections.connections
    (id, practice_id, patient_id, patient_email, connected_at, via, approved_by, request_id, invite_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

INSERT_AUDIT = """
INSERT INTO connections.audit_log
    (practice_id, patient_id, action, actor, occurred_at, reason, request_id, connection_id, invite_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                     $7::uuid[], $8::uuid[], $9::uuid[])
"""

# Keyset pagination, newest first: rows arriving meanwhile sort before the cursor and never shift a page.
LIST_REQUESTS = f"""
SELECT {_REQUEST_COLUMNS} FROM connections.connection_requests
WHERE practice_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""

LIST_CONNECTIONS = f"""
SELECT {_CONNECTION_COLUMNS} FROM connections.connections
WHERE practice_id = $1
  AND ($2::timestamptz IS NULL OR (connected_at, id) < ($2, $3::uuid))
ORDER BY connected_at DESC, id DESC
LIMIT $4
"""


def _request(row: asyncpg.Record) -> ConnectionRequest:
    return ConnectionRequest(**{**dict(row), "status": Status(row["status"])})


def _connection(row: asyncpg.Record) -> Connection:
    return Connection(**dict(row))


async def lock_patient(db: asyncpg.Connection, practice_id: uuid.UUID, patient_id: uuid.UUID) -> None:
    """Until the transaction ends, the only one asking for, deciding on or making a connection of this patient's,
    at any practice."""
    await lock_patient_everywhere(db, patient_id)
    await db.execute(LOCK_PATIENT, practice_id, patient_id)


async def request_patient(db: asyncpg.Connection, practice_id: uuid.UUID, request_id: uuid.UUID) -> uuid.UUID | None:
    """The patient a request is from (it never changes), read before any lock is taken."""
    patient_id: uuid.UUID | None = await db.fetchval(REQUEST_PATIENT, practice_id, request_id)
    return patient_id


async def patients_request(
    db: asyncpg.Connection | asyncpg.Pool, patient_id: uuid.UUID, request_id: uuid.UUID
) -> ConnectionRequest | None:
    """The request, if this patient made it."""
    row = await db.fetchrow(PATIENTS_REQUEST, request_id, patient_id)
    return _request(row) if row else None


async def lock_request(
    db: asyncpg.Connection, practice_id: uuid.UUID, request_id: uuid.UUID
) -> ConnectionRequest | None:
    row = await db.fetchrow(LOCK_REQUEST, practice_id, request_id)
    return _request(row) if row else None


async def lock_pending_request(
    db: asyncpg.Connection, practice_id: uuid.UUID, patient_id: uuid.UUID
) -> ConnectionRequest | None:
    row = await db.fetchrow(LOCK_PENDING_REQUEST, practice_id, patient_id)
    return _request(row) if row else None


async def find_pending_request(
    db: asyncpg.Connection, practice_id: uuid.UUID, patient_id: uuid.UUID
) -> ConnectionRequest | None:
    row = await db.fetchrow(FIND_PENDING_REQUEST, practice_id, patient_id)
    return _request(row) if row else None


async def insert_request(db: asyncpg.Connection, request: ConnectionRequest) -> bool:
    """False when a concurrent twin got there first (the caller then reads that one)."""
    inserted = await db.fetchval(
        INSERT_REQUEST,
        request.id,
        request.practice_id,
        request.patient_id,
        request.patient_email,
        request.display_name,
        request.message,
        request.created_at,
    )
    return inserted is not None


async def record_decision(db: asyncpg.Connection, request: ConnectionRequest) -> None:
    status = await db.execute(
        RECORD_DECISION,
        request.practice_id,
        request.id,
        request.status.value,
        request.decided_by,
        request.decided_at,
        request.reason,
        request.connection_id,
    )
    # The row is locked by the caller, so a pending row that is not updated means a broken invariant.
    if status != "UPDATE 1":
        raise RuntimeError(f"expected to decide one pending request, got {status}")


async def find_connection(db: asyncpg.Connection, practice_id: uuid.UUID, patient_id: uuid.UUID) -> Connection | None:
    row = await db.fetchrow(FIND_CONNECTION, practice_id, patient_id)
    return _connection(row) if row else None


async def insert_connection(db: asyncpg.Connection, connection: Connection) -> None:
    await db.execute(
        INSERT_CONNECTION,
        connection.id,
        connection.practice_id,
        connection.patient_id,
        connection.patient_email,
        connection.connected_at,
        connection.via,
        connection.approved_by,
        connection.request_id,
        connection.invite_id,
    )


async def append_audit(db: asyncpg.Connection, entries: Sequence[AuditEntry]) -> None:
    if not entries:
        return
    columns = (
        "practice_id",
        "patient_id",
        "action",
        "actor",
        "occurred_at",
        "reason",
        "request_id",
        "connection_id",
        "invite_id",
    )
    await db.execute(INSERT_AUDIT, *([getattr(entry, name) for entry in entries] for name in columns))


async def list_requests(
    db: asyncpg.Connection | asyncpg.Pool,
    practice_id: uuid.UUID,
    status: Status | None,
    after: Position | None,
    limit: int,
) -> list[ConnectionRequest]:
    rows = await db.fetch(
        LIST_REQUESTS,
        practice_id,
        status.value if status else None,
        after.at if after else None,
        after.id if after else None,
        limit,
    )
    return [_request(row) for row in rows]


async def list_connections(
    db: asyncpg.Connection | asyncpg.Pool, practice_id: uuid.UUID, after: Position | None, limit: int
) -> list[Connection]:
    rows = await db.fetch(
        LIST_CONNECTIONS, practice_id, after.at if after else None, after.id if after else None, limit
    )
    return [_connection(row) for row in rows]


async def practice_known(db: asyncpg.Connection, practice_id: uuid.UUID) -> bool:
    return await db.fetchval(PRACTICE_KNOWN, practice_id) is not None


async def lock_patient_everywhere(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    """The patient's lock alone (lock_patient takes it first): her deletion and her asking, deciding or connecting
    at any practice take turns."""
    await db.execute(LOCK_PATIENT_EVERYWHERE, patient_id)


async def mark_deleted(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    await db.execute(
        "INSERT INTO connections.deleted_patients (patient_id) VALUES ($1)"
        " ON CONFLICT (patient_id) DO UPDATE SET deleted_at = now()",
        patient_id,
    )


async def unmark_deleted(db: asyncpg.Connection, patient_ids: list[uuid.UUID]) -> None:
    await db.execute("DELETE FROM connections.deleted_patients WHERE patient_id = ANY($1::uuid[])", patient_ids)


async def is_deleted(db: asyncpg.Connection, patient_id: uuid.UUID) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM connections.deleted_patients WHERE patient_id = $1", patient_id))


async def delete_pending_requests(db: asyncpg.Connection, patient_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Delete the patient's pending requests, at every practice; (request id, practice id) of each. A decision
    under way on one of them finishes first (its row lock), and then finds it decided or gone."""
    rows = await db.fetch(
        "DELETE FROM connections.connection_requests WHERE patient_id = $1 AND status = 'pending'"
        " RETURNING id, practice_id",
        patient_id,
    )
    return [(row["id"], row["practice_id"]) for row in rows]


async def delete_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    await db.execute("DELETE FROM connections.practices WHERE practice_id = $1", practice_id)


async def delete_practice_requests(db: asyncpg.Connection, practice_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Delete the practice's pending requests; (request id, patient id) of each. A decision under way on one of them
    finishes first (its row lock), and then finds it decided or gone."""
    rows = await db.fetch(
        "DELETE FROM connections.connection_requests WHERE practice_id = $1 AND status = 'pending'"
        " RETURNING id, patient_id",
        practice_id,
    )
    return [(row["id"], row["patient_id"]) for row in rows]


async def upsert_practices(db: asyncpg.Connection, practices: Sequence[tuple[uuid.UUID, datetime]]) -> None:
    await db.execute(UPSERT_PRACTICES, [p[0] for p in practices], [p[1] for p in practices])
