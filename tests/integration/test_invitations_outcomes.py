"""Events in from the real broker: delivery outcomes written back (with precedence), the connected projection,
the patients the platform deleted, and resending the not-on-platform rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from collabkare.seeding import practice_registered
from collabkare.stack.infra import Infrastructure
from schemas import ConnectionApproved, DeliveryOutcome, Envelope, PatientRegistered
from schemas.events import ConnectionApprovedPayload, DeliveryOutcomePayload
from services.invitations import batch_handlers
from services.invitations.domain import CONNECTED_NOT_DELIVERED
from tests.integration.invitations_harness import Service, patient, running_service, staff
from tests.support import produce

OUTCOMES = "notifier.outcomes.v1"
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=True) as running:
        yield running


def _outcome(requested: dict[str, Any], outcome: str, reason: str | None = None, minutes: int = 0) -> DeliveryOutcome:
    payload = requested["payload"]
    return DeliveryOutcome(
        producer="notifier",
        practice_id=requested["practice_id"],
        correlation_id=requested["correlation_id"],
        causation_id=requested["event_id"],
        payload=DeliveryOutcomePayload(
            delivery_id=uuid.uuid4(),
            source_event_id=requested["event_id"],
            source_event_type="InviteRequested",
            kind="invite",
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            invite_id=payload["invite_id"],
            batch_id=payload["batch_id"],
            line_number=payload["line_number"],
            message_id=f"<{requested['event_id']}@collabkare>" if outcome == "sent" else None,
            attempts=1,
            decided_at=T0 + timedelta(minutes=minutes),
        ),
    )


def _approved(practice: uuid.UUID | None, email: str, patient_id: uuid.UUID | None = None) -> ConnectionApproved:
    return ConnectionApproved(
        producer="connections",
        practice_id=practice,
        correlation_id="approve-1",
        payload=ConnectionApprovedPayload(
            connection_id=uuid.uuid4(),
            patient_id=patient_id or uuid.uuid4(),
            patient_email=email,
            via="request",
            request_id=uuid.uuid4(),
            approved_by="staff-1",
            approved_at=T0,
        ),
    )


async def _deliver(service: Service, topic: str, *events: Envelope, timeout: float = 30.0) -> None:
    """Publish and wait until the consumer has applied every one (its id is in the inbox)."""
    await service.publish(topic, list(events))
    ids = list({event.event_id for event in events})
    applied = await service.wait_for(
        "SELECT count(*) FROM invitations.inbox WHERE event_id = ANY($1::uuid[])", ids, expect=len(ids), timeout=timeout
    )
    assert applied == len(ids), f"{applied} of {len(ids)} events applied"


async def _redeliver(service: Service, event: ConnectionApproved) -> None:
    """The same event again, then wait until the consumer is past it: `_deliver` would return at once, its id being
    in the inbox already. The marker behind it has the same key (one partition, so read after it) and no practice,
    so it changes nothing."""
    marker = event.model_copy(update={"event_id": uuid.uuid4(), "practice_id": None})
    await service.publish("connections.v1", [event])
    await _deliver(service, "connections.v1", marker)


async def _rows(service: Service, batch_id: str) -> dict[str, tuple[str, str | None]]:
    rows = await service.fetch(
        "SELECT email, outcome, reason FROM invitations.batch_rows WHERE batch_id = $1", uuid.UUID(batch_id)
    )
    return {r["email"]: (r["outcome"], r["reason"]) for r in rows}


async def _statuses(service: Service, practice: uuid.UUID) -> list[tuple[str, str, str | None]]:
    """(email key, status, revoked_by) of the practice's invites."""
    rows = await service.fetch(
        "SELECT email_key, status, revoked_by FROM invitations.invites WHERE practice_id = $1 ORDER BY email_key",
        practice,
    )
    return [(r["email_key"], r["status"], r["revoked_by"]) for r in rows]


async def _by_email(service: Service, practice: uuid.UUID) -> dict[str, dict[str, Any]]:
    return {e["payload"]["email"]: e for e in (await service.requested(practice)).values()}


async def _sent_batch(
    service: Service, practice: uuid.UUID, roster: str, outcomes: dict[str, str]
) -> tuple[dict[str, Any], str, dict[str, dict[str, Any]]]:
    """A roster sent, and an outcome delivered for each email named: (the 202's JSON, the batch's path, the
    InviteRequested events by email)."""
    batch = await service.submit(practice, roster)
    requested = await _by_email(service, practice)
    await _deliver(service, OUTCOMES, *(_outcome(requested[email], outcome) for email, outcome in outcomes.items()))
    return batch, f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}", requested


async def test_outcomes_are_written_back_to_rows_and_invites(service: Service) -> None:
    practice = uuid.uuid4()
    batch = await service.submit(practice, "ann@example.com\nbob@example.com\ncat@example.com\ndan@example.com")
    sent = await _by_email(service, practice)
    await _deliver(
        service,
        OUTCOMES,
        _outcome(sent["ann@example.com"], "sent"),
        _outcome(sent["bob@example.com"], "not_on_platform"),
        _outcome(sent["cat@example.com"], "error", "550 5.1.1 mailbox unavailable"),
    )
    assert await _rows(service, batch["batch_id"]) == {
        "ann@example.com": ("sent", None),
        "bob@example.com": ("not_on_platform", "no CollabKare account uses this email address yet"),
        "cat@example.com": ("error", "550 5.1.1 mailbox unavailable"),
        "dan@example.com": ("queued", None),
    }
    invites = await service.fetch(
        "SELECT email, status, delivery, delivered_at FROM invitations.invites WHERE practice_id = $1", practice
    )
    by_email = {r["email"]: (r["status"], r["delivery"], r["delivered_at"]) for r in invites}
    assert by_email["cat@example.com"] == ("pending", "error", None), "an error is not a delivery"
    assert by_email["bob@example.com"] == ("pending", "not_on_platform", None)
    assert by_email["ann@example.com"] == ("pending", "sent", T0)
    base = f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}"
    summary = (await service.http.get(base, headers=staff(practice))).json()
    assert (summary["queued"], summary["done"]) == (1, False)
    assert {k: v for k, v in summary["counts"].items() if v} == {
        "sent": 1,
        "not_on_platform": 1,
        "error": 1,
        "queued": 1,
    }
    listing = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert listing.text == "bob@example.com\n"
    await _deliver(service, OUTCOMES, _outcome(sent["dan@example.com"], "sent"))
    assert (await service.http.get(base, headers=staff(practice))).json()["done"] is True


async def test_repeated_and_late_outcomes_never_move_a_row_backwards(service: Service) -> None:
    practice = uuid.uuid4()
    batch = await service.submit(practice, "\n".join(f"{n}@example.com" for n in ("ann", "bob", "cat", "dan", "eve")))
    sent = await _by_email(service, practice)
    ann, bob, cat, dan, eve = (sent[f"{n}@example.com"] for n in ("ann", "bob", "cat", "dan", "eve"))
    first = [
        _outcome(ann, "sent"),
        _outcome(bob, "error", "timeout"),
        _outcome(cat, "not_on_platform", "not registered"),
        _outcome(eve, "error", "first reason"),
    ]
    await _deliver(service, OUTCOMES, *first)
    await _deliver(service, OUTCOMES, *first)  # a redelivery of the very same events changes nothing
    late = [
        _outcome(ann, "error", "late bounce", minutes=5),  # sent is final
        _outcome(bob, "not_on_platform", minutes=5),  # better than error
        _outcome(cat, "error", "late error", minutes=5),  # worse than not_on_platform
        _outcome(eve, "error", "second reason", minutes=5),  # same rank: the first stands
    ]
    await _deliver(service, OUTCOMES, *late)
    # Several outcomes for one invite in one delivery: the strongest wins, whatever the order.
    await _deliver(
        service,
        OUTCOMES,
        _outcome(dan, "error", "x", minutes=1),
        _outcome(dan, "sent", minutes=2),
        _outcome(dan, "not_on_platform", minutes=3),
    )
    assert await _rows(service, batch["batch_id"]) == {
        "ann@example.com": ("sent", None),
        "bob@example.com": ("not_on_platform", "no CollabKare account uses this email address yet"),
        "cat@example.com": ("not_on_platform", "not registered"),
        "dan@example.com": ("sent", None),
        "eve@example.com": ("error", "first reason"),
    }
    consistent = await service.fetchval(
        "SELECT count(*) FROM invitations.batch_rows r JOIN invitations.invites i ON i.id = r.invite_id"
        " WHERE r.batch_id = $1 AND r.outcome = i.delivery AND r.reason IS NOT DISTINCT FROM i.delivery_reason",
        uuid.UUID(batch["batch_id"]),
    )
    assert consistent == 5, "every row agrees with its invite"


async def test_connection_approved_feeds_already_connected(service: Service) -> None:
    practice = uuid.uuid4()
    approved = _approved(practice, "Dana.Lée@Example.com")  # é: keyed by Python, not PostgreSQL's C-locale lower()
    await _deliver(service, "connections.v1", approved, _approved(None, "nobody@example.com"))
    await _redeliver(service, approved)  # still one patient
    rows = await service.fetch("SELECT * FROM invitations.connected_patients WHERE practice_id = $1", practice)
    assert [(r["email_key"], r["patient_id"]) for r in rows] == [("dana.lée@example.com", approved.payload.patient_id)]
    batch = await service.submit(practice, "DANA.LÉE@example.COM\neve@example.com")
    assert batch["patients_ready"] == 1 and batch["counts"]["already_connected"] == 1
    assert [e["payload"]["email"] for e in (await service.requested(practice)).values()] == ["eve@example.com"]


async def test_a_patient_the_platform_deleted_accepts_no_invite_until_she_registers_again(service: Service) -> None:
    """Found by a review: invitations did not read platform.patients.v1, so a token issued before the deletion
    (valid until it expires) accepted an invite and connected an account that no longer exists. Refused with the
    problem type connections uses, the invite left as it was; her registrations are applied, not dead-lettered."""
    practice, patient_id, email = uuid.uuid4(), uuid.uuid4(), "gone@example.com"
    await service.submit(practice, email)
    ((invite_id, requested),) = (await service.requested(practice)).items()
    token = str(requested["payload"]["accept_url"]).split("?token=", 1)[1]
    registered = PatientRegistered(
        producer="platform",
        correlation_id="t",
        payload={"patient_id": patient_id, "email": email, "registered_at": datetime.now(UTC)},
    )
    key = str(patient_id).encode()
    topic = service.topic_prefix + "platform.patients.v1"
    await produce(service.bootstrap, topic, [(key, registered.model_dump_json().encode()), (key, None)])
    marked = "SELECT count(*) FROM invitations.deleted_patients WHERE patient_id = $1"
    assert await service.wait_for(marked, patient_id, expect=1) == 1

    accept = {"token": token}
    refused = await service.http.post("/v1/invites/accept", json=accept, headers=patient(patient_id, email))
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"] == "urn:collabkare:problem:account-deleted"
    status = "SELECT status FROM invitations.invites WHERE id = $1"
    assert await service.fetchval(status, uuid.UUID(invite_id)) == "pending"
    assert await service.events(practice, "InviteAccepted") == []

    back = registered.model_copy(update={"event_id": uuid.uuid4()})
    await produce(service.bootstrap, topic, [(key, back.model_dump_json().encode())])
    assert await service.wait_for(marked, patient_id, expect=0) == 0
    welcome = await service.http.post("/v1/invites/accept", json=accept, headers=patient(patient_id, email))
    assert welcome.status_code == 200, welcome.text
    assert len(await service.events(practice, "InviteAccepted")) == 1
    dead = await service.fetchval("SELECT count(*) FROM invitations.inbox WHERE event_id = $1", registered.event_id)
    assert dead == 1, "her registration was applied (recorded in the inbox), not dead-lettered"


async def test_a_deleted_patients_address_can_be_invited_again(service: Service) -> None:
    """A black-box probe: once the platform deleted a patient, her address stayed "already connected" (by her
    approval and by the invite she had accepted), so the next account to register it could never be invited.
    Registered again under her id, she counts as connected again."""
    practice, by_invite, by_request = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await service.submit(practice, "xena@example.com")
    ((_, requested),) = (await service.requested(practice)).items()
    token = str(requested["payload"]["accept_url"]).split("?token=", 1)[1]
    accepted = await service.http.post(
        "/v1/invites/accept", json={"token": token}, headers=patient(by_invite, "xena@example.com")
    )
    assert accepted.status_code == 200, accepted.text
    await _deliver(service, "connections.v1", _approved(practice, "yuri@example.com", by_request))
    connected = await service.submit(practice, "xena@example.com\nyuri@example.com")
    assert connected["counts"]["already_connected"] == 2

    topic = service.topic_prefix + "platform.patients.v1"
    await produce(service.bootstrap, topic, [(str(p).encode(), None) for p in (by_invite, by_request)])
    gone = "SELECT count(*) FROM invitations.deleted_patients WHERE patient_id = ANY($1::uuid[])"
    assert await service.wait_for(gone, [by_invite, by_request], expect=2) == 2
    preview = await service.http.post(
        f"/v1/practices/{practice}/roster/preview",
        json={"roster": "xena@example.com\nyuri@example.com"},
        headers=staff(practice),
    )
    assert preview.status_code == 200 and preview.json()["patients_ready"] == 2, preview.text

    back = PatientRegistered(
        producer="platform",
        correlation_id="t",
        payload={"patient_id": by_invite, "email": "xena@example.com", "registered_at": datetime.now(UTC)},
    )
    await produce(service.bootstrap, topic, [(str(by_invite).encode(), back.model_dump_json().encode())])
    assert await service.wait_for(gone, [by_invite], expect=0) == 0
    again = await service.http.post(
        f"/v1/practices/{practice}/roster/preview",
        json={"roster": "xena@example.com\nyuri@example.com"},
        headers=staff(practice),
    )
    assert again.json()["patients_ready"] == 1 and again.json()["counts"]["already_connected"] == 1, again.text


async def test_a_practice_the_platform_deleted_has_its_invites_accept_nothing_until_it_registers_again(
    service: Service,
) -> None:
    """A review: a deleted practice's invites still connected their patients for the rest of their week."""
    practice, patient_id, email = uuid.uuid4(), uuid.uuid4(), "dora@example.com"
    await service.submit(practice, email)
    ((invite_id, requested),) = (await service.requested(practice)).items()
    accept = {"token": str(requested["payload"]["accept_url"]).split("?token=", 1)[1]}
    topic, key = service.topic_prefix + "platform.practices.v1", str(practice).encode()
    await produce(service.bootstrap, topic, [(key, None)])
    marked = "SELECT count(*) FROM invitations.deleted_practices WHERE practice_id = $1"
    assert await service.wait_for(marked, practice, expect=1) == 1

    refused = await service.http.post("/v1/invites/accept", json=accept, headers=patient(patient_id, email))
    assert refused.status_code == 410, refused.text
    assert refused.json()["type"] == "urn:collabkare:problem:invite-practice-deleted"
    assert await service.fetchval("SELECT status FROM invitations.invites WHERE id = $1", uuid.UUID(invite_id)) == (
        "pending"
    )
    again = practice_registered(practice, "Riverside Family Practice")
    await produce(service.bootstrap, topic, [(key, again.model_dump_json().encode())])
    assert await service.wait_for(marked, practice, expect=0) == 0
    welcome = await service.http.post("/v1/invites/accept", json=accept, headers=patient(patient_id, email))
    assert welcome.status_code == 200, welcome.text


async def test_an_invite_stored_while_its_patients_approval_was_projected_is_revoked_by_its_outcome(
    service: Service,
) -> None:
    """Found by a review: an invite whose transaction was still open when the approval of its patient was projected
    was not revoked then. The notifier (which reads the approval itself) ends its email unsent; that outcome now
    revokes it, and its row says already_connected, as for an invite the projection saw."""
    practice = uuid.uuid4()
    batch = await service.submit(practice, "hal@example.com\nivo@example.com")
    requested = await _by_email(service, practice)
    # The projection as it was after the race: Hal connected, his invite (committed after) still pending.
    await service.admin.execute(
        "INSERT INTO invitations.connected_patients (practice_id, patient_id, email, email_key, connection_id,"
        " connected_at) VALUES ($1, $2, 'Hal@example.com', 'hal@example.com', $3, now())",
        practice,
        uuid.uuid4(),
        uuid.uuid4(),
    )
    unsent = _outcome(requested["hal@example.com"], "error", "the patient connected to the practice before ...")
    await _deliver(service, OUTCOMES, unsent, _outcome(requested["ivo@example.com"], "sent"))

    assert await _statuses(service, practice) == [
        ("hal@example.com", "revoked", "system:patient-connected"),
        ("ivo@example.com", "pending", None),
    ]
    assert (await _rows(service, batch["batch_id"]))["hal@example.com"][0] == "already_connected"
    [revoked] = await service.events(practice, "InviteRevoked")
    assert revoked["payload"]["invite_id"] == requested["hal@example.com"]["payload"]["invite_id"]
    assert revoked["causation_id"] == str(unsent.event_id)


async def test_a_patient_approved_by_request_has_the_practices_pending_invite_revoked(service: Service) -> None:
    """Found by an integrating team's review: a patient connected through an approved request could still accept
    the practice's older invite; InviteAccepted went out, no connection followed it, and the access history kept
    showing the invite pending. The invite is now revoked when the connection is projected."""
    practice = uuid.uuid4()
    await service.submit(practice, "fay@example.com\ngus@example.com")
    requested = await _by_email(service, practice)
    approved = _approved(practice, "Fay@Example.com")
    await _deliver(service, "connections.v1", approved)
    assert await _statuses(service, practice) == [
        ("fay@example.com", "revoked", "system:patient-connected"),
        ("gus@example.com", "pending", None),
    ]
    [revoked] = await service.events(practice, "InviteRevoked")
    assert revoked["payload"]["invite_id"] == requested["fay@example.com"]["payload"]["invite_id"]
    assert revoked["payload"]["revoked_by"] == "system:patient-connected" and revoked["payload"]["replaced_by"] is None
    assert revoked["causation_id"] == str(approved.event_id) and revoked["correlation_id"] == "approve-1"
    token = str(requested["fay@example.com"]["payload"]["accept_url"]).split("?token=", 1)[1]
    accepted = await service.http.post(
        "/v1/invites/accept", json={"token": token}, headers=patient(approved.payload.patient_id, "fay@example.com")
    )
    assert accepted.status_code == 409, accepted.text
    assert accepted.json()["type"] == "urn:collabkare:problem:invite-already-connected"
    assert await service.events(practice, "InviteAccepted") == []
    await _redeliver(service, approved)  # nothing revoked twice
    assert len(await service.events(practice, "InviteRevoked")) == 1


async def test_an_invite_past_its_week_is_left_to_expire_when_its_patient_connects(service: Service) -> None:
    """A review: an invite past its expiry that the sweeper had not reached yet was revoked by
    system:patient-connected when the patient's approval came, and its history said revoked, not expired."""
    practice = uuid.uuid4()
    await service.submit(practice, "hal@example.com")
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 minute' WHERE practice_id = $1", practice
    )
    await _deliver(service, "connections.v1", _approved(practice, "hal@example.com"))
    # Expired by its time (the sweeper, not running here, will say so), not revoked.
    assert await _statuses(service, practice) == [("hal@example.com", "pending", None)]
    assert await service.events(practice, "InviteRevoked") == []


async def test_a_row_whose_patient_connected_before_the_email_was_delivered_ends_already_connected(
    service: Service,
) -> None:
    """Found by a review against the help article: the notifier ends the email of an invite revoked for a patient
    who connected by request as an error ("the practice revoked the invite"); the roster row said so, though the
    practice revoked nothing and the patient is connected. Whichever of the outcome and the connection comes first
    (two topics, no order between them), the row ends the same; an email that did go out stays sent."""
    practice = uuid.uuid4()
    emails = ("hal", "ivy", "jon", "kim", "lee", "mia")
    batch = await service.submit(practice, "\n".join(f"{name}@example.com" for name in emails))
    requested = await _by_email(service, practice)
    # The connection first, then the outcome.
    for name in ("hal", "ivy", "jon"):
        await _deliver(service, "connections.v1", _approved(practice, f"{name}@example.com"))
    revoked_unsent = "the practice revoked the invite before its email went out; nothing was sent"
    await _deliver(
        service,
        OUTCOMES,
        _outcome(requested["hal@example.com"], "error", revoked_unsent),
        _outcome(requested["ivy@example.com"], "sent"),  # on the wire before the revoke reached the notifier
        _outcome(requested["jon@example.com"], "not_on_platform"),  # the notifier's directory not caught up yet
        _outcome(requested["kim@example.com"], "error", "550 no such user"),  # kim never connects
    )
    # The outcome first, then the connection.
    await _deliver(
        service,
        OUTCOMES,
        _outcome(requested["lee@example.com"], "not_on_platform"),
        _outcome(requested["mia@example.com"], "error", "550 mailbox full"),
    )
    for name in ("lee", "mia"):
        await _deliver(service, "connections.v1", _approved(practice, f"{name}@example.com"))

    connected = ("already_connected", CONNECTED_NOT_DELIVERED)
    assert await _rows(service, batch["batch_id"]) == {
        "hal@example.com": connected,
        "ivy@example.com": ("sent", None),
        "jon@example.com": connected,
        "kim@example.com": ("error", "550 no such user"),
        "lee@example.com": connected,
        "mia@example.com": connected,
    }
    progress = await service.http.get(
        f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}", headers=staff(practice)
    )
    assert progress.status_code == 200, progress.text
    counts = {k: v for k, v in progress.json()["counts"].items() if v}
    assert counts == {"already_connected": 4, "sent": 1, "error": 1}
    invite = await service.admin.fetchrow(
        "SELECT status, revoked_by, delivery, delivery_reason FROM invitations.invites WHERE id = $1",
        uuid.UUID(requested["mia@example.com"]["payload"]["invite_id"]),
    )
    assert dict(invite) == {  # the invite keeps what became of its email
        "status": "revoked",
        "revoked_by": "system:patient-connected",
        "delivery": "error",
        "delivery_reason": "550 mailbox full",
    }


@pytest.mark.parametrize("chunk", [batch_handlers.CHUNK, 1], ids=["one-chunk", "a-chunk-a-row"])
async def test_resending_not_on_platform_rows(service: Service, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worked through in chunks (a resend of 100,000 rows held them all in memory at once): the same answer."""
    monkeypatch.setattr(batch_handlers, "CHUNK", chunk)
    practice = uuid.uuid4()
    batch, base, first = await _sent_batch(
        service,
        practice,
        "ann@example.com, Hi Ann\nbob@example.com\ncat@example.com",
        {"ann@example.com": "not_on_platform", "bob@example.com": "not_on_platform", "cat@example.com": "sent"},
    )
    listed = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert listed.text == "ann@example.com\nbob@example.com\n"
    await _deliver(service, "connections.v1", _approved(practice, "Bob@example.com"))  # Bob registered and connected
    listed = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert listed.text == "ann@example.com\n", "a connected patient is not asked to register"

    response = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice, "admin", "admin-2"))
    assert response.status_code == 202, response.text
    # Bob's row turned already_connected with his connection: nothing left for the resend to flag.
    assert response.json() == {"batch_id": batch["batch_id"], "resent": 1, "already_connected": 0, "already_invited": 0}
    rows = await service.fetch(
        "SELECT email, outcome, attempts, invite_id FROM invitations.batch_rows WHERE batch_id = $1",
        uuid.UUID(batch["batch_id"]),
    )
    by_email = {r["email"]: r for r in rows}
    assert (by_email["ann@example.com"]["outcome"], by_email["ann@example.com"]["attempts"]) == ("queued", 2)
    assert by_email["bob@example.com"]["outcome"] == "already_connected"
    assert by_email["bob@example.com"]["invite_id"] is None, "a flagged row no longer follows its old invite"
    old_ann = uuid.UUID(first["ann@example.com"]["payload"]["invite_id"])
    new_ann = by_email["ann@example.com"]["invite_id"]
    assert new_ann != old_ann
    old = await service.admin.fetchrow(
        "SELECT status, replaced_by, revoked_by FROM invitations.invites WHERE id = $1", old_ann
    )
    assert dict(old) == {"status": "revoked", "replaced_by": new_ann, "revoked_by": "admin-2"}

    revoked = {e["payload"]["invite_id"]: e["payload"] for e in await service.events(practice, "InviteRevoked")}
    old_bob = first["bob@example.com"]["payload"]["invite_id"]
    assert {invite: (p["replaced_by"], p["revoked_by"]) for invite, p in revoked.items()} == {
        str(old_ann): (str(new_ann), "admin-2"),
        old_bob: (None, "system:patient-connected"),  # when his connection was projected
    }
    again = await service.requested(practice)
    resent = again[str(new_ann)]["payload"]
    assert (resent["email"], resent["note"], resent["line_number"]) == ("ann@example.com", "Hi Ann", 1)
    assert resent["replaces"] == str(old_ann), "the email can say that the earlier link no longer works"
    assert resent["accept_url"] != first["ann@example.com"]["payload"]["accept_url"]
    nothing = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice))
    assert nothing.json()["resent"] == 0, "rows already back in the queue are not sent twice"

    # Still not registered: the new invite comes back not_on_platform; a late outcome of the old one is ignored.
    await _deliver(service, OUTCOMES, _outcome(again[str(new_ann)], "not_on_platform"))
    await _deliver(service, OUTCOMES, _outcome(first["ann@example.com"], "sent", minutes=9))
    await _deliver(service, OUTCOMES, _outcome(first["bob@example.com"], "sent", minutes=9))
    after = await _rows(service, batch["batch_id"])
    assert (after["ann@example.com"][0], after["bob@example.com"][0]) == ("not_on_platform", "already_connected")
    listing = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert listing.text == "ann@example.com\n"
    third = (await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice))).json()
    assert third["resent"] == 1
    attempts = await service.fetchval(
        "SELECT attempts FROM invitations.batch_rows WHERE batch_id = $1 AND line_number = 1",
        uuid.UUID(batch["batch_id"]),
    )
    assert attempts == 3


async def test_a_resend_flags_a_patient_connected_after_their_invite_ended(service: Service) -> None:
    """An invite no longer pending when its patient connected (expired) is not revoked, so its row keeps
    not_on_platform: the copy list leaves the patient out, and a resend flags the row instead of inviting."""
    practice = uuid.uuid4()
    batch = await service.submit(practice, "dee@example.com")
    base = f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}"
    first = await _by_email(service, practice)
    await _deliver(service, OUTCOMES, _outcome(first["dee@example.com"], "not_on_platform"))
    await service.admin.execute(
        "UPDATE invitations.invites SET status = 'expired', expired_at = now() WHERE id = $1",
        uuid.UUID(first["dee@example.com"]["payload"]["invite_id"]),
    )
    await _deliver(service, "connections.v1", _approved(practice, "dee@example.com"))
    assert (await _rows(service, batch["batch_id"]))["dee@example.com"][0] == "not_on_platform"
    assert (await service.http.get(f"{base}/not-on-platform", headers=staff(practice))).text == ""

    response = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice))

    assert response.json() == {"batch_id": batch["batch_id"], "resent": 0, "already_connected": 1, "already_invited": 0}
    assert (await _rows(service, batch["batch_id"]))["dee@example.com"][0] == "already_connected"


async def test_a_batchs_rows_follow_their_patients_current_invite(service: Service) -> None:
    """Found by a black-box probe: a later roster replaced batch A's undelivered invites, yet A still listed those
    patients as not on CollabKare, and A's resend then revoked the later batch's invites; a resend also brought back an
    invite staff had revoked. A's rows now let go of replaced invites (`already_invited`), staff-revoked rows stay out
    of the list and the resend, and every row shows its invite's status."""
    practice = uuid.uuid4()
    outcomes = {"zed@example.com": "not_on_platform", "yan@example.com": "not_on_platform"}
    outcomes |= {"hank@example.com": "not_on_platform", "ivy@example.com": "sent"}
    first_batch, base, first = await _sent_batch(service, practice, "\n".join(outcomes), outcomes)
    hank = first["hank@example.com"]["payload"]["invite_id"]
    revoked = await service.http.post(f"/v1/practices/{practice}/invites/{hank}/revoke", headers=staff(practice))
    assert revoked.status_code == 200, revoked.text
    listed = await service.http.get(f"{base}/not-on-platform", headers=staff(practice))
    assert listed.text == "zed@example.com\nyan@example.com\n", "staff withdrew hank's invite"

    second_batch = await service.submit(practice, "zed@example.com\nyan@example.com")  # zed registered meanwhile
    rows = await service.http.get(f"{base}/rows", headers=staff(practice))
    by_email = {row["email"]: row for row in rows.json()["items"]}
    for name in ("zed", "yan"):
        row = by_email[f"{name}@example.com"]
        assert (row["outcome"], row["invite_id"], row["invite_status"]) == ("already_invited", None, None), row
        assert "a newer invite replaces this row's" in row["reason"]
    assert (by_email["hank@example.com"]["outcome"], by_email["hank@example.com"]["invite_status"]) == (
        "not_on_platform",
        "revoked",
    )
    assert (by_email["ivy@example.com"]["outcome"], by_email["ivy@example.com"]["invite_status"]) == ("sent", "pending")
    assert (await service.http.get(f"{base}/not-on-platform", headers=staff(practice))).text == ""

    resent = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice))
    assert resent.json() == {
        "batch_id": first_batch["batch_id"],
        "resent": 0,
        "already_connected": 0,
        "already_invited": 0,
    }
    assert (await _rows(service, first_batch["batch_id"]))["hank@example.com"][0] == "not_on_platform"
    second_rows = await service.fetch(
        "SELECT r.outcome, i.status FROM invitations.batch_rows AS r"
        " JOIN invitations.invites AS i ON i.id = r.invite_id WHERE r.batch_id = $1",
        uuid.UUID(second_batch["batch_id"]),
    )
    assert [(r["outcome"], r["status"]) for r in second_rows] == [("queued", "pending")] * 2, "the later batch's stand"
    statuses = {key: status for key, status, _ in await _statuses(service, practice)}
    assert statuses["hank@example.com"] == "revoked"

    # An expired invite's row leaves the list while its patient holds a newer invite.
    newer = await service.submit(practice, "kim@example.com")
    kim_old = (await _by_email(service, practice))["kim@example.com"]
    await _deliver(service, OUTCOMES, _outcome(kim_old, "not_on_platform"))
    kim_base = f"/v1/practices/{practice}/invite-batches/{newer['batch_id']}"
    assert (await service.http.get(f"{kim_base}/not-on-platform", headers=staff(practice))).text == "kim@example.com\n"
    await service.admin.execute(
        "UPDATE invitations.invites SET status = 'expired', expired_at = now() WHERE id = $1",
        uuid.UUID(kim_old["payload"]["invite_id"]),
    )
    single = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "kim@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert single.status_code == 201, single.text
    assert (await service.http.get(f"{kim_base}/not-on-platform", headers=staff(practice))).text == ""
    [kim_row] = (await service.http.get(f"{kim_base}/rows", headers=staff(practice))).json()["items"]
    assert (kim_row["outcome"], kim_row["invite_status"]) == ("not_on_platform", "expired")
    # A resend of that row does not invite her a second time: it flags the row.
    flagged = await service.http.post(f"{kim_base}/resend-not-on-platform", headers=staff(practice))
    assert flagged.json() == {"batch_id": newer["batch_id"], "resent": 0, "already_connected": 0, "already_invited": 1}
    [kim_row] = (await service.http.get(f"{kim_base}/rows", headers=staff(practice))).json()["items"]
    assert kim_row["outcome"] == "already_invited" and "no new invite is sent" in kim_row["reason"]


@pytest.mark.parametrize("chunk", [batch_handlers.CHUNK, 1], ids=["one-chunk", "a-chunk-a-row"])
async def test_an_invite_that_never_reached_the_patient_gives_way_to_a_new_one(
    service: Service, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staff paste a patient again once they registered: was `already_invited` (a 409 for one invite) for 7 days,
    though nothing had ever been sent. An invite still on its way, or delivered, keeps blocking. Replaced a chunk at
    a time (all at once, a roster re-sent over 100,000 undelivered invites took 500 MiB): the same answer."""
    monkeypatch.setattr(batch_handlers, "CHUNK", chunk)
    practice = uuid.uuid4()
    await service.submit(
        practice, "ann@example.com\nbob@example.com\ncat@example.com\ndan@example.com\neve@example.com"
    )
    first = await _by_email(service, practice)
    await _deliver(
        service,
        OUTCOMES,
        _outcome(first["ann@example.com"], "not_on_platform"),
        _outcome(first["bob@example.com"], "error", "550 mailbox unavailable"),
        _outcome(first["cat@example.com"], "sent"),
        _outcome(first["dan@example.com"], "not_on_platform"),
    )  # eve's is still queued
    roster = "ann@example.com\nbob@example.com\ncat@example.com\neve@example.com"
    preview = await service.http.post(
        f"/v1/practices/{practice}/roster/preview", json={"roster": roster}, headers=staff(practice)
    )
    assert [r["verdict"] for r in preview.json()["rows"]] == ["ready", "ready", "already_invited", "already_invited"]

    again = await service.submit(practice, roster)
    rows = await _rows(service, again["batch_id"])
    assert {email: outcome for email, (outcome, _) in rows.items()} == {
        "ann@example.com": "queued",
        "bob@example.com": "queued",
        "cat@example.com": "already_invited",
        "eve@example.com": "already_invited",
    }
    new = {e["payload"]["email"]: e["payload"]["invite_id"] for e in (await service.requested(practice)).values()}
    replaced = await service.fetch(
        "SELECT email, status, replaced_by FROM invitations.invites WHERE practice_id = $1 AND replaced_by IS NOT NULL",
        practice,
    )
    assert {(r["email"], r["status"], str(r["replaced_by"])) for r in replaced} == {
        ("ann@example.com", "revoked", new["ann@example.com"]),
        ("bob@example.com", "revoked", new["bob@example.com"]),
    }
    revoked = await service.events(practice, "InviteRevoked")
    assert {e["payload"]["replaced_by"] for e in revoked} == {new["ann@example.com"], new["bob@example.com"]}

    # One invite at a time, the same: dan's never-delivered invite is replaced by one with identity factors.
    single = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "dan@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert single.status_code == 201, single.text
    old_dan = first["dan@example.com"]["payload"]["invite_id"]
    row = await service.admin.fetchrow(
        "SELECT status, replaced_by FROM invitations.invites WHERE id = $1", uuid.UUID(old_dan)
    )
    assert (row["status"], str(row["replaced_by"])) == ("revoked", single.json()["id"])
    assert single.json()["resends"] == old_dan, "both invites name each other, as a resend's do"
    dan_requested = (await service.requested(practice))[single.json()["id"]]["payload"]
    assert dan_requested["replaces"] == old_dan
    blocked = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "eve@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert blocked.status_code == 409, "an invite still on its way blocks a second one"


async def test_a_roster_never_takes_the_place_of_an_identity_checked_invite(service: Service) -> None:
    """A roster row not on platform; then an invite sent on its own (identity factors), not on platform either,
    replaced the row's. Once the patient registers, neither re-sending the row nor pasting the patient again may
    swap that invite for a roster invite, which would drop the identity check: staff resend that invite. (The row
    let go of its invite when it was replaced: the resend leaves it alone.)"""
    practice = uuid.uuid4()
    batch = await service.submit(practice, "gil@example.com")
    base = f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}"
    first = await _by_email(service, practice)
    await _deliver(service, OUTCOMES, _outcome(first["gil@example.com"], "not_on_platform"))
    single = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "gil@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert single.status_code == 201, single.text
    single_id = single.json()["id"]
    await _deliver(service, OUTCOMES, _outcome((await service.requested(practice))[single_id], "not_on_platform"))

    response = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice))
    assert response.status_code == 202, response.text
    assert response.json() == {"batch_id": batch["batch_id"], "resent": 0, "already_connected": 0, "already_invited": 0}
    [row] = await service.fetch(
        "SELECT outcome, reason, invite_id FROM invitations.batch_rows WHERE batch_id = $1",
        uuid.UUID(batch["batch_id"]),
    )
    assert (row["outcome"], row["invite_id"]) == ("already_invited", None)
    assert "a newer invite replaces this row's" in row["reason"] and "access history" in row["reason"]
    preview = await service.http.post(
        f"/v1/practices/{practice}/roster/preview", json={"roster": "gil@example.com"}, headers=staff(practice)
    )
    assert [r["verdict"] for r in preview.json()["rows"]] == ["already_invited"]

    resent = await service.http.post(f"/v1/practices/{practice}/invites/{single_id}/resend", headers=staff(practice))
    assert resent.status_code == 201, resent.text
    history = await service.http.get(
        f"/v1/practices/{practice}/invites", params={"email": "gil@example.com"}, headers=staff(practice)
    )
    pending = [i for i in history.json()["items"] if i["status"] == "pending"]
    assert [(i["identity_factors"], i["resends"]) for i in pending] == [(["ssn"], single_id)], "the check stays"


@pytest.mark.timeout(300)  # 10,000 events each way, and the module's teardown, on a slow box
async def test_ten_thousand_outcomes_are_applied_in_batches(service: Service) -> None:
    # Last in the module: its 10,000 events make every later read of the topic slower.
    practice = uuid.uuid4()
    batch = await service.submit(practice, "\n".join(f"patient{i}@example.com" for i in range(10_000)))
    await service.drained(timeout=90)  # 10,000 events to publish, more than the usual bound allows for
    requested = list((await service.requested(practice)).values())
    assert len(requested) == 10_000
    outcomes = [_outcome(event, "sent" if i % 4 else "not_on_platform") for i, event in enumerate(requested)]
    await _deliver(service, OUTCOMES, *outcomes, timeout=60)  # bounded; how fast is for make bench to say
    summary = (
        await service.http.get(f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}", headers=staff(practice))
    ).json()
    assert summary["counts"]["sent"] == 7_500 and summary["counts"]["not_on_platform"] == 2_500 and summary["done"]
    listing = await service.http.get(
        f"/v1/practices/{practice}/invite-batches/{batch['batch_id']}/not-on-platform", headers=staff(practice)
    )
    assert len(listing.text.splitlines()) == 2_500 and listing.text.endswith("\n")


async def test_an_invite_to_a_deleted_patients_address_is_not_revoked_by_its_outcome(service: Service) -> None:
    """A review: the new invite to a deleted (connected) patient's address was revoked as `system:patient-connected`
    as soon as its delivery outcome came, by her old row in the connected projection."""
    practice, gone_patient = uuid.uuid4(), uuid.uuid4()
    await _deliver(service, "connections.v1", _approved(practice, "zoe@example.com", gone_patient))
    topic = service.topic_prefix + "platform.patients.v1"
    await produce(service.bootstrap, topic, [(str(gone_patient).encode(), None)])
    gone = "SELECT count(*) FROM invitations.deleted_patients WHERE patient_id = ANY($1::uuid[])"
    assert await service.wait_for(gone, [gone_patient], expect=1) == 1
    batch = await service.submit(practice, "zoe@example.com")
    assert batch["counts"].get("already_connected", 0) == 0, batch
    requested = await _by_email(service, practice)
    await _deliver(service, OUTCOMES, _outcome(requested["zoe@example.com"], "sent"))
    assert await _statuses(service, practice) == [("zoe@example.com", "pending", None)]
