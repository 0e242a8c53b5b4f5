"""The records of the connections service: requests, connections, audit entries, and a change to write."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from schemas import Envelope


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


Decision = Literal["approve", "reject"]
Via = Literal["request", "invite"]


@dataclass(frozen=True)
class Cause:
    """Tracing carried onto every event: the user action (correlation) and, for consumed events, the event."""

    correlation_id: str
    causation_id: str | None = None


@dataclass(frozen=True)
class PatientRef:
    patient_id: uuid.UUID
    email: str
    display_name: str | None = None


@dataclass(frozen=True)
class ConnectionRequest:
    id: uuid.UUID
    practice_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: str
    display_name: str | None
    message: str | None
    status: Status
    created_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    connection_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Connection:
    id: uuid.UUID
    practice_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: str
    connected_at: datetime
    via: Via
    approved_by: str
    request_id: uuid.UUID | None = None
    invite_id: uuid.UUID | None = None


@dataclass(frozen=True)
class AuditEntry:
    practice_id: uuid.UUID
    patient_id: uuid.UUID
    action: Literal["requested", "approved", "rejected", "invite_accepted", "withdrawn"]
    actor: str
    occurred_at: datetime
    reason: str | None = None
    request_id: uuid.UUID | None = None
    connection_id: uuid.UUID | None = None
    invite_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Change:
    """What a use case must write, all in one transaction. `changed` False means: nothing to write at all."""

    changed: bool
    request: ConnectionRequest | None = None
    new_connection: Connection | None = None
    closed_requests: tuple[ConnectionRequest, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    events: tuple[Envelope, ...] = ()


@dataclass(frozen=True)
class Position:
    """Where the previous page ended: the last row's sort key."""

    at: datetime
    id: uuid.UUID
