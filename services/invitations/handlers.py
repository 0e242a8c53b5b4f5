"""Use cases for invites: create, history, revoke, resend, accept, expire; and the consumer handlers."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from schemas import ConnectionApproved, DeliveryOutcome, Envelope, PatientRegistered, PracticeRegistered
from services.invitations import batch_repository, domain, repository
from services.invitations.acceptance import Acceptance, Answer, accept
from services.invitations.domain import (
    NOT_ON_PLATFORM_REASON,
    AlreadyConnected,
    AlreadyInvited,
    Cause,
    Invite,
    InviteStatus,
    Outcome,
)
from services.invitations.events import (
    accept_url,
    expired_event,
    replaced_events,
    requested_event,
    revoked_event,
    revoked_event_of,
)
from services.invitations.identity import Digests
from services.invitations.practice_lock import practice_transaction
from services.invitations.tokens import invite_id_of, new_token, token_hash
from services.runtime.database import transaction
from services.runtime.logging import get_logger
from services.runtime.outbox import add_events

log = get_logger(__name__)


@dataclass(frozen=True)
class Policy:
    """The settings the use cases need: how long an invite lives, where links point, the identity key."""

    ttl: timedelta
    base_url: str
    identity_key: bytes


class InviteNotFound(domain.DomainError):
    def __init__(self) -> None:
        super().__init__("No such invite.")


def now_utc() -> datetime:
    return datetime.now(UTC)


async def _stage_new(db: asyncpg.Connection, invite: Invite, policy: Policy, cause: Cause) -> Envelope:
    token, digest = new_token(invite.id)
    await repository.insert_invite(db, invite, digest)
    return requested_event(invite, accept_url(policy.base_url, token), cause)


async def create_invite(
    pool: asyncpg.Pool,
    policy: Policy,
    practice_id: uuid.UUID,
    email: str,
    note: str | None,
    digests: Digests,
    *,
    actor: str,
    cause: Cause,
) -> Invite:
    """One invite with identity factors; refused when the patient is connected or already holds a pending one."""
    key = domain.email_key(email)
    async with practice_transaction(pool, practice_id) as db:
        now = now_utc()  # after the practice's turn: invites that expired while it waited are expired
        connected, pending = await repository.known(db, practice_id, [key], now)
        if connected:
            raise AlreadyConnected()
        undelivered = pending.pop(key) if key in pending and pending[key].replaceable else None
        if key in pending:
            existing = await repository.find_invite(db, practice_id, pending[key].id)
            assert existing is not None
            raise AlreadyInvited(existing)
        if undelivered is not None:
            # Locked before it is replaced: a patient accepting it at this moment is connected, not invited again
            # (a new invite, asking for her SSN, went out; the accepted one never named it as its successor).
            status = (await batch_repository.lock_replaced(db, [undelivered.id])).get(undelivered.id)
            if status == "accepted":
                raise AlreadyConnected()
            if status != "pending":
                undelivered = None  # revoked or expired meanwhile: nothing to replace
        events: list[Envelope] = []
        # A pending invite that never reached the patient (no account yet, or the email failed) is replaced by
        # this one, as a resend would: both sides name each other (replaces / replaced_by).
        invite = domain.new_invite(
            practice_id,
            email,
            note,
            actor=actor,
            now=now,
            ttl=policy.ttl,
            digests=digests,
            replaces=undelivered.id if undelivered is not None else None,
        )
        events.append(await _stage_new(db, invite, policy, cause))
        if undelivered is not None:
            replaced = await batch_repository.replace_invites(db, now, actor, [(undelivered.id, invite.id)])
            events += replaced_events(replaced, cause)
        await add_events(db, repository.SCHEMA, events)
    log.info("invite.created", practice_id=str(practice_id), invite_id=str(invite.id))
    return invite


async def find_invite(pool: asyncpg.Pool, practice_id: uuid.UUID, invite_id: uuid.UUID) -> tuple[Invite, Invite | None]:
    """(the practice's invite, the invite that replaced it if any); InviteNotFound for another practice's too."""
    invite = await repository.find_invite(pool, practice_id, invite_id)
    if invite is None:
        raise InviteNotFound()
    replacement = await repository.find_invite(pool, practice_id, invite.replaced_by) if invite.replaced_by else None
    return invite, replacement


async def access_history(pool: asyncpg.Pool, practice_id: uuid.UUID, email: str) -> list[Invite]:
    return await repository.history(pool, practice_id, domain.email_key(email))


async def revoke_invite(
    pool: asyncpg.Pool, practice_id: uuid.UUID, invite_id: uuid.UUID, *, actor: str, cause: Cause
) -> Invite:
    """Revoking a revoked invite answers with it unchanged; accepted, expired and resent ones are refused."""
    async with transaction(pool) as db:
        invite = await repository.lock_invite(db, practice_id, invite_id)
        if invite is None:
            raise InviteNotFound()
        if invite.status is InviteStatus.REVOKED and invite.replaced_by is None:
            return invite
        revoked = domain.revoke(invite, actor=actor, now=now_utc())
        await repository.update_invite(db, revoked)
        await add_events(db, repository.SCHEMA, [revoked_event_of(revoked, cause)])
    log.info("invite.revoked", practice_id=str(practice_id), invite_id=str(invite_id))
    return revoked


async def resend_invite(
    pool: asyncpg.Pool, policy: Policy, practice_id: uuid.UUID, invite_id: uuid.UUID, *, actor: str, cause: Cause
) -> tuple[Invite, Invite]:
    """(old, new): revoke a pending invite (or close an expired one) and send a new one with a new token."""
    async with practice_transaction(pool, practice_id) as db:
        now = now_utc()  # after the practice's turn: invites that expired while it waited are expired
        invite = await repository.lock_invite(db, practice_id, invite_id)
        if invite is None:
            raise InviteNotFound()
        old, new = domain.resend(invite, actor=actor, now=now, ttl=policy.ttl)
        connected, pending = await repository.known(db, practice_id, [invite.email_key], now)
        if connected:
            raise AlreadyConnected()
        other = pending.get(invite.email_key)
        if other is not None and other.id != invite.id:
            existing = await repository.find_invite(db, practice_id, other.id)
            assert existing is not None
            raise AlreadyInvited(existing)
        events: list[Envelope] = []
        if invite.status is InviteStatus.PENDING and old.status is InviteStatus.REVOKED:
            events.append(revoked_event_of(old, cause))
        elif invite.status is InviteStatus.PENDING and old.status is InviteStatus.EXPIRED:
            events.append(expired_event(old.id, old.practice_id, old.expires_at, cause))
        # The old invite leaves the one-pending slot before the new one takes it.
        await repository.update_invite(db, old)
        events.append(await _stage_new(db, new, policy, cause))
        if new.batch_id is not None and new.line_number is not None:
            await batch_repository.follow_resend(db, new.batch_id, new.line_number, old.id, new.id, now)
        await add_events(db, repository.SCHEMA, events)
    log.info("invite.resent", practice_id=str(practice_id), invite_id=str(old.id), new_invite_id=str(new.id))
    return old, new


async def accept_invite(
    pool: asyncpg.Pool,
    policy: Policy,
    token: str,
    *,
    patient_id: uuid.UUID,
    patient_email: str,
    answer: Answer,
    cause: Cause,
) -> Acceptance | None:
    """The decision on one acceptance; counted wrong answers, locks and lazy expiry are committed whatever it is."""
    invite_id = invite_id_of(token)
    if invite_id is None:
        return None
    async with transaction(pool) as db:
        invite = await repository.lock_invite_by_id(db, invite_id)
        # Constant-time: how much of a guessed token matched must not show in the answer's timing.
        if invite is None or not hmac.compare_digest(invite.token_hash, token_hash(token)):
            return None
        patient_deleted, practice_deleted = await repository.deleted(db, patient_id, invite.practice_id)
        result = accept(
            invite,
            patient_id=patient_id,
            patient_email=patient_email,
            answer=answer,
            key=policy.identity_key,
            now=now_utc(),
            cause=cause,
            deleted=patient_deleted,
            practice_deleted=practice_deleted,
        )
        if result.changed:
            await repository.update_invite(db, result.invite)
            await add_events(db, repository.SCHEMA, result.events)
    log.info(
        "invite.acceptance",
        practice_id=str(invite.practice_id),
        invite_id=str(invite.id),
        decision=result.decision.value,
        failed_attempts=result.invite.failed_attempts,
    )
    return result


async def expire_due(pool: asyncpg.Pool, *, limit: int = 1000) -> int:
    """Expire every pending invite past its time, a bounded batch per transaction; returns how many."""
    total = 0
    cause = Cause(f"invite-expiry-{uuid.uuid4().hex}")
    while True:
        async with transaction(pool) as db:
            rows = await repository.expire_due(db, now_utc(), limit)
            events = [expired_event(r["id"], r["practice_id"], r["expires_at"], cause) for r in rows]
            await add_events(db, repository.SCHEMA, events)
        total += len(rows)
        if len(rows) < limit:
            break
    if total:
        log.info("invite.expired", count=total, correlation_id=cause.correlation_id)
    return total


async def record_outcomes(db: asyncpg.Connection, events: list[DeliveryOutcome]) -> None:
    """Consumer handler (inside the inbox transaction): set-based, one statement for the whole batch.

    Several outcomes for one invite in a batch are reduced first with the same precedence the SQL applies.
    """
    # In invite order, the order the roster's and a resend's locks take (as far as the update's plan follows it): a
    # resend no longer waits for an invite held here, so the two cannot deadlock either way.
    best = sorted(domain.strongest(_deliveries(events)).values(), key=lambda delivery: delivery.invite_id)
    if not best:
        return
    invites, rows = await repository.apply_outcomes(
        db,
        [d.invite_id for d in best],
        [d.outcome.value for d in best],
        [d.reason for d in best],
        [d.decided_at for d in best],
    )
    log.info("invite.outcomes_recorded", received=len(events), invites_changed=invites, rows_changed=rows)
    # An invite stored while its patient's approval was being projected was not revoked then: it is now.
    late = await repository.connected_pending(db, [d.invite_id for d in best])
    if late:
        causes = {event.payload.invite_id: Cause(event.correlation_id, str(event.event_id)) for event in events}
        first = Cause(events[0].correlation_id, str(events[0].event_id))
        await _revoke_for_connected(
            db, [p for p, _ in late], [k for _, k in late], lambda r: causes.get(r["id"], first)
        )


def _deliveries(events: list[DeliveryOutcome]) -> Iterator[domain.Delivery]:
    for event in events:
        payload = event.payload
        if payload.kind != "invite" or payload.invite_id is None:
            continue  # outcomes of other notifications (approvals, rejections) are not ours to record
        outcome = Outcome(payload.outcome)
        reason = payload.reason or (NOT_ON_PLATFORM_REASON if outcome is Outcome.NOT_ON_PLATFORM else None)
        yield domain.Delivery(payload.invite_id, outcome, reason, payload.decided_at)


async def project_connections(db: asyncpg.Connection, events: list[ConnectionApproved]) -> None:
    """Consumer handler: remember who is connected where, for "already connected" (one statement per batch), and
    revoke what the practice still had pending for them (a patient who asked to connect and was approved)."""
    usable = [event for event in events if event.practice_id is not None]
    if len(usable) < len(events):
        log.warning("connection.projection_skipped", count=len(events) - len(usable), why="no practice_id")
    if not usable:
        return
    practices = [event.practice_id for event in usable if event.practice_id is not None]
    emails = [str(event.payload.patient_email) for event in usable]
    await repository.add_connected(
        db,
        practices,
        [event.payload.patient_id for event in usable],
        emails,
        [event.payload.connection_id for event in usable],
        [event.payload.approved_at for event in usable],
    )
    keys = [domain.email_key(email) for email in emails]
    # Each InviteRevoked is caused by the ConnectionApproved of its own patient.
    causes = {
        (practice, key): Cause(event.correlation_id, str(event.event_id))
        for practice, key, event in zip(practices, keys, usable, strict=True)
    }
    await _revoke_for_connected(db, practices, keys, lambda r: causes[r["practice_id"], r["email_key"]])
    log.info("connection.projected", count=len(usable))


async def _revoke_for_connected(
    db: asyncpg.Connection,
    practices: list[uuid.UUID],
    keys: list[str],
    cause_of: Callable[[asyncpg.Record], Cause],
) -> None:
    """Revoke the practices' pending invites to these connected patients, each with its InviteRevoked."""
    revoked = await repository.revoke_for_connected(db, practices, keys, now_utc(), domain.PATIENT_CONNECTED)
    if not revoked:
        return
    events_out: list[Envelope] = [
        revoked_event(r["id"], r["practice_id"], r["revoked_by"], r["revoked_at"], None, cause_of(r)) for r in revoked
    ]
    await add_events(db, repository.SCHEMA, events_out)
    log.info("invite.revoked_patient_connected", count=len(revoked))


async def record_patients(db: asyncpg.Connection, events: list[PatientRegistered]) -> None:
    """Consumer handler: a patient registered (again, after a deletion under the same id) may accept invites."""
    await repository.unmark_deleted(db, "patient", [event.payload.patient_id for event in events])


async def forget_patient(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the patient's account. Until she registers again, her token (issued
    before the deletion, valid until it expires) accepts no invite; her invites stay, for the address they were
    sent to (another account registering it may accept them), and so do her connections."""
    await repository.mark_deleted(db, "patient", patient_id)
    log.info("invite.patient_deleted")


async def record_practices(db: asyncpg.Connection, events: list[PracticeRegistered]) -> None:
    """Consumer handler: a practice registered (again, after a deletion under the same id): its invites accept."""
    await repository.unmark_deleted(db, "practice", [event.practice_id for event in events])


async def forget_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the practice. Its invites accept nothing until it registers again
    (connections withdraws its pending requests; the notifier sends its invites no email)."""
    await repository.mark_deleted(db, "practice", practice_id)
    log.info("invite.practice_deleted", practice_id=str(practice_id))
