"""What a consumed record is: an event (or a poison message, and why), the id a tombstone's key spells, the type its
header announces, the event id an unparsable one names."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas import Envelope, parse_event
from services.runtime import record_headers


class PoisonMessage(Exception):
    """A record that cannot be turned into an event: it goes to the dead-letter topic as it is."""


def event_id_in(value: bytes | None) -> str | None:
    """The event id of a record that is not a valid event, if its JSON names one: what an operator looks it up by."""
    try:
        found = json.loads(value or b"")
        return str(uuid.UUID(found["event_id"])) if isinstance(found, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def canonical_id(key: bytes | None) -> uuid.UUID | None:
    """The id a key spells as our events do (lowercase, hyphenated); None for anything else."""
    try:
        found = uuid.UUID((key or b"").decode())
    except ValueError:
        return None
    return found if str(found).encode() == key else None


def announced_type(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The `event_type` header every outbox relay sets; None for records from producers that set none."""
    for key, value in record.headers or ():
        if key == "event_type":
            return record_headers.text(value) or None
    return None


def decode(record: ConsumerRecord[bytes, bytes]) -> Envelope:
    if not record.value:
        raise PoisonMessage("empty message")
    try:
        return parse_event(record.value)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {_problem(e)}" for e in error.errors()[:5]
        )
        raise PoisonMessage(f"not a valid event: {problems}") from error


_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _problem(error: Any) -> str:
    """pydantic's words, but for an unknown event_type or schema_version: its error quotes whatever the producer
    wrote there, which may be anything (a security review sent a name and a diagnosis); a value shaped like a type's
    name or a version is quoted."""
    if error["type"] != "union_tag_invalid":
        return str(error["msg"])
    context = error.get("ctx", {})
    tag, field = str(context.get("tag", "")), str(context.get("discriminator", "")).strip("'")
    named = repr(tag) if _TAG.fullmatch(tag) else "(not shaped like a name or a number)"
    return f"unknown {field} {named}: expected one of {context.get('expected_tags', '')}"
