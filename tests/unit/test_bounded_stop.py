"""A service stops within its grace period even when its database stops answering.

A task cancelled inside a statement waits for its rollback, up to the pool's 60 s command timeout; an UNLISTEN waited
as long. An operator's drill (PostgreSQL and the broker frozen with SIGSTOP, then SIGTERM) measured 144 s for the
invitations service to exit against a 90 s grace period; with these bounds, 26 s. The parts are tested here with
tasks and connections that never answer; the whole drill, against real processes, is tests/faults/test_drills.py
(test_postgres_frozen_a_stopped_service_exits_within_its_grace_period).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.notifier import handlers, recorder
from services.notifier.domain import Attempt, SendResult
from services.runtime.cancel import cancel_within
from services.runtime.database import unlisten
from services.runtime.relay import BrokerError, OutboxRelay
from tests.unit.test_sender_claims import _invite, _run

NEVER = 3600.0


async def _waits_for_its_rollback(answered: asyncio.Event) -> None:
    """A task cancelled mid-statement: it ends only once the database answers (or its connection is terminated)."""
    try:
        await asyncio.sleep(NEVER)
    except asyncio.CancelledError:
        await answered.wait()
        raise RuntimeError("connection terminated") from None


async def test_cancel_within_gives_up_on_a_task_that_does_not_end_in_time() -> None:
    answered = asyncio.Event()
    stuck = asyncio.create_task(_waits_for_its_rollback(answered))
    quick = asyncio.create_task(asyncio.sleep(NEVER))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        running = await cancel_within(0.2, stuck, quick)
    assert running == {stuck} and quick.cancelled()
    answered.set()  # the pool is terminated: it ends, and its error is not reported as never retrieved
    await asyncio.wait([stuck])
    assert isinstance(stuck.exception(), RuntimeError)


async def test_a_relay_stops_without_waiting_for_a_rollback_that_never_comes() -> None:
    relay = OutboxRelay(None, "s", "127.0.0.1:1", lambda name: name, batch_size=1, poll_seconds=1)  # type: ignore[arg-type]
    answered = asyncio.Event()
    relay._task = asyncio.create_task(_waits_for_its_rollback(answered))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):  # the old stop awaited the task: a minute or more
        await relay.stop(timeout=0.2)
    answered.set()


class SilentConnection:
    """A pooled connection to a database that stopped answering."""

    async def remove_listener(self, channel: str, callback: Any) -> None:
        await asyncio.sleep(NEVER)


class Pool:
    def __init__(self) -> None:
        self.released: list[tuple[object, float]] = []

    async def release(self, connection: object, timeout: float) -> None:
        self.released.append((connection, timeout))


async def test_unlisten_gives_the_connection_back_when_unlisten_gets_no_answer() -> None:
    pool, connection = Pool(), SilentConnection()
    async with asyncio.timeout(10):  # the old unlisten waited for the pool's command timeout (60 s)
        await unlisten(pool, connection, "channel", lambda *_: None, lambda *_: None)  # type: ignore[arg-type]
    assert pool.released == [(connection, 2)], "released with a bound: a release that times out terminates it"


async def test_unlisten_cancelled_midway_still_gives_the_connection_back() -> None:
    """CI found pool.close() waiting for ever: a relay stopped while it gave its LISTEN connection back (the broker
    away, between two attempts) lost the connection when the cancel landed inside the UNLISTEN."""
    pool, connection = Pool(), SilentConnection()
    unlistening = asyncio.create_task(unlisten(pool, connection, "channel", lambda *_: None, lambda *_: None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    unlistening.cancel()
    async with asyncio.timeout(10):
        await asyncio.wait([unlistening])
    assert unlistening.cancelled(), "the cancel goes on"
    assert pool.released == [(connection, 2)]


async def test_a_relay_stopped_while_giving_up_on_the_broker_gives_its_listen_connection_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while it closes the producer of a failed attempt (before it gives the LISTEN connection back): the
    connection is given back all the same."""
    pool = Pool()
    relay = OutboxRelay(pool, "s", "127.0.0.1:1", lambda name: name)  # type: ignore[arg-type]
    connection = SilentConnection()
    closing = asyncio.Event()

    async def listen() -> Any:
        return connection

    async def start_producer() -> Any:
        relay._producer = object()  # type: ignore[assignment]
        raise BrokerError("nobody there") from ConnectionRefusedError()

    async def close_producer() -> None:
        closing.set()
        await asyncio.sleep(NEVER)

    monkeypatch.setattr(relay, "_listen", listen)
    monkeypatch.setattr(relay, "_start_producer", start_producer)
    monkeypatch.setattr(relay, "_close_producer", close_producer)
    relay._task = asyncio.create_task(relay._run())
    async with asyncio.timeout(10):
        await closing.wait()
        await cancel_within(5, relay._task)
    assert relay._task.cancelled()
    assert pool.released == [(connection, 2)]


async def test_recording_stops_retrying_once_the_sender_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database driver, cancelled mid-statement, may raise its own error instead of CancelledError: the recorder
    took it for a failed attempt and retried, with backoff, long after the service was told to stop."""
    calls = 0

    async def record_attempts(*_: Any) -> Any:
        nonlocal calls
        calls += 1
        try:
            await asyncio.sleep(NEVER)
        except asyncio.CancelledError:
            raise ConnectionResetError("the statement was cancelled") from None

    monkeypatch.setattr(handlers, "record_attempts", record_attempts)
    run = _run()
    batch = [(_invite(), SendResult(Attempt.SENT, "250 OK"))]
    recording = asyncio.create_task(recorder.record(run.pool, batch, run.sender.policy, run.owner, run.metrics))
    await asyncio.sleep(0.05)
    recording.cancel()
    async with asyncio.timeout(10):
        await asyncio.wait([recording])
    assert calls == 1, "no retry after the stop"
    assert recording.cancelled(), "it ends with the stop, whatever the driver raised meanwhile"


async def test_a_broker_failure_whose_rollback_fails_too_is_still_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the rollback's error (the pod cut off from the database as well) replaced the BrokerError, and the
    relay logged outbox.database_failed with the broker still marked up."""
    relay = OutboxRelay(None, "s", "127.0.0.1:1", lambda name: name)  # type: ignore[arg-type]
    relay._producer = object()  # type: ignore[assignment]

    async def publish(_: object) -> int:
        try:
            raise BrokerError("no ack") from TimeoutError()
        finally:
            raise ConnectionResetError("the rollback found no connection")  # as asyncpg's __aexit__ does

    monkeypatch.setattr(relay, "_publish_batch", publish)
    with pytest.raises(BrokerError) as failed:
        await relay.publish_batch()
    assert isinstance(failed.value.__cause__, TimeoutError)
