"""An invitations service on real PostgreSQL and Kafka for a test module, and exact reads of what it published."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from collabkare.seeding import publish_pipelined
from collabkare.stack.infra import Infrastructure
from schemas import Envelope
from services.invitations.app import build_spec
from services.invitations.settings import InvitationsSettings
from tests.harness import ServiceUnderTest, asgi_client, scratch, serving
from tests.support import patient_token, service_env, staff_token

T = TypeVar("T")

IDENTITY_KEY = "identity-key-for-tests-32-bytes-long!!"


def staff(practice_id: uuid.UUID, role: str = "front_desk", subject: str = "staff-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {staff_token(practice_id, role, subject)}"}


def patient(patient_id: uuid.UUID, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {patient_token(patient_id, email)}"}


class Service(ServiceUnderTest):
    """One running invitations service: its HTTP client, its database (as admin) and its topics."""

    topic = "invitations.v1"
    keyed_by = "invite"
    drain_timeout = 20.0

    async def publish(self, topic: str, events: list[Envelope]) -> None:
        """Put events on one of the service's input topics, keyed as their producers key them; all acked."""
        records = [(topic, event.aggregate_key().encode(), event.model_dump_json().encode()) for event in events]
        async with asyncio.timeout(60):
            await publish_pipelined(self.bootstrap, self.topic_prefix, [], records)

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
    async with scratch(infra, template) as (database, prefix, admin):
        env = service_env(
            database,
            "invitations",
            prefix,
            outbox_poll_seconds=0.1,
            public_base_url="https://app.collabkare.test",
            identity_hmac_key=IDENTITY_KEY,
            **settings,
        )
        values = InvitationsSettings(**{key.lower(): value for key, value in env.items()})
        spec = build_spec(values)
        if not sweeping:
            spec = dataclasses.replace(spec, background_jobs=())
        async with (
            serving(spec, values, consuming=consuming) as (runtime, app),
            asgi_client(app, timeout=60) as http,
        ):
            yield Service(runtime, http, database, prefix, admin)


async def accepted_while(service: Service, invite_id: uuid.UUID, request: Awaitable[T]) -> T:
    """`request`'s answer when it runs while a patient is accepting the invite: her transaction holds the invite's
    row, accepted, until the request waits for it (now, or after what it does first), then commits."""
    async with service.admin.acquire() as patient_side:
        async with patient_side.transaction():
            await patient_side.execute(
                "UPDATE invitations.invites SET status = 'accepted', accepted_at = now(),"
                " accepted_by = gen_random_uuid()::text WHERE id = $1",
                invite_id,
            )
            running = asyncio.ensure_future(request)
            async with asyncio.timeout(20):
                while not await patient_side.fetchval(
                    # pg_locks is read afresh each time; pg_stat_activity once per transaction, missing later sessions
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                ):
                    await asyncio.sleep(0.02)
        return await running
