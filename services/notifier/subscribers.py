"""Events the notifier consumes, and the one table saying which topic, group and handler each takes."""

from __future__ import annotations

from services.notifier import handlers
from services.notifier.settings import NotifierSettings
from services.runtime.consumer import Subscription

GROUP = "notifier"
TOPICS = ("connections.v1", "invitations.v1", "platform.patients.v1", "platform.practices.v1")


def routes(settings: NotifierSettings) -> tuple[Subscription, ...]:
    """The ROUTES table; a function because the handlers carry settings (grace period, Message-ID domain,
    high-water mark)."""
    queue = handlers.QueueDeliveries(settings.directory_grace_seconds, settings.sender_domain)
    return (
        Subscription(
            group=GROUP,
            topics=TOPICS,
            handlers={
                "PatientRegistered": handlers.record_patients,
                "PracticeRegistered": handlers.record_practices,
                "InviteRequested": queue,
                "InviteRevoked": handlers.cancel_revoked,
                "ConnectionApproved": queue,
                "ConnectionRejected": queue,
            },
            description=(
                "Keeps the patient and practice directories, and queues one email delivery per invite, "
                "approval and rejection (an invite revoked before its email went out ends error, unsent, and so "
                "does an invite or a rejection to a patient connected to the practice); the sender job sends them "
                "and publishes each DeliveryOutcome."
            ),
            throttle=handlers.Backpressure(settings.pending_high_water, settings.pending_wait_max_seconds),
            tombstones={
                "platform.patients.v1": handlers.forget_patient,
                "platform.practices.v1": handlers.forget_practice,
            },
        ),
    )
