"""Batch consumption through the inbox against the real broker and database: once-only, retries, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas import InviteExpired, PracticeRegistered
from services.connections.settings import ConnectionsSettings
from services.runtime import inbox
from services.runtime.consumer import BatchConsumer, Subscription
from services.runtime.database import create_pool
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec
from tests.conftest import PLANS
from tests.support import ScratchDatabase, produce, read_to_end, read_topic, service_env

GROUP = "connections"


def _expired(invite_id: uuid.UUID | None = None) -> InviteExpired:
    return InviteExpired(
        producer="invitations",
        practice_id=uuid.uuid4(),
        correlation_id="consumer-test",
        payload={"invite_id": invite_id or uuid.uuid4(), "expired_at": "2026-11-21T10:00:00Z"},
    )


class Effects:
    """A handler that records what it applied, and fails on purpose for chosen invites."""

    def __init__(self) -> None:
        self.fail_once: set[uuid.UUID] = set()
        self.fail_always: set[uuid.UUID] = set()

    async def __call__(self, connection: asyncpg.Connection, events: list[InviteExpired]) -> None:
        for event in events:
            invite = event.payload.invite_id
            if invite in self.fail_always:
                raise RuntimeError("this event cannot be applied: no patient jane.doe@example.com")
            if invite in self.fail_once:
                self.fail_once.discard(invite)
                raise RuntimeError("fails the first time only")
            await connection.execute(
                'INSERT INTO "connections".effects (event_id, invite_id) VALUES ($1, $2)', event.event_id, invite
            )

    async def registered(self, connection: asyncpg.Connection, events: list[PracticeRegistered]) -> None:
        for event in events:
            await connection.execute(
                'INSERT INTO "connections".effects (event_id, invite_id) VALUES ($1, $2)',
                event.event_id,
                event.practice_id,
            )

    async def forget(self, connection: asyncpg.Connection, key: uuid.UUID) -> None:
        await connection.execute('INSERT INTO "connections".effects (event_id, invite_id) VALUES (NULL, $1)', key)


@pytest.fixture
async def consuming(database: ScratchDatabase, topic_prefix: str) -> AsyncIterator[tuple[ServiceRuntime, Effects]]:
    owner = await asyncpg.connect(database.url_for(GROUP))
    await owner.execute('CREATE TABLE "connections".effects (event_id uuid, invite_id uuid)')
    await owner.close()
    effects = Effects()
    settings = ConnectionsSettings(**{k.lower(): v for k, v in service_env(database, GROUP, topic_prefix).items()})
    settings = settings.model_copy(update={"consumer_max_attempts": 3})
    spec = ServiceSpec(
        name=GROUP,
        title="test",
        description="test",
        migrations=MigrationPlan(GROUP, PLANS[GROUP].directory),
        # platform.practices.v1: a topic this group reads where an InviteExpired has no business, and whose
        # tombstones it applies.
        subscriptions=[
            Subscription(
                GROUP,
                ("invitations.v1", "platform.practices.v1"),
                {"InviteExpired": effects, "PracticeRegistered": effects.registered},
                tombstones={"platform.practices.v1": effects.forget},
            )
        ],
    )
    runtime = ServiceRuntime(spec, settings)
    runtime.consumers.retry_base_seconds = 0.01
    await runtime.start()
    try:
        async with asyncio.timeout(30):
            await runtime.consuming.wait()
        yield runtime, effects
    finally:
        await runtime.stop()


async def _applied(database: ScratchDatabase, expect: int, timeout: float = 30.0) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database.admin_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = await connection.fetch('SELECT event_id, invite_id FROM "connections".effects')
                if len(rows) >= expect:
                    return rows
                await asyncio.sleep(0.1)
    except TimeoutError:
        return rows
    finally:
        await connection.close()


async def _dead_letters(bootstrap: str, topic: str, expect: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the dead-letter topic, once `expect` of them are there: one too many shows."""
    await read_topic(bootstrap, topic, expect=expect)
    return await read_to_end(bootstrap, topic)


async def test_redelivered_event_is_applied_once(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    event, other = _expired(), _expired()
    body = event.model_dump_json().encode()
    topic = topic_prefix + "invitations.v1"
    await produce(database.infra.kafka_bootstrap, topic, [(b"k", body), (b"k", body)])
    await produce(database.infra.kafka_bootstrap, topic, [(b"k", body), (b"k", other.model_dump_json().encode())])
    rows = await _applied(database, expect=2)
    await asyncio.sleep(1.0)  # room for a wrong second application to show up
    rows = await _applied(database, expect=2)
    assert sorted(str(r["event_id"]) for r in rows) == sorted([str(event.event_id), str(other.event_id)])


async def test_malformed_message_goes_to_dead_letters_and_the_next_is_applied(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    good = _expired()
    garbage = b'{"event_type": "InviteExpired", "this is": "not an event"}'
    bootstrap = database.infra.kafka_bootstrap
    trace = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    await produce(bootstrap, topic_prefix + "invitations.v1", [(b"k", garbage)], headers=[trace])
    await produce(bootstrap, topic_prefix + "invitations.v1", [(b"k", good.model_dump_json().encode())])
    rows = await _applied(database, expect=1)
    assert [r["event_id"] for r in rows] == [good.event_id]
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=1)
    assert [d.value for d in dead] == [garbage]
    headers = dict(dead[0].headers)
    assert b"not a valid event" in headers["dead_letter_reason"]
    assert headers["original_topic"] == (topic_prefix + "invitations.v1").encode()
    assert headers["traceparent"] == trace[1], "the original record's headers are kept for a redrive"
    assert headers["content-type"] == b"application/octet-stream", "the original had none: bytes, whatever they are"
    assert dead[0].key == b"k"


async def test_records_with_binary_or_null_header_values_are_applied_with_the_rest_of_their_batch(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """Kafka allows any bytes, or null, as a header value (Java clients and tracing agents send them). FastStream's
    batch parser decoded every value as UTF-8 and raised before the consumer ran, and the whole batch (up to 500
    records of every partition the group reads) was dropped unlogged, its offsets committed past by the next one."""
    bootstrap, topic = database.infra.kafka_bootstrap, topic_prefix + "invitations.v1"
    before, binary, null, null_type, after = (_expired() for _ in range(5))
    poison = b'{"event_type": "InviteExpired", "not": "an event"}'
    sent: list[tuple[InviteExpired | bytes, list[tuple[str, bytes | None]]]] = [
        (before, []),
        (binary, [("x-trace", b"\xff\xfe\x00binary")]),
        (null, [("x-null", None)]),
        (null_type, [("event_type", None)]),  # no type announced: the event says what it is
        (poison, [("x-trace", b"\xff\xfe")]),
        (after, []),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        acks = [
            await producer.send(
                topic,
                value if isinstance(value, bytes) else value.model_dump_json().encode(),
                key=b"k",
                headers=headers,  # type: ignore[arg-type]  # aiokafka sends a None value as Kafka's null
            )
            for value, headers in sent
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    rows = await _applied(database, expect=5)
    assert {r["event_id"] for r in rows} == {e.event_id for e in (before, binary, null, null_type, after)}
    [dead] = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=1)
    assert dead.value == poison
    assert dict(dead.headers)["x-trace"] == "\ufffd\ufffd".encode(), "text only on the way out: U+FFFD per byte"


async def test_an_event_on_a_topic_it_is_not_published_on_is_dead_lettered_not_applied(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """Whoever may write to a platform topic must not be able to act as one of our services through it."""
    bootstrap = database.infra.kafka_bootstrap
    forged, good = _expired(), _expired()
    await produce(bootstrap, topic_prefix + "platform.practices.v1", [(b"k", forged.model_dump_json().encode())])
    await produce(bootstrap, topic_prefix + "invitations.v1", [(b"k", good.model_dump_json().encode())])

    rows = await _applied(database, expect=1)
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=1)

    assert [r["event_id"] for r in rows] == [good.event_id]
    assert [d.value for d in dead] == [forged.model_dump_json().encode()]
    reason = dict(dead[0].headers)["dead_letter_reason"].decode()
    assert reason == f"InviteExpired is published on {topic_prefix}invitations.v1, not here"


async def test_a_tombstone_is_applied_by_its_key_and_a_stray_one_is_dead_lettered(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """A compacted topic's tombstone (a key, no value) deletes what the key names: the subscription's handler gets
    the id. One whose key is no id, and one on a topic that has no tombstones, go to the dead letters."""
    bootstrap, practices = database.infra.kafka_bootstrap, topic_prefix + "platform.practices.v1"
    deleted = uuid.uuid4()
    empty_not_null = str(uuid.uuid4()).encode()  # b"" is no tombstone on Kafka: compaction keeps it
    capitals = str(uuid.uuid4()).upper().encode()  # another key to compaction than the id our events carry
    await produce(
        bootstrap,
        practices,
        [(b"not an id", None), (empty_not_null, b""), (capitals, None), (str(deleted).encode(), None)],
    )
    await produce(bootstrap, topic_prefix + "invitations.v1", [(str(uuid.uuid4()).encode(), None)])

    rows = await _applied(database, expect=1)
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=4)

    assert [(r["event_id"], r["invite_id"]) for r in rows] == [(None, deleted)]
    reasons = sorted(dict(d.headers)["dead_letter_reason"].decode() for d in dead)
    not_an_id = "a tombstone's key must be the id of what it deletes (lowercase, hyphenated)"
    assert reasons == [not_an_id, not_an_id, "empty message", "empty message"]
    # Passed on as they came: a null stays null (an integrator's probe saw b"", which a redrive cannot delete with).
    assert [d.value for d in dead if d.key != empty_not_null] == [None, None, None]
    assert [d.value for d in dead if d.key == empty_not_null] == [b""]
    # What an operator's dashboard shows of them (a platform team's probe: only a count per group).
    metrics = consuming[0].metrics
    assert metrics.dead_letters.labels(GROUP, "miskeyed")._value.get() == 2
    assert metrics.dead_letters.labels(GROUP, "not_an_event")._value.get() == 2
    assert metrics.events_consumed.labels(GROUP, "tombstone")._value.get() == 1


async def test_a_record_on_a_compacted_topic_keyed_otherwise_than_its_contract_says_is_dead_lettered(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """The key's bytes are what compaction and tombstones go by: a PracticeRegistered keyed by anything but its
    practice_id as the event spells it (lowercase, hyphenated; capitals are another key to Kafka) would outlive the
    tombstone that deletes the practice."""
    bootstrap, practices = database.infra.kafka_bootstrap, topic_prefix + "platform.practices.v1"

    def registered() -> PracticeRegistered:
        payload = {"name": "Keyed Clinic", "registered_at": datetime.now(UTC)}
        return PracticeRegistered(producer="platform", practice_id=uuid.uuid4(), correlation_id="t", payload=payload)

    by_name, by_other_id, upper, good = registered(), registered(), registered(), registered()
    await produce(
        bootstrap,
        practices,
        [
            (b"Keyed Clinic", by_name.model_dump_json().encode()),
            (str(uuid.uuid4()).encode(), by_other_id.model_dump_json().encode()),
            (str(upper.practice_id).upper().encode(), upper.model_dump_json().encode()),
            (str(good.practice_id).encode(), good.model_dump_json().encode()),
        ],
    )

    rows = await _applied(database, expect=1)
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=3)

    assert [r["invite_id"] for r in rows] == [good.practice_id]
    refused = (by_name, by_other_id, upper)
    assert sorted(d.value for d in dead) == sorted(e.model_dump_json().encode() for e in refused)
    reasons = {dict(d.headers)["dead_letter_reason"].decode() for d in dead}
    assert reasons == {"PracticeRegistered must be keyed by its practice_id (lowercase, hyphenated)"}


async def test_a_redelivered_tombstone_is_not_applied_again(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """Deleting twice is not harmless: a batch [tombstone, registration] read again (a crash before the commit)
    would delete what the registration brought back, the registration being skipped by the inbox."""
    runtime, _ = consuming
    bootstrap, practices = database.infra.kafka_bootstrap, topic_prefix + "platform.practices.v1"
    deleted = uuid.uuid4()
    await produce(bootstrap, practices, [(str(deleted).encode(), None)])
    await _applied(database, expect=1)
    [record] = await read_to_end(bootstrap, practices)

    await BatchConsumer(runtime.spec.subscriptions[0], runtime.consumers).consume([record])  # the same record again

    rows = await _applied(database, expect=2, timeout=1.0)
    assert [(r["event_id"], r["invite_id"]) for r in rows] == [(None, deleted)]
    assert runtime.metrics.records_skipped.labels(GROUP, "duplicate")._value.get() == 1


async def test_a_tombstone_at_the_place_of_an_earlier_one_on_a_topic_created_anew_is_applied(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """A platform team's probe: tombstones were named by their place on Kafka alone, so after the topic was
    re-created (a migration to another cluster, a topic deleted and made again) the tombstone of another patient at
    an offset an earlier one had used was skipped as applied, and her data stayed."""
    runtime, _ = consuming
    bootstrap, practices = database.infra.kafka_bootstrap, topic_prefix + "platform.practices.v1"
    first = uuid.uuid4()
    await produce(bootstrap, practices, [(str(first).encode(), None)])
    await _applied(database, expect=1)
    [record] = await read_to_end(bootstrap, practices)
    second = uuid.uuid4()
    anew = dataclasses.replace(record, key=str(second).encode(), timestamp=record.timestamp + 1)

    await BatchConsumer(runtime.spec.subscriptions[0], runtime.consumers).consume([anew])

    rows = await _applied(database, expect=2)
    assert sorted(r["invite_id"] for r in rows) == sorted([first, second])


async def test_an_event_without_its_event_id_is_dead_lettered_not_given_a_fresh_one(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """A default event_id at every read would let each redelivery past the inbox."""
    bootstrap, topic = database.infra.kafka_bootstrap, topic_prefix + "invitations.v1"
    wire = json.loads(_expired().model_dump_json())
    del wire["event_id"]
    anonymous = json.dumps(wire).encode()
    good = _expired()
    await produce(bootstrap, topic, [(b"k", anonymous), (b"k", anonymous), (b"k", good.model_dump_json().encode())])

    rows = await _applied(database, expect=1)
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=2)

    assert [r["event_id"] for r in rows] == [good.event_id]
    assert [d.value for d in dead] == [anonymous, anonymous]
    assert all(b"event_id: Field required" in dict(d.headers)["dead_letter_reason"] for d in dead)


async def test_events_of_types_the_group_does_not_handle_are_skipped_by_their_header_unparsed(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """Relays name each record's type in a header; another group's event is passed over without parsing, so
    not even a broken one reaches this group's dead letters. A record without the header is parsed."""
    bootstrap, topic = database.infra.kafka_bootstrap, topic_prefix + "invitations.v1"
    not_ours = b'{"event_type": "InviteRevoked", "broken": true}'
    await produce(bootstrap, topic, [(b"k", not_ours)], headers=[("event_type", b"InviteRevoked")])
    ours = _expired()
    await produce(
        bootstrap, topic, [(b"k", ours.model_dump_json().encode())], headers=[("event_type", b"InviteExpired")]
    )
    unlabelled = b'{"event_type": "InviteRevoked", "broken": true}'
    after = _expired()
    await produce(bootstrap, topic, [(b"k", unlabelled), (b"k", after.model_dump_json().encode())])
    # A type no contract knows is judged whether announced or not: dead-lettered, never silently passed over.
    unknown = after.model_dump_json().replace('"InviteExpired"', '"PatientDeleted"').encode()
    await produce(bootstrap, topic, [(b"k", unknown)], headers=[("event_type", b"PatientDeleted")])
    await produce(bootstrap, topic, [(b"k", unknown)])
    rows = await _applied(database, expect=2)
    assert sorted(str(r["event_id"]) for r in rows) == sorted([str(ours.event_id), str(after.event_id)])
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=3)
    assert [d.value for d in dead] == [unlabelled, unknown, unknown], "records with another group's type are skipped"
    assert all(b"PatientDeleted" in dict(d.headers)["dead_letter_reason"] for d in dead[1:])


async def test_an_event_type_header_that_does_not_fit_the_record_is_dead_lettered(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """An integrator's probe: a PracticeRegistered whose header said PatientRegistered was skipped by one group (by
    the header) and applied by another (by the body), silently. A header naming a type that never travels on the
    topic, or another type than the body's, is a mistake: dead-lettered, whichever group reads it."""
    bootstrap, practices = database.infra.kafka_bootstrap, topic_prefix + "platform.practices.v1"

    def registered() -> PracticeRegistered:
        payload = {"name": "Header Clinic", "registered_at": datetime.now(UTC)}
        return PracticeRegistered(producer="platform", practice_id=uuid.uuid4(), correlation_id="t", payload=payload)

    elsewhere, mislabelled, made_up, good = registered(), registered(), registered(), registered()
    for event, header in ((elsewhere, b"PatientRegistered"), (mislabelled, b"InviteExpired"), (made_up, b"Jane Doe")):
        record = (str(event.practice_id).encode(), event.model_dump_json().encode())
        await produce(bootstrap, practices, [record], headers=[("event_type", header)])
    await produce(bootstrap, practices, [(str(good.practice_id).encode(), good.model_dump_json().encode())])

    rows = await _applied(database, expect=1)
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=3)

    assert [r["invite_id"] for r in rows] == [good.practice_id]
    assert sorted(dict(d.headers)["dead_letter_reason"].decode() for d in dead) == [
        "the event_type header says InviteExpired, the event is a PracticeRegistered",
        "the event_type header says PatientRegistered, which is not published here",
        # A producer's free text is not quoted: it may carry anything.
        "the event_type header says an unknown type, the event is a PracticeRegistered",
    ]


async def test_failing_event_is_retried_then_dead_lettered_without_blocking_others(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    _, effects = consuming
    flaky, broken, fine = _expired(), _expired(), _expired()
    effects.fail_once.add(flaky.payload.invite_id)
    effects.fail_always.add(broken.payload.invite_id)
    bootstrap = database.infra.kafka_bootstrap
    await produce(
        bootstrap,
        topic_prefix + "invitations.v1",
        [(b"k", e.model_dump_json().encode()) for e in (flaky, broken, fine)],
        headers=[("content-type", b"application/json")],
    )
    rows = await _applied(database, expect=2)
    assert sorted(str(r["event_id"]) for r in rows) == sorted([str(flaky.event_id), str(fine.event_id)])
    dead = await _dead_letters(bootstrap, topic_prefix + "connections.dead-letter.v1", expect=1)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert b"cannot be applied: no patient j***@example.com" in headers["dead_letter_reason"], "scrubbed as logs are"
    assert headers["correlation_id"] == broken.correlation_id.encode()  # the event's, not a fresh one
    assert headers["content-type"] == b"application/json", "the original record's content type"


async def test_a_database_behind_the_code_is_waited_for_not_dead_lettered(
    consuming: tuple[ServiceRuntime, Effects], database: ScratchDatabase, topic_prefix: str
) -> None:
    """Found by an operator's review: a new image consuming before its migration Job had run met a missing table,
    gave up after the retries and dead-lettered the event, committing past it (lost until redriven by hand); a
    read-only database after a failover did the same. Such errors are an outage: waited out, the event kept."""
    runtime, _ = consuming
    owner = await asyncpg.connect(database.url_for(GROUP))
    try:
        await owner.execute('ALTER TABLE "connections".effects RENAME TO effects_later')  # as before the migration
        event = _expired()
        bootstrap = database.infra.kafka_bootstrap
        await produce(bootstrap, topic_prefix + "invitations.v1", [(b"k", event.model_dump_json().encode())])
        dead_letters = runtime.metrics.dead_letters.labels(GROUP, "handler_failed")
        retries = runtime.metrics.consumer_retries.labels(GROUP, "dependency_down")
        await asyncio.sleep(1.0)  # far past 3 attempts at a 0.01 s base: the old code had dead-lettered it by now
        assert dead_letters._value.get() == 0, "an outage's event was dead-lettered"
        # What an operator sees of the stall (the pod ready, its partitions owned, nothing dead-lettered).
        assert retries._value.get() >= 3, "the retries of a stalled group are counted"
        await owner.execute('ALTER TABLE "connections".effects_later RENAME TO effects')  # the Job has run
    finally:
        await owner.close()
    rows = await _applied(database, expect=1)
    assert [str(r["event_id"]) for r in rows] == [str(event.event_id)]
    assert dead_letters._value.get() == 0, "nothing was dead-lettered on the way"


async def test_inbox_entries_past_their_retention_are_pruned_in_chunks(database: ScratchDatabase) -> None:
    """Applied event ids are kept only as long as a topic could deliver them again (INBOX_RETENTION_DAYS)."""
    admin = await asyncpg.connect(database.admin_url)
    pool = await create_pool(database.url_for(GROUP), GROUP, 1, 2)
    now = datetime.now(UTC)
    try:
        rows = [("old", uuid.uuid4(), "InviteExpired", now - timedelta(days=40)) for _ in range(7)]
        rows += [("recent", uuid.uuid4(), "InviteExpired", now - timedelta(days=3)) for _ in range(5)]
        await admin.copy_records_to_table(
            "inbox", schema_name=GROUP, records=rows, columns=["consumer", "event_id", "event_type", "applied_at"]
        )
        assert await inbox.prune(pool, GROUP, now - timedelta(days=30), chunk=3) == 7  # chunks of 3, 3 and 1
        left = await admin.fetch(f'SELECT consumer FROM "{GROUP}".inbox')
        assert sorted({r["consumer"] for r in left}) == ["recent"] and len(left) == 5
        assert await inbox.prune(pool, GROUP, now - timedelta(days=30)) == 0
    finally:
        await pool.close()
        await admin.close()


async def test_every_service_runs_the_inbox_pruner(consuming: tuple[ServiceRuntime, Effects]) -> None:
    runtime, _ = consuming
    assert runtime.jobs.running.get("prune_inbox") is True
