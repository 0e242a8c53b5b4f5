"""The connections domain on its own: states, transitions, refusals, and the events each change produces."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas import ConnectionApproved, ConnectionRejected, ConnectionRequested, InviteAccepted
from schemas.events import InviteAcceptedPayload
from services.connections.domain import (
    AlreadyConnected,
    AlreadyDecided,
    DomainError,
    UnknownPractice,
    clean_text,
    connect_by_invite,
    decide,
    request_connection,
)
from services.connections.model import Cause, Connection, ConnectionRequest, Decision, PatientRef, Status

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
CAUSE = Cause("corr-1")
PRACTICE = uuid.uuid4()
PATIENT = PatientRef(uuid.uuid4(), "ann@example.com")


def _pending() -> ConnectionRequest:
    change = request_connection(
        PRACTICE, PATIENT, "hello", practice_known=True, pending=None, connected=None, now=NOW, cause=CAUSE
    )
    assert change.request is not None
    return change.request


def _connection(via: str = "request") -> Connection:
    return Connection(
        id=uuid.uuid4(),
        practice_id=PRACTICE,
        patient_id=PATIENT.patient_id,
        patient_email=PATIENT.email,
        connected_at=NOW,
        via="invite" if via == "invite" else "request",
        approved_by="someone",
        request_id=None if via == "invite" else uuid.uuid4(),
        invite_id=uuid.uuid4() if via == "invite" else None,
    )


def _accepted(practice_id: uuid.UUID | None = PRACTICE, invited_by: str | None = "staff-9") -> InviteAccepted:
    return InviteAccepted(
        producer="invitations",
        practice_id=practice_id,
        correlation_id="accept-1",
        payload=InviteAcceptedPayload(
            invite_id=uuid.uuid4(),
            patient_id=PATIENT.patient_id,
            patient_email=PATIENT.email,
            accepted_at=NOW,
            invited_by=invited_by,
        ),
    )


@pytest.mark.parametrize(("given", "kept"), [(None, None), ("", None), ("   ", None), ("  hi there ", "hi there")])
def test_clean_text_trims_and_treats_blank_as_absent(given: str | None, kept: str | None) -> None:
    assert clean_text(given) == kept


def test_a_new_request_is_pending_and_announced() -> None:
    change = request_connection(
        PRACTICE, PATIENT, "  hello  ", practice_known=True, pending=None, connected=None, now=NOW, cause=CAUSE
    )
    assert change.changed and change.request is not None
    assert change.request.status is Status.PENDING and change.request.message == "hello"
    (event,) = change.events
    assert isinstance(event, ConnectionRequested)
    assert event.practice_id == PRACTICE and event.correlation_id == "corr-1" and event.producer == "connections"
    assert event.payload.request_id == change.request.id and event.payload.message == "hello"
    assert event.aggregate_key() == str(PATIENT.patient_id)
    assert [(a.action, a.actor) for a in change.audit] == [("requested", str(PATIENT.patient_id))]


def test_asking_again_returns_the_pending_request_and_changes_nothing() -> None:
    pending = _pending()
    change = request_connection(
        PRACTICE, PATIENT, "again", practice_known=True, pending=pending, connected=None, now=LATER, cause=CAUSE
    )
    assert not change.changed and change.request == pending and change.events == () and change.audit == ()


def test_asking_a_practice_the_platform_never_registered_is_refused() -> None:
    with pytest.raises(UnknownPractice):
        request_connection(
            PRACTICE, PATIENT, "hi", practice_known=False, pending=None, connected=None, now=NOW, cause=CAUSE
        )


def test_asking_while_connected_is_refused() -> None:
    connection = _connection()
    with pytest.raises(AlreadyConnected) as refused:
        request_connection(
            PRACTICE, PATIENT, None, practice_known=True, pending=None, connected=connection, now=NOW, cause=CAUSE
        )
    assert refused.value.connection == connection


def test_approving_connects_and_announces_what_the_notifier_needs() -> None:
    pending = _pending()
    change = decide(pending, "approve", actor="manager-1", now=LATER, cause=CAUSE)
    assert change.request is not None and change.new_connection is not None
    assert change.request.status is Status.APPROVED and change.request.decided_by == "manager-1"
    assert change.request.decided_at == LATER and change.request.connection_id == change.new_connection.id
    assert change.new_connection.via == "request" and change.new_connection.request_id == pending.id
    (event,) = change.events
    assert isinstance(event, ConnectionApproved)
    payload = event.payload
    assert (payload.patient_id, payload.patient_email) == (PATIENT.patient_id, PATIENT.email)
    assert (payload.approved_by, payload.approved_at, payload.via) == ("manager-1", LATER, "request")
    assert payload.request_id == pending.id and payload.invite_id is None
    assert [(a.action, a.actor) for a in change.audit] == [("approved", "manager-1")]


def test_rejecting_keeps_a_trimmed_reason_and_announces_it() -> None:
    change = decide(_pending(), "reject", actor="desk-1", now=LATER, cause=CAUSE, reason="  not ours ")
    assert change.request is not None and change.new_connection is None
    assert change.request.status is Status.REJECTED and change.request.reason == "not ours"
    (event,) = change.events
    assert isinstance(event, ConnectionRejected)
    assert event.payload.reason == "not ours" and event.payload.rejected_by == "desk-1"
    assert [(a.action, a.reason) for a in change.audit] == [("rejected", "not ours")]


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_repeating_a_decision_changes_nothing(decision: Decision) -> None:
    first = decide(_pending(), decision, actor="a", now=NOW, cause=CAUSE, reason="x")
    assert first.request is not None
    again = decide(first.request, decision, actor="b", now=LATER, cause=CAUSE, reason="y")
    assert not again.changed and again.request == first.request and again.events == () and again.audit == ()


@pytest.mark.parametrize(("first", "then"), [("approve", "reject"), ("reject", "approve")])
def test_reversing_a_decision_is_refused_with_the_current_state(first: Decision, then: Decision) -> None:
    decided = decide(_pending(), first, actor="a", now=NOW, cause=CAUSE).request
    assert decided is not None
    with pytest.raises(AlreadyDecided) as refused:
        decide(decided, then, actor="b", now=LATER, cause=CAUSE)
    assert refused.value.request == decided
    assert decided.status.value in str(refused.value)


def test_approving_a_patient_connected_meanwhile_records_the_decision_without_a_second_connection() -> None:
    existing = _connection(via="invite")
    change = decide(_pending(), "approve", actor="m", now=LATER, cause=CAUSE, connected=existing)
    assert change.changed and change.request is not None
    assert change.request.status is Status.APPROVED and change.request.connection_id == existing.id
    assert change.new_connection is None and change.events == ()
    assert [a.action for a in change.audit] == ["approved"]


def test_an_accepted_invite_connects_the_patient_and_carries_its_cause() -> None:
    accepted = _accepted()
    change = connect_by_invite(accepted, connected=None, pending=None, now=LATER)
    connection = change.new_connection
    assert connection is not None and connection.via == "invite" and connection.invite_id == accepted.payload.invite_id
    # Dated when it was made (an integrator's probe: an acceptance applied after a rejection was announced as
    # approved before it, and a consumer comparing occurred_at dropped the approval).
    assert connection.connected_at == LATER
    (event,) = change.events
    assert isinstance(event, ConnectionApproved)
    assert event.occurred_at == event.payload.approved_at == LATER
    assert event.correlation_id == "accept-1" and event.causation_id == str(accepted.event_id)
    assert event.payload.via == "invite" and event.payload.request_id is None
    assert change.closed_requests == ()


def test_an_accepted_invite_replayed_makes_the_same_connection_and_event() -> None:
    """A review of the restore runbook: a replayed InviteAccepted (a restored database, offsets reset) made a second
    connection id and a ConnectionApproved no consumer could skip, so the patient got a second "connected" email."""
    accepted = _accepted()
    first = connect_by_invite(accepted, connected=None, pending=None, now=LATER)
    again = connect_by_invite(accepted, connected=None, pending=None, now=LATER + timedelta(days=1))
    assert first.new_connection is not None and again.new_connection is not None
    assert first.new_connection.id == again.new_connection.id
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    other = connect_by_invite(_accepted(), connected=None, pending=None, now=LATER)
    assert other.new_connection is not None and other.new_connection.id != first.new_connection.id
    assert other.events[0].event_id != first.events[0].event_id


def test_an_invited_connection_is_approved_by_the_staff_member_who_sent_the_invite() -> None:
    """It named the patient who accepted; staff expect the colleague who invited. The acceptance stays the
    patient's, in the audit."""
    change = connect_by_invite(_accepted(invited_by="staff-9"), connected=None, pending=None, now=LATER)
    assert change.new_connection is not None and change.new_connection.approved_by == "staff-9"
    (event,) = change.events
    assert isinstance(event, ConnectionApproved) and event.payload.approved_by == "staff-9"
    (accepted,) = change.audit
    assert (accepted.action, accepted.actor) == ("invite_accepted", str(PATIENT.patient_id))


def test_an_invite_accepted_before_events_named_its_sender_is_approved_by_the_patient() -> None:
    change = connect_by_invite(_accepted(invited_by=None), connected=None, pending=None, now=LATER)
    assert change.new_connection is not None and change.new_connection.approved_by == str(PATIENT.patient_id)
    (event,) = change.events
    assert isinstance(event, ConnectionApproved) and event.payload.approved_by == str(PATIENT.patient_id)


def test_an_accepted_invite_answers_a_pending_request() -> None:
    pending = _pending()
    change = connect_by_invite(_accepted(), connected=None, pending=pending, now=LATER)
    assert change.new_connection is not None
    (closed,) = change.closed_requests
    assert closed.id == pending.id and closed.status is Status.APPROVED
    assert closed.connection_id == change.new_connection.id
    # The patient accepted; the request is approved by the same staff consent as the connection: the invite.
    assert closed.decided_by == "staff-9" == change.new_connection.approved_by
    assert [(a.action, a.actor) for a in change.audit] == [
        ("invite_accepted", str(PATIENT.patient_id)),
        ("approved", "staff-9"),
    ]
    (event,) = change.events
    # The request's end is announced too: it names the request a consumer saw in ConnectionRequested.
    assert isinstance(event, ConnectionApproved) and event.payload.request_id == pending.id
    assert event.payload.via == "invite" and event.payload.invite_id == change.new_connection.invite_id


def test_an_accepted_invite_for_a_connected_patient_is_a_no_op() -> None:
    change = connect_by_invite(_accepted(), connected=_connection(), pending=None, now=LATER)
    assert not change.changed and change.new_connection is None and change.events == () and change.audit == ()


def test_an_accepted_invite_without_a_practice_is_refused() -> None:
    with pytest.raises(DomainError, match="practice_id"):
        connect_by_invite(_accepted(practice_id=None), connected=None, pending=None, now=LATER)


def test_decided_requests_keep_their_identity() -> None:
    pending = _pending()
    decided = decide(pending, "reject", actor="a", now=LATER, cause=CAUSE).request
    assert decided is not None
    assert replace(decided, status=Status.PENDING, decided_by=None, decided_at=None) == pending
