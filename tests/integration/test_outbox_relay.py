"""The outbox relay against the real broker: exactly once per row with racing relays, and broker outages."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from collabkare.stack.broker import create_topics
from collabkare.stack.ports import free_port
from schemas import InviteExpired, parse_event
from services.runtime.database import create_pool, transaction
from services.runtime.metrics import Metrics
from services.runtime.outbox import add_events, pending_count
from services.runtime.relay import BrokerError, OutboxRelay, batch_lock_key
from tests.support import ScratchDatabase, read_to_end

SCHEMA = "invitations"
ROOT = Path(__file__).resolve().parents[2]


def _events(count: int, practice_id: uuid.UUID) -> list[InviteExpired]:
    return [
        InviteExpired(
            producer=SCHEMA,
            practice_id=practice_id,
            correlation_id=f"relay-test-{i}",
            payload={"invite_id": uuid.uuid4(), "expired_at": "2026-11-21T10:00:00Z"},
        )
        for i in range(count)
    ]


def _relay(
    pool: asyncpg.Pool, bootstrap: str, prefix: str, batch_size: int = 200, send_timeout: float = 3.0
) -> OutboxRelay:
    return OutboxRelay(
        pool,
        SCHEMA,
        bootstrap,
        lambda name: prefix + name,
        batch_size=batch_size,
        poll_seconds=0.2,
        send_timeout_seconds=send_timeout,
    )


async def _wait_until_empty(pool: asyncpg.Pool, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with pool.acquire() as connection:
                if await pending_count(connection, SCHEMA) == 0:
                    return
            await asyncio.sleep(0.1)


def _lifecycles(invites: int, steps: int, practice_id: uuid.UUID) -> list[InviteExpired]:
    """`steps` events about each of `invites` invites (one Kafka key each), interleaved: invite 0 step 0,
    invite 1 step 0, …, invite 0 step 1, …; the correlation id says which step each is."""
    keys = [uuid.uuid4() for _ in range(invites)]
    return [
        InviteExpired(
            producer=SCHEMA,
            practice_id=practice_id,
            correlation_id=f"step-{step}",
            payload={"invite_id": key, "expired_at": "2026-11-21T10:00:00Z"},
        )
        for step in range(steps)
        for key in keys
    ]


async def test_two_racing_relays_publish_every_row_once_and_in_order(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """Two processes' relays on one outbox: every row once, and each key's events in the order they were written
    (two batches in flight at once could reach the broker in either order: a revoke before its invite)."""
    bootstrap = database.infra.kafka_bootstrap
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 2, 6)
    events = _lifecycles(invites=40, steps=75, practice_id=uuid.uuid4())
    # A generous ack deadline: a batch timed out on a slow machine is published again (at least once, by design),
    # which this test would report as a race between the relays.
    relays = [_relay(pool, bootstrap, topic_prefix, batch_size=100, send_timeout=30.0) for _ in range(2)]
    try:
        for relay in relays:
            await relay.start()
        # Both producers connected first: 3,000 rows take one relay a tenth of a second, so a relay still
        # connecting (a busy broker) would find nothing left, and there would be no race.
        async with asyncio.timeout(30):
            while not all(relay.broker_up for relay in relays):
                await asyncio.sleep(0.05)
        # Written in several transactions while both relays are already running.
        for start in range(0, len(events), 250):
            async with transaction(pool) as connection:
                await add_events(connection, SCHEMA, events[start : start + 250])
        await _wait_until_empty(pool)
    finally:
        for relay in relays:
            await relay.stop()
        await pool.close()

    assert sum(relay.published for relay in relays) == len(events)
    # Both relays have stopped: read exactly what the topic holds (no consumer-group join eating a fixed budget).
    records = await read_to_end(bootstrap, topic_prefix + "invitations.v1", timeout=60)
    counts = Counter(parse_event(r.value).event_id for r in records)
    assert set(counts) == {e.event_id for e in events}
    assert max(counts.values()) == 1, "an outbox row was published twice"
    steps_by_key: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = parse_event(record.value)
        assert record.key == event.aggregate_key().encode()
        assert dict(record.headers) == {
            "event_type": event.event_type.encode(),
            "event_id": str(event.event_id).encode(),
            "content-type": b"application/json",
        }
        steps_by_key.setdefault(record.key, []).append(int(event.correlation_id.removeprefix("step-")))
    assert len(steps_by_key) == 40
    for key, steps in steps_by_key.items():
        assert steps == list(range(75)), f"invite {key.decode()}: events out of the order they were written in"


async def test_a_relay_waits_its_turn_while_another_publishes(database: ScratchDatabase, topic_prefix: str) -> None:
    """The batch lock: while one relay's batch is in flight (its transaction open), another publishes nothing."""
    bootstrap = database.infra.kafka_bootstrap
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 2, 6)
    relay = _relay(pool, bootstrap, topic_prefix)
    events = _events(10, uuid.uuid4())
    try:
        async with transaction(pool) as connection:
            await add_events(connection, SCHEMA, events)
        relay._producer = await relay._start_producer()
        async with transaction(pool) as holder:  # another relay, mid-batch
            assert await holder.fetchval("SELECT pg_try_advisory_xact_lock($1)", batch_lock_key(SCHEMA))
            assert await relay.publish_batch() == 0
            async with pool.acquire() as connection:
                assert await pending_count(connection, SCHEMA) == len(events)
        assert await relay.publish_batch() == len(events), "the lock goes with the other batch's transaction"
    finally:
        await relay.stop()
        await pool.close()


@pytest.mark.timeout(240)  # an outage, a restart, and the relay's backoff to wait out, on a slow box
async def test_relay_waits_out_a_broker_outage_and_loses_nothing(database: ScratchDatabase, topic_prefix: str) -> None:
    broker = database.infra.broker
    if broker is None:
        pytest.skip("the broker is external (KAFKA_BOOTSTRAP_SERVERS): this test must stop and start it itself")
    bootstrap = database.infra.kafka_bootstrap
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 2, 4)
    relay = _relay(pool, bootstrap, topic_prefix)
    practice = uuid.uuid4()
    try:
        await relay.start()
        before = _events(50, practice)
        async with transaction(pool) as connection:
            await add_events(connection, SCHEMA, before)
        await _wait_until_empty(pool)

        broker.stop()
        try:
            during = _events(200, practice)
            async with transaction(pool) as connection:
                await add_events(connection, SCHEMA, during)
            async with asyncio.timeout(20):
                while relay.broker_up:  # the relay notices once its send times out
                    await asyncio.sleep(0.1)
            async with pool.acquire() as connection:
                assert await pending_count(connection, SCHEMA) == len(during), "rows left the outbox with no broker"
        finally:
            # The session's broker: every later test needs it, whatever happened here. In a thread: its wait for the
            # port would freeze the relay's loop meanwhile, and its backoff grow.
            await asyncio.to_thread(broker.start)
        # Memory storage forgets topics across a restart; operators' brokers keep them.
        await create_topics(bootstrap, [(topic_prefix + "invitations.v1", 3)], timeout=30)
        await _wait_until_empty(pool, timeout=60)
    finally:
        await relay.stop()
        await pool.close()

    records = await read_to_end(bootstrap, topic_prefix + "invitations.v1", timeout=60)
    assert {parse_event(r.value).event_id for r in records} >= {e.event_id for e in during}


async def test_outbox_pending_gauge_shows_the_lag_while_the_broker_is_away(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """The gauge operators alert on: rows waiting while nothing answers on the bootstrap address, then 0."""
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 1, 4)
    metrics = Metrics(SCHEMA)
    async with transaction(pool) as connection:
        await add_events(connection, SCHEMA, _events(7, uuid.uuid4()))

    async def gauge_reaches(value: float) -> None:
        async with asyncio.timeout(30):
            while metrics.registry.get_sample_value("outbox_pending") != value:
                await asyncio.sleep(0.05)

    nobody = f"127.0.0.1:{free_port()}"
    for bootstrap, expected in ((nobody, 7), (database.infra.kafka_bootstrap, 0)):
        relay = OutboxRelay(
            pool,
            SCHEMA,
            bootstrap,
            lambda name: topic_prefix + name,
            poll_seconds=0.1,
            send_timeout_seconds=2.0,
            metrics=metrics,
            pending_report_seconds=0.1,
        )
        await relay.start()
        try:
            await gauge_reaches(expected)
        finally:
            await relay.stop()
    await pool.close()


class Stalled:
    """A broker that takes every message and acknowledges none in time: the acks fail after the batch gave up."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[object]] = []

    async def send(self, *args: object, **kwargs: object) -> asyncio.Future[object]:
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    async def stop(self) -> None:
        pass


async def test_a_batch_that_times_out_is_one_failure_not_one_log_line_per_message(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """Found by a fault drill: with the broker frozen mid-batch, invitations logged 999 error lines in a second,
    "Future exception was never retrieved", one per message whose ack failed after the batch had timed out."""
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 1, 2)
    async with transaction(pool) as connection:
        await add_events(connection, SCHEMA, _events(50, uuid.uuid4()))
    relay = _relay(pool, database.infra.kafka_bootstrap, topic_prefix, send_timeout=0.3)
    broker = Stalled()
    relay._producer = broker  # type: ignore[assignment]
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        with pytest.raises(BrokerError) as failed:
            await relay.publish_batch()
        assert isinstance(failed.value.__cause__, TimeoutError), "the broker's, told apart from the database's"
        assert len(broker.acks) == 50
        for ack in broker.acks:  # the client's own request timeout, after the batch gave up
            if not ack.done():
                ack.set_exception(ConnectionError("request timed out"))
        broker.acks.clear()
        gc.collect()
        await asyncio.sleep(0.05)
        assert unretrieved == []
        async with pool.acquire() as connection:
            assert await pending_count(connection, SCHEMA) == 50, "nothing deleted: published later"
    finally:
        loop.set_exception_handler(None)
        await pool.close()


async def test_a_relay_stopped_as_it_starts_gives_its_connection_back(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """A relay cancelled while its LISTEN was on the wire kept that connection: pool.close() then waited out its
    10 s bound at every stop of a service that had just started (found as slow test teardowns)."""
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 1, 4)
    try:
        for delay in [0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.05] * 3:
            relay = _relay(pool, database.infra.kafka_bootstrap, topic_prefix)
            try:
                async with asyncio.timeout(15):  # a pool emptied by lost connections blocks the next LISTEN
                    await relay.start()
                    await asyncio.sleep(delay)
                    await relay.stop()
            except TimeoutError:
                pytest.fail(f"the relay's start or stop hung, its pool emptied (stopped at {delay} s)")
            assert pool.get_idle_size() == pool.get_size(), f"a connection still out after a stop at {delay} s"
    finally:
        pool.terminate()  # close() would wait forever for a connection that was never given back


_FROZEN_RELAY = """
import asyncio, sys
from services.runtime.database import create_pool
from services.runtime.relay import OutboxRelay

class Hanging:  # a producer whose sends never complete: the batch stays open, holding the batch lock
    async def send(self, *args, **kwargs):
        print("sending", flush=True)  # the rows are claimed: the session now waits, idle in its transaction
        await asyncio.sleep(3600)

async def main():
    pool = await create_pool(sys.argv[1], "frozen-relay", 1, 2)
    relay = OutboxRelay(pool, "invitations", "127.0.0.1:9", str, send_timeout_seconds=float(sys.argv[2]))
    relay._producer = Hanging()
    await relay.publish_batch()

asyncio.run(main())
"""


async def test_a_relay_frozen_mid_batch_frees_the_batch_lock_for_the_others(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """A process stopped dead (a lost node, SIGSTOP) while its batch is open: PostgreSQL ends its idle transaction
    after three send timeouts, and another relay publishes. Without that, the others would wait for TCP: hours."""
    send_timeout = 5.0  # the frozen relay's: its transaction may stay idle 3x this long, 15 s
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 1, 4)
    events = _events(3, uuid.uuid4())
    async with transaction(pool) as connection:
        await add_events(connection, SCHEMA, events)
    frozen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FROZEN_RELAY,
        database.url_for(SCHEMA),
        str(send_timeout),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    relay = _relay(pool, database.infra.kafka_bootstrap, topic_prefix)
    try:
        assert frozen.stdout is not None
        # Stopped once its query is answered, not in the middle of one: asyncpg prepares a statement with Flush,
        # not Sync, and PostgreSQL arms the idle-in-transaction timeout only at a Sync (there, a dead node is
        # still found by the TCP keepalives; a process frozen at that very instant is not).
        async with asyncio.timeout(30):
            assert await frozen.stdout.readline() == b"sending\n"
        os.kill(frozen.pid, signal.SIGSTOP)
        assert await pool.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'frozen-relay'"
        ), "the frozen relay holds the batch lock"
        await relay.start()
        # Bounded, not timed: without PostgreSQL ending the frozen transaction the lock is never freed here.
        await _wait_until_empty(pool, timeout=60)
    finally:
        frozen.kill()
        await asyncio.wait_for(frozen.wait(), 10)
        await relay.stop()
        await pool.close()
    assert relay.published == len(events), "the rows the frozen relay had claimed were published by the other"


async def test_a_database_refusing_the_outbox_is_not_taken_for_a_broker_outage(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    """A black-box drill: with DELETE on the outbox revoked, the relay logged outbox.publish_failed, closed its
    producer, and /readyz said `broker: false` for the whole outage while the broker was fine."""
    pool = await create_pool(database.url_for(SCHEMA), SCHEMA, 1, 4)
    admin = await asyncpg.connect(database.admin_url)
    relay = _relay(pool, database.infra.kafka_bootstrap, topic_prefix, send_timeout=3.0)
    try:
        await admin.execute(f"REVOKE DELETE ON {SCHEMA}.outbox FROM {SCHEMA}")
        async with transaction(pool) as connection:
            await add_events(connection, SCHEMA, _events(3, uuid.uuid4()))
        await relay.start()
        async with asyncio.timeout(30):
            while relay.published == 0 and not await read_to_end(
                database.infra.kafka_bootstrap, topic_prefix + "invitations.v1"
            ):
                await asyncio.sleep(0.1)  # published at least once; its DELETE is refused
        await asyncio.sleep(1.0)  # a retry or two
        assert relay.published == 0 and await relay.broker_reachable(), "the broker was never in question"
        await admin.execute(f"GRANT DELETE ON {SCHEMA}.outbox TO {SCHEMA}")
        await _wait_until_empty(pool)
    finally:
        await relay.stop()
        await admin.execute(f"GRANT DELETE ON {SCHEMA}.outbox TO {SCHEMA}")
        await admin.close()
        await pool.close()
