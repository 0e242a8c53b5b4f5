"""The notifier's rules without I/O: deliveries from events, what SMTP answers become, the outcome event."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas import ConnectionRejected, InviteRequested
from services.notifier.directory import patient_entries
from services.notifier.domain import (
    CONNECTED,
    CONNECTED_BEFORE_REJECTION,
    EITHER_CHECK,
    REVOKED,
    Attempt,
    Claimed,
    Final,
    Retry,
    SendResult,
    backoff_seconds,
    content_problem,
    decide,
    delivery_for,
    delivery_id_for,
    message_id_for,
    not_to_send,
    outcome_event,
    smtp_address,
)
from services.notifier.handlers import _log_not_sent
from services.runtime.logging import configure_logging
from tests.integration.notifier_harness import invite, patient, rejected

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)
DOMAIN = "collabkare.example"


def _claimed(event: InviteRequested | ConnectionRejected | None = None, attempts: int = 1) -> Claimed:
    delivery = delivery_for(event or invite(uuid.uuid4(), "ana@example.com", "hi", line_number=3), DOMAIN)
    return Claimed(delivery, attempts, True, "en", None, "Riverside", None)


def _decide(claimed: Claimed, attempt: Attempt, reply: str = "x", max_attempts: int = 3) -> Final | Retry:
    return decide(
        claimed,
        SendResult(attempt, reply),
        max_attempts=max_attempts,
        now=NOW,
        retry_base=2.0,
        retry_cap=60.0,
        rng=random.Random(1),
    )


def test_a_delivery_is_derived_from_its_event_and_keeps_the_roster_coordinates() -> None:
    event = invite(uuid.uuid4(), "Ana@Example.com", "hello", batch_id=uuid.uuid4(), line_number=12)
    delivery = delivery_for(event, DOMAIN)
    assert delivery.id == delivery_id_for(event.event_id) == delivery_for(event, DOMAIN).id, "stable across replays"
    assert (delivery.kind, delivery.recipient, delivery.note) == ("invite", "Ana@example.com", "hello")
    assert (delivery.invite_id, delivery.batch_id, delivery.line_number) == (
        event.payload.invite_id,
        event.payload.batch_id,
        12,
    )
    no = delivery_for(rejected(uuid.uuid4(), "b@example.com", ""), DOMAIN)
    assert (no.kind, no.reason) == ("connection_rejected", None), "an empty reason is no reason"


@pytest.mark.parametrize(
    ("checks", "queued"),
    [
        ({"identity_check": "ssn", "identity_checks": ["ssn", "date_of_birth_and_phone"]}, EITHER_CHECK),
        ({"identity_check": "ssn", "identity_checks": ["ssn"]}, "ssn"),
        ({"identity_check": "date_of_birth_and_phone"}, "date_of_birth_and_phone"),  # an event of before the list
        ({}, None),
    ],
    ids=["both", "one", "before the list", "a roster's"],
)
def test_the_email_names_every_answer_accepting_takes(checks: dict[str, object], queued: str | None) -> None:
    assert delivery_for(invite(uuid.uuid4(), "ana@example.com", **checks), "mail.example").identity_check == queued


def test_the_message_id_is_the_source_event_id_at_the_senders_domain() -> None:
    """It was "@collabkare.notifier", a domain nobody controls (RFC 5322; spam filters score a Message-ID whose
    domain is not fully qualified). Only the event id and the domain go in: a replay makes the same one."""
    event = invite(uuid.uuid4(), "ana@example.com")
    delivery = delivery_for(event, "mail.riverside.example")
    assert delivery.message_id == f"<{event.event_id}@mail.riverside.example>"
    assert delivery.message_id == message_id_for(event.event_id, "mail.riverside.example")
    assert delivery_for(event, "mail.riverside.example").message_id == delivery.message_id


def test_the_latest_registration_of_a_patient_wins_and_each_patient_keeps_hers() -> None:
    older = patient("Same@Example.com", "en")
    later = older.payload.registered_at + timedelta(seconds=1)
    newer = older.model_copy(
        update={"payload": older.payload.model_copy(update={"registered_at": later, "locale": "es"})}
    )
    [entry] = patient_entries([newer, older])
    assert (entry.patient_id, entry.email, entry.locale) == (older.payload.patient_id, "same@example.com", "es")
    # Another patient at the same address (a family's): both registrations are kept, the directory derives from them.
    other = patient("same@example.com", "en")
    assert len(patient_entries([newer, other])) == 2


def test_a_display_name_is_bounded_as_a_practice_name_is() -> None:
    """An integrator's probe: 3 MB of display name became a 6 MB email."""
    [entry] = patient_entries([patient("ann@example.com", "en", name="N" * 3_000_000)])
    assert entry.display_name == "N" * 200


def test_success_and_permanent_failure_are_final_at_once() -> None:
    claimed = _claimed()
    sent = _decide(claimed, Attempt.SENT, "250 2.0.0 OK")
    assert isinstance(sent, Final) and (sent.outcome, sent.reason, sent.attempts) == ("sent", None, 1)
    bounced = _decide(claimed, Attempt.PERMANENT, "550 5.1.1 no such user")
    assert isinstance(bounced, Final) and (bounced.outcome, bounced.reason) == ("error", "550 5.1.1 no such user")


def test_temporary_failures_retry_with_growing_jittered_delays_then_give_up() -> None:
    delays = []
    for attempts in (1, 2):
        retry = _decide(_claimed(attempts=attempts), Attempt.TRANSIENT, "421 4.3.2 busy")
        assert isinstance(retry, Retry) and retry.attempts == attempts and retry.last_error == "421 4.3.2 busy"
        delays.append((retry.not_before - NOW).total_seconds())
    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0
    final = _decide(_claimed(attempts=3), Attempt.TRANSIENT, "451 4.3.0 later")
    assert isinstance(final, Final) and final.outcome == "error" and final.attempts == 3
    assert final.reason == "gave up after 3 attempts: 451 4.3.0 later"


def test_an_unreachable_server_does_not_use_up_attempts() -> None:
    retry = _decide(_claimed(attempts=3), Attempt.UNREACHABLE, "ConnectionRefusedError")
    assert isinstance(retry, Retry) and retry.attempts == 2, "the message was never tried"


def test_backoff_is_capped() -> None:
    assert 30.0 <= backoff_seconds(50, 2.0, 60.0) <= 60.0


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("javascript:alert(1)", "not an http(s) URL"),
        ("https://ok.example/accept?token=a b", "not an http(s) URL"),
        ("https://ok.example/accept?token=ab", None),
    ],
)
def test_an_accept_link_must_be_a_web_address(url: str, problem: str | None) -> None:
    claimed = _claimed()
    claimed = replace(claimed, delivery=replace(claimed.delivery, accept_url=url))
    found = content_problem(claimed, NOW)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_an_invite_that_expired_in_the_queue_is_not_sent() -> None:
    claimed = _claimed()
    late = claimed.delivery.expires_at
    assert late is not None
    assert content_problem(claimed, late - timedelta(seconds=1)) is None
    assert "expired" in (content_problem(claimed, late) or "")


@pytest.mark.parametrize(
    ("address", "on_the_wire"),
    [
        ("ann@example.com", "ann@example.com"),
        ("Ann.Lee@Example.COM", "Ann.Lee@Example.COM"),  # ASCII goes as written
        ("ann@bücher.de", "ann@xn--bcher-kva.de"),  # an internationalised domain in its IDNA form
        ("ann@BÜCHER.de", "ann@xn--bcher-kva.de"),
        ("josé@example.com", "josé@example.com"),  # a non-ASCII mailbox name as it is: SMTPUTF8 servers take it
        ("josé@bücher.de", "josé@bücher.de"),
    ],
)
def test_the_address_smtp_carries(address: str, on_the_wire: str) -> None:
    assert smtp_address(address) == on_the_wire
    claimed = _claimed()
    claimed = replace(claimed, delivery=replace(claimed.delivery, recipient=address))
    assert content_problem(claimed, NOW) is None, "whether the server takes it is known only when sending"


def test_outcome_event_is_caused_by_the_source_and_copies_the_invite_coordinates() -> None:
    event = invite(uuid.uuid4(), "ana@example.com", batch_id=uuid.uuid4(), line_number=4)
    claimed = _claimed(event)
    sent = outcome_event(Final(claimed, "sent", None, "250 OK", 1, NOW))
    assert sent.causation_id == str(event.event_id) and sent.correlation_id == event.correlation_id
    assert sent.practice_id == event.practice_id and sent.aggregate_key() == str(event.event_id)
    payload = sent.payload
    assert (payload.invite_id, payload.batch_id, payload.line_number) == (
        event.payload.invite_id,
        event.payload.batch_id,
        4,
    )
    assert payload.message_id == claimed.delivery.message_id == f"<{event.event_id}@collabkare.example>"
    stopped = not_to_send(dataclasses.replace(claimed, on_platform=False), NOW)
    assert stopped is not None
    absent = outcome_event(stopped).payload
    assert (absent.outcome, absent.message_id, absent.attempts) == ("not_on_platform", None, 0)


def test_what_is_stopped_at_its_claim() -> None:
    """An invite from a practice the directory does not know went out from "your practice" (read as phishing)."""
    invited, rejection = _claimed(), _claimed(rejected(uuid.uuid4(), "ana@example.com", None))
    assert not_to_send(invited, NOW) is None and not_to_send(rejection, NOW) is None
    unknown_practice = not_to_send(dataclasses.replace(invited, practice_name=None), NOW)
    assert unknown_practice is not None and (unknown_practice.outcome, unknown_practice.attempts) == ("error", 0)
    assert unknown_practice.reason is not None and "practice directory" in unknown_practice.reason
    again = not_to_send(dataclasses.replace(invited, revoked=True), NOW)
    assert again is not None and (again.outcome, again.reason) == ("error", REVOKED), "revoked during an attempt"
    moot = not_to_send(dataclasses.replace(invited, connected=True), NOW)
    assert moot is not None and (moot.outcome, moot.reason, moot.attempts) == ("error", CONNECTED, 0)
    assert outcome_event(moot).payload.message_id is None
    assert not_to_send(dataclasses.replace(rejection, practice_name=None, on_platform=False), NOW) is None, (
        "connection emails go out with a neutral practice name"
    )
    stale = not_to_send(dataclasses.replace(rejection, connected=True), NOW)
    assert stale is not None and (stale.outcome, stale.reason) == ("error", CONNECTED_BEFORE_REJECTION)
    retried = dataclasses.replace(invited, connected=True, attempts=2)
    assert not_to_send(retried, NOW) is None, "an earlier attempt may have arrived: not said to be unsent"


def test_emails_ended_at_their_claim_are_logged_without_their_address() -> None:
    """The metric counted them, but the log said nothing of an invite ended unsent because the patient had just
    connected: an operator asked why a patient got no email had nothing to go by."""
    invited = _claimed()
    absent = not_to_send(dataclasses.replace(invited, on_platform=False), NOW)
    moot = not_to_send(dataclasses.replace(invited, connected=True), NOW)
    assert absent is not None and moot is not None
    stream = io.StringIO()
    configure_logging("notifier", "DEBUG", stream=stream)  # the service's pipeline: it drops every `reason`
    _log_not_sent([absent] * 12 + [moot])
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["outcome"], e.get("why"), e["count"]) for e in logs] == [
        ("delivery.not_sent", "not_on_platform", None, 12),
        ("delivery.not_sent", "error", CONNECTED, 1),
    ]
    assert logs[0]["delivery_ids"] == [str(invited.delivery.id)] * 10, "a few ids, not a roster's worth"
    assert "ana@example.com" not in stream.getvalue()


class _Edge(random.Random):
    """Jitter pinned to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


def test_by_default_a_4xx_is_retried_for_15_to_30_minutes_before_it_is_an_error() -> None:
    """Greylisting or a provider's throttle lasts minutes: the defaults gave up within 15-30 seconds."""
    from services.notifier.settings import NotifierSettings

    fields = NotifierSettings.model_fields
    attempts = fields["smtp_max_attempts"].default
    base, cap = fields["smtp_retry_base_seconds"].default, fields["smtp_retry_max_seconds"].default
    for jitter, low, high in ((0.5, 15 * 60, 16 * 60), (1.0, 30 * 60, 31 * 60)):
        waited = sum(backoff_seconds(n, base, cap, _Edge(jitter)) for n in range(1, attempts))
        assert low <= waited <= high, (jitter, waited)


@pytest.mark.parametrize("attempt", [Attempt.PERMANENT, Attempt.TRANSIENT])
def test_a_long_reply_quoting_short_addresses_stays_within_the_outcomes_bound(attempt: Attempt) -> None:
    """Masking lengthens "jo@" to "j***@": a reply cut to 1,000 characters and then masked broke DeliveryOutcome's
    bound, and every try to record the sender's batch failed on it (its rows held, their emails sent again after a
    restart)."""
    reply = "550-5.1.1 " + " ".join(["<jo@ex.org>"] * 200)
    final = _decide(_claimed(attempts=3), attempt, reply)
    assert isinstance(final, Final)
    reason = outcome_event(final).payload.reason
    assert reason is not None and len(reason) == 1000 and "jo@" not in reason
