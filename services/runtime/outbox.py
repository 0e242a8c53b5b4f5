"""Writes events into the service's outbox table in the caller's transaction (never straight to Kafka)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from schemas import Envelope, topic_for
from services.runtime.cooperative import in_slices

_COLUMNS = ("event_id", "topic", "message_key", "event_type", "payload")
# Below this many rows one multi-row INSERT is cheaper than setting up COPY.
_COPY_THRESHOLD = 64
# (event_id, topic, message_key, event_type, payload): one outbox row, for producers that serialise themselves.
OutboxRecord = tuple[uuid.UUID, str, str, str, bytes]


def _record(event: Envelope) -> OutboxRecord:
    return (
        event.event_id,
        topic_for(event.event_type),
        event.aggregate_key(),
        event.event_type,
        event.model_dump_json().encode(),
    )


async def add_events(connection: asyncpg.Connection, schema: str, events: Sequence[Envelope]) -> None:
    """Stage events for publishing; they leave only if the surrounding transaction commits.

    Serialising hundreds of events takes milliseconds: the service's other tasks (SMTP connections, HTTP requests)
    run in between every few dozen instead of waiting behind the whole batch."""
    await add_records(connection, schema, [_record(event) async for event in in_slices(events)])


async def add_records(connection: asyncpg.Connection, schema: str, records: Sequence[OutboxRecord]) -> None:
    """Stage already-serialised events: for bulk producers whose payloads must match the event's JSON exactly."""
    if not records:
        return
    if len(records) >= _COPY_THRESHOLD:
        await connection.copy_records_to_table("outbox", schema_name=schema, columns=_COLUMNS, records=records)
        return
    await connection.execute(
        f"""
        INSERT INTO "{schema}".outbox (event_id, topic, message_key, event_type, payload)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[])
        """,
        *([r[i] for r in records] for i in range(len(_COLUMNS))),
    )


async def pending_count(connection: asyncpg.Connection, schema: str) -> int:
    return int(await connection.fetchval(f'SELECT count(*) FROM "{schema}".outbox'))
