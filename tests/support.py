"""Helpers the tests share: per-test databases, service settings, reading topics back, minting tokens."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from collabkare.stack.infra import Infrastructure
from services.runtime.auth import mint_token

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "json"
JWT_SECRET = "test-secret-of-at-least-thirty-two-bytes!"


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


def service_env(database: ScratchDatabase, service: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {
        "SERVICE_NAME": service,
        "DATABASE_URL": database.url_for(service),
        "KAFKA_BOOTSTRAP_SERVERS": database.infra.kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "JWT_SECRET": JWT_SECRET,
        "OUTBOX_POLL_SECONDS": "0.2",
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
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
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


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def committed_schema(event_type: str, version: int = 1) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{event_type}.v{version}.json").read_text())
