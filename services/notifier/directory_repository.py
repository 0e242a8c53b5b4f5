"""The SQL of the notifier's directories (services/notifier/directory.py says what goes in them): who is on
CollabKare, and each practice's name and reply address."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.notifier.directory import PatientEntry, PracticeEntry


async def upsert_patients(db: asyncpg.Connection, entries: Sequence[PatientEntry]) -> None:
    """The newest registration of each patient is its one address: platform.patients.v1 is compacted by patient id,
    so a directory rebuilt from it knows only that one. An address a patient changed from is dropped (it was kept,
    live, until a rebuild), and a registration older than the patient's newest changes nothing. Two at the same
    time: the greater address stays (migration 0012 drops the others kept before)."""
    columns = zip(*((e.email, e.patient_id, e.display_name, e.locale, e.registered_at) for e in entries), strict=True)
    await db.execute(
        """
        INSERT INTO notifier.patients (email, patient_id, display_name, locale, registered_at)
        SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
            AS n(email, patient_id, display_name, locale, registered_at)
        WHERE NOT EXISTS (SELECT 1 FROM notifier.patients AS q
                          WHERE q.patient_id = n.patient_id
                            AND (q.registered_at, q.email) > (n.registered_at, n.email))
        ON CONFLICT (email) DO UPDATE
            SET patient_id = EXCLUDED.patient_id, display_name = EXCLUDED.display_name,
                locale = EXCLUDED.locale, registered_at = EXCLUDED.registered_at
            WHERE notifier.patients.registered_at <= EXCLUDED.registered_at
        """,
        *columns,
    )
    await db.execute(
        """
        DELETE FROM notifier.patients AS p
        USING unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS n(patient_id, email, registered_at)
        WHERE p.patient_id = n.patient_id AND p.email <> n.email
          AND (p.registered_at, p.email) < (n.registered_at, n.email)
        """,
        [e.patient_id for e in entries],
        [e.email for e in entries],
        [e.registered_at for e in entries],
    )
    # Registered again after the platform deleted the account: on CollabKare once more.
    await db.execute("DELETE FROM notifier.departed_patients WHERE email = ANY($1::text[])", [e.email for e in entries])


async def upsert_practices(db: asyncpg.Connection, entries: Sequence[PracticeEntry]) -> None:
    await db.execute(
        """
        INSERT INTO notifier.practices (practice_id, name, reply_to, registered_at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
        ON CONFLICT (practice_id) DO UPDATE
            SET name = EXCLUDED.name, reply_to = EXCLUDED.reply_to, registered_at = EXCLUDED.registered_at
            WHERE notifier.practices.registered_at <= EXCLUDED.registered_at
        """,
        *zip(*((e.practice_id, e.name, e.reply_to, e.registered_at) for e in entries), strict=True),
    )


async def delete_patient(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    """Every address the patient registered with: an email to one of them is then not_on_platform, a connection
    email too (the address is kept as departed for DELIVERY_RETENTION_DAYS, without the patient's name)."""
    await db.execute(
        """
        WITH gone AS (DELETE FROM notifier.patients WHERE patient_id = $1 RETURNING email)
        INSERT INTO notifier.departed_patients (email) SELECT email FROM gone
        ON CONFLICT (email) DO UPDATE SET deleted_at = now()
        """,
        patient_id,
    )


async def purge_departed(db: asyncpg.Pool, deleted_before: datetime) -> int:
    """Forget the addresses of patients deleted before `deleted_before`; returns how many."""
    result = await db.execute("DELETE FROM notifier.departed_patients WHERE deleted_at < $1", deleted_before)
    return int(result.rsplit(" ", 1)[-1])


async def delete_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """An invite of the practice then ends error (unknown practice), as one from a practice never registered."""
    await db.execute("DELETE FROM notifier.practices WHERE practice_id = $1", practice_id)
