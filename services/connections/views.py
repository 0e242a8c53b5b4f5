"""Shapes of the connections API's answers, and the opaque cursor that pages them."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, Field

from services.connections.model import Position, Status
from services.runtime.problems import Problem

ViewT = TypeVar("ViewT")


class ConnectionRequestView(BaseModel):
    id: uuid.UUID
    practice_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: str
    display_name: str | None
    message: str | None
    status: Status
    created_at: AwareDatetime
    decided_by: str | None
    decided_at: AwareDatetime | None
    reason: str | None
    connection_id: uuid.UUID | None


class ConnectionView(BaseModel):
    id: uuid.UUID
    practice_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: str
    connected_at: AwareDatetime
    via: str
    approved_by: str = Field(
        description=(
            "Who approved the connection: the staff member who approved the request or sent the invite (the "
            "patient's id for an invite accepted before the invitations service said who sent it)"
        )
    )
    request_id: uuid.UUID | None
    invite_id: uuid.UUID | None


class PageView(BaseModel, Generic[ViewT]):
    items: list[ViewT]
    next_cursor: str | None


def encode_cursor(position: Position | None) -> str | None:
    if position is None:
        return None
    raw = f"{position.at.isoformat()}|{position.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.partition("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        # In UTC here: year 1 at +14:00 (or 9999 at -14:00) is outside what a timestamp can hold.
        return Position(moment.astimezone(UTC), uuid.UUID(row_id))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise _bad_cursor() from error


def _bad_cursor() -> Problem:
    message = "not a cursor this API returned; use next_cursor from the previous page"
    return Problem(
        422,
        f"The request is not valid: cursor: {message}",
        errors=[{"field": "cursor", "rule": "cursor", "message": message}],
    )
