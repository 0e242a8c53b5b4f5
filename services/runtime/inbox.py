"""The idempotent-consumer guard: which events a consumer group has already applied."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from schemas import Envelope


async def claim_new(
    connection: asyncpg.Connection, schema: str, consumer: str, events: Sequence[Envelope]
) -> list[Envelope]:
    """Record the events as applied and return only those not applied before, in their original order.

    Must run in the same transaction as the effects: if they roll back, so does the record.
    """
    if not events:
        return []
    fresh = await _claim(
        connection, schema, consumer, [event.event_id for event in events], [event.event_type for event in events]
    )
    seen: set[object] = set()
    result = []
    for event in events:
        # The same event twice in one batch (a redelivery racing the first copy) counts once.
        if event.event_id in fresh and event.event_id not in seen:
            seen.add(event.event_id)
            result.append(event)
    return result


# Records that are not events (a compaction tombstone has no event id) are named by where they are on Kafka and
# what they are: its place alone comes round again when a topic is created anew (a migration to another cluster, a
# topic deleted and re-created), and a new tombstone at an old one's offset was skipped as already applied.
_RECORD_NAMESPACE = uuid.UUID("6f1c2b4e-8d3a-4c5b-9e7f-0a1b2c3d4e5f")


def record_id(topic: str, partition: int, offset: int, timestamp: int, key: bytes | None) -> uuid.UUID:
    """The inbox id of a record that carries no event id: the same on every redelivery of that record (its place,
    timestamp and key), another for a record at the same place of a topic created anew."""
    name = f"{topic}:{partition}:{offset}:{timestamp}:{(key or b'').hex()}"
    return uuid.uuid5(_RECORD_NAMESPACE, name)


async def claim_record(
    connection: asyncpg.Connection, schema: str, consumer: str, record: uuid.UUID, kind: str
) -> bool:
    """Record a non-event record (`record_id`) as applied; False if it was before. In the effect's transaction."""
    return bool(await _claim(connection, schema, consumer, [record], [kind]))


async def _claim(
    connection: asyncpg.Connection, schema: str, consumer: str, ids: list[uuid.UUID], kinds: list[str]
) -> set[uuid.UUID]:
    """The ids recorded now, those not recorded before."""
    inserted = await connection.fetch(
        f"""
        INSERT INTO "{schema}".inbox (consumer, event_id, event_type)
        SELECT $1, id, kind FROM unnest($2::uuid[], $3::text[]) AS e(id, kind)
        ON CONFLICT DO NOTHING
        RETURNING event_id
        """,
        consumer,
        ids,
        kinds,
    )
    return {row["event_id"] for row in inserted}


async def prune(pool: asyncpg.Pool, schema: str, older_than: datetime, chunk: int = 10_000) -> int:
    """Forget events applied before `older_than`, a chunk per transaction (no long lock); returns how many.

    Safe once no topic can deliver them again: their retention (14 days) is over. A replay from a compacted
    topic, or an event older than that, meets the handlers' own guards (the notifier's delivery ids, the
    invitations' outcome precedence), which make a second application change nothing.
    """
    pruned = 0
    while True:
        async with pool.acquire() as connection:
            deleted = await connection.fetchval(
                f"""
                WITH old AS (
                    SELECT ctid FROM "{schema}".inbox WHERE applied_at < $1 LIMIT $2
                ), gone AS (
                    DELETE FROM "{schema}".inbox WHERE ctid IN (SELECT ctid FROM old) RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                older_than,
                chunk,
            )
        pruned += deleted
        if deleted < chunk:
            return pruned
