"""Who may call what: every connections endpoint against every kind of caller, and refusals change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

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
from tests.integration.connections_harness import Service, running_service


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    async with running_service(infra, template_database, consuming=False) as running:
        yield running


# {practice} and {request} in paths and bodies are filled in per test.
ENDPOINTS = {
    "ask to connect": Endpoint("POST", "/v1/connection-requests", {"practice_id": "{practice}"}, True, 201),
    "read own request": Endpoint("GET", "/v1/connection-requests/{request}", None, True, 200),
    "list requests": Endpoint("GET", "/v1/practices/{practice}/connection-requests?status=pending", None, False, 200),
    "approve": Endpoint("POST", "/v1/practices/{practice}/connection-requests/{request}/approve", None, False, 200),
    "reject": Endpoint(
        "POST", "/v1/practices/{practice}/connection-requests/{request}/reject", {"reason": "no"}, False, 200
    ),
    "list connections": Endpoint("GET", "/v1/practices/{practice}/connections", None, False, 200),
}

CALLERS = callers("p@example.com")


def test_the_matrix_covers_every_documented_operation() -> None:
    """A route added later without a row here would go untested for every kind of caller."""
    assert matrix_operations(ENDPOINTS) == documented_operations("connections")


@pytest.mark.parametrize("name", [name for name, endpoint in ENDPOINTS.items() if endpoint.body is not None])
async def test_a_refused_caller_is_refused_before_a_broken_body_is_read(service: Service, name: str) -> None:
    await check_refused_before_the_body(service.http, ENDPOINTS[name], CALLERS)


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_authorisation_matrix(service: Service, name: str, caller: str) -> None:
    endpoint = ENDPOINTS[name]
    practice, patient = await service.practice(), uuid.uuid4()
    # Every staff endpoint gets a real pending request in the path's practice, so a refusal has something to leak.
    asked = await service.ask(practice, patient if name == "read own request" else None)
    path = endpoint.path.format(practice=practice, request=asked["id"])
    body = {k: v.format(practice=practice) for k, v in endpoint.body.items()} if endpoint.body else None
    response = await service.http.request(
        endpoint.method, path, json=body, headers=headers(CALLERS[caller], practice, patient)
    )

    status = expected(endpoint, caller)
    assert response.status_code == status, response.text
    answer = response.json()
    check_refusal(endpoint, response, status)
    if status >= 400:
        assert asked["patient_email"] not in response.text and asked["id"] not in answer["detail"]

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
    elif name == "read own request":
        assert answer["id"] == asked["id"] and answer["decided_by"] is None
    elif name == "list requests":
        assert [item["id"] for item in answer["items"]] == [asked["id"]]
    else:
        assert answer == {"items": [], "next_cursor": None}
