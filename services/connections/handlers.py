"""Use cases of the connections service: each is one unit of work writing its rows, audit and events together."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg

from schemas import InviteAccepted, PatientRegistered, PracticeRegistered
from services.connections import domain, repository
from services.connections.model import (
    Cause,
    Change,
    Connection,
    ConnectionRequest,
    Decision,
    PatientRef,
    Position,
    Status,
)
from services.runtime.database import transaction
from services.runtime.logging import get_logger
from services.runtime.outbox import add_events

log = get_logger(__name__)
ItemT = TypeVar("ItemT", ConnectionRequest, Connection)


class RequestNotFound(domain.DomainError):
    def __init__(self) -> None:
        super().__init__("No such connection request.")


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    items: list[ItemT]
    next_position: Position | None


def _now() -> datetime:
    return datetime.now(UTC)


async def _write(db: asyncpg.Connection, change: Change) -> None:
    """Apply a decided change: the connection first (requests point at it), then decisions, audit and outbox."""
    if change.new_connection is not None:
        await repository.insert_connection(db, change.new_connection)
    decided = [*change.closed_requests]
    if change.request is not None and change.request.status is not Status.PENDING:
        decided.append(change.request)
    for request in decided:
        await repository.record_decision(db, request)
    await repository.append_audit(db, change.audit)
    await add_events(db, repository.SCHEMA, change.events)


async def record_practices(db: asyncpg.Connection, events: list[PracticeRegistered]) -> None:
    """Consumer handler: the platform's practices, which patients may ask to connect to."""
    await repository.upsert_practices(db, domain.registered_practices(events))


async def record_patients(db: asyncpg.Connection, events: list[PatientRegistered]) -> None:
    """Consumer handler: a patient registered (again, after a deletion under the same id) may ask to connect."""
    await repository.unmark_deleted(db, [event.payload.patient_id for event in events])


async def forget_practice(db: asyncpg.Connection, practice_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the practice; patients can no longer ask to connect to it, and its
    pending requests go (approving one announced a connection to a practice no email could name). The audit log says
    they were withdrawn; decided requests and connections stay, the practice's own record."""
    await repository.delete_practice(db, practice_id)  # after any request being made now (its KEY SHARE lock)
    withdrawn = await repository.delete_practice_requests(db, practice_id)
    requests = [(request_id, practice_id, patient_id) for request_id, patient_id in withdrawn]
    await repository.append_audit(db, domain.withdrawn_by_platform(requests, domain.WITHDRAWN_WITH_PRACTICE, _now()))
    if withdrawn:
        log.info("connection.requests_withdrawn", count=len(withdrawn), why="the practice was deleted")


async def forget_patient(db: asyncpg.Connection, patient_id: uuid.UUID) -> None:
    """Tombstone handler: the platform deleted the patient's account. Her pending requests go: nobody is left to
    connect, and staff no longer see her address, name and message. The audit log says they were withdrawn; decided
    requests and connections stay, the practice's own record. Until she registers again she cannot ask anew (a token
    issued before the deletion still works until it expires)."""
    await repository.lock_patient_everywhere(db, patient_id)  # a request being made now commits first, then goes
    await repository.mark_deleted(db, patient_id)
    withdrawn = await repository.delete_pending_requests(db, patient_id)
    requests = [(request_id, practice_id, patient_id) for request_id, practice_id in withdrawn]
    await repository.append_audit(db, domain.withdrawn_by_platform(requests, domain.WITHDRAWN_ON_DELETION, _now()))
    if withdrawn:
        log.info("connection.requests_withdrawn", count=len(withdrawn), why="the patient's account was deleted")


async def request_connection(
    pool: asyncpg.Pool, practice_id: uuid.UUID, patient: PatientRef, message: str | None, cause: Cause
) -> tuple[ConnectionRequest, bool]:
    """The patient's pending request to the practice, and whether this call created it."""
    async with transaction(pool) as db:
        await repository.lock_patient(db, practice_id, patient.patient_id)
        change = domain.request_connection(
            practice_id,
            patient,
            message,
            practice_known=await repository.practice_known(db, practice_id),
            pending=await repository.find_pending_request(db, practice_id, patient.patient_id),
            connected=await repository.find_connection(db, practice_id, patient.patient_id),
            now=_now(),
            cause=cause,
            deleted=await repository.is_deleted(db, patient.patient_id),
        )
        assert change.request is not None
        if not change.changed:
            return change.request, False
        if not await repository.insert_request(db, change.request):
            # The same ask, sent twice at once: the other call committed the request; answer with it.
            existing = await repository.find_pending_request(db, practice_id, patient.patient_id)
            if existing is None:
                raise RuntimeError("a pending request conflicted but cannot be read back")
            return existing, False
        await _write(db, change)
    log.info("connection.requested", practice_id=str(practice_id), request_id=str(change.request.id))
    return change.request, True


async def decide_request(
    pool: asyncpg.Pool,
    practice_id: uuid.UUID,
    request_id: uuid.UUID,
    decision: Decision,
    *,
    actor: str,
    cause: Cause,
    reason: str | None = None,
) -> ConnectionRequest:
    """Approve or reject; the patient's lock makes two simultaneous decisions (or a decision and an accepted invite)
    take turns, so exactly one decides."""
    async with transaction(pool) as db:
        patient_id = await repository.request_patient(db, practice_id, request_id)
        if patient_id is None:
            raise RequestNotFound()
        await repository.lock_patient(db, practice_id, patient_id)
        request = await repository.lock_request(db, practice_id, request_id)
        if request is None:
            raise RequestNotFound()
        connected = None
        if request.status is Status.PENDING and decision == "approve":
            connected = await repository.find_connection(db, practice_id, request.patient_id)
        change = domain.decide(
            request, decision, actor=actor, now=_now(), cause=cause, reason=reason, connected=connected
        )
        if change.changed:
            await _write(db, change)
    assert change.request is not None
    if change.changed:
        log.info(
            "connection.approved" if decision == "approve" else "connection.rejected",
            practice_id=str(practice_id),
            request_id=str(request_id),
            connection_id=str(change.request.connection_id) if change.request.connection_id else None,
            published=len(change.events),
        )
    else:
        log.info("connection.decision_repeated", practice_id=str(practice_id), request_id=str(request_id))
    return change.request


async def approve_request(
    pool: asyncpg.Pool, practice_id: uuid.UUID, request_id: uuid.UUID, *, actor: str, cause: Cause
) -> ConnectionRequest:
    return await decide_request(pool, practice_id, request_id, "approve", actor=actor, cause=cause)


async def reject_request(
    pool: asyncpg.Pool,
    practice_id: uuid.UUID,
    request_id: uuid.UUID,
    *,
    actor: str,
    reason: str | None,
    cause: Cause,
) -> ConnectionRequest:
    return await decide_request(pool, practice_id, request_id, "reject", actor=actor, cause=cause, reason=reason)


async def connect_invited(db: asyncpg.Connection, events: list[InviteAccepted]) -> None:
    """Consumer handler, inside the inbox transaction: each accepted invite connects its patient once."""
    # Every patient's lock first, in one order (the consumer calls this once per run of InviteAccepted in a batch:
    # two batches that interleave other events with them may still meet in opposite order; PostgreSQL then finds
    # the deadlock and the batch is retried).
    pairs = {(e.payload.patient_id, e.practice_id) for e in events if e.practice_id is not None}
    for patient, practice in sorted(pairs):
        await repository.lock_patient(db, practice, patient)
    for accepted in events:
        practice_id, patient_id = accepted.practice_id, accepted.payload.patient_id
        pending = await repository.lock_pending_request(db, practice_id, patient_id) if practice_id else None
        connected = await repository.find_connection(db, practice_id, patient_id) if practice_id else None
        change = domain.connect_by_invite(accepted, connected=connected, pending=pending, now=_now())
        if not change.changed:
            log.info(
                "connection.invite_already_connected", practice_id=str(practice_id), event_id=str(accepted.event_id)
            )
            continue
        await _write(db, change)
        assert change.new_connection is not None
        log.info(
            "connection.connected_by_invite",
            practice_id=str(practice_id),
            connection_id=str(change.new_connection.id),
            event_id=str(accepted.event_id),
        )


async def patients_request(
    pool: asyncpg.Pool, patient_id: uuid.UUID, request_id: uuid.UUID
) -> ConnectionRequest | None:
    return await repository.patients_request(pool, patient_id, request_id)


async def list_requests(
    pool: asyncpg.Pool, practice_id: uuid.UUID, status: Status | None, after: Position | None, limit: int
) -> Page[ConnectionRequest]:
    rows = await repository.list_requests(pool, practice_id, status, after, limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items, Position(items[-1].created_at, items[-1].id) if more else None)


async def list_connections(
    pool: asyncpg.Pool, practice_id: uuid.UUID, after: Position | None, limit: int
) -> Page[Connection]:
    rows = await repository.list_connections(pool, practice_id, after, limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items, Position(items[-1].connected_at, items[-1].id) if more else None)
