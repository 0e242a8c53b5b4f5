"""A claimed invite as the sender holds it, for the notifier's unit tests; `changes` set delivery or claim fields."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from services.notifier.domain import Claimed, Locale, NewDelivery, delivery_id_for, message_id_for


def claimed_delivery(kind: str = "invite", locale: Locale = "en", **changes: object) -> Claimed:
    event_id = uuid.uuid4()
    delivery = NewDelivery(
        id=delivery_id_for(event_id),
        source_event_id=event_id,
        source_event_type={"invite": "InviteRequested"}.get(kind, "ConnectionApproved"),
        kind=kind,  # type: ignore[arg-type]
        recipient="ana@example.com",
        practice_id=uuid.uuid4(),
        correlation_id="c-1",
        message_id=message_id_for(event_id, "collabkare.example"),
        invite_id=uuid.uuid4(),
        note='Bring your <insurance> card & "ID"',
        accept_url="https://app.example/invites/accept?token=abc123&lang=en",
        expires_at=datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
    )
    fields = {k: v for k, v in changes.items() if k in NewDelivery.__dataclass_fields__}
    delivery = replace(delivery, **fields)  # type: ignore[arg-type]
    claim = Claimed(delivery, 1, True, locale, "Ana Núñez", "Riverside Family Practice", "desk@riverside.example")
    return replace(claim, **{k: v for k, v in changes.items() if k not in fields})  # type: ignore[arg-type]
