"""Who may call what: every invitations endpoint against every kind of caller, and refusals change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from collabkare.stack.infra import Infrastructure
from tests.authz import (
    Endpoint,
    callers,
    check_refusal,
    check_refused_before_the_body,
    documented_operations,
    expected,
    headers,
    matrix_operations,
)
from tests.integration.invitations_harness import Service, running_service

PATIENT_EMAIL = "bob@example.com"  # the roster's second line: the patient callers are Bob


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


# {practice}, {batch} and {invite} in paths, {token} in bodies, are filled in per test.
_BATCH = "/v1/practices/{practice}/invite-batches/{batch}"
_INVITE = "/v1/practices/{practice}/invites/{invite}"
ENDPOINTS = {
    "preview": Endpoint("POST", "/v1/practices/{practice}/roster/preview", {"roster": "cat@example.com"}, False, 200),
    "send roster": Endpoint(
        "POST", "/v1/practices/{practice}/invite-batches", {"roster": "cat@example.com"}, False, 202
    ),
    "batch summary": Endpoint("GET", _BATCH, None, False, 200),
    "batch rows": Endpoint("GET", _BATCH + "/rows?outcome=queued", None, False, 200),
    "not on platform": Endpoint("GET", _BATCH + "/not-on-platform", None, False, 200),
    "resend not on platform": Endpoint("POST", _BATCH + "/resend-not-on-platform", None, False, 202),
    "invite one": Endpoint(
        "POST", "/v1/practices/{practice}/invites", {"email": "cat@example.com", "ssn": "123456789"}, False, 201
    ),
    "access history": Endpoint("GET", "/v1/practices/{practice}/invites?email=ann@example.com", None, False, 200),
    "one invite": Endpoint("GET", _INVITE, None, False, 200),
    "revoke": Endpoint("POST", _INVITE + "/revoke", None, False, 200),
    "resend": Endpoint("POST", _INVITE + "/resend", None, False, 201),
    "accept": Endpoint("POST", "/v1/invites/accept", {"token": "{token}"}, True, 200),
}

CALLERS = callers(PATIENT_EMAIL)


def test_the_matrix_covers_every_documented_operation() -> None:
    """A route added later without a row here would go untested for every kind of caller."""
    assert matrix_operations(ENDPOINTS) == documented_operations("invitations")


@pytest.mark.parametrize("name", [name for name, endpoint in ENDPOINTS.items() if endpoint.body is not None])
async def test_a_refused_caller_is_refused_before_a_broken_body_is_read(service: Service, name: str) -> None:
    await check_refused_before_the_body(service.http, ENDPOINTS[name], CALLERS)


async def _state(service: Service, practice: uuid.UUID) -> tuple[int, list[tuple[str, str]]]:
    batches = await service.fetchval("SELECT count(*) FROM invitations.batches WHERE practice_id = $1", practice)
    invites = await service.fetch("SELECT email, status FROM invitations.invites WHERE practice_id = $1", practice)
    return batches, sorted((r["email"], r["status"]) for r in invites)


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_authorisation_matrix(service: Service, name: str, caller: str) -> None:
    endpoint = ENDPOINTS[name]
    practice, patient = uuid.uuid4(), uuid.uuid4()
    # Real data in the path's practice, so that a refusal has something it could leak or change.
    batch = await service.submit(practice, f"ann@example.com\n{PATIENT_EMAIL}")
    rows = await service.fetch(
        "SELECT r.email, r.invite_id FROM invitations.invites i JOIN invitations.batch_rows r"
        " ON r.invite_id = i.id WHERE r.batch_id = $1",
        uuid.UUID(batch["batch_id"]),
    )
    invites = {r["email"]: str(r["invite_id"]) for r in rows}
    token = ""
    if endpoint.for_patients:  # reading the topic back is the slow part: only where the token is needed
        requested = await service.requested(practice)
        token = requested[invites[PATIENT_EMAIL]]["payload"]["accept_url"].split("?token=")[1]
    before = await _state(service, practice)

    path = endpoint.path.format(practice=practice, batch=batch["batch_id"], invite=invites["ann@example.com"])
    body = {k: v.format(token=token) for k, v in endpoint.body.items()} if endpoint.body else None
    response = await service.http.request(
        endpoint.method, path, json=body, headers=headers(CALLERS[caller], practice, patient)
    )

    status = expected(endpoint, caller)
    assert response.status_code == status, response.text
    check_refusal(endpoint, response, status)
    if status >= 400:
        # `instance` echoes the caller's own path; nothing else may carry the practice's data.
        assert "example.com" not in response.text and batch["batch_id"] not in response.json()["detail"]
        assert await _state(service, practice) == before, "a refused call changed something"
    if status < 400:
        _check_success(
            name,
            response.json() if name != "not on platform" else response.text,
            before,
            await _state(service, practice),
        )


def _check_success(
    name: str, answer: Any, before: tuple[int, list[tuple[str, str]]], after: tuple[int, list[tuple[str, str]]]
) -> None:
    changes = {
        "send roster": (
            2,
            [("ann@example.com", "pending"), ("bob@example.com", "pending"), ("cat@example.com", "pending")],
        ),
        "invite one": (
            1,
            [("ann@example.com", "pending"), ("bob@example.com", "pending"), ("cat@example.com", "pending")],
        ),
        "revoke": (1, [("ann@example.com", "revoked"), ("bob@example.com", "pending")]),
        "resend": (1, [("ann@example.com", "pending"), ("ann@example.com", "revoked"), ("bob@example.com", "pending")]),
        "accept": (1, [("ann@example.com", "pending"), ("bob@example.com", "accepted")]),
    }
    assert after == changes.get(name, before)
    if name == "preview":
        assert answer["patients_ready"] == 1
    elif name == "batch rows":
        assert [row["email"] for row in answer["items"]] == ["ann@example.com", "bob@example.com"]
    elif name == "access history":
        assert [item["email"] for item in answer["items"]] == ["ann@example.com"]
    elif name == "not on platform":
        assert answer == ""
    elif name == "resend not on platform":
        assert answer["resent"] == 0
