"""Consumes Kafka in batches through the inbox; bounded retries, then the dead-letter topic, then the commit."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaRoute
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage

from schemas import EVENT_TYPES, Envelope, dead_letter_topic, topic_for
from services.runtime import inbox, record_headers
from services.runtime.cooperative import in_slices
from services.runtime.database import is_transient
from services.runtime.kafka import MAX_POLL_INTERVAL_SECONDS
from services.runtime.logging import get_logger, scrub_text
from services.runtime.metrics import Metrics
from services.runtime.records import PoisonMessage, announced_type, canonical_id, decode, event_id_in

log = get_logger(__name__)
_IDLE_POLL_MS = 50  # how long an idle consumer waits for records, then sleeps, before it asks again
# How long the broker may hold a fetch that finds nothing. Kafka answers it as soon as a record arrives; the embedded
# broker (Tansu) holds it longer: at aiokafka's 500 ms an event took 120-150 ms from relay to consumer on the local
# stack, at 200 ms about 75 (an idle service then spends about 1% of a core polling; the broker 3% instead of 1.6).
_FETCH_MAX_WAIT_MS = 200

# Applies a run of new events of one type; writes through the given connection, inside the inbox transaction.
EventHandler = Callable[[asyncpg.Connection, list[Any]], Awaitable[None]]
# Deletes what a compaction tombstone (a record with a key and no value) names, by that key (an id); writes through
# the given connection, inside a transaction of its own.
TombstoneHandler = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]]


class Throttle(Protocol):
    """Awaited before the events it `holds` are applied, outside their transaction: a service can hold consumption
    back here (backpressure), so that Kafka's lag grows instead of the service's own backlog. The batch's other
    records are applied first: they never wait."""

    @property
    def holds(self) -> frozenset[str]:
        """The event types it holds."""
        ...

    async def __call__(self, pool: asyncpg.Pool, events: list[Envelope]) -> None: ...


def _is_held(step: Envelope | TombstoneHandler, throttle: Throttle) -> bool:
    return isinstance(step, Envelope) and step.event_type in throttle.holds


@dataclass(frozen=True)
class Subscription:
    """One row of a service's ROUTES table: a consumer group, its topics and a handler per event type."""

    group: str
    topics: tuple[str, ...]
    handlers: Mapping[str, EventHandler]
    description: str = ""
    ack_policy: AckPolicy = AckPolicy.MANUAL  # offsets are committed by us, after the inbox transaction
    throttle: Throttle | None = None
    # Per compacted topic (unprefixed), what a tombstone on it deletes; an empty record elsewhere is dead-lettered.
    tombstones: Mapping[str, TombstoneHandler] = field(default_factory=dict)


@dataclass
class ConsumerContext:
    schema: str
    broker: KafkaBroker
    topic: Callable[[str], str]
    metrics: Metrics
    max_attempts: int = 5
    retry_base_seconds: float = 0.2
    pool: asyncpg.Pool | None = None  # set when the service starts, before the broker does

    @property
    def database(self) -> asyncpg.Pool:
        assert self.pool is not None, "the consumer started before the database pool"
        return self.pool


class BatchConsumer:
    def __init__(self, subscription: Subscription, context: ConsumerContext) -> None:
        self.subscription = subscription
        self.context = context
        self.dead_letters = context.topic(dead_letter_topic(subscription.group))
        # Where each event type is published: one read on another topic is misrouted or forged (the platform's
        # producers may write to their topics, not to ours), and is dead-lettered, never applied.
        self.home_topics = {event_type: context.topic(topic_for(event_type)) for event_type in EVENT_TYPES}
        self.tombstones = {context.topic(topic): handler for topic, handler in subscription.tombstones.items()}

    def route(self, batch_size: int, session_timeout_seconds: float) -> KafkaRoute:
        async def consume(message: KafkaMessage) -> None:
            try:
                await self.consume(message.raw_message)
            except BaseException:
                # Rewind so the batch is read again; the inbox makes the replay harmless.
                await message.nack()
                raise
            await message.ack()

        consume.__name__ = f"{self.subscription.group}_consume"
        consume.__doc__ = self.subscription.description
        return KafkaRoute(
            consume,
            *(self.context.topic(name) for name in self.subscription.topics),
            group_id=self.context.topic(self.subscription.group),
            batch=True,
            max_records=batch_size,
            # An empty poll is followed by a sleep as long as its timeout (FastStream's batch subscriber): at its
            # default 200 ms, an event reaching an idle consumer could wait 200 ms more on every hop.
            batch_timeout_ms=_IDLE_POLL_MS,
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            max_poll_interval_ms=int(MAX_POLL_INTERVAL_SECONDS * 1000),
            session_timeout_ms=int(session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(session_timeout_seconds * 1000 / 3),
            auto_offset_reset="earliest",
            ack_policy=self.subscription.ack_policy,
            description=self.subscription.description,
            decoder=_records_as_they_are,
            parser=record_headers.parse_batch,
        )

    async def consume(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        # Each record's step, in order: an event to apply, or a tombstone's handler.
        plan: list[tuple[ConsumerRecord[bytes, bytes], Envelope | TombstoneHandler]] = []
        # Parsing a full batch takes tens of milliseconds: the service's other tasks run in between.
        async for record in in_slices(records):
            # A tombstone's value is null; an empty one is not (compaction keeps it): that is a poison message.
            if record.value is None and (forget := self.tombstones.get(record.topic)) is not None:
                plan.append((record, forget))
                continue
            announced = announced_type(record)
            if announced in EVENT_TYPES and announced not in self.subscription.handlers:
                if self.home_topics[announced] == record.topic:
                    # Another consumer's event, by the type our relays put in the headers: not parsed.
                    self._skipped("not_handled")
                    continue
                # A header naming a type that never travels here is a mistake, not someone else's event: skipped,
                # it vanished from this group while another group reading the topic applied it.
                await self.dead_letter(
                    record, f"the event_type header says {announced}, which is not published here", kind="misrouted"
                )
                continue
            # No header, one of ours, or a type no contract knows: parsed, so an unknown one is dead-lettered
            # (with or without the header) instead of vanishing.
            try:
                event = decode(record)
            except PoisonMessage as error:
                await self.dead_letter(record, str(error), kind="not_an_event")
                continue
            if record.topic != (home := self.home_topics[event.event_type]):
                await self.dead_letter(
                    record, f"{event.event_type} is published on {home}, not here", event, kind="misrouted"
                )
                continue
            if announced is not None and announced != event.event_type:
                # Named only when it is a type we know: a producer's free text may carry anything, PHI included.
                said = announced if announced in EVENT_TYPES else "an unknown type"
                await self.dead_letter(
                    record,
                    f"the event_type header says {said}, the event is a {event.event_type}",
                    event,
                    kind="misrouted",
                )
                continue
            if record.topic in self.tombstones and record.key != event.aggregate_key().encode():
                # On a compacted topic the key's bytes are what a later record or tombstone replaces or deletes: a
                # record keyed otherwise (by an email, an id spelt in capitals) would outlive the tombstone that
                # deletes its patient or practice.
                reason = f"{event.event_type} must be keyed by its {event.key_path()} (lowercase, hyphenated)"
                await self.dead_letter(record, reason, event, kind="miskeyed")
                continue
            if event.event_type in self.subscription.handlers:
                plan.append((record, event))
            else:
                self._skipped("not_handled")
        throttle = self.subscription.throttle
        held = [(r, step) for r, step in plan if throttle and _is_held(step, throttle)]
        if throttle and held:
            # What the throttle holds waits, once a batch (one bounded wait); the rest goes first (a patient's
            # registration must not wait behind the backlog that decides her invite's email by it).
            await self._apply_in_order([(r, step) for r, step in plan if not _is_held(step, throttle)])
            await throttle(self.context.database, [step for _, step in held if isinstance(step, Envelope)])
            plan = held
        await self._apply_in_order(plan)

    async def _apply_in_order(
        self, plan: Sequence[tuple[ConsumerRecord[bytes, bytes], Envelope | TombstoneHandler]]
    ) -> None:
        """Runs of events applied together, each tombstone after what came before it."""
        wanted: list[tuple[ConsumerRecord[bytes, bytes], Envelope]] = []
        for record, step in plan:
            if isinstance(step, Envelope):
                wanted.append((record, step))
                continue
            if wanted:  # what came before the tombstone first, in order
                await self.apply(wanted)
                wanted = []
            await self.forget(record, step)
        if wanted:
            await self.apply(wanted)

    async def forget(self, record: ConsumerRecord[bytes, bytes], handler: TombstoneHandler) -> None:
        """A compaction tombstone: the platform deleted what its key names (a patient, a practice). Recorded in the
        inbox by its place on Kafka, timestamp and key, so that a redelivered batch does not delete again what a
        registration after it brought back; the database away is waited for, as for events."""
        key = canonical_id(record.key)
        if key is None:
            # Compaction goes by the key's bytes: another spelling of the id deletes nothing on the topic.
            await self.dead_letter(
                record, "a tombstone's key must be the id of what it deletes (lowercase, hyphenated)", kind="miskeyed"
            )
            return
        context, group = self.context, self.subscription.group
        name = inbox.record_id(record.topic, record.partition, record.offset, record.timestamp, record.key)
        failures = 0
        while True:
            try:
                async with context.database.acquire() as connection, connection.transaction():
                    applied = await inbox.claim_record(connection, context.schema, group, name, "tombstone")
                    if applied:
                        await handler(connection, key)
                break
            except Exception as error:
                failures += 1
                if is_transient(error) or failures < context.max_attempts:
                    await self._backoff(failures, "tombstone_failed", error)
                    continue
                await self.dead_letter(record, f"{type(error).__name__}: {error}", kind="handler_failed")
                return
        if applied:
            context.metrics.events_consumed.labels(group, "tombstone").inc()
            log.info("consumer.tombstone_applied", group=group, topic=record.topic, key=str(key))
        else:
            self._skipped("duplicate")
            log.info(
                "inbox.duplicate_skipped", group=group, count=1, kind="tombstone", topic=record.topic, key=str(key)
            )

    async def apply(self, items: list[tuple[ConsumerRecord[bytes, bytes], Envelope]]) -> None:
        """Apply with retries; a batch that keeps failing is split so one bad event cannot block the rest."""
        failures = 0
        while True:
            try:
                await self._apply_once([event for _, event in items])
                return
            except Exception as error:
                failures += 1
                if is_transient(error):
                    # The database or broker is away: wait for it, however long, and lose nothing.
                    await self._backoff(failures, "dependency_down", error)
                    continue
                if failures < self.context.max_attempts:
                    await self._backoff(failures, "apply_failed", error)
                    continue
                if len(items) > 1:
                    for item in items:
                        await self.apply([item])
                    return
                record, event = items[0]
                await self.dead_letter(record, f"{type(error).__name__}: {error}", event, kind="handler_failed")
                return

    async def _apply_once(self, events: list[Envelope]) -> None:
        context = self.context
        async with context.database.acquire() as connection, connection.transaction():
            fresh = await inbox.claim_new(connection, context.schema, self.subscription.group, events)
            for event_type, run in _runs(fresh):
                await self.subscription.handlers[event_type](connection, run)
        # Counted once committed: a batch retried or split would count its duplicates again.
        if len(fresh) < len(events):
            # Named, so that a producer reusing an event id for another event can be found: it is skipped too.
            kept = {id(event) for event in fresh}
            skipped = [event for event in events if id(event) not in kept]
            self._skipped("duplicate", len(skipped))
            log.info(
                "inbox.duplicate_skipped",
                group=self.subscription.group,
                count=len(skipped),
                events=[f"{event.event_type} {event.event_id}" for event in skipped[:10]],
            )
        for event in fresh:
            context.metrics.events_consumed.labels(self.subscription.group, event.event_type).inc()

    def _skipped(self, why: str, count: int = 1) -> None:
        """Records passed over without applying them; `why` one of SKIP_REASONS."""
        self.context.metrics.records_skipped.labels(self.subscription.group, why).inc(count)

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], reason: str, event: Envelope | None = None, *, kind: str
    ) -> None:
        """Publish the record to the group's dead-letter topic; `kind` one of DEAD_LETTER_KINDS."""
        # The original record as it was (key, bytes, headers: a redrive can put it back as is), and why.
        # (FastStream's producer sends text only: a value that is not UTF-8 has U+FFFD for the bytes it cannot read.)
        original = {key: record_headers.text(value) for key, value in record.headers or ()}
        headers = original | {
            # FastStream's producer names a content type only for what it encodes itself and sends "" for bytes,
            # unless the headers given say otherwise: the original's type, or what the bytes are when it has none.
            "content-type": record_headers.declared_content_type(original) or "application/octet-stream",
            # Scrubbed as a log line is: a header is what tools list and people copy into tickets; the payload, with
            # whatever PHI it carries, stays where the topic's access rules keep it.
            "dead_letter_reason": scrub_text(reason[:2000]),
            "original_topic": record.topic,
            "original_partition": str(record.partition),
            "original_offset": str(record.offset),
            "consumer_group": self.subscription.group,
        }
        await self.context.broker.publish(
            record.value,  # a tombstone's null stays null (FastStream sends a keyed None as one): redrivable as is
            topic=self.dead_letters,
            key=record.key,
            headers=headers,
            # FastStream would otherwise stamp a fresh one; an unparsable record keeps what it carried, if any.
            correlation_id=event.correlation_id if event else original.get("correlation_id"),
        )
        self.context.metrics.dead_letters.labels(self.subscription.group, kind).inc()
        log.error(
            "consumer.dead_lettered",
            group=self.subscription.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            # The producer's, so the line joins its request's; scrubbed, as a producer wrote it.
            correlation_id=scrub_text(event.correlation_id) if event else None,
            event_id=str(event.event_id) if event else original.get("event_id") or event_id_in(record.value),
            error=reason[:300],
        )

    async def _backoff(self, failures: int, reason: str, error: BaseException) -> None:
        """Wait before trying again; `reason` is one of RETRY_REASONS (the log line says `consumer.<reason>`)."""
        delay = min(30.0, self.context.retry_base_seconds * 2**failures) * random.uniform(0.5, 1.0)
        log.warning(
            f"consumer.{reason}", group=self.subscription.group, error=repr(error)[:300], retry_in=round(delay, 2)
        )
        self.context.metrics.consumer_retries.labels(self.subscription.group, reason).inc()
        await asyncio.sleep(delay)


def _records_as_they_are(message: StreamMessage[Any]) -> None:
    """FastStream's decoder would json.loads every record of the batch for a body argument `consume` does not
    take (it reads `raw_message`, and `decode` parses each record once, with pydantic): a sixth of the
    notifier's CPU went there."""
    return None


def _runs(events: list[Envelope]) -> list[tuple[str, list[Envelope]]]:
    """Consecutive events of one type, in order: handlers get lists without reordering across types."""
    runs: list[tuple[str, list[Envelope]]] = []
    for event in events:
        if runs and runs[-1][0] == event.event_type:
            runs[-1][1].append(event)
        else:
            runs.append((event.event_type, [event]))
    return runs
