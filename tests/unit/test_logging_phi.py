"""Planted PHI never reaches a log line, whichever logger or key carries it."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from services.runtime.logging import OnceEvery, configure_logging, get_logger, mask_email, scrub_text

EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
PHONE = "+1 (555) 010-7788"
DOB = "1984-03-02"
NOTE = "Welcome back Jane, your knee results are in"
NAME = "Jane Q. Doe"


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("test-service", "DEBUG", stream=stream)
    return stream


def test_planted_phi_is_masked_or_dropped(captured: io.StringIO) -> None:
    log = get_logger("test")
    log.info("invite.created", email=EMAIL, note=NOTE, display_name=NAME, ssn=SSN, date_of_birth=DOB, phone=PHONE)
    log.info("roster.row", row={"email": EMAIL, "note": NOTE, "line": 3}, reason=NOTE)
    log.warning("smtp.failed", error=f"550 mailbox {EMAIL} unavailable; call {PHONE}; ssn {SSN}")
    logging.getLogger("aiokafka").error("third party says %s", EMAIL)
    try:
        raise ValueError(f"could not deliver to {EMAIL}")
    except ValueError:
        log.exception("delivery.crashed")
    log.info("forged\r\nfake line", error="line one\nline two")

    output = captured.getvalue()
    for secret in (EMAIL, SSN, PHONE, DOB, NOTE, NAME, "knee"):
        assert secret not in output, f"{secret!r} leaked into the logs"
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 6, "a CR/LF from a caller must not split a log line"
    assert lines[0]["email"] == "j***@example.com"
    assert lines[1]["row"] == {"email": "j***@example.com", "line": 3}
    assert all(line["service"] == "test-service" for line in lines)
    assert all("correlation_id" in line and "event_id" in line for line in lines)


def test_mask_email_keeps_the_first_letter_and_the_domain() -> None:
    assert mask_email("jane@example.com") == "j***@example.com"
    assert mask_email("write to a.b+c@mail.example.org now") == "write to a***@mail.example.org now"


def test_international_and_quoted_addresses_are_masked_too() -> None:
    """The API takes international addresses (idn-email); an SMTP reply quoting one reached the logs and the
    DeliveryOutcome's reason in clear, masked from its first ASCII run only."""
    reply = "550 5.1.1 <renée.rejetée@example.com>: no such user"
    assert mask_email(reply) == "550 5.1.1 <r***@example.com>: no such user"
    assert mask_email("user@bücher.de") == "u***@bücher.de"
    assert mask_email("为了@例子.广告 and Ωμέγα@παράδειγμα.δοκιμή") == "为***@例子.广告 and Ω***@παράδειγμα.δοκιμή"
    assert mask_email('from "jane doe"@example.com') == "from ***@example.com"
    # Scripts whose vowel signs are not letters (Devanagari, Thai), and the punctuation an address may hold.
    assert mask_email("<प्रिया@example.com>") == "<प***@example.com>"
    assert mask_email("priya@उदाहरण.भारत") == "p***@उदाहरण.भारत"
    assert mask_email("<สมชาย@example.com>") == "<ส***@example.com>"
    assert mask_email("kevin.o'hara@example.com jane&doe@example.com x!y#z@example.com") == (
        "k***@example.com j***@example.com x***@example.com"
    )
    assert mask_email("email='ann@example.com'") == "e***@example.com'", "whatever precedes it goes, never the name"
    assert mask_email("postgresql://svc@127.0.0.1:5432/db") == "postgresql://svc@127.0.0.1:5432/db", "no domain name"


def test_dates_of_birth_and_spaced_ssns_are_redacted_timestamps_are_not() -> None:
    assert scrub_text("dob 1975-04-05 or 04/05/1975, ssn 123 45 6789") == "dob [redacted] or [redacted], ssn [redacted]"
    assert scrub_text("expires 2026-12-13T16:56:00+00:00") == "expires 2026-12-13T16:56:00+00:00"
    assert scrub_text("ssn 123456789 or 123-45-6789.") == "ssn [redacted] or [redacted]."
    kept = "offset 12345678901, 12 345 6789, id 0f7e1d2c-1234-4567-89ab-123456789012"
    assert scrub_text(kept) == kept, "not nine digits in an SSN's shape"


@pytest.mark.parametrize("phone", ["+44 20 7946 0958", "+33 1 42 68 53 00", "+49-30-901820", "+61 (2) 9374 4000"])
def test_international_phone_numbers_are_redacted(captured: io.StringIO, phone: str) -> None:
    get_logger("test").warning("smtp.failed", error=f"call {phone} to reach the patient")
    (line,) = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert line["error"] == "call [redacted] to reach the patient"


def test_a_validation_error_never_quotes_the_value_it_refused(captured: io.StringIO) -> None:
    """pydantic puts the refused value in its error text: a name or a note, in a repr, a traceback or errors()."""

    class Patient(BaseModel):
        display_name: int
        note: Annotated[str, Field(max_length=3)]

    with pytest.raises(ValidationError) as caught:
        Patient(display_name=NAME, note=NOTE)  # type: ignore[arg-type]
    error = caught.value
    assert NAME in repr(error) and NOTE in str(error), "the premise: pydantic quotes both"
    log = get_logger("test")
    log.warning("consumer.apply_failed", error=repr(error)[:300])
    log.warning("consumer.apply_failed", error=repr(error)[:120])  # cut inside the first quoted value
    log.warning("batch.rejected", errors=error.errors())
    try:
        raise RuntimeError("while applying") from error
    except RuntimeError:
        log.exception("consumer.crashed")

    output = captured.getvalue()
    for secret in (NAME, "Jane", NOTE, "knee"):
        assert secret not in output, f"{secret!r} leaked into the logs"
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 4
    assert "input_value=[redacted], input_type=str" in lines[0]["error"]
    assert "display_name" in lines[0]["error"], "which field failed stays readable"
    assert lines[2]["errors"][0]["loc"] == ["display_name"]


def test_an_unknown_event_type_is_not_quoted_from_the_validation_error() -> None:
    """A security review published event_type "Jane Q Public diagnosis HIV": pydantic's union error quoted it, and
    the dead-letter log line and reason header with it."""
    from schemas import parse_event

    with pytest.raises(ValidationError) as caught:
        parse_event(b'{"event_type": "Jane Q Public diagnosis HIV", "payload": {}}')
    text = str(caught.value)
    assert "Jane Q Public" in text, "the premise: pydantic quotes the tag"
    scrubbed = scrub_text(text)
    assert "Jane" not in scrubbed and "Input tag [redacted] found using 'event_type'" in scrubbed
    cut = f"not a valid event: Input tag '{'Jane Doe ' * 40}"[:300]  # a reason cut inside the tag, as logs cut it
    assert "Jane" not in scrub_text(cut)
    # The consumer's own reason names a value only when it is shaped like a type's name.
    from aiokafka.structs import ConsumerRecord

    from services.runtime.records import PoisonMessage, decode

    for value, said in (
        (b"Jane Q Public diagnosis HIV", "(not shaped like a name or a number)"),
        (b"Deleted", "'Deleted'"),
    ):
        record = ConsumerRecord("t", 0, 0, 0, 0, b"k", b'{"event_type": "%s", "payload": {}}' % value, None, 0, 0, [])
        with pytest.raises(PoisonMessage, match=re.escape(f"unknown event_type {said}: expected one of")):
            decode(record)


def test_a_third_party_error_repeated_many_times_a_second_is_one_line(captured: io.StringIO) -> None:
    """With the broker away, aiokafka's coordinator logged "Heartbeat session expired" ~10 times a second at error
    level: 203 lines in 110 s from one pod."""
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    for _ in range(50):
        coordinator.error("Heartbeat session expired - marking coordinator %s dead", "node-1")
    coordinator.error("Another problem")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "Heartbeat session expired - marking coordinator node-1 dead",
        "Another problem",
    ]


def test_the_line_after_a_quiet_spell_counts_what_was_dropped() -> None:
    now = [0.0]
    repeats = OnceEvery(10, loggers=("aiokafka",), clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, message, None, None)

    assert repeats.filter(record("broker away"))
    assert [repeats.filter(record("broker away")) for _ in range(3)] == [False] * 3
    now[0] = 10.0
    again = record("broker away")
    assert repeats.filter(again) and again.repeated == 3
    assert repeats.filter(record("something else")), "another message has its own count"
    ours = logging.LogRecord("services.notifier", logging.ERROR, __file__, 1, "broker away", None, None)
    assert all(repeats.filter(ours) for _ in range(3)), "our own lines are never dropped"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (
            "DataError(\"invalid input for query argument $2: ['Jane Doe', 'Ann (Nancy) Lee', 'Bob... (expected str, "
            'got int)")',
            'DataError("invalid input for query argument $2: [redacted]',  # a value's " (" : no reason kept
        ),
        (
            "invalid input for query argument $1 in element #3 of executemany() sequence: 'Jane Doe' (value too long)",
            "invalid input for query argument $1 in element #3 of executemany() sequence: [redacted] (value too long)",
        ),
        # Cut short (repr(error)[:300]) before the reason: everything after the argument goes.
        (
            "DataError('invalid input for query argument $5: [datetime.datetime(9999, 12",
            "DataError('invalid input for query argument $5: [redacted]",
        ),
    ],
    ids=["a batch of names", "executemany", "cut short"],
)
def test_an_argument_asyncpg_could_not_encode_is_not_quoted(captured: io.StringIO, error: str, shown: str) -> None:
    """An integrator's probe: a consumer's apply_failed line quoted asyncpg's DataError, which quotes the batch's
    values for the argument it could not encode (a list of names or addresses)."""
    get_logger("test").warning("consumer.apply_failed", error=error)
    [line] = [json.loads(text) for text in captured.getvalue().splitlines()]
    assert line["error"] == shown


def _asyncpg(value: str) -> str:
    """asyncpg's text for a name given as a uuid (asyncpg 0.32: prepared_stmt.pyx and pgproto's uuid codec)."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    reason = f"invalid UUID {value!r}: length must be between 32..36 characters, got {len(value)}"
    return f"invalid input for query argument $1: {shown} ({reason})"


@pytest.mark.parametrize(
    "value", ["Jane Doe", 'Robert "Bob" O\'Brien', "Maria Lopez (HIV clinic", "Results of HIV test are ready"]
)
def test_a_reason_that_quotes_the_value_goes_with_it_whole_or_cut(value: str) -> None:
    """Reviews: asyncpg's UUID codec quotes the whole value in its reason; a name holding both quote marks, or " (",
    or a message cut short right after a quote, kept parts of it."""
    message = f"DataError: {_asyncpg(value)}"
    assert scrub_text(message) == "DataError: invalid input for query argument $1: [redacted]"
    quoted = repr(value)[1:-1]  # as the reason quotes it
    cut = message[: message.rindex(quoted) + len(quoted) + 1]
    assert scrub_text(cut) == "DataError: invalid input for query argument $1: [redacted]"


def test_a_long_text_costs_no_time() -> None:
    # Linear: a quadratic scrubber takes hours over a million of them, and the suite's timeout ends this test.
    assert scrub_text("invalid input for query argument $1: x" + "'" * 1_000_000).endswith(": [redacted]")
