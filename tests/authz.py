"""The authorisation matrix the services share: every kind of caller, and what each endpoint must answer them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.runtime.auth import STAFF_ROLES, mint_token
from tests.support import JWT_SECRET, patient_token, staff_token

OTHER_SECRET = "another-secret-that-is-at-least-32-bytes"
MANAGEMENT_ROLES = sorted(STAFF_ROLES)

# A caller: how to mint their token for (practice, patient), or None for no token at all.
Caller = Callable[[uuid.UUID, uuid.UUID], str] | None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # placeholders such as {practice} are filled in per test
    body: dict[str, Any] | None
    for_patients: bool
    success: int


_DOCUMENTS = Path(__file__).resolve().parent.parent / "docs" / "openapi"
_OPERATIONAL = {"/healthz", "/readyz", "/metrics"}  # open to the cluster, not to callers: no token taken


def documented_operations(service: str) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation the service's committed OpenAPI document lists (kept current by
    tests/unit/test_api_documents.py), probes and metrics aside."""
    document = json.loads((_DOCUMENTS / f"{service}.json").read_text())
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path not in _OPERATIONAL
        for method in operations
    }


def matrix_operations(endpoints: Mapping[str, Endpoint]) -> set[tuple[str, str]]:
    """The matrix's endpoints as the OpenAPI document names them: {practice} is {practice_id}, no query string."""
    return {
        (endpoint.method, re.sub(r"\{(\w+)\}", r"{\1_id}", endpoint.path.split("?", 1)[0]))
        for endpoint in endpoints.values()
    }


def _management(role: str) -> Callable[[uuid.UUID, uuid.UUID], str]:
    return lambda practice, _: staff_token(practice, role, f"{role}-1")


def callers(patient_email: str) -> dict[str, Caller]:
    """Every kind of caller by name; the patient ones carry `patient_email`."""
    return {
        "no token": None,
        "bad signature": lambda practice, _: mint_token(OTHER_SECRET, "s", ["admin"], practice_id=practice),
        "bad signature (patient)": lambda _, patient: mint_token(
            OTHER_SECRET, str(patient), ["patient"], email=patient_email
        ),
        "expired": lambda practice, _: mint_token(JWT_SECRET, "s", ["admin"], practice_id=practice, ttl_seconds=-3600),
        "expired (patient)": lambda _, patient: mint_token(
            JWT_SECRET, str(patient), ["patient"], email=patient_email, ttl_seconds=-3600
        ),
        "patient token": lambda _, patient: patient_token(patient, patient_email),
        "staff of another practice": lambda _, __: staff_token(uuid.uuid4(), "admin"),
        "non-management role": lambda practice, _: staff_token(practice, "clinician"),
        "staff token without a practice": lambda _, __: mint_token(JWT_SECRET, "s", ["admin"]),
        **{f"role {role}": _management(role) for role in MANAGEMENT_ROLES},
    }


def headers(caller: Caller, practice: uuid.UUID, patient: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {caller(practice, patient)}"} if caller else {}


def expected(endpoint: Endpoint, caller: str) -> int:
    if caller.startswith(("no token", "bad signature", "expired")):
        return 401
    if endpoint.for_patients:
        return endpoint.success if caller == "patient token" else 403
    if caller == "staff of another practice":
        return 404  # never 403: that would tell them the practice exists
    if caller in ("patient token", "non-management role", "staff token without a practice"):
        return 403  # the last was a 404 "No such practice." whatever the path said
    return endpoint.success


def check_refusal(endpoint: Endpoint, response: httpx.Response, status: int) -> None:
    """What every refusal looks like: problem+json with a detail, a Bearer challenge, the roles that may."""
    if status >= 400:
        answer = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert answer["status"] == status and answer["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 403 and not endpoint.for_patients:
        detail = response.json()["detail"]
        assert all(role in detail for role in MANAGEMENT_ROLES) or "no practice_id claim" in detail, response.text
    if status == 403 and endpoint.for_patients:
        assert "patient" in response.json()["detail"]


async def check_refused_before_the_body(
    http: httpx.AsyncClient, endpoint: Endpoint, every_caller: Mapping[str, Caller]
) -> None:
    """Every caller refused with a good body is refused the same way with a broken one: who may call is settled before
    the body is read, so a 422 naming a field never answers someone without the right to call."""
    practice, patient = uuid.uuid4(), uuid.uuid4()
    path = endpoint.path.format(practice=practice, request=uuid.uuid4(), batch=uuid.uuid4(), invite=uuid.uuid4())
    for name, caller in every_caller.items():
        status = expected(endpoint, name)
        if status < 400:
            continue
        response = await http.request(
            endpoint.method,
            path,
            content=b'{"roster": ',
            headers={**headers(caller, practice, patient), "Content-Type": "application/json"},
        )
        assert response.status_code == status, (name, response.text)
        check_refusal(endpoint, response, status)
