"""The committed OpenAPI and AsyncAPI documents are what the code generates (run `make schemas` after a change)."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import unquote

import httpx
import jsonschema
from aiokafka import ConsumerRecord

from collabkare.docs import documents, runtimes
from schemas import EVENT_TYPES, TOPICS, dead_letter_topic, topic_for
from services.runtime.auth import mint_token
from services.runtime.consumer import BatchConsumer
from services.runtime.problems import PROBLEM_JSON
from services.runtime.service import ServiceRuntime


def test_committed_documents_are_current() -> None:
    stale = [str(path) for path, text in documents().items() if not path.exists() or path.read_text() != text]
    assert stale == [], f"out of date, run `make schemas`: {stale}"


def test_asyncapi_describes_every_topic_a_service_publishes() -> None:
    published = {
        "connections": ["connections.v1"],
        "invitations": ["invitations.v1"],
        "notifier": ["notifier.outcomes.v1"],
    }
    for path, text in documents().items():
        if path.parent.name != "asyncapi":
            continue
        channels = json.loads(text)["channels"]
        for topic in published[path.stem]:
            assert topic in channels, f"{path.name} lacks {topic}"


# What the AsyncAPI documents say each record looks like must be what really travels (schemas.topics is the
# truth about which event is on which topic; the subscriptions say what each group handles).


@functools.cache
def _asyncapi() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(text) for path, text in documents().items() if path.parent.name == "asyncapi"}


@functools.cache
def _runtimes() -> dict[str, ServiceRuntime]:
    return runtimes()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node


def _channel_messages(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(channel name, channel, message) for every message of every channel, references resolved."""
    for name, channel in document["channels"].items():
        for message in channel["messages"].values():
            yield name, channel, _resolve(document, message["$ref"])


def _event_of(document: dict[str, Any], message: dict[str, Any]) -> str:
    """The event type a message carries, by its payload schema (a single event, never a oneOf of several)."""
    payload = message["payload"]
    assert list(payload) == ["$ref"], f"{message.get('title')}: one event per message, not {payload}"
    event = _resolve(document, payload["$ref"]).get("properties", {}).get("event_type", {}).get("const")
    assert event in EVENT_TYPES, f"{message.get('title')}: {payload['$ref']} is not an event"
    return str(event)


def _event_messages(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, channel, message in _channel_messages(document):
        if channel["address"] in TOPICS:
            yield name, channel, message


def test_each_channel_lists_exactly_the_events_of_its_topic_that_the_service_publishes_or_handles() -> None:
    for service, document in _asyncapi().items():
        actions = {
            _resolve(document, operation["channel"]["$ref"])["address"]: operation["action"]
            for operation in document["operations"].values()
        }
        [subscription] = _runtimes()[service].spec.subscriptions
        for name, channel in document["channels"].items():
            topic = channel["address"]
            if topic not in TOPICS:
                continue
            events = [_event_of(document, _resolve(document, m["$ref"])) for m in channel["messages"].values()]
            for event in events:
                assert topic_for(event) == topic, f"{service}.json: {event} listed on {name}, travels on {topic}"
            if actions[topic] == "send":
                assert TOPICS[topic].producer == service
                assert sorted(events) == sorted(TOPICS[topic].events), f"{service}.json: {name}"
            else:
                handled = [event for event in TOPICS[topic].events if event in subscription.handlers]
                assert sorted(events) == sorted(handled), f"{service}.json: {name}"


def test_operations_name_the_messages_of_their_channel() -> None:
    for service, document in _asyncapi().items():
        for name, operation in document["operations"].items():
            channel_ref = operation["channel"]["$ref"]
            channel = _resolve(document, channel_ref)
            expected = sorted(f"{channel_ref}/messages/{key}" for key in channel["messages"])
            assert sorted(m["$ref"] for m in operation["messages"]) == expected, f"{service}.json: {name}"


def test_correlation_id_is_read_from_the_event_body() -> None:
    for service, document in _asyncapi().items():
        for name, _, message in _event_messages(document):
            assert message["correlationId"]["location"] == "$message.payload#/correlation_id", f"{service}: {name}"
            schema = _resolve(document, message["payload"]["$ref"])
            assert "correlation_id" in schema["required"]


def test_every_event_message_documents_its_kafka_key_and_the_relay_headers() -> None:
    seen = set()
    for service, document in _asyncapi().items():
        for name, channel, message in _event_messages(document):
            event = _event_of(document, message)
            seen.add(event)
            cls = EVENT_TYPES[event]
            binding = message["bindings"]["kafka"]
            assert binding["bindingVersion"]
            assert binding["key"]["type"] == "string"
            # The field the key is taken from, named in the description, really is the record key.
            [field] = re.findall(r"The event's ([\w.]+) \(its aggregate key\)", binding["key"]["description"])
            assert field == (f"payload.{cls.key_field}" if cls.key_field else "practice_id"), (service, name, event)
            key, other = str(uuid.uuid4()), str(uuid.uuid4())
            payload = cls.model_fields["payload"].annotation
            values = {cls.key_field: key} if cls.key_field else {}
            sample = cls.model_construct(
                payload=payload.model_construct(**values),  # type: ignore[union-attr]
                practice_id=other if cls.key_field else key,
            )
            assert sample.aggregate_key() == key, f"{event}: the documented key field is not the record key"

            headers = message["headers"]
            assert headers["type"] == "object"
            assert headers["properties"]["event_type"]["const"] == event
            assert headers["properties"]["event_id"]["format"] == "uuid"
            if TOPICS[channel["address"]].producer == "platform":
                assert "required" not in headers, f"{event}: the platform's producers may omit the headers"
                assert field.rsplit(".", 1)[-1] in message["description"]
            else:
                assert sorted(headers["required"]) == ["content-type", "event_id", "event_type"]
                assert headers["properties"]["content-type"]["const"] == "application/json" == message["contentType"]
    assert seen == set(EVENT_TYPES), f"events no document describes: {set(EVENT_TYPES) - seen}"


async def test_dead_letter_messages_document_every_header_the_consumer_sets() -> None:
    for service, document in _asyncapi().items():
        runtime = _runtimes()[service]
        [subscription] = runtime.spec.subscriptions
        [message] = [
            message
            for _, channel, message in _channel_messages(document)
            if channel["address"] == dead_letter_topic(subscription.group)
        ]
        headers = message["headers"]
        assert headers["type"] == "object"
        assert set(DEAD_LETTER_HEADERS) <= set(headers["required"]) <= set(headers["properties"])
        assert headers["properties"]["consumer_group"]["const"] == subscription.group
        assert "correlation_id" in headers["properties"]
        assert message["correlationId"]["location"] == "$message.header#/correlation_id"
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert message["payload"] != {}, "say what the value is"

        # The headers a real dead letter carries are all documented.
        broker = _RecordingBroker()
        context = dataclasses.replace(runtime.consumers, broker=cast(Any, broker))
        record = ConsumerRecord(
            topic=subscription.topics[0],
            partition=3,
            offset=42,
            timestamp=0,
            timestamp_type=0,
            key=b"key",
            value=b"not json",
            checksum=None,
            serialized_key_size=3,
            serialized_value_size=8,
            headers=[("event_type", b"Unknown"), ("event_id", str(uuid.uuid4()).encode())],
        )
        reason = "not a valid event: message: bad"
        await BatchConsumer(subscription, context).dead_letter(record, reason, kind="not_an_event")
        [sent] = broker.published
        assert set(DEAD_LETTER_HEADERS) <= set(sent["headers"]) <= set(headers["properties"])


class _RecordingBroker:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        self.published.append(kwargs)


DEAD_LETTER_HEADERS = (
    "dead_letter_reason",
    "original_topic",
    "original_partition",
    "original_offset",
    "consumer_group",
)


@functools.cache
def _openapi() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(text) for path, text in documents().items() if path.parent.name == "openapi"}


def test_every_error_is_a_documented_problem_and_every_api_route_takes_a_bearer_token() -> None:
    """What a generated client needs: the token to send, and the one body every error (503 included) has."""
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for service, document in _openapi().items():
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer", service
        for route, operations in document["paths"].items():
            for method, operation in operations.items():
                where = f"{service} {method.upper()} {route}"
                responses = operation["responses"]
                if route.startswith("/v1/"):
                    assert operation["security"] == [{"bearer": []}], where
                    assert {"401", "500", "503"} <= responses.keys(), where
                    assert "Retry-After" in responses["503"]["headers"], where
                errors = {status: r for status, r in responses.items() if status >= "400" and route != "/readyz"}
                assert all(r["content"] == problem for r in errors.values()), where
                assert all("X-Correlation-ID" in r["headers"] for r in responses.values()), where


async def test_real_problems_match_the_documented_schema() -> None:
    document = _openapi()["invitations"]
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/ProblemDetails", "components": document["components"]}
    )
    runtime = _runtimes()["invitations"]
    app, secret = runtime.http_app(), runtime.settings.jwt_secret
    assert secret is not None
    token = mint_token(secret.get_secret_value(), "staff-1", ["admin"], practice_id=uuid.uuid4())
    staff = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        answers = [
            await http.get(f"/v1/practices/{uuid.uuid4()}/invites", params={"email": "a@example.com"}),
            await http.get("/v1/practices/not-a-uuid/invites", params={"email": "a@example.com"}, headers=staff),
            await http.get("/v1/nowhere"),
            await http.get("/readyz", params={"exclude": "bogus"}),
        ]
    # No database here: the service answers as while it starts, 503 with Retry-After.
    assert [a.status_code for a in answers] == [401, 503, 404, 422]
    for answer in answers:
        assert answer.headers["content-type"] == PROBLEM_JSON
        validator.validate(answer.json())
    assert answers[3].json()["errors"][0]["field"] == "exclude" and answers[1].headers["Retry-After"] == "5"
