"""Publishes the platform's own events (practices and patients registering) for the local stack and tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import Envelope, PatientRegistered, PracticeRegistered, topic_for
from schemas.events import PatientRegisteredPayload, PracticeRegisteredPayload


async def publish(bootstrap: str, prefix: str, events: list[Envelope]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10000)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                prefix + topic_for(event.event_type),
                value=event.model_dump_json().encode(),
                key=event.aggregate_key().encode(),
            )
    finally:
        await producer.stop()


async def publish_tombstone(bootstrap: str, prefix: str, topic: str, key: uuid.UUID) -> None:
    """The platform deletes what `key` names on a compacted topic: its key and no value."""
    await publish_pipelined(bootstrap, prefix, [], [(topic, str(key).encode(), None)], request_timeout_ms=10000)


async def publish_pipelined(
    bootstrap: str,
    prefix: str,
    events: Sequence[Envelope],
    raw: Sequence[tuple[str, bytes, bytes | None]] = (),
    **producer_options: Any,
) -> None:
    """As publish(), but every record is sent before any ack is awaited (thousands of events at once).

    `raw` adds (topic, key, value) records as they are (a None value: a compaction tombstone); all are acknowledged
    when this returns.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **producer_options)
    await producer.start()
    try:
        futures = [
            await producer.send(
                prefix + topic_for(e.event_type), value=e.model_dump_json().encode(), key=e.aggregate_key().encode()
            )
            for e in events
        ]
        futures += [await producer.send(prefix + topic, value=value, key=key) for topic, key, value in raw]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def practice_registered(practice_id: uuid.UUID, name: str) -> PracticeRegistered:
    return PracticeRegistered(
        producer="platform",
        practice_id=practice_id,
        correlation_id=f"seed-{uuid.uuid4()}",
        payload=PracticeRegisteredPayload(name=name, registered_at=datetime.now(UTC)),
    )


_SEEDED_PATIENTS = uuid.UUID("5f1c2e0a-6b1d-4c8e-9a57-3d2b7c4e9f10")


def seeded_patient_id(email: str) -> uuid.UUID:
    """The id `collabkare seed patient` gives an email: the same every time (seeding it again re-registers the same
    patient rather than minting another id, whose tokens would match the same email)."""
    return uuid.uuid5(_SEEDED_PATIENTS, email.strip().lower())


def patient_registered(
    email: str, *, locale: str = "en", patient_id: uuid.UUID | None = None, name: str | None = None
) -> PatientRegistered:
    return PatientRegistered(
        producer="platform",
        correlation_id=f"seed-{uuid.uuid4()}",
        payload=PatientRegisteredPayload(
            patient_id=patient_id or uuid.uuid4(),
            email=email,
            display_name=name,
            locale=locale,  # type: ignore[arg-type]  # argparse restricts it to en/es
            registered_at=datetime.now(UTC),
        ),
    )


async def publish_practice(bootstrap: str, prefix: str, practice_id: uuid.UUID, name: str) -> None:
    await publish(bootstrap, prefix, [practice_registered(practice_id, name)])


async def publish_patient(
    bootstrap: str,
    prefix: str,
    email: str,
    *,
    locale: str = "en",
    patient_id: uuid.UUID | None = None,
    name: str | None = None,
) -> uuid.UUID:
    event = patient_registered(email, locale=locale, patient_id=patient_id, name=name)
    await publish(bootstrap, prefix, [event])
    return event.payload.patient_id
