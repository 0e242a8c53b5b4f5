"""The connections API on real PostgreSQL and Kafka: requests, decisions, races, pagination and bad input."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from collabkare.stack.infra import Infrastructure
from services.runtime.auth import mint_token
from tests.integration.connections_harness import Service, running_service
from tests.support import JWT_SECRET, patient_token, staff_token

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    # One service for the module; every test works in practices of its own, so tests cannot see each other.
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


def _staff(practice_id: uuid.UUID, role: str = "front_desk", subject: str = "staff-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {staff_token(practice_id, role, subject)}"}


def _base(practice_id: uuid.UUID) -> str:
    return f"/v1/practices/{practice_id}/connection-requests"


async def _decide(
    service: Service, practice_id: uuid.UUID, request_id: str, action: str, subject: str = "staff-1", **kw: Any
) -> httpx.Response:
    url = f"{_base(practice_id)}/{request_id}/{action}"
    headers = {**_staff(practice_id, "practice_manager", subject), **kw.pop("headers", {})}
    return await service.http.post(url, headers=headers, **kw)


async def _request_row(service: Service, request_id: str) -> dict[str, Any]:
    rows = await service.fetch("SELECT * FROM connections.connection_requests WHERE id = $1", uuid.UUID(request_id))
    assert len(rows) == 1
    return dict(rows[0])


async def _audit(service: Service, practice_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await service.fetch(
        "SELECT action, actor FROM connections.audit_log WHERE practice_id = $1 ORDER BY id", practice_id
    )
    return [(r["action"], r["actor"]) for r in rows]


async def test_patient_asks_and_connection_requested_is_published(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    token = patient_token(patient, "Ann.Lee@example.com")
    response = await service.http.post(
        "/v1/connection-requests",
        json={"practice_id": str(practice), "message": "  Hello, I am a patient of Dr Kim  "},
        headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": "ask-1"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending" and body["message"] == "Hello, I am a patient of Dr Kim"
    assert body["patient_id"] == str(patient) and body["patient_email"] == "Ann.Lee@example.com"
    assert body["practice_id"] == str(practice) and body["decided_at"] is None
    (event,) = await service.events(practice)
    assert event["event_type"] == "ConnectionRequested" and event["producer"] == "connections"
    assert event["correlation_id"] == "ask-1"
    assert event["payload"]["request_id"] == body["id"]
    assert event["payload"]["patient_email"] == "Ann.Lee@example.com"
    assert event["payload"]["message"] == "Hello, I am a patient of Dr Kim"
    assert await _audit(service, practice) == [("requested", str(patient))]


async def test_the_tokens_name_claim_is_how_staff_see_the_request(service: Service) -> None:
    """OpenID Connect's `name` claim becomes the request's display_name (one line, no control characters)."""
    practice, named, unnamed = await service.practice(), uuid.uuid4(), uuid.uuid4()
    for patient, email, name in ((named, "ann@example.com", "  Ann\u0007  Lee\r\n"), (unnamed, "bo@example.com", None)):
        response = await service.http.post(
            "/v1/connection-requests",
            json={"practice_id": str(practice)},
            headers={"Authorization": f"Bearer {patient_token(patient, email, name=name)}"},
        )
        assert response.status_code == 201, response.text
    listed = await service.http.get(f"{_base(practice)}?status=pending", headers=_staff(practice))
    assert {i["patient_email"]: i["display_name"] for i in listed.json()["items"]} == {
        "ann@example.com": "Ann Lee",
        "bo@example.com": None,
    }
    events = {e["payload"]["patient_email"]: e["payload"]["display_name"] for e in await service.events(practice)}
    assert events == {"ann@example.com": "Ann Lee", "bo@example.com": None}


async def test_asking_twice_returns_the_pending_request_without_a_second_event(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    first = await service.ask(practice, patient)
    token = patient_token(patient, "p@example.com")
    again = await service.http.post(
        "/v1/connection-requests", json={"practice_id": str(practice)}, headers={"Authorization": f"Bearer {token}"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    # Asking twice at the same moment also ends with one request.
    racing = await asyncio.gather(*(service.ask(practice, patient) for _ in range(4)))
    assert {answer["id"] for answer in racing} == {first["id"]}
    rows = await service.fetch("SELECT id FROM connections.connection_requests WHERE practice_id = $1", practice)
    assert len(rows) == 1
    assert [e["event_type"] for e in await service.events(practice)] == ["ConnectionRequested"]


async def test_asking_while_connected_is_409(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    asked = await service.ask(practice, patient)
    approved = await _decide(service, practice, asked["id"], "approve")
    assert approved.status_code == 200
    token = patient_token(patient, "p@example.com")
    response = await service.http.post(
        "/v1/connection-requests", json={"practice_id": str(practice)}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM
    assert "already connected" in response.json()["detail"]
    assert response.json()["connection_id"] == approved.json()["connection_id"]
    assert response.json()["connected_at"] == approved.json()["decided_at"], "the same form as every timestamp"
    rows = await service.fetch("SELECT status FROM connections.connection_requests WHERE practice_id = $1", practice)
    assert [r["status"] for r in rows] == ["approved"]
    assert [e["event_type"] for e in await service.events(practice)] == ["ConnectionRequested", "ConnectionApproved"]


@pytest.mark.parametrize(
    ("rule", "subject", "email"),
    [
        ("sub claim must be a patient id", "not-a-uuid", "p@example.com"),
        ("email claim is required", str(uuid.uuid4()), None),
        ("email claim must be an email address", str(uuid.uuid4()), "not an email"),
    ],
    ids=["sub not a uuid", "no email", "email not an address"],
)
async def test_a_patient_token_that_names_no_patient_is_not_valid_and_writes_nothing(
    service: Service, rule: str, subject: str, email: str | None
) -> None:
    practice = await service.practice()
    token = mint_token(JWT_SECRET, subject, ["patient"], email=email)
    response = await service.http.post(
        "/v1/connection-requests", json={"practice_id": str(practice)}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert rule in response.json()["detail"]
    assert await service.fetch("SELECT 1 FROM connections.connection_requests WHERE practice_id = $1", practice) == []


async def test_asking_a_practice_the_platform_never_registered_is_a_422_naming_it(service: Service) -> None:
    practice, patient = uuid.uuid4(), uuid.uuid4()
    response = await service.http.post(
        "/v1/connection-requests",
        json={"practice_id": str(practice), "message": "hello"},
        headers={"Authorization": f"Bearer {patient_token(patient, 'ann@example.com')}"},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"] == [
        {
            "field": "practice_id",
            "rule": "registered_practice",
            "message": "No practice with this id is registered on CollabKare.",
        }
    ]
    assert await service.fetch("SELECT 1 FROM connections.connection_requests WHERE practice_id = $1", practice) == []
    assert await service.events(practice) == []


async def test_approve_connects_the_patient_and_publishes_what_the_notifier_needs(service: Service) -> None:
    practice, patient = await service.practice(), uuid.uuid4()
    asked = await service.ask(practice, patient)
    response = await _decide(
        service, practice, asked["id"], "approve", "manager-7", headers={"X-Correlation-ID": "ok-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "approved" and body["decided_by"] == "manager-7" and body["decided_at"]
    connections = await service.http.get(f"/v1/practices/{practice}/connections", headers=_staff(practice))
    assert connections.status_code == 200
    (connection,) = connections.json()["items"]
    assert connection["id"] == body["connection_id"] and connection["patient_id"] == str(patient)
    assert connection["via"] == "request" and connection["request_id"] == asked["id"]
    assert connections.json()["next_cursor"] is None
    requested, approved = await service.events(practice)
    assert requested["event_type"] == "ConnectionRequested"
    assert approved["event_type"] == "ConnectionApproved" and approved["correlation_id"] == "ok-1"
    payload = approved["payload"]
    assert approved["practice_id"] == str(practice)
    assert payload["patient_id"] == str(patient) and payload["patient_email"] == asked["patient_email"]
    assert payload["approved_by"] == "manager-7" and payload["via"] == "request"
    assert payload["request_id"] == asked["id"] and payload["connection_id"] == body["connection_id"]
    assert payload["approved_at"] and payload["invite_id"] is None
    assert await _audit(service, practice) == [("requested", str(patient)), ("approved", "manager-7")]


async def test_reject_trims_the_reason_and_publishes_it(service: Service) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    response = await _decide(service, practice, asked["id"], "reject", json={"reason": "  Not a patient here.  "})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rejected" and response.json()["reason"] == "Not a patient here."
    _, rejected = await service.events(practice)
    assert rejected["event_type"] == "ConnectionRejected"
    assert rejected["payload"]["reason"] == "Not a patient here."
    assert rejected["payload"]["rejected_by"] == "staff-1" and rejected["payload"]["request_id"] == asked["id"]
    assert await service.fetch("SELECT 1 FROM connections.connections WHERE practice_id = $1", practice) == []


async def test_a_patient_follows_her_request_to_its_decision_and_no_one_elses(service: Service) -> None:
    """The 201 named no Location, and a patient could not read her request again: a patient app had no way to
    show "pending", or a rejection and its reason, but the email."""
    practice, ann = await service.practice(), uuid.uuid4()
    ann_says = {"Authorization": f"Bearer {patient_token(ann, 'ann@example.com')}"}
    asked = await service.http.post("/v1/connection-requests", json={"practice_id": str(practice)}, headers=ann_says)
    again = await service.http.post("/v1/connection-requests", json={"practice_id": str(practice)}, headers=ann_says)
    location = asked.headers["location"]
    assert location == f"/v1/connection-requests/{asked.json()['id']}" and again.headers["location"] == location
    assert (await service.http.get(location, headers=ann_says)).json()["status"] == "pending"
    await _decide(service, practice, asked.json()["id"], "reject", json={"reason": "Not a patient here."})
    seen = (await service.http.get(location, headers=ann_says)).json()
    assert (seen["status"], seen["reason"], seen["decided_by"]) == ("rejected", "Not a patient here.", None)
    bob_says = {"Authorization": f"Bearer {patient_token(uuid.uuid4(), 'bob@example.com')}"}
    for path in (location, f"/v1/connection-requests/{uuid.uuid4()}"):
        other = await service.http.get(path, headers=bob_says)
        assert other.status_code == 404 and "ann@example.com" not in other.text


@pytest.mark.parametrize(
    "body", [None, {}, {"reason": None}, {"reason": "   "}], ids=["no body", "{}", "null", "blank"]
)
async def test_reject_without_a_reason_publishes_a_null_reason(service: Service, body: dict[str, Any] | None) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    response = await _decide(service, practice, asked["id"], "reject", **kwargs)
    assert response.status_code == 200, response.text
    assert response.json()["reason"] is None
    _, rejected = await service.events(practice)
    assert rejected["payload"]["reason"] is None


async def test_reason_of_exactly_500_characters_is_accepted(service: Service) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    response = await _decide(service, practice, asked["id"], "reject", json={"reason": "r" * 500 + "   "})
    assert response.status_code == 200
    assert response.json()["reason"] == "r" * 500


@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_the_same_decision_twice_is_idempotent(service: Service, action: str) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    first = await _decide(service, practice, asked["id"], action, "staff-a", json={"reason": "first"})
    second = await _decide(service, practice, asked["id"], action, "staff-b", json={"reason": "second"})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.json()["decided_by"] == "staff-a"
    assert len(await service.events(practice)) == 2  # the request, and one decision
    assert len(await _audit(service, practice)) == 2


@pytest.mark.parametrize(
    ("first", "then", "state"), [("approve", "reject", "approved"), ("reject", "approve", "rejected")]
)
async def test_the_opposite_decision_is_409_with_the_current_state(
    service: Service, first: str, then: str, state: str
) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    assert (await _decide(service, practice, asked["id"], first)).status_code == 200
    refused = await _decide(service, practice, asked["id"], then, "staff-2")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    assert problem["status"] == 409 and problem["current_status"] == state
    assert problem["connection_request"]["status"] == state and problem["connection_request"]["id"] == asked["id"]
    assert state in problem["detail"]
    assert (await _request_row(service, asked["id"]))["status"] == state
    assert len(await service.events(practice)) == 2
    assert len(await _audit(service, practice)) == 2


async def test_two_opposite_decisions_at_the_same_moment_have_exactly_one_winner(service: Service) -> None:
    assert service.runtime.settings.database_pool_max >= 2
    practice = await service.practice()
    for _ in range(10):
        asked = await service.ask(practice)
        approve, reject = await asyncio.gather(
            _decide(service, practice, asked["id"], "approve", "staff-a"),
            _decide(service, practice, asked["id"], "reject", "staff-b", json={"reason": "no"}),
        )
        assert sorted([approve.status_code, reject.status_code]) == [200, 409], (approve.text, reject.text)
        winner, loser = (approve, reject) if approve.status_code == 200 else (reject, approve)
        assert loser.json()["current_status"] == winner.json()["status"]
        assert (await _request_row(service, asked["id"]))["status"] == winner.json()["status"]
    events = await service.events(practice)
    decisions = [e for e in events if e["event_type"] != "ConnectionRequested"]
    per_request = [e["payload"]["request_id"] for e in decisions]
    assert len(per_request) == len(set(per_request)) == 10
    approvals = sum(e["event_type"] == "ConnectionApproved" for e in decisions)
    connections = await service.fetch("SELECT 1 FROM connections.connections WHERE practice_id = $1", practice)
    assert len(connections) == approvals


async def test_two_approvals_at_the_same_moment_connect_once(service: Service) -> None:
    practice = await service.practice()
    for _ in range(5):
        asked = await service.ask(practice)
        answers = await asyncio.gather(*(_decide(service, practice, asked["id"], "approve") for _ in range(2)))
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].json()["connection_id"] == answers[1].json()["connection_id"]
    approved = [e for e in await service.events(practice) if e["event_type"] == "ConnectionApproved"]
    assert len(approved) == 5
    assert len(await service.fetch("SELECT 1 FROM connections.connections WHERE practice_id = $1", practice)) == 5


async def test_pending_list_is_newest_first_and_pages_stay_stable_while_requests_arrive(service: Service) -> None:
    practice = await service.practice()
    older = [(await service.ask(practice))["id"] for _ in range(7)]
    decided = await service.ask(practice)
    await _decide(service, practice, decided["id"], "approve")
    seen: list[str] = []
    cursor = None
    pages = 0
    while pages < 20:  # bounded: an API that kept handing out cursors fails the assertion below, not the timeout
        params: dict[str, Any] = {"status": "pending", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await service.http.get(_base(practice), params=params, headers=_staff(practice))
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        assert all(item["status"] == "pending" for item in page.json()["items"])
        cursor = page.json()["next_cursor"]
        pages += 1
        if pages == 1:
            # New requests arrive between pages: they sort before the cursor and shift nothing.
            for _ in range(2):
                await service.ask(practice)
        if cursor is None:
            break
    assert seen == list(reversed(older)), "a row was skipped, repeated or out of order"
    assert pages == 3
    everything = await service.http.get(_base(practice), params={"limit": 200}, headers=_staff(practice))
    assert len(everything.json()["items"]) == 10 and everything.json()["next_cursor"] is None
    # An empty status, as a form sends it, is no filter (it was a 422, while a batch's `?outcome=` was not).
    unfiltered = await service.http.get(_base(practice), params={"limit": 200, "status": ""}, headers=_staff(practice))
    assert unfiltered.json() == everything.json()
    approved = await service.http.get(_base(practice), params={"status": "approved"}, headers=_staff(practice))
    assert [item["id"] for item in approved.json()["items"]] == [decided["id"]]


async def test_connections_list_pages(service: Service) -> None:
    practice = await service.practice()
    for _ in range(3):
        asked = await service.ask(practice)
        await _decide(service, practice, asked["id"], "approve")
    url = f"/v1/practices/{practice}/connections"
    first = await service.http.get(url, params={"limit": 2}, headers=_staff(practice))
    second = await service.http.get(
        url, params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=_staff(practice)
    )
    ids = [c["id"] for c in first.json()["items"] + second.json()["items"]]
    assert len(ids) == len(set(ids)) == 3
    assert second.json()["next_cursor"] is None


def _cursor_of(moment: str) -> str:
    return base64.urlsafe_b64encode(f"{moment}|{uuid.uuid4()}".encode()).decode().rstrip("=")


_BAD_PAGING = [
    ({"limit": 0}, "limit"),
    ({"limit": 201}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "MjAyNi0wMS0wMXxub3QtYS11dWlk"}, "cursor"),  # base64 of a date and a non-UUID
    # Edited cursors whose moment no timestamp can hold once in UTC: they were 500s.
    *(
        ({"cursor": _cursor_of(moment)}, "cursor")
        for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
    ),
]
BAD_LIST_PARAMETERS = [
    *(("connection-requests", params, field) for params, field in [*_BAD_PAGING, ({"status": "maybe"}, "status")]),
    *(("connections", params, field) for params, field in _BAD_PAGING),
]


@pytest.mark.parametrize(("path", "params", "field"), BAD_LIST_PARAMETERS)
async def test_bad_list_parameters_name_the_field(
    service: Service, path: str, params: dict[str, Any], field: str
) -> None:
    practice = await service.practice()
    response = await service.http.get(f"/v1/practices/{practice}/{path}", params=params, headers=_staff(practice))
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert [e["field"] for e in response.json()["errors"]] == [field]


BAD_DECISIONS: dict[str, tuple[str, dict[str, Any], int, str | None]] = {
    # case: (which request / action, request kwargs, status, field named in errors)
    "unknown request id": (f"{uuid.uuid4()}/approve", {}, 404, None),
    "unknown request id, reject": (f"{uuid.uuid4()}/reject", {"json": {"reason": "x"}}, 404, None),
    "malformed request id": ("not-a-uuid/approve", {}, 422, "request_id"),
    "oversized reason": ("{id}/reject", {"json": {"reason": "r" * 501}}, 422, "reason"),
    "reason not a string": ("{id}/reject", {"json": {"reason": 42}}, 422, "reason"),
    "unknown field": ("{id}/reject", {"json": {"reasons": "typo"}}, 422, "reasons"),
    "wrong content type": (
        "{id}/reject",
        {"content": b"reason=no", "headers": {"Content-Type": "text/plain"}},
        415,
        None,
    ),
    "no content type": ("{id}/reject", {"content": b'{"reason": "no"}'}, 415, None),
    # JSON is UTF-8: a Latin-1 body was read as UTF-8 (a 422 for its "é", or garbled text had it been valid).
    "charset other than UTF-8": (
        "{id}/reject",
        {
            "content": '{"reason": "Renée"}'.encode("latin-1"),
            "headers": {"Content-Type": "application/json; charset=ISO-8859-1"},
        },
        415,
        None,
    ),
    "invalid JSON": (
        "{id}/reject",
        {"content": b'{"reason": ', "headers": {"Content-Type": "application/json"}},
        422,
        "body",
    ),
    "JSON array": ("{id}/reject", {"json": ["no"]}, 422, None),
    # PostgreSQL cannot store U+0000 (it was a 500); no control character belongs in the patient's email.
    "NUL in the reason": ("{id}/reject", {"json": {"reason": "bad\u0000reason"}}, 422, "reason"),
    "control character in the reason": ("{id}/reject", {"json": {"reason": "bell\u0007"}}, 422, "reason"),
    "C1 control (NEL) in the reason": ("{id}/reject", {"json": {"reason": "next\u0085line"}}, 422, "reason"),
    "right-to-left override in the reason": ("{id}/reject", {"json": {"reason": "see \u202efdp.exe"}}, 422, "reason"),
}


@pytest.mark.parametrize("case", list(BAD_DECISIONS))
async def test_bad_decision_input_is_a_problem_and_changes_nothing(service: Service, case: str) -> None:
    target, kwargs, status, field = BAD_DECISIONS[case]
    practice = await service.practice()
    asked = await service.ask(practice)
    # The table is shared by every run in the process: read it, never pop from it.
    request = {key: value for key, value in kwargs.items() if key != "headers"}
    headers = {**_staff(practice), **kwargs.get("headers", {})}
    response = await service.http.post(f"{_base(practice)}/{target.format(id=asked['id'])}", headers=headers, **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status and response.json()["detail"]
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]]
        assert all(
            e["rule"] != "value_error" and not e["message"].startswith("Value error") for e in response.json()["errors"]
        )
    assert (await _request_row(service, asked["id"]))["status"] == "pending"
    assert [e["event_type"] for e in await service.events(practice)] == ["ConnectionRequested"]
    assert len(await _audit(service, practice)) == 1


BAD_ASKS: dict[str, tuple[dict[str, Any], int, str | None]] = {
    "malformed practice id": ({"json": {"practice_id": "nope"}}, 422, "practice_id"),
    "missing practice id": ({"json": {"message": "hi"}}, 422, "practice_id"),
    "oversized message": ({"json": {"practice_id": "{practice}", "message": "m" * 501}}, 422, "message"),
    "NUL in the message": ({"json": {"practice_id": "{practice}", "message": "hi\u0000there"}}, 422, "message"),
    "wrong content type": (
        {"content": b"practice_id={practice}", "headers": {"Content-Type": "text/plain"}},
        415,
        None,
    ),
    "invalid JSON": ({"content": b'{"practice_id": ', "headers": {"Content-Type": "application/json"}}, 422, "body"),
    "unknown field": ({"json": {"practice_id": "{practice}", "note": "hi"}}, 422, "note"),
    "wrong type": ({"json": {"practice_id": "{practice}", "message": 42}}, 422, "message"),
}


@pytest.mark.parametrize("case", list(BAD_ASKS))
async def test_bad_ask_is_a_problem_and_changes_nothing(service: Service, case: str) -> None:
    kwargs, status, field = BAD_ASKS[case]
    practice = await service.practice()
    token = patient_token(uuid.uuid4(), "p@example.com")
    headers = {"Authorization": f"Bearer {token}", **kwargs.get("headers", {})}
    call: dict[str, Any] = {"headers": headers}
    if "json" in kwargs:
        call["json"] = {k: v.format(practice=practice) if isinstance(v, str) else v for k, v in kwargs["json"].items()}
    else:
        call["content"] = kwargs["content"].replace(b"{practice}", str(practice).encode())
    response = await service.http.post("/v1/connection-requests", **call)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]]
    assert await service.fetch("SELECT 1 FROM connections.connection_requests WHERE practice_id = $1", practice) == []
    assert await service.events(practice) == []


async def test_another_practices_request_is_not_found_from_your_own_practice(service: Service) -> None:
    theirs, ours = await service.practice(), await service.practice()
    asked = await service.ask(theirs)
    for action in ("approve", "reject"):
        response = await _decide(service, ours, asked["id"], action)
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    assert (await _request_row(service, asked["id"]))["status"] == "pending"
    listed = await service.http.get(_base(ours), headers=_staff(ours))
    assert listed.json() == {"items": [], "next_cursor": None}


async def test_the_audit_log_is_append_only_even_for_the_services_own_role(service: Service) -> None:
    practice = await service.practice()
    asked = await service.ask(practice)
    await _decide(service, practice, asked["id"], "reject", json={"reason": "no"})
    own = await asyncpg.connect(service.database.url_for("connections"))
    try:
        for statement in (
            "UPDATE connections.audit_log SET reason = 'changed' WHERE practice_id = $1",
            "DELETE FROM connections.audit_log WHERE practice_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await own.execute(statement, practice)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await own.execute("TRUNCATE connections.audit_log")
    finally:
        await own.close()
    assert await _audit(service, practice) == [("requested", asked["patient_id"]), ("rejected", "staff-1")]


async def test_one_patients_changes_at_two_practices_take_turns(service: Service) -> None:
    """A black-box check: a patient's events share one key on connections.v1, but her lock was the practice's and
    hers, so an approval at one practice and her request to another ran at once and were dated against the order of
    their commits (a consumer keeping one high-water mark per patient dropped the approval)."""
    from services.connections import repository
    from tests.support import lock_waiters

    patient = uuid.uuid4()
    first, second = [await asyncpg.connect(service.database.admin_url) for _ in range(2)]
    try:
        holding = first.transaction()
        await holding.start()
        await repository.lock_patient(first, uuid.uuid4(), patient)
        waiting = asyncio.create_task(_locked(second, uuid.uuid4(), patient))
        async with asyncio.timeout(20):
            while not await lock_waiters(service.admin, "advisory"):
                await asyncio.sleep(0.05)
        assert not waiting.done(), "the other practice's change waits for the first"
        await holding.rollback()
        async with asyncio.timeout(20):
            await waiting
    finally:
        await first.close()
        await second.close()


async def _locked(db: asyncpg.Connection, practice: uuid.UUID, patient: uuid.UUID) -> None:
    from services.connections import repository

    async with db.transaction():
        await repository.lock_patient(db, practice, patient)
