"""HTTP routes of the connections service: parse, authorise, call a use case, shape the answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, TypeAdapter
from pydantic_core import PydanticCustomError

from services.connections import handlers
from services.connections.domain import (
    MAX_TEXT,
    AccountDeleted,
    AlreadyConnected,
    AlreadyDecided,
    UnknownPractice,
    clean_text,
)
from services.connections.model import Cause, PatientRef, Status
from services.connections.views import ConnectionRequestView, ConnectionView, PageView, decode_cursor, encode_cursor
from services.runtime.auth import Patient, StaffMember
from services.runtime.http import JsonOnly
from services.runtime.openapi import problems
from services.runtime.problems import Problem

router = APIRouter(tags=["connections"])


def _clean(text: str) -> str | None:
    try:
        return clean_text(text)
    except ValueError as error:  # named by its rule, not pydantic's generic "value_error, Value error, …"
        raise PydanticCustomError("control_character", str(error)) from None


# Trimmed first, then measured; whitespace only counts as no text.
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TEXT), AfterValidator(_clean)]


class ConnectionRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    practice_id: uuid.UUID
    message: Text | None = None


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text | None = None


def _pool(request: Request) -> asyncpg.Pool:
    pool = request.app.state.runtime.pool
    if pool is None:
        raise Problem(503, "The service is starting; try again shortly.", headers={"Retry-After": "5"})
    return pool


def _cause(request: Request) -> Cause:
    return Cause(correlation_id=request.state.correlation_id)


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Tracing = Annotated[Cause, Depends(_cause)]


Limit = Annotated[int, Query(ge=1, le=200, description="Page size, 1 to 200.")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")]


MAX_DISPLAY_NAME = 200


def display_name(claim: str | None) -> str | None:
    """The token's name claim as staff see it: one line, no control characters, at most 200 characters."""
    if not claim:
        return None
    name = " ".join("".join(c if c.isprintable() else " " for c in claim).split())[:MAX_DISPLAY_NAME].strip()
    return name or None


# As every other timestamp of the API ("…Z"), not datetime.isoformat()'s "+00:00".
_UTC_TIME = TypeAdapter(datetime)


def _not_found() -> Problem:
    return Problem(404, "No such connection request.")


def _already_decided(error: AlreadyDecided) -> Problem:
    view = ConnectionRequestView.model_validate(error.request, from_attributes=True)
    return Problem(
        409,
        str(error),
        type_="urn:collabkare:problem:already-decided",
        current_status=error.request.status.value,
        connection_request=view.model_dump(mode="json"),
    )


@router.post(
    "/v1/connection-requests",
    status_code=201,
    summary="A patient asks to connect to a practice",
    description=(
        "201 with the new pending request; 200 with the existing one when the patient already asked. The patient "
        "is the token's: `sub` (the patient id), `email`, and `name` if it carries one (the request's display_name, "
        "as staff see it: on one line, control characters as spaces, cut at 200 characters). The practice must be "
        "one the platform registered (PracticeRegistered): any other `practice_id` is a 422 naming it (rule "
        "`registered_practice`). A patient the platform deleted gets a 403 (`account-deleted`) until she registers "
        "again (a token issued before the deletion still authenticates her until it expires)."
    ),
    responses={
        200: {
            "description": "The patient's pending request, unchanged",
            "model": ConnectionRequestView,
            "headers": {"Location": {"description": "The request, for its patient", "schema": {"type": "string"}}},
        },
        201: {
            "description": "The new pending request",
            "headers": {"Location": {"description": "The request, for its patient", "schema": {"type": "string"}}},
        },
        **problems(401, 403, 409, 415, 422),
    },
)
async def ask_to_connect(
    patient: Patient, _json: JsonOnly, body: ConnectionRequestBody, pool: Pool, cause: Tracing, response: Response
) -> ConnectionRequestView:
    requester = PatientRef(patient_id=patient.patient_id, email=patient.email, display_name=display_name(patient.name))
    try:
        request, created = await handlers.request_connection(pool, body.practice_id, requester, body.message, cause)
    except AlreadyConnected as error:
        raise Problem(
            409,
            str(error),
            type_="urn:collabkare:problem:already-connected",
            connection_id=str(error.connection.id),
            connected_at=_UTC_TIME.dump_python(error.connection.connected_at, mode="json"),
        ) from None
    except UnknownPractice as error:
        raise Problem(
            422,
            str(error),
            errors=[{"field": "practice_id", "rule": "registered_practice", "message": str(error)}],
        ) from None
    except AccountDeleted as error:
        raise Problem(403, str(error), type_="urn:collabkare:problem:account-deleted") from None
    if not created:
        response.status_code = 200
    response.headers["Location"] = _OWN_REQUEST.format(request_id=request.id)
    return ConnectionRequestView.model_validate(request, from_attributes=True)


_OWN_REQUEST = "/v1/connection-requests/{request_id}"


@router.get(
    _OWN_REQUEST,
    summary="The patient's own request: pending, approved or rejected (and why)",
    description=(
        "The request the `Location` of its POST names, read by the patient who made it (`decided_by`, a staff "
        "account, is not shown); any other request, or another patient's, is a 404."
    ),
    responses=problems(401, 403, 404, 422),
)
async def own_request(patient: Patient, request_id: uuid.UUID, pool: Pool) -> ConnectionRequestView:
    request = await handlers.patients_request(pool, patient.patient_id, request_id)
    if request is None:
        raise _not_found()
    view = ConnectionRequestView.model_validate(request, from_attributes=True)
    return view.model_copy(update={"decided_by": None})


@router.get(
    "/v1/practices/{practice_id}/connection-requests",
    summary="Connection requests of the practice, newest first",
    description=(
        "Omit status (or leave it empty, `?status=`, as a form sends it) to list every request. Pages are stable "
        "while new requests arrive."
    ),
    responses=problems(401, 403, 404, 422),
)
async def list_requests(
    practice_id: uuid.UUID,
    staff: StaffMember,
    pool: Pool,
    status: Annotated[Status | None, BeforeValidator(lambda value: value or None)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> PageView[ConnectionRequestView]:
    page = await handlers.list_requests(pool, practice_id, status, decode_cursor(cursor), limit)
    items = [ConnectionRequestView.model_validate(item, from_attributes=True) for item in page.items]
    return PageView[ConnectionRequestView](items=items, next_cursor=encode_cursor(page.next_position))


@router.post(
    "/v1/practices/{practice_id}/connection-requests/{request_id}/approve",
    summary="Approve a request: the patient is connected and notified",
    description="Approving an approved request answers 200 and changes nothing; a rejected one is 409.",
    responses=problems(401, 403, 404, 409, 422),
)
async def approve(
    practice_id: uuid.UUID, request_id: uuid.UUID, staff: StaffMember, pool: Pool, cause: Tracing
) -> ConnectionRequestView:
    try:
        request = await handlers.approve_request(pool, practice_id, request_id, actor=staff.subject, cause=cause)
    except handlers.RequestNotFound:
        raise _not_found() from None
    except AlreadyDecided as error:
        raise _already_decided(error) from None
    return ConnectionRequestView.model_validate(request, from_attributes=True)


@router.post(
    "/v1/practices/{practice_id}/connection-requests/{request_id}/reject",
    summary="Reject a request, with an optional reason the patient is told",
    description="Rejecting a rejected request answers 200 and changes nothing; an approved one is 409.",
    responses=problems(401, 403, 404, 409, 415, 422),
)
async def reject(
    practice_id: uuid.UUID,
    request_id: uuid.UUID,
    staff: StaffMember,
    _json: JsonOnly,
    pool: Pool,
    cause: Tracing,
    body: RejectBody | None = None,
) -> ConnectionRequestView:
    reason = body.reason if body else None
    try:
        request = await handlers.reject_request(
            pool, practice_id, request_id, actor=staff.subject, reason=reason, cause=cause
        )
    except handlers.RequestNotFound:
        raise _not_found() from None
    except AlreadyDecided as error:
        raise _already_decided(error) from None
    return ConnectionRequestView.model_validate(request, from_attributes=True)


@router.get(
    "/v1/practices/{practice_id}/connections",
    summary="Patients connected to the practice, newest first",
    responses=problems(401, 403, 404, 422),
)
async def list_connections(
    practice_id: uuid.UUID, staff: StaffMember, pool: Pool, limit: Limit = 50, cursor: Cursor = None
) -> PageView[ConnectionView]:
    page = await handlers.list_connections(pool, practice_id, decode_cursor(cursor), limit)
    items = [ConnectionView.model_validate(item, from_attributes=True) for item in page.items]
    return PageView[ConnectionView](items=items, next_cursor=encode_cursor(page.next_position))
