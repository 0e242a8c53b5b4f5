"""Every event in the system, with its payload; `parse_event` turns wire bytes into the right class and version."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AwareDatetime, Discriminator, Field, GetCoreSchemaHandler, TypeAdapter, ValidationError
from pydantic_core import CoreSchema

from schemas.email_address import EmailAddress
from schemas.envelope import ALWAYS_ON_THE_WIRE, Contract, Envelope

Note = Annotated[str, Field(max_length=500)]
Reason = Annotated[str, Field(max_length=1000)]
Locale = Literal["en", "es"]


# --- connections -------------------------------------------------------------------------------------------


class ConnectionRequestedPayload(Contract):
    request_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: EmailAddress
    display_name: str | None = None
    message: Note | None = None
    requested_at: AwareDatetime


class ConnectionRequested(Envelope):
    """A patient asked to link their record to a practice."""

    key_field = "patient_id"
    event_type: Literal["ConnectionRequested"] = "ConnectionRequested"
    payload: ConnectionRequestedPayload


class ConnectionApprovedPayload(Contract):
    connection_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: EmailAddress
    via: Literal["request", "invite"]
    request_id: uuid.UUID | None = Field(
        default=None,
        description="The connection request this approves: set when via is request, and when via is invite and the "
        "patient had a request pending, which the accepted invite answered (the request is approved too).",
    )
    invite_id: uuid.UUID | None = Field(default=None, description="Set when via is invite.")
    approved_by: str = Field(
        max_length=200,
        description=(
            "Subject of the staff member who approved the request or sent the invite; the patient's id when via is "
            "invite and the InviteAccepted did not say who sent it (events from before it carried invited_by)."
        ),
    )
    approved_at: AwareDatetime


class ConnectionApproved(Envelope):
    """A patient is now connected to a practice (approved request or accepted invite)."""

    key_field = "patient_id"
    event_type: Literal["ConnectionApproved"] = "ConnectionApproved"
    payload: ConnectionApprovedPayload


class ConnectionRejectedPayload(Contract):
    request_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: EmailAddress
    rejected_by: str = Field(max_length=200)
    rejected_at: AwareDatetime
    reason: Note | None = None


class ConnectionRejected(Envelope):
    """Staff declined a patient's connection request, optionally with a reason."""

    key_field = "patient_id"
    event_type: Literal["ConnectionRejected"] = "ConnectionRejected"
    payload: ConnectionRejectedPayload


# --- invitations -------------------------------------------------------------------------------------------


class InviteRequestedPayload(Contract):
    invite_id: uuid.UUID
    email: EmailAddress
    note: Note | None = None
    accept_url: str = Field(
        max_length=2000,
        description="{PUBLIC_BASE_URL}/invites/accept?token=<token>. The token is a live secret until the invite is "
        "accepted, revoked or expired (the database keeps only its hash): whoever reads this topic must be trusted "
        "like the invitations database. Accepting also takes the patient's own login under this email, and for an "
        "individual invite an identity factor.",
    )
    expires_at: AwareDatetime
    requested_by: str = Field(max_length=200)
    batch_id: uuid.UUID | None = Field(default=None, description="Set when the invite came from a roster.")
    line_number: int | None = Field(default=None, ge=1, description="The roster line, when from a roster.")
    identity_check: Literal["ssn", "date_of_birth_and_phone"] | None = Field(
        default=None,
        description="What the patient will be asked to confirm when accepting (an individual invite); none for a "
        "roster invite. The values themselves never leave the invitations service. When staff entered both, the "
        "first of identity_checks.",
    )
    identity_checks: list[Literal["ssn", "date_of_birth_and_phone"]] | None = Field(
        default=None,
        description="Every answer accepting takes, any one of them enough (an individual invite for which staff "
        "entered both the SSN and the date of birth and phone lists both); null for a roster invite, and absent from "
        "events published before it was added.",
    )
    replaces: uuid.UUID | None = Field(
        default=None,
        description="The invite this one replaces (a resend): that one is revoked or expired, and its link no longer "
        "works. This field is the link between the two: when the replaced invite was still pending, its InviteRevoked, "
        "published with this event, also names this one in replaced_by; an invite revoked or expired before the "
        "resend had its InviteRevoked or InviteExpired already, which names no successor.",
    )


class InviteRequested(Envelope):
    """An invite was created and should be emailed to the patient."""

    key_field = "invite_id"
    event_type: Literal["InviteRequested"] = "InviteRequested"
    payload: InviteRequestedPayload


class InviteAcceptedPayload(Contract):
    invite_id: uuid.UUID
    patient_id: uuid.UUID
    patient_email: EmailAddress
    accepted_at: AwareDatetime
    invited_by: str | None = Field(
        default=None,
        max_length=200,
        description=(
            "Subject of the staff member who sent the invite (its InviteRequested's requested_by); absent from "
            "events published before this field was added."
        ),
    )


class InviteAccepted(Envelope):
    """A patient accepted an invite; the connections service connects them."""

    key_field = "invite_id"
    event_type: Literal["InviteAccepted"] = "InviteAccepted"
    payload: InviteAcceptedPayload


class InviteRevokedPayload(Contract):
    invite_id: uuid.UUID
    revoked_by: str = Field(
        max_length=200,
        description="The staff member's subject; `system:patient-connected` when the patient connected to the "
        "practice by other means (an approved request) while the invite was pending.",
    )
    revoked_at: AwareDatetime
    replaced_by: uuid.UUID | None = Field(
        default=None,
        description="The new invite, when this revocation is part of resending a pending invite. A resend after a "
        "revocation or an expiry is linked only by the new InviteRequested's replaces.",
    )


class InviteRevoked(Envelope):
    """Staff revoked a pending invite (on its own or as part of a resend), or the patient connected meanwhile."""

    key_field = "invite_id"
    event_type: Literal["InviteRevoked"] = "InviteRevoked"
    payload: InviteRevokedPayload


class InviteExpiredPayload(Contract):
    invite_id: uuid.UUID
    expired_at: AwareDatetime


class InviteExpired(Envelope):
    """A pending invite passed its expiry time without being accepted."""

    key_field = "invite_id"
    event_type: Literal["InviteExpired"] = "InviteExpired"
    payload: InviteExpiredPayload


# --- notifier ----------------------------------------------------------------------------------------------


class DeliveryOutcomePayload(Contract):
    delivery_id: uuid.UUID
    source_event_id: uuid.UUID
    source_event_type: str
    kind: Literal["invite", "connection_approved", "connection_rejected"]
    outcome: Literal["sent", "not_on_platform", "error"] = Field(
        description="sent: the SMTP relay accepted the email. not_on_platform: nobody has registered the address, or "
        "the patient who had was deleted by the platform since; nothing was sent. error: the email could not be sent, "
        "and `reason` says why: the relay refused it for good (its reply), every retry failed, the practice is unknown "
        "to the directory, the invite was revoked before its email went out, or the patient was already connected to "
        "the practice when an invite's or a rejection's email was to go out (`attempts` says how many sends were "
        "tried, 0 for most of these)."
    )
    reason: Reason | None = None
    invite_id: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None
    line_number: int | None = Field(default=None, ge=1)
    message_id: str | None = Field(default=None, description="The email's Message-ID when one was sent.")
    attempts: int = Field(ge=0)
    decided_at: AwareDatetime


class DeliveryOutcome(Envelope):
    """The final result of one notification: sent, not on the platform, or an error with its reason."""

    key_field = "source_event_id"
    event_type: Literal["DeliveryOutcome"] = "DeliveryOutcome"
    payload: DeliveryOutcomePayload


# --- platform ----------------------------------------------------------------------------------------------


class PatientRegisteredPayload(Contract):
    patient_id: uuid.UUID
    email: EmailAddress
    display_name: str | None = None
    locale: Locale = "en"
    date_of_birth: date | None = Field(
        default=None,
        deprecated=True,
        description="Not read by any service here, and PHI: leave it out. Identity is checked against the factors "
        "staff enter with an individual invite, never against the platform's record.",
    )
    registered_at: AwareDatetime


class PatientRegistered(Envelope):
    """A person created a CollabKare account (published by the platform)."""

    key_field = "patient_id"
    event_type: Literal["PatientRegistered"] = "PatientRegistered"
    payload: PatientRegisteredPayload


class PracticeRegisteredPayload(Contract):
    name: str = Field(min_length=1, max_length=200)
    reply_to: EmailAddress | None = None
    registered_at: AwareDatetime


class PracticeRegistered(Envelope):
    """A practice joined CollabKare (published by the platform); practice_id is on the envelope."""

    key_field = ""  # keyed by the envelope's practice_id, which this event requires
    event_type: Literal["PracticeRegistered"] = "PracticeRegistered"
    practice_id: uuid.UUID
    payload: PracticeRegisteredPayload

    def aggregate_key(self) -> str:
        return str(self.practice_id)


def version_of(event: type[Envelope]) -> int:
    version: int = event.model_fields["schema_version"].default
    return version


def _union(members: Iterable[Any]) -> Any:
    return Union[tuple(members)]  # noqa: UP007 - a union built at run time has no `X | Y` spelling


class _ByTypeAndVersion:
    """Annotated metadata for a union of event classes: pick the class by `event_type`, then, for an event type
    with several versions, by `schema_version`.

    Both look-ups are pydantic's string-keyed discriminators, read straight from the JSON (no Python dict is
    built first, as a callable discriminator would need), so parsing costs what it did with one version.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        by_type: dict[str, dict[int, type[Envelope]]] = {}
        for event in get_args(source):
            event_type, version = event.model_fields["event_type"].default, version_of(event)
            versions = by_type.setdefault(event_type, {})
            if version in versions:
                raise TypeError(f"{event_type} v{version} is both {versions[version].__name__} and {event.__name__}")
            versions[version] = event
        choices: list[Any] = [
            next(iter(versions.values()))
            if len(versions) == 1
            else Annotated[_union(versions.values()), Discriminator("schema_version")]
            for versions in by_type.values()
        ]
        return handler.generate_schema(Annotated[_union(choices), Discriminator("event_type")])


BY_TYPE_AND_VERSION = _ByTypeAndVersion()


# Every event class a consumer parses: the current version of each event and every older version whose
# messages may still be on a topic. A new version is added next to the old one, never instead of it.
AnyEvent = Annotated[
    ConnectionRequested
    | ConnectionApproved
    | ConnectionRejected
    | InviteRequested
    | InviteAccepted
    | InviteRevoked
    | InviteExpired
    | DeliveryOutcome
    | PatientRegistered
    | PracticeRegistered,
    BY_TYPE_AND_VERSION,
]

EVENTS: tuple[type[Envelope], ...] = get_args(get_args(AnyEvent)[0])


def event_union(events: Iterable[type[Envelope]]) -> Any:
    """The pydantic type that parses any of `events` (several versions of one event type included)."""
    return Annotated[_union(events), BY_TYPE_AND_VERSION]


def current_versions(events: Iterable[type[Envelope]]) -> dict[str, type[Envelope]]:
    """Each event type's newest class: the one producers publish."""
    current: dict[str, type[Envelope]] = {}
    for event in events:
        event_type = event.model_fields["event_type"].default
        if event_type not in current or version_of(event) > version_of(current[event_type]):
            current[event_type] = event
    return current


# event_type -> the class producers publish it as today (its newest version).
EVENT_TYPES: dict[str, type[Envelope]] = current_versions(EVENTS)

_ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(raw: bytes | str) -> Envelope:
    """Validate wire JSON into its event class, of whichever version it is; raises pydantic.ValidationError with
    the reason (an unknown event type or version included).

    The envelope's defaults are for producers: a message read without its event_id (a fresh one at every read
    would let a redelivery past the inbox), occurred_at (the reader's clock is not when it happened) or
    schema_version is refused, as the published JSON Schema says."""
    event = _ANY_EVENT.validate_json(raw)
    missing = [name for name in ALWAYS_ON_THE_WIRE if name not in event.model_fields_set]
    if missing:
        raise ValidationError.from_exception_data(
            type(event).__name__, [{"type": "missing", "loc": (name,), "input": raw} for name in missing]
        )
    return event
