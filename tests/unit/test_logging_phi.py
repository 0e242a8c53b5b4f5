"""Planted PHI never reaches a log line, whichever logger or key carries it."""

from __future__ import annotations

import io
import json
import logging

import pytest

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
