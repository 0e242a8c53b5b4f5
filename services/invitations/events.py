"""The integration events this service publishes, built from its domain objects (see schemas/ for the contracts)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from schemas import Envelope, InviteAccepted, InviteExpired, InviteRequested, InviteRevoked
from schemas.events import (
    InviteAcceptedPayload,
    InviteExpiredPayload,
    InviteRequestedPayload,
    InviteRevokedPayload,
)
from services.invitations.domain import Cause, Invite

PRODUCER = "invitations"


def accept_url(base_url: str, token: str) -> str:
    return f"{base_url}/invites/accept?token={token}"


def requested_event(invite: Invite, url: str, cause: Cause) -> InviteRequested:
    return InviteRequested(
        producer=PRODUCER,
        practice_id=invite.practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=invite.created_at,
        payload=InviteRequestedPayload(
            invite_id=invite.id,
            email=invite.email,
            note=invite.note,
            accept_url=url,
            expires_at=invite.expires_at,
            requested_by=invite.created_by,
            batch_id=invite.batch_id,
            line_number=invite.line_number,
            identity_check=next(iter(invite.identity_checks), None),
            identity_checks=invite.identity_checks or None,
            replaces=invite.replaces,
        ),
    )


def revoked_event(
    invite_id: uuid.UUID,
    practice_id: uuid.UUID,
    revoked_by: str,
    revoked_at: datetime,
    replaced_by: uuid.UUID | None,
    cause: Cause,
) -> InviteRevoked:
    return InviteRevoked(
        producer=PRODUCER,
        practice_id=practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=revoked_at,
        payload=InviteRevokedPayload(
            invite_id=invite_id, revoked_by=revoked_by, revoked_at=revoked_at, replaced_by=replaced_by
        ),
    )


def revoked_event_of(invite: Invite, cause: Cause) -> InviteRevoked:
    assert invite.revoked_at is not None and invite.revoked_by is not None
    return revoked_event(invite.id, invite.practice_id, invite.revoked_by, invite.revoked_at, invite.replaced_by, cause)


def expired_event(invite_id: uuid.UUID, practice_id: uuid.UUID, expired_at: datetime, cause: Cause) -> InviteExpired:
    return InviteExpired(
        producer=PRODUCER,
        practice_id=practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=expired_at,
        payload=InviteExpiredPayload(invite_id=invite_id, expired_at=expired_at),
    )


def replaced_events(rows: Iterable[Mapping[str, Any]], cause: Cause) -> list[Envelope]:
    """What batch_repository.replace_invites did, announced: an InviteRevoked for each invite it revoked (naming its
    successor), an InviteExpired for each it found past its time."""
    events: list[Envelope] = []
    for row in rows:
        if row["revoked_now"]:
            events.append(
                revoked_event(
                    row["id"], row["practice_id"], row["revoked_by"], row["revoked_at"], row["replaced_by"], cause
                )
            )
        elif row["expired_now"]:
            events.append(expired_event(row["id"], row["practice_id"], row["expires_at"], cause))
    return events


def accepted_event(invite: Invite, patient_id: uuid.UUID, patient_email: str, cause: Cause) -> InviteAccepted:
    assert invite.accepted_at is not None
    return InviteAccepted(
        producer=PRODUCER,
        practice_id=invite.practice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        occurred_at=invite.accepted_at,
        payload=InviteAcceptedPayload(
            invite_id=invite.id,
            patient_id=patient_id,
            patient_email=patient_email,
            accepted_at=invite.accepted_at,
            invited_by=invite.created_by,
        ),
    )
