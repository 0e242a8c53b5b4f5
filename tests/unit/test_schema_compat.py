"""The compatibility rules, on synthetic schemas and on the committed event schemas and models."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any, Literal

import pydantic
import pytest
from pydantic import create_model

from schemas import parse_event
from schemas.compat import incompatibilities, routing_incompatibilities
from schemas.envelope import Contract, Envelope
from schemas.events import ConnectionApproved, ConnectionApprovedPayload
from schemas.generate import JSON_DIR, event_schema

Schema = dict[str, Any]
UUID: Schema = {"type": "string", "format": "uuid"}
NULL: Schema = {"type": "null"}


def object_of(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required)}


def with_payload(payload: Schema) -> Schema:
    return {
        **object_of({"payload": {"$ref": "#/$defs/Payload"}}, ("payload",)),
        "$defs": {"Payload": payload},
    }


BASE = object_of({"id": UUID, "note": {"anyOf": [{"type": "string"}, NULL]}}, ("id",))

# (name, old, new, the start of each expected message); an empty list means compatible.
CASES: list[tuple[str, Schema, Schema, list[str]]] = [
    ("identical", BASE, BASE, []),
    ("description changed", BASE, {**BASE, "description": "new words"}, []),
    (
        "optional property added",
        BASE,
        object_of({**BASE["properties"], "extra": {"type": "integer"}}, ("id",)),
        [],
    ),
    ("property removed", BASE, object_of({"id": UUID}, ("id",)), ["note: removed"]),
    (
        "required property added",
        BASE,
        object_of({**BASE["properties"], "extra": {"type": "integer"}}, ("id", "extra")),
        ["extra: new required property"],
    ),
    ("made required", BASE, object_of(BASE["properties"], ("id", "note")), ["note: now required"]),
    ("made optional", BASE, object_of(BASE["properties"]), ["id: no longer required"]),
    (
        "retyped",
        BASE,
        object_of({**BASE["properties"], "id": {"type": "integer"}}, ("id",)),
        ["id: type changed"],
    ),
    (
        "format changed",
        BASE,
        object_of({**BASE["properties"], "id": {"type": "string"}}, ("id",)),
        ["id: type changed"],
    ),
    (
        # A correction, not a change: one validator (schemas.email_address) produced both; compat._CORRECTED_FORMAT.
        "email documented as idn-email",
        object_of({"email": {"type": "string", "format": "email"}}),
        object_of({"email": {"type": "string", "format": "idn-email"}}),
        [],
    ),
    (
        "idn-email narrowed back to email",
        object_of({"email": {"type": "string", "format": "idn-email"}}),
        object_of({"email": {"type": "string", "format": "email"}}),
        ["email: type changed"],
    ),
    (
        "email documented as idn-email, in a nullable field",
        object_of({"reply_to": {"anyOf": [{"type": "string", "format": "email"}, NULL]}}),
        object_of({"reply_to": {"anyOf": [{"type": "string", "format": "idn-email"}, NULL]}}),
        [],
    ),
    (
        "email made another format",
        object_of({"email": {"type": "string", "format": "email"}}),
        object_of({"email": {"type": "string", "format": "hostname"}}),
        ["email: type changed"],
    ),
    (
        "no longer nullable",
        BASE,
        object_of({**BASE["properties"], "note": {"type": "string"}}, ("id",)),
        ["note: no longer nullable"],
    ),
    (
        "became nullable",
        BASE,
        object_of({**BASE["properties"], "id": {"anyOf": [UUID, NULL]}}, ("id",)),
        ["id: now nullable"],
    ),
    (
        "limit tightened",
        BASE,
        object_of({**BASE["properties"], "note": {"anyOf": [{"type": "string", "maxLength": 5}, NULL]}}, ("id",)),
        ["note: type changed"],
    ),
    (
        "enum value removed",
        object_of({"kind": {"type": "string", "enum": ["a", "b"]}}),
        object_of({"kind": {"type": "string", "enum": ["a"]}}),
        ['kind: values removed: "b"'],
    ),
    (
        "enum value added",
        object_of({"kind": {"type": "string", "enum": ["a", "b"]}}),
        object_of({"kind": {"type": "string", "enum": ["a", "b", "c"]}}),
        ['kind: values added: "c"'],
    ),
    (
        "event_type const changed",
        object_of({"event_type": {"type": "string", "const": "A"}}),
        object_of({"event_type": {"type": "string", "const": "B"}}),
        ['event_type: values removed: "A"'],
    ),
    (
        "nested property removed",
        with_payload(BASE),
        with_payload(object_of({"id": UUID}, ("id",))),
        ["payload.note: removed"],
    ),
    (
        "nested required property added",
        with_payload(BASE),
        with_payload(object_of({**BASE["properties"], "extra": UUID}, ("id", "extra"))),
        ["payload.extra: new required property"],
    ),
    (
        "definition renamed, same shape",
        with_payload(BASE),
        {**object_of({"payload": {"$ref": "#/$defs/Renamed"}}, ("payload",)), "$defs": {"Renamed": BASE}},
        [],
    ),
    (
        "union branches reordered",
        BASE,
        object_of({**BASE["properties"], "note": {"anyOf": [NULL, {"type": "string"}]}}, ("id",)),
        [],
    ),
    (
        "type list for anyOf",
        BASE,
        object_of({**BASE["properties"], "note": {"type": ["string", "null"]}}, ("id",)),
        [],
    ),
    (
        "array items retyped",
        object_of({"tags": {"type": "array", "items": {"type": "string"}}}),
        object_of({"tags": {"type": "array", "items": {"type": "integer"}}}),
        ["tags[]: type changed"],
    ),
    (
        "shared definition changed, reported where used",
        {
            **object_of({"home": {"$ref": "#/$defs/Address"}, "work": {"$ref": "#/$defs/Address"}}),
            "$defs": {"Address": object_of({"street": {"type": "string"}})},
        },
        {
            **object_of({"home": {"$ref": "#/$defs/Address"}, "work": {"$ref": "#/$defs/Address"}}),
            "$defs": {"Address": object_of({})},
        },
        ["home.street: removed", "work.street: removed"],
    ),
    (
        "additionalProperties became false (extra=forbid)",
        BASE,
        {**BASE, "additionalProperties": False},
        ["<root>: now rejects unknown properties"],
    ),
    (
        "nested additionalProperties became false",
        with_payload(BASE),
        with_payload({**BASE, "additionalProperties": False}),
        ["payload: now rejects unknown properties"],
    ),
    (
        "additionalProperties no longer false",
        {**BASE, "additionalProperties": False},
        BASE,
        ["<root>: no longer rejects unknown properties"],
    ),
    ("additionalProperties true spelled out", BASE, {**BASE, "additionalProperties": True}, []),
    (
        "optional property added where unknown properties are rejected",
        {**BASE, "additionalProperties": False},
        {**object_of({**BASE["properties"], "extra": {"type": "integer"}}, ("id",)), "additionalProperties": False},
        ["extra: new property, and the old schema rejects unknown properties"],
    ),
    (
        "map values retyped",
        object_of({"counts": {"type": "object", "additionalProperties": {"type": "integer"}}}),
        object_of({"counts": {"type": "object", "additionalProperties": {"type": "string"}}}),
        ["counts.*: type changed"],
    ),
    (
        "two problems at once",
        with_payload(BASE),
        with_payload(object_of({"id": {"type": "integer"}}, ("id",))),
        ["payload.id: type changed", "payload.note: removed"],
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_synthetic_schemas(old: Schema, new: Schema, expected: list[str]) -> None:
    problems = incompatibilities(old, new)

    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problems


def test_a_recursive_schema_terminates() -> None:
    node = object_of({"child": {"anyOf": [{"$ref": "#/$defs/Node"}, NULL]}, "name": {"type": "string"}})
    old: Schema = {"$ref": "#/$defs/Node", "$defs": {"Node": node}}
    new = copy.deepcopy(old)
    del new["$defs"]["Node"]["properties"]["name"]

    assert incompatibilities(old, new) == ["name: removed"]


# --- the committed ConnectionApproved contract -----------------------------------------------------------


def committed(name: str = "ConnectionApproved.v1.json") -> Schema:
    schema: Schema = json.loads((JSON_DIR / name).read_text())
    return schema


def edited(change: Any) -> Schema:
    schema = committed()
    change(schema["$defs"]["ConnectionApprovedPayload"])
    return schema


def remove_via(payload: Schema) -> None:
    del payload["properties"]["via"]
    payload["required"].remove("via")


def retype_connection_id(payload: Schema) -> None:
    payload["properties"]["connection_id"] = {"type": "integer"}


def add_required_clinic_code(payload: Schema) -> None:
    payload["properties"]["clinic_code"] = {"type": "string"}
    payload["required"].append("clinic_code")


def make_request_id_non_nullable(payload: Schema) -> None:
    payload["properties"]["request_id"] = UUID


def add_optional_note(payload: Schema) -> None:
    payload["properties"]["note"] = {"anyOf": [{"type": "string"}, NULL], "default": None}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (remove_via, "payload.via: removed"),
        (retype_connection_id, "payload.connection_id: type changed"),
        (add_required_clinic_code, "payload.clinic_code: new required property"),
        (make_request_id_non_nullable, "payload.request_id: no longer nullable"),
    ],
)
def test_incompatible_edits_of_the_committed_schema_are_reported(change: Any, expected: str) -> None:
    problems = incompatibilities(committed(), edited(change))

    assert [problem.split(" (")[0] for problem in problems] == [expected]


def test_adding_an_optional_field_to_the_committed_schema_is_compatible() -> None:
    assert incompatibilities(committed(), edited(add_optional_note)) == []


def property_paths() -> list[tuple[str, str]]:
    """Every (file, property path) of the committed event schemas, envelope and payload."""
    paths = []
    for path in sorted(JSON_DIR.glob("*.v*.json")):
        schema = json.loads(path.read_text())
        paths += [(path.name, name) for name in schema["properties"]]
        (payload,) = schema["$defs"].values()
        paths += [(path.name, f"payload.{name}") for name in payload["properties"]]
    return paths


@pytest.mark.parametrize(("file", "path"), property_paths())
def test_removing_any_committed_property_is_reported(file: str, path: str) -> None:
    old = committed(file)
    new = copy.deepcopy(old)
    holder = next(iter(new["$defs"].values())) if path.startswith("payload.") else new
    name = path.removeprefix("payload.")
    del holder["properties"][name]
    holder["required"] = [field for field in holder.get("required", []) if field != name]

    assert incompatibilities(old, new) == [f"{path}: removed"]


# --- a changed model, through the generator's own code path -------------------------------------------------


def approved_model(drop: tuple[str, ...] = (), **fields: Any) -> type[Envelope]:
    """A copy of ConnectionApproved whose payload lacks `drop` and has `fields` added or replaced."""
    payload_fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in ConnectionApprovedPayload.model_fields.items()
        if name not in drop
    }
    payload = create_model("ConnectionApprovedPayload", __base__=Contract, **{**payload_fields, **fields})
    model: type[Envelope] = create_model("ConnectionApproved", __base__=ConnectionApproved, payload=(payload, ...))
    return model


def test_an_unchanged_copy_of_the_model_is_compatible() -> None:
    # Guards the helper: the failures below come from the change made, not from the copying.
    assert incompatibilities(committed(), event_schema(approved_model())) == []


def test_a_model_with_a_new_optional_field_is_compatible() -> None:
    model = approved_model(note=(str | None, None))

    assert incompatibilities(committed(), event_schema(model)) == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (approved_model(drop=("via",)), "payload.via: removed"),
        (approved_model(clinic_code=(str, ...)), "payload.clinic_code: new required property"),
        (approved_model(invite_id=(uuid.UUID | None, ...)), "payload.invite_id: now required"),
        (
            approved_model(via=(Literal["request", "invite", "roster"], ...)),
            'payload.via: values added: "roster"',
        ),
    ],
    ids=["field removed", "required field added", "field made required", "enum value added"],
)
def test_an_incompatible_model_change_is_reported(model: type[Envelope], expected: str) -> None:
    problems = incompatibilities(committed(), event_schema(model))

    assert [problem.split(" (")[0] for problem in problems] == [expected]


def test_consumers_reject_an_unknown_enum_value() -> None:
    # Why adding an enum value counts as incompatible: today's consumers send such an event to dead-letter.
    newer_producer_model = approved_model(via=(Literal["request", "invite", "roster"], ...))
    event = newer_producer_model.model_validate(
        {
            "producer": "connections",
            "correlation_id": "c-1",
            "payload": {
                "connection_id": uuid.uuid4(),
                "patient_id": uuid.uuid4(),
                "patient_email": "pat@example.com",
                "via": "roster",
                "approved_by": "staff-1",
                "approved_at": "2025-01-01T00:00:00Z",
            },
        }
    )

    with pytest.raises(pydantic.ValidationError, match="via"):
        parse_event(event.model_dump_json())


# --- the topic map: topics and message keys ----------------------------------------------------------------


def topic_map(topics: dict[str, list[str]], keys: dict[str, str] | None = None) -> Schema:
    document: Schema = {"topics": [{"name": name, "events": events} for name, events in topics.items()]}
    if keys is not None:
        document["events"] = [
            {"event_type": event, "schema_version": 1, "key": key, "topic": "t"} for event, key in keys.items()
        ]
    return document


TOPIC_MAP = topic_map({"a.v1": ["A", "B"], "c.v1": ["C"]}, {"A": "payload.a_id", "B": "payload.a_id", "C": "x"})

ROUTING_CASES: list[tuple[str, Schema, Schema, list[str]]] = [
    ("identical", TOPIC_MAP, TOPIC_MAP, []),
    (
        "a new event on a new topic",
        TOPIC_MAP,
        topic_map(
            {"a.v1": ["A", "B"], "c.v1": ["C"], "d.v1": ["D"]},
            {"A": "payload.a_id", "B": "payload.a_id", "C": "x", "D": "y"},
        ),
        [],
    ),
    (
        "event moved to another topic",
        TOPIC_MAP,
        topic_map({"a.v1": ["A"], "c.v1": ["C", "B"]}, {"A": "payload.a_id", "B": "payload.a_id", "C": "x"}),
        ["B: topic changed (was a.v1, now c.v1)"],
    ),
    (
        "topic renamed",
        TOPIC_MAP,
        topic_map({"a.v1": ["A", "B"], "c.v2": ["C"]}, {"A": "payload.a_id", "B": "payload.a_id", "C": "x"}),
        ["C: topic changed (was c.v1, now c.v2)"],
    ),
    (
        "event on no topic any more",
        TOPIC_MAP,
        topic_map({"a.v1": ["A", "B"]}, {"A": "payload.a_id", "B": "payload.a_id"}),
        ["C: topic changed (was c.v1, now none)"],
    ),
    (
        "message key changed",
        TOPIC_MAP,
        topic_map({"a.v1": ["A", "B"], "c.v1": ["C"]}, {"A": "payload.a_id", "B": "payload.email", "C": "x"}),
        ["B v1: message key changed (was payload.a_id, now payload.email)"],
    ),
    (
        "an older topic map without keys",
        topic_map({"a.v1": ["A", "B"], "c.v1": ["C"]}),
        TOPIC_MAP,
        [],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [case[1:] for case in ROUTING_CASES], ids=[case[0] for case in ROUTING_CASES]
)
def test_topic_maps(old: Schema, new: Schema, expected: list[str]) -> None:
    problems = routing_incompatibilities(old, new)

    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problems


def test_a_model_with_extra_forbid_is_reported() -> None:
    # Contract with extra="forbid" would give every schema additionalProperties: false.
    class Forbidding(ConnectionApproved):
        model_config = pydantic.ConfigDict(extra="forbid")

    problems = incompatibilities(committed(), event_schema(Forbidding))

    assert [problem.split(" (")[0] for problem in problems] == ["<root>: now rejects unknown properties"]
