"""A service under test in this process: its scratch database and topics, its runtime, and what it published."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
import httpx
from fastapi import FastAPI

from collabkare.stack.infra import Infrastructure
from services.runtime.service import ServiceRuntime, ServiceSpec
from services.runtime.settings import RuntimeSettings
from tests.support import ScratchDatabase, new_topics, read_to_end, scratch_database, validator


@asynccontextmanager
async def scratch(
    infra: Infrastructure, template: str, *, pool_size: int = 3
) -> AsyncIterator[tuple[ScratchDatabase, str, asyncpg.Pool]]:
    """A fresh database (from the migrated template), fresh topics, and an admin pool on that database."""
    async with scratch_database(infra, template) as database:
        prefix = await new_topics(infra)
        pool = await asyncpg.create_pool(database.admin_url, min_size=1, max_size=pool_size)
        try:
            yield database, prefix, pool
        finally:
            await pool.close()


@asynccontextmanager
async def serving(
    spec: ServiceSpec, settings: RuntimeSettings, *, consuming: bool
) -> AsyncIterator[tuple[ServiceRuntime, FastAPI]]:
    """The service's runtime built from its own spec, running (HTTP lifespan, relay, jobs) until the block ends.

    Without `consuming` the Kafka subscriptions are left out, so there is no consumer-group join to wait for
    (Tansu can take ~18 s to let a new member in after the previous one left).
    """
    runtime = ServiceRuntime(spec if consuming else dataclasses.replace(spec, subscriptions=()), settings)
    runtime.consumers.retry_base_seconds = 0.01
    app = runtime.http_app()
    async with app.router.lifespan_context(app):
        if consuming:
            async with asyncio.timeout(30):
                await runtime.consuming.wait()
        yield runtime, app


def asgi_client(app: FastAPI, **options: Any) -> httpx.AsyncClient:
    """An HTTP client calling the app in this process (no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", **options)


@dataclass
class ServiceUnderTest:
    """One running service: its HTTP client, its database (as admin) and its topics.

    A subclass names the topic the service publishes and the payload field its records are keyed by.
    """

    runtime: ServiceRuntime
    http: httpx.AsyncClient
    database: ScratchDatabase
    topic_prefix: str
    admin: asyncpg.Pool

    topic: ClassVar[str]
    keyed_by: ClassVar[str]  # records are keyed by payload[f"{keyed_by}_id"]
    drain_timeout: ClassVar[float] = 15.0
    check_formats: ClassVar[bool] = True  # also check string formats against the committed schemas

    @property
    def bootstrap(self) -> str:
        return self.database.infra.kafka_bootstrap

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.admin.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.admin.fetchval(sql, *args)

    async def drained(self, timeout: float | None = None) -> None:
        """Wait until the relay has published (and the broker acknowledged) everything in the outbox."""
        async with asyncio.timeout(self.drain_timeout if timeout is None else timeout):
            while await self.admin.fetchval(f"SELECT count(*) FROM {self.runtime.schema}.outbox"):
                await asyncio.sleep(0.05)

    async def events(self, practice_id: uuid.UUID | None = None, event_type: str | None = None) -> list[dict[str, Any]]:
        """Events on the service's topic (for one practice / of one type), each checked against its committed schema."""
        await self.drained()
        records = await read_to_end(self.bootstrap, self.topic_prefix + self.topic)
        events = []
        for record in records:
            assert record.value is not None
            event = json.loads(record.value)
            validator(event["event_type"], formats=self.check_formats).validate(event)
            key = event["payload"][f"{self.keyed_by}_id"]
            assert record.key == key.encode(), f"{self.topic} is keyed by {self.keyed_by}"
            if practice_id is not None and event["practice_id"] != str(practice_id):
                continue
            if event_type is not None and event["event_type"] != event_type:
                continue
            events.append(event)
        return events
