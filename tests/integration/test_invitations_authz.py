"""Who may call what: every invitations endpoint against every kind of caller, and refusals change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from collabkare.stack.infra import Infrastructure
from services.runtime.auth import STAFF_ROLES, mint_token
from tests.integration.invitations_harness import Service, running_service
from tests.support import JWT_SECRET, patient_token, staff_token

OTHER_SECRET = "another-secret-that-is-at-least-32-bytes"
MANAGEMENT_ROLES = sorted(STAFF_ROLES)
PATIENT_EMAIL = "bob@example.com"  # the roster's second line: the patient callers are Bob


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {practice}, {batch} and {invite} are filled in per test
    body: dict[str, Any] | None
    for_patients: bool
    success: int


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
    "revoke": Endpoint("POST", _INVITE + "/revoke", None, False, 200),
    "resend": Endpoint("POST", _INVITE + "/resend", None, False, 201),
    "accept": Endpoint("POST", "/v1/invites/accept", {"token": "{token}"}, True, 200),
}


def _management(role: str) -> Callable[[uuid.UUID, uuid.UUID], str]:
    return lambda practice, _: staff_token(practice, role, f"{role}-1")


# A caller: how to mint their token for (practice, patient), or None for no token at all.
Caller = Callable[[uuid.UUID, uuid.UUID], str] | None
CALLERS: dict[str, Caller] = {
    "no token": None,
    "bad signature": lambda practice, _: mint_token(OTHER_SECRET, "s", ["admin"], practice_id=practice),
    "bad signature (patient)": lambda _, patient: mint_token(
        OTHER_SECRET, str(patient), ["patient"], email=PATIENT_EMAIL
    ),
    "expired": lambda practice, _: mint_token(JWT_SECRET, "s", ["admin"], practice_id=practice, ttl_seconds=-60),
    "expired (patient)": lambda _, patient: mint_token(
        JWT_SECRET, str(patient), ["patient"], email=PATIENT_EMAIL, ttl_seconds=-60
    ),
    "patient token": lambda _, patient: patient_token(patient, PATIENT_EMAIL),
    "staff of another practice": lambda _, __: staff_token(uuid.uuid4(), "admin"),
    "non-management role": lambda practice, _: staff_token(practice, "clinician"),
    **{f"role {role}": _management(role) for role in MANAGEMENT_ROLES},
}


def expected(endpoint: Endpoint, caller: str) -> int:
    if caller.startswith(("no token", "bad signature", "expired")):
        return 401
    if endpoint.for_patients:
        return endpoint.success if caller == "patient token" else 403
    if caller == "staff of another practice":
        return 404  # never 403: that would tell them the practice exists
    if caller in ("patient token", "non-management role"):
        return 403
    return endpoint.success


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

    mint = CALLERS[caller]
    headers = {"Authorization": f"Bearer {mint(practice, patient)}"} if mint else {}
    path = endpoint.path.format(practice=practice, batch=batch["batch_id"], invite=invites["ann@example.com"])
    body = {k: v.format(token=token) for k, v in endpoint.body.items()} if endpoint.body else None
    response = await service.http.request(endpoint.method, path, json=body, headers=headers)

    status = expected(endpoint, caller)
    assert response.status_code == status, response.text
    if status >= 400:
        answer = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert answer["status"] == status and answer["detail"]
        # `instance` echoes the caller's own path; nothing else may carry the practice's data.
        assert "example.com" not in response.text and batch["batch_id"] not in answer["detail"]
        assert await _state(service, practice) == before, "a refused call changed something"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 403 and not endpoint.for_patients:
        assert all(role in response.json()["detail"] for role in MANAGEMENT_ROLES), response.text
    if status == 403 and endpoint.for_patients:
        assert "patient" in response.json()["detail"]
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
