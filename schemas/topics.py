"""Topics: one per producer and contract version, platform topics, and a dead-letter topic per consumer group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    producer: str
    events: tuple[str, ...]
    description: str
    partitions: int = 6


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic(
            "connections.v1",
            "connections",
            ("ConnectionRequested", "ConnectionApproved", "ConnectionRejected"),
            "Connection requests and decisions, keyed by patient id.",
        ),
        Topic(
            "invitations.v1",
            "invitations",
            ("InviteRequested", "InviteAccepted", "InviteRevoked", "InviteExpired"),
            "Invite lifecycle, keyed by invite id.",
        ),
        Topic(
            "notifier.outcomes.v1",
            "notifier",
            ("DeliveryOutcome",),
            "Final outcome of every notification, keyed by the source event id.",
        ),
        Topic(
            "platform.patients.v1",
            "platform",
            ("PatientRegistered",),
            "Patients who created a CollabKare account (owned by the wider platform).",
        ),
        Topic(
            "platform.practices.v1",
            "platform",
            ("PracticeRegistered",),
            "Practices on CollabKare (owned by the wider platform).",
        ),
    )
}

# Each consumer group reads these topics; its poison messages go to its own dead-letter topic.
CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    "connections": ("invitations.v1", "platform.patients.v1", "platform.practices.v1"),
    "invitations": ("connections.v1", "notifier.outcomes.v1", "platform.patients.v1", "platform.practices.v1"),
    "notifier": ("connections.v1", "invitations.v1", "platform.patients.v1", "platform.practices.v1"),
}


def dead_letter_topic(group: str) -> str:
    return f"{group}.dead-letter.v1"


def topic_for(event_type: str) -> str:
    """The topic an event type is published on."""
    for topic in TOPICS.values():
        if event_type in topic.events:
            return topic.name
    raise KeyError(f"no topic carries {event_type}")


def all_topic_names() -> list[str]:
    return [*TOPICS, *(dead_letter_topic(group) for group in CONSUMER_GROUPS)]
