"""The envelope every event travels in: identity, provenance and tracing around a typed payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every wire model: unknown fields are kept out, values are immutable once built."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# These have defaults for producers, yet every message carries them: consumers may rely on them, and a message
# without one is refused when it is read (schemas.parse_event), not completed with a default.
ALWAYS_ON_THE_WIRE = ("event_id", "event_type", "schema_version", "occurred_at")


def _always_on_the_wire(schema: dict[str, Any]) -> None:
    required = schema.setdefault("required", [])
    for name in ALWAYS_ON_THE_WIRE:
        if name in schema.get("properties", {}) and name not in required:
            required.append(name)


class Envelope(Contract):
    """Fields common to every event. Subclasses pin `event_type` and type `payload`."""

    model_config = ConfigDict(json_schema_extra=_always_on_the_wire)

    event_id: uuid.UUID = Field(default_factory=new_event_id, description="Unique per event; the inbox key.")
    event_type: str = Field(description="The event's name, e.g. ConnectionApproved.")
    # An incompatible change to an event is a new class next to the old one, with the same event_type and
    # `schema_version: Literal[2] = 2`; both stay in schemas.events.AnyEvent, which tells them apart by
    # (event_type, schema_version), so a consumer that knows both parses v1 and v2 messages alike, and a
    # consumer that knows only v1 rejects a v2 message loudly (dead letter) instead of misreading it.
    # Type checkers see an int so that such a class may narrow it; the wire contract is the Literal.
    if TYPE_CHECKING:
        schema_version: int = 1
    else:
        schema_version: Literal[1] = Field(default=1, description="Version of this event's payload contract.")
    occurred_at: AwareDatetime = Field(default_factory=utcnow, description="When the fact happened (UTC).")
    producer: str = Field(description="The service that published the event.")
    practice_id: uuid.UUID | None = Field(
        default=None, description="The practice the event concerns; null for platform-wide facts."
    )
    correlation_id: str = Field(
        min_length=1,
        max_length=128,
        description="Shared by every event caused by one user action: the X-Correlation-ID of the API request "
        "that started it (the caller's, or one the API made up and answered with); for an event no request caused, "
        "the run that made it (`invite-expiry-<hex>` for the expiry sweeper) or the producer's own (the platform's "
        "events carry theirs).",
    )
    causation_id: str | None = Field(
        default=None,
        max_length=128,
        description="The id of the event whose consumption caused this one; null when an API request did.",
    )

    # The payload field that keys the Kafka message ("" when the class overrides aggregate_key to use the
    # envelope's practice_id). One key per topic, so that a topic's events about one thing (a patient's
    # requests, an invite's lifecycle) stay in order on one partition. The key is part of the contract:
    # schemas/json/topics.json records it, and `python -m schemas.generate` refuses to change it.
    key_field: ClassVar[str]

    @classmethod
    def key_path(cls) -> str:
        """Where the Kafka message key comes from in the wire JSON, e.g. `payload.invite_id`."""
        return f"payload.{cls.key_field}" if cls.key_field else "practice_id"

    def aggregate_key(self) -> str:
        """The Kafka message key: events about one aggregate stay in order on one partition."""
        payload = getattr(self, "payload")  # noqa: B009 - every concrete event has one
        return str(getattr(payload, self.key_field))
