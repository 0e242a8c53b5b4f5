"""A dead letter says what its bytes are: the content type the original's producer declared, however spelled."""

from __future__ import annotations

import pytest

from services.runtime.consumer import declared_content_type


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
