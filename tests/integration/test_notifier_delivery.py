"""The notifier against real PostgreSQL, Kafka and SMTP: each email's content and headers, outcomes, faults."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from collabkare.stack.infra import Infrastructure
from schemas import InviteRequested, PatientRegistered
from services.notifier.domain import CONNECTED, CONNECTED_BEFORE_REJECTION, REJECTION_WAIT_SECONDS, REVOKED
from services.notifier.mailer import Mailer
from services.notifier.settings import NotifierSettings
from tests.integration.notifier_harness import (
    Notifier,
    approved,
    directory_applied,
    invite,
    notifier_env,
    patient,
    practice,
    rejected,
    revoked,
    running_notifier,
    unique_email,
)
from tests.support import read_to_end

PRACTICE_NAME = "Clínica Peñalara & Hijos"


@pytest.fixture(scope="module")
async def notifier(infra: Infrastructure, template_database: str) -> AsyncIterator[Notifier]:
    # Several tests publish an invite before (or beside, on another topic) its PatientRegistered or practice, or
    # catch a delivery while it waits: 0.5 s of grace was a race against consumption on a loaded machine.
    async with running_notifier(infra, template_database, directory_grace_seconds=3) as running:
        yield running


@pytest.fixture
async def clinic(notifier: Notifier) -> uuid.UUID:
    """A practice of this test's own, registered on the platform topic."""
    event = practice(PRACTICE_NAME, reply_to="front-desk@penalara.example")
    await notifier.publish(event)
    assert event.practice_id is not None
    return event.practice_id


@pytest.fixture
def smtp_faults(infra: Infrastructure) -> Iterator[Any]:
    assert infra.smtp is not None, "fault drills need the embedded SMTP catcher"
    yield infra.smtp
    infra.smtp.clear_faults()


def _parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"], "plain text first, HTML preferred last"
    for part in message.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


async def test_invite_email_names_the_practice_carries_note_link_expiry_and_outcome(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    email = unique_email("ana")
    batch_id = uuid.uuid4()
    note = 'Welcome <b>aboard</b> & see "you", Dr. Ruiz'
    event = invite(clinic, email, note, batch_id=batch_id, line_number=7, identity_check="date_of_birth_and_phone")
    await notifier.publish(patient(email, "en", name="Ana Núñez"), event)

    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["attempts"], row["kind"]) == ("sent", 1, "invite")
    assert row["accept_url"] is None and row["note"] is None, "content (a live token, PHI) is cleared once final"
    [message] = notifier.caught(event.event_id)
    assert message["From"] == "CollabKare <no-reply@collabkare.example>"
    [sender] = message["From"].addresses
    assert message["Message-ID"] == f"<{event.event_id}@{sender.domain}>" == row["message_id"], "SMTP_FROM's domain"
    assert message["To"] == email and message["X-Envelope-To"] == email
    [reply_to] = message["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == (PRACTICE_NAME, "front-desk@penalara.example")
    assert message["Subject"] == f"{PRACTICE_NAME} invites you to connect on CollabKare"
    assert message["Date"] and message["MIME-Version"] == "1.0" and message["Content-Language"] == "en"
    plain, html = _parts(message)
    assert "Hello Ana Núñez," in plain and PRACTICE_NAME in plain
    assert note in plain, "the text part carries the note as written"
    assert event.payload.accept_url in plain and "expires on March 7, 2031 at 12:00 UTC" in plain
    assert "asked to confirm your date of birth and phone number" in plain
    assert "Welcome &lt;b&gt;aboard&lt;/b&gt; &amp; see &#34;you&#34;" in html and "<b>aboard" not in html
    assert f'href="{event.payload.accept_url}"' in html and "Cl\u00ednica Pe\u00f1alara &amp; Hijos" in html

    outcome = (await notifier.outcomes({event.event_id}))[event.event_id]
    payload = outcome["payload"]
    assert (payload["outcome"], payload["kind"], payload["attempts"]) == ("sent", "invite", 1)
    assert payload["invite_id"] == str(event.payload.invite_id)
    assert (payload["batch_id"], payload["line_number"]) == (str(batch_id), 7)
    assert payload["message_id"] == message["Message-ID"] and payload["reason"] is None
    assert payload["delivery_id"] == str(row["id"]) and payload["source_event_type"] == "InviteRequested"
    assert outcome["practice_id"] == str(clinic) and outcome["correlation_id"] == event.correlation_id
    assert outcome["causation_id"] == str(event.event_id) and outcome["producer"] == "notifier"


async def test_approval_and_rejection_emails_with_and_without_reason(notifier: Notifier, clinic: uuid.UUID) -> None:
    # Three patients: a rejection to one connected to the practice is not sent (the next test).
    email, declined, unexplained = unique_email("luis"), unique_email("mara"), unique_email("olga")
    yes = approved(clinic, email)
    no = rejected(clinic, declined, "We are not accepting new patients\nuntil March.")
    bare = rejected(clinic, unexplained, None)
    await notifier.publish(*(patient(each, "en") for each in (email, declined, unexplained)), yes, no, bare)

    rows = await notifier.deliveries([yes.event_id, no.event_id, bare.event_id])
    assert sorted(row["status"] for row in rows) == ["sent"] * 3
    [confirmation] = notifier.caught(yes.event_id)
    assert confirmation["Subject"] == f"You are now connected to {PRACTICE_NAME}"
    plain, html = _parts(confirmation)
    assert f"You are now connected to {PRACTICE_NAME}." in plain and "Hello," in plain
    assert "Clínica Peñalara &amp; Hijos" in html

    [with_reason] = notifier.caught(no.event_id)
    assert with_reason["Subject"] == f"Your connection request to {PRACTICE_NAME}"
    plain, html = _parts(with_reason)
    assert "The practice gave this reason:\nWe are not accepting new patients\nuntil March." in plain.replace("\r", "")
    assert "We are not accepting new patients" in html
    [without_reason] = notifier.caught(bare.event_id)
    plain, _ = _parts(without_reason)
    assert "did not accept your request" in plain and "reason" not in plain

    outcomes = await notifier.outcomes({yes.event_id, no.event_id, bare.event_id})
    kinds = {source: event["payload"]["kind"] for source, event in outcomes.items()}
    assert kinds == {
        yes.event_id: "connection_approved",
        no.event_id: "connection_rejected",
        bare.event_id: "connection_rejected",
    }
    assert all(event["payload"]["outcome"] == "sent" for event in outcomes.values())


async def test_a_rejection_to_a_patient_who_connected_by_an_invite_a_moment_before_is_not_sent(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """Found by a black-box race probe: a patient accepted the practice's invite while staff rejected her request;
    connections had not heard of the acceptance, so both were done, and she got "the practice did not accept your
    request" beside "you are now connected". A rejection's email waits a moment, and is not sent once her
    ConnectionApproved (two hops behind) has arrived. Another practice's rejection of her still goes out."""
    email = unique_email("raced")
    elsewhere = practice("Another Practice")
    assert elsewhere.practice_id is not None
    await notifier.publish(patient(email, "en"), elsewhere)
    await directory_applied(notifier.admin, [email], clinic)  # no grace: the rejection's own wait is what counts
    await directory_applied(notifier.admin, [email], elsewhere.practice_id)
    no, other = rejected(clinic, email, "not our patient"), rejected(elsewhere.practice_id, email, None)
    connection = approved(clinic, email)
    # One patient: keyed alike, the approval comes behind the rejection on its partition, as it does in the race.
    connection = connection.model_copy(
        update={"payload": connection.payload.model_copy(update={"patient_id": no.payload.patient_id})}
    )
    await notifier.publish(no, other, connection)
    row = await notifier.delivery(no.event_id)
    assert (row["status"], row["last_error"]) == ("error", CONNECTED_BEFORE_REJECTION)
    assert notifier.caught(no.event_id) == []
    sent = await notifier.delivery(other.event_id)
    assert sent["status"] == "sent"
    for waited in (row, sent):
        assert (waited["not_before"] - waited["created_at"]).total_seconds() == REJECTION_WAIT_SECONDS


async def test_spanish_templates_chosen_by_the_patients_locale(notifier: Notifier, clinic: uuid.UUID) -> None:
    # Two patients: an invite to one connected to the practice is not sent.
    email, connected = unique_email("sofia"), unique_email("ines")
    event = invite(clinic, email, "¡Bienvenida a la consulta!")
    yes = approved(clinic, connected)
    await notifier.publish(patient(email, "es", name="Sofía"), patient(connected, "es"), event, yes)
    rows = await notifier.deliveries([event.event_id, yes.event_id])
    assert [row["status"] for row in rows] == ["sent", "sent"] and {row["locale"] for row in rows} == {"es"}

    [message] = notifier.caught(event.event_id)
    assert message["Subject"] == f"{PRACTICE_NAME} le invita a conectarse en CollabKare"
    assert message["Content-Language"] == "es"
    plain, html = _parts(message)
    assert "Hola, Sofía:" in plain and "¡Bienvenida a la consulta!" in plain
    assert "caduca el 7 de marzo de 2031 a las 12:00 UTC" in plain and "Aceptar la invitación" in html
    [confirmation] = notifier.caught(yes.event_id)
    assert confirmation["Subject"] == f"Su conexión con {PRACTICE_NAME} está activa"
    [raw] = notifier.caught_raw(yes.event_id)
    assert b"\r\nSubject: =?utf-8?b?" in raw and raw.isascii(), "non-ASCII travels as RFC 2047 words and QP"


async def test_international_addresses_an_idna_domain_and_a_utf8_mailbox_over_smtputf8(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """The catcher offers SMTPUTF8 (RFC 6531), as Postfix does; a server that does not gets no such email (the
    delivery ends `error` saying so: tests/unit/test_smtp_wire.py)."""
    tag = uuid.uuid4().hex[:8]
    idn, local = f"ana-{tag}@bücher.example", f"josé-{tag}@example.com"
    to_idn, to_local = invite(clinic, idn, None), invite(clinic, local, None)
    await notifier.publish(patient(idn, "en"), patient(local, "en"), to_idn, to_local)

    assert (await notifier.delivery(to_idn.event_id))["status"] == "sent"
    [message] = notifier.caught(to_idn.event_id)
    assert message["To"] == message["X-Envelope-To"] == f"ana-{tag}@xn--bcher-kva.example"
    assert (await notifier.delivery(to_local.event_id))["status"] == "sent"
    [message] = notifier.caught(to_local.event_id)
    assert message["To"] == message["X-Envelope-To"] == local


async def test_a_directory_entry_is_found_whatever_the_case_of_its_letters(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """PostgreSQL's lower() under the C locale lowercases ASCII only: "Üser@Example.COM" ended not_on_platform."""
    tag = uuid.uuid4().hex[:8]
    registered, typed = f"üser-{tag}@example.com", f"ÜSER-{tag}@Example.COM"
    event = invite(clinic, typed, None)
    await notifier.publish(patient(registered, "en"), event)
    assert (await notifier.delivery(event.event_id))["status"] == "sent"
    [message] = notifier.caught(event.event_id)
    assert message["To"] == f"ÜSER-{tag}@example.com", "the mailbox as the invite wrote it (a domain has no case)"


async def test_a_nul_in_a_platform_name_loses_neither_the_patient_nor_the_practice(notifier: Notifier) -> None:
    """JSON and the published schema allow U+0000, PostgreSQL's text does not: these registrations went to dead
    letters after five attempts, and every invite to that patient then ended not_on_platform."""
    email = unique_email("nul")
    clinic = practice("Nul\x00Clinic")
    event = invite(clinic.practice_id, email, None)
    await notifier.publish(clinic, patient(email, "en", name="Ann\x00Lee"), event)
    assert (await notifier.delivery(event.event_id))["status"] == "sent"
    [message] = notifier.caught(event.event_id)
    assert "NulClinic" in message["Subject"] and "\x00" not in message.as_string()
    assert "Ann" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_a_patient_the_platform_deleted_is_not_emailed(notifier: Notifier, clinic: uuid.UUID) -> None:
    """platform.patients.v1 is compacted: a tombstone (the patient's id as key, no value) deletes the account. It
    was dead-lettered, and the directory kept the deleted patient's name and address for good."""
    email = unique_email("deleted")
    registered = patient(email, "en", name="Del Eted")
    before = invite(clinic, email, None)
    await notifier.publish(registered, before)
    assert (await notifier.delivery(before.event_id))["status"] == "sent"
    await notifier.publish_raw("platform.patients.v1", str(registered.payload.patient_id).encode(), None)
    kept = "SELECT count(*) FROM notifier.patients WHERE patient_id = $1"
    async with asyncio.timeout(20):
        while await notifier.admin.fetchval(kept, registered.payload.patient_id):
            await asyncio.sleep(0.05)
    after = invite(clinic, email, None)
    await notifier.publish(after)
    assert (await notifier.delivery(after.event_id))["status"] == "not_on_platform"
    # Nor a connection email: staff deciding her request after she deleted her account (connection emails went to
    # any address, the directory's grace only waiting for a registration on its way).
    other = practice("Another Practice")  # its rejection is not moot by the first practice's approval
    assert other.practice_id is not None
    decided = [approved(clinic, email.upper()), rejected(other.practice_id, email, "We are not taking new patients")]
    await notifier.publish(other, *decided)
    for event in decided:
        row = await notifier.delivery(event.event_id)
        assert (row["status"], row["last_error"]) == ("not_on_platform", None)
        assert notifier.caught(event.event_id) == []
    # Registered again, she is on CollabKare once more.
    await notifier.publish(patient(email, "en"))
    again = approved(clinic, email)
    await notifier.publish(again)
    assert (await notifier.delivery(again.event_id))["status"] == "sent"
    assert len(notifier.caught(again.event_id)) == 1


async def test_a_patient_who_changed_address_is_emailed_at_the_new_one_only(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """An integrator's probe: after a patient's new registration with another address, invites to both addresses were
    sent, while a directory rebuilt from the compacted topic (keyed by patient id) would know only the new one. A
    registration older than the patient's newest (a replay) brings no address back."""
    old_email, new_email, replayed_email = unique_email("old"), unique_email("new"), unique_email("older")
    first = patient(old_email)
    patient_id, registered_at = first.payload.patient_id, first.payload.registered_at

    def again(email: str, at: datetime) -> PatientRegistered:
        payload = first.payload.model_copy(update={"email": email, "registered_at": at})
        return first.model_copy(update={"event_id": uuid.uuid4(), "payload": payload})

    await notifier.publish(first)
    await notifier.publish(again(new_email, registered_at + timedelta(days=1)))
    await notifier.publish(again(replayed_email, registered_at - timedelta(days=1)))
    to_old, to_new, to_replayed = invite(clinic, old_email), invite(clinic, new_email), invite(clinic, replayed_email)
    await notifier.publish(to_old, to_new, to_replayed)
    assert (await notifier.delivery(to_new.event_id))["status"] == "sent"
    assert (await notifier.delivery(to_old.event_id))["status"] == "not_on_platform"
    assert (await notifier.delivery(to_replayed.event_id))["status"] == "not_on_platform"
    addresses = await notifier.admin.fetch("SELECT email FROM notifier.patients WHERE patient_id = $1", patient_id)
    assert [r["email"] for r in addresses] == [new_email]


async def test_an_address_two_patients_registered_stays_while_either_still_names_it(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """An integrator's probe: a family's address, registered by B and then by A, left the directory for good when A
    moved to her own address (or was deleted), though B's newest registration still named it; a directory rebuilt
    from the compacted topic (B's record, A's last) would have it. It goes only once nobody names it."""
    family, own = unique_email("family"), unique_email("own")
    b = patient(family, "es", name="Beatriz")
    a = patient(family, "en", name="Ana")
    a = a.model_copy(update={"payload": a.payload.model_copy(update={"registered_at": b.payload.registered_at})})
    a_moves = a.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "payload": a.payload.model_copy(
                update={"email": own, "registered_at": a.payload.registered_at + timedelta(seconds=1)}
            ),
        }
    )
    await notifier.publish(b, a, a_moves)
    to_family = invite(clinic, family)
    await notifier.publish(to_family)
    assert (await notifier.delivery(to_family.event_id))["status"] == "sent"
    [message] = notifier.caught(to_family.event_id)
    assert "Beatriz" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]  # hers, not Ana's

    # Deleted, B leaves it to nobody: then it is gone, and a connection email to it is not sent.
    await notifier.publish_raw("platform.patients.v1", str(b.payload.patient_id).encode(), None)
    gone = "SELECT count(*) FROM notifier.patients WHERE email = $1"
    async with asyncio.timeout(20):
        while await notifier.admin.fetchval(gone, family):
            await asyncio.sleep(0.05)
    after = approved(clinic, family)
    await notifier.publish(after)
    assert (await notifier.delivery(after.event_id))["status"] == "not_on_platform"


async def test_invite_to_an_email_nobody_registered_sends_nothing(notifier: Notifier, clinic: uuid.UUID) -> None:
    stranger = unique_email("nobody")
    event = invite(clinic, stranger, "hello")
    await notifier.publish(event)
    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["attempts"], row["accept_url"]) == ("not_on_platform", 0, None)
    payload = (await notifier.outcomes({event.event_id}))[event.event_id]["payload"]
    assert (payload["outcome"], payload["message_id"], payload["attempts"]) == ("not_on_platform", None, 0)
    assert payload["invite_id"] == str(event.payload.invite_id)
    assert notifier.caught(event.event_id) == []


async def test_a_revoked_invite_is_not_emailed_and_a_resend_sends_one_email(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """Found by a concurrency review: the notifier did not read InviteRevoked, so an email still waiting (the
    directory's grace period, a backlog) went out revoked, and a resend sent two."""
    alone, resent = unique_email("revoked"), unique_email("resent")
    first = invite(clinic, alone, None)
    old = invite(clinic, resent, "v1")
    new = invite(clinic, resent, "v2", replaces=old.payload.invite_id)
    # Both recipients register within the grace period their first invite waits out: only revocations stop them.
    await notifier.publish(first, revoked(first), old, revoked(old, new.payload.invite_id), new)
    # Every invite queued before anyone registers (else `new`, keyed apart from `old`, could be claimed before
    # `old` is known, and say that an earlier link may no longer work).
    await notifier.queued([first.event_id, old.event_id, new.event_id])
    await notifier.publish(patient(alone, "en"), patient(resent, "en"))

    assert (await notifier.delivery(new.event_id))["status"] == "sent"
    for cancelled in (first, old):
        row = await notifier.delivery(cancelled.event_id)
        assert (row["status"], row["last_error"], row["accept_url"]) == ("error", REVOKED, None)
        assert notifier.caught(cancelled.event_id) == []
    outcomes = await notifier.outcomes({first.event_id, old.event_id})
    assert {e["payload"]["outcome"] for e in outcomes.values()} == {"error"}
    assert {e["payload"]["invite_id"] for e in outcomes.values()} == {
        str(first.payload.invite_id),
        str(old.payload.invite_id),
    }
    [email] = notifier.caught(new.event_id)
    assert email["To"] == resent
    plain = email.get_body(("plain",))
    # The earlier invite never reached her: nothing to say about its link (it said so, to a first email).
    assert plain is not None and "no longer works" not in plain.get_content()


async def _sent_first_invite(notifier: Notifier, clinic: uuid.UUID, tag: str) -> tuple[str, InviteRequested]:
    """A registered patient and the first invite, emailed."""
    email = unique_email(tag)
    await notifier.publish(patient(email, "en"))
    first = invite(clinic, email, "v1")
    await notifier.publish(first)
    assert (await notifier.delivery(first.event_id))["status"] == "sent"
    return email, first


def _says_the_earlier_link_is_dead(notifier: Notifier, event: InviteRequested) -> bool:
    [message] = notifier.caught(event.event_id)
    plain = message.get_body(("plain",))
    assert plain is not None
    return "that invitation's link no longer works: use this one." in plain.get_content()


async def test_a_resend_says_the_earlier_link_no_longer_works_only_when_that_email_went_out(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    email, first = await _sent_first_invite(notifier, clinic, "twice")
    second = invite(clinic, email, "v2", replaces=first.payload.invite_id)
    await notifier.publish(revoked(first, second.payload.invite_id), second)
    assert (await notifier.delivery(second.event_id))["status"] == "sent"
    assert _says_the_earlier_link_is_dead(notifier, second)
    # Resent twice in a row: the second resend's invite was revoked before its email went out, and the first email
    # (whose link no longer works) is still in the patient's inbox.
    third = invite(clinic, email, "v3", replaces=second.payload.invite_id)
    skipped = invite(clinic, email, "v4", replaces=third.payload.invite_id)
    await notifier.publish(
        revoked(second, third.payload.invite_id), third, revoked(third, skipped.payload.invite_id), skipped
    )
    assert (await notifier.delivery(skipped.event_id))["status"] == "sent"
    # Final (its key may sit on another partition than skipped's): what the sink holds of it now is all it gets.
    assert (await notifier.delivery(third.event_id))["status"] == "error"
    assert notifier.caught(third.event_id) == []
    assert _says_the_earlier_link_is_dead(notifier, skipped)


async def test_a_resend_whose_earlier_invite_is_not_seen_yet_says_the_earlier_link_may_no_longer_work(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """Invites are keyed by their own id: a resend of a resend can overtake the first resend's request (another
    partition). CI caught the email then leaving out that the first email's link is dead; the walk back along the
    resends stopped at the invite it had no row for. Unknown counts as maybe emailed: the line is an "if"."""
    email, first = await _sent_first_invite(notifier, clinic, "overtaking")
    middle = invite(clinic, email, "v2", replaces=first.payload.invite_id)
    latest = invite(clinic, email, "v3", replaces=middle.payload.invite_id)
    await notifier.publish(revoked(first, middle.payload.invite_id), revoked(middle, latest.payload.invite_id), latest)
    assert (await notifier.delivery(latest.event_id))["status"] == "sent"
    assert _says_the_earlier_link_is_dead(notifier, latest)
    # The overtaken request arrives: revoked already, it ends unsent.
    await notifier.publish(middle)
    row = await notifier.delivery(middle.event_id)
    assert (row["status"], row["last_error"]) == ("error", REVOKED)
    assert notifier.caught(middle.event_id) == []


async def test_an_invite_to_a_patient_connected_to_the_practice_is_not_emailed(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """Found by a black-box race probe: staff invited a patient a moment after approving her request, before the
    invitations service had heard of the approval; she got "you are now connected", then an invite whose link no
    longer worked. The notifier reads the approval itself: that invite ends unsent. The same patient invited by
    another practice is still emailed."""
    email = unique_email("connected")
    elsewhere = practice("Another Practice")
    assert elsewhere.practice_id is not None
    await notifier.publish(patient(email, "en"), elsewhere)
    connection = approved(clinic, email.upper())  # the directory key, not the spelling, decides
    await notifier.publish(connection)
    assert (await notifier.delivery(connection.event_id))["status"] == "sent"
    moot, other = invite(clinic, email, None), invite(elsewhere.practice_id, email, None)
    await notifier.publish(moot, other)
    row = await notifier.delivery(moot.event_id)
    assert (row["status"], row["last_error"]) == ("error", CONNECTED)
    assert notifier.caught(moot.event_id) == []
    [outcome] = (await notifier.outcomes({moot.event_id})).values()
    assert (outcome["payload"]["outcome"], outcome["payload"]["reason"]) == ("error", CONNECTED)
    assert (await notifier.delivery(other.event_id))["status"] == "sent"


async def test_an_invite_revoked_before_its_request_arrives_is_not_emailed(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """A publish retried after a failure can put an InviteRevoked on the partition before its InviteRequested:
    the revoke is remembered, and the late request ends unsent."""
    email = unique_email("overtaken")
    await notifier.publish(patient(email, "en"))
    late = invite(clinic, email, None)
    await notifier.publish(revoked(late))
    await notifier.publish(late)
    row = await notifier.delivery(late.event_id)
    assert (row["status"], row["last_error"]) == ("error", REVOKED)
    assert notifier.caught(late.event_id) == []
    [outcome] = (await notifier.outcomes({late.event_id})).values()
    assert outcome["payload"]["outcome"] == "error" and outcome["payload"]["reason"] == REVOKED


async def test_an_invite_revoked_while_its_email_is_being_sent_is_not_sent_on_a_later_attempt(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """A code review found the revoke lost when the attempt under way did not end the delivery (a 4xx, a shutdown,
    a crash): the retry sent it, minutes after the revoke. Here a sender "holds" the delivery when the revoke comes."""
    email = unique_email("held")
    event = invite(clinic, email, None)
    await notifier.publish(event)  # not registered: it waits out the directory's grace period
    held = None
    for _ in range(1000):  # as soon as it is queued (up to ~20 s of consumer lag), and before its grace period ends
        held = await notifier.admin.fetchval(
            "UPDATE notifier.deliveries SET status = 'sending', claimed_at = now() WHERE source_event_id = $1"
            " AND status = 'pending' RETURNING id",
            event.event_id,
        )
        if held is not None:
            break
        await asyncio.sleep(0.02)
    assert held is not None, "the delivery was never pending"
    await notifier.publish(revoked(event))
    for _ in range(1000):  # the same allowance for consumer lag as above
        if await notifier.admin.fetchval("SELECT revoked_at FROM notifier.deliveries WHERE id = $1", held):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the revoke was never applied to the held delivery")
    # The attempt under way ends in a retry (as a 4xx would), and by then the patient has registered.
    await notifier.publish(patient(email, "en"))
    await notifier.admin.execute("UPDATE notifier.deliveries SET status = 'pending' WHERE id = $1", held)
    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["last_error"]) == ("error", REVOKED)
    assert notifier.caught(event.event_id) == []


async def test_every_copy_carries_the_message_id_its_delivery_was_queued_with(
    notifier: Notifier, clinic: uuid.UUID
) -> None:
    """The Message-ID is stored when a delivery is queued and read back for each attempt, never recomputed: one
    queued before SMTP_FROM changed keeps its domain, and the copy sent again from the crash window (the server
    took the message, the process died before recording it) carries the same Message-ID as the first."""
    email = unique_email("again")
    event = invite(clinic, email)
    await notifier.publish(event)  # not registered: it waits out the directory's grace period
    queued_before = f"<{event.event_id}@mail.earlier-sender.example>"  # as queued under an earlier SMTP_FROM
    held = None
    for _ in range(1000):  # as soon as it is queued, and before its grace period ends; held until registered
        held = await notifier.admin.fetchval(
            "UPDATE notifier.deliveries SET message_id = $2, not_before = now() + interval '1 hour'"
            " WHERE source_event_id = $1 AND status = 'pending' RETURNING id",
            event.event_id,
            queued_before,
        )
        if held is not None:
            break
        await asyncio.sleep(0.02)
    assert held is not None, "the delivery was never pending"
    await notifier.publish(patient(email))
    await directory_applied(notifier.admin, [email])
    await notifier.admin.execute("UPDATE notifier.deliveries SET not_before = now() WHERE id = $1", held)
    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["message_id"]) == ("sent", queued_before)
    payload = (await notifier.outcomes({event.event_id}))[event.event_id]["payload"]
    assert payload["message_id"] == queued_before

    # The row as a lease expiry finds it when the recording was lost: pending again, its content still there.
    await notifier.admin.execute(
        "UPDATE notifier.deliveries SET status = 'pending', decided_at = NULL, not_before = now(), accept_url = $2"
        " WHERE id = $1",
        held,
        event.payload.accept_url,
    )
    for _ in range(400):
        if len(notifier.caught_raw(event.event_id)) == 2:
            break
        await asyncio.sleep(0.05)
    assert [message["Message-ID"] for message in notifier.caught(event.event_id)] == [queued_before] * 2


@pytest.mark.parametrize("code", [421, 451])
async def test_temporary_failures_are_retried_into_exactly_one_email(
    notifier: Notifier, clinic: uuid.UUID, smtp_faults: Any, code: int
) -> None:
    email = unique_email("retry")
    await notifier.publish(patient(email))
    await directory_applied(notifier.admin, [email])
    smtp_faults.set_faults(tempfail_count=2, tempfail_code=code)
    event = invite(clinic, email)
    await notifier.publish(event)
    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["attempts"]) == ("sent", 3)
    assert len(notifier.caught(event.event_id)) == 1
    payload = (await notifier.outcomes({event.event_id}))[event.event_id]["payload"]
    assert (payload["outcome"], payload["attempts"]) == ("sent", 3)


@pytest.mark.parametrize("tag", ["bounce", "renée.rejetée"])  # the event masked only ASCII addresses
async def test_permanent_rejection_is_an_error_with_the_servers_reply(
    notifier: Notifier, clinic: uuid.UUID, smtp_faults: Any, tag: str
) -> None:
    email = unique_email(tag)
    smtp_faults.set_faults(reject_recipients=[email])
    event = invite(clinic, email)
    await notifier.publish(patient(email), event)
    row = await notifier.delivery(event.event_id)
    assert (row["status"], row["attempts"]) == ("error", 1), "5xx is final at once"
    payload = (await notifier.outcomes({event.event_id}))[event.event_id]["payload"]
    assert payload["outcome"] == "error" and payload["message_id"] is None
    assert payload["reason"].startswith("550 5.1.1") and "recipient rejected" in payload["reason"]
    assert email not in payload["reason"] and f"<{email[0]}***@" in payload["reason"], "the event masks the address"
    assert email in row["smtp_reply"] and email in row["last_error"], "the delivery row keeps the reply whole"
    assert notifier.caught(event.event_id) == []


async def test_a_redelivered_event_sends_nothing_even_past_the_inbox(notifier: Notifier, clinic: uuid.UUID) -> None:
    email, other = unique_email("once"), unique_email("marker")
    event = invite(clinic, email)
    await notifier.publish(patient(email), patient(other), event)
    assert (await notifier.delivery(event.event_id))["status"] == "sent"

    # Once as Kafka would redeliver it (the inbox stops it), once with the inbox row gone (the delivery row does).
    await notifier.publish(event)
    await notifier.admin.execute("DELETE FROM notifier.inbox WHERE event_id = $1", event.event_id)
    await notifier.publish(event)
    # Same key, same partition, after both copies: when the marker is sent, the copies have been consumed.
    marker = invite(clinic, other, invite_id=event.payload.invite_id)
    await notifier.publish(marker)
    assert (await notifier.delivery(marker.event_id))["status"] == "sent"
    applied = await notifier.admin.fetchval("SELECT count(*) FROM notifier.inbox WHERE event_id = $1", event.event_id)
    assert applied == 1, "the copy past the inbox was applied (and changed nothing)"
    assert len(notifier.caught(event.event_id)) == 1
    assert set(await notifier.outcomes({event.event_id, marker.event_id})) == {event.event_id, marker.event_id}


async def test_poison_event_goes_to_dead_letters_and_the_next_is_sent(notifier: Notifier, clinic: uuid.UUID) -> None:
    email = unique_email("after")
    event = invite(clinic, email)
    await notifier.publish(patient(email))
    garbage = b'{"event_type": "InviteRequested", "payload": "not an invite"}'
    key = event.aggregate_key().encode()
    await notifier.publish_raw("invitations.v1", key, garbage)
    await notifier.publish(event)
    assert (await notifier.delivery(event.event_id))["status"] == "sent"
    everything = await read_to_end(notifier.infra.kafka_bootstrap, notifier.topic_prefix + "notifier.dead-letter.v1")
    dead = [record for record in everything if record.key == key]  # the module's other tests share the topic
    assert [record.value for record in dead] == [garbage]
    assert b"not a valid event" in dict(dead[0].headers)["dead_letter_reason"]


async def test_readyz_checks_smtp_and_metrics_count_emails(notifier: Notifier, clinic: uuid.UUID) -> None:
    email = unique_email("metrics")
    event = invite(clinic, email)
    await notifier.publish(patient(email), event)
    assert (await notifier.delivery(event.event_id))["status"] == "sent"
    assert notifier.app is not None
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["smtp"] is True
        text = (await http.get("/metrics")).text
    assert 'emails_total{kind="invite",outcome="sent"}' in text
    assert "email_send_seconds_count" in text and "email_retries_total" in text


async def test_smtp_probe_says_no_when_nothing_answers(notifier: Notifier) -> None:
    env = notifier_env(notifier.database, notifier.topic_prefix, smtp_port=_closed_port())
    settings = NotifierSettings.model_validate({key.lower(): value for key, value in env.items()})
    assert await asyncio.wait_for(Mailer(settings).reachable(timeout=1.0), 5) is False


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_invite_to_the_new_owner_of_a_deleted_connected_patients_address_is_emailed(
    notifier: Notifier,
) -> None:
    """A review: the claim took any approval ever queued to the practice and address for "connected", so once the
    platform deleted a connected patient and another account registered her address, its invites ended `error`
    ("the patient connected before the invite's email went out") until the old approval email was purged."""
    clinic = practice("Clinic")
    assert clinic.practice_id is not None
    email = unique_email("zoe")
    zoe = patient(email)
    await notifier.publish(clinic, zoe)
    await directory_applied(notifier.admin, [email], clinic.practice_id)
    connection = approved(clinic.practice_id, email)
    await notifier.publish(connection)
    assert (await notifier.delivery(connection.event_id))["status"] == "sent"
    await notifier.publish_raw("platform.patients.v1", str(zoe.payload.patient_id).encode(), None)
    async with asyncio.timeout(20):
        while await notifier.admin.fetchval("SELECT count(*) FROM notifier.patients WHERE email = $1", email):
            await asyncio.sleep(0.05)
    newcomer = patient(email)
    await notifier.publish(newcomer)
    await directory_applied(notifier.admin, [email], clinic.practice_id)
    fresh = invite(clinic.practice_id, email, None)
    await notifier.publish(fresh)
    row = await notifier.delivery(fresh.event_id)
    assert row["status"] == "sent", (row["status"], row["last_error"])
