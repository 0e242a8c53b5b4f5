"""Events the connections service consumes, and the one table saying which topic, group and handler each takes."""

from __future__ import annotations

from services.connections import handlers
from services.runtime.consumer import Subscription

GROUP = "connections"

ROUTES: tuple[Subscription, ...] = (
    Subscription(
        group=GROUP,
        topics=("invitations.v1", "platform.practices.v1", "platform.patients.v1"),
        handlers={
            "InviteAccepted": handlers.connect_invited,
            "PracticeRegistered": handlers.record_practices,
            "PatientRegistered": handlers.record_patients,
        },
        description=(
            "An accepted invite connects the patient to the practice and announces ConnectionApproved; the "
            "platform's practices are the ones patients may ask to connect to; a patient the platform deletes "
            "withdraws her pending requests and cannot ask anew until she registers again."
        ),
        tombstones={
            "platform.practices.v1": handlers.forget_practice,
            "platform.patients.v1": handlers.forget_patient,
        },
    ),
)
