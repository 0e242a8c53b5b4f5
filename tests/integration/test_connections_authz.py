"""Who may call what: every connections endpoint against every kind of caller, and refusals change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from collabkare.stack.infra import Infrastructure
from services.runtime.auth import STAFF_ROLES, mint_token
from tests.integration.connections_harness import Service, running_service
from tests.support import JWT_SECRET, patient_token, staff_token

OTHER_SECRET = "another-secret-that-is-at-least-32-bytes"
MANAGEMENT_ROLES = sorted(STAFF_ROLES)


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {practice} and {request} are filled in per test
    body: dict[str, Any] | None
    for_patients: bool
    success: int


ENDPOINTS = {
    "ask to connect": Endpoint("POST", "/v1/connection-requests", {"practice_id": "{practice}"}, True, 201),
    "list requests": Endpoint("GET", "/v1/practices/{practice}/connection-requests?status=pending", None, False, 200),
    "approve": Endpoint("POST", "/v1/practices/{practice}/connection-requests/{request}/approve", None, False, 200),
    "reject": Endpoint(
        "POST", "/v1/practices/{practice}/connection-requests/{request}/reject", {"reason": "no"}, False, 200
    ),
    "list connections": Endpoint("GET", "/v1/practices/{practice}/connections", None, False, 200),
}


def _management(role: str) -> Callable[[uuid.UUID, uuid.UUID], str]:
    return lambda practice, _: staff_token(practice, role, f"{role}-1")


# A caller: how to mint their token for (practice, patient), or None for no token at all.
Caller = Callable[[uuid.UUID, uuid.UUID], str] | None
CALLERS: dict[str, Caller] = {
    "no token": None,
    "bad signature": lambda practice, _: mint_token(OTHER_SECRET, "s", ["admin"], practice_id=practice),
    "bad signature (patient)": lambda _, patient: mint_token(
        OTHER_SECRET, str(patient), ["patient"], email="p@example.com"
    ),
    "expired": lambda practice, _: mint_token(JWT_SECRET, "s", ["admin"], practice_id=practice, ttl_seconds=-60),
    "expired (patient)": lambda _, patient: mint_token(
        JWT_SECRET, str(patient), ["patient"], email="p@example.com", ttl_seconds=-60
    ),
    "patient token": lambda _, patient: patient_token(patient, "p@example.com"),
    "staff of another practice": lambda _, __: staff_token(uuid.uuid4(), "admin"),
    "non-management role": lambda practice, _: staff_token(practice, "clinician"),
    **{f"role {role}": _management(role) for role in MANAGEMENT_ROLES},
}


def expected(endpoint: Endpoint, caller: str) -> int:
    if caller in ("no token", "bad signature", "bad signature (patient)", "expired", "expired (patient)"):
        return 401
    if endpoint.for_patients:
        return endpoint.success if caller == "patient token" else 403
    if caller == "staff of another practice":
        return 404  # never 403: that would tell them the practice exists
    if caller in ("patient token", "non-management role"):
        return 403
    return endpoint.success


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_authorisation_matrix(service: Service, name: str, caller: str) -> None:
    endpoint = ENDPOINTS[name]
    practice, patient = uuid.uuid4(), uuid.uuid4()
    # Every staff endpoint gets a real pending request in the path's practice, so a refusal has something to leak.
    asked = await service.ask(practice)
    mint = CALLERS[caller]
    headers = {"Authorization": f"Bearer {mint(practice, patient)}"} if mint else {}
    path = endpoint.path.format(practice=practice, request=asked["id"])
    body = {k: v.format(practice=practice) for k, v in endpoint.body.items()} if endpoint.body else None
    response = await service.http.request(endpoint.method, path, json=body, headers=headers)

    status = expected(endpoint, caller)
    assert response.status_code == status, response.text
    answer = response.json()
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert answer["status"] == status and answer["detail"]
        assert asked["patient_email"] not in response.text and asked["id"] not in answer["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 403 and not endpoint.for_patients:
        assert all(role in answer["detail"] for role in MANAGEMENT_ROLES), answer["detail"]
    if status == 403 and endpoint.for_patients:
        assert "patient" in answer["detail"]

    rows = await service.fetch(
        "SELECT patient_id, status FROM connections.connection_requests WHERE practice_id = $1 ORDER BY created_at",
        practice,
    )
    events = [e["event_type"] for e in await service.events(practice)]
    if status >= 400:
        assert [r["status"] for r in rows] == ["pending"], "a refused call changed a request"
        assert events == ["ConnectionRequested"], "a refused call published an event"
    elif name == "approve":
        assert answer["status"] == "approved" and events[-1] == "ConnectionApproved"
    elif name == "reject":
        assert answer["status"] == "rejected" and events[-1] == "ConnectionRejected"
    elif name == "ask to connect":
        assert answer["patient_id"] == str(patient) and len(rows) == 2
    elif name == "list requests":
        assert [item["id"] for item in answer["items"]] == [asked["id"]]
    else:
        assert answer == {"items": [], "next_cursor": None}
