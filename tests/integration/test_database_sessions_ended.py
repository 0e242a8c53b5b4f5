"""PostgreSQL ends the services' sessions (a failover, a proxy's idle timeout, pg_terminate_backend): the outbox relay
and the notifier's sender LISTEN again, and the sender holds its slot's lock again.

Found by an operator's probe: the LISTEN connections died unnoticed (an idle connection runs no query that could
fail), the relays and the sender fell back to polling for good (an invite's email 1.6 to 2 s later per hop instead
of 0.1 s), nothing was logged, and the notifier's slot lock was gone for good. The polls here are a minute long: only
a NOTIFY can wake them within the tests' bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from collabkare.stack.infra import Infrastructure
from services.notifier import domain
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.metrics import metrics_for
from services.notifier.sender import Sender, _Run
from services.runtime.database import create_pool, transaction
from services.runtime.outbox import add_events
from services.runtime.relay import OutboxRelay
from tests.integration.notifier_harness import MessageIds, scratch, smtp_server, smtp_settings
from tests.integration.test_outbox_relay import _events
from tests.support import ScratchDatabase

pytestmark = pytest.mark.timeout(60)

POLL_SECONDS = 60.0  # no poll within a test: what happens in time happened by a NOTIFY
SOON = 5.0  # a NOTIFY's wake-up, with room for a loaded box
INSTANCE = "pod-sessions"


async def _end_sessions(admin: asyncpg.Pool, role: str) -> list[int]:
    """What the operator's probe did: every session of the service's role (on this test's database) terminated."""
    rows = await admin.fetch(
        """
        SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND usename = $1
        """,
        role,
    )
    return [row["pid"] for row in rows]


async def _listening(admin: asyncpg.Pool, role: str, channel: str, not_in: list[int]) -> int:
    """The pid of the role's session LISTENing on `channel` (one not in `not_in`), once there is one."""
    async with asyncio.timeout(SOON):
        while True:
            pids = await admin.fetch(
                """
                SELECT pid FROM pg_stat_activity
                WHERE datname = current_database() AND usename = $1 AND query = $2 AND NOT pid = ANY($3::int[])
                """,
                role,
                f'LISTEN "{channel}"',
                not_in,
            )
            if pids:
                return int(pids[0]["pid"])
            await asyncio.sleep(0.05)


async def _slot_holder(admin: asyncpg.Pool, granted: bool = True) -> int | None:
    """The pid of the session holding INSTANCE's slot lock (or waiting for it), if any (a bigint key is its two halves
    in pg_locks)."""
    key = domain.slot_lock_key(INSTANCE)
    return await admin.fetchval(
        """
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted = $3
          AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        (key >> 32) & 0xFFFFFFFF,
        key & 0xFFFFFFFF,
        granted,
    )


async def _held_by(admin: asyncpg.Pool, not_by: list[int], timeout: float = SOON) -> int:
    async with asyncio.timeout(timeout):
        while (pid := await _slot_holder(admin)) is None or pid in not_by:
            await asyncio.sleep(0.05)
    return pid


def _said(logs: list[dict[str, Any]], *events: str) -> list[tuple[str, str]]:
    return [(entry["event"], entry["log_level"]) for entry in logs if entry["event"] in events]


async def test_the_relay_listens_again_after_postgresql_ended_its_sessions(
    database: ScratchDatabase, topic_prefix: str
) -> None:
    schema, channel = "invitations", "invitations_outbox"
    pool = await create_pool(database.url_for(schema), schema, 1, 4)
    admin = await asyncpg.create_pool(database.admin_url, min_size=1, max_size=2)
    relay = OutboxRelay(
        pool, schema, database.infra.kafka_bootstrap, lambda name: topic_prefix + name, poll_seconds=POLL_SECONDS
    )
    try:
        await relay.start()
        async with asyncio.timeout(30):
            while not relay.broker_up:
                await asyncio.sleep(0.05)
        first = await _listening(admin, schema, channel, [])
        with capture_logs() as logs:
            ended = await _end_sessions(admin, schema)
            assert first in ended
            await _listening(admin, schema, channel, ended)  # the relay LISTENs again, on a new session
            async with transaction(pool) as connection:
                await add_events(connection, schema, _events(1, uuid.uuid4()))
            async with asyncio.timeout(SOON):  # woken by the NOTIFY, not by the minute's poll
                while relay.published < 1:
                    await asyncio.sleep(0.05)
    finally:
        await relay.stop()
        await admin.close()
        await pool.close()
    assert _said(logs, "outbox.listen_lost", "outbox.listening_again") == [
        ("outbox.listen_lost", "warning"),
        ("outbox.listening_again", "info"),
    ]


@pytest.fixture
def catcher() -> Iterator[tuple[MessageIds, int]]:
    handler = MessageIds()
    with smtp_server(handler) as port:
        yield handler, port


@asynccontextmanager
async def _sender(
    infra: Infrastructure, template: str, port: int
) -> AsyncIterator[tuple[_Run, asyncio.Task[None], asyncpg.Pool]]:
    """A sender run in slot INSTANCE on the notifier's role (pg_terminate_backend ends its sessions, not the admin's),
    once it holds its slot and LISTENs; its task, and an admin pool on its database."""
    settings = smtp_settings(port, smtp_pool_size=1, sender_poll_seconds=POLL_SECONDS, notifier_instance=INSTANCE)
    sender = Sender(settings, Mailer(settings), Renderer(settings.smtp_from))
    async with scratch(infra, template) as (database, _, admin):
        pool = await create_pool(database.url_for("notifier"), "notifier", 1, 6)
        run = _Run(sender, pool, metrics_for(CollectorRegistry()))
        task = asyncio.create_task(run.run())
        try:
            await _held_by(admin, [])
            await _listening(admin, "notifier", "notifier_deliveries", [])
            yield run, task, admin
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)
            await pool.close()


async def _queue(admin: asyncpg.Pool, recipient: str, claimed_by: uuid.UUID | None = None) -> str:
    """A connection email, due now (no directory to consult), or held by the run `claimed_by`; its Message-ID. The
    insert NOTIFYs the senders."""
    event_id = uuid.uuid4()
    message_id = domain.message_id_for(event_id, "collabkare.example")
    await admin.execute(
        """
        INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, recipient_key,
            correlation_id, message_id, status, claimed_at, claimed_by)
        VALUES ($1, $2, 'ConnectionApproved', 'connection_approved', $3, $3, 'c', $4,
            CASE WHEN $5::uuid IS NULL THEN 'pending' ELSE 'sending' END, CASE WHEN $5::uuid IS NOT NULL THEN now() END,
            $5)
        """,
        domain.delivery_id_for(event_id),
        event_id,
        recipient,
        message_id,
        claimed_by,
    )
    return message_id


async def _delivered(catcher: MessageIds, message_id: str) -> None:
    async with asyncio.timeout(SOON):
        while message_id not in catcher.copies:
            await asyncio.sleep(0.05)


async def test_the_sender_listens_again_and_holds_its_slot_again_after_postgresql_ended_its_sessions(
    infra: Infrastructure, template_database: str, catcher: tuple[MessageIds, int]
) -> None:
    handler, port = catcher
    async with _sender(infra, template_database, port) as (_, task, admin):
        await _delivered(handler, await _queue(admin, "before@example.com"))
        with capture_logs() as logs:
            ended = await _end_sessions(admin, "notifier")
            holder = await _held_by(admin, ended)  # (b) the slot is held again, by a new session of the sender
            await _listening(admin, "notifier", "notifier_deliveries", ended)
            await _delivered(handler, await _queue(admin, "after@example.com"))  # (a) woken by the NOTIFY
            assert await _slot_holder(admin) == holder
        assert not task.done(), "the run goes on"
    said = _said(logs, "sender.listen_lost", "sender.listening_again", "sender.slot_lost", "sender.slot_held_again")
    assert sorted(said) == [  # one line each; the listener and the slot come back in either order
        ("sender.listen_lost", "warning"),
        ("sender.listening_again", "info"),
        ("sender.slot_held_again", "info"),
        ("sender.slot_lost", "warning"),
    ]


async def _take_slot_when_it_is_free(admin: asyncpg.Pool) -> tuple[asyncpg.Connection, asyncio.Task[object]]:
    """Another session (a second process given the same NOTIFIER_INSTANCE) waiting for the slot's lock: PostgreSQL
    grants it the lock the moment the holder's session ends, before the sender could take it again."""
    other = await admin.acquire()
    waiting = asyncio.create_task(other.execute("SELECT pg_advisory_lock($1)", domain.slot_lock_key(INSTANCE)))
    async with asyncio.timeout(SOON):
        while not await _slot_holder(admin, granted=False):
            await asyncio.sleep(0.02)
    return other, waiting


async def _claim_of_a_live_run(admin: asyncpg.Pool) -> tuple[str, uuid.UUID]:
    """A delivery held by a live run named in the slot (the process that took the slot): its Message-ID, the run."""
    run = domain.sender_run_id(INSTANCE, os.urandom(16))
    return await _queue(admin, "live@example.com", claimed_by=run), run


async def test_a_sender_takes_its_slot_again_without_taking_back_what_a_live_run_holds(
    infra: Infrastructure, template_database: str, catcher: tuple[MessageIds, int]
) -> None:
    """Another process took the slot while its lock was lost, then let it go (stopped): the sender holds it again,
    and takes nothing back. What a run of the slot holds now is a live process's, not a dead predecessor's."""
    _, port = catcher
    async with _sender(infra, template_database, port) as (_, task, admin):
        other, waiting = await _take_slot_when_it_is_free(admin)
        try:
            ended = await _end_sessions(admin, "notifier")
            async with asyncio.timeout(SOON):
                await waiting
            message_id, live = await _claim_of_a_live_run(admin)
            await other.execute("SELECT pg_advisory_unlock_all()")  # within the sender's wait for the slot
            await _held_by(admin, [*ended, other.get_server_pid()], timeout=2 * SOON)
        finally:
            await admin.release(other)
        await asyncio.sleep(0.5)
        row = await admin.fetchrow(
            "SELECT status, claimed_by FROM notifier.deliveries WHERE message_id = $1", message_id
        )
        assert not task.done(), "the run goes on"
    assert (row["status"], row["claimed_by"]) == ("sending", live), "a live run's claim stays its own"


async def test_a_sender_whose_slot_another_process_took_meanwhile_ends_its_run(
    infra: Infrastructure, template_database: str, catcher: tuple[MessageIds, int]
) -> None:
    """Another process took the slot while the sender's lock was lost, and keeps it: the sender must not go on naming
    its claims in a slot it no longer holds (the other's next run would take them back from it, live). Its run ends;
    the next one starts outside the slot (sender.instance_in_use)."""
    _, port = catcher
    async with _sender(infra, template_database, port) as (run, task, admin):
        other, waiting = await _take_slot_when_it_is_free(admin)
        try:
            with capture_logs() as logs:
                await _end_sessions(admin, "notifier")
                async with asyncio.timeout(SOON):
                    await waiting
                async with asyncio.timeout(3 * SOON):  # after waiting 5 s for the slot
                    await asyncio.wait([task])
            assert await _slot_holder(admin) == other.get_server_pid(), "the other keeps it"
        finally:
            await admin.release(other)
        assert task.exception() is None and run.slot is not None and run.slot.connection is None
    said = _said(logs, "sender.slot_lost", "sender.slot_held_again", "sender.instance_in_use")
    assert said == [("sender.slot_lost", "warning"), ("sender.instance_in_use", "error")]
