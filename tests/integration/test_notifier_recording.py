"""What the sender records after each attempt, against real PostgreSQL and a real SMTP server: a result that cannot be
recorded must hold neither the others nor its own row, and a delivery that never gets an answer recorded ends.

Found by a review: one long 5xx quoting a short address ("jo@" masks to "j***@") broke DeliveryOutcome's bound; the
recorder retried its whole batch for ever, every row stayed `sending` (leases renewed), and after a restart the
batch's 30 emails went out a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import structlog
from prometheus_client import CollectorRegistry

from collabkare.stack.infra import Infrastructure
from services.notifier import domain, handlers, leases
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.metrics import NotifierMetrics, metrics_for
from services.notifier.sender import Sender, _Run
from tests.integration.notifier_harness import MessageIds, invite, revoked, scratch, smtp_server, smtp_settings

pytestmark = pytest.mark.timeout(120)

VERBOSE = "jo@ex.org"  # a relay answers its RCPT with 1,000+ characters quoting it
POLICY = [f"550-5.7.1 <{VERBOSE}> refused by the recipient's policy, see https://help.example/p{i}" for i in range(18)]
OTHERS = [f"patient{i}@example.com" for i in range(20)]


class Relay(MessageIds):
    """Refuses VERBOSE at length, keeps everyone else's email; counts the Message-IDs it kept."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == VERBOSE:
            return "\r\n".join([*POLICY, "550 5.7.1 end of policy text"])
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, Sender]]:
    handler = Relay()
    with smtp_server(handler) as port:
        settings = smtp_settings(
            port, smtp_pool_size=2, sender_poll_seconds=0.2, notifier_instance="pod-a", smtp_max_attempts=3
        )
        yield handler, Sender(settings, Mailer(settings), Renderer(settings.smtp_from))


async def _queue(admin: asyncpg.Pool, recipients: list[str], attempts: int = 0) -> None:
    """Connection emails (no directory to consult), due in the order given."""
    for n, recipient in enumerate(recipients):
        event_id = uuid.uuid4()
        await admin.execute(
            """
            INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, recipient_key,
                correlation_id, message_id, attempts, not_before)
            VALUES ($1, $2, 'ConnectionApproved', 'connection_approved', $3, $3, 'c', $4, $5,
                now() - make_interval(secs => 100 - $6))
            """,
            domain.delivery_id_for(event_id),
            event_id,
            recipient,
            domain.message_id_for(event_id, "collabkare.example"),
            attempts,
            float(n),
        )


async def _run_until_final(sender: Sender, admin: asyncpg.Pool, count: int) -> dict[str, tuple[str, str | None]]:
    """Runs the sender until `count` rows are final (or 30 s), then stops it; each recipient's (status, reason)."""
    run = _Run(sender, admin, metrics_for(CollectorRegistry()))
    task = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(30):
            while (
                await admin.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status IN ('sent', 'error')")
                < count
            ):
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rows = await admin.fetch("SELECT recipient, status, last_error FROM notifier.deliveries")
    return {row["recipient"]: (row["status"], row["last_error"]) for row in rows}


async def _outcome_reasons(admin: asyncpg.Pool) -> list[str | None]:
    """The reasons of the DeliveryOutcome events waiting in the outbox (no relay runs here)."""
    return [
        json.loads(row["payload"])["payload"]["reason"]
        for row in await admin.fetch("SELECT payload FROM notifier.outbox")
    ]


async def test_a_long_reply_quoting_a_short_address_is_recorded_with_the_rest(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str
) -> None:
    handler, sender = relay
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, [VERBOSE, *OTHERS])
        rows = await _run_until_final(sender, admin, 1 + len(OTHERS))
        reasons = [r for r in await _outcome_reasons(admin) if r]
    assert {rows[r][0] for r in OTHERS} == {"sent"}
    assert rows[VERBOSE][0] == "error"
    [reason] = reasons
    assert len(reason) == domain.MAX_REASON and VERBOSE not in reason and reason.startswith("550 5.7.1 <j***@ex.org>")
    assert len(handler.copies) == len(OTHERS) and set(handler.copies.values()) == {1}


async def test_a_result_the_recording_refuses_is_recorded_alone_and_holds_nothing_else(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any result the recording refuses for what it holds (a bug yet unknown): the others are recorded a result at a
    time, and the refused one ends with UNRECORDABLE rather than being tried, and its row held, for ever."""
    handler, sender = relay
    refused = OTHERS[3]
    build = domain.outcome_event

    def refusing(final: domain.Final) -> Any:
        if final.claimed.delivery.recipient == refused and final.outcome == "sent":
            raise ValueError("a value the contract refuses")
        return build(final)

    monkeypatch.setattr(domain, "outcome_event", refusing)
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, OTHERS)
        rows = await _run_until_final(sender, admin, len(OTHERS))
    assert rows[refused] == ("error", domain.UNRECORDABLE)
    assert {rows[r][0] for r in OTHERS if r != refused} == {"sent"}
    assert len(handler.copies) == len(OTHERS) and set(handler.copies.values()) == {1}


async def test_a_delivery_claimed_more_often_than_the_attempts_allow_ends_unsent(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str
) -> None:
    """Each claim counts an attempt; a process killed while sending gives none back. A delivery that kills its
    process was claimed again at every restart, for ever (a review took one to 25 attempts, the limit 10)."""
    handler, sender = relay
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, OTHERS[:1], attempts=3)  # three claims, none answered: the next is the fourth
        await _queue(admin, OTHERS[1:2], attempts=2)  # the third: sent
        owner = uuid.uuid4()
        claimed, finals = await handlers.claim_deliveries(admin, 10, owner, max_attempts=3)
        await handlers.release(admin, claimed, owner, "a claim given back unsent")
        rows = await _run_until_final(sender, admin, 2)
    assert [c.delivery.recipient for c in claimed] == [OTHERS[1]]
    [final] = finals
    assert (final.claimed.delivery.recipient, final.outcome, final.attempts) == (OTHERS[0], "error", 3)
    assert final.reason == domain.ABANDONED.format(times=3)
    assert rows[OTHERS[0]][0] == "error" and rows[OTHERS[1]][0] == "sent"
    assert len(handler.copies) == 1


async def _invite_delivery(admin: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    """An invite's email due now, its practice and patient in the directories; (delivery id, invite id)."""
    practice_id, invite_id, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await admin.execute(
        "INSERT INTO notifier.practices (practice_id, name, registered_at) VALUES ($1, 'Clinic', now())", practice_id
    )
    await admin.execute(
        "INSERT INTO notifier.patients (email, patient_id, locale, registered_at) VALUES ($1, $2, 'en', now())",
        OTHERS[0],
        uuid.uuid4(),
    )
    await admin.execute(
        """
        INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, recipient_key,
            practice_id, correlation_id, message_id, invite_id, accept_url, expires_at, not_before)
        VALUES ($1, $2, 'InviteRequested', 'invite', $3, $3, $4, 'c', '<m@collabkare.example>', $5,
            'https://app.example/invites/accept?token=t', now() + interval '7 days', now() - interval '1 second')
        """,
        domain.delivery_id_for(event_id),
        event_id,
        OTHERS[0],
        practice_id,
        invite_id,
    )
    return domain.delivery_id_for(event_id), invite_id


class _Unused:
    """An SMTP connection a test expects never to be used."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def open(self) -> domain.SendResult | None:
        return None

    async def send(self, sender: str, recipient: str, message: bytes) -> domain.SendResult:
        self.sent.append(recipient)
        return domain.SendResult(domain.Attempt.SENT, "250 2.0.0 OK")


async def test_an_invite_revoked_while_its_claim_waits_is_not_sent(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str
) -> None:
    """Claims wait in the sender's memory (up to SENDER_BATCH_SIZE behind SMTP_POOL_SIZE connections); a revoke
    marked the held row, and the email went out all the same, its link dead. The next renewal tells the sender."""
    _, sender = relay
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        delivery_id, invite_id = await _invite_delivery(admin)
        practice_id = await admin.fetchval("SELECT practice_id FROM notifier.practices")
        run = _Run(sender, admin, metrics_for(CollectorRegistry()))
        [claimed], _ = await handlers.claim_deliveries(admin, 10, run.owner, max_attempts=3)
        run.held[claimed.delivery.id] = (claimed, asyncio.get_running_loop().time())
        async with admin.acquire() as db, db.transaction():
            await handlers.cancel_revoked(db, [revoked(invite(practice_id, OTHERS[0], invite_id=invite_id))])
        await leases.renew(run)
        connection = _Unused()
        result = await run._attempt(connection, claimed)  # type: ignore[arg-type]
        assert result is not None
        [final], _ = await handlers.record_attempts(admin, [(claimed, result)], sender.policy, run.owner)
        row = await admin.fetchrow("SELECT status, last_error FROM notifier.deliveries WHERE id = $1", delivery_id)
    assert connection.sent == [], "the revoked invite's email went out"
    assert (final.outcome, final.reason) == ("error", domain.REVOKED)
    assert (row["status"], row["last_error"]) == ("error", domain.REVOKED)


async def test_expiring_leases_passes_over_rows_another_transaction_holds(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str
) -> None:
    """A review: a frozen process's open transaction kept its expired rows locked, and every reaper waited on them
    (its renewals stalled, no lease in the table expired) until the statement timed out. They are passed over."""
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, OTHERS[:2])
        await handlers.claim_deliveries(admin, 10, uuid.uuid4(), max_attempts=3)
        await admin.execute("UPDATE notifier.deliveries SET claimed_at = now() - interval '1 hour'")
        frozen = await admin.acquire()
        try:
            transaction = frozen.transaction()
            await transaction.start()
            await frozen.execute(
                "SELECT 1 FROM notifier.deliveries WHERE recipient = $1 FOR UPDATE", OTHERS[0]
            )  # as a claim or a recording under way would, in a process that stopped answering
            async with asyncio.timeout(10):
                assert await handlers.expire_leases(admin, 60) == 1
            await transaction.rollback()
        finally:
            await admin.release(frozen)
        assert await handlers.expire_leases(admin, 60) == 1


async def test_a_late_final_of_a_sender_that_lost_its_lease_leaves_the_row_to_its_new_holder(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str
) -> None:
    """A's lease ran out while it could not record (cut off from the database); B claimed the row and sent it. A's
    late 5xx ended the row `error`, and B's 250 was ignored: the patient had the email, staff saw an error."""
    _, sender = relay
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, OTHERS[:1])
        a, b = uuid.uuid4(), uuid.uuid4()
        [by_a], _ = await handlers.claim_deliveries(admin, 10, a, max_attempts=3)
        await admin.execute("UPDATE notifier.deliveries SET claimed_at = now() - interval '1 hour'")
        assert await handlers.expire_leases(admin, 60) == 1
        [by_b], _ = await handlers.claim_deliveries(admin, 10, b, max_attempts=3)
        late = domain.SendResult(domain.Attempt.PERMANENT, "554 5.7.1 no")
        finals_a, _ = await handlers.record_attempts(admin, [(by_a, late)], sender.policy, a)
        sent = domain.SendResult(domain.Attempt.SENT, "250 2.0.0 OK")
        finals_b, _ = await handlers.record_attempts(admin, [(by_b, sent)], sender.policy, b)
        row = await admin.fetchrow("SELECT status, smtp_reply FROM notifier.deliveries")
    assert finals_a == [] and [f.outcome for f in finals_b] == ["sent"]
    assert (row["status"], row["smtp_reply"]) == ("sent", "250 2.0.0 OK")


async def test_the_error_that_stops_the_sender_is_logged_with_the_part_it_stopped(
    relay: tuple[Relay, Sender],
    infra: Infrastructure,
    template_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: a bug in one of the sender's tasks ended the run with `sender.stopped_unexpectedly` alone (the
    shutdown retrieved the exception silently), so the log never said what had gone wrong."""
    _, sender = relay

    def broken(*_: object) -> None:
        raise KeyError("a-bug-in-the-recorder")

    monkeypatch.setattr(NotifierMetrics, "email", broken)
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, OTHERS[:2])
        with structlog.testing.capture_logs() as lines:
            async with asyncio.timeout(60):
                await _Run(sender, admin, metrics_for(CollectorRegistry())).run()  # ends by itself: a part died
    [stopped] = [line for line in lines if line["event"] == "sender.stopped_unexpectedly"]
    assert stopped["part"] == "sender-record" and "a-bug-in-the-recorder" in stopped["error"]


async def test_an_outcome_the_contract_refuses_ends_its_row_and_stops_no_other_email(
    relay: tuple[Relay, Sender], infra: Infrastructure, template_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a DeliveryOutcome that could not be built for one delivery (a bug) failed its recording again and
    again; given up, the email was sent again at every restart in the slot, and once its claims passed
    SMTP_MAX_ATTEMPTS the claim ending it as abandoned failed the same way, so the claimer stopped every email."""
    handler, sender = relay
    poison = OTHERS[0]
    build = domain.outcome_event

    def refusing(final: domain.Final) -> Any:
        if final.claimed.delivery.recipient == poison:
            raise ValueError("a DeliveryOutcome that cannot be built for this delivery")
        return build(final)

    monkeypatch.setattr(domain, "outcome_event", refusing)
    async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
        await _queue(admin, [poison], attempts=sender.policy.max_attempts)  # the next claim is one too many
        await _queue(admin, OTHERS[1:6])
        run = asyncio.create_task(_Run(sender, admin, metrics_for(CollectorRegistry())).run())
        try:
            done = "SELECT count(*) FROM notifier.deliveries WHERE status IN ('sent', 'error')"
            async with asyncio.timeout(30):
                while await admin.fetchval(done) < 6:
                    await asyncio.sleep(0.05)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        rows = {
            r["recipient"]: r["status"] for r in await admin.fetch("SELECT recipient, status FROM notifier.deliveries")
        }
        outcomes = await admin.fetchval("SELECT count(*) FROM notifier.outbox")
    assert rows == {poison: "error", **dict.fromkeys(OTHERS[1:6], "sent")}
    assert outcomes == 5, "every other delivery's outcome is published"
    assert sorted(handler.copies.values()) == [1] * 5, "the five went out once each, the abandoned one never"


async def test_a_stop_gives_back_the_claims_still_waiting_for_a_rate_token(
    infra: Infrastructure, template_database: str
) -> None:
    """A review: workers waiting for a rate-limit token counted as busy; cancelled at the stop, their claims, never
    tried, were neither recorded nor given back, and waited out a whole lease with an attempt counted."""
    with smtp_server(MessageIds()) as port:
        settings = smtp_settings(port, smtp_pool_size=8, smtp_rate_per_second=0.4, smtp_rate_burst=1)
        sender = Sender(settings, Mailer(settings), Renderer(settings.smtp_from))
        async with scratch(infra, template_database, pool_size=8) as (_, _, admin):
            await _queue(admin, OTHERS[:12])
            task = asyncio.create_task(_Run(sender, admin, metrics_for(CollectorRegistry())).run())
            await asyncio.sleep(1.5)  # one sent (the burst), the other workers waiting for their tokens
            task.cancel()  # SIGTERM
            with contextlib.suppress(asyncio.CancelledError):
                await task
            rows = await admin.fetch("SELECT status, attempts FROM notifier.deliveries")
    statuses = sorted((r["status"], r["attempts"]) for r in rows)
    sent = [row for row in statuses if row == ("sent", 1)]  # the burst's, and any whose token came during the stop
    assert sent and statuses == [("pending", 0)] * (12 - len(sent)) + sent, statuses
