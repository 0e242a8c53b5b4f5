"""A connections service on real PostgreSQL and Kafka for a whole test module, and exact reads of what it published."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from collabkare.stack.infra import Infrastructure
from services.connections.app import build_spec
from services.connections.settings import ConnectionsSettings
from tests.harness import ServiceUnderTest, asgi_client, scratch, serving
from tests.support import patient_token, service_env


class Service(ServiceUnderTest):
    """One running connections service: its HTTP client, its database (as admin) and its topics."""

    topic = "connections.v1"
    keyed_by = "patient"

    async def practice(self) -> uuid.UUID:
        """A new practice in the service's directory, as its PracticeRegistered would put it there (HTTP tests do
        not consume; test_connections_consumer proves the event path)."""
        practice_id = uuid.uuid4()
        await self.admin.execute(
            "INSERT INTO connections.practices (practice_id, registered_at) VALUES ($1, now())", practice_id
        )
        return practice_id

    async def ask(self, practice_id: uuid.UUID, patient_id: uuid.UUID | None = None, **body: Any) -> dict[str, Any]:
        """A pending request from a (new) patient to a practice of the directory; the answer's JSON."""
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


@asynccontextmanager
async def running_service(infra: Infrastructure, template: str, *, consuming: bool) -> AsyncIterator[Service]:
    """A fresh database and topics, and the service's runtime built by its own composition root.

    Without `consuming` the Kafka subscriptions are left out: HTTP tests then skip the consumer-group join.
    """
    async with scratch(infra, template, pool_size=2) as (database, prefix, admin):
        env = service_env(database, "connections", prefix, outbox_poll_seconds=0.1)
        settings = ConnectionsSettings.model_validate({key.lower(): value for key, value in env.items()})
        async with (
            serving(build_spec(settings), settings, consuming=consuming) as (runtime, app),
            asgi_client(app) as http,
        ):
            yield Service(runtime, http, database, prefix, admin)
