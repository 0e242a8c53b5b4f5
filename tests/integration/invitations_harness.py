"""An invitations service on real PostgreSQL and Kafka for a test module, and exact reads of what it published."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import jsonschema
from aiokafka import AIOKafkaProducer

from collabkare.stack.broker import create_topics
from collabkare.stack.infra import Infrastructure
from schemas import Envelope
from schemas.topics import all_topic_names
from services.invitations.app import build_spec
from services.invitations.settings import InvitationsSettings
from services.runtime.service import ServiceRuntime
from tests.conftest import ROLE_PASSWORD
from tests.integration.connections_harness import PARTITIONS, read_to_end
from tests.support import ScratchDatabase, committed_schema, patient_token, service_env, staff_token

TOPIC = "invitations.v1"
IDENTITY_KEY = "identity-key-for-tests-32-bytes-long!!"
_VALIDATORS: dict[str, Any] = {}


def check_schema(event: dict[str, Any]) -> None:
    """Validate against the committed JSON Schema of its type (validators built once: thousands of events)."""
    kind = event["event_type"]
    if kind not in _VALIDATORS:
        schema = committed_schema(kind)
        _VALIDATORS[kind] = jsonschema.validators.validator_for(schema)(schema)
    _VALIDATORS[kind].validate(event)


def staff(practice_id: uuid.UUID, role: str = "front_desk", subject: str = "staff-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {staff_token(practice_id, role, subject)}"}


def patient(patient_id: uuid.UUID, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {patient_token(patient_id, email)}"}


@dataclass
class Service:
    """One running invitations service: its HTTP client, its database (as admin) and its topics."""

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

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.admin.fetchval(sql, *args)

    async def drained(self, timeout: float = 20.0) -> None:
        """Wait until the relay has published (and the broker acknowledged) everything in the outbox."""
        async with asyncio.timeout(timeout):
            while await self.admin.fetchval("SELECT count(*) FROM invitations.outbox"):
                await asyncio.sleep(0.05)

    async def events(self, practice_id: uuid.UUID | None = None, event_type: str | None = None) -> list[dict[str, Any]]:
        """Events on invitations.v1 (for one practice / of one type), each checked against its committed schema."""
        await self.drained()
        records = await read_to_end(self.bootstrap, self.topic_prefix + TOPIC)
        events = []
        for record in records:
            assert record.value is not None
            event = json.loads(record.value)
            check_schema(event)
            assert record.key == event["payload"]["invite_id"].encode(), "invitations.v1 is keyed by invite"
            if practice_id is not None and event["practice_id"] != str(practice_id):
                continue
            if event_type is not None and event["event_type"] != event_type:
                continue
            events.append(event)
        return events

    async def publish(self, topic: str, events: list[Envelope]) -> None:
        """Put events on one of the service's input topics, keyed as their producers key them; all acked."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            async with asyncio.timeout(60):
                sent = [
                    await producer.send(
                        self.topic_prefix + topic, event.model_dump_json().encode(), key=event.aggregate_key().encode()
                    )
                    for event in events
                ]
                await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def submit(
        self, practice_id: uuid.UUID, roster: str, default_note: str | None = None, **headers: str
    ) -> dict[str, Any]:
        """Send a roster as front-desk staff; the 202 answer's JSON."""
        response = await self.http.post(
            f"/v1/practices/{practice_id}/invite-batches",
            json={"roster": roster, "default_note": default_note},
            headers={**staff(practice_id), **headers},
        )
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def requested(self, practice_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """The practice's InviteRequested events by invite id."""
        events = await self.events(practice_id, "InviteRequested")
        return {event["payload"]["invite_id"]: event for event in events}

    async def wait_for(self, sql: str, *args: Any, expect: Any, timeout: float = 20.0) -> Any:
        """Poll a query until it returns `expect` (bounded); returns the last value either way."""
        value = None
        try:
            async with asyncio.timeout(timeout):
                while (value := await self.admin.fetchval(sql, *args)) != expect:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        return value


@asynccontextmanager
async def running_service(
    infra: Infrastructure, template: str, *, consuming: bool, sweeping: bool = False, **settings: Any
) -> AsyncIterator[Service]:
    """A fresh database and topics, and the service's runtime built by its own composition root.

    Without `consuming` the Kafka subscriptions are left out, without `sweeping` the expiry sweeper.
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
    env = service_env(
        database,
        "invitations",
        prefix,
        outbox_poll_seconds=0.1,
        public_base_url="https://app.collabkare.test",
        identity_hmac_key=IDENTITY_KEY,
        **settings,
    )
    spec = build_spec(InvitationsSettings(**{key.lower(): value for key, value in env.items()}))
    if not consuming:
        spec = dataclasses.replace(spec, subscriptions=())
    if not sweeping:
        spec = dataclasses.replace(spec, background_jobs=())
    runtime = ServiceRuntime(spec, InvitationsSettings(**{key.lower(): value for key, value in env.items()}))
    runtime.consumers.retry_base_seconds = 0.01
    app = runtime.http_app()
    pool = await asyncpg.create_pool(database.admin_url, min_size=1, max_size=3)
    try:
        async with app.router.lifespan_context(app):
            if consuming:
                async with asyncio.timeout(30):
                    await runtime.consuming.wait()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
                yield Service(runtime, http, database, prefix, pool)
    finally:
        await pool.close()
        admin = await asyncpg.connect(infra.database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()
