"""Events the invitations service consumes, and the one table saying which topic, group and handler each takes."""

from __future__ import annotations

from services.invitations import handlers
from services.runtime.consumer import Subscription

GROUP = "invitations"

ROUTES: tuple[Subscription, ...] = (
    Subscription(
        group=GROUP,
        topics=("connections.v1", "notifier.outcomes.v1", "platform.patients.v1", "platform.practices.v1"),
        handlers={
            "ConnectionApproved": handlers.project_connections,
            "DeliveryOutcome": handlers.record_outcomes,
            "PatientRegistered": handlers.record_patients,
            "PracticeRegistered": handlers.record_practices,
        },
        description="Connected patients (for already_connected), delivery outcomes written back to invites and "
        "roster rows (never moving one backwards), and the patients and practices the platform deleted: a "
        "patient's token, which may outlive her account, accepts no invite, and a deleted practice's invites accept "
        "nothing, until they register again.",
        tombstones={
            "platform.patients.v1": handlers.forget_patient,
            "platform.practices.v1": handlers.forget_practice,
        },
    ),
)
