"""Planted PHI never reaches a log line, whichever logger or key carries it."""

from __future__ import annotations

import io
import json
import logging
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from services.runtime.logging import configure_logging, get_logger, mask_email

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
