"""The sender sends a claimed delivery only while it knows the claim is its own (confirmed within half a lease).

A process frozen longer than its lease (or cut off from the database) has lost its claims to another sender;
what it still holds in memory must not go out a second time. The renewal that confirms the claims runs against
PostgreSQL: tests/integration/test_notifier_leases.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from services.notifier.domain import Attempt, Claimed, SendResult
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.metrics import metrics_for
from services.notifier.sender import Sender, _Run
from services.notifier.settings import NotifierSettings
from tests.unit.notifier_factories import claimed_delivery

SETTINGS = NotifierSettings(
    database_url="postgresql://x@127.0.0.1/x",
    kafka_bootstrap_servers="127.0.0.1:9092",
    jwt_secret="a-development-secret-of-32-bytes-at-least",
)


class Connection:
    """An SMTP connection that is always open and keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def open(self) -> SendResult | None:
        return None

    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        self.sent.append(recipient)
        return SendResult(Attempt.SENT, "250 2.0.0 OK")


def _invite() -> Claimed:
    return claimed_delivery(expires_at=datetime.now(UTC) + timedelta(days=7))


def _run() -> _Run:
    sender = Sender(SETTINGS, Mailer(SETTINGS), Renderer(SETTINGS.smtp_from))
    pool: Any = None  # nothing here reaches the database
    return _Run(sender, pool, metrics_for(CollectorRegistry()))


async def test_a_claim_confirmed_less_than_half_a_lease_ago_is_sent() -> None:
    run, connection, claimed = _run(), Connection(), _invite()
    run.confirmed[claimed.delivery.id] = time.monotonic() - SETTINGS.sending_lease_seconds / 2 + 5
    result = await run._attempt(connection, claimed)  # type: ignore[arg-type]
    assert result is not None and result.attempt is Attempt.SENT and connection.sent == [claimed.delivery.recipient]


async def test_a_claim_not_confirmed_for_half_a_lease_or_never_is_not_sent() -> None:
    run, connection = _run(), Connection()
    stale, unknown = _invite(), _invite()
    run.confirmed[stale.delivery.id] = time.monotonic() - SETTINGS.sending_lease_seconds / 2
    assert await run._attempt(connection, stale) is None  # type: ignore[arg-type]
    assert await run._attempt(connection, unknown) is None  # type: ignore[arg-type]
    assert connection.sent == []


def test_a_dropped_claim_makes_room_and_is_reported_once() -> None:
    run, claimed = _run(), _invite()
    run.confirmed[claimed.delivery.id] = 0.0
    run.outstanding = 1
    run._drop(claimed)
    assert (run.outstanding, run.dropped, run.confirmed) == (0, 1, {})
    assert run.room.is_set(), "the claimer may claim again"
