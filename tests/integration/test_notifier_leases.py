"""A claim is a lease its sender renews while it holds the delivery: a slow SMTP server never gets an email twice.

Claims wait their turn in the sender's memory (up to SENDER_BATCH_SIZE of them for SMTP_POOL_SIZE connections).
Before leases were renewed, the claims still waiting when the lease ran out went back to the queue, were claimed
again (by the same process or another one) and each went out twice.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from collabkare.stack.infra import Infrastructure
from collabkare.stack.mailbox import parse
from services.notifier import domain, handlers, repository
from services.notifier.settings import NotifierSettings
from tests.integration.notifier_harness import (
    Notifier,
    directory_applied,
    invite,
    notifier_env,
    patient,
    practice,
    running_notifier,
    scratch,
    smtp_server,
    unique_email,
)
from tests.integration.test_notifier_processes import notifier_processes

# The module's tests wait out leases and join consumer groups: more than the suite's default 120 s on a slow box.
pytestmark = pytest.mark.timeout(300)

INVITES = 40
SECONDS_PER_EMAIL = 0.6  # 40 emails over one connection: 24 s, past a 20 s lease


class SlowRelay:
    """aiosmtpd handler: answers each DATA after a pause, as a busy relay does; counts the Message-IDs it keeps."""

    def __init__(self) -> None:
        self.copies: collections.Counter[str] = collections.Counter()
        self.seconds_per_email = SECONDS_PER_EMAIL
        self.in_hand = 0  # emails whose DATA arrived whole, not yet counted

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_hand += 1
        try:
            await asyncio.sleep(self.seconds_per_email)
            self.copies[str(parse(envelope.original_content)["Message-ID"])] += 1
        finally:
            self.in_hand -= 1
        return "250 2.0.0 OK"

    async def finished(self, timeout: float = 10.0, quiet: float = 0.2) -> None:
        """Until every email it holds is counted (a killed sender's last one too) and none came in for `quiet` s:
        the server may still be reading a DATA that arrived whole just before its sender died."""
        async with asyncio.timeout(timeout):
            idle_since = None
            while idle_since is None or time.monotonic() - idle_since < quiet:
                if self.in_hand:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                await asyncio.sleep(0.02)


@pytest.fixture
def slow_relay() -> Iterator[tuple[SlowRelay, int]]:
    relay = SlowRelay()
    with smtp_server(relay) as port:
        yield relay, port


async def test_claims_waiting_longer_than_the_lease_are_renewed_and_sent_once(
    infra: Infrastructure, template_database: str, slow_relay: tuple[SlowRelay, int]
) -> None:
    relay, port = slow_relay
    settings = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_pool_size": 1,
        "sender_batch_size": INVITES,  # every invite claimed at once, waiting its turn
        # 5 s, not 1: a pause of the test's process (the relay runs in a thread of it) longer than the relay's own
        # 0.6 s must not turn a send into a timeout, and its retry into a second copy.
        "smtp_timeout_seconds": 5,
        "sending_lease_seconds": 20,  # the least the settings allow with that timeout; renewed every 3.3 s
    }
    async with running_notifier(infra, template_database, **settings) as notifier:
        clinic = practice("Lease Clinic")
        emails = [unique_email("lease") for _ in range(INVITES)]
        invites = [invite(clinic.practice_id, email) for email in emails]  # type: ignore[arg-type]
        await notifier.publish(clinic, *(patient(email) for email in emails))
        await directory_applied(notifier.admin, emails, clinic.practice_id, timeout=90)  # invites claimed at once
        await notifier.publish(*invites)
        rows = await notifier.deliveries([event.event_id for event in invites], timeout=90)
        assert sorted(row["status"] for row in rows) == ["sent"] * INVITES
        assert max(row["attempts"] for row in rows) == 1, "no claim expired and was claimed again"
        # A copy claimed twice would still be waiting behind the first: give the connection time to send it.
        deadline = time.monotonic() + 4 * SECONDS_PER_EMAIL
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    assert len(relay.copies) == INVITES and set(relay.copies.values()) == {1}, "each Message-ID exactly once"


def test_the_lease_must_outlast_a_send_and_its_recording() -> None:
    """A sender sends a claim only within the freshness window after it last confirmed it; the transaction that may
    begin just before then (SMTP_TIMEOUT_SECONDS) and its recording (5 s) must end before the lease can run out, and
    the window must be long enough (10 s) to renew claims in without hammering the database."""
    base = {"database_url": "postgresql://n@127.0.0.1/n", "kafka_bootstrap_servers": "127.0.0.1:1"}
    base |= {"jwt_secret": "x" * 32, "smtp_timeout_seconds": 30}
    settings = NotifierSettings.model_validate({**base, "sending_lease_seconds": 45})
    assert (settings.lease_fresh_seconds, settings.lease_renew_seconds) == (10, 10 / 3)
    with pytest.raises(ValidationError, match=r"SENDING_LEASE_SECONDS: at least SMTP_TIMEOUT_SECONDS \+ 15 s \(45 s\)"):
        NotifierSettings.model_validate({**base, "sending_lease_seconds": 44.9})


async def test_a_sender_frozen_past_its_lease_sends_nothing_another_took_over(
    infra: Infrastructure, template_database: str, slow_relay: tuple[SlowRelay, int], tmp_path: Path
) -> None:
    """The reviewer's drill: a notifier stopped (SIGSTOP) while it holds claims loses them to another after the lease;
    woken, it used to send every claim it still held, a second copy each. Now only the documented window may arrive
    twice, an email on the wire when it froze and one sent but not yet recorded (results wait up to 0.1 s to share a
    transaction): the rest it drops, unsent."""
    relay, port = slow_relay
    relay.seconds_per_email = 0.2  # the freeze, not the relay, holds the claims past their lease here
    async with scratch(infra, template_database) as (database, prefix, admin):
        notifier = Notifier(database, prefix, admin)
        env = _one_process(notifier, port, smtp_timeout_seconds=1, sending_lease_seconds=16)
        with notifier_processes(env, 1, tmp_path) as [first]:
            ids = await _invite_all_until_two_are_sent(notifier, relay, "Frozen")
            first.process.send_signal(signal.SIGSTOP)
            held = await admin.fetchval("SELECT count(*) FROM notifier.deliveries WHERE status = 'sending'")
            with notifier_processes(env, 1, tmp_path):
                rows = await notifier.deliveries(ids, timeout=90)  # the second takes over once the lease runs out
            first.process.send_signal(signal.SIGCONT)
            # What the first would send now, it sends at one email per 0.2 s: watched until the relay has heard
            # nothing for 2 s (at least 3 s in all), not for a fixed time a slow box could outlast.
            woke, last, heard = time.monotonic(), time.monotonic(), sum(relay.copies.values())
            while time.monotonic() - woke < 30 and (time.monotonic() - woke < 3 or time.monotonic() - last < 2):
                await asyncio.sleep(0.1)
                if (now_heard := sum(relay.copies.values())) != heard:
                    last, heard = time.monotonic(), now_heard
    assert held > 2, "the frozen sender held claims it had not sent"
    assert sorted(row["status"] for row in rows) == ["sent"] * INVITES
    assert len(relay.copies) == INVITES
    twice = [message_id for message_id, copies in relay.copies.items() if copies > 1]
    assert len(twice) <= 2 and max(relay.copies.values()) <= 2, f"sent again after waking: {twice}"


def _one_process(notifier: Notifier, port: int, **overrides: Any) -> dict[str, str]:
    """A notifier process's environment: one connection to the slow relay, every invite claimed at once."""
    return notifier_env(
        notifier.database,
        notifier.topic_prefix,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_pool_size=1,
        sender_batch_size=INVITES,
        log_level="WARNING",
        **overrides,
    )


async def _invite_all_until_two_are_sent(notifier: Notifier, relay: SlowRelay, name: str) -> list[uuid.UUID]:
    """_invite_all, returning when the relay has taken two emails (the rest claimed and waiting their turn)."""
    ids = await _invite_all(notifier, name)
    async with asyncio.timeout(60):
        while sum(relay.copies.values()) < 2:
            await asyncio.sleep(0.05)
    return ids


async def _invite_all(notifier: Notifier, name: str) -> list[uuid.UUID]:
    """A practice, INVITES registered patients and an invite to each, once the directories know them; returns the
    invites' event ids."""
    clinic = practice(f"{name} Clinic")
    assert clinic.practice_id is not None
    emails = [unique_email(name.lower().replace(" ", "-")) for _ in range(INVITES)]
    invites = [invite(clinic.practice_id, email) for email in emails]
    await notifier.publish(clinic, *(patient(email) for email in emails))
    await directory_applied(notifier.admin, emails, clinic.practice_id, timeout=90)  # the group's first join, too
    await notifier.publish(*invites)
    return [event.event_id for event in invites]


async def test_a_renewal_passes_over_a_row_another_transaction_has_locked(
    infra: Infrastructure, template_database: str
) -> None:
    """The renewal used to wait for every row it renews: behind a long lock (a revoke, a recording) every claim went
    stale, and with the recorder's own multi-row update it could deadlock. Now a locked row waits for the next one."""
    owner, other = uuid.uuid4(), uuid.uuid4()
    async with scratch(infra, template_database) as (_, _, admin):
        ids = [uuid.uuid4() for _ in range(4)]
        await admin.executemany(
            """
            INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, correlation_id,
                message_id, status, claimed_at, claimed_by)
            VALUES ($1, $1, 'InviteRequested', 'invite', 'pat@example.com', 'test', '<m@example.com>', 'sending',
                now() - interval '20 seconds', $2)
            """,
            [(ids[0], owner), (ids[1], owner), (ids[2], owner), (ids[3], other)],
        )
        async with admin.acquire() as locker, locker.transaction():
            await locker.execute("SELECT 1 FROM notifier.deliveries WHERE id = $1 FOR UPDATE", ids[0])
            async with asyncio.timeout(30):  # the old renewal waited here until the lock was released
                renewed_while_locked = await repository.renew_leases(admin, owner, ids)
        renewed_after = await repository.renew_leases(admin, owner, ids)
    assert set(renewed_while_locked) == {ids[1], ids[2]}, "the locked row is skipped, the other sender's is not ours"
    assert set(renewed_after) == {ids[0], ids[1], ids[2]}


async def test_a_start_takes_back_only_what_earlier_runs_in_its_slot_hold(
    infra: Infrastructure, template_database: str
) -> None:
    """A restart keeps the NOTIFIER_INSTANCE (a pod's uid), and every run id in a slot starts with the slot's 8
    bytes: what an earlier run there still holds is a dead run's, queued again at once. Another slot's claims, an
    unnamed run's, this run's own and finished deliveries stay as they are."""

    def run(instance: str | None) -> uuid.UUID:
        return domain.sender_run_id(instance, os.urandom(16))

    earlier, now_running = run("pod-a"), run("pod-a")
    rows = [
        (uuid.uuid4(), "sending", earlier),  # the killed run's: taken back
        (uuid.uuid4(), "sending", run("pod-a")),  # an even earlier one's
        (uuid.uuid4(), "sending", now_running),  # this run's own
        (uuid.uuid4(), "sending", run("pod-b")),  # another pod's, alive
        (uuid.uuid4(), "sending", run(None)),  # a run without a slot (or of a release before slots): its lease decides
        (uuid.uuid4(), "sent", earlier),
    ]
    async with scratch(infra, template_database) as (_, _, admin):
        await admin.executemany(
            """
            INSERT INTO notifier.deliveries (id, source_event_id, source_event_type, kind, recipient, correlation_id,
                message_id, status, claimed_at, claimed_by, decided_at)
            VALUES ($1, $1, 'InviteRequested', 'invite', 'pat@example.com', 'test', '<m@example.com>', $2, now(), $3,
                CASE WHEN $2 = 'sent' THEN now() END)
            """,
            rows,
        )
        taken = await handlers.take_back_from_earlier_runs(admin, "pod-a", now_running)
        after = {
            row["id"]: (row["status"], row["claimed_by"])
            for row in await admin.fetch("SELECT id, status, claimed_by FROM notifier.deliveries")
        }
    assert taken == 2
    assert [after[row[0]] for row in rows] == [
        ("pending", None),
        ("pending", None),
        *[(status, owner) for _, status, owner in rows[2:]],
    ]


async def test_a_slot_is_held_by_one_live_process_at_a_time(infra: Infrastructure, template_database: str) -> None:
    """The slot's lock: a second session asking for a slot held elsewhere gets none, another slot is free, and a
    slot its holder gave back (a process that stopped) is free again."""
    async with scratch(infra, template_database) as (_, _, admin):
        first = await handlers.hold_slot(admin, "pod-a", wait_seconds=0)
        assert first is not None
        assert await handlers.hold_slot(admin, "pod-a", wait_seconds=0.5) is None, "held by a live session"
        other = await handlers.hold_slot(admin, "pod-b", wait_seconds=0)
        assert other is not None, "another slot is another lock"
        await admin.release(first)  # the pool's reset unlocks it, as a stopped process's closed session does
        again = await handlers.hold_slot(admin, "pod-a", wait_seconds=0)
        assert again is not None
        await admin.release(again)
        await admin.release(other)


async def test_a_second_live_notifier_in_the_same_slot_takes_nothing_back_nor_is_taken_from(
    infra: Infrastructure, template_database: str, slow_relay: tuple[SlowRelay, int], tmp_path: Path
) -> None:
    """Two processes given one NOTIFIER_INSTANCE (every pod the same value). The second used to take the first's
    claims in hand back to the queue at its start, and they went out twice. Now it finds the slot held, says so,
    takes nothing, and names its own claims in no slot's range: when the first is killed and restarted in the slot,
    the restart takes back only the killed run's claims, not the live second's. Twice only the crash window's."""
    relay, port = slow_relay
    relay.seconds_per_email = 0.5  # the first still holds claims after the second has waited for the slot
    async with scratch(infra, template_database) as (database, prefix, admin):
        notifier = Notifier(database, prefix, admin)
        env = _one_process(notifier, port, sending_lease_seconds=300, notifier_instance="pod-a")
        with notifier_processes(env, 1, tmp_path) as [first]:
            ids = await _invite_all_until_two_are_sent(notifier, relay, "Shared")
            with notifier_processes(env, 1, tmp_path):
                second_log = tmp_path / "notifier-1.log"
                async with asyncio.timeout(60):
                    while "sender.instance_in_use" not in second_log.read_text():
                        await asyncio.sleep(0.1)
                # The first claimed every invite of the first set; the second claims of the next.
                held = "SELECT DISTINCT claimed_by FROM notifier.deliveries WHERE status = 'sending'"
                [first_run] = {
                    row["claimed_by"] for row in await admin.fetch(f"{held} AND source_event_id = ANY($1)", ids)
                }
                more = await _invite_all(notifier, "Shared Too")
                async with asyncio.timeout(60):
                    while len(await admin.fetch(held)) < 2:
                        await asyncio.sleep(0.1)
                first.process.kill()
                first.process.wait(timeout=10)
                # The email the first had on the wire is counted once its DATA ends (the second keeps the relay
                # busy, so it is never quiet): a pause longer than one email.
                await asyncio.sleep(3 * relay.seconds_per_email)
                window = relay.copies.keys() & {
                    row["message_id"]
                    for row in await admin.fetch(
                        "SELECT message_id FROM notifier.deliveries WHERE status = 'sending' AND claimed_by = $1",
                        first_run,
                    )
                }
                with notifier_processes(env, 1, tmp_path):  # the first's container restarted in its slot
                    rows = await notifier.deliveries([*ids, *more], timeout=120)
                    await relay.finished()
        second, restarted = second_log.read_text(), (tmp_path / "notifier-2.log").read_text()
    assert "delivery.taken_back_from_earlier_run" not in second, second[-2000:]
    assert "delivery.taken_back_from_earlier_run" in restarted, restarted[-2000:]
    assert sorted(row["status"] for row in rows) == ["sent"] * 2 * INVITES
    twice = {message_id for message_id, copies in relay.copies.items() if copies > 1}
    assert len(relay.copies) == 2 * INVITES and twice <= window, (
        f"sent twice outside the crash window: {twice - window}"
    )


async def test_a_notifier_restarted_in_its_slot_sends_what_its_killed_run_held_at_once(
    infra: Infrastructure, template_database: str, slow_relay: tuple[SlowRelay, int], tmp_path: Path
) -> None:
    """kill -9 mid-batch, then the same slot started again (a pod's container restarted): with a 300 s lease, every
    email still goes out within a minute, and only the crash window's (sent, not yet recorded) twice."""
    relay, port = slow_relay
    relay.seconds_per_email = 0.1
    async with scratch(infra, template_database) as (database, prefix, admin):
        notifier = Notifier(database, prefix, admin)
        env = _one_process(notifier, port, sending_lease_seconds=300, notifier_instance="pod-a")
        with notifier_processes(env, 1, tmp_path) as [first]:
            ids = await _invite_all_until_two_are_sent(notifier, relay, "Restarted")
            first.process.kill()
            first.process.wait(timeout=10)
        await relay.finished()  # an email whose DATA had arrived whole is the relay's, and counted
        held = {
            row["message_id"]
            for row in await admin.fetch("SELECT message_id FROM notifier.deliveries WHERE status = 'sending'")
        }
        window = held & set(relay.copies)  # accepted by the relay, not recorded: may be sent again
        with notifier_processes(env, 1, tmp_path) as [again]:
            rows = await notifier.deliveries(ids, timeout=60)  # a bound well inside the 300 s lease
            async with httpx.AsyncClient(base_url=again.url) as http:
                metrics = (await http.get("/metrics")).text
        restarted = (tmp_path / "notifier-1.log").read_text()
    assert len(held) > 2, "the killed run held claims it had not sent"
    assert sorted(row["status"] for row in rows) == ["sent"] * INVITES, "the killed run's claims waited"
    assert "delivery.taken_back_from_earlier_run" in restarted, restarted[-2000:]
    # What an operator's alert reads: every claim the killed run held, each a possible second email.
    assert f'emails_reclaimed_total{{reason="earlier_run"}} {float(len(held))}' in metrics, metrics
    twice = {message_id for message_id, copies in relay.copies.items() if copies > 1}
    assert len(relay.copies) == INVITES and twice <= window, f"sent twice outside the crash window: {twice - window}"
