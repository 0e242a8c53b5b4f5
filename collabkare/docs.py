"""Generates each service's OpenAPI and AsyncAPI documents into docs/ (`make schemas`; a test keeps them current)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pydantic import BaseModel

from schemas import EVENT_TYPES, TOPICS, Envelope, dead_letter_topic, topic_for
from services.connections.app import build_runtime as connections_runtime
from services.connections.settings import ConnectionsSettings
from services.invitations.app import build_runtime as invitations_runtime
from services.invitations.settings import InvitationsSettings
from services.notifier.app import build_runtime as notifier_runtime
from services.notifier.settings import NotifierSettings
from services.runtime.consumer import Subscription
from services.runtime.service import ServiceRuntime

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Building a runtime does no I/O; these values only satisfy the settings' validation.
_OFFLINE = {
    "database_url": "postgresql://docs@localhost/docs",
    "kafka_bootstrap_servers": "kafka:9092",
    "jwt_secret": "documentation-only-secret-32-bytes!",
}
KAFKA_BINDING_VERSION = "0.4.0"  # the version FastStream's channel bindings declare
PLATFORM = "platform"  # the producer of topics the wider platform owns (schemas/topics.py)


def runtimes() -> dict[str, ServiceRuntime]:
    return {
        "connections": connections_runtime(ConnectionsSettings(**_OFFLINE)),  # type: ignore[arg-type]
        "invitations": invitations_runtime(InvitationsSettings(**_OFFLINE)),  # type: ignore[arg-type]
        "notifier": notifier_runtime(NotifierSettings(**_OFFLINE)),  # type: ignore[arg-type]
    }


def documents() -> dict[Path, str]:
    result: dict[Path, str] = {}
    for name, runtime in runtimes().items():
        openapi: dict[str, Any] = runtime.http_app().openapi()
        result[DOCS / "openapi" / f"{name}.json"] = _dump(openapi)
        asyncapi = json.loads(runtime.asyncapi().to_specification().to_json())
        result[DOCS / "asyncapi" / f"{name}.json"] = _dump(describe_messages(asyncapi, runtime))
    return result


def describe_messages(asyncapi: dict[str, Any], runtime: ServiceRuntime) -> dict[str, Any]:
    """Replace FastStream's messages with the records that really travel on each channel.

    FastStream knows neither side: the batch consumers take raw records (so a poison message reaches our
    dead-letter logic instead of failing in FastStream's argument parsing), and the outbox relay publishes
    with aiokafka, past FastStream (the service declares documentation-only publishers for its topics). So
    each channel gets one message per event type that travels on its topic and that this service publishes
    there or handles there, with the record's key and headers; a dead-letter channel gets the dead letter.
    """
    topic_names = {runtime.settings.topic(name): name for name in TOPICS}
    dead_letter_groups = {runtime.settings.topic(dead_letter_topic(s.group)): s for s in runtime.spec.subscriptions}
    channels: dict[str, Any] = asyncapi["channels"]
    components: dict[str, Any] = asyncapi["components"]
    messages: dict[str, Any] = {}
    for operation_name, operation in sorted(asyncapi["operations"].items()):
        channel_name = _ref_name(operation["channel"]["$ref"], "channels")
        channel = channels[channel_name]
        address = channel["address"]
        if address in dead_letter_groups and operation["action"] == "send":
            subscription = dead_letter_groups[address]
            names = [f"{_camel(subscription.group)}DeadLetter"]
            messages[names[0]] = _dead_letter_message(subscription)
        elif address in topic_names:
            names = _events_on(topic_names[address], channel_name, operation["action"], runtime)
            for name in names:
                messages[name] = _event_message(name)
                _add_event_schema(components["schemas"], name)
        else:
            raise ValueError(f"{operation_name}: nothing known travels on {address}")
        channel["messages"] = {name: {"$ref": _pointer("components", "messages", name)} for name in names}
        operation["messages"] = [{"$ref": _pointer("channels", channel_name, "messages", name)} for name in names]
    components["messages"] = messages
    _drop_unreferenced_schemas(asyncapi)
    return asyncapi


def _events_on(topic: str, channel_name: str, action: str, runtime: ServiceRuntime) -> list[str]:
    """The event types this service publishes on (send) or handles from (receive) a topic, in TOPICS' order."""
    events = TOPICS[topic].events
    if action == "send":
        if TOPICS[topic].producer != runtime.spec.name:
            raise ValueError(
                f"{runtime.spec.name} documents a publisher on {topic}, which {TOPICS[topic].producer} owns"
            )
        return list(events)
    subscription = _subscription_of(channel_name, runtime)
    handled = [name for name in events if name in subscription.handlers]
    if not handled:
        raise ValueError(f"group {subscription.group} reads {topic} but handles none of its events")
    return handled


def _subscription_of(channel_name: str, runtime: ServiceRuntime) -> Subscription:
    """FastStream names a subscriber's channel `<topic>:<HandlerName>`; the handler is `<group>_consume`."""
    for subscription in runtime.spec.subscriptions:
        if channel_name.endswith(f":{_camel(subscription.group)}Consume"):
            return subscription
    raise ValueError(f"no subscription of {runtime.spec.name} reads channel {channel_name}")


def _event_message(name: str) -> dict[str, Any]:
    event = EVENT_TYPES[name]
    topic = TOPICS[topic_for(name)]
    key_name, key_schema = _key(event)
    from_platform = topic.producer == PLATFORM
    if from_platform:
        origin = (
            f"Published by the wider platform on {topic.name}. Its producers may omit the headers (consumers "
            f"then parse the record to learn its type); they must key the record by {key_name} (lowercase, "
            "hyphenated, as in the JSON our schema writes), so that "
            "the events about one aggregate stay in order on one partition (and the compacted topic keeps the "
            "newest): consumers dead-letter a record keyed otherwise. A record with that key and no value (a "
            "compaction tombstone) deletes the "
            f"{name.removesuffix('Registered').lower()} from every consumer's directory."
        )
    else:
        origin = (
            f"Published on {topic.name} by the {topic.producer} service's outbox relay, keyed by {key_name} and "
            "with the event_type, event_id and content-type headers."
        )
    headers: dict[str, Any] = {
        "type": "object",
        "description": "Kafka record headers; values are UTF-8 strings. "
        + (
            "Optional: the platform's producers may omit them (when set, they mean what they mean on the "
            "services' own events, whose outbox relays always set them; an event_type other than the event's "
            "own is dead-lettered)."
            if from_platform
            else "The outbox relay sets all three on every record."
        ),
        "properties": {
            "event_type": {
                "type": "string",
                "const": name,
                "description": "The event's type name, as in the body's event_type. A consumer group skips, "
                "without parsing it, a record whose event_type names an event type the group does not handle. "
                "A record it parses (no header, or a type it handles or no contract of its release knows) goes to "
                "the group's dead-letter topic when its type is unknown (a typo, or a new event type its consumers "
                "were not updated for first) or when it was read on another topic than its event type's own.",
            },
            "event_id": {
                "type": "string",
                "format": "uuid",
                "description": "The envelope's event_id, as in the body.",
            },
            "content-type": {
                "type": "string",
                "const": "application/json",
                "description": "The value is the event's JSON, UTF-8.",
            },
        },
    }
    if not from_platform:
        headers["required"] = ["event_type", "event_id", "content-type"]
    return {
        "name": name,
        "title": name,
        "summary": (event.__doc__ or name).strip(),
        "description": origin,
        "contentType": "application/json",
        "correlationId": {
            "description": "The envelope's correlation_id, shared by every event caused by one user action.",
            "location": "$message.payload#/correlation_id",
        },
        "headers": headers,
        "payload": {"$ref": _pointer("components", "schemas", name)},
        "bindings": {
            "kafka": {
                "bindingVersion": KAFKA_BINDING_VERSION,
                "key": {
                    **key_schema,
                    "description": f"The event's {key_name} (its aggregate key), as a UTF-8 string: Kafka's default "
                    "partitioner (murmur2 of the key) keeps the events with one key in order on one partition.",
                },
            }
        },
    }


def _key(event: type[Envelope]) -> tuple[str, dict[str, Any]]:
    """Which field of the event keys its Kafka record (`Envelope.key_path`), and its JSON type."""
    name = event.key_path()
    owner, _, field_name = name.rpartition(".")  # "payload.invite_id", or "practice_id" on the envelope
    model: type[BaseModel] = event.model_fields["payload"].annotation if owner else event  # type: ignore[assignment]
    field: dict[str, Any] = model.model_json_schema(mode="serialization")["properties"][field_name]
    if field.get("type") != "string":
        raise ValueError(f"{event.__name__}'s key {name} is not a plain string: {field}")
    return name, {k: field[k] for k in ("type", "format") if k in field}


def _dead_letter_message(subscription: Subscription) -> dict[str, Any]:
    topics = ", ".join(subscription.topics)
    return {
        "name": f"{_camel(subscription.group)}DeadLetter",
        "title": f"{subscription.group} dead letter",
        "summary": f"A record the {subscription.group} group could not parse or apply, passed on as it was, with why.",
        "description": f"The original record (from {topics}) with its key and value bytes unchanged and its "
        "headers kept (event_type and event_id when one of our relays published it), plus the headers that "
        "say where it came from and why it is here: a redrive can publish key, value and the original headers "
        "back to original_topic.",
        "contentType": "application/octet-stream",
        "correlationId": {
            "description": "The event's correlation_id when the record could be parsed as an event (its handler "
            "kept failing); see the correlation_id header.",
            "location": "$message.header#/correlation_id",
        },
        "headers": {
            "type": "object",
            "description": "Kafka record headers; values are UTF-8 strings. The original record's headers are "
            "kept, and these are added.",
            "properties": {
                "dead_letter_reason": {
                    "type": "string",
                    "maxLength": 2000,
                    "description": "Why the record is here: `empty message` (a zero-length value, or a null one on "
                    "a topic without tombstones), `not a valid event: <field>: <problem>; ...` (the record does not "
                    "parse as an event), `<EventType> is published on <topic>, not here` (a valid event read on "
                    "another topic than its type's own), `the event_type header says <Type>, which is not published "
                    "here` (the header names a type its topic does not carry), `the event_type header says <Type>, "
                    "the event is a <EventType>` (the header and the value disagree), `<EventType> must be keyed by "
                    "its <field> (lowercase, hyphenated)` (a platform event on a compacted topic keyed by anything "
                    "but the id its contract names, as its JSON spells it), `a tombstone's key must be the id of "
                    "what it deletes (lowercase, hyphenated)`, or `<ExceptionType>: <message>` (its handler kept "
                    "failing with that error after CONSUMER_MAX_ATTEMPTS attempts).",
                },
                "original_topic": {
                    "type": "string",
                    "description": f"The topic the record was read from (one of {topics}, with the deployment's "
                    "KAFKA_TOPIC_PREFIX).",
                },
                "original_partition": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The record's partition in original_topic, in decimal.",
                },
                "original_offset": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The record's offset in that partition, in decimal.",
                },
                "consumer_group": {
                    "type": "string",
                    "const": subscription.group,
                    "description": "The consumer group that dead-lettered the record (its name without the "
                    "KAFKA_TOPIC_PREFIX).",
                },
                "correlation_id": {
                    "type": "string",
                    "description": "The event's correlation_id when the record could be parsed as an event; for "
                    "a record that could not, the original record's correlation_id header if it had one, "
                    "otherwise an id generated for the dead letter.",
                },
                "event_type": {
                    "type": "string",
                    "description": "Kept from the original record, when its producer set it.",
                },
                "event_id": {
                    "type": "string",
                    "description": "Kept from the original record, when its producer set it.",
                },
                "content-type": {
                    "type": "string",
                    "description": "Kept from the original record if it had one; otherwise "
                    "application/octet-stream (the value is passed on as bytes, whatever they are).",
                },
            },
            "required": [
                "dead_letter_reason",
                "original_topic",
                "original_partition",
                "original_offset",
                "consumer_group",
                "content-type",
            ],
        },
        "payload": {
            "description": "The original record's value, byte for byte: normally the JSON of one of the events "
            f"on {topics}, but whatever could not be parsed, so possibly not JSON at all (or empty); a dead-lettered "
            "tombstone's value stays null.",
        },
        "bindings": {
            "kafka": {
                "bindingVersion": KAFKA_BINDING_VERSION,
                "key": {
                    "type": "string",
                    "description": "The original record's key, unchanged (for an event, its aggregate key); "
                    "absent when the original record had none.",
                },
            }
        },
    }


def _add_event_schema(schemas: dict[str, Any], name: str) -> None:
    model = EVENT_TYPES[name].model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(model.pop("$defs", {}))
    schemas[name] = model


def _drop_unreferenced_schemas(asyncapi: dict[str, Any]) -> None:
    """FastStream's own payload schemas (and any other schema) that no message uses any more."""
    schemas: dict[str, Any] = asyncapi["components"]["schemas"]
    outside = {key: value for key, value in asyncapi.items() if key != "components"}
    outside["components"] = {key: value for key, value in asyncapi["components"].items() if key != "schemas"}
    pending, used = list(_schema_refs(outside)), set()
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending.extend(_schema_refs(schemas[name]))
    for name in set(schemas) - used:
        del schemas[name]


def _schema_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            yield _ref_name(ref, "components", "schemas")
        for value in node.values():
            yield from _schema_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_refs(value)


def _pointer(*parts: str) -> str:
    """A local reference (JSON pointer in a URI fragment), encoded like FastStream's."""
    return "#/" + "/".join(quote(part.replace("~", "~0").replace("/", "~1"), safe=":") for part in parts)


def _ref_name(ref: str, *prefix: str) -> str:
    parts = [unquote(part).replace("~1", "/").replace("~0", "~") for part in ref.removeprefix("#/").split("/")]
    if parts[: len(prefix)] != list(prefix) or len(parts) != len(prefix) + 1:
        raise ValueError(f"{ref} is not a reference to #/{'/'.join(prefix)}/<name>")
    return parts[-1]


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def stale() -> list[Path]:
    return [path for path, text in documents().items() if not path.exists() or path.read_text() != text]


def main() -> int:
    if "--check" in sys.argv:
        outdated = stale()
        for path in outdated:
            print(f"{path.relative_to(DOCS.parent)} is out of date: run `make schemas`")
        return 1 if outdated else 0
    for path, text in documents().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
