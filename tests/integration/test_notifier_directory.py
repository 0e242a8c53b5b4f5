"""The patient directory's SQL against real PostgreSQL, two notifiers at once: an address two patients registered
(a family's), and what a notifier of the release before left behind during a rollout."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from collabkare.stack.infra import Infrastructure
from services.notifier import directory_repository
from services.notifier.directory import PatientEntry
from tests.harness import scratch
from tests.support import lock_waiters

T0 = datetime(2026, 12, 1, tzinfo=UTC)
FAMILY = "family@example.com"


async def test_a_tombstone_and_another_patients_registration_of_the_same_address_at_once_keep_it(
    infra: Infrastructure, template_database: str
) -> None:
    """A review: two notifiers applying Ana's tombstone and Beatriz's registration of their shared address at the same
    moment each derived the address from what it saw; the tombstone's, waiting on the registration's row lock, then
    deleted the address Beatriz had just been given, and marked it departed: her emails ended not_on_platform."""
    ana, beatriz = uuid.uuid4(), uuid.uuid4()
    async with scratch(infra, template_database) as (_, _, admin):
        async with admin.acquire() as db:
            await directory_repository.upsert_patients(db, [PatientEntry(FAMILY, ana, "Ana", "en", T0)])
        async with admin.acquire() as first, admin.acquire() as second:
            registering = second.transaction()
            await registering.start()
            later = T0 + timedelta(days=1)
            await directory_repository.upsert_patients(second, [PatientEntry(FAMILY, beatriz, "Bea", "es", later)])

            async def tombstone() -> None:
                async with first.transaction():
                    await directory_repository.delete_patient(first, ana)

            deleting = asyncio.create_task(tombstone())
            async with asyncio.timeout(20):
                while not await lock_waiters(admin) and not deleting.done():
                    await asyncio.sleep(0.05)
            await registering.commit()
            async with asyncio.timeout(20):
                await deleting
        patients = await admin.fetch("SELECT patient_id, email, locale FROM notifier.patients")
        departed = await admin.fetch("SELECT email FROM notifier.departed_patients")
    assert [tuple(r) for r in patients] == [(beatriz, FAMILY, "es")]
    assert [r["email"] for r in departed] == [FAMILY]  # Ana's, though Beatriz's for now: it matters once she leaves


async def test_what_a_notifier_of_the_release_before_registered_is_forgotten_by_a_tombstone_or_a_move(
    infra: Infrastructure, template_database: str
) -> None:
    """A review: during the rollout an older notifier writes `patients` only; a registration without its row in
    `registrations` stayed on CollabKare, her name kept, after her tombstone reached a new notifier."""
    deleted, moved = uuid.uuid4(), uuid.uuid4()
    async with scratch(infra, template_database) as (_, _, admin):
        await admin.executemany(
            "INSERT INTO notifier.patients (email, patient_id, display_name, locale, registered_at)"
            " VALUES ($1, $2, $3, 'en', $4)",
            [("gone@example.com", deleted, "Pat", T0), ("old@example.com", moved, "Mo", T0)],
        )
        async with admin.acquire() as db, db.transaction():
            await directory_repository.delete_patient(db, deleted)
            entry = PatientEntry("new@example.com", moved, "Mo", "en", T0 + timedelta(days=1))
            await directory_repository.upsert_patients(db, [entry])
        left = await admin.fetch("SELECT email, patient_id FROM notifier.patients ORDER BY email")
        departed = await admin.fetch("SELECT email FROM notifier.departed_patients ORDER BY email")
    assert [tuple(r) for r in left] == [("new@example.com", moved)]
    assert [r["email"] for r in departed] == ["gone@example.com"]  # moving away is no deletion


async def test_the_locks_a_registration_batch_takes_are_bounded(infra: Infrastructure, template_database: str) -> None:
    """A review: a lock per address touched, 2 per patient who moves, reached PostgreSQL's shared lock table ("out of
    shared memory", an outage to the consumer, retried for ever) at CONSUMER_BATCH_SIZE's larger values."""
    ids = [uuid.uuid4() for _ in range(2_000)]
    async with scratch(infra, template_database) as (_, _, admin):
        async with admin.acquire() as db, db.transaction():
            entries = [PatientEntry(f"old{i}@example.com", p, None, "en", T0) for i, p in enumerate(ids)]
            await directory_repository.upsert_patients(db, entries)
        async with admin.acquire() as db, db.transaction():
            later = T0 + timedelta(days=1)
            moves = [PatientEntry(f"new{i}@example.com", p, None, "en", later) for i, p in enumerate(ids)]
            await directory_repository.upsert_patients(db, moves)
            held = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
        moved = await admin.fetchval("SELECT count(*) FROM notifier.patients WHERE email LIKE 'new%'")
    assert held <= 256 and moved == 2_000


async def test_a_deleted_patients_address_stays_departed_through_a_stale_registration_and_a_sharers_move(
    infra: Infrastructure, template_database: str
) -> None:
    """A black-box check: a replayed older registration naming a deleted patient's address wiped its departed mark
    (the registration itself changed nothing), and an address a deleted patient shared was never marked, so once the
    other patient moved away a rejection to it was emailed; a review: so was it after that other patient only changed
    her name."""
    carol, ana, bea, dee = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    later = T0 + timedelta(days=1)
    async with scratch(infra, template_database) as (_, _, admin):
        async with admin.acquire() as db, db.transaction():
            await directory_repository.upsert_patients(
                db,
                [
                    PatientEntry("carol@example.com", carol, None, "en", later),
                    PatientEntry("x@example.com", ana, None, "en", T0),
                    PatientEntry(FAMILY, bea, None, "en", T0),
                    PatientEntry(FAMILY, dee, None, "en", later),
                ],
            )
        async with admin.acquire() as db, db.transaction():
            await directory_repository.delete_patient(db, ana)
            await directory_repository.delete_patient(db, dee)  # Bea still names the family's address
        async with admin.acquire() as db, db.transaction():
            stale = PatientEntry("x@example.com", carol, None, "en", T0)  # older than Carol's newest: no effect
            await directory_repository.upsert_patients(db, [stale])
            stale_shared = PatientEntry(FAMILY, carol, None, "en", T0)  # the same, naming an address Bea holds
            renamed = PatientEntry(FAMILY, bea, "Bea B.", "en", later)  # Bea changes her name, not her address
            await directory_repository.upsert_patients(db, [stale_shared])
            await directory_repository.upsert_patients(db, [renamed])
            moved = PatientEntry("bea@example.com", bea, None, "en", later + timedelta(days=1))
            await directory_repository.upsert_patients(db, [moved])
        patients = await admin.fetch("SELECT email FROM notifier.patients ORDER BY email")
        departed = await admin.fetch("SELECT email FROM notifier.departed_patients ORDER BY email")
    assert [r["email"] for r in patients] == ["bea@example.com", "carol@example.com"]
    assert [r["email"] for r in departed] == [FAMILY, "x@example.com"]
