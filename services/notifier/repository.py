"""The SQL of the notifier's deliveries, their life from pending to a final outcome. The directories' SQL is in
directory_repository."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg

from services.notifier.directory import directory_key
from services.notifier.domain import REJECTION_WAIT_SECONDS, Claimed, Final, NewDelivery, Retry, as_locale
from services.runtime import database

SCHEMA = "notifier"
CHANNEL = "notifier_deliveries"  # NOTIFY'd by a statement trigger when deliveries are queued
OPEN = ("pending", "sending")


async def listen(pool: asyncpg.Pool, callback: Callable[..., object]) -> asyncpg.Connection:
    """A pooled connection kept LISTENing on CHANNEL (released by `unlisten`). `callback` is called too should the
    connection close under it (database.listen): its caller then finds it `closed` and listens again."""
    return await database.listen(pool, CHANNEL, callback, callback)


async def unlisten(pool: asyncpg.Pool, connection: asyncpg.Connection | None, callback: Callable[..., object]) -> None:
    await database.unlisten(pool, connection, CHANNEL, callback, callback)


async def insert_deliveries(db: asyncpg.Connection, deliveries: Sequence[NewDelivery], grace_seconds: float) -> int:
    """Queue deliveries; an event seen before (its row exists) queues nothing. Returns how many were new.

    A recipient or practice the directories do not know yet waits `grace_seconds` before being looked at:
    the PatientRegistered of someone who has just signed up may still be on its way on another topic. A rejection
    waits REJECTION_WAIT_SECONDS (at most the grace): a patient who accepted the practice's invite just before staff
    rejected her request is connected, and her ConnectionApproved is two hops behind (domain.not_to_send).
    """
    columns = [
        [getattr(d, name) for d in deliveries]
        for name in (
            "id", "source_event_id", "source_event_type", "kind", "recipient", "practice_id", "correlation_id",
            "invite_id", "batch_id", "line_number", "note", "accept_url", "expires_at", "reason", "identity_check",
            "replaces", "message_id",
        )
    ]  # fmt: skip
    result = await db.execute(
        """
        INSERT INTO notifier.deliveries (
            id, source_event_id, source_event_type, kind, recipient, practice_id, correlation_id,
            invite_id, batch_id, line_number, note, accept_url, expires_at, reason, identity_check, replaces,
            message_id, recipient_key, not_before, revoked_at)
        SELECT n.id, n.source_event_id, n.source_event_type, n.kind, n.recipient, n.practice_id, n.correlation_id,
               n.invite_id, n.batch_id, n.line_number, n.note, n.accept_url, n.expires_at, n.reason,
               n.identity_check, n.replaces, n.message_id, n.recipient_key,
               CASE WHEN EXISTS (SELECT 1 FROM notifier.patients p WHERE p.email = n.recipient_key)
                     AND EXISTS (SELECT 1 FROM notifier.practices r WHERE r.practice_id = n.practice_id)
                    THEN now() + CASE WHEN n.kind = 'connection_rejected' THEN make_interval(secs => $20)
                                      ELSE interval '0' END
                    ELSE now() + make_interval(secs => $19) END,
               -- Its InviteRevoked came first (a publish retried after a failure): ended at its claim, unsent.
               (SELECT v.revoked_at FROM notifier.revoked_invites v WHERE v.invite_id = n.invite_id)
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
                    $8::uuid[], $9::uuid[], $10::int[], $11::text[], $12::text[], $13::timestamptz[], $14::text[],
                    $15::text[], $16::uuid[], $17::text[], $18::text[])
             AS n(id, source_event_id, source_event_type, kind, recipient, practice_id, correlation_id,
                  invite_id, batch_id, line_number, note, accept_url, expires_at, reason, identity_check,
                  replaces, message_id, recipient_key)
        ON CONFLICT (id) DO NOTHING
        """,
        *columns,
        [directory_key(d.recipient) for d in deliveries],
        grace_seconds,
        min(grace_seconds, REJECTION_WAIT_SECONDS),
    )
    return int(result.rsplit(" ", 1)[-1])


async def purge_decided(db: asyncpg.Pool, decided_before: datetime, chunk: int = 10_000) -> int:
    """Delete deliveries decided before `decided_before`, a chunk per transaction (no long lock); returns how many.

    Each kept a patient's address and the server's reply for good. Safe once no topic can deliver their event
    again (the topics keep 14 days); an earlier invite's email is then no longer looked up either (a resend's "if
    you were invited before" wording, an approval that stops an invite): invites last 7 days."""
    purged = 0
    while True:
        deleted = await db.fetchval(
            """
            WITH old AS (
                SELECT id FROM notifier.deliveries
                WHERE status IN ('sent', 'not_on_platform', 'error') AND decided_at < $1
                LIMIT $2
            ), gone AS (
                DELETE FROM notifier.deliveries d USING old WHERE d.id = old.id RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            decided_before,
            chunk,
        )
        purged += deleted
        if deleted < chunk:
            return purged


async def open_count(db: asyncpg.Connection | asyncpg.Pool) -> int:
    """Deliveries not yet final: the sender's backlog, which consumption must not run away from."""
    return int(await db.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status IN ('pending', 'sending')"))


async def sender_backlog(db: asyncpg.Connection | asyncpg.Pool) -> int:
    """The open deliveries a sender has to work through, less the invites never tried that wait out the directories'
    grace (to an address nobody has registered yet): most end `not_on_platform` at their claim, without SMTP, and
    counting them let one practice's roster of unregistered addresses hold every other practice's emails back for a
    minute. A retry waiting for its time has an error recorded, and still counts; so do connection emails."""
    return int(
        await db.fetchval(
            """
            SELECT count(*) FROM notifier.deliveries
            WHERE status IN ('pending', 'sending')
              AND NOT (kind = 'invite' AND status = 'pending' AND attempts = 0 AND last_error IS NULL
                       AND not_before > now())
            """
        )
    )


async def claim_due(db: asyncpg.Connection, limit: int, owner: uuid.UUID) -> list[Claimed]:
    """Lock up to `limit` due deliveries other senders have not locked, mark them sending by `owner` (one sender
    process's run), one attempt more."""
    rows = await db.fetch(
        """
        WITH due AS (
            SELECT d.id, p.locale, p.email IS NOT NULL AS on_platform, p.display_name, r.name, r.reply_to,
                   CASE WHEN d.replaces IS NULL THEN false ELSE EXISTS (
                       -- The invites this one replaces, back along their resends (A <- B <- C: B revoked unsent
                       -- still leaves A's email in the inbox); one of them emailed, or being emailed, or not seen
                       -- yet: invites are keyed by their own id, so B's request can still be on its way on another
                       -- partition, and the email's line is an "if" ("If X invited you before, ...").
                       WITH RECURSIVE earlier (invite_id, depth) AS (
                           SELECT d.replaces, 1
                           UNION ALL
                           SELECT e.replaces, earlier.depth + 1
                           FROM earlier JOIN notifier.deliveries e ON e.invite_id = earlier.invite_id
                           WHERE e.replaces IS NOT NULL AND earlier.depth < 20
                       )
                       SELECT 1 FROM earlier LEFT JOIN notifier.deliveries s ON s.invite_id = earlier.invite_id
                       WHERE s.id IS NULL OR s.status IN ('sent', 'sending')
                   ) END AS earlier_sent,
                   -- The patient connected to the practice (an approval the invitations service may not have
                   -- heard of yet when the invite was made; an invite accepted just before staff rejected her
                   -- request): an invite's or a rejection's email would be moot.
                   -- OFFSET 0: a probe of deliveries_connected per claimed row; without it the planner may hash
                   -- every connection email ever queued at each claim when many deliveries are pending. An approval
                   -- queued before the address's current registration was another account's (one the platform
                   -- deleted, the address registered anew since): its new owner is not connected.
                   d.kind IN ('invite', 'connection_rejected') AND EXISTS (
                       SELECT 1 FROM notifier.deliveries c
                       WHERE c.kind = 'connection_approved' AND c.practice_id = d.practice_id
                         AND coalesce(c.recipient_key, lower(c.recipient))
                             = coalesce(d.recipient_key, lower(d.recipient))
                         AND (p.registered_at IS NULL OR c.created_at >= p.registered_at)
                       OFFSET 0
                   ) AS connected,
                   -- A connection email to a patient the platform deleted (directory_repository.delete_patient).
                   d.kind <> 'invite' AND p.email IS NULL AND EXISTS (
                       SELECT 1 FROM notifier.departed_patients x
                       WHERE x.email = coalesce(d.recipient_key, lower(d.recipient))
                       OFFSET 0  -- a probe per row asked, not a hash of the whole table (as `connected`)
                   ) AS departed
            FROM notifier.deliveries d
            LEFT JOIN notifier.patients p ON p.email = coalesce(d.recipient_key, lower(d.recipient))
            LEFT JOIN notifier.practices r ON r.practice_id = d.practice_id
            WHERE d.status = 'pending' AND d.not_before <= now()
            ORDER BY d.not_before
            LIMIT $1
            FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE notifier.deliveries d
        SET status = 'sending', attempts = d.attempts + 1, claimed_at = now(), claimed_by = $2, updated_at = now(),
            locale = coalesce(due.locale, 'en')
        FROM due
        WHERE d.id = due.id
        RETURNING d.*, due.on_platform, due.display_name AS patient_name, due.name AS practice_name, due.reply_to,
                  due.earlier_sent, due.connected, due.departed
        """,
        limit,
        owner,
    )
    return [_claimed(row) for row in rows]


def _claimed(row: asyncpg.Record) -> Claimed:
    delivery = NewDelivery(
        id=row["id"],
        source_event_id=row["source_event_id"],
        source_event_type=row["source_event_type"],
        kind=row["kind"],
        recipient=row["recipient"],
        practice_id=row["practice_id"],
        correlation_id=row["correlation_id"],
        message_id=row["message_id"],
        invite_id=row["invite_id"],
        batch_id=row["batch_id"],
        line_number=row["line_number"],
        note=row["note"],
        accept_url=row["accept_url"],
        expires_at=row["expires_at"],
        reason=row["reason"],
        identity_check=row["identity_check"],
        replaces=row["replaces"],
    )
    return Claimed(
        delivery=delivery,
        attempts=row["attempts"],
        on_platform=row["on_platform"],
        locale=as_locale(row["locale"]),
        patient_name=row["patient_name"],
        practice_name=row["practice_name"],
        reply_to=row["reply_to"],
        revoked=row["revoked_at"] is not None,
        earlier_sent=bool(row.get("earlier_sent")),  # asked by the claim only: a revoked one is never rendered
        connected=bool(row.get("connected")),
        departed=bool(row.get("departed")),
    )


async def revoke_invites(db: asyncpg.Connection, invite_ids: Sequence[uuid.UUID]) -> list[Claimed]:
    """Mark the open deliveries of these invites revoked; returns those not yet handed to a sender, locked, to be
    finished now. One a sender holds (`sending`) keeps the mark: if that attempt does not end it (a 4xx, a
    shutdown, a crash), the next claim finishes it instead of sending it."""
    await db.execute(
        "INSERT INTO notifier.revoked_invites (invite_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
        list(invite_ids),
    )
    rows = await db.fetch(
        """
        UPDATE notifier.deliveries d SET revoked_at = now(), updated_at = now()
        WHERE d.invite_id = ANY($1::uuid[]) AND d.status IN ('pending', 'sending')
        RETURNING d.*, NULL::boolean AS on_platform, NULL AS patient_name, NULL AS practice_name, NULL AS reply_to
        """,
        list(invite_ids),
    )
    return [_claimed(row) for row in rows if row["status"] == "pending"]


async def finish(db: asyncpg.Connection, finals: Sequence[Final], owner: uuid.UUID | None = None) -> set[uuid.UUID]:
    """Record final outcomes, clearing the content; returns the ids this call finished (not finished before).

    With the `owner` whose attempts they are: a row another sender claimed since (this one's lease ran out while
    it could not record) is that sender's to decide; its 250 was ignored after a late 5xx of ours."""
    if not finals:
        return set()
    rows = await db.fetch(
        """
        UPDATE notifier.deliveries d
        SET status = f.outcome, attempts = f.attempts, last_error = f.reason, smtp_reply = f.reply,
            decided_at = f.decided_at, updated_at = now(), claimed_at = NULL, claimed_by = NULL,
            note = NULL, accept_url = NULL, reason = NULL
        FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::timestamptz[])
             AS f(id, outcome, attempts, reason, reply, decided_at)
        WHERE d.id = f.id
          AND (d.status = 'pending' OR d.status = 'sending' AND ($7::uuid IS NULL OR d.claimed_by = $7))
        RETURNING d.id
        """,
        [f.claimed.delivery.id for f in finals],
        [f.outcome for f in finals],
        [f.attempts for f in finals],
        [f.reason for f in finals],
        [f.reply for f in finals],
        [f.decided_at for f in finals],
        owner,
    )
    return {row["id"] for row in rows}


async def reschedule(db: asyncpg.Connection, retries: Sequence[Retry], owner: uuid.UUID) -> None:
    """Put deliveries back in the queue for a later attempt (a retry, or a claim given back unsent): only those
    `owner` still holds; one whose lease expired and another sender claimed is that sender's now."""
    if not retries:
        return
    await db.execute(
        """
        UPDATE notifier.deliveries d
        SET status = 'pending', attempts = r.attempts, not_before = r.not_before, last_error = r.last_error,
            claimed_at = NULL, claimed_by = NULL, updated_at = now()
        FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::text[]) AS r(id, attempts, not_before, last_error)
        WHERE d.id = r.id AND d.status = 'sending' AND d.claimed_by = $5
        """,
        [r.claimed.delivery.id for r in retries],
        [r.attempts for r in retries],
        [r.not_before for r in retries],
        [r.last_error for r in retries],
        owner,
    )


async def renew_leases(
    db: asyncpg.Connection | asyncpg.Pool, owner: uuid.UUID, held: Sequence[uuid.UUID]
) -> dict[uuid.UUID, bool]:
    """Renew the lease of each delivery `owner` holds and still owns; returns those, each with whether its invite was
    revoked meanwhile (revoke_invites marks a held delivery, its sender learns it here). One it holds and no longer
    owns expired while the process could not renew it (frozen, or the database away) and may be another's now.

    A row locked by another transaction (its result being recorded, a revoke marking it) is left for the next
    renewal rather than waited for: a renewal that waited could go stale behind one lock, or deadlock with the
    recorder's multi-row update taking the same rows in another order."""
    rows = await db.fetch(
        """
        UPDATE notifier.deliveries d SET claimed_at = now()
        FROM (
            SELECT id FROM notifier.deliveries
            WHERE id = ANY($2::uuid[]) AND status = 'sending' AND claimed_by = $1
            FOR UPDATE SKIP LOCKED
        ) AS mine
        WHERE d.id = mine.id
        RETURNING d.id, d.revoked_at IS NOT NULL AS revoked
        """,
        owner,
        list(held),
    )
    return {row["id"]: row["revoked"] for row in rows}


async def hold_slot(pool: asyncpg.Pool, lock_key: int, wait_seconds: float) -> asyncpg.Connection | None:
    """A pooled connection holding the slot's session lock (until it goes back to the pool, whose reset unlocks it),
    or None when another session kept it for `wait_seconds`: a live process in the slot. A killed predecessor's
    session ends as its socket closes, at once on a restarted container, so a short wait tells the two apart."""
    connection: asyncpg.Connection = await pool.acquire()
    try:
        deadline = time.monotonic() + wait_seconds
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
            if time.monotonic() >= deadline:
                await pool.release(connection)
                return None
            await asyncio.sleep(0.25)
    except BaseException:
        await pool.release(connection)
        raise
    return connection


async def take_back_from_earlier_runs(
    db: asyncpg.Connection | asyncpg.Pool, runs: tuple[uuid.UUID, uuid.UUID], owner: uuid.UUID
) -> int:
    """Deliveries left `sending` by earlier runs in this process slot (run ids between `runs`) go back to the queue
    now: no two live processes share a slot, so those runs are dead, and their leases need not be waited out. The
    duplicate window is the lease expiry's: one a dead run had handed to the SMTP server is sent again. A row another
    transaction has locked (a recording still under way) is left to its lease."""
    result = await db.execute(
        """
        UPDATE notifier.deliveries d SET status = 'pending', claimed_at = NULL, claimed_by = NULL, updated_at = now()
        FROM (
            SELECT id FROM notifier.deliveries
            WHERE status = 'sending' AND claimed_by BETWEEN $1 AND $2 AND claimed_by <> $3
            FOR UPDATE SKIP LOCKED
        ) AS theirs
        WHERE d.id = theirs.id
        """,
        *runs,
        owner,
    )
    return int(result.rsplit(" ", 1)[-1])


async def expire_leases(db: asyncpg.Connection | asyncpg.Pool, lease_seconds: float) -> int:
    """Deliveries left `sending` by a process that died (so renewed by nobody) go back to the queue (the documented
    duplicate window: one it had handed to the SMTP server just before it died is sent again). A row another
    transaction holds (a frozen process's open claim or recording) is skipped, not waited for: waiting stalled this
    reaper's renewals, and every lease in the table stayed unexpired until the statement timed out."""
    result = await db.execute(
        """
        UPDATE notifier.deliveries d
        SET status = 'pending', claimed_at = NULL, claimed_by = NULL, updated_at = now()
        FROM (
            SELECT id FROM notifier.deliveries
            WHERE status = 'sending' AND claimed_at < now() - make_interval(secs => $1)
            FOR UPDATE SKIP LOCKED
        ) AS expired
        WHERE d.id = expired.id
        """,
        lease_seconds,
    )
    return int(result.rsplit(" ", 1)[-1])
