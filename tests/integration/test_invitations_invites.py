"""Individual invites on real PostgreSQL and Kafka: required factors, digests only, history, revoke, resend, expiry."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from collabkare.stack.infra import Infrastructure
from services.invitations import batch_repository, practice_lock, repository
from tests.integration.invitations_harness import IDENTITY_KEY, Service, accepted_while, patient, running_service, staff
from tests.support import lock_waiters

PROBLEM = "application/problem+json"
FACTORS = {"ssn": "123-45-6789", "date_of_birth": "1980-02-29", "phone": "(555) 010-1234"}


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(
        infra,
        template_database,
        consuming=False,
        sweeping=True,
        expiry_sweep_seconds=0.2,
        request_deadline_seconds=60,  # requests queued behind a held practice lock answer late on a slow box
    ) as running:
        yield running


async def _invite(service: Service, practice: uuid.UUID, subject: str = "staff-1", **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/v1/practices/{practice}/invites", json=body, headers=staff(practice, "front_desk", subject)
    )


async def _created(service: Service, practice: uuid.UUID, email: str, subject: str = "staff-1") -> dict[str, Any]:
    response = await _invite(service, practice, subject, email=email, ssn="123456789", note="See you soon")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _history(service: Service, practice: uuid.UUID, email: str) -> list[dict[str, Any]]:
    response = await service.http.get(
        f"/v1/practices/{practice}/invites", params={"email": email}, headers=staff(practice)
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _act(service: Service, practice: uuid.UUID, invite_id: str, action: str, subject: str) -> httpx.Response:
    return await service.http.post(
        f"/v1/practices/{practice}/invites/{invite_id}/{action}", headers=staff(practice, "practice_manager", subject)
    )


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({}, ["ssn", "date_of_birth", "phone"]),
        ({"date_of_birth": "1980-02-29"}, ["phone"]),
        ({"phone": "+1 555 010 1234"}, ["date_of_birth"]),
        ({"ssn": "", "phone": "+1 555 010 1234"}, ["date_of_birth"]),
        # A form that sends every field: empty is not given, the date's as the others' (it was a parse error).
        ({"ssn": "", "date_of_birth": "", "phone": ""}, ["ssn", "date_of_birth", "phone"]),
        ({"ssn": " ", "date_of_birth": "  ", "phone": "\t"}, ["ssn", "date_of_birth", "phone"]),
    ],
)
async def test_a_missing_factor_is_named(service: Service, body: dict[str, str], missing: list[str]) -> None:
    practice = uuid.uuid4()
    response = await _invite(service, practice, email="ann@example.com", **body)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert [(e["field"], e["rule"]) for e in problem["errors"]] == [(field, "required") for field in missing]
    assert problem["detail"].startswith("Missing: ")
    for field in missing:
        assert field in problem["detail"]
    assert await service.fetchval("SELECT count(*) FROM invitations.invites WHERE practice_id = $1", practice) == 0


async def test_malformed_input_is_named_without_echoing_it(service: Service) -> None:
    practice = uuid.uuid4()
    cases = [
        ({"ssn": "12-345-678"}, "ssn"),
        ({"ssn": "000-00-0000"}, "ssn"),  # a placeholder, not a number the SSA issues
        ({"date_of_birth": "2999-01-01", "phone": "5550101234"}, "date_of_birth"),
        ({"date_of_birth": "1980-13-40", "phone": "5550101234"}, "date_of_birth"),
        ({"date_of_birth": "1980-02-29", "phone": "010-1234"}, "phone"),
    ]
    for body, field in cases:
        response = await _invite(service, practice, email="ann@example.com", **body)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field]
        for value in body.values():
            assert value not in response.text
    no_email = await _invite(service, practice, ssn="123456789")
    assert no_email.status_code == 422 and no_email.json()["errors"][0]["field"] == "email"
    bad_email = await _invite(service, practice, email="ann at example", ssn="123456789")
    assert bad_email.status_code == 422
    [error] = bad_email.json()["errors"]
    assert (error["field"], error["rule"]) == ("email", "email") and error["message"].startswith("not an email address")
    # Named by their rules: pydantic's own "value_error" with a "Value error, " prefix said nothing to a UI.
    long_note = await _invite(service, practice, email="ann@example.com", ssn="123456789", note="n" * 501)
    [error] = long_note.json()["errors"]
    assert (error["field"], error["rule"]) == ("note", "string_too_long") and error["message"].startswith(
        "the note is 501"
    )
    bell = await _invite(service, practice, email="ann@example.com", ssn="123456789", note="ring\u0007")
    [error] = bell.json()["errors"]
    assert (error["field"], error["rule"]) == ("note", "control_character"), error
    # Every malformed field at once (the phone used to be named only once the date was fixed).
    both = await _invite(service, practice, email="ann@example.com", date_of_birth="03/02/1990", phone="call me")
    assert both.status_code == 422 and [e["field"] for e in both.json()["errors"]] == ["date_of_birth", "phone"]
    # Said what a date must look like: pydantic's own message was "invalid character in year".
    assert both.json()["errors"][0]["rule"] == "format"
    assert both.json()["errors"][0]["message"] == "expected a real date as YYYY-MM-DD, e.g. 1980-02-29"
    assert "call me" not in both.text and "03/02/1990" not in both.text  # (a hex-like value may be in the URL)


async def test_broken_json_wrong_types_and_unknown_fields_are_named_and_write_nothing(service: Service) -> None:
    practice = uuid.uuid4()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"email": 5, "ssn": "123456789"}, "email"),
        ({"email": "ann@example.com", "ssn": 123456789}, "ssn"),
        ({"email": "ann@example.com", "ssn": "123456789", "note": ["see", "you"]}, "note"),
        ({"email": "ann@example.com", "ssn": "123456789", "mrn": "A-1"}, "mrn"),  # a typo or a field we do not take
        # A number is no date: pydantic read 315532800 as seconds since 1970 and stored 1980-01-01.
        ({"email": "ann@example.com", "date_of_birth": 315532800, "phone": "5550101234"}, "date_of_birth"),
    ]
    for body, field in cases:
        response = await _invite(service, practice, **body)
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    broken = await service.http.post(
        f"/v1/practices/{practice}/invites",
        content=b'{"email": "ann@example.com", ',
        headers={**staff(practice), "Content-Type": "application/json"},
    )
    assert broken.status_code == 422 and [e["field"] for e in broken.json()["errors"]] == ["body"], broken.text
    assert await service.fetchval("SELECT count(*) FROM invitations.invites WHERE practice_id = $1", practice) == 0


async def test_a_body_that_is_not_json_is_a_415_as_on_every_other_endpoint(service: Service) -> None:
    """Was a 422 here and on acceptance, while the roster and connections endpoints answered 415."""
    practice = uuid.uuid4()
    text = {"Content-Type": "text/plain"}
    invite = await service.http.post(
        f"/v1/practices/{practice}/invites", content=b"ann@example.com", headers={**staff(practice), **text}
    )
    assert invite.status_code == 415 and invite.headers["accept-post"] == "application/json"
    accept = await service.http.post(
        "/v1/invites/accept", content=b"token", headers={**patient(uuid.uuid4(), "ann@example.com"), **text}
    )
    assert accept.status_code == 415 and accept.headers["content-type"] == "application/problem+json"
    assert [(e["field"], e["rule"]) for e in accept.json()["errors"]] == [("Content-Type", "media_type")]
    latin = await service.http.post(
        "/v1/invites/accept",
        content=b'{"token": "t"}',
        headers={**patient(uuid.uuid4(), "ann@example.com"), "Content-Type": "application/json; charset=latin-1"},
    )
    assert latin.status_code == 415 and [(e["field"], e["rule"]) for e in latin.json()["errors"]] == [
        ("Content-Type", "charset")
    ]


async def test_identity_factors_are_stored_only_as_keyed_digests(service: Service) -> None:
    practice = uuid.uuid4()
    response = await _invite(service, practice, email="Ann.Lee@Example.com", note="Hello", **FACTORS)
    assert response.status_code == 201, response.text
    invite = response.json()
    assert invite["status"] == "pending" and invite["delivery"] == "queued" and invite["email"] == "Ann.Lee@example.com"
    assert invite["identity_factors"] == ["ssn", "date_of_birth_and_phone"] and invite["batch_id"] is None
    (event,) = (await service.requested(practice)).values()
    assert event["payload"]["invite_id"] == invite["id"] and event["payload"]["note"] == "Hello"
    assert event["payload"]["batch_id"] is None and event["payload"]["line_number"] is None
    assert event["payload"]["identity_check"] == "ssn", "the email tells the patient what accepting asks for"
    assert event["payload"]["identity_checks"] == ["ssn", "date_of_birth_and_phone"], "either will do"
    other = uuid.uuid4()
    assert (
        await _invite(service, other, email="bo@example.com", date_of_birth="1980-02-29", phone="5550101234")
    ).status_code == 201
    (by_birth,) = (await service.requested(other)).values()
    assert by_birth["payload"]["identity_check"] == "date_of_birth_and_phone"
    assert by_birth["payload"]["identity_checks"] == ["date_of_birth_and_phone"]

    row = await service.admin.fetchrow(
        "SELECT ssn_digest, dob_digest, phone_digest FROM invitations.invites WHERE id = $1", uuid.UUID(invite["id"])
    )
    key = IDENTITY_KEY.encode()
    expected = {
        "ssn_digest": hmac.new(key, b"ssn:123456789", hashlib.sha256).digest(),
        "dob_digest": hmac.new(key, b"date_of_birth:1980-02-29", hashlib.sha256).digest(),
        "phone_digest": hmac.new(key, b"phone:15550101234", hashlib.sha256).digest(),
    }
    assert dict(row) == expected
    # Nothing anywhere in the service's schema holds a factor in clear, in any spelling.
    clear = ["123456789", "123-45-6789", "1980-02-29", "19800229", "5550101234", "010-1234"]
    assert not [c for c in clear if c in json.dumps(event)], "nor does the event"
    columns = await service.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'invitations' AND data_type IN ('text', 'bytea', 'jsonb', 'json')"
    )
    assert len(columns) > 10
    for column in columns:
        values = await service.fetch(
            f'SELECT "{column["column_name"]}"::text AS v FROM invitations."{column["table_name"]}"'
            f' WHERE "{column["column_name"]}" IS NOT NULL'
        )
        for value in values:
            text = (
                bytes.fromhex(value["v"][2:]).decode("utf-8", "replace") if value["v"].startswith("\\x") else value["v"]
            )
            assert not [c for c in clear if c in text], f"{column['table_name']}.{column['column_name']}"


async def test_one_pending_invite_per_patient_and_none_for_connected_patients(service: Service) -> None:
    practice = uuid.uuid4()
    first = await _created(service, practice, "ann@example.com")
    again = await _invite(service, practice, email="ANN@example.com", ssn="123456789")
    assert again.status_code == 409 and again.json()["type"] == "urn:collabkare:problem:already-invited"
    assert again.json()["invite"]["id"] == first["id"]
    await service.admin.execute(
        "INSERT INTO invitations.connected_patients VALUES ($1, $2, 'bob@example.com', 'bob@example.com', $3, now())",
        practice,
        uuid.uuid4(),
        uuid.uuid4(),
    )
    connected = await _invite(service, practice, email="Bob@example.com", ssn="123456789")
    assert connected.status_code == 409 and connected.json()["type"] == "urn:collabkare:problem:already-connected"
    elsewhere = await _invite(service, uuid.uuid4(), email="ann@example.com", ssn="123456789")
    assert elsewhere.status_code == 201


async def test_the_same_patient_whatever_the_case_of_non_ascii_letters(service: Service) -> None:
    """Keys were PostgreSQL's lower(), which under the C locale leaves "Ü" as it is: "ÜLA@…" and "üla@…" were two
    patients to the invite, and the history of one did not show the other's."""
    practice = uuid.uuid4()
    first = await _created(service, practice, "ÜLA@example.com")
    again = await _invite(service, practice, email="üla@example.com", ssn="123456789")
    assert again.status_code == 409 and again.json()["invite"]["id"] == first["id"]
    assert [item["id"] for item in await _history(service, practice, "Üla@example.com")] == [first["id"]]


async def test_revoke_publishes_invite_revoked_once(service: Service) -> None:
    practice = uuid.uuid4()
    invite = await _created(service, practice, "ann@example.com")
    revoked = await _act(service, practice, invite["id"], "revoke", "mgr-2")
    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["status"], revoked.json()["revoked_by"]) == ("revoked", "mgr-2")
    assert (await _act(service, practice, invite["id"], "revoke", "mgr-3")).json()["revoked_by"] == "mgr-2"
    (event,) = await service.events(practice, "InviteRevoked")
    assert event["payload"]["invite_id"] == invite["id"] and event["payload"]["revoked_by"] == "mgr-2"
    assert event["payload"]["replaced_by"] is None
    assert (await _created(service, practice, "ann@example.com"))["status"] == "pending", "revoked never blocks"
    assert (await _act(service, practice, str(uuid.uuid4()), "revoke", "m")).status_code == 404
    other = uuid.uuid4()
    for action in ("revoke", "resend"):  # each looks the invite up itself: each is checked
        foreign = await service.http.post(
            f"/v1/practices/{other}/invites/{invite['id']}/{action}", headers=staff(other, "practice_manager")
        )
        assert foreign.status_code == 404, (action, foreign.text)
    assert len(await service.events(practice, "InviteRequested")) == 2, "nothing resent from another practice"
    await service.admin.execute(
        "UPDATE invitations.invites SET status = 'accepted' WHERE id = $1", uuid.UUID(invite["id"])
    )
    refused = await _act(service, practice, invite["id"], "revoke", "m")
    assert refused.status_code == 409 and refused.json()["current_status"] == "accepted"


async def test_an_invite_revoked_or_accepted_after_it_was_chosen_to_be_replaced_is_not_revoked_again(
    service: Service,
) -> None:
    """Found by a concurrency review: a roster chose the undelivered invites it replaces, stored its rows for
    seconds, then revoked them; one staff had revoked meanwhile (revoking does not wait for the practice's lock)
    was revoked again, and a second InviteRevoked published. Here the replacing step meets each such state."""
    practice = uuid.uuid4()
    pending, revoked, accepted = [await _created(service, practice, f"{name}@example.com") for name in ("p", "r", "a")]
    assert (await _act(service, practice, revoked["id"], "revoke", "mgr-2")).status_code == 200
    await service.admin.execute(
        "UPDATE invitations.invites SET status = 'accepted' WHERE id = $1", uuid.UUID(accepted["id"])
    )
    successors = {invite["id"]: uuid.uuid4() for invite in (pending, revoked, accepted)}
    assert service.runtime.pool is not None
    async with service.runtime.pool.acquire() as db:
        rows = await batch_repository.replace_invites(
            db, datetime.now(UTC), "roster-staff", [(uuid.UUID(old), new) for old, new in successors.items()]
        )
    by_id = {str(row["id"]): row for row in rows}
    assert set(by_id) == {pending["id"], revoked["id"]}, "an accepted invite is nobody's to replace"
    assert by_id[pending["id"]]["revoked_now"] and by_id[pending["id"]]["revoked_by"] == "roster-staff"
    assert not by_id[revoked["id"]]["revoked_now"] and by_id[revoked["id"]]["revoked_by"] == "mgr-2"


async def test_a_practice_waiting_for_its_lock_does_not_hold_the_pool_from_the_others(service: Service) -> None:
    """Found by a concurrency review: while one practice stored a 100,000-line roster, its staff's waiting invite
    requests each held a pooled connection in the database's lock queue; with ten of them, every other practice's
    requests waited seconds for a connection."""
    busy, other = uuid.uuid4(), uuid.uuid4()
    async with service.admin.acquire() as holder, holder.transaction():
        await holder.execute(repository.LOCK_PRACTICE, busy)  # as another process storing a long roster
        waiting = [
            asyncio.create_task(_invite(service, busy, email=f"w{i}@example.com", ssn="123456789")) for i in range(15)
        ]
        async with asyncio.timeout(20):  # all fifteen are in, more than the pool's ten connections
            # and one of them waits in the database, behind the holder's advisory lock
            while practice_lock._TURNS.users(busy) < 15 or not await lock_waiters(service.admin, "advisory"):
                await asyncio.sleep(0.02)
        async with asyncio.timeout(20):  # a bound, not a speed: without the fix it waits for the holder
            elsewhere = await _invite(service, other, email="b@example.com", ssn="123456789")
        assert elsewhere.status_code == 201, elsewhere.text
        assert not any(task.done() for task in waiting), "the busy practice's requests still wait their turn"
    answers = await asyncio.gather(*waiting)
    assert [answer.status_code for answer in answers] == [201] * 15


async def test_resend_revokes_and_sends_a_new_token_and_history_keeps_everything(service: Service) -> None:
    practice = uuid.uuid4()
    first = await _created(service, practice, "ann@example.com", "staff-1")
    await _act(service, practice, first["id"], "revoke", "staff-2")
    second = await _created(service, practice, "ann@example.com", "staff-3")
    resent = await _act(service, practice, second["id"], "resend", "staff-4")
    assert resent.status_code == 201, resent.text
    previous, third = resent.json()["previous"], resent.json()["invite"]
    assert previous["status"] == "revoked" and previous["replaced_by"] == third["id"]
    assert third["resends"] == second["id"] and third["sent_by"] == "staff-4"
    assert third["identity_factors"] == ["ssn"] and third["note"] == "See you soon"

    history = await _history(service, practice, "Ann@Example.com")
    assert [(h["id"], h["status"], h["sent_by"], h["revoked_by"]) for h in history] == [
        (third["id"], "pending", "staff-4", None),
        (second["id"], "revoked", "staff-3", "staff-4"),
        (first["id"], "revoked", "staff-1", "staff-2"),
    ]
    assert all(h["sent_at"] and h["expires_at"] for h in history) and history[1]["revoked_at"]
    assert (history[1]["resent_by"], history[1]["resent_at"]) == ("staff-4", third["sent_at"])
    assert history[0]["resent_by"] is None and history[2]["resent_by"] is None, "revoked, not resent"
    requested = await service.requested(practice)
    urls = {requested[i]["payload"]["accept_url"] for i in (first["id"], second["id"], third["id"])}
    assert len(urls) == 3, "every invite has its own token"
    replaces = [requested[i]["payload"]["replaces"] for i in (first["id"], second["id"], third["id"])]
    assert replaces == [None, None, second["id"]], "a resend names the invite whose link it kills"
    revocations = {
        e["payload"]["invite_id"]: e["payload"]["replaced_by"] for e in await service.events(practice, "InviteRevoked")
    }
    assert revocations == {first["id"]: None, second["id"]: third["id"]}
    twice = await _act(service, practice, second["id"], "resend", "staff-5")
    assert twice.status_code == 409 and twice.json()["replaced_by"] == third["id"]
    # A black-box probe: revoking the resent invite answered 200 "revoked" while the newer one stayed live.
    stale = await _act(service, practice, second["id"], "revoke", "staff-5")
    assert stale.status_code == 409 and stale.json()["type"] == "urn:collabkare:problem:already-resent"
    assert stale.json()["replaced_by"] == third["id"]
    assert (await _act(service, practice, first["id"], "revoke", "staff-5")).status_code == 200, "revoked twice"

    # Each new invite is at its Location (integrators asked for one): the same view as the history's.
    assert resent.headers["location"] == f"/v1/practices/{practice}/invites/{third['id']}"
    one = await service.http.get(resent.headers["location"], headers=staff(practice))
    assert one.status_code == 200 and one.json() == history[0]
    replaced = await service.http.get(f"/v1/practices/{practice}/invites/{second['id']}", headers=staff(practice))
    assert replaced.json() == history[1], "with who resent it"
    created = await service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "zoe@example.com", "ssn": "123456789"},
        headers=staff(practice),
    )
    assert created.status_code == 201 and created.headers["location"].endswith(f"/invites/{created.json()['id']}")
    other = uuid.uuid4()  # its own staff, asking for this practice's invite
    elsewhere = await service.http.get(f"/v1/practices/{other}/invites/{third['id']}", headers=staff(other))
    assert elsewhere.status_code == 404
    assert await _history(service, uuid.uuid4(), "ann@example.com") == [], "history stays in its practice"
    bad = await service.http.get(f"/v1/practices/{practice}/invites?email=not-an-email", headers=staff(practice))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "email"


async def test_resend_works_on_an_expired_invite(service: Service) -> None:
    practice = uuid.uuid4()
    invite = await _created(service, practice, "ann@example.com")
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 minute' WHERE id = $1", uuid.UUID(invite["id"])
    )
    resent = await _act(service, practice, invite["id"], "resend", "mgr")
    assert resent.status_code == 201, resent.text
    assert resent.json()["previous"]["status"] == "expired" and resent.json()["invite"]["status"] == "pending"
    assert resent.json()["previous"]["resent_by"] == "mgr" and resent.json()["previous"]["revoked_by"] is None
    expired = [e["payload"]["invite_id"] for e in await service.events(practice, "InviteExpired")]
    assert expired == [invite["id"]], "expired once, by the sweeper or the resend, never both"
    assert await service.events(practice, "InviteRevoked") == []


async def test_the_sweeper_expires_invites_and_publishes_invite_expired(service: Service) -> None:
    practice = uuid.uuid4()
    invites = [await _created(service, practice, f"p{i}@example.com") for i in range(3)]
    due = [uuid.UUID(i["id"]) for i in invites[:2]]
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 second' WHERE id = ANY($1::uuid[])", due
    )
    expired = await service.wait_for(
        "SELECT count(*) FROM invitations.invites WHERE id = ANY($1::uuid[]) AND status = 'expired'", due, expect=2
    )
    assert expired == 2
    events = await service.events(practice, "InviteExpired")
    assert sorted(e["payload"]["invite_id"] for e in events) == sorted(str(i) for i in due)
    rows = await service.fetch(
        "SELECT id, expires_at, expired_at FROM invitations.invites WHERE id = ANY($1::uuid[])", due
    )
    assert all(r["expired_at"] == r["expires_at"] for r in rows)
    history = await _history(service, practice, "p0@example.com")
    assert history[0]["status"] == "expired" and history[0]["expired_at"]
    assert (await _created(service, practice, "p0@example.com"))["status"] == "pending", "expired never blocks"
    assert (await _history(service, practice, "p2@example.com"))[0]["status"] == "pending"


async def test_an_unswept_overdue_invite_does_not_block_a_roster(service: Service) -> None:
    practice = uuid.uuid4()
    invite = await _created(service, practice, "ann@example.com")
    # Past due a moment ago: the roster must not count it as pending, whether or not the sweeper got there.
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 millisecond' WHERE id = $1",
        uuid.UUID(invite["id"]),
    )
    batch = await service.submit(practice, "ann@example.com")
    assert batch["patients_ready"] == 1
    # The sweeper marks it expired and announces it (every 0.2 s here), not the roster: a roster sent as the
    # practice's 100,000 invites of last week ran out expired them all inside the request (6 s, 250 MiB).
    sql = "SELECT status FROM invitations.invites WHERE id = $1"
    await service.wait_for(sql, uuid.UUID(invite["id"]), expect="expired")
    statuses = await service.fetch(
        "SELECT status FROM invitations.invites WHERE practice_id = $1 ORDER BY created_at", practice
    )
    assert [r["status"] for r in statuses] == ["expired", "pending"]
    assert [e["payload"]["invite_id"] for e in await service.events(practice, "InviteExpired")] == [invite["id"]]


async def test_an_invite_replacing_one_its_patient_is_accepting_answers_already_connected(service: Service) -> None:
    """Found by a review: an individual invite replacing an undelivered one read it unlocked, so a patient accepting
    it at that moment was connected and sent a new invite asking for her SSN all the same (201). The roster path
    locks what it replaces; so does this one now."""
    practice = uuid.uuid4()
    await service.submit(practice, "ann@example.com")
    old = await service.fetchval("SELECT id FROM invitations.invites WHERE practice_id = $1", practice)
    # "Gave up ... the email may have arrived": an `error` delivery, replaceable, and the patient may hold the link.
    await service.admin.execute("UPDATE invitations.invites SET delivery = 'error' WHERE id = $1", old)
    invite = service.http.post(
        f"/v1/practices/{practice}/invites",
        json={"email": "ann@example.com", "ssn": "123-45-6789"},
        headers=staff(practice),
    )
    answer = await accepted_while(service, old, invite)
    assert answer.status_code == 409 and answer.json()["type"] == "urn:collabkare:problem:already-connected"
    invites = await service.fetch(
        "SELECT status, replaced_by FROM invitations.invites WHERE practice_id = $1", practice
    )
    assert [(r["status"], r["replaced_by"]) for r in invites] == [("accepted", None)]
