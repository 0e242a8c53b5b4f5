"""Decided deliveries keep a patient's address and the server's reply: deleted once DELIVERY_RETENTION_DAYS are up
(real PostgreSQL). They were kept for good, beside the inbox that was already pruned after 30 days."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from collabkare.stack.infra import Infrastructure
from services.notifier import directory_repository, repository
from services.notifier.settings import NotifierSettings
from tests.integration.notifier_harness import scratch

NOW = datetime.now(UTC)


@pytest.mark.parametrize("chunk", [10_000, 1], ids=["one-chunk", "a-chunk-a-row"])
async def test_deliveries_decided_before_the_horizon_are_deleted_and_nothing_else(
    infra: Infrastructure, template_database: str, chunk: int
) -> None:
    rows = {
        "sent long ago": ("sent", NOW - timedelta(days=40)),
        "bounced long ago": ("error", NOW - timedelta(days=31)),
        "not on the platform long ago": ("not_on_platform", NOW - timedelta(days=90)),
        "sent yesterday": ("sent", NOW - timedelta(days=1)),
        "still pending": ("pending", None),  # queued long ago and never decided (a retry waiting): kept
    }
    ids = {name: uuid.uuid4() for name in rows}
    async with scratch(infra, template_database) as (_, _, admin):
        await admin.executemany(
            """
            INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, correlation_id,
                message_id, status, decided_at, created_at)
            VALUES ($1, $1, 'ConnectionApproved', 'connection_approved', 'pat@example.com', 'c', '<m@example.com>',
                $2, $3, now() - interval '100 days')
            """,
            [(ids[name], status, decided) for name, (status, decided) in rows.items()],
        )
        purged = await repository.purge_decided(admin, NOW - timedelta(days=30), chunk=chunk)
        kept = {row["id"] for row in await admin.fetch("SELECT id FROM notifier.deliveries")}
    assert purged == 3
    assert kept == {ids["sent yesterday"], ids["still pending"]}


async def test_the_addresses_of_patients_deleted_before_the_horizon_are_forgotten(
    infra: Infrastructure, template_database: str
) -> None:
    """A deleted patient's address is kept only to stop connection emails still on their way to her."""
    async with scratch(infra, template_database) as (_, _, admin):
        await admin.executemany(
            "INSERT INTO notifier.departed_patients (email, deleted_at) VALUES ($1, $2)",
            [("old@example.com", NOW - timedelta(days=31)), ("recent@example.com", NOW - timedelta(days=2))],
        )
        purged = await directory_repository.purge_departed(admin, NOW - timedelta(days=30))
        kept = [row["email"] for row in await admin.fetch("SELECT email FROM notifier.departed_patients")]
    assert (purged, kept) == (1, ["recent@example.com"])


def test_the_retention_outlasts_the_topics() -> None:
    """An event the topics can still deliver again (14 days) must find its delivery: the second guard against an
    email sent twice, after the inbox."""
    base = {"database_url": "postgresql://u@h/d", "kafka_bootstrap_servers": "k:9092", "jwt_secret": "j" * 32}
    assert NotifierSettings(**base).delivery_retention_days == 30  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delivery_retention_days"):
        NotifierSettings(**base, delivery_retention_days=7)  # type: ignore[arg-type]
