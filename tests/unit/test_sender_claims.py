"""The sender sends a claimed delivery only while it knows the claim is its own (confirmed within the freshness window:
the lease less the SMTP deadline and 5 s).

A process frozen longer than its lease (or cut off from the database) has lost its claims to another sender;
what it still holds in memory must not go out a second time. The renewal that confirms the claims runs against
PostgreSQL: tests/integration/test_notifier_leases.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.notifier import handlers, leases, recorder, repository
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


async def test_a_claim_confirmed_within_the_freshness_window_is_sent() -> None:
    run, connection, claimed = _run(), Connection(), _invite()
    run.held[claimed.delivery.id] = (claimed, time.monotonic() - SETTINGS.lease_fresh_seconds + 5)
    result = await run._attempt(connection, claimed)  # type: ignore[arg-type]
    assert result is not None and result.attempt is Attempt.SENT and connection.sent == [claimed.delivery.recipient]


async def test_a_claim_not_confirmed_within_the_freshness_window_or_never_is_not_sent() -> None:
    run, connection = _run(), Connection()
    stale, unknown = _invite(), _invite()
    run.held[stale.delivery.id] = (stale, time.monotonic() - SETTINGS.lease_fresh_seconds)
    assert await run._attempt(connection, stale) is None  # type: ignore[arg-type]
    assert await run._attempt(connection, unknown) is None  # type: ignore[arg-type]
    assert connection.sent == []


async def test_a_copy_a_newer_claim_of_the_same_delivery_superseded_is_not_sent() -> None:
    """Claimed again after its lease ran out while an old copy still waited in the queue: only the new copy may go
    (both used to pass the check, the delivery's id being fresh again)."""
    run, connection = _run(), Connection()
    old = _invite()
    new = replace(old, attempts=2)
    run.held[old.delivery.id] = (new, time.monotonic())
    assert await run._attempt(connection, old) is None  # type: ignore[arg-type]
    result = await run._attempt(connection, new)  # type: ignore[arg-type]
    assert result is not None and result.attempt is Attempt.SENT and len(connection.sent) == 1


def test_a_dropped_claim_makes_room_and_waits_to_be_given_back() -> None:
    run, claimed = _run(), _invite()
    run.held[claimed.delivery.id] = (claimed, 0.0)
    run.outstanding = 1
    run._drop(claimed)
    assert (run.outstanding, run.dropped, run.held) == (0, [claimed], {})
    assert run.room.is_set(), "the claimer may claim again"


def test_dropping_a_superseded_copy_keeps_the_newer_claim() -> None:
    run, old = _run(), _invite()
    new = replace(old, attempts=2)
    run.held[old.delivery.id] = (new, 1.0)
    run.outstanding = 2
    run._drop(old)
    assert run.held == {old.delivery.id: (new, 1.0)} and run.outstanding == 1


async def test_after_the_database_was_away_leases_expire_only_once_it_has_answered_a_renewal_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every process's reaper comes back with the database; the first one back used to expire the leases of the
    others before they could renew them or record what they had sent meanwhile (sent twice, then)."""
    quick = {"sending_lease_seconds": 7.5, "smtp_timeout_seconds": 1.0}  # fresh for 1.5 s, renewed every 0.5 s
    settings = NotifierSettings.model_construct(**{**dict(SETTINGS), **quick})
    sender = Sender(settings, Mailer(settings), Renderer(settings.smtp_from))
    pool: Any = None
    run = _Run(sender, pool, metrics_for(CollectorRegistry()))
    calls: list[str] = []
    counts = iter([True, False, True, True, True, True, True, True])  # the database away at the second count

    async def open_count(_: object) -> int:
        if not next(counts, True):
            calls.append("away")
            raise ConnectionRefusedError("the database is away")
        return 0

    async def renew_leases(*_: object) -> dict[object, bool]:
        calls.append("renew")
        return {}

    expiring = iter([2])  # the first reap finds two leases run out: counted for the operator's alert

    async def expire_leases(*_: object) -> int:
        calls.append("expire")
        return next(expiring, 0)

    monkeypatch.setattr(leases, "_BACKLOG_REPORT_SECONDS", 0.5)  # a count before each reap: the outage is seen
    monkeypatch.setattr(repository, "open_count", open_count)
    monkeypatch.setattr(handlers, "renew_leases", renew_leases)
    monkeypatch.setattr(handlers, "expire_leases", expire_leases)
    reaper = asyncio.create_task(run._reap_loop())
    async with asyncio.timeout(30):
        while calls.count("expire") < 2:
            await asyncio.sleep(0.05)
    reaper.cancel()
    after = calls[calls.index("away") + 1 :]
    assert calls[:2] == ["renew", "expire"], calls
    assert after[:3] == ["renew", "renew", "expire"], f"the first reap after the outage expired nothing: {calls}"
    assert run.metrics.reclaimed.labels("lease_expired")._value.get() == 2


async def test_a_message_that_cannot_be_built_is_retried_not_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template bug in a release ended every email of that kind and language `error` for good: a rollback brought
    none of them back. It is retried as a 4xx is, and nothing is sent meanwhile."""
    run, connection = _run(), Connection()

    def broken(_: Claimed) -> bytes:
        raise KeyError("patient_name")

    monkeypatch.setattr(run.sender.renderer, "render", broken)
    claimed = _invite()
    run.held[claimed.delivery.id] = (claimed, time.monotonic())
    result = await run._attempt(connection, claimed)  # type: ignore[arg-type]
    assert result == SendResult(Attempt.TRANSIENT, "the message could not be built (KeyError)")
    assert connection.sent == []


async def test_nothing_more_is_sent_while_results_cannot_be_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A black-box drill: with the database refusing the notifier's outbox, the sender went on sending until it held
    its whole claim capacity unrecorded (500), and a graceful restart then sent all of them again."""
    run = _run()
    claims = [_invite() for _ in range(3)]
    for claimed in claims:
        run.held[claimed.delivery.id] = (claimed, time.monotonic())
        run.queue.put_nowait(claimed)
    run.outstanding = len(claims)
    refusing, failed = True, asyncio.Event()

    async def record_attempts(*_: object) -> tuple[list[object], list[object]]:
        if refusing:
            failed.set()
            raise ConnectionRefusedError("permission denied for table outbox")
        return [], []

    monkeypatch.setattr(handlers, "record_attempts", record_attempts)
    permits = asyncio.Semaphore(0)  # one email through per permit

    class Gated(Connection):
        async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
            await permits.acquire()
            return await super().send(sender, recipient, message)

    connection = Gated()
    run.connections = [connection]  # type: ignore[list-item]
    run.current = [None]
    worker = asyncio.create_task(run._work(0))
    recorder = asyncio.create_task(run._record_loop())
    try:
        permits.release()
        async with asyncio.timeout(10):
            await failed.wait()  # the first email's result is refused; the second is on the wire already
            while run.recording.is_set():
                await asyncio.sleep(0.01)
        permits.release()
        permits.release()
        await asyncio.sleep(0.5)
        assert len(connection.sent) == 2 and not run.recording.is_set(), "the third waits for the recording"
        refusing = False
        async with asyncio.timeout(10):
            while len(connection.sent) < 3:
                await asyncio.sleep(0.05)
        assert run.recording.is_set()
    finally:
        worker.cancel()
        recorder.cancel()
        await asyncio.gather(worker, recorder, return_exceptions=True)


async def test_a_recording_slow_to_answer_pauses_the_sending_as_a_failure_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the pause began only once a recording failed, and a database that stops answering fails a statement
    after the 60 s command timeout: the sender sent its whole claim capacity meanwhile."""
    answer = asyncio.Event()

    async def record_attempts(*_: object) -> tuple[list[object], list[object]]:
        await answer.wait()
        return [], []

    monkeypatch.setattr(handlers, "record_attempts", record_attempts)
    run, recording = _run(), asyncio.Event()
    recording.set()
    batch = [(_invite(), SendResult(Attempt.SENT, "250 OK"))]
    task = asyncio.create_task(
        recorder.record(run.pool, batch, run.sender.policy, run.owner, run.metrics, recording=recording)
    )
    async with asyncio.timeout(10):
        while recording.is_set():
            await asyncio.sleep(0.05)
    answer.set()
    assert await asyncio.wait_for(task, 10) == [] and recording.is_set()


async def test_a_result_refused_even_as_unrecordable_is_given_up_not_retried_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: such a result (a bug) was retried every 10 s for ever, and with the pause no email went out."""

    async def record_attempts(*_: object) -> tuple[list[object], list[object]]:
        raise ValueError("a DeliveryOutcome that cannot be built")

    monkeypatch.setattr(handlers, "record_attempts", record_attempts)
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    run, recording = _run(), asyncio.Event()
    claimed = _invite()
    stuck = await asyncio.wait_for(
        recorder.record(
            run.pool,
            [(claimed, SendResult(Attempt.SENT, "250 OK"))],
            run.sender.policy,
            run.owner,
            run.metrics,
            recording=recording,
        ),
        10,
    )
    assert stuck == [claimed] and recording.is_set(), "given up, and the sending goes on"


_real_sleep = asyncio.sleep


async def _no_wait(_: float, *args: object) -> None:
    await _real_sleep(0)


async def test_leases_are_renewed_every_third_of_the_freshness_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the reaper slept in the backlog report's 5 s steps, so leases meant to be renewed every 8.3 s were
    renewed every 10 s, and one failed renewal, not two, let claims go stale."""
    quick = {"sending_lease_seconds": 7.5, "smtp_timeout_seconds": 1.0}  # fresh for 1.5 s, renewed every 0.5 s
    settings = NotifierSettings.model_construct(**{**dict(SETTINGS), **quick})
    sender = Sender(settings, Mailer(settings), Renderer(settings.smtp_from))
    run = _Run(sender, None, metrics_for(CollectorRegistry()))  # type: ignore[arg-type]
    renewed: list[float] = []

    async def renew_leases(*_: object) -> dict[object, bool]:
        renewed.append(time.monotonic())
        return {}

    async def nothing(*_: object) -> int:
        return 0

    monkeypatch.setattr(leases, "_BACKLOG_REPORT_SECONDS", 0.4)  # not a divisor of the renewal's 0.5 s
    monkeypatch.setattr(repository, "open_count", nothing)
    monkeypatch.setattr(handlers, "renew_leases", renew_leases)
    monkeypatch.setattr(handlers, "expire_leases", nothing)
    reaper = asyncio.create_task(run._reap_loop())
    async with asyncio.timeout(30):
        while len(renewed) < 5:
            await asyncio.sleep(0.05)
    reaper.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(renewed)]
    assert max(gaps) < 0.7, gaps  # 0.8 s (two report steps) before
