"""InviteAccepted from the real broker: the connection is made once, announced once, and never made twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from collabkare.seeding import practice_registered, publish
from collabkare.stack.infra import Infrastructure
from schemas import InviteAccepted, PatientRegistered
from schemas.events import InviteAcceptedPayload
from services.connections import handlers
from tests.integration.connections_harness import Service, running_service
from tests.support import patient_token, produce, read_to_end, staff_token


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=True) as running:
        yield running


def _accepted(
    practice_id: uuid.UUID | None,
    patient_id: uuid.UUID,
    correlation_id: str = "accept-1",
    invited_by: str | None = "front-desk-3",
) -> InviteAccepted:
    return InviteAccepted(
        producer="invitations",
        practice_id=practice_id,
        correlation_id=correlation_id,
        payload=InviteAcceptedPayload(
            invite_id=uuid.uuid4(),
            patient_id=patient_id,
            patient_email=f"p{patient_id.hex[:6]}@example.com",
            accepted_at=datetime.now(UTC),
            invited_by=invited_by,
        ),
    )


async def _publish(service: Service, *events: InviteAccepted, key: bytes = b"same-partition") -> None:
    # One key for all: the events share a partition, so a later one is applied only after the earlier ones.
    messages: list[tuple[bytes | None, bytes]] = [(key, event.model_dump_json().encode()) for event in events]
    await produce(service.bootstrap, service.topic_prefix + "invitations.v1", messages)


async def _connections(service: Service, practice_id: uuid.UUID) -> list[asyncpg.Record]:
    return await service.fetch(
        "SELECT * FROM connections.connections WHERE practice_id = $1 ORDER BY connected_at", practice_id
    )


async def _applied(service: Service, event: InviteAccepted, timeout: float = 20.0) -> None:
    """Wait until the consumer has recorded the event in its inbox (applied, or found to change nothing)."""
    async with asyncio.timeout(timeout):
        while not await service.fetch("SELECT 1 FROM connections.inbox WHERE event_id = $1", event.event_id):
            await asyncio.sleep(0.05)


async def test_a_practice_registered_on_the_platform_topic_can_be_asked_to_connect(service: Service) -> None:
    practice = uuid.uuid4()
    token = {"Authorization": f"Bearer {patient_token(uuid.uuid4(), 'ann@example.com')}"}
    before = await service.http.post("/v1/connection-requests", json={"practice_id": str(practice)}, headers=token)
    assert before.status_code == 422, before.text
    registered = practice_registered(practice, "Riverside Family Practice")
    await publish(service.bootstrap, service.topic_prefix, [registered])
    async with asyncio.timeout(20):
        while not await service.fetch("SELECT 1 FROM connections.practices WHERE practice_id = $1", practice):
            await asyncio.sleep(0.05)
    after = await service.http.post("/v1/connection-requests", json={"practice_id": str(practice)}, headers=token)
    assert after.status_code == 201, after.text


async def test_a_practice_the_platform_deleted_can_no_longer_be_asked_to_connect(service: Service) -> None:
    """platform.practices.v1 is compacted: a tombstone (the practice's id as key, no value) is how the platform
    deletes it. It was dead-lettered, and patients could still ask to connect to a practice gone from CollabKare."""
    practice = uuid.uuid4()
    token = {"Authorization": f"Bearer {patient_token(uuid.uuid4(), 'ann@example.com')}"}
    await publish(service.bootstrap, service.topic_prefix, [practice_registered(practice, "Closing Practice")])
    known = "SELECT count(*) FROM connections.practices WHERE practice_id = $1"
    async with asyncio.timeout(20):
        while not await service.fetchval(known, practice):
            await asyncio.sleep(0.05)
    await produce(service.bootstrap, service.topic_prefix + "platform.practices.v1", [(str(practice).encode(), None)])
    async with asyncio.timeout(20):
        while await service.fetchval(known, practice):
            await asyncio.sleep(0.05)
    asked = await service.http.post("/v1/connection-requests", json={"practice_id": str(practice)}, headers=token)
    assert asked.status_code == 422, asked.text


async def test_a_practice_the_platform_deleted_has_its_pending_requests_withdrawn(service: Service) -> None:
    """A platform team's probe: staff of a deleted practice could still approve its pending requests, announcing a
    ConnectionApproved the notifier mailed as "connected to your practice", unnamed. They go, with the audit saying
    why; a decided request, its connection and another practice's request stay."""
    practice, other = await service.practice(), await service.practice()
    pending = await service.ask(practice)
    decided = await service.ask(practice)
    approve = f"/v1/practices/{practice}/connection-requests/{decided['id']}/approve"
    assert (await service.http.post(approve, headers=_staff(practice))).status_code == 200
    elsewhere = await service.ask(other)

    await produce(service.bootstrap, service.topic_prefix + "platform.practices.v1", [(str(practice).encode(), None)])
    mine = "SELECT count(*) FROM connections.connection_requests WHERE practice_id = $1 AND status = 'pending'"
    async with asyncio.timeout(20):
        while await service.fetchval(mine, practice):
            await asyncio.sleep(0.05)

    gone = f"/v1/practices/{practice}/connection-requests/{pending['id']}/approve"
    assert (await service.http.post(gone, headers=_staff(practice))).status_code == 404
    listed = await service.http.get(f"/v1/practices/{practice}/connection-requests", headers=_staff(practice))
    assert [r["id"] for r in listed.json()["items"]] == [decided["id"]]
    statuses = await service.fetch(
        "SELECT status FROM connections.connection_requests WHERE practice_id = $1", practice
    )
    assert [r["status"] for r in statuses] == ["approved"]
    assert len(await _connections(service, practice)) == 1
    audit = await service.fetch(
        "SELECT request_id, actor, reason FROM connections.audit_log WHERE practice_id = $1 AND action = 'withdrawn'",
        practice,
    )
    assert [(a["request_id"], a["actor"], a["reason"]) for a in audit] == [
        (uuid.UUID(pending["id"]), "platform", "the practice was deleted from CollabKare")
    ]
    theirs = f"/v1/practices/{other}/connection-requests"
    assert [r["id"] for r in (await service.http.get(theirs, headers=_staff(other))).json()["items"]] == [
        elsewhere["id"]
    ]


async def test_a_patient_the_platform_deleted_withdraws_her_pending_requests(service: Service) -> None:
    """A review: connections did not read platform.patients.v1, so a deleted patient's pending requests stayed on the
    staff's list (her address, name and message), and approving one connected an account that no longer exists.
    Her requests at every practice go, decided ones and another patient's stay, and the audit says so; her
    registrations on the topic are no business of this group (skipped, not dead-lettered)."""
    first, second, third = await service.practice(), await service.practice(), await service.practice()
    patient, other = uuid.uuid4(), uuid.uuid4()
    pending = [await service.ask(first, patient), await service.ask(second, patient)]
    decided = await service.ask(third, patient)
    approve = f"/v1/practices/{third}/connection-requests/{decided['id']}/approve"
    assert (await service.http.post(approve, headers=_staff(third))).status_code == 200
    kept = await service.ask(first, other)
    registered = PatientRegistered(
        producer="platform",
        correlation_id="t",
        payload={"patient_id": patient, "email": "gone@example.com", "registered_at": datetime.now(UTC)},
    )
    await produce(
        service.bootstrap,
        service.topic_prefix + "platform.patients.v1",
        [(str(patient).encode(), registered.model_dump_json().encode()), (str(patient).encode(), None)],
    )
    mine = "SELECT count(*) FROM connections.connection_requests WHERE patient_id = $1 AND status = 'pending'"
    async with asyncio.timeout(20):
        while await service.fetchval(mine, patient):
            await asyncio.sleep(0.05)

    listed = await service.http.get(f"/v1/practices/{first}/connection-requests", headers=_staff(first))
    assert [r["id"] for r in listed.json()["items"]] == [kept["id"]]
    gone = f"/v1/practices/{second}/connection-requests/{pending[1]['id']}/approve"
    assert (await service.http.post(gone, headers=_staff(second))).status_code == 404
    statuses = await service.fetch("SELECT status FROM connections.connection_requests WHERE patient_id = $1", patient)
    assert [r["status"] for r in statuses] == ["approved"]
    audit = await service.fetch(
        "SELECT practice_id, request_id, actor, reason FROM connections.audit_log"
        " WHERE patient_id = $1 AND action = 'withdrawn' ORDER BY practice_id",
        patient,
    )
    expected = sorted((uuid.UUID(r["practice_id"]), uuid.UUID(r["id"])) for r in pending)
    assert [(a["practice_id"], a["request_id"]) for a in audit] == expected
    assert {(a["actor"], a["reason"]) for a in audit} == {("platform", "the patient's CollabKare account was deleted")}
    dead = await read_to_end(service.bootstrap, service.topic_prefix + "connections.dead-letter.v1")
    assert [d for d in dead if d.key == str(patient).encode()] == []

    # Her token outlives her account: it makes no new request (a black-box check: 201, and staff approved it) ...
    token = {"Authorization": f"Bearer {patient_token(patient, 'gone@example.com')}"}
    again = await service.http.post("/v1/connection-requests", json={"practice_id": str(first)}, headers=token)
    assert again.status_code == 403, again.text
    assert again.json()["type"] == "urn:collabkare:problem:account-deleted"
    # ... until she registers again.
    back = registered.model_copy(update={"event_id": uuid.uuid4()})
    await produce(
        service.bootstrap,
        service.topic_prefix + "platform.patients.v1",
        [(str(patient).encode(), back.model_dump_json().encode())],
    )
    marked = "SELECT count(*) FROM connections.deleted_patients WHERE patient_id = $1"
    async with asyncio.timeout(20):
        while await service.fetchval(marked, patient):
            await asyncio.sleep(0.05)
    welcome = await service.http.post("/v1/connection-requests", json={"practice_id": str(first)}, headers=token)
    assert welcome.status_code == 201, welcome.text


def _staff(practice_id: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {staff_token(practice_id)}"}


async def test_redelivered_invite_accepted_connects_and_announces_once(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    accepted = _accepted(practice, patient)
    await _publish(service, accepted)
    await _applied(service, accepted)
    # The same event again (a redelivery after the first was committed), then a marker behind it: one published
    # before InviteAccepted said who sent the invite.
    marker = _accepted(practice, uuid.uuid4(), invited_by=None)
    await _publish(service, accepted, marker)
    await _applied(service, marker)

    rows = await _connections(service, practice)
    assert [(r["patient_id"], r["via"], r["invite_id"]) for r in rows] == [
        (patient, "invite", accepted.payload.invite_id),
        (marker.payload.patient_id, "invite", marker.payload.invite_id),
    ]
    events = [e for e in await service.events(practice) if e["payload"]["patient_id"] == str(patient)]
    assert len(events) == 1
    (approved,) = events
    assert approved["event_type"] == "ConnectionApproved" and approved["producer"] == "connections"
    assert approved["correlation_id"] == "accept-1" and approved["causation_id"] == str(accepted.event_id)
    payload = approved["payload"]
    assert payload["via"] == "invite" and payload["invite_id"] == str(accepted.payload.invite_id)
    assert payload["request_id"] is None and payload["connection_id"] == str(rows[0]["id"])
    assert payload["patient_email"] == accepted.payload.patient_email
    assert payload["approved_by"] == "front-desk-3", "the staff member who sent the invite"
    listed = await service.http.get(
        f"/v1/practices/{practice}/connections",
        headers={"Authorization": f"Bearer {staff_token(practice)}"},
    )
    assert {c["patient_id"]: c["approved_by"] for c in listed.json()["items"]} == {
        str(patient): "front-desk-3",
        str(marker.payload.patient_id): str(marker.payload.patient_id),  # no sender named: the patient stands in
    }


async def test_invite_accepted_for_a_patient_already_connected_changes_nothing(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    asked = await service.ask(practice, patient)
    approve = await service.http.post(
        f"/v1/practices/{practice}/connection-requests/{asked['id']}/approve",
        headers={"Authorization": f"Bearer {staff_token(practice)}"},
    )
    assert approve.status_code == 200
    before = await service.events(practice)
    audit_before = await service.fetch("SELECT * FROM connections.audit_log WHERE practice_id = $1", practice)

    late = _accepted(practice, patient)
    await _publish(service, late)
    await _applied(service, late)

    rows = await _connections(service, practice)
    assert [(r["via"], str(r["request_id"])) for r in rows] == [("request", asked["id"])]
    assert await service.events(practice) == before
    assert [e["event_type"] for e in before] == ["ConnectionRequested", "ConnectionApproved"]
    assert await service.fetch("SELECT * FROM connections.audit_log WHERE practice_id = $1", practice) == audit_before


async def test_accepted_invite_answers_the_patients_pending_request(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    asked = await service.ask(practice, patient)
    accepted = _accepted(practice, patient)
    await _publish(service, accepted)
    await _applied(service, accepted)

    (connection,) = await _connections(service, practice)
    assert connection["via"] == "invite"
    request = (
        await service.fetch("SELECT * FROM connections.connection_requests WHERE id = $1", uuid.UUID(asked["id"]))
    )[0]
    assert request["status"] == "approved" and request["decided_by"] == "front-desk-3" == connection["approved_by"]
    assert request["connection_id"] == connection["id"]

    headers = {"Authorization": f"Bearer {staff_token(practice)}"}
    base = f"/v1/practices/{practice}/connection-requests/{asked['id']}"
    again = await service.http.post(f"{base}/approve", headers=headers)
    assert again.status_code == 200 and again.json()["connection_id"] == str(connection["id"])
    refused = await service.http.post(f"{base}/reject", headers=headers)
    assert refused.status_code == 409 and refused.json()["current_status"] == "approved"
    events = await service.events(practice)
    assert [(e["event_type"], e["payload"].get("via")) for e in events] == [
        ("ConnectionRequested", None),
        ("ConnectionApproved", "invite"),
    ]


async def test_an_ask_while_an_accepted_invite_is_being_applied_finds_the_patient_connected(service: Service) -> None:
    """Found by a concurrency review: an ask made while the consumer's batch had connected the patient but not yet
    committed saw no connection and stored a pending request (201) beside it; approving that request then failed
    on the unique index (500), and rejecting it emailed a connected patient that the practice had refused her."""
    practice, patient = await service.practice(), uuid.uuid4()
    accepted = _accepted(practice, patient)
    token = patient_token(patient, accepted.payload.patient_email)
    assert service.runtime.pool is not None
    async with service.runtime.pool.acquire() as db, db.transaction():
        await handlers.connect_invited(db, [accepted])  # as the consumer applies it: done, not yet committed
        ask = asyncio.create_task(
            service.http.post(
                "/v1/connection-requests",
                json={"practice_id": str(practice)},
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        async with asyncio.timeout(20):  # until the ask waits for this transaction's lock: the race, for certain
            while not await db.fetchval(
                # pg_locks is read afresh each time; pg_stat_activity once per transaction, missing later sessions
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            ):
                await asyncio.sleep(0.02)
    answer = await ask
    assert answer.status_code == 409, answer.text  # connected: nothing to ask for
    requests = await service.fetch(
        "SELECT status FROM connections.connection_requests WHERE practice_id = $1", practice
    )
    assert requests == []
    assert len(await _connections(service, practice)) == 1


async def test_invite_accepted_without_a_practice_is_dead_lettered_and_changes_nothing(service: Service) -> None:
    patient = uuid.uuid4()
    orphan = _accepted(None, patient)
    await _publish(service, orphan, key=b"orphan")
    dead_letters = service.topic_prefix + "connections.dead-letter.v1"
    async with asyncio.timeout(20):
        while not (records := await read_to_end(service.bootstrap, dead_letters)):
            await asyncio.sleep(0.1)
    assert len(records) == 1
    assert orphan.model_dump_json().encode() == records[0].value
    assert b"practice_id" in dict(records[0].headers)["dead_letter_reason"]
    assert await service.fetch("SELECT 1 FROM connections.connections WHERE patient_id = $1", patient) == []
    assert [e for e in await service.events() if e["payload"]["patient_id"] == str(patient)] == []
