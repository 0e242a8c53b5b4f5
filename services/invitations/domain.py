"""Invites and roster rows: states, outcome precedence, and the rules for changing them (pure, no I/O)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from services.invitations.identity import Digests

IdentityFactor = Literal["ssn", "date_of_birth_and_phone"]  # what accepting asks for, as events name it

MAX_FACTOR_ATTEMPTS = 5  # wrong identity answers before an invite locks
NO_FACTORS = Digests()  # roster invites: the token (and the patient's account email) is the proof


def email_key(address: str) -> str:
    """Who "the same patient" is: the address, its case ignored. Python's str.lower, never PostgreSQL's lower()
    (under the C locale that one leaves "Ü" as it is), wherever an address is compared or stored as a key."""
    return address.lower()


class InviteStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Outcome(StrEnum):
    """A roster row's outcome; the first four are also an invite's delivery state."""

    QUEUED = "queued"
    SENT = "sent"
    NOT_ON_PLATFORM = "not_on_platform"
    ERROR = "error"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    ALREADY_CONNECTED = "already_connected"
    ALREADY_INVITED = "already_invited"


# Delivery outcomes only ever move up this ladder, so a late or repeated DeliveryOutcome never moves a row
# backwards. `sent` is top: an email that left cannot be unsent. `not_on_platform` is the directory's verdict
# and outranks `error`, which may be a give-up after retries that a later attempt can still better. Equal
# ranks keep what came first.
DELIVERY_RANK: dict[Outcome, int] = {
    Outcome.QUEUED: 0,
    Outcome.ERROR: 1,
    Outcome.NOT_ON_PLATFORM: 2,
    Outcome.SENT: 3,
}
NOT_ON_PLATFORM_REASON = "no CollabKare account uses this email address yet"


def supersedes(new: Outcome, current: Outcome) -> bool:
    """Whether a delivery outcome replaces the current one."""
    return DELIVERY_RANK[new] > DELIVERY_RANK[current]


@dataclass(frozen=True)
class Delivery:
    """One DeliveryOutcome for an invite, as the write-back needs it."""

    invite_id: uuid.UUID
    outcome: Outcome
    reason: str | None
    decided_at: datetime


def strongest(deliveries: Iterable[Delivery]) -> dict[uuid.UUID, Delivery]:
    """Per invite, the outcome that stands: the highest rank, and at equal rank the earliest decided.

    Order-independent (exact ties are broken on the reason), so a batch reduced here gives what applying
    its outcomes one by one, in the order they were decided, would.
    """
    best: dict[uuid.UUID, Delivery] = {}
    for delivery in deliveries:
        current = best.get(delivery.invite_id)
        if current is None or _standing(delivery) < _standing(current):
            best[delivery.invite_id] = delivery
    return best


def _standing(delivery: Delivery) -> tuple[int, datetime, str]:
    return -DELIVERY_RANK[delivery.outcome], delivery.decided_at, delivery.reason or ""


# Who revoked a pending invite when its patient connected to the practice by other means (an approved request):
# `revoked_by` in InviteRevoked and the access history; accepting it then answers "already connected".
PATIENT_CONNECTED = "system:patient-connected"
# The reason on the roster row (already_connected) of an invite whose email was never delivered, once its patient
# connected by an approved request.
CONNECTED_NOT_DELIVERED = (
    "the patient connected to the practice by an approved request; this invite's email was not delivered"
)


@dataclass(frozen=True)
class Cause:
    """Tracing carried onto every event: the user action (correlation) and, for consumed events, the event."""

    correlation_id: str
    causation_id: str | None = None


@dataclass(frozen=True)
class Invite:
    id: uuid.UUID
    practice_id: uuid.UUID
    email: str
    note: str | None
    status: InviteStatus
    delivery: Outcome
    created_by: str
    created_at: datetime
    expires_at: datetime
    digests: Digests = NO_FACTORS
    delivery_reason: str | None = None
    delivered_at: datetime | None = None
    batch_id: uuid.UUID | None = None
    line_number: int | None = None
    replaces: uuid.UUID | None = None
    failed_attempts: int = 0
    locked_at: datetime | None = None
    accepted_at: datetime | None = None
    accepted_by: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    replaced_by: uuid.UUID | None = None
    expired_at: datetime | None = None
    token_hash: bytes = field(default=b"", repr=False)  # read only where a token is checked

    @property
    def email_key(self) -> str:
        return email_key(self.email)

    @property
    def identity_checks(self) -> list[IdentityFactor]:
        """The answers accepting takes, any one enough (the email says so); none for a roster invite."""
        checks: list[IdentityFactor] = []
        if self.digests.ssn is not None:
            checks.append("ssn")
        if self.digests.date_of_birth is not None and self.digests.phone is not None:
            checks.append("date_of_birth_and_phone")
        return checks

    def current_status(self, now: datetime) -> InviteStatus:
        """The status as it stands now: a pending invite past its expiry is expired, swept or not."""
        if self.status is InviteStatus.PENDING and self.expires_at <= now:
            return InviteStatus.EXPIRED
        return self.status


class DomainError(Exception):
    """A rule refused the change; the message is safe to show to the caller."""


class AlreadyConnected(DomainError):
    def __init__(self) -> None:
        super().__init__("The patient is already connected to this practice.")


class AlreadyInvited(DomainError):
    def __init__(self, invite: Invite) -> None:
        if invite.locked_at is not None:
            super().__init__(
                "The patient's pending invite is locked after too many wrong identity answers; resend it to send a "
                "new one."
            )
        else:
            super().__init__("The patient already has a pending invite; resend or revoke that one instead.")
        self.invite = invite


class NotChangeable(DomainError):
    def __init__(self, invite: Invite, action: str, status: InviteStatus) -> None:
        super().__init__(f"An invite that is {status.value} cannot be {action}.")
        self.invite = invite
        self.status = status


class AlreadyReplaced(DomainError):
    def __init__(self, invite: Invite) -> None:
        super().__init__("The invite was already resent; act on the newer invite.")
        self.invite = invite


def new_invite(
    practice_id: uuid.UUID,
    email: str,
    note: str | None,
    *,
    actor: str,
    now: datetime,
    ttl: timedelta,
    digests: Digests = NO_FACTORS,
    batch_id: uuid.UUID | None = None,
    line_number: int | None = None,
    replaces: uuid.UUID | None = None,
) -> Invite:
    return Invite(
        id=uuid.uuid4(),
        practice_id=practice_id,
        email=email,
        note=note,
        status=InviteStatus.PENDING,
        delivery=Outcome.QUEUED,
        created_by=actor,
        created_at=now,
        expires_at=now + ttl,
        digests=digests,
        batch_id=batch_id,
        line_number=line_number,
        replaces=replaces,
    )


def revoke(invite: Invite, *, actor: str, now: datetime, replaced_by: uuid.UUID | None = None) -> Invite:
    """A pending invite becomes revoked; anything else is refused (revoking twice is the caller's no-op). One a
    resend replaced is refused as such: the newer invite is the one whose link works."""
    if invite.replaced_by is not None:
        raise AlreadyReplaced(invite)
    status = invite.current_status(now)
    if status is not InviteStatus.PENDING:
        raise NotChangeable(invite, "revoked", status)
    return replace(invite, status=InviteStatus.REVOKED, revoked_at=now, revoked_by=actor, replaced_by=replaced_by)


def resend(invite: Invite, *, actor: str, now: datetime, ttl: timedelta) -> tuple[Invite, Invite]:
    """(old invite as it ends, new invite): a pending invite is revoked, an expired or revoked one is replaced.

    The new invite keeps the email, note, identity digests and roster line; only the token and dates change.
    """
    status = invite.current_status(now)
    if status is InviteStatus.ACCEPTED:
        raise NotChangeable(invite, "resent", status)
    if invite.replaced_by is not None:
        raise AlreadyReplaced(invite)
    fresh = new_invite(
        invite.practice_id,
        invite.email,
        invite.note,
        actor=actor,
        now=now,
        ttl=ttl,
        digests=invite.digests,
        batch_id=invite.batch_id,
        line_number=invite.line_number,
        replaces=invite.id,
    )
    if status is InviteStatus.PENDING:
        return revoke(invite, actor=actor, now=now, replaced_by=fresh.id), fresh
    if status is InviteStatus.EXPIRED and invite.status is InviteStatus.PENDING:
        invite = replace(invite, status=InviteStatus.EXPIRED, expired_at=invite.expires_at)
    return replace(invite, replaced_by=fresh.id), fresh
