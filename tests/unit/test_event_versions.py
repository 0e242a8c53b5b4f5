"""Two versions of one event type side by side, the documented way to publish an incompatible change.

A v2 is a new class with the same event_type and `schema_version: Literal[2] = 2`, listed next to v1: a consumer
that knows both parses both (v1 messages stay on the topic long after producers switch), one that knows only v1
rejects v2 loudly, and the compatibility check treats v2 as a new contract while it keeps v1 to v1's history.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pydantic
import pytest
from pydantic import Field, TypeAdapter

from schemas import EVENT_TYPES, parse_event
from schemas.envelope import Contract, Envelope
from schemas.events import (
    EVENTS,
    ConnectionRequested,
    InviteRevoked,
    InviteRevokedPayload,
    current_versions,
    event_union,
)
from schemas.generate import TOPICS_FILE, Committed, incompatible_changes, render

AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


class InviteRevokedV2Payload(Contract):
    """Incompatible with v1 on purpose: replaced_by is gone, reason is new and required."""

    invite_id: uuid.UUID
    revoked_by: str = Field(max_length=200)
    revoked_at: datetime
    reason: Literal["staff", "resend", "patient_request"]


class InviteRevokedV2(Envelope):
    """Staff revoked a pending invite, saying why."""

    key_field = "invite_id"
    event_type: Literal["InviteRevoked"] = "InviteRevoked"
    schema_version: Literal[2] = 2
    payload: InviteRevokedV2Payload


WITH_V2 = [*EVENTS, InviteRevokedV2]
ENVELOPE = {"producer": "invitations", "practice_id": uuid.uuid4(), "correlation_id": "corr-1"}


def v1_event() -> InviteRevoked:
    return InviteRevoked(
        **ENVELOPE, payload=InviteRevokedPayload(invite_id=uuid.uuid4(), revoked_by="staff-1", revoked_at=AT)
    )


def v2_event() -> InviteRevokedV2:
    payload = InviteRevokedV2Payload(invite_id=uuid.uuid4(), revoked_by="staff-1", revoked_at=AT, reason="resend")
    return InviteRevokedV2(**ENVELOPE, payload=payload)


# --- parsing -------------------------------------------------------------------------------------------------


def test_a_consumer_built_with_both_versions_parses_both() -> None:
    parser = TypeAdapter(event_union(WITH_V2))
    v1, v2 = v1_event(), v2_event()

    parsed_v1 = parser.validate_json(v1.model_dump_json())
    parsed_v2 = parser.validate_json(v2.model_dump_json().encode())

    assert type(parsed_v1) is InviteRevoked
    assert parsed_v1 == v1
    assert type(parsed_v2) is InviteRevokedV2
    assert parsed_v2 == v2
    # The other event types are unaffected.
    assert type(parser.validate_json(connection_requested_json())) is ConnectionRequested


def connection_requested_json() -> str:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "ConnectionRequested",
            "schema_version": 1,
            "occurred_at": "2025-01-01T00:00:00Z",
            "producer": "connections",
            "correlation_id": "c-1",
            "payload": {
                "request_id": str(uuid.uuid4()),
                "patient_id": str(uuid.uuid4()),
                "patient_email": "pat@example.com",
                "requested_at": "2025-01-01T00:00:00Z",
            },
        }
    )


def test_a_consumer_that_knows_only_v1_rejects_a_v2_message() -> None:
    # Today's parse_event knows v1 only: a v2 message goes to the dead-letter topic, it is not misread as v1.
    with pytest.raises(pydantic.ValidationError, match="schema_version"):
        parse_event(v2_event().model_dump_json())


def test_an_unknown_version_of_a_versioned_event_is_rejected_with_the_known_ones() -> None:
    parser = TypeAdapter(event_union(WITH_V2))
    wire = json.loads(v2_event().model_dump_json())

    with pytest.raises(pydantic.ValidationError, match=r"Input tag '3' found using 'schema_version'.*1, 2"):
        parser.validate_json(json.dumps({**wire, "schema_version": 3}))


def test_each_version_is_validated_by_its_own_class() -> None:
    parser = TypeAdapter(event_union(WITH_V2))
    v1_wire = json.loads(v1_event().model_dump_json())

    # A v1 payload announced as v2 fails on v2's fields, not silently read as v1.
    with pytest.raises(pydantic.ValidationError, match="reason"):
        parser.validate_json(json.dumps({**v1_wire, "schema_version": 2}))


def test_two_classes_for_one_event_version_are_refused() -> None:
    class AnotherInviteRevokedV2(InviteRevokedV2):
        pass

    with pytest.raises(TypeError, match="InviteRevoked v2 is both InviteRevokedV2 and AnotherInviteRevokedV2"):
        TypeAdapter(event_union([*WITH_V2, AnotherInviteRevokedV2]))


def test_event_types_maps_each_event_type_to_its_newest_version() -> None:
    assert current_versions(WITH_V2) == {**EVENT_TYPES, "InviteRevoked": InviteRevokedV2}
    assert EVENT_TYPES["InviteRevoked"] is InviteRevoked


# --- the compatibility check -----------------------------------------------------------------------------


def history_of_today(*names: str) -> dict[str, list[Committed]]:
    """The given files as committed today, as committed_versions would return them."""
    files = render()
    return {name: [Committed("c0ffee" * 7, files[name])] for name in names}


def test_v2_gets_its_own_schema_file_and_topic_map_entry() -> None:
    files = render(WITH_V2)

    v2 = json.loads(files["InviteRevoked.v2.json"])
    assert v2["properties"]["schema_version"]["const"] == 2
    assert files["InviteRevoked.v1.json"] == render()["InviteRevoked.v1.json"]
    entries = json.loads(files[TOPICS_FILE])["events"]
    assert [entry for entry in entries if entry["event_type"] == "InviteRevoked"] == [
        {
            "event_type": "InviteRevoked",
            "schema_version": version,
            "schema": f"InviteRevoked.v{version}.json",
            "topic": "invitations.v1",
            "key": "payload.invite_id",
        }
        for version in (1, 2)
    ]


def test_v2_is_not_compared_with_v1(tmp_path: Path) -> None:
    # v2 drops a v1 field and adds a required one: incompatible with v1, and fine, as it is a new contract.
    history = history_of_today("InviteRevoked.v1.json", TOPICS_FILE)

    assert incompatible_changes(render(WITH_V2), tmp_path, history) == []


def test_v1_is_still_checked_against_its_own_history(tmp_path: Path) -> None:
    class BrokenInviteRevokedPayload(Contract):
        invite_id: uuid.UUID
        revoked_by: str = Field(max_length=200)
        revoked_at: datetime

    class BrokenInviteRevoked(InviteRevoked):
        payload: BrokenInviteRevokedPayload

    events = [BrokenInviteRevoked if event is InviteRevoked else event for event in WITH_V2]
    history = history_of_today("InviteRevoked.v1.json", TOPICS_FILE)

    problems = incompatible_changes(render(events), tmp_path, history)

    assert [problem.split(" [")[0] for problem in problems] == ["InviteRevoked.v1.json: payload.replaced_by: removed"]


def test_v2_is_checked_against_its_own_history_once_committed(tmp_path: Path) -> None:
    committed_v2 = render(WITH_V2)["InviteRevoked.v2.json"]
    history = {
        **history_of_today("InviteRevoked.v1.json"),
        "InviteRevoked.v2.json": [Committed("beef" * 10, committed_v2)],
    }

    class NarrowerPayload(InviteRevokedV2Payload):
        reason: Literal["staff", "resend"]

    class NarrowerV2(InviteRevokedV2):
        payload: NarrowerPayload

    problems = incompatible_changes(render([*EVENTS, NarrowerV2]), tmp_path, history)

    assert [problem.split(" (")[0] for problem in problems] == [
        'InviteRevoked.v2.json: payload.reason: values removed: "patient_request"'
    ]


def test_replacing_v1_by_v2_is_refused(tmp_path: Path) -> None:
    # Upgraded consumers would dead-letter every v1 event still on the topic.
    events = [InviteRevokedV2 if event is InviteRevoked else event for event in EVENTS]
    history = history_of_today("InviteRevoked.v1.json")

    problems = incompatible_changes(render(events), tmp_path, history)

    assert len(problems) == 1
    assert problems[0].startswith("InviteRevoked.v1.json: no model renders it any more")
