"""Connection requests and connections: the rules for changing them, and the events each change produces."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from schemas import (
    ConnectionApproved,
    ConnectionRejected,
    ConnectionRequested,
    InviteAccepted,
    PracticeRegistered,
    new_event_id,
)
from schemas.events import ConnectionApprovedPayload, ConnectionRejectedPayload, ConnectionRequestedPayload
from services.connections.model import (
    AuditEntry,
    Cause,
    Change,
    Connection,
    ConnectionRequest,
    Decision,
    PatientRef,
    Status,
)
from services.runtime.text import unsendable_character

PRODUCER = "connections"
MAX_TEXT = 500  # longest message or reason, in characters (the events' Note type)
_RESULT: dict[Decision, Status] = {"approve": Status.APPROVED, "reject": Status.REJECTED}


class DomainError(Exception):
    """A rule refused the change; the message is safe to show to the caller."""


class AlreadyConnected(DomainError):
    def __init__(self, connection: Connection) -> None:
        super().__init__("The patient is already connected to this practice.")
        self.connection = connection


class UnknownPractice(DomainError):
    def __init__(self) -> None:
        super().__init__("No practice with this id is registered on CollabKare.")


class AccountDeleted(DomainError):
    def __init__(self) -> None:
        super().__init__("This CollabKare account was deleted; it cannot ask to connect.")


class AlreadyDecided(DomainError):
    def __init__(self, request: ConnectionRequest) -> None:
        super().__init__(f"The connection request was already {request.status.value}.")
        self.request = request


def clean_text(text: str | None) -> str | None:
    """Trim a free-text field; nothing left means no text at all. Control characters (other than tab and
    line breaks) are refused: PostgreSQL cannot store U+0000, and none belongs in an email to a patient."""
    if text is None:
        return None
    unsendable = unsendable_character(text)
    if unsendable is not None:
        raise ValueError(f"the text contains a control character ({unsendable})")
    return text.strip() or None


def registered_practices(events: Iterable[PracticeRegistered]) -> list[tuple[uuid.UUID, datetime]]:
    """(practice id, registered at) once per practice, the latest registration of the batch: one statement
    cannot upsert the same row twice."""
    latest: dict[uuid.UUID, datetime] = {}
    for event in events:
        at = event.payload.registered_at
        if event.practice_id not in latest or latest[event.practice_id] < at:
            latest[event.practice_id] = at
    return list(latest.items())


def request_connection(
    practice_id: uuid.UUID,
    patient: PatientRef,
    message: str | None,
    *,
    practice_known: bool,
    pending: ConnectionRequest | None,
    connected: Connection | None,
    now: datetime,
    cause: Cause,
    deleted: bool = False,
) -> Change:
    """A patient asks to connect to a practice of the platform's directory; asking again returns the pending
    request unchanged. A patient the platform deleted cannot (her token may outlive her account)."""
    if deleted:
        raise AccountDeleted()
    if not practice_known:
        raise UnknownPractice()
    if connected is not None:
        raise AlreadyConnected(connected)
    if pending is not None:
        return Change(changed=False, request=pending)
    request = ConnectionRequest(
        id=uuid.uuid4(),
        practice_id=practice_id,
        patient_id=patient.patient_id,
        patient_email=patient.email,
        display_name=patient.display_name,
        message=clean_text(message),
        status=Status.PENDING,
        created_at=now,
    )
    event = ConnectionRequested(
        producer=PRODUCER,
        practice_id=practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=now,
        payload=ConnectionRequestedPayload(
            request_id=request.id,
            patient_id=request.patient_id,
            patient_email=request.patient_email,
            display_name=request.display_name,
            message=request.message,
            requested_at=now,
        ),
    )
    audit = AuditEntry(
        practice_id, patient.patient_id, "requested", str(patient.patient_id), now, request_id=request.id
    )
    return Change(changed=True, request=request, audit=(audit,), events=(event,))


def decide(
    request: ConnectionRequest,
    decision: Decision,
    *,
    actor: str,
    now: datetime,
    cause: Cause,
    reason: str | None = None,
    connected: Connection | None = None,
) -> Change:
    """Approve or reject a request. Repeating the decision changes nothing; reversing it is refused.

    `connected` is the patient's existing connection, if any (say, from an invite accepted after the
    request was made): approving then records the decision but creates and announces nothing new.
    """
    wanted = _RESULT[decision]
    if request.status is not Status.PENDING:
        if request.status is wanted:
            return Change(changed=False, request=request)
        raise AlreadyDecided(request)
    if decision == "reject":
        return _reject(request, actor=actor, now=now, cause=cause, reason=clean_text(reason))
    return _approve(request, actor=actor, now=now, cause=cause, connected=connected)


def _reject(request: ConnectionRequest, *, actor: str, now: datetime, cause: Cause, reason: str | None) -> Change:
    decided = replace(request, status=Status.REJECTED, decided_by=actor, decided_at=now, reason=reason)
    event = ConnectionRejected(
        producer=PRODUCER,
        practice_id=request.practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=now,
        payload=ConnectionRejectedPayload(
            request_id=request.id,
            patient_id=request.patient_id,
            patient_email=request.patient_email,
            rejected_by=actor,
            rejected_at=now,
            reason=reason,
        ),
    )
    audit = AuditEntry(
        request.practice_id, request.patient_id, "rejected", actor, now, reason=reason, request_id=request.id
    )
    return Change(changed=True, request=decided, audit=(audit,), events=(event,))


def _approve(
    request: ConnectionRequest, *, actor: str, now: datetime, cause: Cause, connected: Connection | None
) -> Change:
    connection = connected or Connection(
        id=uuid.uuid4(),
        practice_id=request.practice_id,
        patient_id=request.patient_id,
        patient_email=request.patient_email,
        connected_at=now,
        via="request",
        approved_by=actor,
        request_id=request.id,
    )
    decided = replace(request, status=Status.APPROVED, decided_by=actor, decided_at=now, connection_id=connection.id)
    audit = AuditEntry(
        request.practice_id,
        request.patient_id,
        "approved",
        actor,
        now,
        request_id=request.id,
        connection_id=connection.id,
    )
    if connected is not None:
        return Change(changed=True, request=decided, audit=(audit,))
    event = _approved_event(connection, cause)
    return Change(changed=True, request=decided, new_connection=connection, audit=(audit,), events=(event,))


# A connection made by an accepted invite, and its ConnectionApproved, are named after the InviteAccepted that made
# them: replayed (a restored database, a consumer group's offsets reset), it makes the same connection and the same
# event, which every consumer skips by its event_id, instead of a second connection and a second email.
_BY_INVITE = uuid.UUID("cb49c31b-51ce-4c64-b227-417a0a4d2e9b")


def connect_by_invite(
    accepted: InviteAccepted,
    *,
    connected: Connection | None,
    pending: ConnectionRequest | None,
    now: datetime,
) -> Change:
    """An accepted invite connects the patient, and answers any request of theirs still pending.

    A patient already connected (a redelivery that escaped the inbox, or an earlier approval) is a no-op.
    """
    if accepted.practice_id is None:
        # A contract breach, not a no-op: raising sends the event to the dead-letter topic with this reason.
        raise DomainError("InviteAccepted carries no practice_id.")
    if connected is not None:
        return Change(changed=False)
    payload = accepted.payload
    actor = str(payload.patient_id)
    connection = Connection(
        id=uuid.uuid5(_BY_INVITE, f"connection:{accepted.event_id}"),
        practice_id=accepted.practice_id,
        patient_id=payload.patient_id,
        patient_email=str(payload.patient_email),
        # When this service made it, not when the patient accepted: its ConnectionApproved follows on the patient's
        # key whatever this service did meanwhile (a rejection decided while the acceptance waited its turn), and a
        # consumer comparing occurred_at must not find it older than that rejection and drop it.
        connected_at=now,
        via="invite",
        # The practice's consent is the invite its staff member sent; the patient's is the acceptance (the audit
        # entry below). An InviteAccepted from before it carried invited_by names no one: the patient stands in.
        approved_by=payload.invited_by or actor,
        invite_id=payload.invite_id,
    )
    audit = [
        AuditEntry(
            connection.practice_id,
            connection.patient_id,
            "invite_accepted",
            actor,
            now,
            connection_id=connection.id,
            invite_id=payload.invite_id,
        )
    ]
    closed: tuple[ConnectionRequest, ...] = ()
    if pending is not None:
        closed = (
            replace(
                pending,
                status=Status.APPROVED,
                decided_by=connection.approved_by,  # the request is answered by the same consent as the connection
                decided_at=now,
                connection_id=connection.id,
            ),
        )
        audit.append(
            AuditEntry(
                connection.practice_id,
                connection.patient_id,
                "approved",
                connection.approved_by,
                now,
                request_id=pending.id,
                connection_id=connection.id,
                invite_id=payload.invite_id,
            )
        )
    cause = Cause(accepted.correlation_id, str(accepted.event_id))
    # The event names the request it approved too: whoever follows requests by their events sees this one end.
    answered = pending.id if pending is not None else None
    return Change(
        changed=True,
        new_connection=connection,
        closed_requests=closed,
        audit=tuple(audit),
        events=(
            _approved_event(
                connection, cause, answered, event_id=uuid.uuid5(_BY_INVITE, f"ConnectionApproved:{accepted.event_id}")
            ),
        ),
    )


WITHDRAWN_ON_DELETION = "the patient's CollabKare account was deleted"
WITHDRAWN_WITH_PRACTICE = "the practice was deleted from CollabKare"


def withdrawn_by_platform(
    requests: Iterable[tuple[uuid.UUID, uuid.UUID, uuid.UUID]], why: str, now: datetime
) -> tuple[AuditEntry, ...]:
    """The audit of pending requests (request id, practice id, patient id) gone with a deletion on the platform."""
    return tuple(
        AuditEntry(practice_id, patient_id, "withdrawn", "platform", now, why, request_id)
        for request_id, practice_id, patient_id in requests
    )


def _approved_event(
    connection: Connection, cause: Cause, answered: uuid.UUID | None = None, *, event_id: uuid.UUID | None = None
) -> ConnectionApproved:
    return ConnectionApproved(
        event_id=event_id or new_event_id(),
        producer=PRODUCER,
        practice_id=connection.practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=connection.connected_at,
        payload=ConnectionApprovedPayload(
            connection_id=connection.id,
            patient_id=connection.patient_id,
            patient_email=connection.patient_email,
            via=connection.via,
            request_id=connection.request_id or answered,
            invite_id=connection.invite_id,
            approved_by=connection.approved_by,
            approved_at=connection.connected_at,
        ),
    )
