"""Helpers the tests share: per-test databases and topics, service settings, Kafka in and out, tokens."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from collabkare.stack.broker import create_topics
from collabkare.stack.infra import Infrastructure
from schemas.topics import all_topic_names
from services.runtime.auth import mint_token

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "json"
JWT_SECRET = "test-secret-of-at-least-thirty-two-bytes!"
# Service roles get this password so the same fixtures work against an external PostgreSQL.
ROLE_PASSWORD = "collabkare-test"
PARTITIONS = 3  # every topic a test creates has this many partitions


@dataclass(frozen=True)
class ScratchDatabase:
    infra: Infrastructure
    name: str
    role_password: str

    @property
    def admin_url(self) -> str:
        return self.infra.database_url_for(self.name)

    def url_for(self, role: str) -> str:
        return self.infra.database_url_for(self.name, user=role, password=self.role_password)


@asynccontextmanager
async def scratch_database(infra: Infrastructure, template: str) -> AsyncIterator[ScratchDatabase]:
    """A fresh database copied from the migrated `template`, dropped (connections and all) afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    try:
        yield ScratchDatabase(infra, name, ROLE_PASSWORD)
    finally:
        admin = await asyncpg.connect(infra.database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def new_topics(infra: Infrastructure) -> str:
    """Every topic under a fresh random prefix, so that no event of another test reaches these consumers."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(infra.kafka_bootstrap, [(prefix + name, PARTITIONS) for name in all_topic_names()], timeout=30)
    return prefix


def service_env(database: ScratchDatabase, service: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {
        "SERVICE_NAME": service,
        "DATABASE_URL": database.url_for(service),
        "KAFKA_BOOTSTRAP_SERVERS": database.infra.kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "JWT_SECRET": JWT_SECRET,
        "OUTBOX_POLL_SECONDS": "0.2",
        **database.infra.service_settings(),
    }
    env.update({key.upper(): str(value) for key, value in extra.items()})
    return env


def staff_token(practice_id: uuid.UUID, role: str = "front_desk", subject: str = "staff-1", **kw: Any) -> str:
    return mint_token(JWT_SECRET, subject, [role], practice_id=practice_id, **kw)


def patient_token(patient_id: uuid.UUID, email: str, **kw: Any) -> str:
    return mint_token(JWT_SECRET, str(patient_id), ["patient"], email=email, **kw)


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start with a real consumer until `expect` records arrived or time runs out."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # every partition, without a group's join
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend(partition_records)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


async def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def lock_waiters(db: asyncpg.Connection | asyncpg.Pool, wait_event: str | None = None) -> int:
    """Sessions of this database waiting for a lock (of `wait_event`'s kind, e.g. 'advisory', when given). Ask from
    outside any transaction holding one: a transaction sees a single snapshot of pg_stat_activity."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND ($1::text IS NULL OR wait_event = $1)",
            wait_event,
        )
    )


async def read_to_end(bootstrap: str, topic: str, timeout: float = 15.0, partitions: int = PARTITIONS) -> list[Any]:
    """Read a topic with a real consumer from its start to its current end: exactly what it holds now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        records: list[Any] = []
        async with asyncio.timeout(timeout):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for batch in (await consumer.getmany(*assigned, timeout_ms=200)).values():
                    records.extend(batch)
        return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        await consumer.stop()


def committed_schema(event_type: str, version: int = 1) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{event_type}.v{version}.json").read_text())


@functools.cache
def validator(event_type: str, *, formats: bool = True) -> Any:
    """The committed JSON Schema of an event type, checked once (building it per event costs ~10 ms).

    With `formats` the validator also checks string formats (date-time, email, uri) where it can.
    """
    schema = committed_schema(event_type)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER if formats else None)
