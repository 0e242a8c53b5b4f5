"""Emails built from pre-rendered templates: MIME structure, encodings, both languages, Message-ID, escaping."""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import re
import uuid
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from pydantic import ValidationError

from services.notifier.domain import Locale
from services.notifier.messages import Renderer, encode_header, format_moment
from services.notifier.settings import NotifierSettings
from tests.unit.notifier_factories import claimed_delivery

RENDERER = Renderer("CollabKare <no-reply@collabkare.example>")


def _parse(raw: bytes) -> EmailMessage:
    message = email.parser.BytesParser(_class=EmailMessage, policy=email.policy.default).parsebytes(raw)
    assert not message.defects, message.defects
    return message


def _bodies(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


def test_invite_is_multipart_text_and_html_with_every_field() -> None:
    claimed = claimed_delivery()
    raw = RENDERER.render(claimed)
    assert raw.isascii(), "7-bit on the wire: quoted-printable bodies, encoded headers"
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends in CRLF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    message = _parse(raw)
    assert message["Message-ID"] == f"<{claimed.delivery.source_event_id}@collabkare.example>"
    assert message["From"] == "CollabKare <no-reply@collabkare.example>" and message["To"] == "ana@example.com"
    assert message["Subject"] == "Riverside Family Practice invites you to connect on CollabKare"
    assert message["Reply-To"].addresses[0].addr_spec == "desk@riverside.example"
    assert message["MIME-Version"] == "1.0" and message["Auto-Submitted"] == "auto-generated"
    assert message["Date"].datetime.tzinfo is not None
    for part in message.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable" and part.get_content_charset() == "utf-8"
    plain, html = _bodies(message)
    assert "Hello Ana Núñez," in plain and "Riverside Family Practice invites you" in plain
    assert 'Bring your <insurance> card & "ID"' in plain
    assert "https://app.example/invites/accept?token=abc123&lang=en" in plain
    assert "expires on December 1, 2026 at 23:30 UTC." in plain
    assert "Bring your &lt;insurance&gt; card &amp; &#34;ID&#34;" in html and "<insurance>" not in html
    assert 'href="https://app.example/invites/accept?token=abc123&amp;lang=en"' in html
    assert '<html lang="en">' in html


def test_the_message_id_is_the_one_the_delivery_was_queued_with() -> None:
    """Not recomputed when sending: a delivery queued before SMTP_FROM changed keeps its Message-ID on every
    attempt, so a crash-window duplicate still matches the first copy."""
    claimed = claimed_delivery(message_id="<queued-before@collabkare.notifier>")
    again = _parse(RENDERER.render(claimed))["Message-ID"]
    assert again == _parse(RENDERER.render(claimed))["Message-ID"] == "<queued-before@collabkare.notifier>"


def test_spanish_invite_encodes_subject_and_body_and_formats_the_date() -> None:
    claimed = claimed_delivery(locale="es", practice_name="Clínica Peñalara", note="¡Bienvenida, señora Núñez!")
    raw = RENDERER.render(claimed)
    assert b"\r\nSubject: =?utf-8?b?" in raw and b"Pe=C3=B1alara" in raw
    message = _parse(raw)
    assert message["Subject"] == "Clínica Peñalara le invita a conectarse en CollabKare"
    assert message["Content-Language"] == "es"
    assert message["Reply-To"].addresses[0].display_name == "Clínica Peñalara"
    plain, html = _bodies(message)
    assert "Hola, Ana Núñez:" in plain and "¡Bienvenida, señora Núñez!" in plain
    assert "Esta invitación caduca el 1 de diciembre de 2026 a las 23:30 UTC." in plain
    assert "Aceptar la invitación" in html and '<html lang="es">' in html


@pytest.mark.parametrize("locale", ["en", "es"])
@pytest.mark.parametrize("kind", ["invite", "connection_approved", "connection_rejected"])
def test_every_kind_renders_in_both_languages(kind: str, locale: Locale) -> None:
    claimed = claimed_delivery(kind, locale, reason="Sin plazas" if kind == "connection_rejected" else None)
    plain, html = _bodies(_parse(RENDERER.render(claimed)))
    assert "Riverside Family Practice" in plain and "Riverside Family Practice" in html
    if kind == "connection_rejected":
        assert "Sin plazas" in plain and "Sin plazas" in html


def test_optional_parts_leave_no_trace_when_absent() -> None:
    claimed = claimed_delivery(note=None, patient_name=None, reply_to=None)
    message = _parse(RENDERER.render(claimed))
    plain, html = _bodies(message)
    assert plain.startswith("Hello,\r\n\r\nRiverside") or plain.startswith("Hello,\n\nRiverside")
    assert "A note from" not in plain and "blockquote" not in html and "None" not in plain
    assert message["Reply-To"] is None
    rejected = _bodies(_parse(RENDERER.render(claimed_delivery("connection_rejected", reason=None))))[0]
    assert "reason" not in rejected


@pytest.mark.parametrize(
    "practice_name",
    [
        "Clínica de Medicina Familiar y Comunitaria San José",  # one 84-character encoded word, over RFC 2047's 75
        "Clínica " * 24,  # a 564-character header line
        "🏥" * 200,  # a line over 998 characters: the SMTP server refused the email
        "=?utf-8?b?SGFja2Vk?= Clinic",  # an ASCII name a mail client would decode and show as "Hacked Clinic"
        "Riverside Family Practice of the Greater Metropolitan Area, Northern Division, Suite 400 and Annex",
    ],
)
def test_a_long_or_unusual_practice_name_in_reply_to_stays_within_the_line_and_word_limits(practice_name: str) -> None:
    raw = RENDERER.render(claimed_delivery(practice_name=practice_name))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    message = _parse(raw)
    assert message["Reply-To"].addresses[0].addr_spec == "desk@riverside.example"
    # Decoded as RFC 2047 says (the space between two encoded words is not part of the name); the email package's
    # address parser keeps it, for its own generator's output too.
    folded = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)["Reply-To"]
    name, _, address = folded.replace("\r\n", "").rpartition(" <")
    assert address == "desk@riverside.example>"
    shown = str(email.header.make_header(email.header.decode_header(name)))
    assert shown.strip('"') == " ".join(practice_name.split())


def test_an_internationalised_reply_to_never_stops_the_email() -> None:
    """Every email of a practice replying at desk@clínica.example ended error (formataddr takes ASCII only)."""
    idn = _parse(RENDERER.render(claimed_delivery(reply_to="desk@clínica.example")))
    assert idn["Reply-To"].addresses[0].addr_spec == "desk@xn--clnica-4va.example"
    utf8_mailbox = RENDERER.render(claimed_delivery(reply_to="recepción@clínica.example"))
    assert utf8_mailbox.isascii() and _parse(utf8_mailbox)["Reply-To"] is None  # sent without it, not refused


def test_unknown_practice_gets_a_neutral_name() -> None:
    message = _parse(RENDERER.render(claimed_delivery("connection_approved", practice_name=None, reply_to=None)))
    assert message["Subject"] == "You are now connected to your practice"


@pytest.mark.parametrize("locale", ["en", "es"])
def test_no_sentence_of_a_rejection_begins_with_the_neutral_name_in_lower_case(locale: str) -> None:
    """A black-box probe: a rejection from a practice the directory no longer knew began "your practice did not
    accept your request"."""
    claimed = claimed_delivery("connection_rejected", locale, practice_name=None, reply_to=None)  # type: ignore[arg-type]
    plain, html = _bodies(_parse(RENDERER.render(claimed)))
    for body in (plain, html):
        lines = [re.sub(r"<[^>]+>", "", line).lstrip() for line in body.splitlines()]
        assert not any(line.startswith(("your practice", "su consulta")) for line in lines)


def test_header_injection_through_a_practice_name_is_impossible() -> None:
    claimed = claimed_delivery(practice_name="Evil\r\nBcc: victim@example.com\r\nX-Evil: 1")
    message = _parse(RENDERER.render(claimed))
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert message["Subject"].startswith("Evil Bcc: victim@example.com X-Evil: 1 invites you")


def test_long_headers_fold_and_decode_back() -> None:
    ascii_value = "word " * 40
    non_ascii = "Consulta médica de la señora Peñalara y asociados, " * 4
    for value in (ascii_value, non_ascii):
        line = encode_header("Subject", value)
        assert all(len(part) <= 78 for part in line.split(b"\r\n"))
        parsed = _parse(line + b"\r\nbody\r\n")
        assert parsed["Subject"] == " ".join(value.split())


def test_a_line_starting_from_is_encoded_so_no_mbox_turns_it_into_quoted_from() -> None:
    claimed = claimed_delivery("connection_rejected", reason="From the desk:\nFrom Monday on, call us")
    raw = RENDERER.render(claimed)
    assert b"\nFrom " not in raw.split(b"\r\n\r\n", 1)[1] and b"\r\n=46rom the desk:" in raw
    plain, _ = _bodies(_parse(raw))
    assert "From the desk:\nFrom Monday on, call us" in plain.replace("\r\n", "\n")


def test_multiline_reason_keeps_its_lines_in_both_parts() -> None:
    claimed = claimed_delivery("connection_rejected", reason="First line\r\nsecond line\rthird")
    plain, html = _bodies(_parse(RENDERER.render(claimed)))
    assert "First line\nsecond line\nthird" in plain.replace("\r\n", "\n")
    assert "white-space:pre-line" in html and "second line" in html


def test_moments_in_each_language_say_their_time_zone() -> None:
    """A UTC day alone was a day early or late for a patient in the Americas (M1 of the email review)."""
    moment = datetime(2027, 1, 5, 3, 7, tzinfo=timezone(timedelta(hours=-5)))
    assert format_moment(moment, "en") == "January 5, 2027 at 08:07 UTC"
    assert format_moment(moment, "es") == "5 de enero de 2027 a las 08:07 UTC"


@pytest.mark.parametrize(
    ("sender", "rule"),
    [
        ("CollabKare", "expected 'Name <address@domain>'"),
        ("CollabKare <no-reply@localhost>", "It should have a period"),  # would end every Message-ID
        ("CollabKare <no-reply@mail_host.example>", "invalid characters"),
        ("CollabKare <no-reply@[192.0.2.1]>", "bracketed IP address"),
    ],
)
def test_sender_must_be_an_address_at_a_fully_qualified_domain(sender: str, rule: str) -> None:
    with pytest.raises(ValidationError, match="smtp_from") as raised:
        NotifierSettings.model_validate(
            {
                "database_url": "postgresql://n@localhost/n",
                "kafka_bootstrap_servers": "kafka:9092",
                "jwt_secret": "x" * 32,
                "smtp_from": sender,
            }
        )
    assert rule in str(raised.value)


def test_the_renderer_refuses_a_sender_that_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="SMTP_FROM"):
        Renderer("not an address")


@pytest.mark.parametrize(
    ("identity_check", "locale", "sentence"),
    [
        ("ssn", "en", "When you accept, you will be asked to confirm your Social Security number."),
        ("date_of_birth_and_phone", "en", "you will be asked to confirm your date of birth and phone number."),
        ("ssn", "es", "Al aceptar, se le pedirá que confirme su número de Seguro Social."),
        ("date_of_birth_and_phone", "es", "que confirme su fecha de nacimiento y su número de teléfono."),
        # Both entered by staff: either will do (a probe of the help articles: the email named the SSN only).
        (
            "ssn_or_date_of_birth_and_phone",
            "en",
            "confirm your Social Security number, or your date of birth and phone number.",
        ),
        (
            "ssn_or_date_of_birth_and_phone",
            "es",
            "confirme su número de Seguro Social, o su fecha de nacimiento y su número de teléfono.",
        ),
    ],
)
def test_an_individual_invite_says_what_accepting_will_ask_for(
    identity_check: str, locale: Locale, sentence: str
) -> None:
    """The patient is asked for a factor on accepting; the email said nothing of it (the email review's L1)."""
    plain, html = _bodies(_parse(RENDERER.render(claimed_delivery(locale=locale, identity_check=identity_check))))
    assert sentence in plain and sentence in html
    roster_plain, _ = _bodies(_parse(RENDERER.render(claimed_delivery(locale=locale))))
    assert "Social" not in roster_plain and "confirm" not in roster_plain and "confirme" not in roster_plain


@pytest.mark.parametrize(
    ("locale", "sentence"),
    [
        ("en", "invited you before, that invitation's link no longer works: use this one."),
        ("es", "ya le había invitado antes, el enlace de esa invitación ya no funciona: use este."),
    ],
)
def test_a_resent_invite_says_the_earlier_link_no_longer_works(locale: Locale, sentence: str) -> None:
    """A patient holding two invitation emails must know which link works (revoke and resend, or a re-sent row)."""
    resent = claimed_delivery(locale=locale, replaces=uuid.uuid4(), earlier_sent=True)
    plain, html = _bodies(_parse(RENDERER.render(resent)))
    assert sentence in plain and sentence in html
    assert "Riverside Family Practice " + ("invited" if locale == "en" else "ya") in plain
    # The first email a patient gets: a first invite, or one replacing an invite that never reached them.
    for first in (claimed_delivery(locale=locale), claimed_delivery(locale=locale, replaces=uuid.uuid4())):
        first_plain, first_html = _bodies(_parse(RENDERER.render(first)))
        assert "no longer works" not in first_plain + first_html and "ya no funciona" not in first_plain + first_html


def test_names_from_events_lose_their_controls_and_direction_overrides() -> None:
    """The APIs refuse these in free text; a practice or patient name arrives by event, unchecked by them."""
    claimed = claimed_delivery(
        practice_name="Clinic\u202e evil\u0085", patient_name="Ana\u2066 Lee", note="one\u2028two"
    )
    message = _parse(RENDERER.render(claimed))
    plain, html = _bodies(message)
    for forbidden in ("\u202e", "\u0085", "\u2066", "\u2028"):
        assert forbidden not in str(message["Subject"]) and forbidden not in plain and forbidden not in html
    assert "Clinic evil" in plain and "Hello Ana Lee," in plain and "one\ntwo" in plain.replace("\r\n", "\n")
