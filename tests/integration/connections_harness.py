"""A connections service on real PostgreSQL and Kafka for a whole test module, and exact reads of what it published."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import jsonschema
from aiokafka import AIOKafkaConsumer, TopicPartition

from collabkare.stack.broker import create_topics
from collabkare.stack.infra import Infrastructure
from schemas.topics import all_topic_names
from services.connections.app import build_spec
from services.connections.settings import ConnectionsSettings
from services.runtime.service import ServiceRuntime
from tests.conftest import ROLE_PASSWORD
from tests.support import ScratchDatabase, committed_schema, patient_token, service_env

TOPIC = "connections.v1"
PARTITIONS = 3  # every topic of these tests is created here with this many partitions


@dataclass
class Service:
    """One running connections service: its HTTP client, its database (as admin) and its topics."""

    runtime: ServiceRuntime
    http: httpx.AsyncClient
    database: ScratchDatabase
    topic_prefix: str
    admin: asyncpg.Pool

    @property
    def bootstrap(self) -> str:
        return self.database.infra.kafka_bootstrap

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.admin.fetch(sql, *args)

    async def ask(self, practice_id: uuid.UUID, patient_id: uuid.UUID | None = None, **body: Any) -> dict[str, Any]:
        """A pending request from a (new) patient; the answer's JSON."""
        patient_id = patient_id or uuid.uuid4()
        token = patient_token(patient_id, f"p{patient_id.hex[:8]}@example.com")
        response = await self.http.post(
            "/v1/connection-requests",
            json={"practice_id": str(practice_id), **body},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def drained(self, timeout: float = 15.0) -> None:
        """Wait until the relay has published (and the broker acknowledged) everything in the outbox."""
        async with asyncio.timeout(timeout):
            while await self.admin.fetchval("SELECT count(*) FROM connections.outbox"):
                await asyncio.sleep(0.05)

    async def events(self, practice_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        """Every event on connections.v1 (for one practice), each checked against its committed JSON Schema."""
        await self.drained()
        records = await read_to_end(self.bootstrap, self.topic_prefix + TOPIC)
        events = []
        for record in records:
            assert record.value is not None
            event = json.loads(record.value)
            validator(event["event_type"]).validate(event)
            assert record.key == event["payload"]["patient_id"].encode(), "connections.v1 is keyed by patient"
            if practice_id is None or event["practice_id"] == str(practice_id):
                events.append(event)
        return events


@functools.cache
def validator(event_type: str) -> Any:
    """The committed JSON Schema of an event type, checked once; building it per event costs ~10 ms."""
    schema = committed_schema(event_type)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


async def read_to_end(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Any]:
    """Read a topic with a real consumer from its start to its current end: exactly what it holds now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async with asyncio.timeout(timeout):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for batch in (await consumer.getmany(*partitions, timeout_ms=200)).values():
                    records.extend(batch)
        return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        await consumer.stop()


@asynccontextmanager
async def running_service(infra: Infrastructure, template: str, *, consuming: bool) -> AsyncIterator[Service]:
    """A fresh database and topics, and the service's runtime built by its own composition root.

    Without `consuming` the Kafka subscriptions are left out: HTTP tests then skip the consumer-group join.
    """
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    database = ScratchDatabase(infra, name, ROLE_PASSWORD)
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(
        infra.kafka_bootstrap, [(prefix + topic, PARTITIONS) for topic in all_topic_names()], timeout=30
    )
    env = service_env(database, "connections", prefix, outbox_poll_seconds=0.1)
    settings = ConnectionsSettings.model_validate({key.lower(): value for key, value in env.items()})
    spec = build_spec(settings)
    if not consuming:
        spec = dataclasses.replace(spec, subscriptions=())
    runtime = ServiceRuntime(spec, settings)
    runtime.consumers.retry_base_seconds = 0.01
    app = runtime.http_app()
    pool = await asyncpg.create_pool(database.admin_url, min_size=1, max_size=2)
    try:
        async with app.router.lifespan_context(app):
            if consuming:
                async with asyncio.timeout(30):
                    await runtime.consuming.wait()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield Service(runtime, http, database, prefix, pool)
    finally:
        await pool.close()
        admin = await asyncpg.connect(infra.database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()
