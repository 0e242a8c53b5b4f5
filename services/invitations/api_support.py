"""What every route of the service shares: dependencies (pool, policy, tracing), field types and problem helpers."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from services.invitations.domain import Cause
from services.invitations.handlers import Policy
from services.invitations.roster import MAX_NOTE, check_note
from services.runtime.http import require_json
from services.runtime.problems import Problem


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


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Policies = Annotated[Policy, Depends(_policy)]
Tracing = Annotated[Cause, Depends(_cause)]


async def read_json_body(request: Request) -> bytes:
    """The body of a route that reads its own after the access check: 415 for another media type."""
    require_json(request)
    return await request.body()


def unprocessable(detail: str, errors: list[tuple[str, str, str]]) -> Problem:
    """422 naming each field at fault: (field, rule, message)."""
    return Problem(422, detail, errors=[{"field": f, "rule": r, "message": m} for f, r, m in errors])
