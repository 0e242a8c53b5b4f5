"""A notifier on real PostgreSQL, Kafka and SMTP for a whole test module; events in, emails and outcomes out."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
from aiosmtpd.controller import Controller
from fastapi import FastAPI

from collabkare.seeding import publish_pipelined
from collabkare.stack.infra import Infrastructure
from collabkare.stack.mailbox import parse, read_raw
from collabkare.stack.ports import free_port
from schemas import ConnectionApproved, ConnectionRejected, Envelope, InviteRequested, InviteRevoked
from schemas.events import PatientRegistered, PatientRegisteredPayload, PracticeRegistered, PracticeRegisteredPayload
from services.notifier.app import build_spec
from services.notifier.settings import NotifierSettings
from services.runtime.service import ServiceRuntime
from tests.harness import scratch, serving
from tests.support import ScratchDatabase, read_to_end, service_env, validator

FINAL = ("sent", "not_on_platform", "error")
OUTCOMES = "notifier.outcomes.v1"


@contextmanager
def smtp_server(handler: Any) -> Iterator[int]:
    """An aiosmtpd server on a free loopback port with this handler, for the time of the block; yields the port."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


class MessageIds:
    """aiosmtpd handler: keeps every email, counting its Message-ID (a second copy of an email shows as 2)."""

    def __init__(self) -> None:
        self.copies: collections.Counter[str] = collections.Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.copies[str(parse(envelope.original_content)["Message-ID"])] += 1
        return "250 2.0.0 queued"


def smtp_settings(port: int, **values: Any) -> NotifierSettings:
    """Settings for the mailer alone against an SMTP server on loopback (no database or broker is reached)."""
    base = {
        "database_url": "postgresql://notifier@127.0.0.1/unused",
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "jwt_secret": "x" * 32,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_timeout_seconds": 5,
    }
    return NotifierSettings.model_validate({**base, **values})


def notifier_env(database: ScratchDatabase, prefix: str, **overrides: Any) -> dict[str, str]:
    """Environment of a notifier under test: fast polls and retries, the session's SMTP catcher."""
    infra = database.infra
    values: dict[str, Any] = {
        "smtp_host": infra.smtp_host,
        "smtp_port": infra.smtp_port,
        "smtp_retry_base_seconds": 0.05,
        "smtp_timeout_seconds": 5,
        "sender_poll_seconds": 0.2,
        "outbox_poll_seconds": 0.1,
        "directory_grace_seconds": 0.5,
        "consumer_batch_size": 100,
    }
    values.update(overrides)
    return service_env(database, "notifier", prefix, **values)


@dataclass
class Notifier:
    """What a test drives: the topics (events in), the database (as admin) and the SMTP sink (emails out)."""

    database: ScratchDatabase
    topic_prefix: str
    admin: asyncpg.Pool
    runtime: ServiceRuntime | None = None
    app: FastAPI | None = None

    @property
    def infra(self) -> Infrastructure:
        return self.database.infra

    @property
    def mailbox(self) -> Path:
        assert self.infra.mailbox is not None, "these tests read mail from the embedded SMTP catcher"
        return self.infra.mailbox

    async def publish(self, *events: Envelope) -> None:
        await publish_pipelined(self.infra.kafka_bootstrap, self.topic_prefix, events)

    async def publish_raw(self, topic: str, key: bytes, *values: bytes | None) -> None:
        await publish_pipelined(
            self.infra.kafka_bootstrap, self.topic_prefix, [], [(topic, key, value) for value in values]
        )

    async def deliveries(self, source_event_ids: Sequence[uuid.UUID], timeout: float = 20.0) -> list[asyncpg.Record]:
        """The delivery rows of these events once every one is final (whatever is there when time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            rows: list[asyncpg.Record] = await self.admin.fetch(
                "SELECT * FROM notifier.deliveries WHERE source_event_id = ANY($1::uuid[])", list(source_event_ids)
            )
            done = len(rows) == len(source_event_ids) and all(row["status"] in FINAL for row in rows)
            if done or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)

    async def queued(self, source_event_ids: Sequence[uuid.UUID], timeout: float = 20.0) -> None:
        """Wait until these events have their delivery rows, whatever their status."""
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM notifier.deliveries WHERE source_event_id = ANY($1::uuid[])"
        while await self.admin.fetchval(query, list(source_event_ids)) < len(source_event_ids):
            assert time.monotonic() < deadline, "the events were never queued"
            await asyncio.sleep(0.02)

    async def delivery(self, source_event_id: uuid.UUID, timeout: float = 20.0) -> asyncpg.Record:
        rows = await self.deliveries([source_event_id], timeout)
        assert rows, f"no delivery row for {source_event_id}"
        assert rows[0]["status"] in FINAL, f"delivery still {rows[0]['status']}"
        return rows[0]

    async def outcomes(self, source_event_ids: set[uuid.UUID], timeout: float = 15.0) -> dict[uuid.UUID, Any]:
        """The DeliveryOutcome events published for these source events, each checked against its schema."""
        deadline = time.monotonic() + timeout
        while True:
            found: dict[uuid.UUID, Any] = {}
            for record in await read_to_end(self.infra.kafka_bootstrap, self.topic_prefix + OUTCOMES):
                event = json.loads(record.value)
                validator("DeliveryOutcome").validate(event)
                source = uuid.UUID(event["payload"]["source_event_id"])
                assert record.key == str(source).encode(), "outcomes are keyed by the source event id"
                if source in source_event_ids:
                    # The relay publishes at least once: the same event again is fine, a second outcome is not.
                    assert found.get(source, event)["event_id"] == event["event_id"], f"two outcomes for {source}"
                    found[source] = event
            if set(found) == source_event_ids or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)

    def caught_raw(self, source_event_id: uuid.UUID) -> list[bytes]:
        """Emails at the sink whose Message-ID is this event's id (at whichever domain), as they arrived."""
        message_id = f"Message-ID: <{source_event_id}@".encode()
        return [raw for raw in read_raw(self.mailbox) if message_id in raw[: raw.find(b"\r\n\r\n")]]

    def caught(self, source_event_id: uuid.UUID) -> list[EmailMessage]:
        return [parse(raw) for raw in self.caught_raw(source_event_id)]


async def directory_applied(
    admin: asyncpg.Pool, emails: Sequence[str], practice_id: uuid.UUID | None = None, timeout: float = 20.0
) -> None:
    """Wait until the notifier's directories know these patients (and practice): an invite published after this
    never waits out the grace period, however slowly the directory topics were consumed."""
    deadline = time.monotonic() + timeout
    keys = [email.lower() for email in emails]
    while True:
        known = await admin.fetchval("SELECT count(*) FROM notifier.patients WHERE email = ANY($1::text[])", keys)
        practice_known = practice_id is None or await admin.fetchval(
            "SELECT 1 FROM notifier.practices WHERE practice_id = $1", practice_id
        )
        if known == len(set(keys)) and practice_known:
            return
        assert time.monotonic() < deadline, f"directories not applied: {known} of {len(set(keys))} patients"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def started(
    database: ScratchDatabase, prefix: str, admin: asyncpg.Pool, *, consuming: bool = True, **overrides: Any
) -> AsyncIterator[Notifier]:
    """The notifier built by its own composition root, in this process, running until the block ends.

    Without `consuming` it only sends what is queued: no consumer-group join (Tansu can take ~18 s to let
    a new member in after the previous one left).
    """
    env = notifier_env(database, prefix, **overrides)
    settings = NotifierSettings.model_validate({key.lower(): value for key, value in env.items()})
    async with serving(build_spec(settings), settings, consuming=consuming) as (runtime, app):
        yield Notifier(database, prefix, admin, runtime, app)


@asynccontextmanager
async def running_notifier(infra: Infrastructure, template: str, **overrides: Any) -> AsyncIterator[Notifier]:
    async with (
        scratch(infra, template) as (database, prefix, admin),
        started(database, prefix, admin, **overrides) as n,
    ):
        yield n


# --- events ------------------------------------------------------------------------------------------------


def unique_email(tag: str = "p") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def practice(name: str, reply_to: str | None = None, practice_id: uuid.UUID | None = None) -> PracticeRegistered:
    return PracticeRegistered(
        producer="platform",
        practice_id=practice_id or uuid.uuid4(),
        correlation_id="test-seed",
        payload=PracticeRegisteredPayload(name=name, reply_to=reply_to, registered_at=datetime.now(UTC)),
    )


def patient(email: str, locale: str = "en", name: str | None = None) -> PatientRegistered:
    return PatientRegistered(
        producer="platform",
        correlation_id="test-seed",
        payload=PatientRegisteredPayload(
            patient_id=uuid.uuid4(),
            email=email,
            display_name=name,
            locale=locale,  # type: ignore[arg-type]
            registered_at=datetime.now(UTC),
        ),
    )


def invite(practice_id: uuid.UUID, email: str, note: str | None = None, **payload: Any) -> InviteRequested:
    return InviteRequested.model_validate(
        {
            "producer": "invitations",
            "practice_id": practice_id,
            "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
            "payload": {
                "invite_id": uuid.uuid4(),
                "email": email,
                "note": note,
                "accept_url": f"https://app.collabkare.example/invites/accept?token={uuid.uuid4().hex}",
                "expires_at": datetime(2031, 3, 7, 12, tzinfo=UTC),
                "requested_by": "staff-1",
                **payload,
            },
        }
    )


def revoked(requested: InviteRequested, replaced_by: uuid.UUID | None = None) -> InviteRevoked:
    return InviteRevoked.model_validate(
        {
            "producer": "invitations",
            "practice_id": requested.practice_id,
            "correlation_id": requested.correlation_id,
            "payload": {
                "invite_id": requested.payload.invite_id,
                "revoked_by": "staff-2",
                "revoked_at": datetime.now(UTC),
                "replaced_by": replaced_by,
            },
        }
    )


def approved(practice_id: uuid.UUID, email: str) -> ConnectionApproved:
    return ConnectionApproved.model_validate(
        {
            "producer": "connections",
            "practice_id": practice_id,
            "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
            "payload": {
                "connection_id": uuid.uuid4(),
                "patient_id": uuid.uuid4(),
                "patient_email": email,
                "via": "request",
                "request_id": uuid.uuid4(),
                "approved_by": "staff-1",
                "approved_at": datetime.now(UTC),
            },
        }
    )


def rejected(practice_id: uuid.UUID, email: str, reason: str | None) -> ConnectionRejected:
    return ConnectionRejected.model_validate(
        {
            "producer": "connections",
            "practice_id": practice_id,
            "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
            "payload": {
                "request_id": uuid.uuid4(),
                "patient_id": uuid.uuid4(),
                "patient_email": email,
                "rejected_by": "staff-1",
                "rejected_at": datetime.now(UTC),
                "reason": reason,
            },
        }
    )
