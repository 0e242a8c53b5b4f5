"""Helpers of the notifier benchmark: publishing, waiting, CPU accounting and the SMTP ceiling loop."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from collabkare.seeding import publish_pipelined
from collabkare.stack.infra import Infrastructure
from schemas import Envelope
from services.notifier.domain import Claimed, NewDelivery, delivery_id_for, message_id_for
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.settings import NotifierSettings


async def publish(bootstrap: str, prefix: str, events: list[Envelope]) -> None:
    await publish_pipelined(bootstrap, prefix, events, max_batch_size=512 * 1024)


async def wait_for(what: str, check: Any, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting until {what}")
        await asyncio.sleep(every)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (PostgreSQL forks a backend per connection)."""
    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


def cpu_snapshot(infra: Infrastructure) -> dict[str, float]:
    assert infra.supervisor is not None
    return {name: cpu_seconds(pid) for name, pid in infra.supervisor.pids().items()}


def prebuilt_messages(settings: NotifierSettings, count: int) -> list[tuple[str, bytes]]:
    """The same kind of message the notifier sends (an invite, ~5 kB), rendered before the clock starts."""
    renderer = Renderer(settings.smtp_from)
    messages = []
    for i in range(count):
        event_id = uuid.uuid4()
        delivery = NewDelivery(
            id=delivery_id_for(event_id),
            source_event_id=event_id,
            source_event_type="InviteRequested",
            kind="invite",
            recipient=f"ceiling-{i:05d}@example.com",
            practice_id=uuid.uuid4(),
            correlation_id="bench",
            message_id=message_id_for(event_id, settings.sender_domain),
            note="Welcome to Riverside - we look forward to seeing you." if i % 2 else None,
            accept_url=f"https://app.collabkare.example/invites/accept?token={secrets.token_urlsafe(24)}",
            expires_at=datetime.now(UTC) + timedelta(days=7),
        )
        claimed = Claimed(delivery, 1, True, "en", None, "Riverside Family Practice", None)
        messages.append((delivery.recipient, renderer.render(claimed)))
    return messages


async def ceiling(settings: NotifierSettings, messages: list[tuple[str, bytes]], how: str) -> float:
    """Emails/s pushing pre-built messages over SMTP_POOL_SIZE reused connections; nothing else happens."""
    sender = Renderer(settings.smtp_from).envelope_sender
    queue = list(reversed(messages))
    mailer = Mailer(settings)

    async def lean() -> None:
        connection = mailer.connection()
        while queue:
            recipient, message = queue.pop()
            result = await connection.send(sender, recipient, message)
            assert result.attempt.value == "sent", result
        await connection.quit()

    async def sendmail() -> None:
        smtp = mailer.new_client()
        await smtp.connect()
        while queue:
            recipient, message = queue.pop()
            await smtp.sendmail(sender, [recipient], message)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*((lean if how == "lean" else sendmail)() for _ in range(settings.smtp_pool_size)))
    return len(messages) / (time.perf_counter() - started)
