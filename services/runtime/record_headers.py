"""A consumed record's headers, whose values Kafka allows to be any bytes, or null: Java clients and tracing
agents send binary ones. Our own producers only ever write UTF-8 text."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import ConsumerRecord
from faststream.message import StreamMessage

Records = tuple[ConsumerRecord[bytes, bytes], ...]


def text(value: bytes | None) -> str:
    """A header value as text: a null one as empty, bytes that are not UTF-8 with U+FFFD in their place."""
    return value.decode(errors="replace") if value is not None else ""


async def parse_batch(
    records: Records, parse: Callable[[Records], Awaitable[StreamMessage[Any]]]
) -> StreamMessage[Any]:
    """FastStream's batch parser, for a batch with a header value it cannot read as well.

    It decodes every header value of every record as UTF-8 text, and raised on a binary or null one before the
    consumer saw the batch; FastStream then dropped the whole batch without a word, and the group's next commit went
    past it. Such a batch is parsed from copies with readable headers; the consumer still gets the records as they
    came (`raw_message`: what it applies or dead-letters, and what a nack rewinds to)."""
    try:
        return await parse(records)
    except (UnicodeDecodeError, AttributeError):
        readable = tuple(
            dataclasses.replace(r, headers=[(k, text(v).encode()) for k, v in r.headers or ()]) for r in records
        )
        message = await parse(readable)
        message.raw_message = records
        return message


def declared_content_type(headers: dict[str, str]) -> str | None:
    """The content type a record's producer declared, under any of the spellings producers use (FastStream's
    `content-type`, `Content-Type`, Spring Kafka's `contentType`); None when it declared none."""
    for key, value in headers.items():
        if value and key.lower().replace("-", "") == "contenttype":
            return value
    return None
