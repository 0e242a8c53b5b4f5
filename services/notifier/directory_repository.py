"""The SQL of the notifier's directories (services/notifier/directory.py says what goes in them): who is on
CollabKare, and each practice's name and reply address."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.notifier.directory import PatientEntry, PracticeEntry


async def upsert_patients(db: asyncpg.Connection, entries: Sequence[PatientEntry]) -> None:
    """The newest registration of each patient (one entry per patient) is its one address: platform.patients.v1 is
    compacted by patient id, and a directory rebuilt from it knows only that one. A registration older than the
    patient's newest changes nothing; two at the same time, the greater address stays. Then the addresses it
    touched are derived again: the one it left, and the one it names."""
    touched, before = await _addresses_of(db, [e.patient_id for e in entries])
    touched |= {e.email for e in entries}
    await _lock_addresses(db, touched)
    written = await db.fetch(
        """
        INSERT INTO notifier.registrations AS r (patient_id, email, display_name, locale, registered_at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
        ON CONFLICT (patient_id) DO UPDATE
            SET email = EXCLUDED.email, display_name = EXCLUDED.display_name, locale = EXCLUDED.locale,
                registered_at = EXCLUDED.registered_at
            WHERE (r.registered_at, r.email) <= (EXCLUDED.registered_at, EXCLUDED.email)
        RETURNING r.patient_id, r.email
        """,
        *zip(*((e.patient_id, e.email, e.display_name, e.locale, e.registered_at) for e in entries), strict=True),
    )
    await _derive(db, touched)
    # An address a registration took (not a stale one, nor a patient naming hers again: a sharer's new name), after
    # the platform deleted the patient who had it: on CollabKare once more, hers.
    taken = sorted({row["email"] for row in written if before.get(row["patient_id"]) != row["email"]})
    await db.execute("DELETE FROM notifier.departed_patients WHERE email = ANY($1::text[])", taken)


async def _addresses_of(db: asyncpg.Connection, patient_ids: list[uuid.UUID]) -> tuple[set[str], dict[uuid.UUID, str]]:
    """The addresses the patients' registrations name now, with their rows in `patients` (one a notifier of the
    release before wrote there has no registration); and the address each registration names. A patient's events
    come in order on her partition, to one consumer: what she names cannot change before this transaction ends."""
    rows = await db.fetch(
        "SELECT patient_id, email, true AS registered FROM notifier.registrations WHERE patient_id = ANY($1::uuid[])"
        " UNION ALL SELECT patient_id, email, false FROM notifier.patients WHERE patient_id = ANY($1::uuid[])",
        patient_ids,
    )
    return {row["email"] for row in rows}, {row["patient_id"]: row["email"] for row in rows if row["registered"]}


# The addresses a registration or a tombstone touches are derived by one transaction at a time: two notifiers applying
# two patients' events about one address (a family's; the patients' partitions differ) each derived it from what it
# saw, and one's tombstone could drop the address the other had just given to another patient. A transaction-level
# advisory lock per bucket of addresses (a fixed number of them: a lock per address took 2 per registration, 20,000
# for a batch at CONSUMER_BATCH_SIZE's maximum, past PostgreSQL's shared lock table), in the two-key space (every
# other lock of the schema takes one bigint key, and none of those waits), taken in order. Two batches of
# registrations meeting in another order (a patient's tombstone runs in its own transaction) end in a deadlock
# PostgreSQL breaks, one batch retried as any outage.
_ADDRESS_LOCK_CLASS = 0x4E4F5449  # "NOTI"
_ADDRESS_LOCK_BUCKETS = 256


async def _lock_addresses(db: asyncpg.Connection, emails: set[str]) -> None:
    buckets = sorted({zlib.crc32(email.encode()) % _ADDRESS_LOCK_BUCKETS for email in emails})
    await db.execute(
        "SELECT count(pg_advisory_xact_lock($1, k)) FROM (SELECT unnest($2::int4[]) AS k ORDER BY k) AS ordered",
        _ADDRESS_LOCK_CLASS,
        buckets,
    )


async def _derive(db: asyncpg.Connection, emails: set[str]) -> None:
    """`patients` at these addresses, from the registrations naming them: the newest one's patient, name and
    language; an address no registration names leaves."""
    addresses = sorted(emails)
    await db.execute(
        """
        INSERT INTO notifier.patients AS p (email, patient_id, display_name, locale, registered_at)
        SELECT DISTINCT ON (r.email) r.email, r.patient_id, r.display_name, r.locale, r.registered_at
        FROM notifier.registrations r
        WHERE r.email = ANY($1::text[])
        ORDER BY r.email, r.registered_at DESC, r.patient_id
        ON CONFLICT (email) DO UPDATE
            SET patient_id = EXCLUDED.patient_id, display_name = EXCLUDED.display_name, locale = EXCLUDED.locale,
                registered_at = EXCLUDED.registered_at
        """,
        addresses,
    )
    await db.execute(
        """
        DELETE FROM notifier.patients p
        WHERE p.email = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM notifier.registrations r WHERE r.email = p.email)
        """,
        addresses,
    )


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
    """The patient's registration: an email to her address is then not_on_platform, unless another patient's newest
    registration names it; a connection email too, then or once that other patient leaves it (the address is kept as
    departed for DELIVERY_RETENTION_DAYS, without the patient's name)."""
    touched, _ = await _addresses_of(db, [patient_id])
    await _lock_addresses(db, touched)
    await db.execute("DELETE FROM notifier.registrations WHERE patient_id = $1", patient_id)
    await _derive(db, touched)
    await db.execute(
        """
        INSERT INTO notifier.departed_patients (email) SELECT unnest($1::text[])
        ON CONFLICT (email) DO UPDATE SET deleted_at = now()
        """,
        sorted(touched),
    )


async def purge_departed(db: asyncpg.Pool, deleted_before: datetime) -> int:
    """Forget the addresses of patients deleted before `deleted_before`; returns how many."""
    result = await db.execute("DELETE FROM notifier.departed_patients WHERE deleted_at < $1", deleted_before)
    return int(result.rsplit(" ", 1)[-1])


async def delete_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """An invite of the practice then ends error (unknown practice), as one from a practice never registered."""
    await db.execute("DELETE FROM notifier.practices WHERE practice_id = $1", practice_id)
