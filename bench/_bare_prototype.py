"""The design's bare prototype of the pipeline, run on the same stack as the real one: the bar it aims at.

The design contract (`../shared/DESIGN.md`, outside this repository, "Performance facts") describes it: parse,
store, relay, consume, send, write back, nothing more. Here: the roster parsed with a split per line; rows and
their outbox entries COPYed in one transaction; a relay publishing the outbox in batches of 1,000 (acks=all, then
DELETE, one transaction); in a second process, a consumer handing each record to SMTP_POOL_SIZE connections of the
notifier's own SMTP client (the raw ceiling's), the message a byte template filled by `bytes.replace`, and the rows
marked `sent` by one UPDATE every 50 ms. None of the real system's guarantees: no inbox, no directory, no leases,
no retries, no outcome events, no second outbox; a failure aborts.

Measured from the first line parsed to the last row marked sent, against the same PostgreSQL, broker and SMTP catcher
as the pipeline, in the same minutes: how close the real pipeline comes to it is the share of the issue's target
that the guarantees cost, the box's drift taken out.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench._notifier_support import prebuilt_messages
from bench._stack_support import admin_url, cpu_seconds, mailbox, own_cpu_seconds, process_pids
from collabkare.stack import mailbox as mailbox_file
from collabkare.stack.broker import create_topics
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.settings import NotifierSettings

_SCHEMA = "bench_bare"
_PARTITIONS = 12  # as the real topics
_RELAY_BATCH = 1000
_CONSUME_BATCH = 500
_RECORD_EVERY = 0.05
_RECIPIENT = b"bare-prototype-recipient@example.com"
_TIMEOUT = 300.0


@dataclass(frozen=True)
class _Setup:
    database_url: str
    bootstrap: str
    topic: str
    notifier_env: dict[str, str]
    rows: int


async def bare_prototype(stack: Any, rows: int, text: str) -> dict[str, Any]:
    """Seconds from parse to the last row recorded, rows/s and CPU ms per row of each process involved."""
    database_url = admin_url(stack)
    topic = f"{stack.topic_prefix}bench.bare.{uuid.uuid4().hex[:8]}"
    await create_topics(stack.infra.kafka_bootstrap, [(topic, _PARTITIONS)], timeout=30)
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        f"""
        DROP SCHEMA IF EXISTS {_SCHEMA} CASCADE;
        CREATE SCHEMA {_SCHEMA};
        CREATE TABLE {_SCHEMA}.rows (id bigint PRIMARY KEY, email text NOT NULL, note text, outcome text NOT NULL);
        CREATE TABLE {_SCHEMA}.outbox (id bigserial PRIMARY KEY, payload bytea NOT NULL);
        """
    )
    setup = _Setup(database_url, stack.infra.kafka_bootstrap, topic, dict(stack.service_env["notifier"]), rows)
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Queue()
    child = context.Process(target=_consume_and_send, args=(setup, ready, done), name="bare-prototype-sender")
    child.start()
    producer = AIOKafkaProducer(bootstrap_servers=setup.bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        if not await asyncio.to_thread(_started, child, ready):
            raise SystemExit("benchmark: the bare prototype's sender did not start")
        pids = process_pids(stack) | {"prototype sender": child.pid or -1}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"prototype relay": own_cpu_seconds()}
        started_wall = time.time()
        await _store(admin, _parse(text))
        await _relay(admin, producer, topic, rows)
        finished, at = await asyncio.to_thread(done.get, True, _TIMEOUT)
        if not finished:
            raise SystemExit(f"benchmark: the bare prototype's sender failed: {at}")
        seconds = at - started_wall
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["prototype relay"] = own_cpu_seconds() - before["prototype relay"]
    except queue.Empty:
        raise SystemExit(f"benchmark: the bare prototype did not finish {rows:,} rows in {_TIMEOUT:.0f} s") from None
    finally:
        await producer.stop()
        child.join(30)
        if child.is_alive():
            child.kill()
        await admin.execute(f"DROP SCHEMA IF EXISTS {_SCHEMA} CASCADE")
        await admin.close()
    emails = mailbox_file.count(mailbox(stack))
    mailbox_file.empty(mailbox(stack))
    if emails != rows:
        raise SystemExit(f"benchmark: the bare prototype's {rows:,} rows made {emails:,} emails")
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "cpu_ms_per_row": {name: round(spent / rows * 1000, 3) for name, spent in cpu.items() if spent > 0},
    }


def _started(child: multiprocessing.process.BaseProcess, ready: Any, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while child.is_alive() and time.monotonic() < deadline:
        if ready.wait(0.2):
            return True
    return False


def _parse(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, email, note): split at the first comma; comments and blank lines skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        email, _, note = line.partition(",")
        entries.append((number, email.strip().lower(), note.strip() or None))
    return entries


async def _store(db: asyncpg.Connection, entries: list[tuple[int, str, str | None]]) -> None:
    async with db.transaction():
        await db.copy_records_to_table(
            "rows", schema_name=_SCHEMA, records=[(n, email, note, "queued") for n, email, note in entries]
        )
        payloads = [(json.dumps({"row": n, "email": email, "note": note}).encode(),) for n, email, note in entries]
        await db.copy_records_to_table("outbox", schema_name=_SCHEMA, columns=["payload"], records=payloads)


async def _relay(db: asyncpg.Connection, producer: AIOKafkaProducer, topic: str, rows: int) -> None:
    published = 0
    while published < rows:
        async with db.transaction():
            batch = await db.fetch(
                f"SELECT id, payload FROM {_SCHEMA}.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", _RELAY_BATCH
            )
            futures = [await producer.send(topic, value=row["payload"], key=str(row["id"]).encode()) for row in batch]
            for future in futures:
                await future
            await db.execute(f"DELETE FROM {_SCHEMA}.outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in batch])
        published += len(batch)


def _consume_and_send(setup: _Setup, ready: Any, done: Any) -> None:
    asyncio.run(_Sender(setup).run(ready, done))


class _Sender:
    def __init__(self, setup: _Setup) -> None:
        self.setup = setup
        self.settings = NotifierSettings(**{key.lower(): value for key, value in setup.notifier_env.items()})
        self.envelope_sender = Renderer(self.settings.smtp_from).envelope_sender
        _, message = prebuilt_messages(self.settings, 1)[0]
        self.template = message.replace(b"ceiling-00000@example.com", _RECIPIENT)
        self.work: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue(maxsize=4 * _CONSUME_BATCH)
        self.sent: list[int] = []

    async def run(self, ready: Any, done: Any) -> None:
        pool = await asyncpg.create_pool(self.setup.database_url, min_size=1, max_size=2)
        consumer = AIOKafkaConsumer(
            self.setup.topic,
            bootstrap_servers=self.setup.bootstrap,
            group_id=f"{self.setup.topic}.sender",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        mailer = Mailer(self.settings)
        connections = [mailer.connection() for _ in range(self.settings.smtp_pool_size)]
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
            for connection in connections:
                if (trouble := await connection.open()) is not None:
                    raise RuntimeError(f"SMTP connection refused: {trouble}")
            ready.set()
            recorder = asyncio.create_task(self._record(pool))
            others = [asyncio.create_task(self._consume(consumer))]
            others += [asyncio.create_task(self._send(connection)) for connection in connections]
            # The recorder ends when every row is recorded; the others end only by failing.
            finished, _ = await asyncio.wait([recorder, *others], return_when=asyncio.FIRST_COMPLETED)
            errors = [task.exception() for task in finished if task.exception() is not None]
            done.put((False, repr(errors)[:500]) if errors else (True, recorder.result()))
            for task in [recorder, *others]:
                task.cancel()
            await asyncio.gather(recorder, *others, return_exceptions=True)
        except Exception as error:
            done.put((False, repr(error)[:500]))
            raise
        finally:
            await asyncio.gather(*(connection.quit() for connection in connections))
            await consumer.stop()
            await pool.close()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=_CONSUME_BATCH)
            for records in batches.values():
                for record in records:
                    row = json.loads(record.value or b"")
                    email = row["email"]
                    message = self.template.replace(_RECIPIENT, email.encode())
                    await self.work.put((row["row"], email, message))
            if batches:
                await consumer.commit()

    async def _send(self, connection: Any) -> None:
        while True:
            row, recipient, message = await self.work.get()
            result = await connection.send(self.envelope_sender, recipient, message)
            if result.attempt.value != "sent":
                raise RuntimeError(f"the SMTP catcher answered {result.reply!r}")
            self.sent.append(row)

    async def _record(self, pool: asyncpg.Pool) -> float:
        """When the last row was recorded (epoch seconds)."""
        recorded = 0
        while recorded < self.setup.rows:
            await asyncio.sleep(_RECORD_EVERY)
            batch, self.sent = self.sent, []
            if batch:
                await pool.execute(f"UPDATE {_SCHEMA}.rows SET outcome = 'sent' WHERE id = ANY($1::bigint[])", batch)
                recorded += len(batch)
        return time.time()
