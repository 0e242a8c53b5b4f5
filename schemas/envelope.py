"""The envelope every event travels in: identity, provenance and tracing around a typed payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every wire model: unknown fields are kept out, values are immutable once built."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(Contract):
    """Fields common to every event. Subclasses pin `event_type` and type `payload`."""

    event_id: uuid.UUID = Field(default_factory=new_event_id, description="Unique per event; the inbox key.")
    event_type: str = Field(description="The event's name, e.g. ConnectionApproved.")
    schema_version: int = Field(default=1, ge=1, description="Version of this event's payload contract.")
    occurred_at: AwareDatetime = Field(default_factory=utcnow, description="When the fact happened (UTC).")
    producer: str = Field(description="The service that published the event.")
    practice_id: uuid.UUID | None = Field(
        default=None, description="The practice the event concerns; null for platform-wide facts."
    )
    correlation_id: str = Field(
        min_length=1, max_length=128, description="Shared by every event caused by one user action."
    )
    causation_id: str | None = Field(
        default=None, max_length=128, description="The event id (or request id) that caused this event."
    )

    # Name of the payload field that identifies the aggregate; each event class sets it.
    key_field: ClassVar[str]

    def aggregate_key(self) -> str:
        """The Kafka message key: events about one aggregate stay in order on one partition."""
        payload = getattr(self, "payload")  # noqa: B009 - every concrete event has one
        return str(getattr(payload, self.key_field))
