"""A rate-limited SMTP server slows consumption (Kafka keeps the lag), and a restart midway sends nothing twice."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid

import httpx
import pytest
from aiokafka import ConsumerRecord

from collabkare.stack.infra import Infrastructure
from schemas import Envelope, InviteRequested
from services.notifier import handlers, leases, subscribers
from services.notifier.settings import NotifierSettings
from services.runtime.consumer import BatchConsumer, ConsumerContext
from services.runtime.metrics import Metrics
from tests.integration.notifier_harness import (
    Notifier,
    directory_applied,
    invite,
    patient,
    practice,
    scratch,
    started,
    unique_email,
)

RATE = 40  # emails per second the "provider" allows
HIGH_WATER = 20
CONSUMER_BATCH = 10


async def _seed(notifier: Notifier, count: int) -> tuple[uuid.UUID, list[InviteRequested]]:
    """A practice and `count` registered patients, applied; returns the invites to send them."""
    clinic = practice("Backpressure Clinic")
    emails = [unique_email("bp") for _ in range(count)]
    await notifier.publish(clinic, *(patient(email) for email in emails))
    assert clinic.practice_id is not None
    await directory_applied(notifier.admin, emails, clinic.practice_id)
    return clinic.practice_id, [invite(clinic.practice_id, email) for email in emails]


def _sent_once(notifier: Notifier, invites: list[InviteRequested]) -> collections.Counter[int]:
    """How many invites reached the sink how many times: {1: n} when every one arrived exactly once."""
    return collections.Counter(len(notifier.caught_raw(event.event_id)) for event in invites)


async def _backlog_gauge(notifier: Notifier) -> float:
    assert notifier.app is not None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=notifier.app), base_url="http://test") as http:
        text = (await http.get("/metrics")).text
    [line] = [line for line in text.splitlines() if line.startswith("email_backlog ")]
    return float(line.split()[1])


async def test_a_slow_smtp_server_holds_consumption_back_instead_of_growing_the_backlog(
    infra: Infrastructure, template_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "_BACKLOG_REPORT_SECONDS", 0.1)  # the gauge is counted every 5 s in service
    async with (
        scratch(infra, template_database) as (database, prefix, admin),
        started(
            database,
            prefix,
            admin,
            smtp_rate_per_second=RATE,
            pending_high_water=HIGH_WATER,
            consumer_batch_size=CONSUMER_BATCH,
        ) as notifier,
    ):
        _, invites = await _seed(notifier, 120)
        started_at = time.monotonic()
        await notifier.publish(*invites)
        highest, held_back, gauge_highest = 0, False, 0.0
        deadline = started_at + 30
        while time.monotonic() < deadline:
            gauge_highest = max(gauge_highest, await _backlog_gauge(notifier))
            row = await admin.fetchrow(
                "SELECT count(*) FILTER (WHERE status IN ('pending', 'sending')) AS open, count(*) AS queued "
                "FROM notifier.deliveries"
            )
            highest = max(highest, row["open"])
            # Consumption waited: the backlog was at the mark while Kafka still held unconsumed invites.
            held_back = held_back or (row["open"] >= HIGH_WATER - CONSUMER_BATCH and row["queued"] < len(invites))
            if row["queued"] == len(invites) and row["open"] == 0:
                break
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started_at
        async with asyncio.timeout(10):  # bounded: the next count after the last email
            while await _backlog_gauge(notifier) != 0:
                await asyncio.sleep(0.05)

    assert 0 < gauge_highest <= HIGH_WATER - 1 + CONSUMER_BATCH, f"email_backlog showed {gauge_highest} at most"

    assert highest <= HIGH_WATER - 1 + CONSUMER_BATCH, f"backlog reached {highest}"
    assert held_back, "the backlog never met the mark while events were left in Kafka"
    assert elapsed >= (len(invites) - RATE) / RATE, "the rate limit held (one second of burst, then 40/s)"
    assert _sent_once(notifier, invites) == {1: len(invites)}


async def test_a_restart_midway_sends_every_email_exactly_once(infra: Infrastructure, template_database: str) -> None:
    async with scratch(infra, template_database) as (database, prefix, admin):
        async with started(database, prefix, admin, smtp_rate_per_second=30) as first:
            _, invites = await _seed(first, 90)
            await first.publish(*invites)
            # Stopped once sending is under way and every invite has been consumed (consumption can trail the
            # first sends on a slow machine): what is left is then the sender's alone.
            deadline = time.monotonic() + 30
            while True:
                row = await admin.fetchrow(
                    "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) AS queued"
                    " FROM notifier.deliveries"
                )
                if row["sent"] >= 20 and row["queued"] == len(invites):
                    break
                assert time.monotonic() < deadline, f"never every invite consumed with 20 sent: {dict(row)}"
                await asyncio.sleep(0.05)
            queued = row["queued"]
        assert queued == len(invites), "every invite was consumed: what is left is the sender's to finish"
        left = await admin.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status <> 'sent'")
        stuck = await admin.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status = 'sending'")
        assert stuck == 0, "a graceful stop records or gives back every claim"

        async with started(database, prefix, admin, consuming=False, smtp_rate_per_second=200) as second:
            ids = [event.event_id for event in invites]
            rows = await second.deliveries(ids, timeout=30)
            assert sorted(row["status"] for row in rows) == ["sent"] * len(invites)
            outcomes = await second.outcomes(set(ids))

    assert left > 0, "the first notifier was stopped with work left"
    assert _sent_once(second, invites) == {1: len(invites)}
    assert len(outcomes) == len(invites), "one DeliveryOutcome per invite (a second one fails outcomes())"


async def test_invites_waiting_for_the_directory_hold_back_no_other_email(
    infra: Infrastructure, template_database: str
) -> None:
    """A roster of addresses nobody has registered waits out the directory's grace and ends not_on_platform without
    SMTP; it counted toward the high-water mark and held every other practice's email back for up to a minute."""
    async with (
        scratch(infra, template_database) as (database, prefix, admin),
        started(
            database,
            prefix,
            admin,
            pending_high_water=5,
            pending_wait_max_seconds=120,  # longer than the grace: before the fix, the next email waited it out
            directory_grace_seconds=30,
            consumer_batch_size=CONSUMER_BATCH,
        ) as notifier,
    ):
        clinic_id, [registered] = await _seed(notifier, 1)
        strangers = [invite(clinic_id, unique_email("nobody")) for _ in range(20)]
        await notifier.publish(*strangers)
        async with asyncio.timeout(20):
            while await admin.fetchval("SELECT count(*) FROM notifier.deliveries") < len(strangers):
                await asyncio.sleep(0.05)
        await notifier.publish(registered)
        row = await notifier.delivery(registered.event_id, timeout=25)
        waiting = await admin.fetchval(
            "SELECT count(*) FROM notifier.deliveries WHERE status = 'pending' AND source_event_id = ANY($1::uuid[])",
            [event.event_id for event in strangers],
        )
    assert row["status"] == "sent"
    assert waiting == len(strangers), "the email went out while the unregistered addresses still waited"


def _record(event: Envelope, topic: str, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = event.model_dump_json().encode()
    key = event.aggregate_key().encode()
    headers = [("event_type", event.event_type.encode())]
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), headers)


async def test_a_registration_in_a_held_batch_is_applied_before_the_wait(
    infra: Infrastructure, template_database: str
) -> None:
    """Found by a review: the throttle held a whole batch, PatientRegistered included, for up to
    PENDING_WAIT_MAX_SECONDS (60 s), while the invite already queued for that patient ran out its
    DIRECTORY_GRACE_SECONDS (10 s) and ended `not_on_platform`, she being registered. The consumer is driven with
    records by hand, against PostgreSQL, with a backlog at the high-water mark."""
    settings = NotifierSettings(
        database_url="postgresql://notifier@127.0.0.1/unused",
        kafka_bootstrap_servers="127.0.0.1:1",
        jwt_secret="x" * 32,
        directory_grace_seconds=0.5,
        pending_high_water=1,
        pending_wait_max_seconds=3,
    )
    [subscription] = subscribers.routes(settings)
    async with scratch(infra, template_database) as (_, _, admin):
        context = ConsumerContext(
            schema="notifier",
            broker=None,  # type: ignore[arg-type]  # nothing is dead-lettered here
            topic=lambda name: name,
            metrics=Metrics("notifier", groups=[subscription.group]),
            pool=admin,
        )
        consumer = BatchConsumer(subscription, context)
        clinic, busy = practice("Held Clinic"), patient(unique_email("busy"))
        assert clinic.practice_id is not None
        await consumer.consume([_record(clinic, "platform.practices.v1", 0), _record(busy, "platform.patients.v1", 0)])
        await consumer.consume([_record(invite(clinic.practice_id, busy.payload.email), "invitations.v1", 0)])
        # The backlog: a retry waiting its time (invites waiting out the grace are not counted).
        await admin.execute(
            "UPDATE notifier.deliveries SET not_before = now() + interval '1 hour', last_error = '451 4.7.1 later'"
        )
        # Ann signed up, then the practice invited her; her invite's partition is read first.
        ann = patient(unique_email("ann"))
        ann_invite = invite(clinic.practice_id, ann.payload.email)
        await consumer.consume([_record(ann_invite, "invitations.v1", 1)])
        # Her PatientRegistered comes in the next batch, with an invite the backlog holds.
        held = asyncio.create_task(
            consumer.consume(
                [
                    _record(ann, "platform.patients.v1", 1),
                    _record(invite(clinic.practice_id, unique_email("zed")), "invitations.v1", 2),
                ]
            )
        )
        try:
            await asyncio.sleep(1.0)  # her invite's grace over, the batch's invite still held
            assert not held.done(), "the backlog holds the batch's invite"
            to_send, ended = await handlers.claim_deliveries(admin, 10, uuid.uuid4(), max_attempts=10)
        finally:
            await held
    assert ended == [], "a registered patient's invite ended not_on_platform"
    assert [c.delivery.source_event_id for c in to_send] == [ann_invite.event_id]
