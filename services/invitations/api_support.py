"""What every route of the service shares: dependencies (pool, policy, tracing, the roster budget), field types and
problem helpers."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from services.invitations.admission import AdmissionRefused, RosterAdmission
from services.invitations.domain import Cause
from services.invitations.handlers import Policy
from services.invitations.metrics import AdmissionCollector
from services.invitations.roster import MAX_NOTE, check_note
from services.invitations.settings import InvitationsSettings
from services.runtime.media import require_json
from services.runtime.problems import PROBLEM_JSON, Problem
from services.runtime.service import ServiceRuntime


def _clean_note(note: str | None) -> str | None:
    note = (note or "").strip() or None
    if note is not None and (problem := check_note(note)):
        # Named by its rule, not pydantic's generic "value_error" with a "Value error, " prefix.
        raise PydanticCustomError("string_too_long" if len(note) > MAX_NOTE else "control_character", problem)
    return note


Note = Annotated[str | None, AfterValidator(_clean_note), Field(description=f"Up to {MAX_NOTE} characters")]
Factor = Annotated[str | None, StringConstraints(max_length=40)]


def _pool(request: Request) -> asyncpg.Pool:
    pool = request.app.state.runtime.pool
    if pool is None:
        raise Problem(503, "The service is starting; try again shortly.", headers={"Retry-After": "5"})
    return pool


def _policy(request: Request) -> Policy:
    settings = request.app.state.runtime.settings
    return Policy(settings.invite_ttl, settings.public_base_url, settings.identity_key())


def _cause(request: Request) -> Cause:
    return Cause(correlation_id=request.state.correlation_id)


_ADMISSIONS: weakref.WeakKeyDictionary[ServiceRuntime, RosterAdmission] = weakref.WeakKeyDictionary()


def roster_admission(runtime: ServiceRuntime) -> RosterAdmission:
    """The process's one budget of roster lines (one per runtime, so tests build many), its series in /metrics."""
    admission = _ADMISSIONS.get(runtime)
    if admission is None:
        settings = runtime.settings
        assert isinstance(settings, InvitationsSettings)
        admission = RosterAdmission(settings.roster_lines_in_flight, settings.roster_admission_wait_seconds)
        runtime.metrics.registry.register(AdmissionCollector(admission))
        _ADMISSIONS[runtime] = admission
    return admission


async def _admission(request: Request) -> RosterAdmission:
    # async: run on the event loop, never two at once in worker threads building two budgets.
    return roster_admission(request.app.state.runtime)


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Policies = Annotated[Policy, Depends(_policy)]
Tracing = Annotated[Cause, Depends(_cause)]
Admission = Annotated[RosterAdmission, Depends(_admission)]


# The 503 of the roster routes in their OpenAPI responses.
BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Too many roster lines are being worked on at once (type "
        "`urn:collabkare:problem:rosters-busy`): nothing was done, send the same request again after Retry-After; "
        "or a dependency is away",
        "content": {PROBLEM_JSON: {}},
    }
}


@asynccontextmanager
async def admitted(admission: RosterAdmission, work: str, lines: int, characters: int = 0) -> AsyncIterator[None]:
    """The roster's share of the process's budget while the block runs; a 503 when there is no room in time."""
    try:
        async with admission.admit(work, lines, characters):
            yield
    except AdmissionRefused as refused:  # raised on the way in only: nothing of the block has run
        raise busy(refused) from None


def busy(refused: AdmissionRefused) -> Problem:
    """503 for a roster that found no room: nothing was done with it, and a retry (same Idempotency-Key) is safe."""
    return Problem(
        503,
        "Too many large rosters are being worked on right now; nothing was done with this one. "
        f"Try again in {refused.retry_after} seconds.",
        type_="urn:collabkare:problem:rosters-busy",
        headers={"Retry-After": str(refused.retry_after)},
    )


async def read_json_body(request: Request) -> bytes:
    """The body of a route that reads its own after the access check: 415 for another media type. No body at all is
    the 422 (`body`, `missing`) FastAPI answers on every other route, with or without a Content-Type (it was a 415
    here without one, and "not valid JSON" with one)."""
    body = await request.body()
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    require_json(request)
    return body


def unprocessable(detail: str, errors: list[tuple[str, str, str]]) -> Problem:
    """422 naming each field at fault: (field, rule, message)."""
    return Problem(422, detail, errors=[{"field": f, "rule": r, "message": m} for f, r, m in errors])
