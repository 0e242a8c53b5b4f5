"""The committed JSON Schema files match the event models, and every event survives the wire unchanged."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import parse_event
from schemas.envelope import ALWAYS_ON_THE_WIRE, Envelope
from schemas.events import (
    EVENT_TYPES,
    EVENTS,
    ConnectionApproved,
    ConnectionApprovedPayload,
    ConnectionRejected,
    ConnectionRejectedPayload,
    ConnectionRequested,
    ConnectionRequestedPayload,
    DeliveryOutcome,
    DeliveryOutcomePayload,
    InviteAccepted,
    InviteAcceptedPayload,
    InviteExpired,
    InviteExpiredPayload,
    InviteRequested,
    InviteRequestedPayload,
    InviteRevoked,
    InviteRevokedPayload,
    PatientRegistered,
    PatientRegisteredPayload,
    PracticeRegistered,
    PracticeRegisteredPayload,
)
from schemas.generate import JSON_DIR, TOPICS_FILE, main, render, schema_file_name
from schemas.topics import all_topic_names, topic_for

AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
ENVELOPE: dict[str, Any] = {
    "producer": "test",
    "practice_id": uuid.uuid4(),
    "correlation_id": "corr-1",
    "causation_id": "cause-1",
}
new_id = uuid.uuid4

# One fully populated example per event type, optional fields set, so every field crosses the wire.
EXAMPLES = [
    ConnectionRequested(
        **ENVELOPE,
        payload=ConnectionRequestedPayload(
            request_id=new_id(),
            patient_id=new_id(),
            patient_email="pat@example.com",
            display_name="Pat",
            message="Please link me",
            requested_at=AT,
        ),
    ),
    ConnectionApproved(
        **ENVELOPE,
        payload=ConnectionApprovedPayload(
            connection_id=new_id(),
            patient_id=new_id(),
            patient_email="pat@example.com",
            via="request",
            request_id=new_id(),
            invite_id=None,
            approved_by="staff-1",
            approved_at=AT,
        ),
    ),
    ConnectionRejected(
        **ENVELOPE,
        payload=ConnectionRejectedPayload(
            request_id=new_id(),
            patient_id=new_id(),
            patient_email="pat@example.com",
            rejected_by="staff-1",
            rejected_at=AT,
            reason="Not our patient",
        ),
    ),
    InviteRequested(
        **ENVELOPE,
        payload=InviteRequestedPayload(
            invite_id=new_id(),
            email="new@example.com",
            note="Welcome",
            accept_url="https://x/invites/accept?token=t",
            expires_at=AT,
            requested_by="staff-1",
            batch_id=new_id(),
            line_number=3,
        ),
    ),
    InviteAccepted(
        **ENVELOPE,
        payload=InviteAcceptedPayload(
            invite_id=new_id(),
            patient_id=new_id(),
            patient_email="new@example.com",
            accepted_at=AT,
            invited_by="staff-1",
        ),
    ),
    InviteRevoked(
        **ENVELOPE,
        payload=InviteRevokedPayload(invite_id=new_id(), revoked_by="staff-1", revoked_at=AT, replaced_by=new_id()),
    ),
    InviteExpired(**ENVELOPE, payload=InviteExpiredPayload(invite_id=new_id(), expired_at=AT)),
    DeliveryOutcome(
        **ENVELOPE,
        payload=DeliveryOutcomePayload(
            delivery_id=new_id(),
            source_event_id=new_id(),
            source_event_type="InviteRequested",
            kind="invite",
            outcome="error",
            reason="mailbox full",
            invite_id=new_id(),
            batch_id=new_id(),
            line_number=3,
            message_id="<m@x>",
            attempts=2,
            decided_at=AT,
        ),
    ),
    PatientRegistered(
        **ENVELOPE,
        payload=PatientRegisteredPayload(
            patient_id=new_id(),
            email="pat@example.com",
            display_name="Pat",
            locale="es",
            date_of_birth=date(1980, 1, 2),
            registered_at=AT,
        ),
    ),
    PracticeRegistered(
        **ENVELOPE,
        payload=PracticeRegisteredPayload(name="Clinic", reply_to="desk@clinic.example", registered_at=AT),
    ),
]


def test_committed_files_match_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    # The same path as `python -m schemas.generate --check`, so CI and this test cannot disagree.
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_a_stale_file_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], directory=tmp_path) == 0
    stale = tmp_path / "InviteExpired.v1.json"
    edited = stale.read_text().replace("without being accepted", "unaccepted")
    stale.write_text(edited)
    capsys.readouterr()

    assert main(["--check"], directory=tmp_path) == 1

    err = capsys.readouterr().err
    assert "InviteExpired.v1.json is out of date" in err
    assert "run `make schemas`" in err
    assert stale.read_text() == edited


def test_generate_refuses_an_incompatible_change_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([], directory=tmp_path) == 0
    # A committed file with a property the model no longer has: regenerating would remove it.
    approved = tmp_path / "ConnectionApproved.v1.json"
    schema = json.loads(approved.read_text())
    schema["$defs"]["ConnectionApprovedPayload"]["properties"]["clinic_code"] = {"type": "string"}
    approved.write_text(json.dumps(schema))
    # A second, compatible difference, to show that it is not written either.
    stale = tmp_path / "InviteExpired.v1.json"
    stale.write_text(stale.read_text().replace("without being accepted", "unaccepted"))
    before = {path.name: path.read_text() for path in tmp_path.iterdir()}
    capsys.readouterr()

    assert main([], directory=tmp_path) == 1

    assert "ConnectionApproved.v1.json: payload.clinic_code: removed" in capsys.readouterr().err.splitlines()
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == before


def event_type(event: type[Envelope]) -> str:
    name: str = event.model_fields["event_type"].default
    return name


def test_files_are_named_by_event_type_and_version_and_formatted_for_stable_diffs() -> None:
    files = render()
    assert set(files) == {f"{name}.v1.json" for name in EVENT_TYPES} | {TOPICS_FILE}
    assert set(files) == {schema_file_name(event_type(event), event) for event in EVENTS} | {TOPICS_FILE}
    for text in files.values():
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_topics_file_lists_every_topic_and_dead_letter_topic() -> None:
    document = json.loads((JSON_DIR / TOPICS_FILE).read_text())
    names = [topic["name"] for topic in document["topics"] + document["dead_letter_topics"]]
    assert sorted(names) == sorted(all_topic_names())
    carried = [event for topic in document["topics"] for event in topic["events"]]
    assert sorted(carried) == sorted(EVENT_TYPES)


def test_topics_file_lists_every_event_version_with_its_topic_and_message_key() -> None:
    document = json.loads((JSON_DIR / TOPICS_FILE).read_text())

    assert document["events"] == [
        {
            "event_type": event_type(event),
            "schema_version": 1,
            "schema": f"{event_type(event)}.v1.json",
            "topic": topic_for(event_type(event)),
            "key": event.key_path(),
        }
        for event in EVENTS
    ]
    assert {entry["event_type"]: entry["key"] for entry in document["events"]} == {
        "ConnectionRequested": "payload.patient_id",
        "ConnectionApproved": "payload.patient_id",
        "ConnectionRejected": "payload.patient_id",
        "InviteRequested": "payload.invite_id",
        "InviteAccepted": "payload.invite_id",
        "InviteRevoked": "payload.invite_id",
        "InviteExpired": "payload.invite_id",
        "DeliveryOutcome": "payload.source_event_id",
        "PatientRegistered": "payload.patient_id",
        "PracticeRegistered": "practice_id",
    }


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: type(event).__name__)
def test_the_recorded_key_path_is_where_the_message_key_comes_from(event: Any) -> None:
    # key_path() is what the compatibility check guards; aggregate_key() is what the relay sends.
    value: Any = json.loads(event.model_dump_json())
    for part in type(event).key_path().split("."):
        value = value[part]

    assert event.aggregate_key() == str(value)


def test_there_is_one_example_per_event_type() -> None:
    assert sorted(type(event).__name__ for event in EXAMPLES) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: type(event).__name__)
def test_every_event_round_trips_through_parse_event(event: Any) -> None:
    parsed = parse_event(event.model_dump_json())

    assert type(parsed) is type(event)
    assert parsed == event


@pytest.mark.parametrize("name", ALWAYS_ON_THE_WIRE)
@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: type(event).__name__)
def test_a_message_without_an_envelope_field_the_schema_requires_is_refused(event: Any, name: str) -> None:
    # The defaults are for producers: read with a fresh event_id every time, a redelivery would pass the inbox.
    wire = json.loads(event.model_dump_json())
    del wire[name]

    with pytest.raises(ValidationError) as refused:
        parse_event(json.dumps(wire))

    assert name in str(refused.value)  # event_type is the discriminator: its error has no field location


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: type(event).__name__)
def test_committed_schema_names_exactly_the_fields_on_the_wire(event: Any) -> None:
    wire = json.loads(event.model_dump_json())
    schema = json.loads((JSON_DIR / schema_file_name(wire["event_type"], type(event))).read_text())
    payload_schema = schema["$defs"][schema["properties"]["payload"]["$ref"].rsplit("/", 1)[1]]

    assert set(wire) == set(schema["properties"])
    assert set(wire["payload"]) == set(payload_schema["properties"])
    assert set(schema["required"]) <= set(wire)
    assert set(payload_schema["required"]) <= set(wire["payload"])
