"""A dead letter says what its bytes are: the content type the original's producer declared, however spelled; and
its log line names the event id the record carried, even when the record was not a valid event."""

from __future__ import annotations

import uuid

import pytest

from services.runtime.record_headers import declared_content_type
from services.runtime.records import event_id_in


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json"},  # FastStream, and our relays
        {"Content-Type": "application/json"},
        {"contentType": "application/json"},  # Spring Kafka
        {"event_type": "InviteExpired", "contentType": "application/json"},
    ],
)
def test_the_declared_content_type_is_found_under_any_spelling(headers: dict[str, str]) -> None:
    assert declared_content_type(headers) == "application/json"


@pytest.mark.parametrize("headers", [{}, {"content-type": ""}, {"event_type": "InviteExpired"}, {"type": "x/y"}])
def test_none_declared_is_none(headers: dict[str, str]) -> None:
    assert declared_content_type(headers) is None


def test_a_dead_letters_event_id_is_read_from_its_json_when_it_is_not_a_valid_event() -> None:
    """Found by a review: a poison event's log line said "event_id": null though its envelope named one."""
    event_id = uuid.uuid4()
    assert event_id_in(
        b'{"event_id": "%s", "event_type": "InviteAccepted", "payload": 7}' % str(event_id).encode()
    ) == (str(event_id))
    for value in (None, b"", b"not json", b"[1]", b'{"event_id": 5}', b'{"event_id": "Jane Doe"}', b"\xff"):
        assert event_id_in(value) is None, value
