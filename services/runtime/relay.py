"""Publishes outbox rows to Kafka in batches: claim with SKIP LOCKED, send, await acks, then delete."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaProducer
from murmurhash2 import murmurhash2

from services.runtime.cancel import cancel_within, forget
from services.runtime.cooperative import in_slices
from services.runtime.database import closed, listen, unlisten
from services.runtime.kafka import KafkaSecurity
from services.runtime.logging import get_logger
from services.runtime.metrics import Metrics
from services.runtime.migrations import outbox_channel
from services.runtime.outbox import pending_count

log = get_logger(__name__)


class BrokerError(Exception):
    """The broker failed the relay (starting its producer, a send, an ack): told apart by where it happened, since
    the database's failures (refused, unreachable, timed out) raise the same OSError and TimeoutError types."""


_KAFKA_MURMUR2_SEED = 0x9747B28C
# Every payload is an event's JSON: said in the header FastStream, Spring and Kafka UIs read to decode a record.
_JSON = ("content-type", b"application/json")


def partition_for_key(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (the Java client's and aiokafka's: murmur2 of the key), in C.

    aiokafka computes the same hash in pure Python: a third of the relay's CPU per event. A keyless record
    takes a random available partition, as with aiokafka's default.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmurhash2(key, _KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % len(all_partitions)]


def new_producer(
    bootstrap_servers: str, send_timeout_seconds: float, security: KafkaSecurity | None = None
) -> AIOKafkaProducer:
    """acks=all and no idempotence: plain at-least-once that holds on any Kafka-protocol broker."""
    return AIOKafkaProducer(
        **(security or KafkaSecurity()).aiokafka_options(),
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=512 * 1024,
        request_timeout_ms=int(send_timeout_seconds * 1000),
        retry_backoff_ms=200,
        partitioner=partition_for_key,
    )


def batch_lock_key(schema: str) -> int:
    """The advisory lock every relay of one outbox takes for each batch (a signed 64-bit key, fixed forever)."""
    digest = hashlib.blake2b(f"collabkare.outbox.{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class OutboxRelay:
    """One relay per service process. Several processes' relays on one outbox take turns, a batch at a time.

    Two batches in flight at once would reach the broker in either order: an invite's InviteRevoked could
    overtake its InviteRequested on their partition. So each batch holds a transaction-level advisory lock;
    a relay that finds it taken waits for the next notification or poll. One relay publishes tens of
    thousands of events a second, so taking turns costs no throughput that matters. Order still yields to a
    failed publish (the batch is sent again, after what may have followed it) and to a rolling upgrade from a
    release without the lock: this project's consumers do not need it to be right (the notifier remembers revokes).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        bootstrap_servers: str,
        topic: Callable[[str], str],
        batch_size: int = 1000,
        poll_seconds: float = 1.0,
        send_timeout_seconds: float = 10.0,
        metrics: Metrics | None = None,
        security: KafkaSecurity | None = None,
        pending_report_seconds: float = 5.0,
    ) -> None:
        self._security = security
        self._pending_report_seconds = pending_report_seconds
        self._metrics = metrics
        self._pool = pool
        self._schema = schema
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._send_timeout = send_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.broker_up = False
        self._pending_reported_at = -math.inf
        self._lock_key = batch_lock_key(schema)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Bounded: a relay cancelled inside a statement to a database that stopped answering waits for its rollback
        (the pool's 60 s command timeout); it is left to end when the service terminates the pool."""
        if self._task:
            await cancel_within(timeout, self._task)
        await self._close_producer()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        listener: asyncpg.Connection | None = None
        lost = False  # the LISTEN connection closed under the relay, and it does not listen again yet
        try:
            while True:
                await self._report_pending()
                try:
                    if listener is not None and closed(listener):  # its closing woke the relay (_on_notify)
                        connection, listener, lost = listener, None, True
                        log.warning("outbox.listen_lost", schema=self._schema, effect="listening again")
                        await self._unlisten(connection)
                    if listener is None:
                        listener = await self._listen()
                        if lost:
                            lost = False
                            log.info("outbox.listening_again", schema=self._schema)
                    if self._producer is None:
                        self._producer = await self._start_producer()
                    sent = await self.publish_batch()
                    failures = 0
                    self.broker_up = True
                    if sent < self._batch_size:
                        await self._sleep(self._poll_seconds)
                except Exception as error:
                    failures += 1
                    delay = min(30.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0)
                    if isinstance(error, BrokerError):
                        self.broker_up = False
                        cause = repr(error.__cause__ or error)
                        log.warning("outbox.publish_failed", schema=self._schema, error=cause, retry_in=round(delay, 2))
                        await self._close_producer()
                    else:
                        # The database's doing (away, refusing the outbox's rows): the broker and its producer are
                        # not in question, and /readyz must not send an operator after them.
                        log.warning(
                            "outbox.database_failed", schema=self._schema, error=repr(error), retry_in=round(delay, 2)
                        )
                    if listener is not None:
                        connection, listener = listener, None
                        await self._unlisten(connection)
                    await asyncio.sleep(delay)
        finally:
            # Stopped (cancelled) wherever it was, the LISTEN connection goes back to the pool: one kept held
            # pool.close() for ever.
            if listener is not None:
                await self._unlisten(listener)

    async def _report_pending(self) -> None:
        """The outbox_pending gauge (outbox lag), refreshed at most every few seconds, broker up or not."""
        if self._metrics is None or time.monotonic() - self._pending_reported_at < self._pending_report_seconds:
            return
        self._pending_reported_at = time.monotonic()
        try:
            async with self._pool.acquire(timeout=2) as connection:
                self._metrics.outbox_pending.set(await pending_count(connection, self._schema))
        except Exception as error:  # the database is away: the gauge keeps its last value
            log.debug("outbox.pending_count_failed", schema=self._schema, error=repr(error)[:200])

    async def publish_batch(self) -> int:
        """Claim up to one batch, publish it and wait for every ack, then delete it: one transaction.

        0 when another relay of this outbox is publishing a batch: the rows wait their turn, in order."""
        producer = self._producer
        assert producer is not None
        try:
            return await self._publish_batch(producer)
        except BrokerError:
            raise
        except Exception as error:
            # A broker failure whose rollback failed too (the pod cut off from both) is still the broker's.
            failure = error.__context__
            while failure is not None and not isinstance(failure, BrokerError):
                failure = failure.__context__
            if failure is not None:
                raise failure from failure.__cause__  # the broker's error, which the log shows
            raise

    async def _publish_batch(self, producer: AIOKafkaProducer) -> int:
        async with self._pool.acquire() as connection, connection.transaction():
            # The batch lock lives as long as this transaction. Should this process die or lose the network
            # while it waits for acks, PostgreSQL ends the session after this long and the lock is free again:
            # the other processes' relays would otherwise wait for TCP to notice, hours.
            idle = int(self._send_timeout * 3 * 1000)
            await connection.execute(f"SET LOCAL idle_in_transaction_session_timeout = {idle}")
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await connection.fetch(
                f"""
                SELECT id, topic, message_key, event_type, event_id, payload
                FROM "{self._schema}".outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                self._batch_size,
            )
            if not rows:
                return 0
            futures: list[asyncio.Future[object]] = []
            try:
                # Rows are deleted only once the broker has acknowledged every message of the batch.
                async with asyncio.timeout(self._send_timeout):
                    # A send that only queues the message does not yield: a batch of a thousand would hold the
                    # event loop for tens of milliseconds (the notifier's SMTP connections, the APIs).
                    async for row in in_slices(rows):
                        topic, key = self._topic(row["topic"]), row["message_key"].encode()
                        headers = [
                            ("event_type", row["event_type"].encode()),
                            ("event_id", str(row["event_id"]).encode()),
                            _JSON,
                        ]
                        futures.append(await producer.send(topic, value=row["payload"], key=key, headers=headers))
                    for future in futures:  # one after the other: gather() costs a callback per message
                        await future
            except BaseException as error:
                # The batch failed once, and says so once (the caller logs it): each message's own failure, still
                # to come, was logged by asyncio as "never retrieved", a thousand error lines for one batch.
                forget(*futures)
                if isinstance(error, Exception):
                    # Stopped while the lock is still held: whatever of this batch is still on its way lands before
                    # another relay's next batch can follow it (the retry then only adds duplicates, after).
                    await self._close_producer()
                    raise BrokerError(str(error)) from error
                raise
            await connection.execute(
                f'DELETE FROM "{self._schema}".outbox WHERE id = ANY($1::bigint[])', [row["id"] for row in rows]
            )
        self.published += len(rows)
        if self._metrics is not None:
            self._metrics.outbox_published.inc(len(rows))
        log.debug("outbox.published", schema=self._schema, count=len(rows))
        return len(rows)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _listen(self) -> asyncpg.Connection:
        return await listen(self._pool, outbox_channel(self._schema), self._on_notify, self._on_notify)

    async def _unlisten(self, connection: asyncpg.Connection) -> None:
        await unlisten(self._pool, connection, outbox_channel(self._schema), self._on_notify, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        """A NOTIFY, or the LISTEN connection closing: either way the relay's loop runs now."""
        self._wake.set()

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = new_producer(self._bootstrap, self._send_timeout, self._security)
        try:
            async with asyncio.timeout(self._send_timeout):
                await producer.start()
        except BaseException as error:
            await _stop_producer(producer, self._send_timeout)
            if isinstance(error, Exception):
                raise BrokerError(str(error)) from error
            raise
        return producer

    async def _close_producer(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await _stop_producer(producer, self._send_timeout)

    async def broker_reachable(self, timeout: float = 2.0) -> bool:
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await producer.client.fetch_all_metadata()
            return True
        except Exception:
            return False


async def _stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    # A dead broker must not hang shutdown: stop is bounded, whatever it leaves unsent stays in the outbox.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await producer.stop()
