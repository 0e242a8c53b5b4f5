"""The shapes the API answers with: invites and their history, previews, batches and per-row outcomes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pydantic_core
from pydantic import BaseModel, Field

from services.invitations.batch import count_verdicts
from services.invitations.batch_repository import BatchRecord
from services.invitations.domain import IdentityFactor, Invite, InviteStatus, Outcome
from services.invitations.roster import Roster, Verdict

_INVITES = "/v1/practices/{practice_id}/invites"


class InviteView(BaseModel):
    id: uuid.UUID
    practice_id: uuid.UUID
    email: str
    note: str | None
    status: InviteStatus
    delivery: Outcome = Field(
        description=(
            "The email's fate: queued until the notifier reports sent, not_on_platform (no CollabKare account "
            "has this email, so nothing was delivered) or error. The invite's status is separate: it stays "
            "pending until accepted, revoked or expired, so resend it (or invite the email again) once the "
            "patient has registered."
        )
    )
    delivery_reason: str | None
    delivered_at: datetime | None = Field(description="When the SMTP server accepted the email (delivery `sent` only)")
    identity_factors: list[IdentityFactor] = Field(
        description="What acceptance checks: ssn, and/or date_of_birth_and_phone (the two together), as "
        "InviteRequested's identity_check names them"
    )
    sent_by: str
    sent_at: datetime
    expires_at: datetime
    batch_id: uuid.UUID | None
    line_number: int | None
    resends: uuid.UUID | None = Field(description="The invite this one replaced (a resend)")
    replaced_by: uuid.UUID | None = Field(description="The invite that replaced this one (a resend)")
    resent_by: str | None = Field(default=None, description="Who resent this invite (in the access history)")
    resent_at: datetime | None = Field(default=None, description="When it was resent (in the access history)")
    revoked_by: str | None
    revoked_at: datetime | None
    accepted_by: str | None
    accepted_at: datetime | None
    expired_at: datetime | None
    locked: bool = Field(
        description="Locked after too many wrong identity answers (kept once it was revoked, resent or expired; "
        "never shown for an accepted invite)"
    )

    @staticmethod
    def link(invite: Invite) -> str:
        return _INVITES.format(practice_id=invite.practice_id) + f"/{invite.id}"

    @classmethod
    def of(cls, invite: Invite, now: datetime | None = None, replacement: Invite | None = None) -> InviteView:
        now = now or datetime.now(UTC)
        status = invite.current_status(now)
        return cls(
            id=invite.id,
            practice_id=invite.practice_id,
            email=invite.email,
            note=invite.note,
            status=status,
            delivery=invite.delivery,
            delivery_reason=invite.delivery_reason,
            delivered_at=invite.delivered_at,
            identity_factors=invite.identity_checks,
            sent_by=invite.created_by,
            sent_at=invite.created_at,
            expires_at=invite.expires_at,
            batch_id=invite.batch_id,
            line_number=invite.line_number,
            resends=invite.replaces,
            replaced_by=invite.replaced_by,
            resent_by=replacement.created_by if replacement else None,
            resent_at=replacement.created_at if replacement else None,
            revoked_by=invite.revoked_by,
            revoked_at=invite.revoked_at,
            accepted_by=invite.accepted_by,
            accepted_at=invite.accepted_at,
            expired_at=invite.expired_at or (invite.expires_at if status is InviteStatus.EXPIRED else None),
            # Kept in the history once the invite was revoked, resent or expired (someone tried its factor five
            # times: staff should know); not of an accepted one, whose retries change nothing staff act on.
            locked=invite.locked_at is not None and status is not InviteStatus.ACCEPTED,
        )


class HistoryView(BaseModel):
    email: str
    items: list[InviteView] = Field(description="Every invite for this patient at this practice, newest first")


class ResendView(BaseModel):
    previous: InviteView
    invite: InviteView


class AcceptedView(BaseModel):
    invite_id: uuid.UUID
    practice_id: uuid.UUID
    status: InviteStatus
    accepted_at: datetime


class VerdictView(BaseModel):
    line_number: int
    email: str
    note: str | None
    verdict: Verdict
    reason: str | None = Field(description="Why the line is not ready, in words a person understands")
    duplicate_of: int | None


class PreviewView(BaseModel):
    patients_ready: int = Field(description="Entries that would be invited")
    lines: int
    total: int = Field(description="Entries: lines that are neither blank nor comments")
    counts: dict[Verdict, int]
    rows: list[VerdictView]


def preview_json(roster: Roster) -> bytes:
    """A PreviewView as JSON, built from the roster straight away."""
    counts = count_verdicts(roster.entries)
    rows = [
        {
            "line_number": e.line_number,
            "email": e.email,
            "note": e.note,
            "verdict": e.verdict.value,
            "reason": e.reason,
            "duplicate_of": e.duplicate_of,
        }
        for e in roster.entries
    ]
    body = {
        "patients_ready": counts[Verdict.READY.value],
        "lines": roster.lines,
        "total": len(roster.entries),
        "counts": counts,
        "rows": rows,
    }
    # Serialised directly: validating 100,000 row models on the way out would cost more than the parse.
    return pydantic_core.to_json(body)


_BATCHES = "/v1/practices/{practice_id}/invite-batches"


class BatchView(BaseModel):
    batch_id: uuid.UUID
    practice_id: uuid.UUID
    created_by: str
    created_at: datetime
    lines: int
    total: int
    patients_ready: int = Field(description="Entries that got an invite")
    counts: dict[Outcome, int]
    queued: int = Field(description="Invites still waiting for their delivery outcome")
    done: bool
    links: dict[str, str]

    @staticmethod
    def link(batch: BatchRecord) -> str:
        return _BATCHES.format(practice_id=batch.practice_id) + f"/{batch.id}"

    @classmethod
    def of(cls, batch: BatchRecord, counts: dict[str, int]) -> BatchView:
        """The batch with its rows counted per outcome (`counts` may leave out outcomes with no rows)."""
        queued = counts.get(Outcome.QUEUED.value, 0)
        base = cls.link(batch)
        return cls(
            batch_id=batch.id,
            practice_id=batch.practice_id,
            created_by=batch.created_by,
            created_at=batch.created_at,
            lines=batch.lines,
            total=batch.total,
            patients_ready=batch.invited,
            counts={o: counts.get(o.value, 0) for o in Outcome},
            queued=queued,
            done=queued == 0,
            links={"self": base, "rows": f"{base}/rows", "not_on_platform": f"{base}/not-on-platform"},
        )


class RowView(BaseModel):
    line_number: int
    email: str
    note: str | None
    outcome: Outcome
    reason: str | None
    duplicate_of: int | None
    invite_id: uuid.UUID | None
    attempts: int = Field(description="Invites sent for this row (a resend adds one)")
    updated_at: datetime
    invite_status: InviteStatus | None = Field(
        description="The status of the row's invite now (`outcome` says what became of its email): `revoked` by "
        "staff, `accepted`, `expired` since, or `pending`; null when the row has no invite (invalid, duplicate, "
        "flagged, or its invite replaced by a newer one)"
    )


class RowsPage(BaseModel):
    items: list[RowView]
    next_cursor: str | None


class ResentView(BaseModel):
    batch_id: uuid.UUID
    resent: int
    already_connected: int
    already_invited: int
