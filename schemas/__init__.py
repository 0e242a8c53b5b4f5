"""Wire contracts shared by every service: the event envelope, the events, and the topics they travel on."""

from schemas.envelope import Envelope, new_event_id
from schemas.events import (
    EVENT_TYPES,
    EVENTS,
    AnyEvent,
    ConnectionApproved,
    ConnectionRejected,
    ConnectionRequested,
    DeliveryOutcome,
    InviteAccepted,
    InviteExpired,
    InviteRequested,
    InviteRevoked,
    PatientRegistered,
    PracticeRegistered,
    event_union,
    parse_event,
)
from schemas.topics import CONSUMER_GROUPS, TOPICS, Topic, dead_letter_topic, topic_for

__all__ = [
    "CONSUMER_GROUPS",
    "EVENTS",
    "EVENT_TYPES",
    "TOPICS",
    "AnyEvent",
    "ConnectionApproved",
    "ConnectionRejected",
    "ConnectionRequested",
    "DeliveryOutcome",
    "Envelope",
    "InviteAccepted",
    "InviteExpired",
    "InviteRequested",
    "InviteRevoked",
    "PatientRegistered",
    "PracticeRegistered",
    "Topic",
    "dead_letter_topic",
    "event_union",
    "new_event_id",
    "parse_event",
    "topic_for",
]
