"""Accepting invites on real PostgreSQL and Kafka: single use, 410 expired or revoked, 403 and the lock, factors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from collabkare.stack.infra import Infrastructure
from services.runtime.auth import mint_token
from tests.integration.invitations_harness import Service, patient, running_service, staff
from tests.support import JWT_SECRET

ACCEPT = "/v1/invites/accept"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


def _token(event: dict[str, Any]) -> str:
    return str(event["payload"]["accept_url"]).split("?token=", 1)[1]


async def _roster_invite(service: Service, email: str, sent_by: str = "staff-1") -> tuple[uuid.UUID, str, str]:
    """(practice, invite id, token) of a fresh roster invite (no identity factors), sent by staff `sent_by`."""
    practice = uuid.uuid4()
    await service.submit(practice, email, **staff(practice, subject=sent_by))
    ((invite_id, event),) = (await service.requested(practice)).items()
    return practice, invite_id, _token(event)


async def _individual_invite(service: Service, email: str, **factors: str) -> tuple[uuid.UUID, str, str]:
    practice = uuid.uuid4()
    response = await service.http.post(
        f"/v1/practices/{practice}/invites", json={"email": email, **factors}, headers=staff(practice)
    )
    assert response.status_code == 201, response.text
    invite_id = response.json()["id"]
    return practice, invite_id, _token((await service.requested(practice))[invite_id])


async def _accept(
    service: Service, token: str, email: str = "ann@example.com", patient_id: uuid.UUID | None = None, **body: str
) -> httpx.Response:
    return await service.http.post(
        ACCEPT, json={"token": token, **body}, headers=patient(patient_id or uuid.uuid4(), email)
    )


async def _status(service: Service, invite_id: str) -> Any:
    return await service.admin.fetchrow(
        "SELECT status, failed_attempts, locked_at, accepted_by FROM invitations.invites WHERE id = $1",
        uuid.UUID(invite_id),
    )


async def test_accepting_a_roster_invite_publishes_invite_accepted_and_is_single_use(service: Service) -> None:
    practice, invite_id, token = await _roster_invite(service, "Ann@Example.com", sent_by="front-desk-3")
    ann = uuid.uuid4()
    response = await service.http.post(
        ACCEPT, json={"token": token}, headers={**patient(ann, "ann@example.com"), "X-Correlation-ID": "accept-9"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["invite_id"], body["practice_id"], body["status"]) == (invite_id, str(practice), "accepted")
    (event,) = await service.events(practice, "InviteAccepted")
    assert event["payload"]["invite_id"] == invite_id and event["payload"]["patient_id"] == str(ann)
    assert event["payload"]["patient_email"] == "ann@example.com" and event["correlation_id"] == "accept-9"
    assert event["payload"]["invited_by"] == "front-desk-3", "the connection's approver, for the connections service"
    assert (await _status(service, invite_id))["accepted_by"] == str(ann)

    # Found by an integrating team's review: the patient's app retrying after a lost answer showed an error for an
    # acceptance that had worked. The same patient gets the same answer; anyone else, 409.
    retried = await _accept(service, token, patient_id=ann)
    assert retried.status_code == 200 and retried.json() == body
    other = await _accept(service, token)
    assert other.status_code == 409 and other.json()["type"] == "urn:collabkare:problem:invite-already-accepted"
    assert len(await service.events(practice, "InviteAccepted")) == 1


async def test_a_patient_who_accepted_is_connected_before_connections_says_so(service: Service) -> None:
    """Nothing here feeds ConnectionApproved back: the acceptance alone must flag the patient (a roster sent right
    after, or while connections or the broker is away, invited every such patient again)."""
    practice, _, token = await _roster_invite(service, "ann@example.com")
    assert (await _accept(service, token)).status_code == 200
    again = await service.submit(practice, "ANN@example.com\nbob@example.com")
    assert again["patients_ready"] == 1 and again["counts"]["already_connected"] == 1
    large = "\n".join(["ann@example.com", *(f"p{n}@example.com" for n in range(1200))])  # reads the practice whole
    assert (await service.submit(practice, large))["counts"]["already_connected"] == 1
    one = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "ann@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert one.status_code == 409 and one.json()["type"] == "urn:collabkare:problem:already-connected"


async def test_two_patients_racing_for_one_token_get_one_acceptance(service: Service) -> None:
    practice, _, token = await _roster_invite(service, "ann@example.com")
    answers = await asyncio.gather(*(_accept(service, token) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    assert len(await service.events(practice, "InviteAccepted")) == 1


async def test_a_roster_invite_is_for_the_address_it_was_sent_to(service: Service) -> None:
    _, invite_id, token = await _roster_invite(service, "ann@example.com")
    response = await _accept(service, token, email="mallory@example.com")
    assert response.status_code == 403 and "a different email address" in response.json()["detail"]
    assert (await _status(service, invite_id))["status"] == "pending"


async def test_an_invite_with_factors_needs_one_matching_factor(service: Service) -> None:
    practice, invite_id, token = await _individual_invite(
        service, "ann@example.com", ssn="123-45-6789", date_of_birth="1980-02-29", phone="+1 555 010 1234"
    )
    missing = await _accept(service, token)
    assert missing.status_code == 422
    assert [e["field"] for e in missing.json()["errors"]] == ["ssn", "date_of_birth", "phone"]
    half = await _accept(service, token, date_of_birth="1980-02-29")
    assert half.status_code == 422 and [e["field"] for e in half.json()["errors"]] == ["phone"]
    both = await _accept(service, token, ssn="123456789", date_of_birth="1980-02-29", phone="5550101234")
    assert both.status_code == 422
    assert (await _status(service, invite_id))["failed_attempts"] == 0, "incomplete answers are not counted"
    # Another account holding the token and the right factor is still another account (was accepted).
    other = await _accept(service, token, email="other@example.com", date_of_birth="1980-02-29", phone="5550101234")
    assert other.status_code == 403 and "a different email address" in other.json()["detail"]
    ann = uuid.uuid4()
    ok = await _accept(service, token, patient_id=ann, date_of_birth="1980-02-29", phone="(555) 010-1234")
    assert ok.status_code == 200, ok.text
    # Her retry after a lost answer gets the same answer with a matching factor only (a probe got a 200 for a wrong
    # date of birth); wrong ones count and lock as before (uncounted, the retry was an oracle for her SSN).
    assert (await _accept(service, token, patient_id=ann, ssn="123-45-6789")).json() == ok.json()
    replay = await _accept(service, token, patient_id=ann, date_of_birth="1980-02-04", phone="(555) 010-1234")
    assert replay.status_code == 403 and "do not match" in replay.json()["detail"], replay.text
    for guess in range(4):
        await _accept(service, token, patient_id=ann, ssn=f"123-45-000{guess}")
    locked = await _accept(service, token, patient_id=ann, ssn="123-45-6789")
    assert locked.status_code == 403 and locked.json()["type"] == "urn:collabkare:problem:invite-locked"
    assert "resend" not in locked.json()["detail"], "an accepted invite cannot be resent: no such advice"
    state = await _status(service, invite_id)
    assert (state["status"], state["failed_attempts"], state["locked_at"] is not None) == ("accepted", 5, True)
    _, _, by_ssn = await _individual_invite(service, "bob@example.com", ssn="587654321")
    # A form that sends every field: the empty date is not given, as the empty phone (the date was a 422); the token
    # pasted with the line break it was copied with (it was "not valid").
    by_form = await _accept(
        service, f" {by_ssn}\n", email="bob@example.com", ssn="587-65-4321", date_of_birth="", phone=""
    )
    assert by_form.status_code == 200, by_form.text
    c_token = (await _individual_invite(service, "c@example.com", ssn="587654321"))[2]
    only_ssn = await _accept(service, c_token, email="c@example.com")
    assert only_ssn.status_code == 422 and [e["field"] for e in only_ssn.json()["errors"]] == ["ssn"]
    assert len(await service.events(practice, "InviteAccepted")) == 1


async def test_five_wrong_answers_lock_the_invite(service: Service) -> None:
    _, invite_id, token = await _individual_invite(service, "ann@example.com", ssn="123456789")
    for left in (4, 3, 2, 1, 0):
        wrong = await _accept(service, token, ssn="111-11-1111")
        assert wrong.status_code == 403 and wrong.json()["tries_left"] == left
        assert "111-11-1111" not in wrong.text
    assert "locked" in wrong.json()["detail"]
    locked = await _accept(service, token, ssn="123456789")
    assert locked.status_code == 403 and locked.json()["type"] == "urn:collabkare:problem:invite-locked"
    state = await _status(service, invite_id)
    assert (state["status"], state["failed_attempts"], state["locked_at"] is not None) == ("pending", 5, True)


async def test_staff_inviting_a_patient_whose_invite_is_locked_are_told_to_resend_it(service: Service) -> None:
    """Found by a walkthrough: the roster said "a pending invite ... is valid until ...; it was not sent again" and
    a new invite "already has a pending invite", about an invite nobody can accept any more."""
    practice, invite_id, token = await _individual_invite(service, "ann@example.com", ssn="123456789")
    for _ in range(5):
        await _accept(service, token, ssn="111-11-1111")
    preview = await service.http.post(
        f"/v1/practices/{practice}/roster/preview", json={"roster": "ann@example.com"}, headers=staff(practice)
    )
    [line] = preview.json()["rows"]
    assert line["verdict"] == "already_invited", line
    assert "locked after too many wrong identity answers; resend that invite" in line["reason"]
    again = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "ann@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert again.status_code == 409 and again.json()["invite"]["id"] == invite_id
    assert "locked after too many wrong identity answers; resend it" in again.json()["detail"]
    resent = await service.http.post(f"/v1/practices/{practice}/invites/{invite_id}/resend", headers=staff(practice))
    assert resent.status_code == 201, resent.text
    # The access history keeps that someone tried its factor five times (a probe: it read "locked": false once
    # resent); the new invite starts unlocked.
    assert resent.json()["previous"]["locked"] is True and resent.json()["invite"]["locked"] is False
    old = await service.http.get(f"/v1/practices/{practice}/invites/{invite_id}", headers=staff(practice))
    assert old.json()["status"] == "revoked" and old.json()["locked"] is True


async def test_expired_and_revoked_invites_answer_410_saying_which(service: Service) -> None:
    practice, invite_id, token = await _roster_invite(service, "ann@example.com")
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(invite_id)
    )
    expired = await _accept(service, token)
    assert (
        expired.status_code == 410 and expired.json()["reason"] == "expired" and "expired" in expired.json()["detail"]
    )
    assert (await _status(service, invite_id))["status"] == "expired"
    assert [e["payload"]["invite_id"] for e in await service.events(practice, "InviteExpired")] == [invite_id]
    assert (await _accept(service, token)).json()["reason"] == "expired"

    practice, invite_id, token = await _roster_invite(service, "bob@example.com")
    revoke = await service.http.post(f"/v1/practices/{practice}/invites/{invite_id}/revoke", headers=staff(practice))
    assert revoke.status_code == 200
    revoked = await _accept(service, token, email="bob@example.com")
    assert (
        revoked.status_code == 410 and revoked.json()["reason"] == "revoked" and "revoked" in revoked.json()["detail"]
    )
    assert await service.events(practice, "InviteAccepted") == []


async def test_a_resent_invite_retires_the_old_token(service: Service) -> None:
    practice, invite_id, old = await _roster_invite(service, "ann@example.com", sent_by="front-desk-3")
    resent = await service.http.post(
        f"/v1/practices/{practice}/invites/{invite_id}/resend", headers=staff(practice, subject="manager-7")
    )
    new = _token((await service.requested(practice))[resent.json()["invite"]["id"]])
    # Not "revoked by the practice", which read as if the practice had withdrawn: it has just sent a newer one.
    retired = await _accept(service, old)
    assert (retired.status_code, retired.json()["reason"]) == (410, "replaced")
    assert retired.json()["type"] == "urn:collabkare:problem:invite-replaced"
    assert "most recent email" in retired.json()["detail"]
    assert (await _accept(service, new)).status_code == 200
    (event,) = await service.events(practice, "InviteAccepted")
    assert event["payload"]["invited_by"] == "manager-7", "the invite accepted is the one the resend sent"


async def test_tokens_that_were_never_issued_are_not_found(service: Service) -> None:
    _, invite_id, token = await _roster_invite(service, "ann@example.com")
    forged = token[:22] + ("A" if token[22] != "A" else "B") + token[23:]  # right invite id, wrong secret
    for bad in (forged, "not-a-token", "x" * 64, token[:-1]):
        response = await _accept(service, bad)
        assert response.status_code == 404 and response.json()["detail"].startswith("No such invite")
    assert (await _status(service, invite_id))["failed_attempts"] == 0
    empty = await _accept(service, "")
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "token"


async def test_malformed_acceptances_name_the_field_and_count_as_no_answer(service: Service) -> None:
    _, invite_id, token = await _individual_invite(service, "ann@example.com", ssn="123456789")
    headers = patient(uuid.uuid4(), "ann@example.com")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "token"),
        ({"ssn": "123456789"}, "token"),
        ({"token": 5}, "token"),
        ({"token": token, "ssn": 123456789}, "ssn"),
        ({"token": token, "ssn": "12-34"}, "ssn"),
        ({"token": token, "ssn": "123456789", "pin": "0000"}, "pin"),
    ]
    for body, field in cases:
        response = await service.http.post(ACCEPT, json=body, headers=headers)
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field], (body, response.text)
    broken = await service.http.post(
        ACCEPT, content=b'{"token": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and [e["field"] for e in broken.json()["errors"]] == ["body"], broken.text
    assert tuple(await _status(service, invite_id)) == ("pending", 0, None, None)


async def test_a_patient_token_without_a_patient_id_and_an_email_is_not_valid(service: Service) -> None:
    _, invite_id, token = await _roster_invite(service, "ann@example.com")
    cases = [
        ("sub claim must be a patient id", mint_token(JWT_SECRET, "not-a-uuid", ["patient"], email="ann@example.com")),
        ("email claim is required", mint_token(JWT_SECRET, str(uuid.uuid4()), ["patient"])),
        ("email claim must be an email", mint_token(JWT_SECRET, str(uuid.uuid4()), ["patient"], email="not an email")),
    ]
    for rule, bearer in cases:
        response = await service.http.post(ACCEPT, json={"token": token}, headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert rule in response.json()["detail"] and "errors" not in response.json()
    assert (await _status(service, invite_id))["status"] == "pending"
