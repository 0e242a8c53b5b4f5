"""The envelope every event travels in: identity, provenance and tracing around a typed payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every wire model: unknown fields are kept out, values are immutable once built."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def _always_on_the_wire(schema: dict[str, Any]) -> None:
    """These have defaults for producers, yet every message carries them: consumers may rely on them."""
    required = schema.setdefault("required", [])
    for name in ("event_id", "event_type", "schema_version", "occurred_at"):
        if name in schema.get("properties", {}) and name not in required:
            required.append(name)


class Envelope(Contract):
    """Fields common to every event. Subclasses pin `event_type` and type `payload`."""

    model_config = ConfigDict(json_schema_extra=_always_on_the_wire)

    event_id: uuid.UUID = Field(default_factory=new_event_id, description="Unique per event; the inbox key.")
    event_type: str = Field(description="The event's name, e.g. ConnectionApproved.")
    # A v2 of an event is a new class with Literal[2]: a v2 message then fails loudly in a v1 consumer.
    schema_version: Literal[1] = Field(default=1, description="Version of this event's payload contract.")
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

    # The payload field that keys the Kafka message. One key per topic, so that a topic's events about
    # one thing (a patient's requests, an invite's lifecycle) stay in order on one partition.
    key_field: ClassVar[str]

    def aggregate_key(self) -> str:
        """The Kafka message key: events about one aggregate stay in order on one partition."""
        payload = getattr(self, "payload")  # noqa: B009 - every concrete event has one
        return str(getattr(payload, self.key_field))
